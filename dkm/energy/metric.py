"""Step 4 of the method: the energy-aware metric of a dense or row-wise shared net (paper §4).

Energy of a layer = arithmetic + data movement, in units of one 16-bit MAC (E_MAC16, the unit
of the Eyeriss figures below). Every constant is a published figure, none is fitted to a reference:

- Arithmetic in full-adder (FA) equivalents (paper §4; Weste & Harris, CMOS VLSI Design: an
  m×n array multiplier is about m·n FAs, an n-bit ripple adder n FAs). A MAC with w-bit weights
  and a-bit activations summing R products needs an accumulator of w + a + ⌈log2 R⌉ bits (no
  overflow). The unit E_MAC16 is a 16×16 multiply plus a 32-bit add: 288 FAs.
- Data movement: an accelerator description (`dkm.energy.accelerators`: memory levels with their
cost per
  access and size, PE array, dataflow reuse rules); the default, `eyeriss`, is the following.
  Per-access energy of a 16-bit word relative to a 16-bit MAC in 65 nm, from
  Chen, Emer, Sze, "Eyeriss: a spatial architecture for energy-efficient dataflow for CNNs", ISCA
  2016, and Sze et al., "Efficient processing of deep neural networks", Proc. IEEE 2017:
  RF 1×, inter-PE array 2×, global buffer 6×, DRAM 200×. A word of b bits costs b/16 of that
  (energy per bit moved taken as constant). Partial sums move at the accumulator width.
- Access counts: Chen et al. (ISCA 2016, §V) write the energy of an input datum (weight or ifmap) as
  a·E_DRAM + ab·E_buf + abc·E_array + abcd·E_RF, a·b·c·d being its total reuse, and of a psum
  accumulation as (2a−1)·E_DRAM + 2a(b−1)·E_buf + ab(c−1)·E_array + 2abc(d−1)·E_RF. The factors here
  come from the row-stationary (RS) dataflow on the Eyeriss v1 chip (Chen et al., JSSC 2017:
  12×14 PEs; scratchpads of 224 filter, 12 ifmap and 24 psum words), see `rs_accesses`. The
  other description, `systolic_ws`, is a weight-stationary systolic array (TPU-like).
  DRAM traffic is taken at its compulsory minimum (each weight, input and output once), an
  optimistic assumption for layers whose working set exceeds the 108 KB buffer.
- Row-wise weight sharing (paper §3.3–4): weights are stored as ⌈log2 K⌉-bit indexes (one per
  kernel row) plus a K×kw codebook; the product of an ifmap row with a shared center row is
  computed once (whatever the dataflow) and reused by every filter row with that center and input
  channel: fewer multiplications, the same additions (see `shared_mults`). Ifmap and psum traffic
  are unchanged.
- Not counted: biases (one add per output), batch norm, pooling, activation functions.
"""

from __future__ import annotations

import math
from collections import Counter

import torch

from dkm import plans as authors
from dkm._checks import check_float, check_int
from dkm.energy.accelerators import EYERISS, LEVELS, Accelerator, accesses, get_accelerator
from dkm.energy.inventory import LayerInfo, layer_inventory
from dkm.energy.shares import Share, authors_shares
from dkm.training.models import wrn16_4

# the unit: a 16×16-bit multiplier (16·16 FAs) plus a 32-bit adder (32 FAs)
FA_PER_MAC16 = 16 * 16 + 32
# Eyeriss's figures, kept under their old names (the default accelerator's)
ACCESS_COST, WORD_BITS = EYERISS.cost, EYERISS.word_bits
COMPONENTS = ("arith",) + LEVELS
UNIT = "E_MAC16"


def accumulator_bits(weight_bits: int, act_bits: int, reduction: int) -> int:
    """w + a + ⌈log2 R⌉: the width that sums R products of w×a bits without overflow."""
    return weight_bits + act_bits + math.ceil(math.log2(max(reduction, 1)))


def layer_energy(
    layer: LayerInfo,
    bits: int = 16,
    act_bits: int | None = None,
    share: Share | None = None,
    accelerator: Accelerator | str = "eyeriss",
) -> dict:
    """Energy (E_MAC16) of one layer by component and data type; `bits` of weights, `act_bits` of
    activations (default: `bits`), on `accelerator` (a name or an Accelerator; paper §4)."""
    w_bits = check_int("bits", bits, 1, 32)
    a_bits = w_bits if act_bits is None else check_int("act_bits", act_bits, 1, 32)
    hw = get_accelerator(accelerator)
    acc = accumulator_bits(w_bits, a_bits, layer.reduction)
    share = _effective_share(layer, share)
    mults = layer.macs if share is None else shared_mults(layer, share)
    store_bits = weight_storage_bits(layer, w_bits, share)
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
    # bits per access: weights at their storage density (indexes + codebook when shared), RF reads
    # at w; inputs at a; psums at the accumulator width, written to DRAM at a
    width = {
        "weights": {lv: store_bits / layer.weights for lv in LEVELS} | {"rf": w_bits},
        "inputs": dict.fromkeys(LEVELS, a_bits),
        "psums": dict.fromkeys(LEVELS, acc) | {"dram": a_bits},
    }
    out |= _movement(accesses(layer, mults, hw), width, hw)
    out["total"] = sum(out[c] for c in COMPONENTS)
    return out


def _movement(counts: dict, width: dict, hw: Accelerator) -> dict:
    """Σ accesses · (bits / word) · cost per word, by level and by data type."""
    cost, word = hw.cost, hw.word_bits
    out = {lv: sum(counts[d][lv] * width[d][lv] / word * cost[lv] for d in counts) for lv in LEVELS}
    for d in counts:
        out[d] = sum(counts[d][lv] * width[d][lv] / word * cost[lv] for lv in LEVELS)
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
    layers,
    bits: int = 16,
    act_bits: int | None = None,
    shares: dict | None = None,
    accelerator: Accelerator | str = "eyeriss",
) -> list:
    """Per-layer energy rows of LayerInfos (an Inventory's `.layers`); `shares`: name → Share."""
    shares = shares or {}
    unknown = set(shares) - {n for layer in layers for n in (layer.name, layer.owner)}
    if unknown:
        raise ValueError(f"shares name layers not in the net: {sorted(unknown)}")
    hw = get_accelerator(accelerator)
    # every call is costed with the sharing of the weight it uses (a 2nd call, a tied conv)
    return [
        layer_energy(layer, bits, act_bits, shares.get(layer.owner, shares.get(layer.name)), hw)
        for layer in layers
    ]


def totals(rows: list) -> dict:
    """Column sums of energy rows (MACs, multiplications, every component)."""
    keys = (
        ("macs", "mults", "adds", "params") + COMPONENTS + ("weights", "inputs", "psums", "total")
    )
    return {"name": "TOTAL"} | {k: sum(r[k] for r in rows) for k in keys}


# ---- dense vs shared -------------------------------------------------------------------------


def compare_energy(
    layers: list,
    shares: dict,
    bits: int = 16,
    act_bits: int | None = None,
    accelerator: Accelerator | str = "eyeriss",
) -> list:
    """Per layer: dense and shared energy by component, multiplications, the ratio dense/shared."""
    dense = net_energy(layers, bits, act_bits, None, accelerator)
    shared = net_energy(layers, bits, act_bits, shares, accelerator)
    rows = []
    for d, s in zip(dense + [totals(dense)], shared + [totals(shared)]):
        row = {
            "name": d["name"],
            "bits": bits,
            "act_bits": act_bits or bits,
            "accelerator": get_accelerator(accelerator).name,
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
    layers = layer_inventory(wrn16_4(), (3, 32, 32)).layers
    return [
        {"setting": s} | row
        for s in settings
        for b in bits
        for row in compare_energy(layers, authors_shares(layers, s), b)
    ]
