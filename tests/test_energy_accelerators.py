"""Accelerators as data: eyeriss reproduces the earlier numbers, the weight-stationary rules
by hand, activation bits apart from weight bits, bad descriptions named."""

import dataclasses

import pytest
from test_energy import conv, linear

from dkm import energy as en
from dkm.energy import accelerators as ac
from dkm.energy.references.zigzag import reference_layers

# sums of `net_energy(reference_layers(net), bits)["total"]` before accelerators became data
EARLIER_TOTALS = {
    ("alexnet", 16): 19555944252.38384,
    ("alexnet", 8): 10211550928.747475,
    ("googlenet", 8): 9331496378.222221,
}


@pytest.mark.parametrize("net,bits", list(EARLIER_TOTALS))
def test_eyeriss_default_reproduces_earlier_numbers_exactly(net, bits):
    layers = reference_layers(net)
    for accelerator in ("eyeriss", ac.EYERISS):
        rows = en.net_energy(layers, bits, accelerator=accelerator)
        assert en.totals(rows)["total"] == EARLIER_TOTALS[net, bits]
    assert en.net_energy(layers, bits) == en.net_energy(layers, bits, bits, None, "eyeriss")


def test_eyeriss_description_holds_the_published_constants():
    assert ac.EYERISS.cost == {"rf": 1.0, "array": 2.0, "buffer": 6.0, "dram": 200.0}
    assert ac.EYERISS.array == (12, 14) and ac.EYERISS.word_bits == 16
    assert ac.EYERISS.spad == {"weights": 224, "inputs": 12, "psums": 24}
    assert en.ACCESS_COST == ac.EYERISS.cost and en.COMPONENTS == ("arith",) + ac.LEVELS


def test_weight_stationary_accesses_by_hand():
    # 3×3 conv 4→8 on 6×6 (pad 1): reduction 36, 36 windows, 288 outputs, 10368 MACs
    layer = conv()
    a = ac.ws_accesses(layer)  # 256×256 array: one tile, T_r = T_c = 1
    assert a["weights"] == {"rf": 10368, "array": 288, "buffer": 288, "dram": 288}
    assert a["inputs"] == {"rf": 10368, "array": 10368, "buffer": 36 * 36, "dram": 144}
    assert a["psums"] == {"rf": 0, "array": 10368, "buffer": 288, "dram": 288}
    # a 16×4 array: T_r = ⌈36/16⌉ = 3 row tiles, T_c = ⌈8/4⌉ = 2 column tiles
    small = dataclasses.replace(ac.SYSTOLIC_WS, array=(16, 4))
    b = ac.ws_accesses(layer, acc=small)
    assert b["inputs"]["buffer"] == 36 * 36 * 2 and b["psums"]["buffer"] == (2 * 3 - 1) * 288


def test_systolic_energy_by_hand_and_same_arithmetic():
    layer, acc = linear(), 39  # Linear(100, 10): one tile, every MAC one hop for input and psum
    ws, rs = (en.layer_energy(layer, 16, accelerator=a) for a in ("systolic_ws", "eyeriss"))
    assert ws["arith"] == rs["arith"]  # the arithmetic does not depend on the dataflow
    assert ws["weights"] == pytest.approx(1000 * 1 + 1000 * (2 + 6 + 200))
    assert ws["inputs"] == pytest.approx(1000 * (1 + 2) + 100 * 6 + 100 * 200)
    assert ws["psums"] == pytest.approx(1000 * 2 * acc / 16 + 10 * 6 * acc / 16 + 10 * 200)
    assert ws["total"] == pytest.approx(sum(ws[c] for c in en.COMPONENTS))


def test_costs_are_data():
    layer = conv(16, 16)
    double = dataclasses.replace(
        ac.EYERISS,
        levels=tuple(dataclasses.replace(lv, cost=2 * lv.cost) for lv in ac.EYERISS.levels),
    )
    one, two = (en.layer_energy(layer, 8, accelerator=a) for a in (ac.EYERISS, double))
    for c in ac.LEVELS:
        assert two[c] == pytest.approx(2 * one[c])
    assert two["arith"] == one["arith"]


def test_act_bits_apart_from_weight_bits():
    layer = conv(16, 16)
    w8a8, w8a4, w4a8 = (en.layer_energy(layer, w, a) for w, a in ((8, 8), (8, 4), (4, 8)))
    assert w8a4["weights"] == w8a8["weights"]  # weights move at w bits whatever a
    assert w8a4["inputs"] == pytest.approx(w8a8["inputs"] / 2)  # inputs at a bits
    assert w4a8["inputs"] == w8a8["inputs"] and w4a8["weights"] < w8a8["weights"]
    acc = en.accumulator_bits(8, 4, layer.reduction)
    assert w8a4["arith"] == pytest.approx(layer.macs * (8 * 4 + acc) / 288)
    row = en.compare_energy([layer], {}, 8, 4, "systolic_ws")[0]
    assert (row["bits"], row["act_bits"], row["accelerator"]) == (8, 4, "systolic_ws")


def test_bad_accelerators_are_named():
    with pytest.raises(ValueError, match="accelerator='tpu'.*eyeriss.*systolic_ws"):
        en.layer_energy(conv(), 8, accelerator="tpu")
    bad_levels = dataclasses.replace(ac.EYERISS, levels=ac.EYERISS.levels[:3])
    with pytest.raises(ValueError, match="allowed exactly"):
        en.net_energy([conv()], 8, accelerator=bad_levels)
    with pytest.raises(ValueError, match="dataflow='output_stationary'"):
        en.layer_energy(
            conv(), 8, accelerator=dataclasses.replace(ac.EYERISS, dataflow="output_stationary")
        )
