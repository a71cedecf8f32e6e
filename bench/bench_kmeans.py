"""Benchmark: dkm.clustering against scikit-learn's KMeans (lloyd, n_init=1), same starting centers.

- Kernel rows: 200k rows × 3, K = 64, 100 iterations at most, at 1 and at 2 threads for both sides
  (ours: `threads`; scikit-learn: its OpenMP threads, through threadpoolctl), on the idle machine
  and again with a background load (one process running 2-thread matrix products) for the whole
  measurement. Goal: ≥ 3× scikit-learn in each of the four cases.
- 1-D rows (1×1 convs): 500k rows × 1, K ∈ {2, 4, 16, 64, 256}, one thread each. Goal: ≥ 10×.
- At equal or lower inertia (inertias recomputed in float64 from each side's centers and
  assignments; scikit-learn's own `inertia_` is a float32 sum). The reference is scikit-learn's
  fit of the same problem in float64 (not timed): ours ≤ its inertia × (1 + 1e-6). scikit-learn on
  float32 rows is reported beside it but is no reference: its float32 sums make its path depend on
  its thread count (measured: 200k × 3 after 100 iterations, 60762.58 at 1 thread, 60761.23 at 2;
  in float64 60762.48 at both), so a run that has not converged lands a little above or below ours
  by chance.
- The first call's cost: a fresh process with an empty numba cache directory compiles the kernels
  (import + first k-means on a small problem); a second process with that cache only loads them.

Each side alternates with the other (median of `repeats`), so both see the same machine.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from dkm.clustering import init_centers, kmeans  # noqa: E402

SEED, MAX_ITER, TOL = 0, 100, 1e-4
KERNEL = (200_000, 3, 64)
ONE_D_N, ONE_D_KS = 500_000, (2, 4, 16, 64, 256)
LOAD = (
    "import torch\ntorch.set_num_threads(2)\na = torch.randn(1500, 1500)\n"
    "while True:\n    a = torch.tanh(a @ a) \n"
)


def _data(N: int, s: int, K: int):
    """Seeded standard normal rows and shared k-means++ starting centers."""
    X = torch.randn(N, s, generator=torch.Generator().manual_seed(SEED))
    return X, init_centers(X, K, "kmeans++", seed=SEED)


def _inertia64(X: np.ndarray, centers: np.ndarray, labels: np.ndarray) -> float:
    return float(((X.astype(np.float64) - centers.astype(np.float64)[labels]) ** 2).sum())


def compare(N: int, s: int, K: int, threads: int, repeats: int) -> dict:
    """Median seconds of ours and scikit-learn's (alternating), and both float64 inertias."""
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    X, C = _data(N, s, K)
    X_np, C_np = X.numpy(), C.numpy()
    sk = KMeans(n_clusters=K, init=C_np, n_init=1, algorithm="lloyd", tol=TOL, max_iter=MAX_ITER)
    ours_t, sk_t = [], []
    kmeans(X, K, init_centers=C, threads=threads)  # warm: kernels loaded, caches filled
    for _ in range(repeats):
        start = time.perf_counter()
        ours = kmeans(X, K, max_iter=MAX_ITER, tol=TOL, init_centers=C, threads=threads)
        ours_t.append(time.perf_counter() - start)
        with threadpool_limits(limits=threads):
            start = time.perf_counter()
            fitted = sk.fit(X_np)
            sk_t.append(time.perf_counter() - start)
    ours_s, sk_s = statistics.median(ours_t), statistics.median(sk_t)
    theirs = _inertia64(X_np, fitted.cluster_centers_, fitted.labels_)
    with threadpool_limits(limits=threads):
        exact = sk.set_params(init=C_np.astype(np.float64)).fit(X_np.astype(np.float64))
    reference = _inertia64(X_np, exact.cluster_centers_, exact.labels_)
    return {
        "N": N, "s": s, "K": K, "threads": threads,
        "ours_s": ours_s, "sklearn_s": sk_s, "ratio": sk_s / ours_s,
        "ours_inertia": ours.inertia, "sklearn_inertia": theirs,
        "sklearn_float64_inertia": reference,
        "inertia_ok": ours.inertia <= reference * (1 + 1e-6),
        "inertia_le_sklearn_float32": ours.inertia <= theirs * (1 + 1e-6),
        "ours_n_iter": ours.n_iter, "sklearn_n_iter": int(fitted.n_iter_),
        "sklearn_float64_n_iter": int(exact.n_iter_),
    }  # fmt: skip


def first_call_seconds() -> dict:
    """Seconds of `import dkm.clustering` + a first small k-means in a fresh process: compiling
    (empty numba cache), then loading (the cache that run wrote)."""
    code = (
        "import time; t = time.perf_counter(); import torch; from dkm.clustering import kmeans\n"
        "X = torch.randn(2000, 3); kmeans(X, 8); kmeans(X[:, :1].contiguous(), 8)\n"
        "print(time.perf_counter() - t)"
    )
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache, "PYTHONPATH": str(ROOT)}
        for name in ("compile_s", "cached_s"):
            run = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            out[name] = float(run.stdout.strip().splitlines()[-1])
    return out


def _loaded(fn):
    """fn() while a background process keeps 2 threads busy with matrix products."""
    load = subprocess.Popen([sys.executable, "-c", LOAD])
    try:
        time.sleep(1.0)  # let it start
        return fn()
    finally:
        load.kill()
        load.wait()


def run(repeats=5) -> dict:
    repeats = max(5, repeats)
    kernel = {
        f"{load}_{t}_threads": (
            _loaded(lambda: compare(*KERNEL, t, repeats))
            if load == "loaded"
            else compare(*KERNEL, t, repeats)
        )
        for load in ("idle", "loaded")
        for t in (1, 2)
    }
    one_d = {f"K{K}": compare(ONE_D_N, 1, K, 1, repeats) for K in ONE_D_KS}
    first = first_call_seconds()
    kernel_ratio = min(r["ratio"] for r in kernel.values())
    one_d_ratio = min(r["ratio"] for r in one_d.values())
    inertia_ok = all(r["inertia_ok"] for r in [*kernel.values(), *one_d.values()])
    return {
        "name": "kmeans_vs_sklearn",
        "ratio": kernel_ratio,
        "kernel_rows_200k_x3_K64": kernel,
        "one_d_500k": one_d,
        "kernel_rows_min_ratio": kernel_ratio,
        "one_d_min_ratio": one_d_ratio,
        "first_call": first,
        "cores": os.cpu_count(),
        "goal": "sklearn/ours >= 3 on 200k x 3 (1 and 2 threads, idle and loaded), >= 10 on 500k "
        "x 1 (K = 2..256), inertia <= sklearn's fit in float64 x (1 + 1e-6)",
        "met": bool(kernel_ratio >= 3 and one_d_ratio >= 10 and inertia_ok),
    }


if __name__ == "__main__":
    import json

    print(json.dumps(run(), indent=2))
