"""The budget × λ study on a tiny profile: every method gets the same training, counted in images
seen by the optimizer; its table, its summary, its command."""

import dataclasses
import statistics

import pytest

from dkm.app.cli import main
from dkm.experiments import pipeline as pl
from dkm.experiments import study as st
from dkm.experiments.profiles import get_profile
from dkm.sharing import layer_errors, sharing_seed


def tiny():
    fields = dict(n_train=256, n_test=200, n_retrain=128, bn_batches=2)
    return dataclasses.replace(get_profile("smoke"), **fields)


ALL = ("kmeans", "deep_compression", "plain", "plain+ft", "dkm-indicator", "dkm-indicator+ft")
GRID = st.Study(
    budgets=(1, 3),
    lams=(0.5, 5.0),
    official_settings=(),
    rd_targets=(8.0,),
    methods=ALL,
    seeds=(0,),
    lam_methods=("dkm-indicator", "dkm-indicator+ft"),
)
# fmt: skip


@pytest.mark.parametrize("epochs", [1, 2, 3, 10])
def test_every_method_splits_the_same_budget(epochs):
    for method in ALL[1:]:
        if method.endswith("+ft") and epochs < 2:
            with pytest.raises(ValueError, match="allowed budgets ≥ 2"):
                st.budget_split(method, epochs)
            continue
        re, ft = st.budget_split(method, epochs)
        assert re + ft == epochs and min(re, ft) >= 0
        assert (ft > 0) == (method == "deep_compression" or method.endswith("+ft"))
    assert st.budget_split("kmeans", epochs) == (0, 0)
    assert st.budget_split("dkm-indicator+ft", 3) == (2, 1)


def test_points_cover_the_grid_once():
    profile = tiny()
    points = st.points(profile, GRID)
    assert len(points) == len(set(points))
    assert points[0] == ("kmeans", 0, profile.lam)
    # +ft starts at E = 2; λ varies for the regularized methods only
    assert ("dkm-indicator+ft", 1, 0.5) not in points and ("dkm-indicator+ft", 3, 0.5) in points
    assert {lam for m, e, lam in points if m == "plain"} == {profile.lam}
    assert len(points) == 1 + 2 * (1 + 1 + 2) + (1 + 2)
    with pytest.raises(ValueError, match="lam_methods"):
        dataclasses.replace(GRID, lam_methods=("plain",))


def test_the_study_trains_every_method_for_the_same_number_of_images(dirs, monkeypatch):
    """Count what the optimizer sees at each point on a fresh cache: E × the re-training images for
    every method that trains (k-means: none), whatever the split between re-training and
    fine-tuning."""
    profile = tiny()
    net, _ = pl.pretrain(profile)
    seen = []
    real_train = pl.train

    def counting_train(model, dataset, config, **kw):
        seen.append(len(dataset) * config.epochs)
        return real_train(model, dataset, config, **kw)

    monkeypatch.setattr(pl, "train", counting_train)
    plan = st.plans_of(dataclasses.replace(profile, cr_targets=(), rd_targets=(8.0,)), net)[0]
    for method, epochs, lam in st.points(profile, GRID):
        seen.clear()
        re, ft = st.budget_split(method, epochs)
        st.run_point(st.arm_profile(profile, re, ft, lam), method, plan, 0)
        assert sum(seen) == epochs * profile.n_retrain, (method, epochs, seen)


def test_study_table_summary_and_errors(dirs):
    profile = tiny()
    methods = ("kmeans", "plain", "dkm-indicator+ft")
    grid = dataclasses.replace(GRID, budgets=(1, 2), seeds=(0, 1), lams=(5.0,), methods=methods,
                               lam_methods=())  # fmt: skip
    rows = st.run_study(profile, grid)
    table = st.read_study(st.study_path(profile))
    assert len(table) == len(rows) == (1 + 2 + 1) * 2 * len(st.STUDY_METRICS)
    assert {r["metric"] for r in table} == set(st.STUDY_METRICS)
    # the summary is the mean and sample std over seeds, by hand
    for s in st.study_summary(table, "top1_bn"):
        v = [float(r["value"]) for r in table if r["metric"] == "top1_bn"
             and r["method"] == s["method"] and int(r["epochs"]) == s["epochs"]]  # fmt: skip
        assert s["n"] == 2 and s["mean"] == pytest.approx(statistics.fmean(v))
        assert s["std"] == pytest.approx(statistics.stdev(v))
    # the recorded k-means errors are those of the net that was shared, recomputed here
    net, config = pl.retrain(dataclasses.replace(profile, lam=5.0), "plain", 1)
    plan = st.plans_of(dataclasses.replace(profile, cr_targets=(), rd_targets=(8.0,)), net)[0]
    errors = layer_errors(net, plan, sharing_seed(1))
    want = sum(e["error"] for e in errors.values()) / sum(e["weight_sq"] for e in errors.values())
    got = [float(r["value"]) for r in table if r["method"] == "plain" and r["seed"] == "1"
           and r["epochs"] == "1" and r["metric"] == "kmeans_error_rel"]  # fmt: skip
    assert got == [pytest.approx(want, rel=1e-5)]
    # a second run trains nothing and writes the same table, without rows its grid does not have
    before = st.study_path(profile).read_bytes()
    stale = {**table[0], "run_key": "0" * 16, "setting": "rd", "target_cr": "99"}
    st.write_study(st.study_path(profile), table + [stale])
    st.run_study(profile, grid)
    assert st.study_path(profile).read_bytes() == before


def test_relative_error_ignores_the_weights_scale():
    import torch

    from dkm.plans import Plan
    from dkm.training.models import small_cnn

    torch.manual_seed(0)
    net = small_cnn(in_channels=1, num_classes=10, width=8)
    plan = Plan((4,) * 4, (0.0,) * 4)
    a = layer_errors(net, plan, 7)
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(0.2)
    b = layer_errors(net, plan, 7)
    for name in a:
        assert b[name]["error"] == pytest.approx(0.04 * a[name]["error"], rel=1e-4)
        assert b[name]["error"] / b[name]["weight_sq"] == pytest.approx(
            a[name]["error"] / a[name]["weight_sq"], rel=1e-4
        )


def test_study_command(dirs, capsys, monkeypatch):
    monkeypatch.setitem(st.STUDIES, "smoke", dataclasses.replace(
        GRID, budgets=(1,), lams=(5.0,), methods=("kmeans", "plain"), lam_methods=()))  # fmt: skip
    monkeypatch.setattr(st, "get_profile", lambda name: tiny())
    assert main(["study", "--profile", "smoke"]) == 0
    out = capsys.readouterr().out
    assert "plain" in out and "written:" in out and "study_smoke.csv" in out
    with pytest.raises(SystemExit) as e:
        main(["study", "--profile", "paper"])
    assert e.value.code == 2
