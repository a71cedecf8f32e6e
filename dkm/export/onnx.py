"""A shared net as an ONNX graph: each shared conv's weight computed from its codebook and indexes.

The field's deployable formats keep fixed-width indexes (ONNX's `Gather(codebook, indexes)`,
Core ML's palettization, torchao's codebooks); none carries the authors' per-layer K or
entropy-coded indexes. So the graph holds, per shared conv, its K×s codebook (the conv's float
dtype) and its N indexes at ⌈log2 K⌉ bits each, bit-packed (`dkm.export.coding.pack_fixed`) and
unpacked in the graph (BitShift, BitwiseAnd, a weighted sum: opset 18), or, where that is not
smaller (K = 1, or ⌈log2 K⌉ = 8, 16), as the smallest unsigned integer type. It computes

    weight = Reshape(Gather(codebook, indexes), (C_out, C_in/groups, kh, kw))

before the conv; every other tensor is stored as it is. ONNX Runtime folds that subgraph once when
it loads the model, and gives the same logits as the PyTorch net (float tolerance;
tests/test_onnx.py). So the file holds what the `fixed` convention counts, plus the batch-norm
state, the graph and each tensor's header (the size report puts the file beside that count).

Runtimes that need K = 2ⁿ (palettization) round each K up: `deployable_cr` is the CR of that (the
codebook of 2ⁿ centers, ⌈log2 K⌉ bits per row), beside the entropy CR the paper counts.

The graph is written by torch's TorchScript-based ONNX exporter (`dynamo=False`, constant folding
off, so the codebooks and indexes stay what they are rather than being folded back into dense
weights). Needs the optional extra: pip install 'deep-kmeans[onnx]'.

May import: the core, dkm.io, torch, onnx (optional). Imported by: dkm.app.
"""

from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from dkm._checks import check_not_meta
from dkm.accounting import (
    _shared_layers,
    compression_table,
    fixed_index_width,
    layer_bits,
    total_row,
)
from dkm.export.coding import pack_fixed
from dkm.export.dkmfile import check_shared
from dkm.io import write_atomic

EXTRA = "pip install 'deep-kmeans[onnx]'"
OPSET = 18  # BitwiseAnd (the in-graph unpacking of the indexes)


def packs_smaller(num_clusters: int) -> bool:
    """Are ⌈log2 K⌉-bit packed indexes smaller than the smallest integer type (K ≥ 2)?"""
    bits = fixed_index_width(num_clusters)
    return 0 < bits < 8 * torch.empty((), dtype=index_dtype(num_clusters)).element_size()


def index_dtype(num_clusters: int) -> torch.dtype:
    """The smallest integer type that holds the indexes 0..K−1 (and that ONNX's Cast reads)."""
    if num_clusters <= 1 << 8:
        return torch.uint8
    return torch.uint16 if num_clusters <= 1 << 16 else torch.int32


class SharedConv2d(nn.Module):
    """A Conv2d whose weight is codebook[indexes] folded to the conv's shape, computed in
    `forward` (so an ONNX graph holds the codebook and the indexes, not the dense weight)."""

    def __init__(self, conv: nn.Conv2d, codebook: torch.Tensor, assignments: torch.Tensor):
        super().__init__()
        self.shape = tuple(conv.weight.shape)
        self.stride, self.padding = conv.stride, conv.padding
        self.dilation, self.groups = conv.dilation, conv.groups
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError(
                f"a shared conv with padding={conv.padding!r}, padding_mode="
                f"{conv.padding_mode!r}: the ONNX export takes numeric zero padding only"
            )
        dtype = conv.weight.dtype
        self.register_buffer("codebook", codebook.detach().to(dtype).clone())
        K, a = codebook.shape[0], assignments.detach().cpu()
        self.num_rows, self.bits = a.numel(), fixed_index_width(K)
        if packs_smaller(K):  # ⌈log2 K⌉ bits per row, MSB first (dkm.export.coding.pack_fixed)
            packed = np.frombuffer(pack_fixed(a.numpy(), self.bits), dtype=np.uint8).copy()
            self.register_buffer("packed", torch.from_numpy(packed))
            self.register_buffer("shifts", torch.arange(7, -1, -1, dtype=torch.uint8))
            self.register_buffer("powers", 1 << torch.arange(self.bits - 1, -1, -1))
        else:
            self.register_buffer("indexes", a.to(index_dtype(K)).clone())
        bias = None if conv.bias is None else conv.bias.detach().clone()
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)

    def assignments(self) -> torch.Tensor:
        """The N indexes as int64: unpacked bit by bit where they are packed."""
        if not hasattr(self, "packed"):
            return self.indexes.long()
        bits = torch.bitwise_and(torch.bitwise_right_shift(self.packed[:, None], self.shifts), 1)
        bits = bits.reshape(-1)[: self.num_rows * self.bits].reshape(self.num_rows, self.bits)
        return (bits.long() * self.powers).sum(1)  # a_i = Σ_j bit_ij · 2^(bits−1−j)

    def weight(self) -> torch.Tensor:
        return self.codebook[self.assignments()].reshape(self.shape)

    def forward(self, x):
        return F.conv2d(x, self.weight(), self.bias, self.stride, self.padding, self.dilation,
                        self.groups)  # fmt: skip


def graph_net(net: nn.Module, shared) -> nn.Module:
    """A copy of `net` (eval mode) with each shared conv replaced by a `SharedConv2d`; checks
    that the net's weights are the ShareResult's codebook[indexes] (what the graph will hold)."""
    check_not_meta(net, "save_onnx")
    layers = _shared_layers(shared)
    check_shared(net, layers)
    modules = dict(net.named_modules())
    out = copy.deepcopy(net).eval()
    for name, layer in layers.items():
        conv = modules[name]
        parent, _, child = name.rpartition(".")
        holder = out.get_submodule(parent) if parent else out
        setattr(holder, child, SharedConv2d(conv, layer.codebook, layer.assignments))
    return out


def deployable_cr(net: nn.Module, shared) -> float:
    """CR where each shared conv's K is rounded up to 2ⁿ (a runtime that needs it): the codebook
    of 2ⁿ centers, ⌈log2 K⌉ bits per row (the `fixed` convention otherwise)."""
    layers = _shared_layers(shared)
    rows = compression_table(net, shared, "fixed")
    for row in rows:
        layer = layers.get(row["name"])
        if layer is not None:
            counts = layer.counts().tolist()
            counts += [0] * ((1 << max(len(counts) - 1, 0).bit_length()) - len(counts))
            bits = 8 * layer.codebook.element_size()
            row["compressed_bits"] = layer_bits(layer.num_rows, layer.row_length, counts,
                                                layer.bias_numel, "fixed", bits)  # fmt: skip
    return total_row(rows)["cr"]


def check_available() -> None:
    """The ONNX export's packages are installed (else one ImportError naming the extra; a
    ValueError too, so the command line says it in one line before any work)."""
    try:
        import onnx  # noqa: F401
    except ImportError:
        raise MissingExtraError(f"the ONNX export needs onnx: {EXTRA}") from None


class MissingExtraError(ImportError, ValueError):
    """An optional extra that is not installed."""


def save_onnx(net: nn.Module, shared, path, input_shape) -> dict:
    """Write the shared net as an ONNX graph at `path` (atomically), for inputs of `input_shape`
    (B, C, H, W; the batch dimension is dynamic). Returns the sizes and CRs (module docstring)."""
    check_available()
    graph = graph_net(net, shared)
    param = next(graph.parameters(), None)
    param = next(graph.buffers()) if param is None else param
    dtype = param.dtype if param.is_floating_point() else torch.float32
    example = torch.zeros(tuple(input_shape), dtype=dtype, device=param.device)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            graph, (example,), buf, dynamo=False, do_constant_folding=False, opset_version=OPSET,
            input_names=["input"], output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        )  # fmt: skip
    data = _compact(buf.getvalue())
    write_atomic(path, data)
    fixed = sum(r["compressed_bits"] for r in compression_table(net, shared, "fixed")) / 8
    return {
        "path": str(path),
        "bytes": len(data),
        "fixed_bytes": fixed,
        "cr_official": total_row(compression_table(net, shared, "official"))["cr"],
        "cr_fixed": total_row(compression_table(net, shared, "fixed"))["cr"],
        "deployable_cr": deployable_cr(net, shared),
    }


def _compact(data: bytes) -> bytes:
    """The exported graph without what only a reader of the exporter's trace needs: node names,
    doc strings (the source lines of each op), value infos, and the long scope names of
    intermediate tensors (renamed t0, t1, …); the inputs, outputs and initializers keep theirs.
    On the default profile's net the file shrinks from 116 kB to 67 kB."""
    import onnx

    model = onnx.load_from_string(data)
    graph = model.graph
    keep = {v.name for v in (*graph.input, *graph.output, *graph.initializer)}
    names: dict = {}
    for node in graph.node:
        node.name, node.doc_string = "", ""
        node.input[:] = [names.get(i, i) for i in node.input]
        for j, out in enumerate(node.output):
            if out not in keep:
                node.output[j] = names.setdefault(out, f"t{len(names)}")
    del graph.value_info[:]
    onnx.checker.check_model(model)
    return model.SerializeToString()


def onnx_report(info: dict) -> str:
    """One line: the ONNX file's size beside the `fixed` count, and the CRs."""
    return (
        f"{info['path']}: {info['bytes']:,} bytes (ONNX: codebooks + ⌈log2 K⌉-bit indexes, the "
        f"graph and the other tensors) | the fixed convention counts {info['fixed_bytes']:,.0f} "
        f"bytes | CR {info['cr_official']:.2f} (entropy, the paper's), {info['cr_fixed']:.2f} "
        f"(fixed width), {info['deployable_cr']:.2f} (deployable: every K rounded up to 2ⁿ)"
    )


def run_onnx(path, inputs) -> torch.Tensor:
    """Logits of the ONNX graph at `path` in ONNX Runtime on the CPU (for the tests and users)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ImportError(f"running the ONNX graph needs onnxruntime: {EXTRA}") from None
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = inputs.detach().cpu().numpy()
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x})[0])
