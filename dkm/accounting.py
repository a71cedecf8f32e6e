"""Step 4 of the method: compression ratio (CR) of a shared net under a named convention (paper §4).

CR = original bits / compressed bits, summed over the counted layers. Conventions:

| name            | indexes of one layer            | codebook | batch norm                       |
|-----------------|---------------------------------|----------|----------------------------------|
| `official`      | N·H, H = entropy of the usage   | fp32     | not counted                      |
| `fixed`         | N·⌈log2 K⌉ (K = 1 → 0 bits)     | fp32     | not counted                      |
| `huffman`       | Σ_k n_k·len_k of a Huffman code | fp32     | not counted                      |
| `official_fp16` | N·H                             | fp16     | not counted                      |
| `official_bn`   | N·H                             | fp32     | 32-bit weight + bias, both sides |

Common to all: conv biases, linear layers and non-shared convs stay at their own precision on both
sides, and "fp32" above means the precision of the conv's weights: 32 bits for the paper's float32
nets, 64 for a float64 net (whose export stores float64 codebooks; dkm.export.dkmfile), 16 for a
float16
one. `official_fp16` always counts 16-bit codebooks. From specs (no tensors), everything is 32-bit.
`official` is exactly the authors' formula (data/reference/wrn16_4_official_sharing.json; their
settings themselves are in dkm.plans).
Choices made here (not fixed by the authors):
- Huffman with a single used cluster costs 0 bits per row (like its entropy; the decoder knows N).
- Batch norm, when counted, is its weight and bias only: at inference it is one per-channel
  affine y = a·x + b, i.e. 2 numbers per channel; running statistics fold into that affine.
- From specs, a layer with K ≥ N rows is left as is at 32 bits (the deploy script's rule; costing
  WRN-16-4's layer 0 as codebook + indexes instead gives 43.45/45.38/48.10 for 43.48/45.41/48.12:
  both within ±0.1 of the reference). In a real net every layer of `shared` is costed as shared.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import torch
from torch import nn

from dkm._checks import check_choice, check_float, check_int
from dkm.rows import stays_dense

INDEX_CODINGS = ("entropy", "fixed", "huffman")
FLOAT_BITS = 32  # dense weights, biases, linear layers, batch norm, from specs (no tensors)
COLUMNS = (
    "convention",
    "name",
    "kind",
    "shared",
    "params",
    "K",
    "p",
    "s",
    "N",
    "bits_index_per_row",
    "original_bits",
    "compressed_bits",
    "cr",
)


@dataclass(frozen=True)
class Convention:
    """How bits are counted: index coding, codebook precision, batch norm in or out."""

    name: str
    index_coding: str = "entropy"  # "entropy" | "fixed" | "huffman"
    codebook_bits: int | None = None  # None: the precision of the conv's weights (fp32: 32)
    count_batchnorm: bool = False

    def __post_init__(self):
        check_choice("index_coding", self.index_coding, INDEX_CODINGS)
        if self.codebook_bits is not None:
            check_int("codebook_bits", self.codebook_bits, 1, 64)


CONVENTIONS = {
    c.name: c
    for c in (
        Convention("official"),
        Convention("fixed", index_coding="fixed"),
        Convention("huffman", index_coding="huffman"),
        Convention("official_fp16", codebook_bits=16),
        Convention("official_bn", count_batchnorm=True),
    )
}


def get_convention(convention) -> Convention:
    """A Convention from its name (one of CONVENTIONS) or itself."""
    if isinstance(convention, Convention):
        return convention
    return CONVENTIONS[check_choice("convention", convention, CONVENTIONS)]


def _as_counts(counts) -> list[float]:
    """Cluster-usage counts n_k (k = 0..K−1) as floats; fractional counts are allowed."""
    if isinstance(counts, torch.Tensor):
        counts = counts.detach().cpu().flatten().tolist()
    counts = [float(c) for c in counts]
    if not counts:
        raise ValueError("counts is empty: allowed one count per cluster, K ≥ 1")
    bad = [c for c in counts if not math.isfinite(c) or c < 0]
    if bad:
        raise ValueError(f"counts holds {bad[0]!r}: allowed finite counts ≥ 0")
    return counts


def fixed_index_width(num_clusters: int) -> int:
    """⌈log2 K⌉ bits per index, exact in integers (K = 1 → 0)."""
    num_clusters = check_int("num_clusters", num_clusters, 1)
    return (num_clusters - 1).bit_length()


def entropy(counts) -> float:
    """Shannon entropy H (bits) of the cluster-usage distribution."""
    counts = _as_counts(counts)
    total = sum(counts)
    # H = −Σ_k q_k·log2 q_k, q_k = n_k / N (unused clusters add 0)
    return max(0.0, -sum(c / total * math.log2(c / total) for c in counts if c > 0))


def huffman_lengths(counts) -> list[int]:
    """Code length of each cluster in a Huffman code on the counts (0 if unused or alone)."""
    counts = _as_counts(counts)
    heap = [(c, k) for k, c in enumerate(counts) if c > 0]
    heapq.heapify(heap)
    parent, node = {}, len(counts)
    while len(heap) > 1:
        # merge the two lightest subtrees under a new node
        (c1, a), (c2, b) = heapq.heappop(heap), heapq.heappop(heap)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (c1 + c2, node))
        node += 1
    # code length = depth in the tree; a parent is always created after its children
    depth = {}
    for k in range(node - 1, -1, -1):
        depth[k] = depth[parent[k]] + 1 if k in parent else 0
    return [depth[k] for k in range(len(counts))]


def index_bits(counts, coding: str = "entropy") -> float:
    """Total bits of the N indexes of one layer whose clusters are used `counts` times."""
    counts = _as_counts(counts)
    check_choice("coding", coding, INDEX_CODINGS)
    num_rows = sum(counts)
    if coding == "entropy":
        return num_rows * entropy(counts)
    if coding == "fixed":
        return num_rows * fixed_index_width(len(counts))
    # Σ_k n_k·len_k
    return sum(c * n for c, n in zip(counts, huffman_lengths(counts)))


def layer_bits(
    num_rows, row_length, counts, bias_numel, convention="official", float_bits=FLOAT_BITS
) -> float:
    """Compressed bits of one shared conv layer: codebook + indexes + biases; float_bits: the
    precision of the conv's weights and bias (the codebook's too unless the convention fixes it)."""
    conv = get_convention(convention)
    float_bits = check_int("float_bits", float_bits, 1, 64)
    counts = _as_counts(counts)
    num_rows = check_int("num_rows", num_rows, 1)
    row_length = check_int("row_length", row_length, 1)
    bias_numel = check_int("bias_numel", bias_numel, 0)
    if not math.isclose(sum(counts), num_rows, rel_tol=1e-9, abs_tol=1e-6):
        raise ValueError(
            f"counts sum to {sum(counts)}, not num_rows={num_rows}: allowed counts summing to N"
        )
    # K·s·b_codebook + index bits + b·bias
    codebook = len(counts) * row_length * (conv.codebook_bits or float_bits)
    return codebook + index_bits(counts, conv.index_coding) + float_bits * bias_numel


def _dense_row(name, kind, params, conv, bits=None, **extra) -> dict:
    """A layer stored as is, on both sides: `bits` (default 32 per parameter)."""
    row = dict.fromkeys(COLUMNS)
    bits = FLOAT_BITS * params if bits is None else bits
    row.update(
        convention=conv.name,
        name=name,
        kind=kind,
        shared=False,
        params=params,
        original_bits=bits,
        compressed_bits=bits,
        cr=1.0,
        **extra,
    )
    return row


def _shared_row(
    name, params, num_rows, row_length, counts, bias_numel, p, conv, float_bits=FLOAT_BITS
) -> dict:
    """A shared conv layer under `conv` (its weights of `float_bits` precision)."""
    row = _dense_row(name, "conv", params, conv, float_bits * params, s=row_length, N=num_rows, p=p)
    bits = layer_bits(num_rows, row_length, counts, bias_numel, conv, float_bits)
    row.update(
        shared=True,
        K=len(counts),
        compressed_bits=bits,
        cr=row["original_bits"] / bits,
        bits_index_per_row=index_bits(counts, conv.index_coding) / num_rows,
    )
    return row


def _own_tensors(module: nn.Module, seen: set | None = None) -> list:
    """weight and bias of a Conv2d / Linear / BatchNorm (also when the weight is parametrized);
    with `seen`, only the tensors whose parameter is not in it (then added): tied parameters are
    counted once, by identity."""
    out = []
    for attr in ("weight", "bias"):
        t = getattr(module, attr, None)
        if t is None:
            continue
        if seen is not None:
            key = id(param_of(module, attr))
            if key in seen:
                continue
            seen.add(key)
        out.append(t)
    return out


def param_of(module: nn.Module, attr: str = "weight"):
    """The parameter behind `module.<attr>`: its original where it is parametrized (or the
    parametrization itself where it has several originals, as weight_norm)."""
    parametrizations = getattr(module, "parametrizations", {})
    if attr in parametrizations:
        return getattr(parametrizations[attr], "original", parametrizations[attr])
    return getattr(module, attr)


def _own_params(module: nn.Module) -> int:
    return sum(t.numel() for t in _own_tensors(module))


def _own_bits(module: nn.Module) -> int:
    """Bits of weight + bias at their own precision (float32: 32 per parameter)."""
    return sum(t.numel() * 8 * t.element_size() for t in _own_tensors(module))


def _dense_own(name: str, kind: str, module: nn.Module, conv, seen: set) -> dict:
    """A dense row of the module's tensors not counted before (`seen`), at their precision."""
    tensors = _own_tensors(module, seen)
    bits = sum(t.numel() * 8 * t.element_size() for t in tensors)
    return _dense_row(name, kind, sum(t.numel() for t in tensors), conv, bits)


def _shared_layers(shared) -> dict:
    """name -> SharedLayer from a ShareResult, a dict, or None (nothing shared)."""
    if shared is None:
        return {}
    return dict(getattr(shared, "layers", shared))


def _net_conv_row(name, module, layer, conv) -> dict:
    """Row of one Conv2d of a real net: dense, or shared with the real counts of `layer`."""
    c_out, c_in, kh, kw = module.weight.shape
    params = _own_params(module)
    if layer is None:
        return _dense_row(name, "conv", params, conv, _own_bits(module), s=kw, N=c_out * c_in * kh)
    if tuple(layer.shape) != tuple(module.weight.shape):
        raise ValueError(
            f"shared layer {name!r} has shape {tuple(layer.shape)}, but the net's weight is "
            f"{tuple(module.weight.shape)}: allowed the same shape"
        )
    bias_numel = 0 if module.bias is None else module.bias.numel()
    if layer.bias_numel != bias_numel:
        raise ValueError(
            f"shared layer {name!r} has bias_numel={layer.bias_numel}, "
            f"the net's conv has {bias_numel}"
        )
    if module.bias is not None and module.bias.dtype != module.weight.dtype:
        raise ValueError(
            f"conv {name!r} has a {module.bias.dtype} bias and {module.weight.dtype} weights: "
            f"allowed one precision per layer"
        )
    float_bits = 8 * module.weight.element_size()
    return _shared_row(
        name, params, layer.num_rows, layer.row_length, layer.counts(), bias_numel, layer.p, conv,
        float_bits,
    )  # fmt: skip


def compression_table(net: nn.Module, shared=None, convention="official") -> list[dict]:
    """One row per Conv2d / Linear (and BatchNorm when counted) of `net`, in module order."""
    conv = get_convention(convention)
    layers = _shared_layers(shared)
    convs = {n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    unknown = sorted(set(layers) - convs)
    if unknown:
        raise ValueError(
            f"shared names {unknown} are not Conv2d layers of the net: "
            f"allowed names in {sorted(convs)}"
        )
    rows, seen = [], set()  # a parameter used by several layers is counted once, at its first
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d) and id(param_of(module)) not in seen:
            rows.append(_net_conv_row(name, module, layers.get(name), conv))
            _own_tensors(module, seen)
        elif isinstance(module, nn.Conv2d):  # its weight is another conv's: its own bias only
            rows.append(_dense_own(name, "conv", module, conv, seen))
        elif isinstance(module, nn.Linear):
            rows.append(_dense_own(name, "linear", module, conv, seen))
        elif isinstance(module, nn.modules.batchnorm._BatchNorm) and conv.count_batchnorm:
            rows.append(_dense_own(name, "batchnorm", module, conv, seen))
    return rows


def total_row(rows: list[dict]) -> dict:
    """The table's total: CR = Σ original bits / Σ compressed bits."""
    row = dict.fromkeys(COLUMNS)
    original = sum(r["original_bits"] for r in rows)
    compressed = sum(r["compressed_bits"] for r in rows)
    row.update(
        convention=rows[0]["convention"] if rows else None,
        name="total",
        kind="total",
        params=sum(r["params"] for r in rows),
        original_bits=original,
        compressed_bits=compressed,
        cr=original / compressed if compressed else float("nan"),
    )
    return row


def compression_ratio(net: nn.Module, shared=None, convention="official") -> float:
    """CR of `net` with the layers of `shared` shared, under `convention`."""
    rows = compression_table(net, shared, convention)
    if not rows:
        raise ValueError("net has no Conv2d or Linear layer: a compression ratio needs one")
    return total_row(rows)["cr"]


def analytic_counts(num_rows, num_clusters, p=0.0) -> list[float]:
    """Usage counts of the reference check: int(N·p) rows in the dominant cluster, rest uniform."""
    num_rows = check_int("num_rows", num_rows, 1)
    num_clusters = check_int("num_clusters", num_clusters, 1)
    p = check_float("p", p, 0.0, 1.0)
    if p == 0 or num_clusters == 1:
        return [num_rows / num_clusters] * num_clusters
    dominant = int(num_rows * p)
    # the other K−1 clusters share the N − int(N·p) remaining rows evenly (fractional counts)
    return [float(dominant)] + [(num_rows - dominant) / (num_clusters - 1)] * (num_clusters - 1)


def _spec_conv_row(name, spec, num_clusters, p, conv) -> dict:
    """Row of one conv given as {"in", "out", "k" (or "kh", "kw"), "groups"=1, "bias"=True}:
    analytic counts; a conv whose weight is another's ("tied_to") costs nothing more."""
    c_in, c_out = spec["in"], spec["out"]
    kh, kw = (spec["kh"], spec["kw"]) if "kh" in spec else (spec["k"], spec["k"])
    if spec.get("tied_to"):
        return _dense_row(name, "conv", 0, conv)
    c_in_group = c_in // spec.get("groups", 1)
    bias = c_out if spec.get("bias", True) else 0
    params = c_out * c_in_group * kh * kw + bias
    # kernel rows: N = C_out·C_in/groups·kh rows of length s = kw
    num_rows, row_length = c_out * c_in_group * kh, kw
    if stays_dense(num_clusters, num_rows):
        return _dense_row(name, "conv", params, conv, K=num_clusters, p=p, s=row_length, N=num_rows)
    counts = analytic_counts(num_rows, num_clusters, p)
    return _shared_row(name, params, num_rows, row_length, counts, bias, p, conv)


def _spec_dense_row(name, spec, kind, conv) -> dict:
    """Row of a linear ({"in", "out", "bias"=True}) or batch norm ({"num_features"}) spec."""
    if kind == "linear":
        params = spec["out"] * spec["in"] + (spec["out"] if spec.get("bias", True) else 0)
    else:
        params = 2 * spec["num_features"]
    return _dense_row(name, kind, params, conv)


def table_from_specs(layer_specs, settings, convention="official") -> list[dict]:
    """Layer table from specs alone; `settings` index the convs.

    settings: a dkm.plans.Plan, or {"K": [...], "p": [...]}.
    """
    conv = get_convention(convention)
    num_convs = sum(spec.get("kind", "conv") == "conv" for spec in layer_specs)
    if hasattr(settings, "K"):  # a dkm.plans.Plan
        ks, ps = list(settings.K), list(settings.p)
    else:
        ks = list(settings["K"])
        ps = list(settings.get("p", [0.0] * len(ks)))
    if len(ks) != num_convs or len(ps) != num_convs:
        raise ValueError(
            f"settings has {len(ks)} K and {len(ps)} p for {num_convs} conv specs: allowed one each"
        )
    rows, i = [], 0
    for j, spec in enumerate(layer_specs):
        kind = check_choice("kind", spec.get("kind", "conv"), ("conv", "linear", "batchnorm"))
        name = spec.get("name", f"{kind}{spec.get('idx', j)}")
        if kind == "conv":
            rows.append(_spec_conv_row(name, spec, ks[i], ps[i], conv))
            i += 1
        elif kind == "linear" or conv.count_batchnorm:
            rows.append(_spec_dense_row(name, spec, kind, conv))
    return rows
