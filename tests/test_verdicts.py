"""What the results tables say (dkm.experiments.verdicts) against hand-made summary rows, with the
verdicts and the printed lines computed by hand."""

import pytest

from dkm.experiments import verdicts as vd


def row(method, mean, std=0.0, setting="uniform", target=8.0, cr=7.9):
    """One row of `sweep.summary` (mean and standard deviation as fractions)."""
    return {"method": method, "setting": setting, "target_cr": target, "cr_official": cr, "K": 4,
            "n": 3, "mean": mean, "spread": std, "std": std}  # fmt: skip


def arm(method, epochs, mean, std=0.0, lam=None, setting="45x"):
    """One row of `study.study_summary`."""
    return {"method": method, "setting": setting, "target_cr": 43.48, "epochs": epochs, "lam": lam,
            "n": 3, "mean": mean, "std": std}  # fmt: skip


# ---------------------------------------------------------------- one comparison
@pytest.mark.parametrize(
    "a,b,verdict,diff",
    [
        ((0.75, 0.0), (0.5, 0.25), "level with", 25.0),  # exactly one standard deviation: level
        ((0.75, 0.125), (0.5, 0.0), "ahead of", 25.0),  # more than the larger one: ahead
        ((0.5, 0.125), (0.75, 0.0625), "behind", -25.0),
        ((0.5, 0.0), (0.5, 0.0), "level with", 0.0),
    ],
)
def test_compare_is_level_within_the_larger_standard_deviation(a, b, verdict, diff):
    got = vd.compare({"mean": a[0], "std": a[1]}, {"mean": b[0], "std": b[1]})
    assert got == (verdict, diff)


# ---------------------------------------------------------------- at equal CR
SUMMARY = [
    # plan 1 (uniform K at CR 8): the best without the regularizer is deep_compression, 75%
    row("deep_compression", 0.75, 0.02),
    row("dkm-indicator", 0.80, 0.01),  # +5.0 > 2.0: ahead
    row("dkm-spectral", 0.74, 0.0),  # −1.0, within 2.0: level
    row("kmeans", 0.70, 0.01),
    row("plain", 0.74, 0.0),
    # plan 2 (the authors' 45x): kmeans and plain tie at 60%, kmeans comes first
    row("dkm-indicator", 0.55, 0.01, "45x", 43.48, 43.5),  # −5.0 < −1.0: behind
    row("kmeans", 0.60, 0.01, "45x", 43.48, 43.5),
    row("plain", 0.60, 0.0, "45x", 43.48, 43.6),
    # plan 3 (the planner at 43.48): no method without the regularizer, no verdict
    row("dkm-indicator", 0.62, 0.0, "rd", 43.48, 44.0),
]


def test_each_dkm_variant_against_the_best_method_without_the_regularizer():
    plans = vd.against_best(SUMMARY)
    assert [(p["setting"], p["target_cr"], p["best"], p["cr"]) for p in plans] == [
        ("uniform", 8.0, "deep_compression", 7.9),
        ("45x", 43.48, "kmeans", 43.5),  # the first of equal means; its CR
    ]
    got = [[(v["method"], v["verdict"], round(v["diff"], 9)) for v in p["verdicts"]] for p in plans]
    assert got == [
        [("dkm-indicator", "ahead of", 5.0), ("dkm-spectral", "level with", -1.0)],
        [("dkm-indicator", "behind", -5.0)],
    ]
    assert vd.tally(plans) == {
        "dkm-indicator": {"ahead of": 1, "level with": 0, "behind": 1, "plans": 2},
        "dkm-spectral": {"ahead of": 0, "level with": 1, "behind": 0, "plans": 1},
    }


def test_the_lines_the_notebook_prints_at_equal_cr():
    assert vd.against_best_lines(SUMMARY, "smoke") == [
        "uniform plan, target 8 (CR ≈ 7.9×):",
        "  dkm-indicator 80.0% is ahead of deep_compression 75.0% (+5.0 points)",
        "  dkm-spectral 74.0% is level with deep_compression 75.0% (-1.0 points)",
        "45x plan, target 43.48 (CR ≈ 43.5×):",
        "  dkm-indicator 55.0% is behind kmeans 60.0% (-5.0 points)",
        "On smoke, dkm-indicator is ahead at 1, level at 0 and behind at 1 of 2 plans.",
        "On smoke, dkm-spectral is ahead at 0, level at 1 and behind at 0 of 1 plans.",
    ]
    assert list(vd.by_plan(SUMMARY)) == [("uniform", 8.0), ("45x", 43.48), ("rd", 43.48)]


def test_the_planner_against_the_authors_setting_and_uniform_k_at_the_same_target():
    summary = [
        row("kmeans", 0.60, 0.01, "45x", 43.48),
        row("plain", 0.61, 0.0, "45x", 43.48),
        row("kmeans", 0.63, 0.005, "rd", 43.48),  # +3.0 > 1.0 against 45x; −2.0 < −1.5 uniform
        row("plain", 0.61, 0.0, "rd", 43.48),  # level with 45x; no plain at uniform
        row("kmeans", 0.65, 0.015, "uniform", 43.48),
        row("kmeans", 0.50, 0.0, "rd", 20.0),  # no other plan at 20: nothing
        row("kmeans", 0.40, 0.0, "uniform", 8.0),
    ]
    assert [(t, m) for t, m, _, _ in vd.same_cr(summary, "rd", "45x")] == [
        (43.48, "kmeans"),
        (43.48, "plain"),
    ]
    assert vd.planner_lines(summary, ("45x",)) == [
        "CR target 43.48: planner ahead of the authors' 45x with kmeans: 63.0% vs 60.0% (+3.0)",
        "CR target 43.48: planner level with the authors' 45x with plain: 61.0% vs 61.0% (+0.0)",
        "CR target 43.48: planner behind uniform K with kmeans: 63.0% vs 65.0% (-2.0)",
    ]
    assert vd.planner_lines(summary, ()) == vd.planner_lines(summary, ("45x",))[2:]
    assert vd.planner_lines(SUMMARY[:5], ("45x",)) == []  # no planner: no line


# ---------------------------------------------------------------- at equal training
STUDY = [
    arm("deep_compression", 1, 0.70, 0.01),
    arm("deep_compression", 3, 0.80, 0.01),
    arm("dkm-indicator", 1, 0.72, 0.005, lam=5.0),  # +2.0 > 1.0: ahead
    arm("dkm-indicator", 1, 0.75, 0.0, lam=20.0),  # the best λ at E = 1
    arm("dkm-indicator", 3, 0.79, 0.02, lam=5.0),  # −1.0 within 2.0: level; the best λ at E = 3
    arm("dkm-indicator", 3, 0.70, 0.0, lam=20.0),
    arm("plain", 1, 0.60, 0.0),  # −10.0: behind
    arm("plain", 3, 0.80, 0.0),  # level
    arm("kmeans", 0, 0.50, 0.0),  # no training: no budget of its own
]


def test_each_method_at_the_profile_s_lambda_against_deep_compression():
    assert vd.budgets(STUDY) == [1, 3]
    assert vd.equal_training_lines(STUDY, 5.0) == [
        "45x, 1 epoch(s): dkm-indicator (λ = 5) 72.0% is ahead of deep_compression 70.0% (+2.0)",
        "45x, 1 epoch(s): plain 60.0% is behind deep_compression 70.0% (-10.0)",
        "45x, 3 epoch(s): dkm-indicator (λ = 5) 79.0% is level with deep_compression 80.0% (-1.0)",
        "45x, 3 epoch(s): plain 80.0% is level with deep_compression 80.0% (+0.0)",
    ]
    # a λ the study did not run: Deep k-Means has no line, plain keeps its own
    assert [line.split(":")[1].split()[0] for line in vd.equal_training_lines(STUDY, 2.0)] == [
        "plain",
        "plain",
    ]


def test_the_best_lambda_and_the_first_budget_within_half_a_point():
    assert vd.best_lam(STUDY, "45x", 1)["lam"] == 20.0
    assert vd.best_lam(STUDY, "45x", 3)["lam"] == 5.0
    assert vd.best_lam(STUDY, "rd", 1) is None
    # uncompressed 80.4%: 79.0 is 1.4 points short, deep_compression's 80.0 within 0.4
    assert vd.budget_lines(STUDY, 0.804) == [
        "45x, 1 epoch(s): the best λ (20) gives dkm-indicator 75.0%, ahead of deep_compression "
        "(+5.0)",
        "45x, 3 epoch(s): the best λ (5) gives dkm-indicator 79.0%, level with deep_compression "
        "(-1.0)",
        "45x: within 0.5 point of the uncompressed 80.4% — dkm-indicator (best λ) at no budget up "
        "to 3 epochs, deep_compression at 3 epoch(s)",
    ]
    assert vd.budget_lines(STUDY, 0.79)[-1].endswith(
        "dkm-indicator (best λ) at 3 epoch(s), deep_compression at 3 epoch(s)"
    )
    assert vd.first_budget(lambda e: {"mean": 0.75}, [1, 3], 0.754) == 1  # 0.4 point short
    assert vd.first_budget(lambda e: {"mean": 0.75}, [1, 3], 0.76) is None  # 1.0 point short


def test_what_lambda_does_to_the_weights_read_from_the_study_s_own_rows():
    def raw(method, lam, metric, value, seed):
        return {"method": method, "setting": "45x", "epochs": "1", "lam": lam, "metric": metric,
                "value": str(value), "seed": seed}  # fmt: skip

    rows = [raw("plain", "", m, v, s) for m, v in (("weight_sq", 4.0), ("kmeans_error", 2.0),
            ("kmeans_error_rel", 0.5)) for s in (0, 1)]  # fmt: skip
    rows += [raw("dkm-indicator", "5.0", "weight_sq", v, s) for v, s in ((1.0, 0), (3.0, 1))]
    rows += [raw("dkm-indicator", "5.0", "kmeans_error", 0.5, s) for s in (0, 1)]
    rows += [raw("dkm-indicator", "5.0", "kmeans_error_rel", 0.25, s) for s in (0, 1)]
    assert vd.metric_mean(rows, "dkm-indicator", "45x", 1, 5.0, "weight_sq") == 2.0
    study = [arm("plain", 1, 0.6), arm("dkm-indicator", 1, 0.7, lam=5.0)]
    # ‖W‖² 2/4, absolute error 0.5/2, relative error 0.25/0.5, in columns of 14, 20 and 20
    assert vd.scale_lines(rows, study) == [
        "45x:   E      λ  ‖W‖² / plain  abs. error / plain  rel. error / plain",
        " " * 7 + "1" + " " * 6 + "5 " + " " * 11 + "0.5" + " " * 16 + "0.25" + " " * 17 + "0.5",
    ]


def test_no_study_no_line():
    assert vd.equal_training_lines([], 5.0) == vd.budget_lines([], 0.8) == []
    assert vd.scale_lines([], []) == []
