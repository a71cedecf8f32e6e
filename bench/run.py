"""`make bench`: run every bench/bench_*.py `run()` side by side, print a table,
write build/bench.json.

Each benchmark returns a dict with at least: name, ratio (the stated quantity), goal (text),
met (bool).
Timings on a shared 2-core machine are noisy: only ratios measured in the same run are reported.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
from pathlib import Path

from dkm.io import write_atomic

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _load(path: Path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main(argv=None) -> int:
    # the docstring's first paragraph (argparse rewraps the description onto one line)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed repeats per side (median; default 5)"
    )
    parser.add_argument(
        "--only", default="", help="comma-separated benchmark file stems, e.g. bench_kmeans"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "bench.json")
    args = parser.parse_args(argv)
    if args.repeats < 5:
        parser.error(
            f"--repeats={args.repeats} is out of range: allowed ≥ 5 (the median of at least 5)"
        )
    files = sorted(HERE.glob("bench_*.py"))
    if args.only:
        files = [f for f in files if f.stem in args.only.split(",")]
    results = []
    for f in files:
        print(f"running {f.stem} …", file=sys.stderr, flush=True)
        results.append(_load(f).run(repeats=args.repeats))
    print(f"\n{'benchmark':40s} {'ratio':>8s}  {'met':5s} goal")
    for r in results:
        print(f"{r['name']:40s} {r['ratio']:8.2f}  {str(r['met']):5s} {r['goal']}")
    write_atomic(
        args.out,
        json.dumps(
            {"machine": platform.platform(), "cpus": os.cpu_count(), "results": results}, indent=2
        ),
    )
    print(f"\nwritten: {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
