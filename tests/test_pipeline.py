"""The pipeline on a tiny profile: cache keys, caching, resume, results table, CR planning, command
line."""

import dataclasses

import pytest
import torch

from dkm.accounting import compression_ratio
from dkm.app.cli import main
from dkm.experiments import cache as runs
from dkm.experiments import pipeline as pl
from dkm.experiments import planning
from dkm.experiments import sweep as sw
from dkm.experiments.profiles import get_profile
from dkm.planner import rd_plan
from dkm.plans import (
    SETTINGS,
    Plan,
    authors_plan,
    estimated_cr,
    layer_specs,
    plan_clusters,
    setting,
)
from dkm.sharing import share
from dkm.training.models import small_cnn, wide_resnet, wrn16_4


def tiny(**overrides):
    """The smoke profile cut down to a few hundred images: every stage runs in about a second."""
    fields = dict(n_train=256, n_test=200, cr_targets=(8.0,), bn_batches=2)
    return dataclasses.replace(get_profile("smoke"), **{**fields, **overrides})


FOUR = Plan((4,) * 4, (0.0,) * 4)


def test_cache_key_covers_the_whole_configuration():
    p = tiny()
    base = pl.retrain_config(p, "dkm", 0, FOUR)
    assert runs.config_key(base) == runs.config_key(pl.retrain_config(p, "dkm", 0, FOUR))
    changed = [
        pl.retrain_config(tiny(lam=0.25), "dkm", 0, FOUR),
        pl.retrain_config(p, "dkm", 1, FOUR),
        pl.retrain_config(p, "dkm", 0, Plan((5,) * 4, (0.0,) * 4)),
        pl.retrain_config(p, "dkm", 0, Plan((4,) * 4, (0.5,) * 4)),  # p, for the indicator F
        pl.retrain_config(p, "dkm", 0, FOUR, mode="spectral"),
        pl.retrain_config(tiny(pretrain=dataclasses.replace(p.pretrain, lr=0.02)), "dkm", 0, FOUR),
        pl.retrain_config(tiny(threads=2), "dkm", 0, FOUR),  # CPU sums depend on threads
        pl.retrain_config(tiny(memory_format="channels_last"), "dkm", 0, FOUR),  # and on layout
    ]
    keys = {runs.config_key(c) for c in changed}
    assert len(keys) == len(changed) and runs.config_key(base) not in keys
    # the key is the one the configuration had before plans were a type: K as a list
    assert base["num_clusters"] == [4] * 4 and "p" not in base
    dc = [
        pl.evaluation_config(tiny(**kw), base, "deep_compression", FOUR, 0)
        for kw in ({}, {"center_gradient": "sum"})
    ]
    assert runs.config_key(dc[0]) != runs.config_key(dc[1])


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
    assert plan.estimated_cr >= 12.0 and plan.target_cr == 12.0 and plan.setting == "uniform"
    specs = layer_specs(net)
    n_rows = [s["out"] * s["in"] * s["k"] for s in specs if s["kind"] == "conv"]
    k = max(plan.K)
    assert plan.K == tuple(min(k, n) for n in n_rows)
    assert estimated_cr(specs, [min(k + 1, n) for n in n_rows], [0.0] * len(n_rows)) < 12.0
    shared = share(net, plan)
    assert compression_ratio(net, shared, "official") >= plan.estimated_cr - 1e-9


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
    "command",
    [
        "pretrain",
        "retrain",
        "share",
        "evaluate",
        "sweep",
        "study",
        "energy",
        "figures",
        "book",
        "zigzag",
        "lab",
    ],  # fmt: skip
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
    assert main(["evaluate", "--profile", "smoke", "--official", "45x"]) == 2  # a CNN, no WRN
    assert "official='45x' applies by layer role to the convs of a WRN-16-k" in (
        capsys.readouterr().err
    )
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
    """The layout is applied to fresh and to loaded nets; the values do not depend on it beyond
    float sums."""

    def convs(net):
        return [
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


def test_authors_plans_are_the_authors_settings_and_crs():
    net = wrn16_4()  # on the meta device: only shapes are read
    plans = {s: authors_plan(net, s) for s in SETTINGS}
    assert {s: p.target_cr for s, p in plans.items()} == {"45x": 43.48, "47x": 45.41, "50x": 48.12}
    names = [n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for s, plan in plans.items():
        assert plan.setting == s and plan.K == tuple(setting(s)[n][0] for n in names)
    with pytest.raises(ValueError, match="official='45x' applies by layer role"):
        authors_plan(small_cnn(), "45x")
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
    calls = []
    rows = sw.sweep(p, methods=["kmeans"], progress=False, report=lambda *a: calls.append(a))
    assert [c[:2] for c in calls] == [(0, 1), (1, 1)]
    assert calls[0][2] == "kmeans at the authors' 50x setting, seed 0" and calls[1][2] == "done"
    target = authors_plan(wide_resnet(**wrn), "50x").target_cr  # 1 input channel: conv1 differs
    assert {(r["setting"], r["target_cr"]) for r in rows} == {("50x", target)}
    cr = [float(r["value"]) for r in rows if r["metric"] == "cr_official"][0]
    assert cr >= target - 0.01  # real index entropy ≤ the uniform-usage bound
    assert [s["setting"] for s in sw.summary(rows)] == ["50x"]


def test_sweep_runs_the_planner_and_uniform_k_at_the_authors_cr(dirs, monkeypatch):
    wrn = {"depth": 16, "widen_factor": 1, "dropout": 0.0, "in_channels": 1, "num_classes": 10,
           "conv_bias": False, "stage1_shortcut": True}  # fmt: skip
    p = tiny(
        model="wide_resnet",
        model_kwargs=wrn,
        cr_targets=("45x",),
        official_settings=("45x",),
        rd_targets=("45x", 12.0),
        pretrain=dataclasses.replace(tiny().pretrain, epochs=1),
        n_train=128,
        n_test=64,
    )
    rows = sw.sweep(p, methods=["kmeans"], progress=False)
    target = authors_plan(wide_resnet(**wrn), "45x").target_cr
    assert {(r["setting"], float(r["target_cr"])) for r in rows} == {
        ("uniform", target),
        ("45x", target),
        ("rd", target),
        ("rd", 12.0),
    }
    crs = {(r["setting"], float(r["target_cr"])): float(r["value"])
           for r in rows if r["metric"] == "cr_official"}  # fmt: skip
    assert all(cr >= t - 0.01 for (_, t), cr in crs.items())  # every plan reaches its target
    # the planner's k-means runs are cached with the pre-trained net: a second sweep reads them
    monkeypatch.setattr(pl, "layer_options", lambda *a, **k: pytest.fail("recomputed"))
    assert sw.sweep(p, methods=["kmeans"], progress=False, write=False) == rows
    with pytest.raises(ValueError, match="rd_targets='60x'"):
        get_profile("smoke", rd_targets=("60x",))


def test_the_table_is_the_grid_of_its_run_when_the_planner_plans_change(dirs, monkeypatch):
    """Another pre-trained net (another CPU type) gives other planner plans, so other keys: the
    second sweep's table holds its own grid only, no row of the first run's plans or methods."""
    p = tiny(rd_targets=(8.0,))
    first = sw.sweep(p, methods=["kmeans", "density"], progress=False)
    path = sw.results_path(p)
    assert {r["run_key"] for r in sw.read_results(path)} == {r["run_key"] for r in first}

    def other_plan(net, target, options):  # what another machine's planner might return
        plan = rd_plan(net, target, options)
        return dataclasses.replace(plan, K=(plan.K[0] + 1, *plan.K[1:]))

    monkeypatch.setattr(planning, "rd_plan", other_plan)
    second = sw.sweep(p, methods=["kmeans"], progress=False)
    table = sw.read_results(path)
    old_rd = {r["run_key"] for r in first if r["setting"] == "rd"}
    assert old_rd and not old_rd & {r["run_key"] for r in table}
    assert sorted(map(sorted, (r.items() for r in table))) == sorted(
        map(sorted, ({k: str(v) for k, v in r.items()}.items() for r in second))
    )
    assert {r["method"] for r in table} == {"kmeans"} and len(table) == len(second)
    # `dkm evaluate`'s one point merges into the table instead
    sw.add_results(path, [{**first[0], "run_key": "extra"}])
    assert {r["run_key"] for r in sw.read_results(path)} == {"extra"} | {
        r["run_key"] for r in second
    }


def test_summary_mean_std_and_spread_by_hand():
    rows = [
        {"method": "kmeans", "setting": "45x", "target_cr": "28.56", "metric": m, "value": v}
        for seed_values in ({"top1": 0.90, "cr_official": 30.0, "K": 90},
                            {"top1": 0.92, "cr_official": 31.0, "K": 90},
                            {"top1": 0.97, "cr_official": 32.0, "K": 90})
        for m, v in seed_values.items()
    ]  # fmt: skip
    (s,) = sw.summary(rows)
    assert (s["n"], s["cr_official"], s["K"]) == (3, 31.0, 90)
    assert s["mean"] == pytest.approx(0.93) and s["spread"] == pytest.approx(0.035)
    # sample standard deviation: √(((−0.03)² + (−0.01)² + 0.04²) / 2) = √0.0013
    assert s["std"] == pytest.approx(0.0013**0.5)


def test_cached_retrains_lists_finished_dkm_runs_with_plan_and_seed(dirs):
    p = tiny()
    pl.retrain(p, "plain", 0, progress=False)
    for seed in (0, 1):
        pl.retrain(p, "dkm", seed, FOUR, "indicator", progress=False)
    found = runs.cached_retrains(pl.pretrain_config(p))
    assert [(r["mode"], r["Ks"], r["K"], r["seed"], r["lam"]) for r in found] == [
        ("indicator", (4,) * 4, 4, 0, p.lam),
        ("indicator", (4,) * 4, 4, 1, p.lam),
    ]  # the plain control is not a Deep k-Means run
    assert all(r["history"]["steps"] and r["results"] == [] for r in found)


def test_cli_share_with_the_planner(dirs, capsys):
    assert main(["share", "--profile", "smoke", "--target-cr", "8", "--planner", "rd"]) == 0
    out = capsys.readouterr().out
    official = float(out.split("CR: official ")[1].split(",")[0])
    assert official >= 8.0 and "bits_index_per_row" in out
    net, _ = pl.pretrain(get_profile("smoke"), progress=False)
    plan = rd_plan(net, 8.0, pl.planner_options(get_profile("smoke"), net))
    conv_lines = [line.split() for line in out.splitlines() if line.startswith("conv")]
    assert [int(cols[2]) for cols in conv_lines] == list(plan.K)  # the K column is the plan's
    assert main(["share", "--profile", "smoke", "--official", "45x", "--planner", "rd"]) == 2
    assert "--planner rd plans a --target-cr: not with --official" in capsys.readouterr().err


@pytest.mark.parametrize("coding", ["fixed", "huffman", "rans"])
def test_cli_share_exports_each_coding_at_its_conventions_size(dirs, capsys, coding):
    from dkm.export.dkmfile import load_shared

    path = dirs / f"net-{coding}.dkm"
    argv = ["share", "--profile", "smoke", "--target-cr", "8", "--export", str(path)]
    assert main(argv + ["--coding", coding]) == 0
    out = capsys.readouterr().out
    assert f"({coding} index coding)" in out and f"{coding} coding: the file stores what the" in out
    net, _ = pl.pretrain(get_profile("smoke"), progress=False)
    plan = plan_clusters(net, 8.0)
    shared = share(net, plan, kmeans_seed=1000)  # what the command shared (seed 0's sharing seed)
    fresh = small_cnn(in_channels=1, num_classes=10, width=8)
    loaded = load_shared(path, fresh)
    assert all(torch.equal(loaded.layers[n].assignments, layer.assignments)
               for n, layer in shared.layers.items())  # fmt: skip
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in net.state_dict().items())


def test_cli_coding_needs_an_export(dirs, capsys):
    assert main(["share", "--profile", "smoke", "--target-cr", "8", "--coding", "rans"]) == 2
    assert "--coding rans codes the --export file: give --export PATH" in capsys.readouterr().err


def test_compare_runs_pairs_runs_by_key_by_hand():
    def row(key, method, value, metric="top1_bn"):
        return {"run_key": key, "method": method, "setting": "45x", "target_cr": "28.56",
                "metric": metric, "value": str(value)}  # fmt: skip

    a = [row("k1", "plain", 0.90), row("k2", "plain", 0.80), row("k3", "kmeans", 0.5),
         row("k1", "plain", 0.1, "top1"), row("only-a", "plain", 0.0)]  # fmt: skip
    b = [row("k1", "plain", 0.85), row("k2", "plain", 0.83), row("k3", "kmeans", 0.5),
         row("only-b", "kmeans", 1.0)]  # fmt: skip
    out = {r["method"]: r for r in sw.compare_runs(a, b)}
    assert out["plain"]["n"] == 2 and out["kmeans"]["n"] == 1
    assert out["plain"]["mean_diff"] == pytest.approx((-0.05 + 0.03) / 2)
    assert out["plain"]["max_abs_diff"] == pytest.approx(0.05)
    assert out["kmeans"]["mean_diff"] == 0.0


def test_paired_gaps_pair_by_seed_within_a_table_and_pool_tables_by_hand():
    def row(method, seed, value, setting="45x"):
        return {"method": method, "setting": setting, "target_cr": "28.56", "seed": str(seed),
                "metric": "top1_bn", "value": str(value)}  # fmt: skip

    one = [row("dc", 0, 88.0), row("dkm", 0, 86.0), row("dc", 1, 87.0), row("dkm", 1, 86.5),
           row("dc", 2, 90.0), row("dkm", 3, 1.0), row("dc", 0, 70.0, "rd")]  # fmt: skip
    two = [row("dc", 0, 85.0), row("dkm", 0, 84.0)]  # seed 0 of another machine: its own pair
    (gap,) = sw.paired_gaps({"one": one, "two": two}, "dc", "dkm")
    d = [2.0, 0.5, 1.0]  # seeds 2 and 3 and the rd plan have no partner
    assert (gap["setting"], gap["n"], gap["min_gap"], gap["max_gap"]) == ("45x", 3, 0.5, 2.0)
    assert gap["mean_gap"] == pytest.approx(sum(d) / 3)
    sd = (sum((x - sum(d) / 3) ** 2 for x in d) / 2) ** 0.5
    half = 4.302652729911275 * sd / 3**0.5  # t(0.975, 2 degrees of freedom), from a table
    assert (gap["ci_low"], gap["ci_high"]) == pytest.approx((sum(d) / 3 - half, sum(d) / 3 + half))


def test_plan_for_is_the_one_place_commands_and_sliders_get_plans(dirs):
    p = tiny(rd_targets=(8.0,))
    net, _ = pl.pretrain(p, progress=False)
    assert planning.plan_for(p, net) == planning.headline_plan(p, net) == plan_clusters(net, 8.0)
    assert planning.plan_for(p, net, 8.0) == plan_clusters(net, 8.0, p=p.p)
    rd = planning.plan_for(p, net, 8.0, planner="rd")
    assert rd == rd_plan(net, 8.0, pl.planner_options(p, net)) and rd.setting == "rd"
    assert planning.plans_of(p, net)[-1] == rd  # the sweep's planner plan is the command's
    with pytest.raises(ValueError, match="--planner rd plans a --target-cr: not with --official"):
        planning.plan_for(p, net, official="45x", planner="rd")
    with pytest.raises(ValueError, match="planner='best'"):
        planning.plan_for(p, net, 8.0, planner="best")


def test_compare_runs_by_plan_pairs_tables_of_other_keys_and_leaves_the_planner_out():
    def row(key, method, setting, seed, value):
        return {"run_key": key, "method": method, "setting": setting, "target_cr": "28.56",
                "seed": str(seed), "metric": "top1_bn", "value": str(value)}  # fmt: skip

    a = [row("a1", "plain", "45x", 0, 0.80), row("a2", "plain", "45x", 1, 0.70),
         row("a3", "plain", "rd", 0, 0.9)]  # fmt: skip
    b = [row("b1", "plain", "45x", 0, 0.81), row("b2", "plain", "45x", 1, 0.74),
         row("b3", "plain", "rd", 0, 0.5)]  # fmt: skip
    assert sw.compare_runs(a, b) == []  # no key in common
    (out,) = sw.compare_runs(a, b, by_plan=True)
    assert (out["setting"], out["n"]) == ("45x", 2)
    assert out["mean_diff"] == pytest.approx(0.025) and out["max_abs_diff"] == pytest.approx(0.04)
