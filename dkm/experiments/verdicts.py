"""What the results tables say, computed (notebook 04): verdicts read from summary rows.

A verdict compares two summary rows (`dkm.experiments.sweep.summary`, `study.study_summary`: a
mean and a standard deviation over seeds): a is "ahead of" b when its mean is higher by more than
the larger of the two standard deviations, "behind" when lower by more, and otherwise "level
with" b. Differences are in points (percent accuracy).

- At equal CR (the sweep): at each plan, each Deep k-Means variant against the best method without
  the regularizer (`against_best`), then the planner against the authors' settings and against
  uniform K at the same target (`planner_lines`).
- At equal training (the budget × λ study): each method at the profile's λ against Deep
  Compression's center fine-tuning (`equal_training_lines`), the best λ per budget and the first
  budget within 0.5 point of the uncompressed net (`budget_lines`), and what λ does to ‖W‖² and to
  the absolute and relative k-means error (`scale_lines`).
"""

from __future__ import annotations

VERDICTS = ("ahead of", "level with", "behind")
CLOSE = 0.5  # points: "within 0.5 point of the uncompressed net"


def compare(a: dict, b: dict) -> tuple[str, float]:
    """(verdict, a − b in points) of summary row a against b: level within one standard deviation
    (the larger of the two)."""
    diff = 100 * (a["mean"] - b["mean"])
    margin = 100 * max(a["std"], b["std"])
    return ("ahead of" if diff > margin else "behind" if diff < -margin else "level with"), diff


def by_plan(summary: list[dict]) -> dict:
    """{(setting, target CR): {method: row}} in the order the plans first appear."""
    out: dict = {}
    for s in summary:
        out.setdefault((s["setting"], s["target_cr"]), {})[s["method"]] = s
    return out


def _is_dkm(method: str) -> bool:
    return method.startswith("dkm")


# ---------------------------------------------------------------- at equal CR: the sweep
def against_best(summary: list[dict]) -> list[dict]:
    """Per plan with a method without the regularizer: each Deep k-Means variant against the best
    such method (the first of equal means).

    Each as {"setting", "target_cr", "cr" (the best's official CR), "best", "best_mean",
    "verdicts": [{"method", "mean", "verdict", "diff"}]}."""
    dkm_methods = [m for m in dict.fromkeys(s["method"] for s in summary) if _is_dkm(m)]
    plans = []
    for (setting, target), here in by_plan(summary).items():
        others = [m for m in here if not _is_dkm(m)]
        if not others:
            continue
        best = max(others, key=lambda m: here[m]["mean"])
        rows = []
        for m in (m for m in dkm_methods if m in here):
            verdict, diff = compare(here[m], here[best])
            rows.append({"method": m, "mean": here[m]["mean"], "verdict": verdict, "diff": diff})
        plans.append({"setting": setting, "target_cr": target, "cr": here[best]["cr_official"],
                      "best": best, "best_mean": here[best]["mean"], "verdicts": rows})  # fmt: skip
    return plans


def tally(plans: list[dict]) -> dict:
    """{method: {verdict: number of plans}, with "plans": how many} of `against_best`."""
    out: dict = {}
    for plan in plans:
        for v in plan["verdicts"]:
            counts = out.setdefault(v["method"], dict.fromkeys(VERDICTS, 0) | {"plans": 0})
            counts[v["verdict"]] += 1
            counts["plans"] += 1
    return out


def against_best_lines(summary: list[dict], profile_name: str) -> list[str]:
    """`against_best` and its `tally` as the notebook prints them."""
    plans, lines = against_best(summary), []
    for p in plans:
        lines.append(f"{p['setting']} plan, target {p['target_cr']:g} (CR ≈ {p['cr']:.1f}×):")
        lines += [
            f"  {v['method']} {100 * v['mean']:.1f}% is {v['verdict']} {p['best']} "
            f"{100 * p['best_mean']:.1f}% ({v['diff']:+.1f} points)"
            for v in p["verdicts"]
        ]
    for m, n in tally(plans).items():
        lines.append(
            f"On {profile_name}, {m} is ahead at {n['ahead of']}, level at {n['level with']} "
            f"and behind at {n['behind']} of {n['plans']} plans."
        )
    return lines


def same_cr(summary: list[dict], setting: str, other: str) -> list[tuple]:
    """(target, method, row at `setting`, row at `other`) where both plans share a target CR and
    the method."""
    at = by_plan(summary)
    targets = [t for s, t in at if s == setting and (other, t) in at]
    return [(t, m, at[(setting, t)][m], at[(other, t)][m])
            for t in targets for m in at[(setting, t)] if m in at[(other, t)]]  # fmt: skip


def planner_lines(summary: list[dict], official_settings) -> list[str]:
    """The planner ("rd") against each of the authors' settings, then against uniform K, at the
    same target CR, method by method."""
    pairs = [(s, f"the authors' {s}") for s in official_settings] + [("uniform", "uniform K")]
    lines = []
    for other, name in pairs:
        for t, m, mine, theirs in same_cr(summary, "rd", other):
            verdict, diff = compare(mine, theirs)
            a, b = 100 * mine["mean"], 100 * theirs["mean"]
            lines.append(
                f"CR target {t:g}: planner {verdict} {name} with {m}: {a:.1f}% vs {b:.1f}% "
                f"({diff:+.1f})"
            )
    return lines


# ---------------------------------------------------------------- at equal training: the study
def _arms(study: list[dict]) -> dict:
    return {(s["method"], s["setting"], s["epochs"], s["lam"]): s for s in study}


def _settings(study: list[dict]) -> list[str]:
    return list(dict.fromkeys(s["setting"] for s in study))


def budgets(study: list[dict]) -> list[int]:
    """The training budgets E > 0 of the study, ascending."""
    return sorted({s["epochs"] for s in study if s["epochs"] > 0})


def equal_training_lines(study: list[dict], lam: float) -> list[str]:
    """Per plan and budget: Deep k-Means at λ = `lam` (the profile's, not the best of several),
    plain re-training, and their +ft variants, each against deep_compression."""
    arms, lines = _arms(study), []
    for setting in _settings(study):
        for epochs in budgets(study):
            dc = arms.get(("deep_compression", setting, epochs, None))
            for m in ("dkm-indicator", "dkm-indicator+ft", "plain", "plain+ft"):
                fixed = lam if m.startswith("dkm-") else None
                mine = arms.get((m, setting, epochs, fixed))
                if mine and dc:
                    verdict, diff = compare(mine, dc)
                    note = f" (λ = {lam:g})" if fixed else ""
                    lines.append(
                        f"{setting}, {epochs} epoch(s): {m}{note} {100 * mine['mean']:.1f}% is "
                        f"{verdict} deep_compression {100 * dc['mean']:.1f}% ({diff:+.1f})"
                    )
    return lines


def best_lam(study: list[dict], setting: str, epochs: int) -> dict | None:
    """The dkm-indicator row of the best λ at a plan and budget (the first of equal means)."""
    arm = ("dkm-indicator", setting, epochs)
    tried = [s for s in study if (s["method"], s["setting"], s["epochs"]) == arm]
    return max(tried, key=lambda s: s["mean"]) if tried else None


def first_budget(pick, epochs: list[int], uncompressed: float) -> int | None:
    """The smallest budget E whose row `pick(E)` is within 0.5 point of `uncompressed`."""
    ok = [e for e in epochs if pick(e) and 100 * (uncompressed - pick(e)["mean"]) <= CLOSE]
    return min(ok) if ok else None


def budget_lines(study: list[dict], uncompressed: float) -> list[str]:
    """Per plan: the best λ at each budget against deep_compression, then the first budget at
    which each comes within 0.5 point of the uncompressed net."""
    arms, es, lines = _arms(study), budgets(study), []

    def when(pick) -> str:
        e = first_budget(pick, es, uncompressed)
        return f"no budget up to {max(es)} epochs" if e is None else f"{e} epoch(s)"

    for setting in _settings(study):
        for e in es:
            b, dc = best_lam(study, setting, e), arms.get(("deep_compression", setting, e, None))
            if b and dc:
                verdict, diff = compare(b, dc)
                lines.append(
                    f"{setting}, {e} epoch(s): the best λ ({b['lam']:g}) gives dkm-indicator "
                    f"{100 * b['mean']:.1f}%, {verdict} deep_compression ({diff:+.1f})"
                )
        dkm = when(lambda e, s=setting: best_lam(study, s, e))
        dc = when(lambda e, s=setting: arms.get(("deep_compression", s, e, None)))
        lines.append(
            f"{setting}: within {CLOSE} point of the uncompressed {100 * uncompressed:.1f}% — "
            f"dkm-indicator (best λ) at {dkm}, deep_compression at {dc}"
        )
    return lines


# ---------------------------------------------------------------- what λ does to the weights
SCALE_METRICS = ("weight_sq", "kmeans_error", "kmeans_error_rel")


def metric_mean(rows: list[dict], method: str, setting: str, epochs: int, lam, metric: str):
    """Mean over seeds of a study metric in the study's own rows (lam None: any λ)."""
    arm = (method, setting, epochs, metric)
    v = [float(r["value"]) for r in rows
         if (r["method"], r["setting"], int(r["epochs"]), r["metric"]) == arm
         and (lam is None or float(r["lam"]) == lam)]  # fmt: skip
    return sum(v) / len(v)


def scale_lines(rows: list[dict], study: list[dict]) -> list[str]:
    """Per plan, budget and λ: ‖W‖², the absolute and the relative k-means error of dkm-indicator,
    each as a ratio to the plain control re-trained as long (`rows`: the study's table)."""
    lams = sorted({s["lam"] for s in study if s["method"] == "dkm-indicator"})
    lines = []
    for setting in _settings(study):
        lines.append(
            f"{setting}: {'E':>3s} {'λ':>6s} {'‖W‖² / plain':>13s} {'abs. error / plain':>19s} "
            f"{'rel. error / plain':>19s}"
        )
        for e in budgets(study):
            plain = {k: metric_mean(rows, "plain", setting, e, None, k) for k in SCALE_METRICS}
            for lam in lams:
                ratios = [metric_mean(rows, "dkm-indicator", setting, e, lam, k) / plain[k]
                          for k in SCALE_METRICS]  # fmt: skip
                cells = "".join(f"{x:>{w}.3g}" for x, w in zip(ratios, (14, 20, 20)))
                lines.append(f"{'':{len(setting)}s}  {e:3d} {lam:6g} " + cells)
    return lines
