"""Results tables of one grid from several machines, side by side (issue 32, item 4).

    python tools/cross_platform.py committed=data/results/sweep_cpu_unrecorded.csv \\
        zen4=data/results/sweep_cpu_zen4.csv zen3=data/results/sweep_cpu_zen3.csv

writes, into --out-dir (default data/results):
- `cross_platform_sweep_cpu.csv`: every pair of tables run for run (the runs both hold, by key;
  with --by-plan by method, plan and seed, the planner's plans left out), per metric, method and
  plan: n, the mean difference and the largest |difference| (`dkm.experiments.sweep.compare_runs`);
- `paired_gaps_sweep_cpu.csv`: the gaps the README's statements rest on (`--gaps`, default
  Deep Compression − Deep k-Means and Deep k-Means − its plain control), paired by seed within
  each table and pooled over the tables, with a 95% t-interval (`sweep.paired_gaps`).
A statement about a gap holds across machines when the interval excludes 0.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

from dkm.experiments import sweep
from dkm.experiments.profiles import get_profile
from dkm.io import write_atomic

GAPS = ("deep_compression-dkm-indicator", "dkm-indicator-plain")


def _table(spec: str) -> tuple[str, list[dict]]:
    label, sep, path = spec.partition("=")
    if not sep or not label or not path:
        raise argparse.ArgumentTypeError(f"{spec!r}: give LABEL=PATH, e.g. zen4=sweep_cpu.csv")
    if not Path(path).is_file():
        raise argparse.ArgumentTypeError(f"{path}: no such file")
    return label, sweep.read_table(Path(path), sweep.COLUMNS, "sweep")


def _gap(spec: str) -> tuple[str, str]:
    cpu = get_profile("cpu")
    methods = sweep.all_methods(cpu) + sweep.finetuned_methods(cpu)
    for method in methods:
        if spec.startswith(method + "-") and spec[len(method) + 1 :] in methods:
            return method, spec[len(method) + 1 :]
    raise argparse.ArgumentTypeError(f"{spec!r}: give A-B, two of {', '.join(methods)}")


POINTS = ("mean_diff", "max_abs_diff", "mean_gap", "ci_low", "ci_high", "min_gap", "max_gap")


def _csv(rows: list[dict]) -> str:
    """The rows as CSV, top-1 differences in points with 2 decimals."""
    lines = [",".join(rows[0])]
    for r in rows:
        lines.append(",".join(f"{100 * v:.2f}" if k in POINTS else str(v) for k, v in r.items()))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=raw)
    parser.add_argument("tables", nargs="+", type=_table, metavar="LABEL=PATH",
                        help="a sweep table of one machine, by label (two or more)")  # fmt: skip
    parser.add_argument("--gaps", nargs="+", type=_gap, default=[_gap(g) for g in GAPS],
                        metavar="A-B", help=f"gaps (default: {' '.join(GAPS)})")  # fmt: skip
    by_plan = "pair runs by method, plan and seed, not by key (the planner's plans left out)"
    parser.add_argument("--by-plan", action="store_true", help=by_plan)
    parser.add_argument("--out-dir", type=Path, default=Path("data/results"),
                        help="where the two tables go (default data/results)")  # fmt: skip
    args = parser.parse_args(argv)
    tables = dict(args.tables)
    if len(tables) < 2:
        parser.error("give two or more tables with distinct labels")
    if not args.out_dir.is_dir():
        parser.error(f"--out-dir {args.out_dir}: no such directory")
    compared = []
    for (la, a), (lb, b) in itertools.combinations(tables.items(), 2):
        for metric in ("top1", "top1_bn"):
            for r in sweep.compare_runs(a, b, metric, by_plan=args.by_plan):
                compared.append({"pair": f"{lb} - {la}", "metric": metric} | r)
    gaps = [g for a, b in args.gaps for g in sweep.paired_gaps(tables, a, b)]
    if not compared or not gaps:
        print("no runs in common (compare) or no method pairs (gaps): nothing written",
              file=sys.stderr)  # fmt: skip
        return 1
    write_atomic(args.out_dir / "cross_platform_sweep_cpu.csv", _csv(compared))
    write_atomic(args.out_dir / "paired_gaps_sweep_cpu.csv", _csv(gaps))
    print(f"{len(compared)} comparisons, {len(gaps)} gaps -> {args.out_dir}")
    for g in gaps:
        gap, low, high = (100 * g[k] for k in ("mean_gap", "ci_low", "ci_high"))
        print(
            f"  {g['a']} - {g['b']} at {g['setting']} {g['target_cr']}: {gap:+.2f} points, "
            f"95% CI [{low:+.2f}, {high:+.2f}] (n={g['n']})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
