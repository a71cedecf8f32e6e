"""Accelerators as data for the energy metric of step 4 (paper §4): memory levels, array, dataflow.

An `Accelerator` lists its memory levels (innermost first) with a cost per access of one word and
a size, its PE array and per-PE register files, and names the dataflow whose reuse rules turn a
layer into access counts per (data type, level). The four level roles are fixed so that every
description reports the same energy components: `rf` (a PE's own registers), `array` (one hop
between PEs), `buffer` (the on-chip global buffer), `dram`.

- `eyeriss`: Eyeriss v1 (Chen et al., JSSC 2017; ISCA 2016) with the row-stationary dataflow;
  the constants the metric has always used.
- `systolic_ws`: a weight-stationary systolic array like the TPU v1 (Jouppi et al., ISCA 2017:
  256×256 MACs, 24 MiB unified buffer); same technology costs per 16-bit word as Eyeriss (an
  assumption: the TPU paper gives no per-access energies).

Choices made here: DRAM traffic is the compulsory minimum (each weight, input, output once) in
both dataflows; a shared layer's reused row products are read from the register file (paper §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dkm._checks import check_choice
from dkm.energy.inventory import LayerInfo

LEVELS = ("rf", "array", "buffer", "dram")


@dataclass(frozen=True)
class Level:
    """One memory level: its role, energy per access of one word, size in words (None: off-chip)."""

    name: str
    cost: float
    size: int | None = None


@dataclass(frozen=True)
class Accelerator:
    """A PE array, its memory levels (innermost first) and the dataflow whose reuse rules apply."""

    name: str
    dataflow: str
    levels: tuple
    array: tuple  # (rows, cols) of PEs
    spad: dict  # per-PE register file of each data type, in words: weights, inputs, psums
    word_bits: int = 16  # the word the costs and sizes refer to
    reference: str = ""

    @property
    def cost(self) -> dict:
        """Level name → energy per access of one word."""
        return {lv.name: lv.cost for lv in self.levels}


# Sze et al. Proc. IEEE 2017 / Chen et al. ISCA 2016: energy per 16-bit access, relative to a
# 16-bit MAC; Eyeriss v1 (JSSC 2017): 12×14 PEs, spads of 224 filter, 12 ifmap, 24 psum words,
# 108 KB buffer
EYERISS = Accelerator(
    name="eyeriss",
    dataflow="row_stationary",
    levels=(
        Level("rf", 1.0, 224 + 12 + 24),
        Level("array", 2.0),
        Level("buffer", 6.0, 108 * 1024 // 2),
        Level("dram", 200.0),
    ),
    array=(12, 14),
    spad={"weights": 224, "inputs": 12, "psums": 24},
    reference="Chen, Emer, Sze, ISCA 2016; Chen et al., JSSC 2017",
)

# TPU v1 (Jouppi et al. ISCA 2017): 256×256 weight-stationary MACs, one weight register per PE,
# 24 MiB unified buffer (+ 4 MiB accumulators, counted as buffer); Eyeriss's costs per access
SYSTOLIC_WS = Accelerator(
    name="systolic_ws",
    dataflow="weight_stationary",
    levels=(
        Level("rf", 1.0, 1),
        Level("array", 2.0),
        Level("buffer", 6.0, 24 * 1024 * 1024 // 2),
        Level("dram", 200.0),
    ),
    array=(256, 256),
    spad={"weights": 1, "inputs": 1, "psums": 1},
    reference="Jouppi et al., ISCA 2017 (shape); Sze et al., Proc. IEEE 2017 (costs)",
)

ACCELERATORS = {a.name: a for a in (EYERISS, SYSTOLIC_WS)}


def get_accelerator(accelerator) -> Accelerator:
    """An Accelerator, or the description of that name (eyeriss, systolic_ws)."""
    if isinstance(accelerator, Accelerator):
        if tuple(lv.name for lv in accelerator.levels) != LEVELS:
            raise ValueError(
                f"accelerator {accelerator.name!r} has levels "
                f"{[lv.name for lv in accelerator.levels]}: allowed exactly {list(LEVELS)}"
            )
        check_choice("dataflow", accelerator.dataflow, tuple(DATAFLOWS))
        return accelerator
    return ACCELERATORS[check_choice("accelerator", accelerator, tuple(ACCELERATORS))]


# ---- row stationary (Eyeriss) ----------------------------------------------------------------


def rs_mapping(layer: LayerInfo, acc: Accelerator = EYERISS) -> dict:
    """Row-stationary parameters (Chen et al. ISCA 2016 §IV; names as in JSSC 2017)."""
    S, C, M = layer.kernel[1], layer.c_in // layer.groups, layer.c_out // layer.groups
    rows, cols = acc.array
    # q channels per PE: their S-wide ifmap windows fill the ifmap spad
    q = min(C, max(1, acc.spad["inputs"] // S))
    # p filters per PE: p psums in the psum spad, p·q·S weights in the filter spad
    p = min(M, acc.spad["psums"], max(1, acc.spad["weights"] // (q * S)))
    # a PE set is R×E (filter rows × output rows), cut into strips of e ≤ cols columns;
    # t = ⌊rows/R⌋ sets are stacked vertically and (assumption) process different filters
    e = min(layer.out_size[0], cols)
    t = max(1, rows // layer.kernel[0])
    return {"q": q, "p": p, "e": e, "t": t}


def rs_accesses(layer: LayerInfo, mults: float | None = None, acc: Accelerator = EYERISS) -> dict:
    """Accesses (words) per (data type, level) of one layer under RS; `mults` < MACs if shared."""
    m = rs_mapping(layer, acc)
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
        "buffer": max(layer.inputs, arr_i / (max(1.0, min(R, acc.array[0]) / U_y) * m["t"])),
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


# ---- weight stationary (systolic) ------------------------------------------------------------


def ws_accesses(
    layer: LayerInfo, mults: float | None = None, acc: Accelerator = SYSTOLIC_WS
) -> dict:
    """Accesses (words) per (data type, level) under a weight-stationary systolic array.

    The layer is the matrix product of its M×(C·R·S) filters with the (C·R·S)×(E·F) im2col inputs
    (per group); a tile of rows×cols weights sits in the array, one per PE, for all E·F·B positions.
    """
    rows, cols = acc.array
    macs, n = layer.macs, layer.outputs
    mults = macs if mults is None else mults
    # T_r tiles along the reduction, T_c along the output channels of a group
    T_r = math.ceil(layer.reduction / rows)
    T_c = math.ceil(layer.c_out // layer.groups / cols)
    # weights: loaded once into their PE (stationary), read by every MAC of that PE
    w = {"rf": mults, "array": layer.weights, "buffer": layer.weights, "dram": layer.weights}
    # inputs: each im2col column is streamed from the buffer once per column tile and hops from PE
    # to PE along a row (one hop per MAC); no reuse of overlapping windows
    windows = layer.batch * layer.groups * layer.out_size[0] * layer.out_size[1]
    i = {"rf": mults, "array": macs, "buffer": windows * layer.reduction * T_c}
    i["dram"] = layer.inputs
    # psums hop down a column (one per MAC); each row tile adds into the accumulators: T_r writes
    # and T_r − 1 reads per output, then one write to DRAM
    o = {"rf": (macs - mults) / layer.kernel[1], "array": macs, "buffer": (2 * T_r - 1) * n}
    o["dram"] = n
    return {"weights": w, "inputs": i, "psums": o}


DATAFLOWS = {"row_stationary": rs_accesses, "weight_stationary": ws_accesses}


def accesses(layer: LayerInfo, mults: float | None, acc: Accelerator) -> dict:
    """Accesses per (data type, level) of one layer by the reuse rules of `acc`'s dataflow."""
    return DATAFLOWS[acc.dataflow](layer, mults, acc)
