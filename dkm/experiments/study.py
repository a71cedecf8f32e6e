"""The budget × λ study: at equal CR and equal training, does the regularizer beat center
fine-tuning (Deep Compression), and at which budget is Deep k-Means within 0.5 point of dense?

Every method spends the same training budget E (epochs over the profile's re-training images, after
pre-training) before it is evaluated; the study runs E in `budgets`, at the plans of its
`official_settings` and `rd_targets`, for every seed, and the methods of `lam_methods` at every λ
in `lams` (the other Deep k-Means methods at the profile's λ):

| method             | how the E epochs are spent                                               |
|--------------------|--------------------------------------------------------------------------|
| `kmeans`           | none: post-training sharing, the reference at E = 0 (one row per plan)   |
| `deep_compression` | E epochs of center fine-tuning of the pre-trained net                    |
| `plain`            | E epochs of re-training without the regularizer, then k-means sharing    |
| `dkm-<mode>`       | E epochs of re-training with the regularizer at λ, then k-means sharing  |
| `plain+ft`         | E − ⌊E/2⌋ epochs of re-training, then ⌊E/2⌋ of center fine-tuning        |
| `dkm-<mode>+ft`    | the same split, the re-training with the regularizer at λ                |

The `+ft` split needs two whole epochs, so those methods start at E = 2 (at E = 1 they would be the
method without `+ft`). Each arm is the profile with its re-training and fine-tuning epochs (and λ)
replaced (`arm_profile`), run by `dkm.experiments.sweep.run_point`: the runs are the profile's own,
cached in
the same run cache, so the study's E = 1 runs at the profile's λ are the default sweep's runs, and
its E = 1 runs at other λ are what notebook 02's cached λ slider shows.

Beside the accuracies, every point records the k-means error of the net that is shared (at the
plan's K, no dominant cluster, summed over the shared convs), absolute and relative to ‖W‖²: with
batch norm after a conv the loss does not depend on the weights' scale, so shrinking W lowers the
penalty without clustering (`dkm.experiments.pipeline.source_errors`).

Table: `data/results/study_<profile>.csv` (smoke: build/results/), one row per run × metric.
"""

from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from dkm._checks import check_choice, check_float, check_int
from dkm.experiments import pipeline as pl
from dkm.experiments import platform
from dkm.experiments.planning import plans_of
from dkm.experiments.profiles import Profile, get_profile
from dkm.experiments.sweep import (
    FINETUNED,
    METRICS,
    all_methods,
    finetuned_methods,
    read_table,
    results_path,
    run_point,
    split_method,
    write_table,
)
from dkm.io import locked
from dkm.training.loop import show_progress

COLUMNS = (
    "run_key", "profile", "method", "setting", "target_cr", "seed", "lam",
    "epochs", "retrain_epochs", "finetune_epochs", "metric", "value",
)  # fmt: skip
STUDY_METRICS = (*METRICS, "kmeans_error", "weight_sq", "kmeans_error_rel")


@dataclass(frozen=True)
class Study:
    """The grid of a budget × λ study of one profile (module docstring)."""

    budgets: tuple  # E: epochs of training after pre-training, the same for every method
    lams: tuple  # λ of the dkm methods
    official_settings: tuple  # plans: the authors' settings …
    rd_targets: tuple  # … and the planner's targets (as Profile.rd_targets)
    methods: tuple
    seeds: tuple
    # the methods run at every λ of `lams` (the other dkm methods: at the profile's λ)
    lam_methods: tuple = ("dkm-indicator",)

    def __post_init__(self):
        for i, e in enumerate(self.budgets):
            check_int(f"budgets[{i}]", e, 1)
        for i, lam in enumerate(self.lams):
            check_float(f"lams[{i}]", lam, 0.0)
        for i, seed in enumerate(self.seeds):
            check_int(f"seeds[{i}]", seed, 0)
        odd = [m for m in self.lam_methods if m not in self.methods or not m.startswith("dkm-")]
        if odd:
            raise ValueError(f"lam_methods {odd} are not allowed: only dkm methods of `methods`")
        if not (self.budgets and self.lams and self.seeds and self.methods):
            raise ValueError("a Study needs at least one budget, λ, seed and method")


STUDIES = {
    # the default profile: E in {1, 3, 10}, λ log-spaced over three decades around the profile's 5
    "cpu": Study(
        budgets=(1, 3, 10),
        lams=(0.05, 0.5, 5.0, 50.0),
        official_settings=("45x",),
        rd_targets=("45x",),
        methods=(
            "kmeans",
            "deep_compression",
            "plain",
            "plain+ft",
            "dkm-indicator",
            "dkm-indicator+ft",
        ),  # fmt: skip
        seeds=(0, 1, 2),
    ),
    # seconds: for the tests
    "smoke": Study(
        budgets=(1, 2),
        lams=(0.5, 5.0),
        official_settings=(),
        rd_targets=(16.0,),
        methods=(
            "kmeans",
            "deep_compression",
            "plain",
            "plain+ft",
            "dkm-indicator",
            "dkm-indicator+ft",
        ),  # fmt: skip
        seeds=(0,),
    ),
}


def get_study(profile_name: str) -> Study:
    """The study of a profile (`STUDIES`); the error names the profiles that have one."""
    check_choice("study profile", profile_name, STUDIES)
    return STUDIES[profile_name]


def budget_split(method: str, epochs: int) -> tuple[int, int]:
    """(re-training epochs, center fine-tuning epochs) of `method` at budget `epochs`."""
    check_int("epochs", epochs, 0)
    if method == "kmeans":
        return 0, 0
    if method == "deep_compression":
        return 0, epochs
    if method.endswith(FINETUNED):
        if epochs < 2:
            raise ValueError(f"{method} at a budget of {epochs} epoch(s): allowed budgets ≥ 2")
        return epochs - epochs // 2, epochs // 2
    return epochs, 0


def arm_profile(profile: Profile, retrain_epochs: int, finetune_epochs: int, lam: float):
    """The profile with its re-training / fine-tuning epochs and λ replaced (0: left as is)."""
    fields = {"lam": lam}
    if retrain_epochs:
        fields["retrain"] = dataclasses.replace(profile.retrain, epochs=retrain_epochs)
    if finetune_epochs:
        fields["finetune"] = dataclasses.replace(profile.finetune, epochs=finetune_epochs)
    return dataclasses.replace(profile, **fields)


def points(profile: Profile, study: Study) -> list[tuple[str, int, float]]:
    """(method, budget, λ) of every arm, smallest budget first (λ: the profile's for non-dkm)."""
    out = [("kmeans", 0, profile.lam)] if "kmeans" in study.methods else []
    for epochs in study.budgets:
        for method in study.methods:
            if method == "kmeans" or (method.endswith(FINETUNED) and epochs < 2):
                continue
            lams = study.lams if method in study.lam_methods else [profile.lam]
            out += [(method, epochs, lam) for lam in lams]
    return out


def run_study(profile: Profile, study: Study, progress=None, write: bool = True) -> list[dict]:
    """Run (or read from the cache) every arm × plan × seed; write the study table."""
    for m in study.methods:
        check_choice("method", m, all_methods(profile) + finetuned_methods(profile))
    net, _ = pl.pretrain(profile, progress)
    plan_profile = dataclasses.replace(
        profile, cr_targets=(), official_settings=study.official_settings,
        rd_targets=study.rd_targets,
    )  # fmt: skip
    plans = plans_of(plan_profile, net)
    grid = [(arm, plan, seed) for arm in points(profile, study) for plan in plans
            for seed in study.seeds]  # fmt: skip
    rows = []
    for (method, epochs, lam), plan, seed in tqdm(
        grid, desc=f"study {profile.name}", unit="run", disable=not show_progress(progress)
    ):
        retrain_epochs, finetune_epochs = budget_split(method, epochs)
        arm = arm_profile(profile, retrain_epochs, finetune_epochs, lam)
        result, point_rows = run_point(arm, method, plan, seed, progress)
        errors = pl.source_errors(arm, split_method(method)[0], plan, seed, progress)
        extra = _error_metrics(errors)
        for r in point_rows:
            r.update(epochs=epochs, retrain_epochs=retrain_epochs, finetune_epochs=finetune_epochs)
        rows += point_rows + [{**point_rows[0], "metric": k, "value": f"{v:.6g}"}
                              for k, v in extra.items()]  # fmt: skip
    if write:
        write_study(study_path(profile), rows, platform.of_profile(profile))
    return rows


def _error_metrics(errors: dict) -> dict:
    """Totals over the shared convs: k-means error, ‖W‖² and their ratio."""
    error = sum(e["error"] for e in errors.values())
    weight_sq = sum(e["weight_sq"] for e in errors.values())
    return {"kmeans_error": error, "weight_sq": weight_sq, "kmeans_error_rel": error / weight_sq}


def study_path(profile: Profile):
    """data/results/study_<profile>.csv (smoke: build/results/, or $DKM_RESULTS_DIR)."""
    return results_path(profile).with_name(f"study_{profile.name}.csv")


def read_study(path) -> list[dict]:
    """Rows of a study table ([] when there is none); another format raises ResultsFormatError."""
    return read_table(Path(path), COLUMNS, "study")


def write_study(path, rows: list[dict], info: dict | None = None) -> None:
    """Write the study table at `path`: exactly `rows`, the whole grid of one study run (rows of
    plans or arms that grid no longer has, e.g. the planner's plans of another machine, do not
    linger), atomically, sorted, under the lock of its directory; `info` (the platform) beside
    it."""
    with locked(Path(path).parent):
        write_table(Path(path), rows, COLUMNS, _order)
        if info is not None:
            platform.write(Path(path), info)


def _order(r: dict) -> tuple:
    return (r["method"], r["setting"], float(r["target_cr"]), int(r["epochs"]),
            float(r["lam"] or 0), int(r["seed"]), r["metric"])  # fmt: skip


def study_summary(rows: list[dict], metric: str = "top1_bn") -> list[dict]:
    """Mean and standard deviation (n − 1) of `metric` over seeds, per method × plan × E × λ."""
    groups: dict = {}
    for r in rows:
        if r["metric"] == metric:
            key = (r["method"], r["setting"], float(r["target_cr"]), int(r["epochs"]), r["lam"])
            groups.setdefault(key, []).append(float(r["value"]))
    return [
        {
            "method": m,
            "setting": s,
            "target_cr": t,
            "epochs": e,
            "lam": float(lam) if lam else None,
            "n": len(v),
            "mean": statistics.fmean(v),
            "std": statistics.stdev(v) if len(v) > 1 else 0.0,
        }  # fmt: skip
        for (m, s, t, e, lam), v in sorted(
            groups.items(),
            key=lambda kv: (kv[0][2], kv[0][1], kv[0][0], kv[0][3], float(kv[0][4] or 0)),
        )  # fmt: skip
    ]


def profile_and_study(name: str) -> tuple[Profile, Study]:
    """The named profile and its study."""
    return get_profile(name), get_study(name)
