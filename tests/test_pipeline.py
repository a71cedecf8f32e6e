"""The pipeline on a tiny profile: cache keys, caching, resume, results table, CR planning, command line."""

import csv
import dataclasses

import pytest
import torch

from dkm import pipeline as pl
from dkm import sweep as sw
from dkm.cli import main
from dkm.models import small_cnn, wide_resnet
from dkm.plan import estimated_cr, layer_specs, official_plan, plan_clusters
from dkm.profiles import get_profile
from dkm.sharing import share
from dkm.accounting import compression_ratio


@pytest.fixture
def dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("DKM_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("DKM_RESULTS_DIR", str(tmp_path / "results"))
    return tmp_path


def tiny(**overrides):
    """The smoke profile cut down to a few hundred images: every stage runs in about a second."""
    fields = dict(n_train=256, n_test=200, cr_targets=(8.0,), bn_batches=2)
    return dataclasses.replace(get_profile("smoke"), **{**fields, **overrides})


def test_cache_key_covers_the_whole_configuration():
    p = tiny()
    base = pl.retrain_config(p, "dkm", 0, num_clusters=[4] * 4)
    assert pl.config_key(base) == pl.config_key(
        pl.retrain_config(p, "dkm", 0, num_clusters=[4] * 4)
    )
    changed = [
        pl.retrain_config(p, "dkm", 0, num_clusters=[4] * 4, lam=0.25),
        pl.retrain_config(p, "dkm", 1, num_clusters=[4] * 4),
        pl.retrain_config(p, "dkm", 0, num_clusters=[5] * 4),
        pl.retrain_config(p, "dkm", 0, num_clusters=[4] * 4, mode="spectral"),
        pl.retrain_config(
            tiny(pretrain=dataclasses.replace(p.pretrain, lr=0.02)), "dkm", 0, num_clusters=[4] * 4
        ),
        pl.retrain_config(
            tiny(threads=2), "dkm", 0, num_clusters=[4] * 4
        ),  # CPU sums depend on threads
        pl.retrain_config(tiny(memory_format="channels_last"), "dkm", 0, num_clusters=[4] * 4),
    ]  # and on layout
    keys = {pl.config_key(c) for c in changed}
    assert len(keys) == len(changed) and pl.config_key(base) not in keys
    plan = {"K": [4] * 4, "p": [0.0] * 4}
    dc = [
        pl.evaluation_config(tiny(**kw), base, "deep_compression", plan, 0)
        for kw in ({}, {"center_gradient": "sum"})
    ]
    assert pl.config_key(dc[0]) != pl.config_key(dc[1])


def test_run_dir_refuses_a_foreign_config(dirs):
    config = {"stage": "x", "a": 1}
    d = pl.run_dir("x", config)
    (d / "config.json").write_text('{"stage": "x", "a": 2}')
    with pytest.raises(pl.RunError, match="another configuration"):
        pl.run_dir("x", config)
    (d / "config.json").write_text("{not json")
    with pytest.raises(pl.RunError, match="corrupt"):
        pl.run_dir("x", config)


def test_sweep_writes_the_table_and_reruns_from_cache(dirs, monkeypatch):
    p = tiny()
    rows = sw.sweep(p, methods=["kmeans", "plain", "dkm-indicator"], progress=False)
    table = list(csv.DictReader(open(sw.results_path(p))))
    assert len(rows) == len(table) == 3 * len(sw.METRICS)
    assert {r["method"] for r in table} == {"kmeans", "plain", "dkm-indicator"}
    for r in table:
        if r["metric"] == "cr_official":
            assert (
                float(r["value"]) >= 8.0
            )  # the plan's estimate is a lower bound of the real official CR

    def no_training(*args, **kwargs):
        raise AssertionError("a cached stage was recomputed")

    monkeypatch.setattr(pl, "train", no_training)
    monkeypatch.setattr(pl, "share", no_training)
    assert sw.sweep(p, methods=["kmeans", "plain", "dkm-indicator"], progress=False) == rows
    assert (
        list(csv.DictReader(open(sw.results_path(p)))) == table
    )  # merged by run key, no duplicates


def test_finetuned_methods_share_the_retrained_net_with_center_fine_tuning(dirs, monkeypatch):
    p = tiny()
    assert sw.finetuned_methods(p) == [
        "plain+ft",
        *(f"dkm-{m}+ft" for m in p.modes),
    ] and "plain+ft" not in sw.methods_of(p)
    seen = []
    real = pl.share_and_evaluate
    monkeypatch.setattr(
        pl,
        "share_and_evaluate",
        lambda prof, net, source, method, *a, **k: (
            seen.append((source["stage"], source.get("method"), method))
            or real(prof, net, source, method, *a, **k)
        ),
    )
    rows = sw.sweep(p, methods=["plain+ft", "dkm-indicator+ft", "plain"], progress=False)
    assert seen == [
        ("retrain", "plain", "deep_compression"),
        ("retrain", "dkm", "deep_compression"),
        ("retrain", "plain", "kmeans"),
    ]
    keys = {r["method"]: r["run_key"] for r in rows}
    assert len(set(keys.values())) == 3  # each its own cached evaluation
    lam = {r["method"]: r["lam"] for r in rows}
    assert float(lam["dkm-indicator+ft"]) == p.lam
    assert lam["plain+ft"] == ""


def test_cli_evaluate_fine_tunes_a_retrained_net_as_the_sweep_does(dirs, capsys):
    args = [
        "evaluate",
        "--profile",
        "smoke",
        "--source",
        "plain",
        "--target-cr",
        "8",
        "--no-progress",
    ]
    assert main([*args, "--method", "deep_compression"]) == 0
    assert capsys.readouterr().out.startswith("plain+ft at target CR 8")
    assert (
        main([*args, "--method", "density"]) == 0
    )  # not defined for re-trained nets: k-means++, said so
    out = capsys.readouterr().out
    assert (
        out.startswith("note: re-trained nets are shared with k-means++")
        and "\nplain at target CR 8" in out
    )
    table = list(csv.DictReader(open(sw.results_path(get_profile("smoke")))))
    assert {r["method"] for r in table} == {"plain+ft", "plain"}
    rows = sw.sweep(
        get_profile("smoke"), methods=["plain+ft", "plain"], progress=False, write=False
    )
    at_8 = lambda rs: {
        (r["method"], r["run_key"], r["metric"], str(r["value"]))
        for r in rs
        if float(r["target_cr"]) == 8
    }
    assert at_8(rows) == at_8(table)  # the sweep's cached runs, the same numbers


def test_changing_lambda_retrains(dirs, monkeypatch):
    p = tiny()
    sw.sweep(p, methods=["dkm-indicator"], progress=False)
    calls = []
    real = pl.train
    monkeypatch.setattr(pl, "train", lambda *a, **k: calls.append(1) or real(*a, **k))
    sw.sweep(dataclasses.replace(p, lam=2.0), methods=["dkm-indicator"], progress=False)
    assert calls == [1]  # only the re-training, not the pre-training


def test_pretraining_resumes_after_an_interrupt(dirs, monkeypatch):
    p = tiny(pretrain=dataclasses.replace(tiny().pretrain, epochs=2))
    real = pl.train

    def interrupted(*args, **kwargs):
        def stop(record):
            raise KeyboardInterrupt

        return real(*args, **kwargs, on_epoch_end=stop)

    monkeypatch.setattr(pl, "train", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pl.pretrain(p, progress=False)
    monkeypatch.setattr(pl, "train", real)
    resumed, _ = pl.pretrain(p, progress=False)
    monkeypatch.setenv("DKM_RUNS_DIR", str(dirs / "fresh"))
    fresh, _ = pl.pretrain(p, progress=False)
    for a, b in zip(resumed.state_dict().values(), fresh.state_dict().values()):
        assert torch.equal(a, b)


def test_corrupted_model_file_is_a_clear_error(dirs):
    p = tiny()
    _, config = pl.pretrain(p, progress=False)
    (pl.run_dir("pretrain", config) / "model.pt").write_bytes(b"garbage")
    with pytest.raises(pl.RunError, match="not a loadable small_cnn state"):
        pl.pretrain(p, progress=False)


def test_results_file_of_another_format_is_refused_and_kept(dirs):
    path = sw.results_path(tiny())
    path.parent.mkdir(parents=True)
    path.write_text("method,accuracy\nkmeans,0.5\n")
    with pytest.raises(sw.ResultsFormatError, match="this version writes"):
        sw.write_results(path, [])
    assert path.read_text() == "method,accuracy\nkmeans,0.5\n"


@pytest.mark.parametrize(
    "make", [lambda: wide_resnet(10, 1, in_channels=1), lambda: small_cnn(width=8)]
)
def test_plan_is_the_largest_uniform_k_reaching_the_target(make):
    torch.manual_seed(0)
    net = make()
    plan = plan_clusters(net, 12.0)
    assert plan["estimated_cr"] >= 12.0
    specs = layer_specs(net)
    n_rows = [s["out"] * s["in"] * s["k"] for s in specs if s["kind"] == "conv"]
    k = max(plan["K"])
    assert estimated_cr(specs, [min(k + 1, n) for n in n_rows], [0.0] * len(n_rows)) < 12.0
    shared = share(net, num_clusters=plan["K"], p=plan["p"])
    assert compression_ratio(net, shared, "official") >= plan["estimated_cr"] - 1e-9


def test_unreachable_target_and_bad_values():
    with pytest.raises(ValueError, match="target_cr=1000 is not reachable"):
        plan_clusters(small_cnn(width=8), 1000)
    with pytest.raises(ValueError, match="profile='gpu'"):
        get_profile("gpu")
    with pytest.raises(ValueError, match="lam=-1"):
        get_profile("smoke", lam=-1.0)
    with pytest.raises(ValueError, match="threads=0"):
        get_profile("smoke", threads=0)
    with pytest.raises(ValueError, match="memory_format='nhwc'.*'channels_last'"):
        get_profile("smoke", memory_format="nhwc")
    with pytest.raises(ValueError, match="center_gradient='avg'.*'mean', 'sum'"):
        get_profile("smoke", center_gradient="avg")
    with pytest.raises(ValueError, match="method='sgd'"):
        pl.retrain_config(tiny(), "sgd", 0)
    with pytest.raises(ValueError, match="method='magic'"):
        sw.sweep(tiny(), methods=["magic"], progress=False)


@pytest.mark.parametrize(
    "command", ["pretrain", "retrain", "share", "evaluate", "sweep", "energy", "figures"]
)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0 and "--" in capsys.readouterr().out


def test_cli_errors_name_the_option(dirs, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sweep", "--profile", "huge"])
    assert exit_.value.code == 2 and "--profile: invalid choice: 'huge'" in capsys.readouterr().err
    assert main(["retrain", "--profile", "smoke", "--lam", "-1", "--target-cr", "8"]) == 2
    assert "lam=-1.0 is out of range" in capsys.readouterr().err
    assert (
        main(["evaluate", "--profile", "smoke", "--official", "45x"]) == 2
    )  # smoke's CNN is not WRN-16-4
    assert "official='45x' is defined for WRN-16-4" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        main(["share", "--profile", "smoke", "--official", "45x", "--target-cr", "8"])
    assert exit_.value.code == 2 and "not allowed with argument" in capsys.readouterr().err


def test_stages_run_with_the_profiles_threads_and_restore_them(dirs, monkeypatch):
    seen = []
    real = pl.train
    monkeypatch.setattr(
        pl, "train", lambda *a, **k: (seen.append(torch.get_num_threads()), real(*a, **k))[1]
    )
    before = torch.get_num_threads()
    want = 2 if before != 2 else 3
    pl.pretrain(tiny(threads=want), progress=False)
    assert seen == [want] and torch.get_num_threads() == before


def test_channels_last_profiles_train_and_reload_channels_last_nets(dirs):
    """The layout is applied to fresh and to loaded nets; the values do not depend on it beyond float sums."""
    convs = lambda net: [
        m.weight for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1
    ]
    nhwc = tiny(memory_format="channels_last")
    trained, _ = pl.pretrain(nhwc, progress=False)
    loaded, _ = pl.pretrain(nhwc, progress=False)  # from the cache this time
    for net in (trained, loaded):
        assert all(
            w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()
            for w in convs(net)
        )
    dense, _ = pl.pretrain(tiny(), progress=False)
    assert all(w.is_contiguous() for w in convs(dense))
    for a, b in zip(
        convs(trained), convs(dense)
    ):  # same seed, same data: only the sums' order differs
        torch.testing.assert_close(a, b, rtol=0, atol=1e-3)


def test_official_plans_are_the_authors_settings_and_crs():
    from dkm.accounting import OFFICIAL_SETTINGS, official_settings
    from dkm.energy import wrn16_4

    net = wrn16_4()  # on the meta device: only shapes are read
    plans = {s: official_plan(net, s) for s in OFFICIAL_SETTINGS}
    assert {s: p["target_cr"] for s, p in plans.items()} == {
        "45x": 43.48,
        "47x": 45.41,
        "50x": 48.12,
    }
    assert all(p["K"] == official_settings(s)["K"] and p["setting"] == s for s, p in plans.items())
    with pytest.raises(
        ValueError, match="official='45x': layer 'stage1.0.conv1' has 1536 kernel rows"
    ):
        official_plan(wide_resnet(depth=16, widen_factor=2), "45x")  # WRN-16-2: other shapes
    with pytest.raises(ValueError, match="official='45x' is defined for WRN-16-4 with 16 conv"):
        official_plan(small_cnn(), "45x")
    with pytest.raises(ValueError, match="official_settings='60x'"):
        get_profile("smoke", official_settings=("60x",))


def test_sweep_runs_the_official_settings_as_points(dirs):
    wrn = {
        "depth": 16,
        "widen_factor": 4,
        "dropout": 0.0,
        "in_channels": 1,
        "num_classes": 10,
        "conv_bias": True,
    }
    p = tiny(
        model="wide_resnet",
        model_kwargs=wrn,
        cr_targets=(),
        official_settings=("50x",),
        pretrain=dataclasses.replace(tiny().pretrain, epochs=1),
        n_train=128,
        n_test=64,
    )
    rows = sw.sweep(p, methods=["kmeans"], progress=False)
    target = official_plan(wide_resnet(**wrn), "50x")[
        "target_cr"
    ]  # 1 input channel: conv1 differs from CIFAR's
    assert {(r["setting"], r["target_cr"]) for r in rows} == {("50x", target)}
    cr = [float(r["value"]) for r in rows if r["metric"] == "cr_official"][0]
    assert cr >= target - 0.01  # real index entropy ≤ the uniform-usage bound
    assert [s["setting"] for s in sw.summary(rows)] == ["50x"]
