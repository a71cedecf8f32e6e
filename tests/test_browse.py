"""Browsing the run cache (dkm.viz.browse) against hand-made cache contents, and the other helpers
the notebooks call in dkm.viz: the slider controls (sliders), the spectral term where it must
vanish and the energy validation's numbers (figdata)."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from dkm.energy.references import common
from dkm.energy.references import validation as ev
from dkm.experiments import cache as runs
from dkm.experiments import pipeline as pl
from dkm.experiments.profiles import get_profile
from dkm.plans import Plan, authors_plan
from dkm.regularizer import KMeansRegularizer, relaxed_bound
from dkm.rows import to_matrix
from dkm.training.models import build_model, wrn16_4
from dkm.viz import browse, figdata, sliders


def tiny(**overrides):
    """The smoke profile cut down (as in tests/test_pipeline.py); nothing here trains."""
    fields = dict(n_train=256, n_test=200, cr_targets=(8.0,), bn_batches=2)
    return dataclasses.replace(get_profile("smoke"), **{**fields, **overrides})


A = Plan((4,) * 4, (0.0,) * 4, "uniform", 8.0, 8.1)  # known plans: the sweep's, the notebook's
B = Plan((4,) * 4, (0.5,) * 4, "45x", 45.0, 45.2)  # the same K as A, another p
C = Plan((5,) * 4, (0.0,) * 4, "uniform", 6.0, 6.1)  # no run at its K
D = Plan((6,) * 4, (0.5,) * 4)  # a run's plan that no known plan names
STEP = {"step": 10, "task_loss": 2.0, "train_accuracy": 0.5, "layer_errors": {}}
HISTORY = {"format_version": 1, "epochs": [], "steps": [STEP]}  # one log record of a re-training


def finished(stage, config, files) -> None:
    """A finished run of `stage` in the cache: its config.json, outputs and done.json."""
    d = runs.run_dir(stage, config)
    for name, text in files.items():
        (d / name).write_text(text)
    runs.commit(d, config)


def retrained(profile, plan, mode="indicator", lam=5.0, seed=0) -> dict:
    config = pl.retrain_config(dataclasses.replace(profile, lam=lam), "dkm", seed, plan, mode)
    finished("retrain", config, {"model.pt": "weights", "history.json": json.dumps(HISTORY)})
    return config


def shared(profile, source, plan, top1_bn, seed=0) -> None:
    result = {"top1_before": 0.7, "top1": 0.5, "top1_bn": top1_bn, "cr": {"official": 8.0},
              "layers": {}, "skipped": []}  # fmt: skip
    config = pl.evaluation_config(profile, source, "kmeans", plan, seed)
    finished("evaluate", config, {"result.json": json.dumps(result)})


@pytest.fixture
def cache(dirs):
    """Current runs (indicator at A, spectral at A's K, indicator at D with λ = 2, one at seed 1),
    a run of an older version of the profile, a plain run; A's indicator run shared at A."""
    profile = tiny()
    at_a = retrained(profile, A)
    retrained(profile, A, "spectral")
    retrained(profile, D, lam=2.0)
    retrained(profile, A, seed=1)
    older = tiny(retrain=dataclasses.replace(profile.retrain, lr=0.02))
    retrained(older, A)  # same pre-trained net, other re-training settings
    finished("retrain", pl.retrain_config(profile, "plain", 0),
             {"model.pt": "weights", "history.json": json.dumps(HISTORY)})  # fmt: skip
    shared(profile, at_a, A, 0.61)
    net = build_model(profile.model, **profile.model_kwargs)
    return profile, net


def test_a_run_of_the_current_profile_is_listed_and_one_of_an_older_profile_is_not(cache):
    profile, _ = cache
    every = runs.cached_retrains(pl.pretrain_config(profile))
    assert len(every) == 5  # the plain run is no Deep k-Means run
    assert sum(not browse.is_current(r, profile) for r in every) == 1
    listed = browse.current_runs(profile, 0)
    assert [(r["lam"], r["mode"], r["Ks"]) for r in listed] == [
        (2.0, "indicator", D.K),
        (5.0, "indicator", A.K),
        (5.0, "spectral", A.K),
    ]
    assert [browse.run_plan(r) for r in listed] == [Plan(D.K, D.p), Plan(A.K, A.p), Plan(A.K, A.p)]
    assert [r["seed"] for r in browse.current_runs(profile, 1)] == [1]


def test_a_run_fits_a_plan_by_k_and_p_and_a_spectral_run_serves_every_p():
    def run(mode, K, p=None):
        return {"Ks": K, "mode": mode, "config": {} if p is None else {"p": list(p)}}

    indicator, spectral = run("indicator", B.K, B.p), run("spectral", A.K)
    assert browse.fits(indicator, B) and not browse.fits(indicator, A)  # another p
    assert browse.fits(spectral, A) and browse.fits(spectral, B)
    assert not browse.fits(spectral, C) and not browse.fits(run("indicator", C.K), A)  # another K
    assert browse.fits(run("indicator", A.K), A)  # no p recorded: p = 0


def test_the_options_are_the_known_plans_with_a_run_then_the_runs_of_no_known_plan(cache):
    profile, _ = cache
    listed = browse.current_runs(profile, 0)
    # A: both runs; B: the spectral run (no p); C: no run at K = 5; D: named by no known plan
    assert browse.plan_options([A, B, C, A], listed) == [A, B, Plan(D.K, D.p)]
    assert browse.plan_options([C], listed) == [Plan(D.K, D.p), Plan(A.K, A.p)]
    assert browse.plan_options([A, B], []) == []


def test_the_summary_the_names_and_the_figure_of_the_cached_runs(cache):
    profile, net = cache
    cached = browse.CachedRuns(profile, net, 0, known=[A, B, C])
    assert cached.lams == [2.0, 5.0] and cached.options == [A, B, Plan(D.K, D.p)]
    assert cached.summary(A) == (
        "3 cached Deep k-Means re-trainings of smoke with seed 0, at λ in [2.0, 5.0], for 3 plans"
    )
    assert cached.plan_name(A).startswith("uniform K at target CR 8 (K 4")
    assert cached.plan_name(B).startswith("the authors' 45x setting (")
    assert cached.plan_name(Plan(D.K, D.p)).startswith("a plan (K 6")
    fig = cached.figure(5.0, A)  # both F modes; only the indicator run was shared at A
    assert {t.name for t in fig.data} >= {"dkm-indicator, λ = 5", "dkm-spectral, λ = 5"}
    assert fig.layout.title.text.startswith("cached smoke runs (seed 0), λ = 5, uniform K at ")
    assert fig.layout.title.text.endswith(" — shared + BN: indicator 61.0%")
    fig = cached.figure(5.0, B)  # the spectral run serves B; not shared at B
    assert {t.name for t in fig.data} == {"dkm-spectral, λ = 5"} and "shared" not in (
        fig.layout.title.text
    )
    assert browse.shared_result(profile, cached.runs[1], A)["top1_bn"] == 0.61
    assert browse.shared_result(profile, cached.runs[1], B) is None


def test_the_slider_over_the_cached_runs_and_none_without_runs(cache):
    profile, net = cache
    box = browse.CachedRuns(profile, net, 0, known=[A, B]).slider(B)
    lam, plan = box.children[0].children
    assert lam.description == "λ" and list(lam.options) == [2.0, 5.0] and lam.value == 5.0
    assert plan.description == "plan" and plan.value == B and len(plan.options) == 3
    assert "dkm-spectral, λ = 5" in {t.name for t in box.figure.data}
    plan.value = A  # the figure follows the menu
    assert "shared + BN: indicator 61.0%" in box.figure.layout.title.text
    empty = browse.CachedRuns(profile, net, 7, known=[A])
    assert empty.slider(A) is None
    assert empty.summary(A) == (
        "0 cached Deep k-Means re-trainings of smoke with seed 7, at λ in [], for 0 plans"
    )


def test_one_lambda_says_how_to_add_another(cache):
    profile, net = cache
    assert browse.one_lambda_hint("smoke", 5.0, A, 0) == (
        "Only λ = 5 is cached for smoke, so this slider has one position. Add another with "
        "`python -m dkm retrain --profile smoke --lam 2 --target-cr 8 --seed 0` "
        "(or use the live slider above)."
    )
    assert "--lam 2 --official 45x --seed 3`" in browse.one_lambda_hint("cpu", 5.0, B, 3)
    one = browse.CachedRuns(profile, net, 1, known=[A])  # seed 1: λ = 5 only
    assert one.summary(A).splitlines() == [
        "1 cached Deep k-Means re-trainings of smoke with seed 1, at λ in [5.0], for 1 plan",
        browse.one_lambda_hint("smoke", 5.0, A, 1),
    ]


# ---------------------------------------------------------------- the slider controls
def test_controls_a_range_is_an_int_slider_anything_else_a_selection():
    k = sliders.slider("K", range(1, 13), 6)
    assert (type(k).__name__, k.min, k.max, k.value, k.description) == ("IntSlider", 1, 12, 6, "K")
    assert sliders.slider("bits", range(2, 17)).value == 2
    lam = sliders.slider("λ", [0.0, 5.0, 20.0], 5.0)
    assert type(lam).__name__ == "SelectionSlider" and lam.value == 5.0
    pairs = sliders.slider("plan", [("uniform 8", ("uniform", 8.0)), ("45x 45.4", ("45x", 45.4))])
    assert pairs.value == ("uniform", 8.0) and pairs.label == "uniform 8"
    f = sliders.buttons("F", ["indicator", "spectral"])
    assert type(f).__name__ == "ToggleButtons" and f.value == "indicator"
    menu = sliders.menu("plan", [("a", 1), ("b", 2)], 2)
    assert type(menu).__name__ == "Dropdown" and menu.value == 2 and menu.label == "b"


# ---------------------------------------------------------------- figdata for notebooks 02, 05
@pytest.mark.parametrize("k", [2, 4])
def test_the_spectral_term_vanishes_at_k_raised_to_the_rank(k):
    torch.manual_seed(0)
    net = build_model("small_cnn", in_channels=1, num_classes=10, width=8)
    plan = Plan((k,) * 4, (0.0,) * 4)
    relative, acting = figdata.spectral_residuals(net, plan, lam=5.0)
    assert len(relative) == 4 and max(relative.values()) <= 1e-9
    assert acting == (["conv1", "conv2", "conv3", "conv4"] if k < 3 else [])  # rows: s = 3
    if not acting:
        return
    # at the plan's own K the term is Σ_{i>K} σ_i² (Ky Fan), not zero, where K < min(s, N)
    own = KMeansRegularizer.from_plan(net, 5.0, plan, mode="spectral").layer_errors()
    modules = dict(net.named_modules())
    for name in acting:
        bound = relaxed_bound(to_matrix(modules[name].weight.detach(), "rows"), k)
        assert bound > 0 and own[name] == pytest.approx(bound, rel=1e-5)


def test_scaled_is_the_least_squares_factor_and_the_panels_are_each_reference_and_net():
    x, y = np.array([1.0, 2.0, 3.0]), np.array([2.0, 3.0, 7.0])
    s = figdata._scaled(x, y)
    assert np.allclose(s, x * 29 / 14) and abs(float((y - s) @ x)) < 1e-12  # residual ⟂ x
    panels = figdata.validation_panels(16)
    assert list(panels) == [f"{n} vs {r}" for r in ev.REFERENCES for n in common.NETS]
    rows = ev.reference_rows("alexnet", 16, "zigzag")
    panel = panels["alexnet vs zigzag"]
    assert panel["names"] == [r["name"] for r in rows]
    assert panel["reference"] == [r["reference"] for r in rows]
    assert panel["r2"] == common.r2_linear([r["ours"] for r in rows], panel["reference"])


def test_the_committed_tables_are_read_as_strings_and_wrn16_4_at_a_setting(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("net,ratio\nwrn16-4,1.5\n")
    assert figdata.read_table(path) == [{"net": "wrn16-4", "ratio": "1.5"}]
    layers, plan = figdata.wrn16_4_at("45x")
    assert plan == authors_plan(wrn16_4(), "45x") and plan.target_cr == 43.48
    assert [layer.name for layer in layers][-1] == "fc" and len(layers) == 17
