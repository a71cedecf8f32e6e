"""The CR grid behind the CR–accuracy figure: every method at every target CR and seed, into one
tidy table.

Methods (all shared row-wise at the same per-layer K, from `dkm.plans.plan_clusters`):

| method             | net that is shared                 | sharing                                |
|--------------------|------------------------------------|----------------------------------------|
| `kmeans`           | pre-trained                        | k-means++ (post-training sharing)      |
| `density`          | pre-trained                        | k-means seeded from the weight density |
| `deep_compression` | pre-trained                        | linear init + center fine-tuning       |
| `plain`            | re-trained without the regularizer | k-means++ (the control: more training) |
| `dkm-indicator`    | re-trained with indicator F        | k-means++                              |
| `dkm-spectral`     | re-trained with spectral F         | k-means++                              |
| `plain+ft`         | re-trained without the regularizer | as `deep_compression` (opt-in, below)  |
| `dkm-<mode>+ft`    | re-trained with the regularizer    | as `deep_compression` (opt-in, below)  |

The `+ft` methods follow re-training with Deep Compression's center fine-tuning: two epochs of
training in all, so `plain+ft` is their control. They are not in the default grid (they add a
fine-tuning per point); run them with `sweep(profile, methods=finetuned_methods(profile))` or
`python -m dkm sweep --methods plain+ft,dkm-indicator+ft`. The table is always the grid of the run
that wrote it: name the default methods too to keep their rows beside the opt-in ones.

Points (`dkm.experiments.planning.plans_of`): one uniform K per conv for each of the profile's
`cr_targets` (`dkm.plans.plan_clusters`), the authors' per-layer settings named in
`official_settings` (`dkm.plans.authors_plan`), and the rate–distortion planner's per-layer (K, p)
at each of its `rd_targets` (`dkm.planner.rd_plan`); a target may be an authors' setting's name,
standing for its CR on the profile's net. The profile's `methods` (default: all but `+ft`) run at
every plan and seed.
The table (one row per run × metric; `setting` = "uniform", "rd" or "45x"/"47x"/"50x") is
`data/results/sweep_<profile>.csv` (smoke: build/results/).
"""

from __future__ import annotations

import csv
import io
import statistics
from pathlib import Path

from tqdm.auto import tqdm

from dkm._checks import check_choice
from dkm.experiments import pipeline as pl
from dkm.experiments import platform
from dkm.experiments.cache import IN_CHECKOUT, ROOT, config_key, user_dir
from dkm.experiments.planning import plans_of
from dkm.experiments.profiles import Profile
from dkm.io import WriteError, env_path, locked, read_text, remove_stale_temps, write_atomic
from dkm.plans import Plan
from dkm.training.loop import show_progress

COLUMNS = ("run_key", "profile", "method", "setting", "target_cr", "seed", "lam", "metric", "value")
METRICS = ("top1_before", "top1", "top1_bn", "K", "cr_official", "cr_fixed", "cr_huffman")
BASELINES = ("kmeans", "density", "deep_compression")


# suffix: the re-trained net is shared as by deep_compression (linear init + center fine-tuning)
FINETUNED = "+ft"


def all_methods(profile: Profile) -> list[str]:
    """Every method without fine-tuning after re-training, in table order."""
    return [*BASELINES, "plain", *(f"dkm-{mode}" for mode in profile.modes)]


def methods_of(profile: Profile) -> list[str]:
    """The methods the sweep runs by default: the profile's `methods`, else all of them."""
    return list(profile.methods) if profile.methods else all_methods(profile)


def finetuned_methods(profile: Profile) -> list[str]:
    """The opt-in methods: each re-training followed by center fine-tuning (`plain+ft` is their
    control)."""
    return [m + FINETUNED for m in all_methods(profile) if m not in BASELINES]


def split_method(method: str) -> tuple[str, str]:
    """(source net, sharing method) of a sweep method."""
    if method in BASELINES:
        return "pretrained", method
    if method.endswith(FINETUNED):
        return method[: -len(FINETUNED)], "deep_compression"
    return method, "kmeans"


def results_path(profile: Profile) -> Path:
    """data/results/sweep_<name>.csv for the cpu and paper profiles; build/results/ for smoke (or
    $DKM_RESULTS_DIR)."""
    default = ROOT / ("build/results" if profile.name == "smoke" else "data/results")
    if not IN_CHECKOUT:  # an installed wheel: the user's data directory
        default = user_dir("results")
    return env_path("DKM_RESULTS_DIR", default) / f"sweep_{profile.name}.csv"


class ResultsFormatError(ValueError):
    """A results table whose header is not this version's COLUMNS."""


def read_results(path: Path) -> list[dict]:
    """Rows of a results table; an older or foreign format raises ResultsFormatError (nothing is
    overwritten)."""
    return read_table(path, COLUMNS, "sweep")


def read_table(path: Path, columns: tuple, command: str) -> list[dict]:
    """Rows of a table written with `columns` ([] when there is none); any other header raises
    ResultsFormatError naming the file and the `command` that rewrites it."""
    if not path.exists():
        return []
    fix = f"move it away (or delete it) and re-run the {command}"
    try:
        with io.StringIO(read_text(path), newline="") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != columns:
                raise ResultsFormatError(
                    f"{path} has columns {reader.fieldnames}: this version writes "
                    f"{list(columns)}; {fix}"
                )
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as err:
        raise ResultsFormatError(f"{path} is not a readable CSV table ({err}): {fix}") from None
    for line, row in enumerate(rows, start=2):
        bad = None in row or None in row.values() or not _number(row.get("value"))
        if bad:
            raise ResultsFormatError(
                f"{path}, line {line}: a damaged row (fields missing or extra, or a value that is "
                f"not a number): {fix}"
            )
    return rows


def _number(text) -> bool:
    """Is `text` a number (a table's value column)?"""
    try:
        float(text)
    except (TypeError, ValueError):
        return False
    return True


def write_results(path: Path, rows: list[dict], info: dict | None = None) -> None:
    """Write the table at `path` as exactly `rows`, the whole grid of one sweep run: rows of other
    runs (plans the grid no longer has, methods it did not run, another machine's runs) are not
    kept. `info`: the platform the rows were computed on, written beside the table
    (`dkm.experiments.platform`). Atomic, under the lock of its directory."""
    _write_locked(path, lambda old: rows, info)


def add_results(path: Path, new_rows: list[dict], info: dict | None = None) -> None:
    """Merge `new_rows` (one evaluated point, `dkm evaluate`) into the table at `path`: rows of a
    re-run key replace the old ones; concurrent writers lose no row. A table recorded on another
    platform is refused (its rows and these would mix two machines' numbers)."""
    keys = {r["run_key"] for r in new_rows}
    _write_locked(path, lambda old: [r for r in old if r["run_key"] not in keys] + new_rows, info,
                  merge=True)  # fmt: skip


def _check_same_platform(path: Path, info: dict | None) -> None:
    """Refuse to merge rows of this platform into a table recorded on another one."""
    before = platform.recorded(path) if path.exists() else None
    if info is None or before is None or not platform.differences(before, info):
        return
    raise ValueError(
        f"{path} was computed on {platform.describe(before)}; this machine is "
        f"{platform.describe(info)} ({'; '.join(platform.differences(before, info))}): its "
        f"numbers would mix with these. Re-run the whole sweep (`dkm sweep`) to rewrite the table"
    )


def _write_locked(path: Path, make_rows, info: dict | None, merge: bool = False) -> None:
    """Write make_rows(the table's current rows), sorted, atomically under the directory's lock,
    and the platform beside it."""
    path = Path(path)
    try:
        with locked(path.parent):
            for name in (path.name, platform.sidecar(path).name):  # of a killed writer
                remove_stale_temps(path.parent, name)
            if merge:
                _check_same_platform(path, info)
            write_table(path, make_rows(read_results(path)))
            if info is not None:
                platform.write(path, info)
    except WriteError as err:
        raise WriteError(
            f"{err} (the results table: set $DKM_RESULTS_DIR to a writable directory; the "
            f"results themselves are cached in the run directories, a re-run only reads them)"
        ) from None


def write_table(path: Path, rows: list[dict], columns=COLUMNS, order=None) -> None:
    """`rows` as CSV with `columns`, sorted by `order` (default: the sweep's), atomically."""
    order = order or (lambda r: (r["method"], r["setting"], float(r["target_cr"]), int(r["seed"]),
                                 r["metric"]))  # fmt: skip
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: r[c] for c in columns} for r in sorted(rows, key=order))
    write_atomic(path, buf.getvalue())


def _rows(profile: Profile, method: str, plan: Plan, seed: int, key: str, result: dict) -> list:
    """The table rows (one per metric) of one evaluated point."""
    source = split_method(method)[0]
    values = {
        "top1_before": result["top1_before"],
        "top1": result["top1"],
        "top1_bn": result["top1_bn"],
        "K": max(plan.K),
        **{f"cr_{c}": result["cr"][c] for c in ("official", "fixed", "huffman")},
    }
    base = {
        "run_key": key,
        "profile": profile.name,
        "method": method,
        "setting": plan.setting,
        "target_cr": plan.target_cr,
        "seed": seed,
        "lam": profile.lam if source.startswith("dkm-") else "",  # λ of a regularized source
    }
    return [{**base, "metric": m, "value": f"{values[m]:.6g}"} for m in METRICS]


def run_point(profile: Profile, method: str, plan: Plan, seed: int, progress=None):
    """(result, table rows) of one sweep method at one plan and seed (cached stages are read)."""
    source, share_method = split_method(method)
    net, source_config = pl.source_net(profile, source, plan, seed, progress)
    config = pl.evaluation_config(profile, source_config, share_method, plan, seed)
    result = pl.share_and_evaluate(profile, net, source_config, share_method, plan, seed, progress)
    return result, _rows(profile, method, plan, seed, config_key(config), result)


def sweep(profile: Profile, methods=None, progress=None, write=True, report=None) -> list[dict]:
    """Run (or read from the cache) every method × plan × seed; the rows become the table (exactly
    this grid: `write_results`).

    report(done, total, what): called before each point (what: method, plan and seed), and at the
    end with done == total."""
    methods = methods_of(profile) if methods is None else list(methods)
    for m in methods:
        check_choice("method", m, all_methods(profile) + finetuned_methods(profile))
    net, _ = pl.pretrain(profile, progress)
    plans = plans_of(profile, net)
    grid = [(m, plan, seed) for plan in plans for seed in profile.seeds for m in methods]
    rows = []
    show = show_progress(progress)
    for k, (method, plan, seed) in enumerate(
        tqdm(grid, desc=f"sweep {profile.name}", unit="run", disable=not show)
    ):
        if report:
            report(k, len(grid), f"{method} at {plan.label()}, seed {seed}")
        rows += run_point(profile, method, plan, seed, progress)[1]
    if report:
        report(len(grid), len(grid), "done")
    if write:
        write_results(results_path(profile), rows, platform.of_profile(profile))
    return rows


def summary(rows: list[dict], metric: str = "top1") -> list[dict]:
    """Mean, standard deviation (n − 1) and spread (half the range) of `metric` over seeds, per
    method × plan, with the mean official CR."""
    groups: dict = {}
    for r in rows:
        g = groups.setdefault((r["method"], r.get("setting", "uniform"), float(r["target_cr"])), {})
        g.setdefault(r["metric"], []).append(float(r["value"]))
    out = []
    for (method, setting, target), g in sorted(
        groups.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][0])
    ):
        v = g.get(metric, [])
        out.append(
            {
                "method": method,
                "setting": setting,
                "target_cr": target,
                "cr_official": sum(g["cr_official"]) / len(g["cr_official"]),
                "K": g["K"][0],
                "n": len(v),
                "mean": sum(v) / len(v),
                "spread": (max(v) - min(v)) / 2,
                "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            }
        )
    return out


def compare_runs(rows_a: list[dict], rows_b: list[dict], metric: str = "top1_bn",
                 by_plan: bool = False) -> list[dict]:  # fmt: skip
    """Two tables of the same grid (e.g. two CPU types) run for run: per method × plan, the runs
    both have, the mean difference b − a and the largest |b − a| of `metric`.

    Runs pair by key (the same configuration); with `by_plan`, by method, plan and seed instead
    (tables whose keys differ in one field, such as the numeric path), the planner's plans left
    out (they differ with the pre-trained net)."""

    def ident(r):
        return (r["method"], r["setting"], r["target_cr"], r["seed"]) if by_plan else r["run_key"]

    def runs(rows, value):
        skip_rd = by_plan  # "rd" names another plan on each machine
        return {ident(r): value(r) for r in rows
                if r["metric"] == metric and not (skip_rd and r["setting"] == "rd")}  # fmt: skip

    a, b = runs(rows_a, lambda r: r), runs(rows_b, lambda r: float(r["value"]))
    groups: dict = {}
    for key in a.keys() & b.keys():
        r = a[key]
        diff = b[key] - float(r["value"])
        groups.setdefault((r["method"], r["setting"], float(r["target_cr"])), []).append(diff)
    return [
        {"method": m, "setting": s, "target_cr": t, "n": len(d),
         "mean_diff": sum(d) / len(d), "max_abs_diff": max(map(abs, d))}
        for (m, s, t), d in sorted(groups.items())
    ]  # fmt: skip


def paired_gaps(tables: dict, a: str, b: str, metric: str = "top1_bn") -> list[dict]:
    """Method `a` − method `b`, paired by seed within each table, per plan, pooled over tables
    (e.g. CPU types): n pairs, the mean gap, its 95% t-interval, and the smallest and largest.

    A plan's runs pair within one table only (the planner's plans differ between machines).
    `tables` maps a label to a table's rows; an interval needs n ≥ 2 (else NaN)."""
    from scipy import stats

    groups: dict = {}
    for label, rows in tables.items():
        values = {
            (r["method"], r["setting"], float(r["target_cr"]), int(r["seed"])): float(r["value"])
            for r in rows
            if r["metric"] == metric
        }
        for (method, setting, target, seed), value in values.items():
            other = values.get((b, setting, target, seed))
            if method == a and other is not None:
                groups.setdefault((setting, target), []).append(value - other)
    out = []
    for (setting, target), d in sorted(groups.items()):
        n, mean = len(d), sum(d) / len(d)
        sd = statistics.stdev(d) if n > 1 else float("nan")
        half = stats.t.ppf(0.975, n - 1) * sd / n**0.5 if n > 1 else float("nan")
        out.append({"a": a, "b": b, "setting": setting, "target_cr": target, "n": n,
                    "mean_gap": mean, "ci_low": mean - half, "ci_high": mean + half,
                    "min_gap": min(d), "max_gap": max(d)})  # fmt: skip
    return out
