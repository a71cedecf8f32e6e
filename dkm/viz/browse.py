"""Browsing the run cache (notebook 02, section 5): the Deep k-Means re-trainings of a profile that
the cache holds, the plans they serve, and a λ slider over them.

A cached run is listed when it was re-trained from the profile's pre-trained net with the profile's
settings as they are now (`is_current`): a run of an older version of the profile (other
re-training settings, same pre-trained net) is left out. A run serves a plan when it has the plan's
K and, unless spectral, its p (`fits`): the spectral F has no p, so one spectral run serves every p
of its K.
"""

from __future__ import annotations

import dataclasses

from dkm.experiments import pipeline as pl
from dkm.experiments.cache import cached_retrains, config_key, load_json, runs_dir
from dkm.plans import SETTINGS, Plan, describe
from dkm.viz import plots, sliders
from dkm.viz.figdata import curves, layer_kmeans_errors


def run_plan(run: dict) -> Plan:
    """The K and p a cached run was re-trained at (a spectral run keeps no p)."""
    return Plan(run["Ks"], run["config"].get("p", [0.0] * len(run["Ks"])))


def is_current(run: dict, profile) -> bool:
    """Re-trained with the profile's settings as they are now (not an older profile's)."""
    plan, seed = run_plan(run), run["seed"]
    at_lam = dataclasses.replace(profile, lam=run["lam"])  # λ rides in the profile
    expected = pl.retrain_config(at_lam, "dkm", seed, plan, run["mode"])
    return config_key(expected) == config_key(run["config"])


def fits(run: dict, plan: Plan) -> bool:
    """Is `run` a re-training at `plan`: its K, and its p unless spectral (which serves every p)?"""
    return run["Ks"] == plan.K and (run["mode"] == "spectral" or run_plan(run).p == plan.p)


def current_runs(profile, seed: int) -> list[dict]:
    """The cached Deep k-Means re-trainings of the profile with `seed` that are current
    (`dkm.experiments.cache.cached_retrains` lists them all)."""
    runs = cached_retrains(pl.pretrain_config(profile))
    return [r for r in runs if r["seed"] == seed and is_current(r, profile)]


def plan_options(known: list[Plan], runs: list[dict]) -> list[Plan]:
    """The plans to offer: each known plan some run fits (in their order), then the plan of every
    run that fits none of them."""
    options = [q for q in dict.fromkeys(known) if any(fits(r, q) for r in runs)]
    return options + list(
        dict.fromkeys(run_plan(r) for r in runs if not any(fits(r, q) for q in options))
    )


def shared_result(profile, run: dict, plan: Plan) -> dict | None:
    """`run` shared with k-means at `plan`, as the pipeline cached it (None: not computed)."""
    config = pl.evaluation_config(profile, run["config"], "kmeans", plan, run["seed"])
    path = runs_dir() / f"evaluate-{config_key(config)}" / "result.json"
    return load_json(path) if path.exists() else None


def one_lambda_hint(profile_name: str, lam: float, plan: Plan, seed: int) -> str:
    """What to run for a second λ when the cache holds one only."""
    arg = (f"--official {plan.setting}" if plan.setting in SETTINGS
           else f"--target-cr {plan.target_cr:g}")  # fmt: skip
    return (
        f"Only λ = {lam:g} is cached for {profile_name}, so this slider has one position. Add "
        f"another with `python -m dkm retrain --profile {profile_name} --lam 2 {arg} --seed "
        f"{seed}` (or use the live slider above)."
    )


class CachedRuns:
    """The current Deep k-Means re-trainings of a profile in the run cache for one seed, and the
    plans they serve; `known` are the plans with a name (the sweep's, the notebook's)."""

    def __init__(self, profile, net, seed: int, known: list[Plan]):
        self.profile, self.net, self.seed = profile, net, seed
        self.known = list(dict.fromkeys(known))
        self.runs = current_runs(profile, seed)
        self.options = plan_options(self.known, self.runs)
        self.lams = sorted({r["lam"] for r in self.runs})
        self._start: dict = {}  # {K per conv: each layer's k-means error of the pre-trained net}

    def summary(self, plan: Plan) -> str:
        """How many runs, at which λ, for how many plans (and how to add a λ, if one only)."""
        n = len(self.options)
        text = (
            f"{len(self.runs)} cached Deep k-Means re-trainings of {self.profile.name} with seed "
            f"{self.seed}, at λ in {self.lams}, for {n} plan{'s' if n != 1 else ''}"
        )
        if len(self.lams) == 1:
            text += "\n" + one_lambda_hint(self.profile.name, self.lams[0], plan, self.seed)
        return text

    def plan_name(self, plan: Plan) -> str:
        """The sweep's name for a plan, and its K and p."""
        if plan not in self.known:
            name = "a plan"
        elif plan.setting == "uniform":
            name = f"uniform K at {plan.label()}"
        else:
            name = plan.label()
        return f"{name} ({describe(plan, self.net)})"

    def start_errors(self, Ks: tuple) -> dict:
        """Each layer's k-means error of the pre-trained net at these K (computed once)."""
        if Ks not in self._start:
            self._start[Ks] = layer_kmeans_errors(self.net, list(Ks), self.seed)
        return self._start[Ks]

    def figure(self, lam: float, plan: Plan):
        """The runs at λ that fit `plan`, both F modes; the title their top-1 after sharing + BN."""
        chosen = [r for r in self.runs if r["lam"] == lam and fits(r, plan)]
        start = self.start_errors(plan.K)
        runs = {f"dkm-{r['mode']}, λ = {lam:g}":
                curves(r["history"], start, layer_errors=r["mode"] == "indicator")
                for r in chosen}  # fmt: skip
        results = [(r["mode"], shared_result(self.profile, r, plan)) for r in chosen]
        acc = ", ".join(f"{mode} {100 * res['top1_bn']:.1f}%" for mode, res in results if res)
        title = (f"cached {self.profile.name} runs (seed {self.seed}), λ = {lam:g}, "
                 f"{self.plan_name(plan)}") + (f" — shared + BN: {acc}" if acc else "")  # fmt: skip
        return plots.retraining_figure(runs, title=title)

    def slider(self, plan: Plan):
        """A λ slider and a plan menu over the runs (None: no run cached); `plan` first shown."""
        if not self.runs:
            return None
        lam = self.profile.lam if self.profile.lam in self.lams else self.lams[0]
        names = [(self.plan_name(q), q) for q in self.options]
        controls = {
            "lam": sliders.slider("λ", self.lams, lam),
            "plan": sliders.menu("plan", names, plan if plan in self.options else self.options[0]),
        }
        return sliders.live_figure(self.figure, controls)
