"""Benchmark: our energy metric for every layer of GoogLeNet vs ZigZag's and nn-dataflow's times.

Neither reference is re-run here (ZigZag takes tens of minutes): their times are the sums of the
per-layer wall times recorded in data/reference/zigzag_googlenet_<bits>.csv and
nn_dataflow_googlenet_<bits>.csv when the references were generated on this machine.
Our time is the median over `repeats` of `net_energy` on the 58 layers, the layer inventory (one
forward pass of a meta-device GoogLeNet, done once) excluded; it is timed and reported beside.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dkm.energy.metric import net_energy
from dkm.energy.references import nn_dataflow as nn_dataflow_ref
from dkm.energy.references.zigzag import load_reference, reference_layers

BITS = 8


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def run(repeats=5) -> dict:
    """Median time of our metric on all GoogLeNet layers vs the recorded ZigZag time for those
    layers."""
    inventory_s, layers = _timed(lambda: reference_layers("googlenet"))
    times = [_timed(lambda: net_energy(layers, BITS))[0] for _ in range(max(5, repeats))]
    ours_s = statistics.median(times)
    ref = load_reference("googlenet", BITS)
    reference_s = sum(r["wall_s"] for r in ref)
    nn_dataflow_s = sum(r["wall_s"] for r in nn_dataflow_ref.load_reference("googlenet", BITS))
    return {
        "name": f"energy_googlenet_{BITS}bit_vs_zigzag",
        "ours_s": ours_s,
        "inventory_s": inventory_s,
        "reference_s": reference_s,
        "ratio": reference_s / ours_s,
        "nn_dataflow_s": nn_dataflow_s,
        "ratio_nn_dataflow": nn_dataflow_s / ours_s,
        "layers": len(layers),
        "reference_layers": len(ref),
        "reference_source": (
            f"wall_s column of data/reference/zigzag_googlenet_{BITS}.csv, recorded when "
            "the reference was generated (ZigZag is not re-run by this benchmark); nn_dataflow_s "
            f"likewise from data/reference/nn_dataflow_googlenet_{BITS}.csv"
        ),
        "ours_excludes": "the layer inventory's forward pass (reported as inventory_s)",
        "goal": "ours < 1 s for all of GoogLeNet (ratio = ZigZag time / ours)",
        "met": bool(ours_s < 1.0),
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
