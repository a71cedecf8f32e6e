"""The core k-means's two CPU fast paths (dkm.clustering's hook `_fast`, loaded on first use).

- `Sorted`: rows of length s = 1 (1×1 convs) on the CPU, sorted once; a cluster is a run of sorted
  rows between two thresholds (the exactness argument is in dkm.clustering's docstring).
- `Compiled`: s > 1 on the CPU, Hamerly's bounds in dkm.fast.kmeans_numba's kernels, rows split
  among Python threads.

Both are `dkm.clustering._State`s: the same iterations, means and empty-cluster rule as the core's
reference path (`_Blocks`, any device), and the same numbers; only faster. Without numba the sorted
path runs in numpy and the s > 1 rows take the reference path.

May import: numpy, torch, dkm.clustering (and dkm.fast.kmeans_numba through its hook).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# the kernels through the core's hook, so that switching them off there (the tests do) holds here
from dkm.clustering import _nb, _sq_to, _State


def thresholds(values: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per pair of neighbouring sorted centers, the value t of their dtype such that, for data of
    that dtype, x goes to the upper one iff x > t: t is the largest value ≤ the midpoint (computed
    in float64), or the largest value below it when the midpoint itself is such a value and the
    upper center has the lower index (a row on the midpoint is a tie: it goes to the lowest index,
    as on every path)."""
    mid = (values[1:].astype(np.float64) + values[:-1]) / 2
    t = mid.astype(values.dtype)
    below = np.nextafter(t, values.dtype.type(-np.inf))
    t = np.where(t.astype(np.float64) > mid, below, t)
    return np.where((t == mid) & (labels[1:] < labels[:-1]), below, t)


def sorted_centers(c: np.ndarray):
    """(thresholds, labels) of the centers sorted (stable): the K − 1 thresholds between
    neighbours, and per sorted center the index its rows go to — equal centers send all their rows
    to the first of the run, the lowest index."""
    order = np.argsort(c, kind="stable")
    values = c[order]
    idx = np.arange(len(values))
    new_run = np.ones(len(values), dtype=bool)
    new_run[1:] = values[1:] != values[:-1]
    labels = order[np.maximum.accumulate(np.where(new_run, idx, 0))]
    return thresholds(values, labels), labels


def label_sorted(x: np.ndarray, codebook: np.ndarray):
    """s = 1 on the CPU: (cluster of every value of x, inertia in float64); x goes to sorted
    center j = #{t_j < x} (exact: see the module docstring)."""
    thresholds, labels = sorted_centers(codebook)
    if _nb.AVAILABLE:
        return _nb.label_sorted(x, thresholds, labels, codebook.astype(np.float64))
    out = labels[np.searchsorted(thresholds, x, side="left")]
    return out, float(((x.astype(np.float64) - codebook.astype(np.float64)[out]) ** 2).sum())


def assign_sorted(X: torch.Tensor, codebook: torch.Tensor):
    """s = 1 on the CPU: the nearest centers and the squared distances (float64)."""
    assignments = torch.from_numpy(label_sorted(X[:, 0].numpy(), codebook[:, 0].numpy())[0])
    return assignments, _sq_to(X, codebook, assignments)


def nearest_compiled(X: torch.Tensor, codebook: torch.Tensor):
    """s > 1 on the CPU: the compiled kernel (nearest center and its squared distance)."""
    N = X.shape[0]
    a, u, second = np.empty(N, np.int64), np.empty(N), np.empty(N)
    _nb.assign_bounds(X.numpy(), codebook.numpy(), 0, N, a, u, second)
    assignments = torch.from_numpy(a)
    return assignments, _sq_to(X, codebook, assignments)


class Sorted(_State):
    """s = 1 on the CPU: X sorted once; a cluster is a run of sorted rows between two thresholds."""

    compiled_loop = True  # the tests switch it off to check it against _lloyd's loop

    def __init__(self, X: torch.Tensor, centers: torch.Tensor):
        self.x = X[:, 0].numpy()
        self.xs = np.sort(self.x)
        if _nb.AVAILABLE:
            self.blocks, self.variance = _nb.block_prefix(self.xs)
        else:
            self.prefix = np.zeros(len(self.x) + 1)
            np.cumsum(self.xs, dtype=np.float64, out=self.prefix[1:])
        self.perm, self.exceptions = None, None
        self.runs = None  # the clusters of the centers: iterate() finds those of the start

    def mean_variance(self, X: torch.Tensor) -> float:
        """Var(x), from the pass that summed the sorted rows when it ran."""
        return self.variance if _nb.AVAILABLE else super().mean_variance(X)

    def iterate(self, centers: torch.Tensor, max_iter: int, tol_abs: float):
        """All of _lloyd's iterations in one compiled call (dkm.fast.kmeans_numba.sorted_lloyd, the
        same numbers), up to an empty cluster, whose re-seeding _lloyd's loop then does."""
        if not (self.compiled_loop and _nb.AVAILABLE):
            self.runs = self._nearest(centers)
            return super().iterate(centers, max_iter, tol_abs)
        c, n_iter, status, sums, counts, ends, labels = _nb.sorted_lloyd(
            self.xs, self.blocks, centers[:, 0].numpy(), max_iter, tol_abs
        )
        self.sums, self.counts = torch.from_numpy(sums), torch.from_numpy(counts)
        self.runs = ends, labels
        return torch.from_numpy(c)[:, None], n_iter, status > 0, status == 2

    def _nearest(self, centers: torch.Tensor):
        """Clusters of the nearest centers: sets sums and counts; returns the runs of labels."""
        K = centers.shape[0]
        thresholds, labels = sorted_centers(centers[:, 0].numpy())
        if _nb.AVAILABLE:
            sums, counts, ends, labels = _nb.sorted_clusters(
                self.xs, self.blocks, thresholds, labels, K
            )
            self.sums, self.counts = torch.from_numpy(sums), torch.from_numpy(counts)
            return ends, labels
        edges = np.concatenate(
            ([0], np.searchsorted(self.xs, thresholds, side="right"), [len(self.xs)])
        )
        n = np.diff(edges)
        sums = self.prefix[edges[1:]] - self.prefix[edges[:-1]]
        self.counts = torch.from_numpy(np.bincount(labels, weights=n, minlength=K).astype(np.int64))
        self.sums = torch.from_numpy(np.bincount(labels, weights=sums, minlength=K)[:, None])
        # canonical runs: empty runs dropped, neighbours with the same label merged
        ends, labels = edges[1:][n > 0], labels[n > 0]
        keep = np.append(labels[1:] != labels[:-1], True)
        return ends[keep], labels[keep]

    def _row_labels(self, runs) -> np.ndarray:
        """The cluster of every row (original order) under `runs`."""
        if self.perm is None:
            self.perm = np.argsort(self.x, kind="stable")  # xs == x[perm]
        ends, labels = runs
        out = np.empty(len(self.x), np.int64)
        out[self.perm] = np.repeat(labels, np.diff(ends, prepend=0))
        if self.exceptions is not None:
            rows, new = self.exceptions
            out[rows] = new
        return out

    def sq_to_own(self, centers: torch.Tensor) -> torch.Tensor:
        own = centers[:, 0].double().numpy()[self._row_labels(self.runs)]
        return torch.from_numpy((self.x.astype(np.float64) - own) ** 2)

    def reseed(self, rows: torch.Tensor, new: torch.Tensor) -> None:
        rows, new = rows.numpy(), new.numpy()
        old = self._row_labels(self.runs)[rows]
        sums, counts = self.sums[:, 0].numpy(), self.counts.numpy()
        for i, a, b in zip(rows, old, new):  # a few rows, in the order given
            v = float(self.x[i])
            sums[a] -= v
            sums[b] += v
            counts[a] -= 1
            counts[b] += 1
        if self.exceptions is not None:
            rows, new = (
                np.concatenate([self.exceptions[0], rows]),
                np.concatenate([self.exceptions[1], new]),
            )
        self.exceptions = (rows, new)

    def step(self, centers: torch.Tensor, move: torch.Tensor) -> int:
        """Nearest clusters of the moved centers; the number of rows that changed cluster."""
        runs = self._nearest(centers)
        if self.exceptions is None:
            # a row keeps its cluster everywhere iff the runs are the same
            same = all(np.array_equal(a, b) for a, b in zip(runs, self.runs))
            moved = 0 if same else -1  # -1: some rows moved (how many is not needed)
        else:
            old = self._row_labels(self.runs)
            self.exceptions = None
            moved = int((old != self._row_labels(runs)).sum())
        self.runs = runs
        return moved

    def final(self, X: torch.Tensor, centers: torch.Tensor, move: torch.Tensor, settled: bool):
        assignments, inertia = label_sorted(self.x, centers[:, 0].numpy())
        return torch.from_numpy(assignments), inertia


class Compiled(_State):
    """s > 1 on the CPU: the compiled Hamerly kernels, rows split among `threads` Python threads."""

    def __init__(self, X: torch.Tensor, centers: torch.Tensor, threads: int):
        self.X = np.ascontiguousarray(X.numpy())
        N, K = self.X.shape[0], centers.shape[0]
        self.a, self.u, self.l = np.empty(N, np.int64), np.empty(N), np.empty(N)
        self.rows, self.new = np.empty(N, np.int64), np.empty(N, np.int64)
        cuts = [N * t // threads for t in range(threads + 1)]
        self.blocks = [(lo, hi) for lo, hi in zip(cuts[:-1], cuts[1:]) if hi > lo]
        self.pool = ThreadPoolExecutor(len(self.blocks) - 1) if len(self.blocks) > 1 else None
        C = centers.numpy()
        self._map(lambda lo, hi: _nb.assign_bounds(self.X, C, lo, hi, self.a, self.u, self.l))
        sums, counts = _nb.sums_counts(self.X, self.a, K)
        self.sums, self.counts = torch.from_numpy(sums), torch.from_numpy(counts)

    def _map(self, fn) -> list:
        """fn(lo, hi) over the row blocks, in parallel threads when there are several (the
        calling thread takes the first block itself: one thread fewer to wake per iteration)."""
        if self.pool is None:
            return [fn(lo, hi) for lo, hi in self.blocks]
        rest = [self.pool.submit(fn, lo, hi) for lo, hi in self.blocks[1:]]
        return [fn(*self.blocks[0]), *(f.result() for f in rest)]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()

    def sq_to_own(self, centers: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(_nb.sq_to_own(self.X, centers.numpy(), self.a))

    def reseed(self, rows: torch.Tensor, new: torch.Tensor) -> None:
        rows, new = rows.numpy().copy(), new.numpy().copy()
        _nb.apply_moves(
            self.X, self.a, rows, new, len(rows), self.sums.numpy(), self.counts.numpy()
        )
        self.u[rows], self.l[rows] = math.inf, 0.0  # exact re-assignment next step

    def step(self, centers: torch.Tensor, move: torch.Tensor) -> int:
        C, delta = centers.numpy(), move.numpy()
        order, gaps = _nb.neighbours(C)
        found = self._map(
            lambda lo, hi: _nb.hamerly_step(
                self.X, C, delta, order, gaps, lo, hi, self.a, self.u, self.l, self.rows, self.new
            )
        )
        # moves applied after the search, block by block in row order: the same sums for any split
        for (lo, _), n in zip(self.blocks, found):
            _nb.apply_moves(
                self.X, self.a, self.rows[lo : lo + n], self.new[lo : lo + n], n,
                self.sums.numpy(), self.counts.numpy(),
            )  # fmt: skip
        return sum(found)

    def final(self, X: torch.Tensor, centers: torch.Tensor, move: torch.Tensor, settled: bool):
        if not settled:
            self.step(centers, move)  # exact: rows the bounds keep are provably nearest
        inertia = float(_nb.sq_to_own(self.X, centers.numpy(), self.a).sum())
        return torch.from_numpy(self.a.copy()), inertia
