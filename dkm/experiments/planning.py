"""The one place that makes the experiments' plans from a profile (the core's planners do the work).

Every caller asks here: the sweep and the study (`plans_of`), the energy-savings table, the command
line (`plan_for`: --official, --target-cr with --planner), the notebooks and sliders
(`headline_plan`, `plan_for`). A target is a CR or an authors' setting's name, standing for that
setting's CR on the net (`target_cr`).
"""

from __future__ import annotations

from dkm._checks import check_choice
from dkm.experiments import pipeline as pl
from dkm.experiments.profiles import Profile
from dkm.planner import rd_plan
from dkm.plans import SETTINGS, Plan, authors_plan, plan_clusters

PLANNERS = ("uniform", "rd")


def target_cr(net, target) -> float:
    """A plan target as a CR: an authors' setting name stands for its CR on `net`."""
    return authors_plan(net, target).target_cr if target in SETTINGS else float(target)


def plans_of(profile: Profile, net, rd_options=None) -> list[Plan]:
    """The profile's plans: uniform K at `cr_targets`, the authors' `official_settings`, and the
    rate–distortion planner at `rd_targets` from `rd_options` (None: the planner's k-means of the
    pre-trained net, cached with it — `dkm.experiments.pipeline.planner_options`)."""
    plans = [plan_clusters(net, target_cr(net, t), p=profile.p) for t in profile.cr_targets]
    plans += [authors_plan(net, setting) for setting in profile.official_settings]
    if profile.rd_targets:
        options = pl.planner_options(profile, net) if rd_options is None else rd_options
        plans += [rd_plan(net, target_cr(net, t), options) for t in profile.rd_targets]
    return plans


def headline_plan(profile: Profile, net) -> Plan:
    """The one plan the notebooks re-train and share: the profile's first authors' setting (the
    paper's regime) if it runs one, else uniform K at its largest uniform target."""
    if profile.official_settings:
        return authors_plan(net, profile.official_settings[0])
    return plan_clusters(net, max(target_cr(net, t) for t in profile.cr_targets), p=profile.p)


def plan_for(profile: Profile, net, target=None, official=None, planner=None) -> Plan:
    """The plan of a command or a slider: an authors' setting (`official`), a target CR planned
    uniformly or by rate–distortion (`planner`), or, with neither, the headline plan."""
    if official is not None:
        if planner is not None:
            raise ValueError(f"--planner {planner} plans a --target-cr: not with --official")
        return authors_plan(net, official)
    if target is None:
        return headline_plan(profile, net)
    if check_choice("planner", planner or "uniform", PLANNERS) == "rd":
        return rd_plan(net, target_cr(net, target), pl.planner_options(profile, net))
    return plan_clusters(net, target_cr(net, target), p=profile.p)
