"""Pinning the numeric path (issue 32, item 3): does pinning ATen, oneDNN and MKL to one ISA level
make the numbers of a profile independent of the CPU, and what does it cost?

Three libraries dispatch on the CPU's instruction set: ATen's own kernels
(`ATEN_CPU_CAPABILITY`), oneDNN's convolutions (`ONEDNN_MAX_CPU_ISA`) and MKL's BLAS (`MKL_CBWR`,
conditional bitwise reproducibility). Importing dkm pins all three to AVX2 (dkm._numerics); each
library reads its variable once, on first use, so each variant
pre-trains the smoke profile in a fresh process with an empty run cache, and this reports the
SHA-256 of its model.pt, its top-1 and its wall time. On one machine, the checks that can be made:
the cost of the pin, and whether a lower level gives other bits (pinning decides the numbers).
Native and pinned bits agree on the smoke profile (one thread) on an AMD Zen 3, not on the cpu
profile (two threads, channels_last: MKL's AVX2 mode changes the gradients there). Whether two
CPU types agree when pinned needs two machines: docs/reproducibility.md.

    python bench/bench_pinning.py        # or: make bench (ratio: pinned AVX2 time / native)
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "native": {"DKM_NUMERICS": "native"},  # importing dkm pins AVX2 otherwise (dkm._numerics)
    "pinned AVX2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2",
                    "MKL_CBWR": "AVX2"},
    "pinned SSE4": {"ATEN_CPU_CAPABILITY": "default", "ONEDNN_MAX_CPU_ISA": "SSE41",
                    "MKL_CBWR": "SSE4_2"},
}  # fmt: skip
PINS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_CBWR", "DKM_NUMERICS")


def pretrain(env_pins: dict, profile: str = "smoke") -> dict:
    """Pre-train `profile` in a fresh process under `env_pins`: sha256, top-1, seconds."""
    with tempfile.TemporaryDirectory() as runs:
        env = {k: v for k, v in os.environ.items() if k not in PINS}
        env |= env_pins | {"DKM_RUNS_DIR": runs}
        t = time.perf_counter()
        out = subprocess.run(
            [sys.executable, "-m", "dkm", "pretrain", "--profile", profile, "--no-progress"],
            env=env, cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        seconds = time.perf_counter() - t
        (model,) = Path(runs).glob("pretrain-*/model.pt")
        top1 = float(re.search(r"top-1 ([0-9.]+)%", out).group(1))
        return {"sha256": hashlib.sha256(model.read_bytes()).hexdigest(), "top1": top1,
                "seconds": seconds}  # fmt: skip


def run(repeats: int = 1) -> dict:
    """Each variant once (`repeats` times for the timing); the table `make bench` prints."""
    results = {}
    for name, pins in VARIANTS.items():
        runs = [pretrain(pins) for _ in range(max(1, repeats))]
        assert len({r["sha256"] for r in runs}) == 1, f"{name}: not deterministic"
        results[name] = {**runs[0], "seconds": sorted(r["seconds"] for r in runs)[len(runs) // 2]}
    same = results["native"]["sha256"] == results["pinned AVX2"]["sha256"]
    lower = results["pinned SSE4"]["sha256"] != results["native"]["sha256"]
    ratio = results["pinned AVX2"]["seconds"] / results["native"]["seconds"]
    return {
        "name": "pinning the numeric path (smoke pre-training)",
        "ratio": ratio,
        "goal": "pinned AVX2 time / native <= 1.1 (the bits: information, see the docstring)",
        "met": ratio <= 1.1,
        "same_bits_native_vs_pinned_avx2": same,
        "other_bits_at_sse4": lower,
        "variants": results,
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=1))
