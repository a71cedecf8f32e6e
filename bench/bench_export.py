"""Benchmark: loading the default profile's net shared at the authors' 45x, for each index coding.

The net is the `cpu` profile's architecture (WRN-16-1 with the authors' 16 convs) from a seeded
initialization, shared at the authors' 45x setting (the decoding time depends on the number of rows
and on the cluster usage, not on training). The time is the median over `repeats` of
`dkm.export.dkmfile.load_shared` into a fresh net; the goal is < 1 s for every coding (ratio: 1 s /
the
slowest coding's time).
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dkm.experiments.profiles import get_profile
from dkm.export.dkmfile import CODINGS, load_shared, save_shared
from dkm.plans import authors_plan
from dkm.sharing import share
from dkm.training.models import build_model


def _net():
    profile = get_profile("cpu")
    torch.manual_seed(0)
    return build_model(profile.model, **profile.model_kwargs).eval()


def _load_time(path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        fresh = _net()
        start = time.perf_counter()
        load_shared(path, fresh)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(repeats=5) -> dict:
    """Median load time of each coding's file; sizes beside."""
    net = _net()
    shared = share(net, authors_plan(net, "45x"), kmeans_seed=1000)
    seconds, sizes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for coding in CODINGS:
            path = Path(tmp) / f"{coding}.dkm"
            sizes[coding] = save_shared(net, shared, path, coding=coding)["bytes"]
            seconds[coding] = _load_time(path, max(5, repeats))
    slowest = max(seconds.values())
    return {
        "name": "export_load_cpu_net_45x",
        "load_s": seconds,
        "bytes": sizes,
        "rows": sum(layer.num_rows for layer in shared.layers.values()),
        "ratio": 1.0 / slowest,
        "goal": "loading the default profile's shared net < 1 s for every coding (ratio = 1 s / "
        "the slowest)",
        "met": bool(slowest < 1.0),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
