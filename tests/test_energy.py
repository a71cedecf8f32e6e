"""The energy metric: hand-computed access counts, brute-force product reuse, invariants, CLI, bad
input."""

import csv
import math
import time

import numpy as np
import pytest
import torch

from dkm import energy as en
from dkm.app import cli
from dkm.energy.inventory import LayerInfo, layer_inventory


def conv(c_in=4, c_out=8, k=3, size=6, stride=1, pad=1, groups=1, batch=1):
    out = (size + 2 * pad - k) // stride + 1
    return LayerInfo(
        "c",
        "conv",
        batch,
        c_in,
        c_out,
        groups,
        (k, k),
        (stride, stride),
        (pad, pad),
        (size, size),
        (out, out),
        False,
    )


def linear(c_in=100, c_out=10):
    return LayerInfo(
        "fc", "linear", 1, c_in, c_out, 1, (1, 1), (1, 1), (0, 0), (1, 1), (1, 1), True
    )


def test_accumulator_and_arithmetic_by_hand():
    assert en.accumulator_bits(8, 8, 576) == 8 + 8 + 10
    assert en.accumulator_bits(16, 16, 1) == 32
    row = en.layer_energy(linear(), 16)
    # 1000 MACs: 16·16-FA multiplies plus (32 + ⌈log2 100⌉ = 39)-FA adds,
    # over 288 FAs per 16-bit MAC
    assert row["arith"] == pytest.approx(1000 * (256 + 39) / 288)


def test_rs_accesses_by_hand():
    # 3×3 conv 4→8 on 6×6 (pad 1): MACs = 8·4·9·36;
    # q = min(4, ⌊12/3⌋) = 4, p = min(8, 24, ⌊224/12⌋) = 8, e = 6, t = 4
    layer = conv()
    assert layer.macs == 10368 and en.rs_mapping(layer) == {"q": 4, "p": 8, "e": 6, "t": 4}
    a = en.rs_accesses(layer)
    assert a["weights"] == {"rf": 10368, "array": 10368 / 6, "buffer": 288, "dram": 288}
    assert a["inputs"] == {"rf": 10368, "array": 10368 / 24, "buffer": 144, "dram": 144}
    # psums: d = q·S = 12 taps in a PE, c = 3 rows down a column, b = 36/36 = 1; 288 outputs
    assert a["psums"] == {
        "rf": 2 * 1 * 3 * 11 * 288,
        "array": 1 * 2 * 288,
        "buffer": 0,
        "dram": 288,
    }


def test_linear_layer_energy_by_hand():
    # Linear(100, 10) at 16 bits: every weight once through
    # DRAM (200), buffer (6), array (2), RF (1)
    row, acc = en.layer_energy(linear(), 16), 39
    assert row["weights"] == pytest.approx(1000 * (200 + 6 + 2 + 1))
    assert row["inputs"] == pytest.approx(100 * (200 + 6) + (1000 / 10) * 2 + 1000)
    # psums: d = q = 12 in a PE, c = 1, b = 100/12 buffer visits, 10 outputs
    b = 100 / 12
    psums = 2 * b * 11 * 10 * acc / 16 + 2 * (b - 1) * 10 * 6 * acc / 16 + 10 * 200
    assert row["psums"] == pytest.approx(psums)
    assert row["total"] == pytest.approx(
        row["arith"] + row["weights"] + row["inputs"] + row["psums"]
    )
    assert row["total"] == pytest.approx(sum(row[c] for c in en.COMPONENTS))


def brute_force_mults(layer, assignments):
    """Distinct (input channel, padded ifmap row, center) products, each F·kw multiplies."""
    g, R, U, E = layer.groups, layer.kernel[0], layer.stride[0], layer.out_size[0]
    C, M = layer.c_in // g, layer.c_out // g
    a = assignments.reshape(layer.c_out, C, R)
    need = {
        ((o // M) * C + c, e * U + r, int(a[o, c, r]))
        for o in range(layer.c_out)
        for c in range(C)
        for r in range(R)
        for e in range(E)
    }
    return layer.batch * layer.out_size[1] * layer.kernel[1] * len(need)


@pytest.mark.parametrize(
    "k,stride,groups,K", [(3, 1, 1, 5), (3, 2, 1, 3), (5, 2, 2, 7), (1, 1, 1, 4), (3, 1, 2, 40)]
)
def test_shared_mults_against_brute_force(k, stride, groups, K):
    g = torch.Generator().manual_seed(0)
    layer = conv(c_in=4, c_out=6, k=k, size=9, stride=stride, pad=k // 2, groups=groups, batch=2)
    a = torch.randint(0, K, (layer.kernel_rows,), generator=g)
    share = en.Share(K, 0.0, a)
    assert en.shared_mults(layer, share) == brute_force_mults(layer, a)
    assert en.shared_mults(layer, share) <= layer.macs  # sharing never costs more multiplications
    own = en.Share(layer.kernel_rows, 0.0, torch.arange(layer.kernel_rows))
    assert en.shared_mults(layer, own) == layer.macs  # one center per row: no reuse


@pytest.mark.parametrize("n,K,p", [(12, 5, 0.0), (40, 10, 0.5), (3, 50, 0.0), (30, 7, 0.9)])
def test_expected_distinct_against_monte_carlo(n, K, p):
    rng = np.random.default_rng(0)
    pi = np.full(K, 1 / K) if p == 0 else np.r_[p, np.full(K - 1, (1 - p) / (K - 1))]
    draws = rng.choice(K, size=(20000, n), p=pi)
    mc = np.mean([len(set(row)) for row in draws])
    assert en.expected_distinct(n, K, p) == pytest.approx(mc, rel=0.01)


def test_energy_grows_with_bits():
    layers = [conv(), conv(k=1, stride=2, pad=0), linear()]
    for layer in layers:
        totals = [en.layer_energy(layer, b)["total"] for b in range(1, 33)]
        assert all(x < y for x, y in zip(totals, totals[1:]))
    shared = [
        en.layer_energy(conv(16, 16), b, share=en.Share(4, 0.3))["total"] for b in range(1, 33)
    ]
    assert all(x < y for x, y in zip(shared, shared[1:]))


@pytest.mark.parametrize("p", [0.0, 0.5])
def test_more_sharing_never_more_energy(p):
    layer = conv(16, 16, size=8)  # N = 16·16·3 = 768 kernel rows
    Ks = [1, 2, 3, 5, 8, 16, 50, 100, 300, 767]
    rows = [en.layer_energy(layer, 8, share=en.Share(K, p)) for K in Ks]
    for key in ("total", "mults", "weight_bits", "arith"):
        values = [r[key] for r in rows]
        assert all(x <= y for x, y in zip(values, values[1:])), key
    assert rows[0]["mults"] < layer.macs
    dense = en.layer_energy(layer, 8)
    assert (
        en.layer_energy(layer, 8, share=en.Share(768, p))["total"] == dense["total"]
    )  # K ≥ N: left as is


def test_weight_storage_bits_by_hand():
    layer = conv(16, 16)
    assert en.weight_storage_bits(layer, 8, None) == 16 * 16 * 9 * 8
    assert en.weight_storage_bits(layer, 8, en.Share(5)) == 768 * 3 + 5 * 3 * 8


def test_share_descriptions_agree():
    from dkm.sharing import SharedLayer, ShareResult

    layer = conv(4, 6)
    a = torch.randint(0, 5, (layer.kernel_rows,), generator=torch.Generator().manual_seed(1))
    sl = SharedLayer("c", 0, (6, 4, 3, 3), torch.zeros(5, 3), a, p=0.0)
    exact = en.make_shares([layer], ShareResult(layers={"c": sl}))["c"]
    assert en.shared_mults(layer, exact) == brute_force_mults(layer, a)
    assert en.make_shares([layer], {"c": 5})["c"] == en.Share(5)
    assert (
        en.make_shares([layer], {"c": [5, 0.4]})["c"]
        == en.make_shares([layer], {"c": {"K": 5, "p": 0.4}})["c"]
    )
    with pytest.raises(ValueError, match="shared='nope'"):
        en.make_shares([layer], "nope")


def test_wrn_official_settings_save_energy():
    rows = en.wrn_sharing_table(bits=(8,))
    assert {r["setting"] for r in rows} == {"45x", "47x", "50x"}
    for r in rows:
        assert r["shared_mults"] <= r["dense_mults"] and r["shared_total"] <= r["dense_total"] * (
            1 + 1e-12
        )
    total = [r for r in rows if r["name"] == "TOTAL" and r["setting"] == "45x"][0]
    layers = [r for r in rows if r["name"] != "TOTAL" and r["setting"] == "45x"]
    assert total["shared_total"] == pytest.approx(sum(r["shared_total"] for r in layers))
    assert [r["K"] for r in layers][:3] == [0, 90, 80]  # conv1: K = 144 = N rows, left as is


def test_googlenet_metric_is_fast():
    from dkm.energy.references.zigzag import reference_layers

    layers = reference_layers("googlenet")
    t0 = time.perf_counter()
    rows = en.net_energy(layers, 8)
    assert time.perf_counter() - t0 < 1.0 and len(rows) == 58


def _cli(argv):
    return cli.run_energy(cli.make_parser().parse_args(["energy", *argv]))


def _shared_small_cnn(path):
    from dkm.training.models import small_cnn

    torch.manual_seed(0)
    net = small_cnn()
    w = net.conv2.weight.data  # 32×16×3×3: N = 1536 rows of length 3
    codebook, a = torch.randn(6, 3), torch.randint(0, 6, (1536,))
    w.copy_(codebook[a].reshape(w.shape))
    torch.save(
        {
            "model": {"name": "small_cnn", "kwargs": {}},
            "state_dict": net.state_dict(),
            "input_shape": [1, 28, 28],
        },
        path,
    )
    return net, a


def test_cli_checkpoint_auto_sharing(tmp_path, capsys):
    net, a = _shared_small_cnn(tmp_path / "net.pt")
    assert (
        _cli(
            [
                "--model",
                str(tmp_path / "net.pt"),
                "--bits",
                "8,16",
                "--shared",
                "auto",
                "--csv",
                str(tmp_path / "e.csv"),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "TOTAL" in out and "at 16 bits" in out and "skipped 4 module(s)" in out
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    assert len(rows) == 2 * 6
    conv2 = [r for r in rows if r["name"] == "conv2" and r["bits"] == "8"][0]
    layer = [lay for lay in layer_inventory(net, (1, 28, 28)).layers if lay.name == "conv2"][0]
    assert int(conv2["K"]) == 6
    assert float(conv2["shared_mults"]) == brute_force_mults(layer, a) < float(conv2["dense_mults"])
    others = [r for r in rows if r["name"] not in ("conv2", "TOTAL")]
    assert all(r["dense_total"] == r["shared_total"] for r in others)


def test_cli_named_models_and_json_config(tmp_path, capsys):
    (tmp_path / "k.json").write_text('{"stage3.1.conv2": 7, "stage3.1.conv1": [12, 0.5]}')
    assert _cli(["--model", "wrn16-4", "--bits", "8", "--shared", str(tmp_path / "k.json")]) == 0
    out = capsys.readouterr().out
    assert "stage3.1.conv2" in out and "ratio" in out


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--model", "alexnet", "--bits", "0"], "bits=0"),
        (["--model", "alexnet", "--bits", "8,33"], "bits=33"),
        (["--model", "alexnet", "--bits", "8,x"], "bits="),
        (["--model", "resnet"], "model='resnet'"),
        (["--model", "alexnet", "--shared", "45x"], "shared='45x'"),
        (["--model", "wrn16-4", "--shared", "60x"], "shared='60x'"),
        (["--model", "wrn16-4", "--input-shape", "3,32"], "input-shape 3,32"),
        (["--model", "alexnet", "--input-shape", "1,100000,100000"], "C·H·W ≤"),
        (["--model", "alexnet", "--bits", "8", "--act-bits", "8,8"], "act_bits='8,8'"),
        (["--model", "alexnet", "--act-bits", "0"], "act_bits=0"),
        (["--model", "alexnet", "--accelerator", "tpu"], "accelerator='tpu'"),
    ],
)
def test_cli_bad_input_names_parameter(argv, match):
    with pytest.raises(ValueError, match=match):
        _cli(argv)


def test_bad_arguments_name_parameter(tmp_path):
    with pytest.raises(ValueError, match="act_bits=40"):
        en.layer_energy(conv(), 8, act_bits=40)
    with pytest.raises(ValueError, match="conv layers only"):
        en.layer_energy(linear(), 8, share=en.Share(4))
    with pytest.raises(ValueError, match="assignments of 'c'"):
        en.layer_energy(conv(), 8, share=en.Share(4, 0.0, torch.zeros(5, dtype=torch.long)))
    with pytest.raises(ValueError, match="p of c"):
        en.layer_energy(conv(), 8, share=en.Share(4, 1.5))
    with pytest.raises(ValueError, match="not in the net"):
        en.net_energy([conv()], 8, shares={"nope": en.Share(3)})
    torch.save({"weights": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a dkm checkpoint"):
        cli.energy_model(str(tmp_path / "bad.pt"))
    (tmp_path / "text.pt").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot be read as a torch checkpoint"):
        cli.energy_model(str(tmp_path / "text.pt"))


def _fake_run(tmp_path, monkeypatch, stage="pretrain"):
    """A finished run directory as the pipeline writes it (config.json, model.pt, history.json,
    then done.json), without training."""
    from dkm.experiments import cache as runs
    from dkm.experiments import pipeline as pl
    from dkm.experiments.profiles import get_profile
    from dkm.training.models import build_model

    monkeypatch.setenv("DKM_RUNS_DIR", str(tmp_path / "runs"))
    profile = get_profile("smoke")
    config = pl.pretrain_config(profile)
    if stage == "evaluate":
        config = {"stage": "evaluate", "parent": config}
    d = runs.run_dir(config["stage"], config)
    torch.manual_seed(0)
    net = build_model(profile.model, **profile.model_kwargs)
    if stage != "evaluate":
        torch.save(net.state_dict(), d / "model.pt")
        (d / "history.json").write_text('{"format_version": 1, "steps": [], "epochs": []}')
        runs.commit(d, config)  # finished: the commit marker is written last
    return d, net


def test_cli_run_directory(tmp_path, monkeypatch, capsys):
    d, net = _fake_run(tmp_path, monkeypatch)
    loaded, shape = cli.energy_model(str(d))
    assert shape == (1, 28, 28)  # from the run's dataset (Fashion-MNIST)
    assert all(
        torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), net.state_dict().values())
    )
    assert _cli(["--model", str(d), "--bits", "8", "--csv", str(tmp_path / "e.csv")]) == 0
    rows = list(csv.DictReader(open(tmp_path / "e.csv")))
    expected = en.totals(en.net_energy(layer_inventory(net, (1, 28, 28)).layers, 8))
    assert math.isclose(float(rows[-1]["dense_total"]), expected["total"], rel_tol=1e-9)


def test_cli_run_directory_without_model(tmp_path, monkeypatch):
    from dkm.experiments.cache import RunError

    d, _ = _fake_run(tmp_path, monkeypatch, stage="evaluate")
    with pytest.raises(RunError, match="keeps no model"):
        cli.energy_model(str(d))
    with pytest.raises(RunError, match="no config.json"):
        cli.energy_model(str(tmp_path))


def test_cli_help_lists_the_accelerator_and_activation_bits(capsys):
    with pytest.raises(SystemExit):
        cli.main(["energy", "--help"])
    out = capsys.readouterr().out
    assert "--accelerator" in out and "--act-bits" in out and "systolic_ws" in out


def test_cli_act_bits_and_accelerator_reach_the_metric(tmp_path):
    from dkm.energy.references.common import reference_net

    argv = ["--model", "alexnet", "--bits", "8,16", "--act-bits", "4"]
    assert _cli(argv + ["--accelerator", "systolic_ws", "--csv", str(tmp_path / "e.csv")]) == 0
    rows = [r for r in csv.DictReader(open(tmp_path / "e.csv")) if r["name"] == "TOTAL"]
    layers = layer_inventory(reference_net("alexnet"), (3, 224, 224)).layers
    for r, bits in zip(rows, (8, 16)):
        expected = en.totals(en.net_energy(layers, bits, 4, accelerator="systolic_ws"))["total"]
        assert (int(r["bits"]), int(r["act_bits"])) == (bits, 4)
        assert math.isclose(float(r["dense_total"]), expected, rel_tol=1e-9)


@pytest.mark.parametrize("what", ["directory", "symlink", "user_tmp"])
def test_cli_csv_never_replaces_what_is_not_its_file(tmp_path, capsys, what):
    target = tmp_path / "results.csv"
    keep = tmp_path / "results.tmp"  # a user's file next to it: never a temp name of ours
    keep.write_text("mine")
    if what == "directory":
        target.mkdir()
    elif what == "symlink":
        target.symlink_to(keep)
    code = cli.main(["energy", "--model", "alexnet", "--bits", "8", "--csv", str(target)])
    if what == "user_tmp":
        assert code == 0 and target.is_file()
    else:
        assert code == 2 and "--csv" in capsys.readouterr().err
        assert target.is_dir() if what == "directory" else target.is_symlink()
    assert keep.read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.csv", "results.tmp"]


@pytest.mark.parametrize("content", [None, "not json", b"\x89PNG\x00\xff"])
def test_cli_shared_that_is_not_a_json_file_is_one_line(tmp_path, capsys, content):
    path = tmp_path / "k.json"
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert cli.main(["energy", "--model", "wrn16-4", "--shared", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"--shared {path}: not a JSON file" in err


def test_cli_says_which_layers_a_too_large_k_keeps_dense(tmp_path, capsys):
    (tmp_path / "k.json").write_text('{"conv1": 100000, "stage3.1.conv2": 7}')
    assert _cli(["--model", "wrn16-4", "--bits", "8", "--shared", str(tmp_path / "k.json")]) == 0
    out = capsys.readouterr().out
    assert "kept dense, K ≥ its number of kernel rows: conv1 (K 100000 ≥ N 144)" in out
