"""k-means over rows (paper §3.3, step 3): the clustering behind row-wise weight sharing.

X is an N×s tensor of rows (float32 by default, float64 accepted); the result is a codebook of K
centers and one index per row. Choices made here, each stated once:

Initializations (`INITS`), all deterministic for a given `seed` (a torch.Generator, never the
global RNG):
- `kmeans++`: D² seeding (Arthur & Vassilvitskii 2007), *greedy* as in scikit-learn: at each step
  2 + ⌊ln K⌋ candidate rows are drawn with probability ∝ D², the one lowering the potential most is
  kept. Centers are data rows. D² is computed in float64 from the values (on the CPU, in compiled
  code when numba is there, else numpy), so the seeding is the same whatever torch's thread count.
- `linear`: Deep Compression (Han et al., ICLR 2016): K centers evenly spaced over the range of
  the weights. For s > 1 they are evenly spaced along the first principal direction of the rows,
  between the smallest and largest projection (for s = 1 this is exactly linspace(min, max, K)).
- `density`: our reading of Wang Lei, Huawei Chen, Yixuan Wu, "Compressing Deep Convolutional
  Networks Using K-means Based on Weights Distribution" (ICIIP 2017), whose code we do not have:
  centers are *chosen* by the density of the weights — the rows are sorted (s = 1) or sorted by
  their projection on the first principal direction (s > 1) and cut into K equal-mass bins, so dense
  regions get more, narrower bins — and *revised* to the mean of the rows of their bin.
- `random`: K distinct rows (distinct indexes) drawn without replacement.

Lloyd iterations, with scikit-learn's conventions so that `tol` and `max_iter` mean the same
there: stop when no row changes cluster, or when the total squared center shift
Σ_k ‖c_k^new − c_k‖² ≤ tol · mean_j Var(X[:, j]), or after `max_iter` iterations (`n_iter` counts
them as scikit-learn does). The returned assignments are always the nearest centers of the returned
codebook and `inertia` is recomputed from them in float64. Cluster sums are float64; centers are
their means cast to X's dtype.

Nearest means exactly nearest: every path compares distances Σ_j (x_j − c_j)² computed in float64
from the values themselves (never the ‖x‖² − 2x·c + ‖c‖² expansion, whose float32 rounding is of
the order of ‖x‖² and can pick a farther center); ties go to the lowest center index.

Three exact implementations of the same iterations, chosen by where X lives and its row length (the
two CPU paths live in dkm.fast.paths, plugged in through one hook; the third is here):
- s = 1 on the CPU (rows of 1×1 convs, `Sorted`): X is sorted once; an iteration sorts the K centers
  and finds with `searchsorted` where each midpoint between neighbouring centers falls among the
  sorted rows (O(K log N), not O(N K)); counts and sums of the clusters are differences of one
  running float64 sum over the sorted rows (their error, ≤ N·eps64 relative, is far below float32's
  rounding of the centers), kept every 64 rows and continued to each cut
  (dkm.fast.kmeans_numba.block_prefix). A midpoint is computed in float64, then compared as the
  largest value of X's dtype not above it, so x ≤ midpoint is decided exactly for float32 data (a
  row on the midpoint goes to the lower index). The iterations run in one compiled call
  (dkm.fast.kmeans_numba.sorted_lloyd) up to an empty cluster, whose re-seeding the Python loop
  does. The returned assignments (rows in their own order) count the midpoints below each row, a
  pass without a branch on the data (dkm.fast.kmeans_numba.label_sorted).
- s > 1 on the CPU (`Compiled`): compiled kernels (dkm.fast.kmeans_numba: why numba, and the first
  call's cost), with Hamerly's bounds (SDM 2010): a row is re-assigned only when its bounds say
  another center may now be closer. `threads` > 1 splits the rows of each iteration among Python
  threads; the result does not depend on it. Without numba installed, the device path below runs
  instead.
- X on another device (a CUDA net's weights, `_Blocks`): plain Lloyd in torch on that device, the
  distances of every row to every center in float64 each iteration, so a GPU run never waits on the
  CPU; only the seeding runs on the CPU (it is sequential), so the starting centers are the CPU's.
  The same code runs on CPU tensors in the tests, against the CPU paths.
None of them changes torch's process-wide thread count, so k-means may run in several Python threads
at once, beside training.

Empty clusters are re-seeded with the rows farthest from their current center (one row per empty
cluster, farthest first, ties by row index), as scikit-learn does; only rows at a positive distance
are used, and a cluster left empty keeps its previous center (scikit-learn 1.9 puts it on the
largest cluster's). Degenerate data: with fewer distinct rows than K, there are still K centers;
the extra ones duplicate other centers (or rows) and stay empty; nothing loops forever (`max_iter`
bounds it).

Dominant cluster (the authors' deploy code, option `p`): with p > 0, the int(N·p) rows nearest to
the mean row form cluster 0, whose center is their mean; the other rows are clustered into K − 1
clusters (indexes 1..K−1). See data/reference/wrn16_4_official_sharing.json.
"""

from __future__ import annotations

import importlib
import math
from dataclasses import dataclass

import numpy as np
import torch

from dkm._checks import check_choice, check_finite, check_float, check_int


class _Hook:
    """The one hook through which the fast paths plug in: a module of `dkm.fast` imported on first
    use, so that reading the method never imports numba or a wing."""

    def __init__(self, module: str):
        self._module = module

    def __getattr__(self, name):
        return getattr(importlib.import_module(self._module), name)


_nb = _Hook("dkm.fast.kmeans_numba")  # the compiled kernels
_fast = _Hook("dkm.fast.paths")  # the CPU paths built on them (s = 1 sorted; s > 1 compiled)

INITS = ("kmeans++", "linear", "density", "random")
# the device path's distance blocks: rows × K × s float64 values per block (32 MB)
_BLOCK_ELEMS = 1 << 22


@dataclass
class KMeansResult:
    """K centers (codebook), the center index of every row, and the k-means error (inertia)."""

    codebook: torch.Tensor  # (K, s), same dtype as X
    assignments: torch.Tensor  # (N,) int64
    inertia: float  # Σ_i ‖x_i − codebook[assignments_i]‖²
    n_iter: int  # Lloyd iterations done


# ---- argument checks -----------------------------------------------------------------------------


def _check_rows(name: str, X) -> torch.Tensor:
    """X as a finite 2-D float32/float64 tensor (detached).

    Otherwise a TypeError/ValueError naming `name`.
    """
    if not isinstance(X, torch.Tensor):
        X = torch.as_tensor(X)
    if X.dim() != 2 or X.shape[0] < 1 or X.shape[1] < 1:
        raise ValueError(
            f"{name} has shape {tuple(X.shape)}: allowed a 2-D (N, s) tensor with N ≥ 1, s ≥ 1"
        )
    if X.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"{name} has dtype {X.dtype}: allowed torch.float32 or torch.float64")
    return check_finite(name, X.detach())


def _device(X) -> torch.device:
    """Where X lives (results are returned there)."""
    return X.device if isinstance(X, torch.Tensor) else torch.device("cpu")


def _check_centers(centers, K: int, X: torch.Tensor) -> torch.Tensor:
    """Explicit starting centers: a finite (K, s) tensor, cast to X's dtype and device (a copy)."""
    centers = _check_rows("init_centers", centers)
    if tuple(centers.shape) != (K, X.shape[1]):
        raise ValueError(
            f"init_centers has shape {tuple(centers.shape)}: allowed ({K}, {X.shape[1]}) "
            f"(one center per cluster to fit, row length s)"
        )
    return centers.to(X.device, X.dtype).clone()


def _compiled(X: torch.Tensor) -> bool:
    """True where the compiled CPU kernels run (s > 1, X on the CPU, numba installed)."""
    return _nb.AVAILABLE and X.device.type == "cpu" and X.shape[1] > 1


# ---- assignment ----------------------------------------------------------------------------------


def _sq_to(X: torch.Tensor, codebook: torch.Tensor, assignments: torch.Tensor) -> torch.Tensor:
    """‖x_i − c_{a_i}‖² of every row, in float64."""
    return ((X.double() - codebook.double().index_select(0, assignments)) ** 2).sum(1)


def _nearest_blocks(X: torch.Tensor, codebook: torch.Tensor):
    """Any device: nearest center of every row by float64 distances, in blocks of rows."""
    N, K, s = X.shape[0], codebook.shape[0], X.shape[1]
    assignments = torch.empty(N, dtype=torch.int64, device=X.device)
    sq_dists = torch.empty(N, dtype=torch.float64, device=X.device)
    c = codebook.double()
    step = max(1, _BLOCK_ELEMS // (K * s))
    for i in range(0, N, step):
        d = ((X[i : i + step].double()[:, None, :] - c[None]) ** 2).sum(-1)
        torch.min(d, 1, out=(sq_dists[i : i + step], assignments[i : i + step]))
    return assignments, sq_dists


def _assign(X: torch.Tensor, codebook: torch.Tensor):
    """Nearest center and squared distance (float64) of every row, by the path X takes."""
    if X.device.type == "cpu" and X.shape[1] == 1:
        return _fast.assign_sorted(X, codebook)
    return (_fast.nearest_compiled if _compiled(X) else _nearest_blocks)(X, codebook)


def assign(X, codebook):
    """Index of the exactly nearest center of every row and the squared distance to it.

    Returns (assignments, sq_dists); sq_dists in float64. Runs where X lives.
    """
    X = _check_rows("X", X)
    codebook = _check_rows("codebook", codebook)
    if codebook.shape[1] != X.shape[1]:
        raise ValueError(
            f"codebook has rows of length {codebook.shape[1]}: allowed s={X.shape[1]} like X"
        )
    if codebook.dtype != X.dtype:  # compare in the wider dtype: the nearest of the codebook given
        X, codebook = X.double(), codebook.double()
    return _assign(X.contiguous(), codebook.to(X.device).contiguous())


def _inertia(X: torch.Tensor, codebook: torch.Tensor, assignments: torch.Tensor) -> float:
    """Σ_i ‖x_i − c_{a_i}‖², computed in float64."""
    return float(((X.double() - codebook.double().index_select(0, assignments)) ** 2).sum())


# ---- initializations -----------------------------------------------------------------------------


def _principal(X: torch.Tensor):
    """Mean row μ, first principal direction v (sign fixed) and projections t_i = (x_i − μ)·v."""
    if X.shape[1] == 1:
        return torch.zeros_like(X[0]), torch.ones_like(X[0]), X[:, 0]
    mean = X.mean(0)
    centered = X - mean
    # v = top eigenvector of the covariance XᶜᵀXᶜ (s×s, cheap), largest |component| made positive
    v = torch.linalg.eigh((centered.T @ centered).double())[1][:, -1]
    v = (v * torch.sign(v[v.abs().argmax()])).to(X.dtype)
    return mean, v, centered @ v


def _init_linear(X: torch.Tensor, K: int) -> torch.Tensor:
    """Han et al. 2016: K centers evenly spaced between the smallest and largest projection."""
    mean, v, t = _principal(X)
    steps = torch.linspace(float(t.min()), float(t.max()), K, dtype=X.dtype)
    return mean + steps[:, None] * v


def _init_density(X: torch.Tensor, K: int) -> torch.Tensor:
    """Wang et al. 2017 (our reading): means of K equal-mass bins of the rows sorted along v."""
    N = X.shape[0]
    order = torch.sort(_principal(X)[2], stable=True).indices
    # the row of rank r falls in bin ⌊r·K/N⌋: every bin holds ⌊N/K⌋ or ⌈N/K⌉ rows
    bins = torch.empty(N, dtype=torch.int64)
    bins[order] = torch.arange(N) * K // N
    sums = torch.zeros(K, X.shape[1], dtype=X.dtype).index_add_(0, bins, X)
    return sums / torch.bincount(bins, minlength=K).to(X.dtype)[:, None]


def _init_random(X: torch.Tensor, K: int, gen: torch.Generator) -> torch.Tensor:
    """K rows at distinct indexes, drawn without replacement."""
    return X[torch.randperm(X.shape[0], generator=gen)[:K]].clone()


def _min_sq(x: np.ndarray, row: np.ndarray, closest: np.ndarray):
    """k-means++: (min(closest_i, ‖x_i − row‖²) in float64, its sum)."""
    if _nb.AVAILABLE:
        return _nb.seed_min_sq(x, row, closest)
    out = np.minimum(closest, ((x.astype(np.float64) - row.astype(np.float64)) ** 2).sum(1))
    return out, float(out.sum())


def _init_kmeanspp(X: torch.Tensor, K: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (D² seeding, 2 + ⌊ln K⌋ candidates per step, best potential kept)."""
    N, trials, x = X.shape[0], 2 + int(math.log(K)), np.ascontiguousarray(X.numpy())
    chosen = [int(torch.randint(N, (1,), generator=gen))]
    closest = _min_sq(x, x[chosen[0]], np.full(N, math.inf))[0]
    for _ in range(1, K):
        # draw candidates with P(i) ∝ D(x_i)² by inverting the cumulative sum
        cumulative = np.cumsum(closest)
        targets = torch.rand(trials, generator=gen, dtype=torch.float64).numpy() * cumulative[-1]
        candidates = np.minimum(np.searchsorted(cumulative, targets), N - 1)
        # keep the candidate whose addition leaves the smallest potential Σ_i min(D_i², ‖x_i − c‖²)
        best, best_total = None, math.inf
        for c in candidates:
            new_closest, total = _min_sq(x, x[c], closest)
            if total < best_total:
                best, best_total, best_closest = int(c), total, new_closest
        if best is None:  # every potential is 0 (all rows equal): any candidate
            best, best_closest = int(candidates[0]), closest
        chosen.append(best)
        closest = best_closest
    return X[chosen].clone()


def init_centers(X, num_clusters, init="kmeans++", seed=0) -> torch.Tensor:
    """K initial centers (K, s) of the rows of X by one of `INITS` (see the module docstring).

    Computed on the CPU; returned on X's device."""
    device, X = _device(X), _check_rows("X", X).cpu()
    K = check_int("num_clusters", num_clusters, 1, X.shape[0])
    check_choice("init", init, INITS)
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0))
    if init in ("kmeans++", "random"):
        centers = (_init_kmeanspp if init == "kmeans++" else _init_random)(X, K, gen)
    else:
        centers = (_init_linear if init == "linear" else _init_density)(X, K)
    return centers.to(device)


# ---- Lloyd iterations ----------------------------------------------------------------------------


class _State:
    """Lloyd's state over X: per-cluster float64 sums (K, s) and int64 counts (K,), as torch
    tensors (on the CPU paths, views of the kernels' numpy arrays).

    Each path says how rows are assigned (`step`), moved to empty clusters (`reseed`) and how far
    each row is from its own center (`sq_to_own`); the means are the same for all."""

    sums: torch.Tensor
    counts: torch.Tensor

    def mean_variance(self, X: torch.Tensor) -> float:
        """mean_j Var(X[:, j]) (population variance), in float64."""
        if X.device.type == "cpu":  # numpy: single-threaded, unhurt by a loaded machine
            return float(np.var(X.numpy(), axis=0, dtype=np.float64).mean())
        return float(X.double().var(0, unbiased=False).mean())

    def iterate(self, centers: torch.Tensor, max_iter: int, tol_abs: float):
        """Iterations run ahead of _lloyd's loop: (centers, iterations done, done, settled). None
        here; the sorted path runs them compiled."""
        return centers, 0, False, False

    def close(self) -> None:
        """Release what the path holds (the compiled path's threads)."""

    def means(self, centers: torch.Tensor) -> torch.Tensor:
        """New centers c_k = (1/n_k) Σ_{a_i = k} x_i; an empty cluster first takes the farthest."""
        if self.counts.device.type == "cpu" and bool(self.counts.numpy().all()):
            # the common case in numpy (the same float64 division and cast; a fraction of torch's
            # per-call cost on K values, which adds up over the iterations of a small k-means)
            dtype = centers.numpy().dtype
            return torch.from_numpy(
                (self.sums.numpy() / self.counts.numpy()[:, None]).astype(dtype)
            )
        empty = torch.nonzero(self.counts == 0)[:, 0]
        if len(empty):
            sq = self.sq_to_own(centers)
            far = torch.argsort(sq, descending=True, stable=True)[: len(empty)]
            far = far[sq[far] > 0]  # a row sitting on its center cannot help
            self.reseed(far, empty[: len(far)])
        new = (self.sums / self.counts.clamp(min=1)[:, None]).to(centers.dtype)
        return torch.where((self.counts > 0)[:, None], new, centers)  # still empty: keep the center


def _cluster_sums(X: torch.Tensor, assignments: torch.Tensor, K: int):
    """Float64 sums (K, s) and counts (K,) of the rows of each cluster, deterministic on every
    device: CUDA's index_add_ adds floats in a racy order, so there the sums are one-hot matrix
    products (blocks of rows, in order)."""
    counts = torch.bincount(assignments, minlength=K)
    if X.device.type == "cpu":
        sums = torch.zeros(K, X.shape[1], dtype=torch.float64).index_add_(
            0, assignments, X.double()
        )
        return sums, counts
    sums = torch.zeros(K, X.shape[1], dtype=torch.float64, device=X.device)
    step = max(1, _BLOCK_ELEMS // K)
    for i in range(0, X.shape[0], step):
        onehot = torch.nn.functional.one_hot(assignments[i : i + step], K).double()
        sums += onehot.T @ X[i : i + step].double()
    return sums, counts


class _Blocks(_State):
    """Any device (CUDA, or the CPU without numba): every distance each iteration, in torch; the
    cluster sums recomputed from the assignments (deterministic: no atomic float adds)."""

    def __init__(self, X: torch.Tensor, centers: torch.Tensor):
        self.X, self.K = X, centers.shape[0]
        self.assignments = _nearest_blocks(X, centers)[0]
        self.sums, self.counts = _cluster_sums(X, self.assignments, self.K)

    def reseed(self, rows: torch.Tensor, new: torch.Tensor) -> None:
        """Move `rows` to clusters `new`; the sums and counts follow."""
        self.assignments[rows] = new
        self.sums, self.counts = _cluster_sums(self.X, self.assignments, self.K)

    def sq_to_own(self, centers: torch.Tensor) -> torch.Tensor:
        return _sq_to(self.X, centers, self.assignments)

    def step(self, centers: torch.Tensor, move: torch.Tensor) -> int:
        new = _nearest_blocks(self.X, centers)[0]
        moved = int((new != self.assignments).sum())
        if moved:
            self.assignments = new
            self.sums, self.counts = _cluster_sums(self.X, new, self.K)
        return moved

    def final(self, X: torch.Tensor, centers: torch.Tensor, move: torch.Tensor, settled: bool):
        return (self.assignments if settled else _nearest_blocks(X, centers)[0]), None


def _state(X: torch.Tensor, centers: torch.Tensor, threads: int) -> _State:
    """The path X takes (see the module docstring)."""
    if X.device.type == "cpu" and X.shape[1] == 1:
        return _fast.Sorted(X, centers)
    return _fast.Compiled(X, centers, threads) if _compiled(X) else _Blocks(X, centers)


def _lloyd(X, centers, max_iter: int, tol: float, threads: int = 1) -> KMeansResult:
    """Lloyd iterations from `centers` until no row moves, the center shift ≤ tol, or max_iter."""
    state = _state(X, centers, threads)
    # scikit-learn's scale: tol is relative to the mean per-coordinate variance of X
    tol_abs = tol * state.mean_variance(X)
    try:
        # the sorted path runs the iterations compiled, up to an empty cluster (if any)
        centers, n_iter, done, settled = state.iterate(centers, max_iter, tol_abs)
        move = None
        while not done:
            n_iter += 1
            new = state.means(centers)
            # per-center shift δ_k = ‖c_k^new − c_k‖; the criterion is Σ_k δ_k²
            move = ((new - centers).double() ** 2).sum(1).sqrt()
            centers = new
            if float((move**2).sum()) <= tol_abs or n_iter == max_iter:
                break
            # no row moved: the centers are the means of their nearest rows (the next means are the
            # same)
            if state.step(centers, move) == 0:
                settled = True
                n_iter += 1
                break
        assignments, inertia = state.final(X, centers, move, settled)
    finally:
        state.close()
    if inertia is None:
        inertia = _inertia(X, centers, assignments)
    return KMeansResult(centers, assignments, inertia, n_iter)


def _dominant_rows(X: torch.Tensor, size: int) -> torch.Tensor:
    """Indexes of the `size` rows nearest to the mean row (ties: lower row index first)."""
    dist = ((X - X.mean(0)) ** 2).sum(1)
    return torch.sort(dist, stable=True).indices[:size]


def dominant_p(N: int, K: int, p) -> float:
    """p itself where a dominant cluster can exist, else 0.0 (the plain k-means case).

    A dominant cluster can exist when K ≥ 2 and int(N·p) ≥ 1.
    """
    p = float(p or 0.0)
    return p if K >= 2 and int(N * p) >= 1 else 0.0


def _check_dominant(N: int, K: int, p: float) -> None:
    """p > 0 needs K ≥ 2, at least one dominant row and K − 1 rows left for the other clusters."""
    size = int(N * p)
    if K < 2:
        raise ValueError(
            f"num_clusters={K} is out of range with p={p}: allowed num_clusters ≥ 2 when p > 0"
        )
    if size < 1 or N - size < K - 1:
        raise ValueError(
            f"p={p} puts int(N·p)={size} of N={N} rows in the dominant cluster: allowed "
            f"1 ≤ int(N·p) ≤ N − (num_clusters − 1) = {N - K + 1}"
        )


def _with_dominant(X, K, p, init, max_iter, tol, seed, start, threads=1) -> KMeansResult:
    """Authors' rule: the int(N·p) rows nearest the mean row form cluster 0; K − 1 for the rest."""
    N, size = X.shape[0], int(X.shape[0] * p)
    dominant = torch.zeros(N, dtype=torch.bool, device=X.device)
    dominant[_dominant_rows(X, size)] = True
    rest = _plain(X[~dominant], K - 1, init, max_iter, tol, seed, start, threads)
    codebook = torch.cat([X[dominant].mean(0, keepdim=True), rest.codebook])
    assignments = torch.zeros(N, dtype=torch.int64, device=X.device)
    assignments[~dominant] = rest.assignments + 1
    return KMeansResult(codebook, assignments, _inertia(X, codebook, assignments), rest.n_iter)


def _plain(X, K, init, max_iter, tol, seed, start, threads=1) -> KMeansResult:
    """k-means of X into K clusters from `start` (K, s) or from `init`."""
    centers = start if start is not None else init_centers(X, K, init, seed)
    return _lloyd(X, centers.to(X.device), max_iter, tol, threads)


def kmeans(
    X,
    num_clusters,
    init="kmeans++",
    p=0.0,
    max_iter=100,
    tol=1e-4,
    seed=0,
    init_centers=None,
    threads=1,
) -> KMeansResult:
    """k-means of the N rows of X into K = num_clusters clusters (paper §3.3).

    p: the fraction of rows in an optional dominant cluster (see the module docstring).
    init_centers: explicit starting centers, (K, s) — or (K − 1, s) for the non-dominant clusters
    when p > 0; `init` and `seed` are then unused. threads: Python threads sharing the rows of each
    iteration of the compiled path (s > 1 on the CPU); the result does not depend on it, and torch's
    thread count is never touched. Runs where X lives (see the module docstring).
    """
    threads = check_int("threads", threads, 1, 1024)
    device, X = _device(X), _check_rows("X", X)
    K = check_int("num_clusters", num_clusters, 1, X.shape[0])
    check_choice("init", init, INITS)
    p = check_float("p", p, 0.0, 1.0, hi_open=True)
    max_iter = check_int("max_iter", max_iter, 1)
    tol = check_float("tol", tol, 0.0)
    seed = check_int("seed", seed, 0)
    if p > 0:
        _check_dominant(X.shape[0], K, p)
    start = None if init_centers is None else _check_centers(init_centers, K - (p > 0), X)
    X = X.contiguous()
    fit = (
        _with_dominant(X, K, p, init, max_iter, tol, seed, start, threads)
        if p > 0
        else _plain(X, K, init, max_iter, tol, seed, start, threads)
    )
    return KMeansResult(
        fit.codebook.to(device), fit.assignments.to(device), fit.inertia, fit.n_iter
    )
