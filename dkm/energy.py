"""Step 4 of the method: the energy-aware metric of a dense or row-wise shared net (paper §4).

Energy of a layer = arithmetic + data movement, in units of one 16-bit MAC (E_MAC16, the unit
of the Eyeriss figures below). Every constant is a published figure, none is fitted to a reference:

- Arithmetic in full-adder (FA) equivalents (paper §4; Weste & Harris, CMOS VLSI Design: an
  m×n array multiplier is about m·n FAs, an n-bit ripple adder n FAs). A MAC with w-bit weights
  and a-bit activations summing R products needs an accumulator of w + a + ⌈log2 R⌉ bits (no
  overflow). The unit E_MAC16 is a 16×16 multiply plus a 32-bit add: 288 FAs.
- Data movement: per-access energy of a 16-bit word relative to a 16-bit MAC in 65 nm, from
  Chen, Emer, Sze, "Eyeriss: a spatial architecture for energy-efficient dataflow for CNNs", ISCA
  2016, and Sze et al., "Efficient processing of deep neural networks", Proc. IEEE 2017:
  RF 1×, inter-PE array 2×, global buffer 6×, DRAM 200×. A word of b bits costs b/16 of that
  (energy per bit moved taken as constant). Partial sums move at the accumulator width.
- Access counts: Chen et al. (ISCA 2016, §V) write the energy of an input datum (weight or ifmap) as
  a·E_DRAM + ab·E_buf + abc·E_array + abcd·E_RF, a·b·c·d being its total reuse, and of a psum
  accumulation as (2a−1)·E_DRAM + 2a(b−1)·E_buf + ab(c−1)·E_array + 2abc(d−1)·E_RF. The factors here
  come from the row-stationary (RS) dataflow on the Eyeriss v1 chip (Chen et al., JSSC 2017:
  12×14 PEs; scratchpads of 224 filter, 12 ifmap and 24 psum words), see `rs_accesses`.
  DRAM traffic is taken at its compulsory minimum (each weight, input and output once), an
  optimistic assumption for layers whose working set exceeds the 108 KB buffer.
- Row-wise weight sharing (paper §3.3–4): weights are stored as ⌈log2 K⌉-bit indexes (one per
  kernel row) plus a K×kw codebook; the product of an ifmap row with a shared center row is
  computed once and reused by every filter row with that center and input channel: fewer
  multiplications, the same additions (see `shared_mults`). Ifmap and psum traffic are unchanged.
- Not counted: biases (one add per output), batch norm, pooling, activation functions.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch

from . import authors
from ._checks import check_float, check_int
from .inventory import LayerInfo, layer_inventory
from .plan import Plan
from .rows import to_rows

# Sze et al. Proc. IEEE 2017 / Chen et al. ISCA 2016: energy per 16-bit access, relative to a 16-bit
# MAC
ACCESS_COST = {"rf": 1.0, "array": 2.0, "buffer": 6.0, "dram": 200.0}
LEVELS = tuple(ACCESS_COST)
WORD_BITS = 16
# Eyeriss v1 (Chen et al., JSSC 2017): PE array and per-PE scratchpad sizes in 16-bit words
ARRAY_ROWS, ARRAY_COLS = 12, 14
SPAD_FILTER, SPAD_IFMAP, SPAD_PSUM = 224, 12, 24
# the unit: a 16×16-bit multiplier (16·16 FAs) plus a 32-bit adder (32 FAs)
FA_PER_MAC16 = 16 * 16 + 32
COMPONENTS = ("arith",) + LEVELS
UNIT = "E_MAC16"


@dataclass(frozen=True)
class Share:
    """How one conv layer is shared: K centers; exact `assignments` (N,), or else the expected usage
    with a dominant cluster holding a fraction p of the rows and the others used uniformly."""

    num_clusters: int
    p: float = 0.0
    assignments: torch.Tensor | None = None


def accumulator_bits(weight_bits: int, act_bits: int, reduction: int) -> int:
    """w + a + ⌈log2 R⌉: the width that sums R products of w×a bits without overflow."""
    return weight_bits + act_bits + math.ceil(math.log2(max(reduction, 1)))


def rs_mapping(layer: LayerInfo) -> dict:
    """Row-stationary parameters (Chen et al. ISCA 2016 §IV; names as in JSSC 2017)."""
    S, C, M = layer.kernel[1], layer.c_in // layer.groups, layer.c_out // layer.groups
    # q channels per PE: their S-wide ifmap windows fill the 12-word ifmap spad
    q = min(C, max(1, SPAD_IFMAP // S))
    # p filters per PE: p psums in the 24-word psum spad, p·q·S weights in the 224-word filter spad
    p = min(M, SPAD_PSUM, max(1, SPAD_FILTER // (q * S)))
    # a PE set is R×E (filter rows × output rows), cut into strips of e ≤ 14 columns;
    # t = ⌊12/R⌋ sets are stacked vertically and (assumption) process different filters
    e = min(layer.out_size[0], ARRAY_COLS)
    t = max(1, ARRAY_ROWS // layer.kernel[0])
    return {"q": q, "p": p, "e": e, "t": t}


def rs_accesses(layer: LayerInfo, mults: float | None = None) -> dict:
    """Accesses (words) per (data type, level) of one layer under RS; `mults` < MACs for a shared
    layer."""
    m = rs_mapping(layer)
    R, S = layer.kernel
    U_y, U_x = layer.stride
    E, F = layer.out_size
    macs = layer.macs
    mults = macs if mults is None else mults
    # weights: a filter row stays in the RF for the F positions of an output row (abcd = B·E·F),
    # multicast along a strip of e PEs, fetched from the buffer once per strip and image
    w = {
        "rf": mults,
        "array": macs / F,
        "buffer": layer.weights * layer.batch * math.ceil(E / m["e"]),
        "dram": layer.weights,
    }
    # ifmaps: a value in the RF serves p filters × S/U window positions; a buffer read is
    # multicast diagonally to the R/U PEs of a set and to the t sets
    arr_i = macs / (m["p"] * max(1.0, S / U_x))
    i = {
        "rf": mults,
        "array": arr_i,
        "buffer": max(layer.inputs, arr_i / (max(1.0, min(R, ARRAY_ROWS) / U_y) * m["t"])),
        "dram": layer.inputs,
    }
    # psums, per output value: (2a−1)·DRAM + 2a(b−1)·buffer + ab(c−1)·array + 2abc(d−1)·RF (Chen et
    # al. 2016 §V) with a = 1, d = q·S taps summed in a PE, c = R rows summed down a PE column, b =
    # the rest
    d_o, c_o = m["q"] * S, R
    b_o = max(1.0, layer.reduction / (d_o * c_o))
    n = layer.outputs
    o = {
        "rf": 2 * b_o * c_o * (d_o - 1) * n,
        "array": b_o * (c_o - 1) * n,
        "buffer": 2 * (b_o - 1) * n,
        "dram": n,
    }
    # shared layers also read each reused row product (one psum-wide value per output) from the RF
    o["rf"] += (macs - mults) / S
    return {"weights": w, "inputs": i, "psums": o}


def layer_energy(
    layer: LayerInfo, bits: int = 16, act_bits: int | None = None, share: Share | None = None
) -> dict:
    """Energy (E_MAC16) of one layer by component (arith, rf, array, buffer, dram) and data type."""
    w_bits = check_int("bits", bits, 1, 32)
    a_bits = w_bits if act_bits is None else check_int("act_bits", act_bits, 1, 32)
    acc = accumulator_bits(w_bits, a_bits, layer.reduction)
    share = _effective_share(layer, share)
    mults = layer.macs if share is None else shared_mults(layer, share)
    store_bits = weight_storage_bits(layer, w_bits, share)
    counts = rs_accesses(layer, mults)
    # bits per access: weights at their storage density (indexes + codebook when shared), RF reads
    # at w
    width = {
        "weights": {lv: store_bits / layer.weights for lv in LEVELS} | {"rf": w_bits},
        "inputs": dict.fromkeys(LEVELS, a_bits),
        "psums": dict.fromkeys(LEVELS, acc) | {"dram": a_bits},
    }
    out = {
        "name": layer.name,
        "kind": layer.kind,
        "macs": layer.macs,
        "mults": mults,
        "adds": layer.macs,
        "params": layer.params,
        "weight_bits": store_bits,
        "K": share.num_clusters if share else 0,
    }
    # multiply ≈ w·a FAs, add ≈ acc FAs (paper §4), in units of a 16-bit MAC
    out["arith"] = (mults * w_bits * a_bits + layer.macs * acc) / FA_PER_MAC16
    for lv in LEVELS:
        out[lv] = sum(counts[d][lv] * width[d][lv] / WORD_BITS * ACCESS_COST[lv] for d in counts)
    for d in counts:
        out[d] = sum(counts[d][lv] * width[d][lv] / WORD_BITS * ACCESS_COST[lv] for lv in LEVELS)
    out["total"] = sum(out[c] for c in COMPONENTS)
    return out


def weight_storage_bits(layer: LayerInfo, bits: int, share: Share | None) -> int:
    """Dense: weights·w bits. Shared: N·⌈log2 K⌉ index bits + K·kw·w codebook bits (paper §4)."""
    if share is None:
        return layer.weights * bits
    K = share.num_clusters
    return layer.kernel_rows * math.ceil(math.log2(K)) + K * layer.kernel[1] * bits


def _effective_share(layer: LayerInfo, share: Share | None) -> Share | None:
    """A share applies to convs with K < N rows; K ≥ N leaves the layer as is (the authors'
    convention)."""
    if share is None:
        return None
    if layer.kind != "conv":
        raise ValueError(
            f"layer {layer.name!r} is {layer.kind}: sharing applies to conv layers only"
        )
    check_int(f"K of {layer.name}", share.num_clusters, 1)
    check_float(f"p of {layer.name}", share.p, 0.0, 1.0, hi_open=True)
    if share.assignments is not None and share.assignments.numel() != layer.kernel_rows:
        raise ValueError(
            f"assignments of {layer.name!r} have {share.assignments.numel()} entries: "
            f"allowed exactly N = {layer.kernel_rows} (one per kernel row)"
        )
    return None if share.num_clusters >= layer.kernel_rows else share


def _row_patterns(layer: LayerInfo) -> Counter:
    """For each padded ifmap row h, the kernel rows r that meet it (h = e·U + r, 0 ≤ e < E);
    counted."""
    R, U, E = layer.kernel[0], layer.stride[0], layer.out_size[0]
    pats = Counter()
    for h in range((E - 1) * U + R):
        pats[tuple(r for r in range(R) if h >= r and (h - r) % U == 0 and (h - r) // U < E)] += 1
    return pats


def expected_distinct(n: int, K: int, p: float = 0.0) -> float:
    """E|{centers used by n rows}| = Σ_k 1 − (1 − π_k)^n, π = (p, (1−p)/(K−1), …) or uniform 1/K."""
    if p > 0 and K > 1:
        return (1 - (1 - p) ** n) + (K - 1) * (1 - (1 - (1 - p) / (K - 1)) ** n)
    return K * (1 - (1 - 1 / K) ** n)


def shared_mults(layer: LayerInfo, share: Share) -> float:
    """Multiplications left when each (input channel, ifmap row, center row) product is computed
    once.

    Dense: every filter row meeting ifmap row h costs F·kw multiplies. Shared: only the distinct
    centers among the filter rows of the same input channel that meet h do (paper §4, row reuse).
    """
    F, S = layer.out_size[1], layer.kernel[1]
    g, R, K = layer.groups, layer.kernel[0], share.num_clusters
    C, M = layer.c_in // g, layer.c_out // g
    pats, total = _row_patterns(layer), 0.0
    if share.assignments is None:
        for rows, count in pats.items():
            total += count * layer.c_in * expected_distinct(M * len(rows), K, share.p)
    else:
        a = share.assignments.reshape(g, M, C, R).long()
        chan = (torch.arange(g).view(g, 1, 1, 1) * C + torch.arange(C).view(1, 1, C, 1)).expand_as(
            a
        )
        r = torch.arange(R).view(1, 1, 1, R).expand_as(a)
        for rows, count in pats.items():
            mask = torch.isin(r, torch.tensor(rows, dtype=torch.long))
            total += count * torch.unique(chan[mask] * K + a[mask]).numel()
    return float(layer.batch * F * S * total)


def net_energy(
    layers, bits: int = 16, act_bits: int | None = None, shares: dict | None = None
) -> list:
    """Per-layer energy rows of LayerInfos (an Inventory's `.layers`); `shares`: name → Share."""
    shares = shares or {}
    unknown = set(shares) - {layer.name for layer in layers}
    if unknown:
        raise ValueError(f"shares name layers not in the net: {sorted(unknown)}")
    return [layer_energy(layer, bits, act_bits, shares.get(layer.name)) for layer in layers]


def totals(rows: list) -> dict:
    """Column sums of energy rows (MACs, multiplications, every component)."""
    keys = (
        ("macs", "mults", "adds", "params") + COMPONENTS + ("weights", "inputs", "psums", "total")
    )
    return {"name": "TOTAL"} | {k: sum(r[k] for r in rows) for k in keys}


# ---- shared-model descriptions -------------------------------------------------------------


def plan_shares(layers: list, plan) -> dict:
    """name → Share of a `dkm.plan.Plan` (K, p in conv order) for the convs of `layers`."""
    convs = [layer for layer in layers if layer.kind == "conv"]
    if len(convs) != len(plan.K):
        raise ValueError(f"the plan has {len(plan.K)} K for the {len(convs)} convs of the net")
    return {c.name: Share(int(k), float(q)) for c, k, q in zip(convs, plan.K, plan.p)}


def authors_shares(layers: list, setting: str) -> dict:
    """name → Share of the authors' `setting` ("45x", "47x", "50x"), by layer role (dkm.authors)."""
    if setting not in authors.SETTINGS:
        raise ValueError(
            f"shared={setting!r} is not allowed: choose one of {', '.join(authors.SETTINGS)}"
        )
    convs = [layer.name for layer in layers if layer.kind == "conv"]
    return {
        name: Share(k, q) for name, (k, q) in zip(convs, authors.per_role(convs, setting, "shared"))
    }


def auto_shares(net: torch.nn.Module, layers: list) -> dict:
    """name → Share read from the weights: a conv's distinct kernel rows are its centers (K < N)."""
    mods, shares = dict(net.named_modules()), {}
    for layer in layers:
        if layer.kind != "conv" or layer.name not in mods:
            continue
        _, assignments = torch.unique(
            to_rows(mods[layer.name].weight.detach()), dim=0, return_inverse=True
        )
        K = int(assignments.max()) + 1
        if K < layer.kernel_rows:
            shares[layer.name] = Share(K, 0.0, assignments)
    return shares


def _as_share(name: str, v) -> Share:
    if isinstance(v, Share):
        return v
    if hasattr(v, "assignments") and hasattr(v, "codebook"):  # a dkm.sharing.SharedLayer
        return Share(v.num_clusters, float(v.p), v.assignments)
    if isinstance(v, dict):
        return Share(int(v["K"]), float(v.get("p", 0.0)))
    if isinstance(v, (tuple, list)):
        return Share(int(v[0]), float(v[1]) if len(v) > 1 else 0.0)
    return Share(check_int(f"K of {name}", v, 1))


def make_shares(layers: list, shared=None, net=None) -> dict:
    """name → Share from: None; a Plan; a dict name → K | (K, p) | {"K","p"} | SharedLayer; a
    ShareResult; "45x"/"47x"/"50x" (the authors' settings, by role); "auto" (distinct rows of
    `net`);
    or a JSON file of a dict."""
    if shared is None:
        return {}
    if isinstance(shared, Plan):
        return plan_shares(layers, shared)
    if hasattr(shared, "layers") and hasattr(shared, "skipped"):  # a dkm.sharing.ShareResult
        shared = shared.layers
    if isinstance(shared, str):
        return _shares_from_str(layers, shared, net)
    if not isinstance(shared, dict):
        raise TypeError(
            f"shared must be a dict, a ShareResult or a string, got {type(shared).__name__}"
        )
    return {name: _as_share(name, v) for name, v in shared.items()}


def _shares_from_str(layers: list, shared: str, net) -> dict:
    """Shares named by a string: an authors' setting, "auto" or a JSON file."""
    if shared in authors.SETTINGS:
        return authors_shares(layers, shared)
    if shared == "auto":
        if net is None:
            raise ValueError("shared='auto' reads the shared rows from the weights: pass the net")
        return auto_shares(net, layers)
    if not Path(shared).exists():
        raise ValueError(
            f"shared={shared!r} is not allowed: choose 45x, 47x, 50x, auto or an existing JSON file"
        )
    return make_shares(layers, json.loads(Path(shared).read_text()))


# ---- dense vs shared -------------------------------------------------------------------------


def compare_energy(layers: list, shares: dict, bits: int = 16, act_bits: int | None = None) -> list:
    """Per layer: dense and shared energy by component, multiplications, the ratio dense/shared."""
    dense, shared = net_energy(layers, bits, act_bits), net_energy(layers, bits, act_bits, shares)
    rows = []
    for d, s in zip(dense + [totals(dense)], shared + [totals(shared)]):
        row = {
            "name": d["name"],
            "bits": bits,
            "K": s.get("K", ""),
            "macs": d["macs"],
            "dense_mults": d["mults"],
            "shared_mults": s["mults"],
        }
        for c in COMPONENTS + ("total",):
            row[f"dense_{c}"], row[f"shared_{c}"] = d[c], s[c]
        row["ratio"] = d["total"] / s["total"]
        rows.append(row)
    return rows


def wrn_sharing_table(settings=authors.SETTINGS, bits=(8, 16)) -> list:
    """Dense vs shared WRN-16-4 (3×32×32 input) per layer, each of the authors' settings (rows)."""
    layers = layer_inventory(authors.wrn16_4(), (3, 32, 32)).layers
    return [
        {"setting": s} | row
        for s in settings
        for b in bits
        for row in compare_energy(layers, authors_shares(layers, s), b)
    ]
