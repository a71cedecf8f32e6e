"""Step 4 of the method: a shared net as a compact file, and back (paper §3.3: codebook + indexes).

File layout (little-endian), format version 1:

    prefix   "DKMSHARE" | version u16 | meta_len u32 | payload_len u64 | crc32(meta + payload) u32
    meta     JSON: per shared layer (name, index, shape, K, p, bias_numel, index bits, offsets),
             per remaining state tensor (key, dtype, shape, offset), the skipped layers
    payload  per shared layer: fp32 codebook (K·s·4 bytes), then the N indexes bit-packed at
             ⌈log2 K⌉ bits each, most significant bit first (K = 1: no bytes);
             then every other state_dict entry of the net as raw bytes (conv biases, linear
             layers, non-shared convs, batch-norm parameters and running statistics, ...)

So the file holds exactly what the `fixed` convention counts, plus the state that convention leaves
out (batch norm, buffers), plus the prefix and the JSON metadata.
"""

from __future__ import annotations

import json
import math
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ._io import write_atomic
from .accounting import _shared_layers, compression_table, fixed_index_width

MAGIC = b"DKMSHARE"
VERSION = 1
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
    if bits == 0:
        return b""
    a = assignments.detach().cpu().numpy().astype(np.uint64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    # bit j of row i (from the top) is (a_i >> (bits−1−j)) & 1
    bitmat = ((a[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1)).tobytes()


def unpack_indexes(data: bytes, num_rows: int, bits: int) -> torch.Tensor:
    """Inverse of `pack_indexes`: the N indexes as int64."""
    if bits == 0:
        return torch.zeros(num_rows, dtype=torch.int64)
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=num_rows * bits)
    # a_i = Σ_j bit_ij · 2^(bits−1−j)
    powers = np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return torch.from_numpy(flat.reshape(num_rows, bits).astype(np.int64) @ powers)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


# ---------------------------------------------------------------- save
def _shared_weight_keys(layers: dict) -> set:
    return {f"{name}.weight" for name in layers}


def _check_for_save(net: nn.Module, layers: dict) -> None:
    """Every shared layer is a plain Conv2d of `net` with the same shape and valid indexes."""
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


def _encode(net: nn.Module, layers: dict, skipped: dict) -> tuple[dict, bytearray]:
    """The JSON metadata and the payload of the shared `layers` on `net`."""
    payload = bytearray()
    meta = {"byteorder": sys.byteorder, "layers": [], "state": [], "skipped": dict(skipped)}
    for name, layer in layers.items():
        bits = fixed_index_width(layer.num_clusters)
        meta["layers"].append(
            {
                "name": name,
                "index": int(layer.index),
                "shape": list(layer.shape),
                "K": layer.num_clusters,
                "p": float(layer.p),
                "bias_numel": int(layer.bias_numel),
                "bits": bits,
                "offset": len(payload),
            }
        )
        payload += _tensor_bytes(layer.codebook.to(torch.float32))
        payload += pack_indexes(layer.assignments, bits)
    skip = _shared_weight_keys(layers)
    for key, t in net.state_dict().items():
        if key in skip:
            continue
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _DTYPES:
            raise ValueError(f"state entry {key!r} has dtype {dtype}: allowed {', '.join(_DTYPES)}")
        meta["state"].append(
            {"key": key, "dtype": dtype, "shape": list(t.shape), "offset": len(payload)}
        )
        payload += _tensor_bytes(t)
    return meta, payload


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


def save_shared(net: nn.Module, shared, path, verbose: bool = False) -> dict:
    """Save `net` with the layers of `shared` (a ShareResult) as codebooks + packed indexes."""
    path = Path(path)
    layers = _shared_layers(shared)
    _check_for_save(net, layers)
    meta, payload = _encode(net, layers, getattr(shared, "skipped", {}))
    meta_bytes = json.dumps(meta, separators=(",", ":")).encode()
    crc = zlib.crc32(payload, zlib.crc32(meta_bytes))
    prefix = _PREFIX.pack(MAGIC, VERSION, len(meta_bytes), len(payload), crc)
    write_atomic(path, prefix + meta_bytes + bytes(payload))
    info = {
        "path": str(path),
        "bytes": path.stat().st_size,
        "fixed_convention_bytes": sum(
            r["compressed_bits"] for r in compression_table(net, layers, "fixed")
        )
        / 8,
        "uncounted_state_bytes": _uncounted_state_bytes(net),
        "header_bytes": len(prefix) + len(meta_bytes),
        "header_allowance_bytes": header_allowance(len(meta["layers"]) + len(meta["state"])),
    }
    if verbose:
        print(size_report(info))
    return info


def size_report(info: dict) -> str:
    """One line: the real file size next to the `fixed`-convention size."""
    return (
        f"{info['path']}: {info['bytes']:,} bytes on disk | "
        f"fixed convention {info['fixed_convention_bytes']:,.0f} bytes"
        f" + {info['uncounted_state_bytes']:,} bytes of batch-norm/buffer state"
        f" + {info['header_bytes']:,} bytes of header"
    )


# ---------------------------------------------------------------- load
def _read(path: Path) -> tuple[dict, memoryview]:
    """Check magic, version, length and checksum; return the metadata and the payload."""
    data = path.read_bytes()
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
    if version != VERSION:
        raise ExportFormatError(
            f"{path}: format version {version} is not supported: this dkm reads version {VERSION}"
        )
    end = _PREFIX.size + meta_len + payload_len
    if len(data) != end:
        problem = "truncated file" if len(data) < end else "trailing bytes after the payload"
        raise ExportFormatError(f"{path}: {problem}: {len(data)} bytes, the header announces {end}")
    body = memoryview(data)[_PREFIX.size :]
    if zlib.crc32(body) != crc:
        raise ExportFormatError(f"{path}: checksum mismatch (CRC32): the file is corrupted")
    try:
        meta = json.loads(bytes(body[:meta_len]))
    except ValueError as e:
        raise ExportFormatError(f"{path}: unreadable metadata: {e}") from None
    if meta.get("byteorder") != sys.byteorder:
        raise ExportFormatError(
            f"{path}: written on a {meta.get('byteorder')}-endian machine, "
            f"this one is {sys.byteorder}"
        )
    return meta, body[meta_len:]


def _slice(path: Path, payload: memoryview, offset: int, nbytes: int, what: str) -> bytes:
    if offset < 0 or offset + nbytes > len(payload):
        raise ExportFormatError(
            f"{path}: {what} lies outside the payload ({offset}+{nbytes} > {len(payload)})"
        )
    return bytes(payload[offset : offset + nbytes])


def _decode_layer(path: Path, entry: dict, payload: memoryview, convs: dict):
    """One SharedLayer from its metadata; its shape must match the net's conv of the same name."""
    from .sharing import SharedLayer

    name, shape, k, bits = entry["name"], tuple(entry["shape"]), int(entry["K"]), int(entry["bits"])
    if name not in convs:
        raise ExportFormatError(
            f"{path}: architecture mismatch: shared layer {name!r} is not a Conv2d of the net"
        )
    if tuple(convs[name].weight.shape) != shape:
        raise ExportFormatError(
            f"{path}: architecture mismatch: layer {name!r} has shape {shape} in the file, "
            f"{tuple(convs[name].weight.shape)} in the net"
        )
    num_rows, s = math.prod(shape[:3]), shape[3]
    cb = _slice(path, payload, entry["offset"], 4 * k * s, f"codebook of {name!r}")
    idx = _slice(
        path,
        payload,
        entry["offset"] + len(cb),
        math.ceil(num_rows * bits / 8),
        f"indexes of {name!r}",
    )
    codebook = torch.frombuffer(bytearray(cb), dtype=torch.float32).reshape(k, s)
    assignments = unpack_indexes(idx, num_rows, bits)
    if num_rows and int(assignments.max()) >= k:
        raise ExportFormatError(f"{path}: layer {name!r} has an index ≥ K={k}")
    return SharedLayer(
        name,
        int(entry["index"]),
        shape,
        codebook,
        assignments,
        float(entry["p"]),
        int(entry["bias_numel"]),
    )


def _decode_tensor(path: Path, entry: dict, payload: memoryview) -> torch.Tensor:
    if entry["dtype"] not in _DTYPES:
        raise ExportFormatError(
            f"{path}: state entry {entry['key']!r} has unknown dtype {entry['dtype']!r}"
        )
    dtype, shape = _DTYPES[entry["dtype"]], tuple(entry["shape"])
    nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
    blob = _slice(path, payload, entry["offset"], nbytes, f"state entry {entry['key']!r}")
    if nbytes == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(blob), dtype=dtype).reshape(shape)


def _check_state(path: Path, net: nn.Module, state: dict, skip: set) -> None:
    """The file's remaining state has exactly the net's keys, with the same shapes.

    The shared weights (`skip`) are left aside.
    """
    expected = {k: v for k, v in net.state_dict().items() if k not in skip}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ExportFormatError(
            f"{path}: architecture mismatch: missing in the file {missing[:5]}, "
            f"unknown to the net {unexpected[:5]}"
        )
    for key, t in state.items():
        if t.shape != expected[key].shape:
            raise ExportFormatError(
                f"{path}: architecture mismatch: {key!r} has shape {tuple(t.shape)} in the file, "
                f"{tuple(expected[key].shape)} in the net"
            )


def load_shared(path, net: nn.Module):
    """Load a file of `save_shared` into a fresh `net` of the same architecture.

    Returns its ShareResult.
    """
    from .sharing import ShareResult

    path = Path(path)
    meta, payload = _read(path)
    convs = {n: m for n, m in net.named_modules() if isinstance(m, nn.Conv2d)}
    try:
        layers = {e["name"]: _decode_layer(path, e, payload, convs) for e in meta["layers"]}
        state = {e["key"]: _decode_tensor(path, e, payload) for e in meta["state"]}
        skipped = dict(meta["skipped"])
    except (KeyError, TypeError, AttributeError) as e:
        raise ExportFormatError(f"{path}: malformed metadata: {e!r}") from None
    _check_state(path, net, state, _shared_weight_keys(layers))
    state.update({f"{name}.weight": layer.weight() for name, layer in layers.items()})
    net.load_state_dict(state, strict=True)
    return ShareResult(layers=layers, skipped=skipped)
