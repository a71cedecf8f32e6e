"""The ZigZag reference: workload dicts by hand, the committed CSVs, the R² computation and (slow) a
recomputation."""

import csv
import importlib.util

import numpy as np
import pytest

from dkm.app.cli import main
from dkm.energy.references import common
from dkm.energy.references import zigzag as zr
from dkm.energy.references.validation import validation_table

HAVE_ZIGZAG = (
    importlib.util.find_spec("zigzag") is not None and importlib.util.find_spec("six") is not None
)
CASES = [(net, bits) for net in common.NETS for bits in (8, 16)]


def test_workload_of_alexnet_layers_by_hand():
    conv1, *_, fc8 = common.reference_layers("alexnet")
    w = zr.zigzag_workload(conv1, 8)[0]
    assert w["loop_sizes"] == [1, 64, 3, 55, 55, 11, 11]
    assert w["dimension_relations"] == ["ix=4*ox+1*fx", "iy=4*oy+1*fy"]
    assert w["padding"] == [[2, 2], [2, 2]]
    assert w["operand_precision"] == {"W": 8, "I": 8, "O": 16, "O_final": 8}
    assert zr.zigzag_workload(fc8, 16)[0]["loop_sizes"] == [1, 1000, 4096, 1, 1, 1, 1]
    with pytest.raises(ValueError, match="bits=0"):
        zr.zigzag_workload(conv1, 0)


@pytest.mark.parametrize("net,bits", CASES)
def test_committed_reference_matches_layers(net, bits):
    rows, layers = zr.load_reference(net, bits), common.reference_layers(net)
    assert [r["name"] for r in rows] == [layer.name for layer in layers]
    assert [r["macs"] for r in rows] == [layer.macs for layer in layers]
    for r in rows:
        assert (r["accelerator"], r["mapping"], r["bits"]) == (
            "eyeriss_like.yaml",
            "default.yaml",
            bits,
        )
        assert str(r["zigzag_version"]).startswith("3.")
        # eyeriss_like.yaml: 0.5 pJ per MAC whatever the bit width; total = MAC + memory
        assert r["mac_energy_pJ"] == pytest.approx(0.5 * r["macs"])
        assert r["energy_pJ"] == pytest.approx(r["mac_energy_pJ"] + r["mem_energy_pJ"])
        assert r["mem_energy_pJ"] == pytest.approx(r["mem_W_pJ"] + r["mem_I_pJ"] + r["mem_O_pJ"])
        assert r["wall_s"] > 0


def test_memory_energy_follows_bit_width():
    for net in common.NETS:
        e8, e16 = zr.load_reference(net, 8), zr.load_reference(net, 16)
        assert all(b["mem_energy_pJ"] > a["mem_energy_pJ"] for a, b in zip(e8, e16))


def test_r2_against_sklearn_and_numpy():
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(0)
    x = rng.lognormal(size=40)
    y = 3 * x + rng.normal(scale=2.0, size=40)
    r2 = common.r2_linear(x, y)
    assert r2 == pytest.approx(
        LinearRegression().fit(x[:, None], y).score(x[:, None], y), abs=1e-12
    )
    assert r2 == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, abs=1e-12)
    assert common.r2_linear(x, 5 * x - 1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same length"):
        common.r2_linear([1, 2, 3], [1, 2])


# rows of the table: net × reference (zigzag, nn_dataflow) × bits × layers (all, convs) × target
TABLE_ROWS = len(CASES) * 2 * 2 * 2


def test_committed_validation_table_is_reproduced():
    path = common.RESULTS_DIR / "energy_validation.csv"
    committed = list(csv.DictReader(open(path)))
    fresh = validation_table()
    assert len(committed) == len(fresh) == TABLE_ROWS
    for c, f in zip(committed, fresh):
        key = ("net", "reference", "layers", "target")
        assert [c[k] for k in key] + [int(c["bits"])] == [f[k] for k in key] + [f["bits"]]
        for k in ("r2_ours", "r2_macs", "r2_params", "r2_macs_params"):
            assert float(c[k]) == pytest.approx(f[k], abs=1e-4)


def test_zigzag_r2_unchanged_by_the_second_reference():
    # the R² of our metric against ZigZag, all layers, as committed before nn-dataflow came in
    earlier = {("alexnet", 8, "energy"): 0.998, ("googlenet", 16, "energy_per_mac"): 0.9982}
    for r in validation_table():
        if r["reference"] == "zigzag" and r["layers"] == "all":
            if (r["net"], r["bits"], r["target"]) in earlier:
                assert r["r2_ours"] == earlier[r["net"], r["bits"], r["target"]]


def test_cli_validate_writes_the_committed_table(tmp_path, monkeypatch, capsys):
    committed = (common.RESULTS_DIR / "energy_validation.csv").read_text()
    monkeypatch.setattr(common, "RESULTS_DIR", tmp_path)
    assert main(["zigzag", "validate"]) == 0
    assert (tmp_path / "energy_validation.csv").read_text() == committed
    out = capsys.readouterr().out
    assert out.startswith("| net | reference | bits |") and out.count("\n") == 2 + TABLE_ROWS
    assert main(["zigzag", "validate", "--nets", "vgg"]) == 2
    assert "nets='vgg' is not allowed" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(
    not HAVE_ZIGZAG, reason="zigzag-dse (and six) not installed: pip install -e '.[energy]'"
)
@pytest.mark.parametrize(
    "net,bits,name",
    [("alexnet", 8, "classifier.4"), ("googlenet", 16, "inception5b.branch4.1.conv")],
)
def test_zigzag_recomputes_committed_rows(net, bits, name):
    layer = [lay for lay in common.reference_layers(net) if lay.name == name][0]
    row = [r for r in zr.load_reference(net, bits) if r["name"] == name][0]
    fresh = zr.run_layer(layer, bits)
    for k in ("energy_pJ", "mac_energy_pJ", "mem_energy_pJ", "mem_W_pJ", "mem_I_pJ", "mem_O_pJ"):
        assert fresh[k] == pytest.approx(row[k], rel=1e-6), k
