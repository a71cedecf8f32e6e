"""Step 4 of the method: a shared net as a compact file, and back (paper §3.3: codebook + indexes).

File layout (little-endian), format version 2:

    prefix   "DKMSHARE" | version u16 | meta_len u32 | payload_len u64 | crc32(meta + payload) u32
    meta     zlib-compressed JSON (version 1: plain JSON): per shared layer (name, index, shape, K,
             p, bias_numel, codebook_dtype unless float32, the index coding and its
             parameters, offset, index_bytes), per remaining state tensor (key, dtype, shape,
             offset), the skipped layers
    payload  per shared layer: codebook (K·s values in the conv weight's dtype: fp32 when the meta
             has no `codebook_dtype`), then the N indexes in the layer's coding
             (`dkm.export.coding`):
             `fixed` bit-packs ⌈log2 K⌉ bits each, MSB first (K = 1: no bytes); `huffman` a
             canonical Huffman code (its K code lengths in the meta);
             `rans` a static rANS coder (its 2^16-scaled frequencies in the meta);
             then every other state_dict entry of the net as raw bytes (conv biases, linear
             layers, non-shared convs, batch-norm parameters and running statistics, ...); a
             tensor under several keys (tied weights) is stored once: its other keys are
             entries {"key", "same_as": the first key} (format version 3)

So the file holds what the coding's convention counts — `fixed` → `fixed`, `huffman` → `huffman`,
`rans` → `official` (the entropy N·H, within a few bytes per layer) — plus the state the
conventions leave out (batch norm, buffers), plus the prefix and the JSON metadata. Version 1
(fixed coding only, no `coding`/`index_bytes` fields) still loads.

Loading bounds every size it reads before allocating: the metadata decompresses to at most
`meta_cap(net)` bytes (a few hundred bytes per tensor of the net and per kernel row, what a real
file needs), a layer's K is at most its number of rows, its code lengths or frequencies are K
numbers in range, and every slice lies inside the payload. A file never loads into a net whose
tensors have another dtype.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from pathlib import Path

import torch
from torch import nn

from dkm._checks import check_not_meta
from dkm.accounting import _shared_layers, compression_table
from dkm.export.coding import CODINGS, CodingError, decode, encode, pack_fixed, unpack_fixed
from dkm.io import read_bytes, write_atomic

MAGIC = b"DKMSHARE"
VERSION = 2  # 3 when the file holds tied state entries ("same_as"), which version 2 readers lack
READABLE_VERSIONS = (1, 2, 3)
# the CR convention whose count of index bits each coding's file reaches
CONVENTION_OF = {"fixed": "fixed", "huffman": "huffman", "rans": "official"}
_PREFIX = struct.Struct("<8sHIQI")  # magic, version, meta_len, payload_len, crc32
HEADER_ALLOWANCE_BYTES = 4096  # the fixed part of the header allowance (prefix + JSON skeleton)
ENTRY_ALLOWANCE_BYTES = 256  # JSON metadata per shared layer and per stored state tensor
_DTYPES = {
    str(d).removeprefix("torch."): d
    for d in (
        torch.float64,
        torch.float32,
        torch.float16,
        torch.bfloat16,
        torch.int64,
        torch.int32,
        torch.int16,
        torch.int8,
        torch.uint8,
        torch.bool,
    )
}


class ExportFormatError(ValueError):
    """A shared-model file that cannot be loaded: names the file and the problem."""


def header_allowance(num_entries: int) -> int:
    """Bytes allowed for the header of a file with `num_entries` layers + state tensors."""
    return HEADER_ALLOWANCE_BYTES + ENTRY_ALLOWANCE_BYTES * num_entries


# ---------------------------------------------------------------- bit packing of the indexes
def pack_indexes(assignments: torch.Tensor, bits: int) -> bytes:
    """N indexes at `bits` bits each, MSB first, padded to whole bytes: ⌈N·bits/8⌉ bytes."""
    return pack_fixed(assignments.detach().cpu().numpy(), bits)


def unpack_indexes(data: bytes, num_rows: int, bits: int) -> torch.Tensor:
    """Inverse of `pack_indexes`: the N indexes as int64."""
    return torch.from_numpy(unpack_fixed(data, num_rows, bits))


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------- save
def _codebook_dtype(net: nn.Module, name: str) -> dict:
    """{"codebook_dtype": the conv weight's dtype} unless float32 (then {}: as before)."""
    dtype = net.get_submodule(name).weight.dtype
    return {} if dtype == torch.float32 else {"codebook_dtype": str(dtype).removeprefix("torch.")}


def _shared_weight_keys(layers: dict) -> set:
    return {f"{name}.weight" for name in layers}


def check_shared(net: nn.Module, layers: dict) -> None:
    """Before an export (this file, ONNX): every shared layer is a plain Conv2d of `net` with the
    same shape, valid indexes and a finite codebook, and the net's weight is its
    codebook[assignments] (else the export would hold another net than the one given)."""
    modules = dict(net.named_modules())
    for name, layer in layers.items():
        conv = modules.get(name)
        if not isinstance(conv, nn.Conv2d):
            raise ValueError(
                f"shared layer {name!r} is not a Conv2d of the net: allowed conv layer names only"
            )
        if hasattr(conv, "parametrizations") and "weight" in conv.parametrizations:
            raise ValueError(
                f"shared layer {name!r} has a parametrized (tied) weight: call untie_centers first"
            )
        c_out, c_in, kh, kw = shape = tuple(conv.weight.shape)
        fits = tuple(layer.codebook.shape[1:]) == (kw,) and layer.num_rows == c_out * c_in * kh
        if tuple(layer.shape) != shape or not fits:
            raise ValueError(
                f"shared layer {name!r} (shape {tuple(layer.shape)}, "
                f"codebook {tuple(layer.codebook.shape)}, "
                f"{layer.num_rows} rows) does not fit the net's weight {shape}"
            )
        a = layer.assignments
        if a.numel() and (int(a.min()) < 0 or int(a.max()) >= layer.num_clusters):
            raise ValueError(
                f"shared layer {name!r} has assignments outside "
                f"0..K−1 = 0..{layer.num_clusters - 1}"
            )
        if not torch.isfinite(layer.codebook).all():
            raise ValueError(f"shared layer {name!r} has non-finite codebook values: not exported")
        weight = conv.weight.detach()
        if not torch.equal(layer.weight().to(weight.device, weight.dtype), weight):
            raise ValueError(
                f"shared layer {name!r}: the net's weight is not codebook[assignments] of the "
                f"shared layer (changed after share?): the export would hold another net; share "
                f"the net again, or export the net that was shared"
            )


def _encode(net: nn.Module, layers: dict, skipped: dict, coding: str) -> tuple[dict, bytearray]:
    """The JSON metadata and the payload of the shared `layers` on `net`."""
    payload = bytearray()
    meta = {"byteorder": sys.byteorder, "layers": [], "state": [], "skipped": dict(skipped)}
    for name, layer in layers.items():
        try:
            indexes, params = encode(layer.assignments.cpu().numpy(), layer.num_clusters, coding)
        except ValueError as e:
            raise ValueError(f"shared layer {name!r}, coding={coding!r}: {e}") from None
        dtype = _codebook_dtype(net, name)
        meta["layers"].append(
            {"name": name, "index": int(layer.index), "shape": list(layer.shape),
             "K": layer.num_clusters, "p": float(layer.p), "bias_numel": int(layer.bias_numel),
             "coding": coding, **dtype, **params, "offset": len(payload),
             "index_bytes": len(indexes)}
        )  # fmt: skip
        payload += _tensor_bytes(layer.codebook.to(_DTYPES[dtype.get("codebook_dtype", "float32")]))
        payload += indexes
    meta["state"] = _encode_state(net, _shared_weight_keys(layers), payload)
    return meta, payload


def _encode_state(net: nn.Module, skip: set, payload: bytearray) -> list[dict]:
    """The entries of every state tensor but the shared weights (`skip`), appended to `payload`;
    one tensor under several keys (tied weights) is stored once, under its first key."""
    entries, first = [], {}
    for key, t in net.state_dict(keep_vars=True).items():
        owner = first.setdefault(id(t), key)
        if owner != key:
            entries.append({"key": key, "same_as": owner})
            continue
        if key in skip:
            continue
        t = t.detach()
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise ValueError(f"state entry {key!r} has dtype {dtype}: allowed {', '.join(_DTYPES)}")
        entries.append({"key": key, "dtype": dtype, "shape": list(t.shape), "offset": len(payload)})
        payload += _tensor_bytes(t)
    return entries


def _uncounted_state_bytes(net: nn.Module) -> int:
    """Bytes of stored state the `fixed` convention leaves out.

    That is all but the weights and biases of Conv2d/Linear layers.
    """
    counted = {
        f"{n}.{p}"
        for n, m in net.named_modules()
        if isinstance(m, (nn.Conv2d, nn.Linear))
        for p, _ in m.named_parameters(recurse=False)
    }
    return sum(
        t.numel() * t.element_size() for k, t in net.state_dict().items() if k not in counted
    )


def save_shared(net: nn.Module, shared, path, verbose: bool = False, coding: str = "fixed") -> dict:
    """Save `net` with the layers of `shared` (a ShareResult) as codebooks + coded indexes.

    Returns the sizes: the file's, and what the coding's convention (`CONVENTION_OF`) counts."""
    if coding not in CODINGS:
        raise ValueError(f"coding={coding!r} is not allowed: allowed {', '.join(CODINGS)}")
    path = Path(path)
    check_not_meta(net, "save_shared")
    layers = _shared_layers(shared)
    check_shared(net, layers)
    meta, payload = _encode(net, layers, getattr(shared, "skipped", {}), coding)
    meta_bytes = zlib.compress(json.dumps(meta, separators=(",", ":")).encode(), 9)
    crc = zlib.crc32(payload, zlib.crc32(meta_bytes))
    version = VERSION + any("same_as" in e for e in meta["state"])
    prefix = _PREFIX.pack(MAGIC, version, len(meta_bytes), len(payload), crc)
    write_atomic(path, prefix + meta_bytes + bytes(payload))
    convention = CONVENTION_OF[coding]
    info = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "coding": coding,
        "convention": convention,
        "convention_bytes": sum(
            r["compressed_bits"] for r in compression_table(net, layers, convention)
        )
        / 8,
        "uncounted_state_bytes": _uncounted_state_bytes(net),
        "header_bytes": len(prefix) + len(meta_bytes),
        "header_allowance_bytes": header_allowance(len(meta["layers"]) + len(meta["state"])),
        "num_layers": len(meta["layers"]),
    }
    if verbose:
        print(size_report(info))
    return info


def size_allowance(info: dict) -> float:
    """Bytes a file may hold beyond its convention's count: the uncounted state, the header
    allowance, and per layer one byte of padding (+ 4 bytes of final state for rans, and as much
    again for its quantized frequencies)."""
    per_layer = {"fixed": 1, "huffman": 1, "rans": 9}[info["coding"]]
    return (
        info["uncounted_state_bytes"]
        + info["header_allowance_bytes"]
        + per_layer * info["num_layers"]
    )


def size_report(info: dict) -> str:
    """One line: the real file size next to the size the coding's convention counts."""
    extra = info["bytes"] - info["convention_bytes"]
    return (
        f"{info['path']}: {info['bytes']:,} bytes on disk ({info['coding']} index coding) | "
        f"the {info['convention']} convention counts {info['convention_bytes']:,.0f} bytes; "
        f"the file holds {extra:+,.0f} more: {info['uncounted_state_bytes']:,} bytes of "
        f"batch-norm/buffer state, {info['header_bytes']:,} bytes of header, the rest padding "
        f"and coder state"
    )


# ---------------------------------------------------------------- load
def meta_cap(net: nn.Module) -> int:
    """The most bytes a file's metadata may decompress to for `net`: the header allowance per
    state entry and conv, plus 12 bytes per kernel row (a code length or frequency per cluster,
    K ≤ N)."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    rows = sum(m.weight.numel() // m.weight.shape[-1] for m in convs)
    return header_allowance(len(net.state_dict()) + len(convs)) + 12 * rows


def _inflate(path: Path, raw: bytes, cap: int) -> bytes:
    """zlib-decompressed metadata, refused as soon as it grows past `cap` bytes."""
    out = zlib.decompressobj().decompress(raw, cap + 1)
    if len(out) > cap:
        raise ExportFormatError(
            f"{path}: the metadata decompresses to more than {cap:,} bytes, more than any file of "
            f"this net needs: refused"
        )
    return out


def _read(path: Path, cap: int) -> tuple[dict, memoryview]:
    """Check magic, version, length and checksum; return the metadata and the payload."""
    try:
        data = read_bytes(path)  # a regular file: a fifo is refused, never waited on
    except OSError as err:
        raise ExportFormatError(f"{path}: cannot read it: {_reason(err)}") from None
    version, meta_len = _check_prefix(path, data)
    body = memoryview(data)[_PREFIX.size :]
    try:
        raw = bytes(body[:meta_len])
        if version == 1 and meta_len > cap:
            raise ExportFormatError(f"{path}: {meta_len:,} bytes of metadata: allowed {cap:,}")
        meta = json.loads(raw if version == 1 else _inflate(path, raw, cap))
    except ExportFormatError:
        raise
    except (ValueError, zlib.error) as e:
        raise ExportFormatError(f"{path}: unreadable metadata: {e}") from None
    if not isinstance(meta, dict):
        raise ExportFormatError(f"{path}: malformed metadata: a JSON {type(meta).__name__}, "
                                f"allowed a JSON object")  # fmt: skip
    if meta.get("byteorder") != sys.byteorder:
        raise ExportFormatError(
            f"{path}: written on a {meta.get('byteorder')}-endian machine, "
            f"this one is {sys.byteorder}"
        )
    return meta, body[meta_len:]


def _check_prefix(path: Path, data: bytes) -> tuple[int, int]:
    """(format version, metadata length) of a file: magic, version, length and CRC checked."""
    if len(data) < _PREFIX.size:
        raise ExportFormatError(
            f"{path}: truncated file: {len(data)} bytes, "
            f"shorter than the {_PREFIX.size}-byte prefix"
        )
    magic, version, meta_len, payload_len, crc = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise ExportFormatError(
            f"{path}: not a dkm shared-model file: magic {magic!r}, expected {MAGIC!r}"
        )
    if version not in READABLE_VERSIONS:
        raise ExportFormatError(
            f"{path}: format version {version} is not supported: this dkm reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}"
        )
    end = _PREFIX.size + meta_len + payload_len
    if len(data) != end:
        problem = "truncated file" if len(data) < end else "trailing bytes after the payload"
        raise ExportFormatError(f"{path}: {problem}: {len(data)} bytes, the header announces {end}")
    if zlib.crc32(memoryview(data)[_PREFIX.size :]) != crc:
        raise ExportFormatError(f"{path}: checksum mismatch (CRC32): the file is corrupted")
    return version, meta_len


def _reason(err: OSError) -> str:
    """'is a directory', 'no such file', ... from an OSError."""
    return (err.strerror or str(err)).lower().replace("no such file or directory", "no such file")


def _slice(path: Path, payload: memoryview, offset: int, nbytes: int, what: str) -> bytes:
    if offset < 0 or offset + nbytes > len(payload):
        raise ExportFormatError(
            f"{path}: {what} lies outside the payload ({offset}+{nbytes} > {len(payload)})"
        )
    return bytes(payload[offset : offset + nbytes])


def _check_layer_entry(path: Path, name: str, shape: tuple, k: int, convs: dict) -> None:
    """A shared layer's name, shape and K against the net's convs."""
    if name not in convs:
        raise ExportFormatError(
            f"{path}: architecture mismatch: shared layer {name!r} is not a Conv2d of the net"
        )
    if tuple(convs[name].weight.shape) != shape:
        raise ExportFormatError(
            f"{path}: architecture mismatch: layer {name!r} has shape {shape} in the file, "
            f"{tuple(convs[name].weight.shape)} in the net"
        )
    rows = math.prod(shape[:3])
    if not 1 <= k <= rows:
        raise ExportFormatError(f"{path}: layer {name!r} has K={k}: allowed 1 ≤ K ≤ N={rows}")


def _decode_layer(path: Path, entry: dict, payload: memoryview, convs: dict):
    """One SharedLayer from its metadata; its shape must match the net's conv of the same name."""
    from dkm.sharing import SharedLayer

    name, shape, k = entry["name"], tuple(int(n) for n in entry["shape"]), int(entry["K"])
    _check_layer_entry(path, name, shape, k, convs)
    num_rows, s = math.prod(shape[:3]), shape[3]
    conv = convs[name]
    dtype = _DTYPES.get(entry.get("codebook_dtype", "float32"))
    if dtype != conv.weight.dtype:
        raise ExportFormatError(
            f"{path}: layer {name!r} has {entry.get('codebook_dtype', 'float32')} weights in the "
            f"file, {str(conv.weight.dtype).removeprefix('torch.')} in the net: allowed the same "
            f"dtype (convert the net first, e.g. net.double())"
        )
    index, p, bias = int(entry["index"]), float(entry["p"]), int(entry["bias_numel"])
    consistent = (
        index == list(convs).index(name)
        and 0.0 <= p < 1.0
        and bias == (0 if conv.bias is None else conv.bias.numel())
    )
    if not consistent:
        raise ExportFormatError(
            f"{path}: layer {name!r} has index={index}, p={p}, bias_numel={bias}: inconsistent "
            f"with the net's conv (its conv index, 0 ≤ p < 1, its bias size)"
        )
    size = torch.empty((), dtype=dtype).element_size()
    cb = _slice(path, payload, entry["offset"], size * k * s, f"codebook of {name!r}")
    coding = entry.get("coding", "fixed")  # version 1: fixed, its length from the bits
    nbytes = entry.get("index_bytes", math.ceil(num_rows * int(entry.get("bits", 0)) / 8))
    idx = _slice(path, payload, entry["offset"] + len(cb), int(nbytes), f"indexes of {name!r}")
    codebook = torch.frombuffer(bytearray(cb), dtype=dtype).reshape(k, s)
    try:
        assignments = torch.from_numpy(decode(idx, num_rows, coding, entry, k))
    except CodingError as e:
        raise ExportFormatError(f"{path}: layer {name!r}: {e}") from None
    if num_rows and int(assignments.max()) >= k:
        raise ExportFormatError(f"{path}: layer {name!r} has an index ≥ K={k}")
    return SharedLayer(name, index, shape, codebook, assignments, p, bias)


def _decode_tensor(path: Path, entry: dict, payload: memoryview, expected: dict):
    """One state tensor; the net's entry of that key fixes its dtype and shape."""
    key = entry["key"]
    if key not in expected:
        raise ExportFormatError(f"{path}: architecture mismatch: {key!r} is unknown to the net")
    if entry["dtype"] not in _DTYPES:
        raise ExportFormatError(f"{path}: state entry {key!r} has unknown dtype {entry['dtype']!r}")
    dtype, shape = _DTYPES[entry["dtype"]], tuple(int(n) for n in entry["shape"])
    want = expected[key]
    if dtype != want.dtype or shape != tuple(want.shape):
        raise ExportFormatError(
            f"{path}: {key!r} is {entry['dtype']} {shape} in the file, "
            f"{str(want.dtype).removeprefix('torch.')} {tuple(want.shape)} in the net: allowed "
            f"the same dtype and shape"
        )
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    blob = _slice(path, payload, entry["offset"], nbytes, f"state entry {entry['key']!r}")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(blob), dtype=dtype).reshape(shape)


def _check_state(path: Path, net: nn.Module, state: dict) -> None:
    """The file's state has exactly the net's keys, each tensor the net's dtype and shape."""
    expected = net.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportFormatError(
            f"{path}: architecture mismatch: missing in the file {missing[:5]}, "
            f"unknown to the net {unexpected[:5]}"
        )
    for key, t in state.items():
        if t.dtype != expected[key].dtype or t.shape != expected[key].shape:
            raise ExportFormatError(
                f"{path}: {key!r} is {t.dtype} {tuple(t.shape)} in the file, "
                f"{expected[key].dtype} {tuple(expected[key].shape)} in the net"
            )


def load_shared(path, net: nn.Module):
    """Load a file of `save_shared` into a fresh `net` of the same architecture.

    Returns its ShareResult.
    """
    from dkm.sharing import ShareResult

    path = Path(path)
    check_not_meta(net, "load_shared")
    meta, payload = _read(path, meta_cap(net))
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    expected = net.state_dict()
    try:
        layers = {e["name"]: _decode_layer(path, e, payload, convs) for e in meta["layers"]}
        if len(layers) != len(meta["layers"]):
            raise ExportFormatError(f"{path}: malformed metadata: a layer listed twice")
        entries = [e for e in meta["state"] if "same_as" not in e]
        state = {e["key"]: _decode_tensor(path, e, payload, expected) for e in entries}
        state.update({f"{name}.weight": layer.weight() for name, layer in layers.items()})
        for e in meta["state"]:
            if "same_as" in e:  # a tied entry: the same tensor as an earlier key
                state[str(e["key"])] = state[e["same_as"]]
        skipped = {str(k): str(v) for k, v in dict(meta["skipped"]).items()}
    except ExportFormatError:
        raise
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError, IndexError) as e:
        raise ExportFormatError(f"{path}: malformed metadata: {e!r}") from None
    _check_state(path, net, state)
    net.load_state_dict(state, strict=True)
    return ShareResult(layers=layers, skipped=skipped)
