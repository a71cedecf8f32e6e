"""Entropy coding of a shared layer's cluster indexes, for the export (`dkm.export.dkmfile`).

Three codings of the N indexes of one layer with K clusters used `counts` times:

- `fixed`: ⌈log2 K⌉ bits each, bit-packed (what the `fixed` convention counts);
- `huffman`: a canonical Huffman code on the counts (code lengths from
  `dkm.accounting.huffman_lengths`, so the file spends exactly what the `huffman` convention
  counts, plus < 1 byte of padding); only the K code lengths are stored;
- `rans`: a static range-variant asymmetric numeral system coder (Duda 2013; the byte-wise
  32-bit form of Giesen's ryg_rans), on the counts quantized to a total of 2^16. It reaches the
  entropy N·H that the authors' `official` convention counts within a few bytes per layer: the
  4-byte final state and the cost of the quantized frequencies. Huffman cannot: a code word is
  at least one bit, and with a dominant cluster (K = 7, p = 0.9: H ≈ 0.73 bits) that is where
  the CR of the authors' settings comes from. A short, tested implementation here (about 60
  lines) instead of a dependency: no well-kept Python package offers a static rANS over
  integer symbols, and the tests check it against the exact entropy and by round trips.

Both entropy coders are plain Python loops over the symbols (or bits): about a microsecond
each, well under a second for the default profile's nets.
"""

from __future__ import annotations

import numpy as np

from dkm.accounting import fixed_index_width, huffman_lengths

CODINGS = ("fixed", "huffman", "rans")
RANS_SCALE_BITS = 16
_RANS_L = 1 << 23  # lower bound of the coder state; the state stays in [L, 2^31)


class CodingError(ValueError):
    """Coded indexes that cannot be decoded (corrupt, truncated or inconsistent data)."""


# ---------------------------------------------------------------- fixed width
def pack_fixed(a: np.ndarray, bits: int) -> bytes:
    """N indexes at `bits` bits each, MSB first, padded to whole bytes: ⌈N·bits/8⌉ bytes."""
    if bits == 0:
        return b""
    a = a.astype(np.uint64)
    shifts = np.arange(bits - 1, -1, -1, dtype=np.uint64)
    # bit j of row i (from the top) is (a_i >> (bits−1−j)) & 1
    bitmat = ((a[:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    return np.packbits(bitmat.reshape(-1)).tobytes()


def unpack_fixed(data: bytes, num_rows: int, bits: int) -> np.ndarray:
    """Inverse of `pack_fixed`: the N indexes as int64."""
    if bits == 0:
        return np.zeros(num_rows, dtype=np.int64)
    if len(data) * 8 < num_rows * bits:
        raise CodingError(f"{len(data)} bytes hold fewer than {num_rows} indexes of {bits} bits")
    flat = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=num_rows * bits)
    # a_i = Σ_j bit_ij · 2^(bits−1−j)
    powers = np.int64(1) << np.arange(bits - 1, -1, -1, dtype=np.int64)
    return flat.reshape(num_rows, bits).astype(np.int64) @ powers


# ---------------------------------------------------------------- canonical Huffman
def canonical_codes(lengths) -> dict:
    """{symbol: (code, length)} of the canonical Huffman code with these lengths (0: unused).

    Symbols sorted by (length, symbol) get consecutive codes; each length step shifts left."""
    order = sorted((n, k) for k, n in enumerate(lengths) if n > 0)
    codes, code, prev = {}, 0, order[0][0] if order else 0
    for n, k in order:
        code <<= n - prev
        codes[k], code, prev = (code, n), code + 1, n
    return codes


def huffman_encode(a: np.ndarray, num_clusters: int) -> tuple[bytes, list[int]]:
    """(bit-packed canonical Huffman code words of the indexes, the K code lengths)."""
    counts = np.bincount(a, minlength=num_clusters)
    lengths = huffman_lengths(counts.tolist())
    codes = canonical_codes(lengths)
    if not codes:  # one cluster used: zero bits per index
        return b"", lengths
    width = max(lengths)
    code = np.zeros(num_clusters, dtype=np.uint64)
    size = np.zeros(num_clusters, dtype=np.int64)
    for k, (c, n) in codes.items():
        code[k], size[k] = c << (width - n), n  # left-aligned in `width` bits
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint64)
    bitmat = ((code[a][:, None] >> shifts) & np.uint64(1)).astype(np.uint8)
    keep = np.arange(width)[None, :] < size[a][:, None]  # the first len_k bits of each row
    return np.packbits(bitmat[keep]).tobytes(), lengths


def huffman_decode(data: bytes, lengths, num_rows: int, only: int | None = None) -> np.ndarray:
    """Inverse of `huffman_encode`; `only`: the cluster of a layer that uses just one."""
    codes = canonical_codes(lengths)
    if not codes:
        if only is None or not 0 <= only < len(lengths):
            raise CodingError(f"no Huffman code word and no single cluster (only={only!r})")
        return np.full(num_rows, only, dtype=np.int64)
    table = {(n, c): k for k, (c, n) in codes.items()}
    width = max(lengths)
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8)).tolist()
    out, code, n, pos = [], 0, 0, 0
    while len(out) < num_rows:
        if pos >= len(bits) or n >= width:
            raise CodingError(f"Huffman data ends or breaks after {len(out)} of {num_rows} indexes")
        code, n, pos = (code << 1) | bits[pos], n + 1, pos + 1
        symbol = table.get((n, code))
        if symbol is not None:
            out.append(symbol)
            code, n = 0, 0
    if len(data) != (pos + 7) // 8:
        raise CodingError(f"{len(data)} bytes of Huffman data, the {num_rows} indexes use fewer")
    return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------- rANS
def quantize(counts, scale_bits: int = RANS_SCALE_BITS) -> list[int]:
    """Frequencies summing to 2^scale_bits, ≥ 1 for every used cluster, 0 for unused ones."""
    counts = [int(c) for c in counts]
    total, target = sum(counts), 1 << scale_bits
    if total == 0 or sum(c > 0 for c in counts) > target:
        raise ValueError(f"cannot quantize counts {counts[:8]}… to a total of {target}")
    freqs = [max(1, round(c * target / total)) if c else 0 for c in counts]
    while sum(freqs) != target:  # move the rounding surplus onto (or off) the largest entries
        step = 1 if sum(freqs) < target else -1
        k = max((k for k, f in enumerate(freqs) if f > 1 or step > 0), key=lambda k: freqs[k])
        freqs[k] += step
    return freqs


def rans_encode(a: np.ndarray, num_clusters: int) -> tuple[bytes, list[int]]:
    """(rANS-coded indexes, the quantized frequencies)."""
    freqs = quantize(np.bincount(a, minlength=num_clusters).tolist())
    starts = np.concatenate([[0], np.cumsum(freqs)[:-1]]).tolist()
    x, out, m = _RANS_L, bytearray(), RANS_SCALE_BITS
    for s in reversed(a.tolist()):  # rANS codes in reverse; the decoder reads forwards
        f = freqs[s]
        x_max = ((_RANS_L >> m) << 8) * f
        while x >= x_max:
            out.append(x & 0xFF)
            x >>= 8
        # x ← ⌊x/f⌋·2^m + (x mod f) + start_s
        x = ((x // f) << m) + (x % f) + starts[s]
    out += x.to_bytes(4, "little")  # reversed below: the decoder reads it first, big-endian
    return bytes(out[::-1]), freqs


def rans_decode(data: bytes, freqs, num_rows: int) -> np.ndarray:
    """Inverse of `rans_encode`."""
    m, mask = RANS_SCALE_BITS, (1 << RANS_SCALE_BITS) - 1
    if sum(freqs) != 1 << m or min(freqs, default=0) < 0:
        raise CodingError(f"rANS frequencies sum to {sum(freqs)}, not 2^{m}")
    if len(data) < 4:
        raise CodingError(f"rANS data of {len(data)} bytes: shorter than the 4-byte state")
    starts = np.concatenate([[0], np.cumsum(freqs)[:-1]]).tolist()
    slot = np.repeat(np.arange(len(freqs)), freqs).tolist()  # slot → symbol
    x, pos, out = int.from_bytes(data[:4], "big"), 4, []
    for _ in range(num_rows):
        s = slot[x & mask]
        # x ← f_s·⌊x/2^m⌋ + (x mod 2^m) − start_s
        x = freqs[s] * (x >> m) + (x & mask) - starts[s]
        while x < _RANS_L:
            if pos >= len(data):
                raise CodingError(f"rANS data ends after {len(out)} of {num_rows} indexes")
            x, pos = (x << 8) | data[pos], pos + 1
        out.append(s)
    if x != _RANS_L or pos != len(data):
        raise CodingError("rANS data does not end in the encoder's initial state: corrupt")
    return np.asarray(out, dtype=np.int64)


# ---------------------------------------------------------------- one entry point
def encode(a: np.ndarray, num_clusters: int, coding: str) -> tuple[bytes, dict]:
    """(coded indexes, the parameters the decoder needs) of one layer."""
    if coding == "fixed":
        bits = fixed_index_width(num_clusters)
        return pack_fixed(a, bits), {"bits": bits}
    if coding == "huffman":
        data, lengths = huffman_encode(a, num_clusters)
        only = {"only": int(a[0])} if len(a) and not any(lengths) else {}
        return data, {"lengths": lengths, **only}
    if coding == "rans":
        data, freqs = rans_encode(a, num_clusters)
        return data, {"freqs": freqs, "scale_bits": RANS_SCALE_BITS}
    raise ValueError(f"coding={coding!r} is not allowed: allowed {', '.join(CODINGS)}")


def _numbers(params: dict, field: str, num_clusters: int, lo: int, hi: int) -> list[int]:
    """The K integers of `field` (code lengths, frequencies), each in [lo, hi], checked before
    anything is built from them."""
    values = params[field]
    if not isinstance(values, list) or len(values) != num_clusters:
        raise CodingError(f"{field}: allowed a list of K={num_clusters} numbers")
    if not all(type(v) is int and lo <= v <= hi for v in values):
        raise CodingError(f"{field}: allowed integers in {lo}..{hi}")
    return values


def decode(data: bytes, num_rows: int, coding: str, params: dict, num_clusters: int) -> np.ndarray:
    """Inverse of `encode` for a layer of `num_clusters` clusters; every parameter is checked
    against K before it sizes anything (a crafted file costs no more than a real one)."""
    if coding == "fixed":
        bits = int(params["bits"])
        if bits != fixed_index_width(num_clusters):
            raise CodingError(f"{bits} bits per index: K={num_clusters} needs "
                              f"{fixed_index_width(num_clusters)}")  # fmt: skip
        return unpack_fixed(data, num_rows, bits)
    if coding == "huffman":
        # code words of a Huffman code of K symbols have at most K − 1 bits, and at most 64 for
        # any N below Fib(64) ≈ 1e13 rows (the encoder's words are 64-bit)
        lengths = _numbers(params, "lengths", num_clusters, 0, min(max(num_clusters - 1, 0), 64))
        if sum(2.0**-n for n in lengths if n) > 1:
            raise CodingError("Huffman code lengths break the Kraft inequality: not a prefix code")
        only = params.get("only")
        return huffman_decode(data, lengths, num_rows, None if only is None else int(only))
    if coding == "rans":
        if int(params.get("scale_bits", -1)) != RANS_SCALE_BITS:
            raise CodingError(f"rANS scale bits {params.get('scale_bits')}: this dkm uses 16")
        freqs = _numbers(params, "freqs", num_clusters, 0, 1 << RANS_SCALE_BITS)
        return rans_decode(data, freqs, num_rows)
    raise CodingError(f"unknown index coding {coding!r}: this dkm reads {', '.join(CODINGS)}")
