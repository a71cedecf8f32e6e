"""k-means over rows (paper §3.3, step 3): the clustering behind row-wise weight sharing.

X is an N×s tensor of rows (float32 by default, float64 accepted); the result is a codebook of K
centers and one index per row. Choices made here, each stated once:

Initializations (`INITS`), all deterministic for a given `seed` (a torch.Generator, never the
global RNG):
- `kmeans++`: D² seeding (Arthur & Vassilvitskii 2007), *greedy* as in scikit-learn: at each step
  2 + ⌊ln K⌋ candidate rows are drawn with probability ∝ D², the one lowering the potential most is
  kept. Centers are data rows.
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
codebook (a final assignment step is run when needed) and `inertia` is recomputed from them in
float64. Each step is exact Lloyd, made cheap by Hamerly's bounds (SDM 2010) for s > 1: a row is
re-assigned only when its bounds say another center may now be closer; the cluster sums (float64)
are updated by the rows that move.

Everything runs on the CPU (results go back to X's device). Torch threads: `kmeans` runs its Lloyd
iterations on `threads` torch threads (1 by default); the seeding (`init_centers`, also when called
by `kmeans`) and `assign` always run on one. Each restores the previous thread count on return.

Empty clusters are re-seeded with the rows farthest from their current center (one row per empty
cluster, farthest first), as scikit-learn does; only rows at a positive distance are used, and a
cluster left empty keeps its previous center (scikit-learn 1.9 puts it on the largest cluster's).
Degenerate data: with fewer distinct rows than K, there are still K centers; the extra ones
duplicate other centers (or rows) and stay empty; nothing loops forever (`max_iter` bounds it).

Exact fast path for s = 1: the nearest center of a scalar is found by sorting the centers and
`searchsorted` on the midpoints between neighbours (O(N log K) instead of O(N K)). Ties between
equal centers go to the lowest center index, as in the general path.

Dominant cluster (the authors' deploy code, option `p`): with p > 0, the int(N·p) rows nearest to
the mean row form cluster 0, whose center is their mean; the other rows are clustered into K − 1
clusters (indexes 1..K−1). See data/reference/wrn16_4_official_sharing.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._checks import check_choice, check_finite, check_float, check_int
from ._threads import torch_threads

INITS = ("kmeans++", "linear", "density", "random")
# distances per chunk (rows × K): 256 kB of float32, stays in L2 (fastest measured)
_CHUNK_ELEMS = 1 << 16


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
    # k-means runs on the CPU (results go back to X's device)
    return check_finite(name, X.detach().cpu())


def _device(X) -> torch.device:
    """Where X lives (results are returned there)."""
    return X.device if isinstance(X, torch.Tensor) else torch.device("cpu")


def _check_centers(centers, K: int, X: torch.Tensor) -> torch.Tensor:
    """Explicit starting centers: a finite (K, s) tensor, cast to X's dtype (a copy)."""
    centers = _check_rows("init_centers", centers)
    if tuple(centers.shape) != (K, X.shape[1]):
        raise ValueError(
            f"init_centers has shape {tuple(centers.shape)}: allowed ({K}, {X.shape[1]}) "
            f"(one center per cluster to fit, row length s)"
        )
    return centers.to(X.dtype).clone()


# ---- assignment ----------------------------------------------------------------------------------


def _nearest_matmul(X: torch.Tensor, codebook: torch.Tensor, second: bool = False):
    """Nearest center of every row (and the 2nd-nearest squared distance if `second`), in chunks."""
    N, K = X.shape[0], codebook.shape[0]
    c_sq, minus_2ct = (codebook * codebook).sum(1), (-2.0 * codebook).T.contiguous()
    assignments = torch.empty(N, dtype=torch.int64)
    sq_dists, sq_second = torch.empty(N, dtype=X.dtype), torch.full((N,), math.inf, dtype=X.dtype)
    step = max(1, _CHUNK_ELEMS // K)
    for i in range(0, N, step):
        # ‖x − c‖² = ‖x‖² − 2x·c + ‖c‖²: the argmin over c needs only ‖c‖² − 2x·c
        part = torch.addmm(c_sq, X[i : i + step], minus_2ct)
        # numpy's argmin is SIMD over a row; torch's CPU argmin/min(dim) is 3-5× slower here
        # (measured)
        np.argmin(part.numpy(), 1, out=assignments[i : i + step].numpy())
        torch.amin(part, 1, out=sq_dists[i : i + step])
        if second and K > 1:
            part.scatter_(1, assignments[i : i + step, None], math.inf)
            torch.amin(part, 1, out=sq_second[i : i + step])
    x_sq = (X * X).sum(1)
    return assignments, sq_dists.add_(x_sq).clamp_(min=0.0), sq_second.add_(x_sq).clamp_(min=0.0)


def _assign_sorted(X: torch.Tensor, codebook: torch.Tensor):
    """s = 1: the nearest center of x is the sorted center whose midpoint interval holds x."""
    x, (values, order) = X[:, 0], torch.sort(codebook[:, 0], stable=True)
    # midpoint m_j = (c_j + c_{j+1}) / 2; x goes to sorted center j = #{m_j < x}
    j = torch.searchsorted((values[1:] + values[:-1]) / 2, x)
    # equal centers: send x to the first of the run, which has the lowest index (stable sort)
    idx = torch.arange(len(values))
    new_run = torch.ones_like(values, dtype=torch.bool)
    new_run[1:] = values[1:] != values[:-1]
    first = torch.cummax(torch.where(new_run, idx, 0), 0).values
    return order[first[j]], (x - values[j]) ** 2


def _assign(X: torch.Tensor, codebook: torch.Tensor):
    """Dispatch: exact sorted path for s = 1, chunked matmul otherwise."""
    return _assign_sorted(X, codebook) if X.shape[1] == 1 else _nearest_matmul(X, codebook)[:2]


@torch_threads(1)
def assign(X, codebook):
    """Index of the nearest center of every row and the squared distance to it.

    Returns (assignments, sq_dists).
    """
    device, X = _device(X), _check_rows("X", X)
    codebook = _check_rows("codebook", codebook)
    if codebook.shape[1] != X.shape[1]:
        raise ValueError(
            f"codebook has rows of length {codebook.shape[1]}: allowed s={X.shape[1]} like X"
        )
    return tuple(t.to(device) for t in _assign(X, codebook.to(X.dtype)))


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


def _sq_dist_to(X: torch.Tensor, x_sq: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(len(centers), N) squared distances ‖c‖² − 2c·x + ‖x‖², clamped at 0."""
    return ((centers * centers).sum(1)[:, None] - 2.0 * centers @ X.T + x_sq).clamp_(min=0.0)


def _init_kmeanspp(X: torch.Tensor, K: int, gen: torch.Generator) -> torch.Tensor:
    """Greedy k-means++ (D² seeding, 2 + ⌊ln K⌋ candidates per step, best potential kept)."""
    N, trials = X.shape[0], 2 + int(math.log(K))
    x_sq = (X * X).sum(1)
    chosen = [int(torch.randint(N, (1,), generator=gen))]
    closest = _sq_dist_to(X, x_sq, X[chosen])[0]
    for _ in range(1, K):
        # draw candidates with P(i) ∝ D(x_i)² by inverting the cumulative sum
        cumulative = torch.cumsum(closest.double(), 0)
        targets = torch.rand(trials, generator=gen, dtype=torch.float64) * cumulative[-1]
        candidates = torch.searchsorted(cumulative, targets).clamp_(max=N - 1)
        # keep the candidate whose addition leaves the smallest potential Σ_i min(D_i², ‖x_i − c‖²)
        new_closest = torch.minimum(closest, _sq_dist_to(X, x_sq, X[candidates]))
        best = int(new_closest.double().sum(1).argmin())
        chosen.append(int(candidates[best]))
        closest = new_closest[best]
    return X[chosen].clone()


@torch_threads(1)
def init_centers(X, num_clusters, init="kmeans++", seed=0) -> torch.Tensor:
    """K initial centers (K, s) of the rows of X by one of `INITS` (see the module docstring)."""
    device, X = _device(X), _check_rows("X", X)
    K = check_int("num_clusters", num_clusters, 1, X.shape[0])
    check_choice("init", init, INITS)
    gen = torch.Generator().manual_seed(check_int("seed", seed, 0))
    if init in ("kmeans++", "random"):
        centers = (_init_kmeanspp if init == "kmeans++" else _init_random)(X, K, gen)
    else:
        centers = (_init_linear if init == "linear" else _init_density)(X, K)
    return centers.to(device)


# ---- Lloyd iterations ----------------------------------------------------------------------------


def _bounds(X: torch.Tensor, centers: torch.Tensor):
    """Nearest center a of every row, with Hamerly's bounds (float64).

    The bounds are u ≥ ‖x − c_a‖ and l ≤ min_{k≠a} ‖x − c_k‖.
    """
    assignments, d1, d2 = _nearest_matmul(X, centers, second=True)
    # rounding of the expansion is below slack = 8·eps·(‖x‖² + max‖c‖²): widen the bounds by it
    slack = (
        8 * torch.finfo(X.dtype).eps * ((X * X).sum(1) + (centers * centers).sum(1).max()).double()
    )
    return assignments, (d1.double() + slack).sqrt(), (d2.double() - slack).clamp(min=0).sqrt()


class _Lloyd:
    """Lloyd's state: assignments, per-cluster sums and counts, and for s > 1 Hamerly's bounds.

    The sums and counts (float64) are updated by the rows that move; the bounds (SDM 2010) let each
    step recompute only the rows that may move.
    """

    def __init__(self, X: torch.Tensor, centers: torch.Tensor):
        self.X, self.sorted, K = X, X.shape[1] == 1, centers.shape[0]
        if self.sorted:
            self.assignments = _assign_sorted(X, centers)[0]
        else:
            self.assignments, self.upper, self.lower = _bounds(X, centers)
        self.sums = torch.zeros(K, X.shape[1], dtype=torch.float64).index_add_(
            0, self.assignments, X.double()
        )
        self.counts = torch.bincount(self.assignments, minlength=K)

    def _move(self, rows: torch.Tensor, new: torch.Tensor) -> None:
        """Move `rows` to clusters `new`, updating the sums and counts of both clusters."""
        old, x = self.assignments.index_select(0, rows), self.X.index_select(0, rows).double()
        self.sums.index_add_(0, old, -x).index_add_(0, new, x)
        ones = torch.ones(len(rows), dtype=torch.int64)
        self.counts.index_add_(0, old, -ones).index_add_(0, new, ones)
        self.assignments.index_copy_(0, rows, new)

    def means(self, centers: torch.Tensor) -> torch.Tensor:
        """New centers c_k = (1/n_k) Σ_{a_i = k} x_i.

        An empty cluster first takes the farthest row.
        """
        empty = torch.nonzero(self.counts == 0)[:, 0]
        if len(empty):
            sq_dists = ((self.X - centers.index_select(0, self.assignments)) ** 2).sum(1)
            far = torch.argsort(sq_dists, descending=True, stable=True)[: len(empty)]
            far = far[sq_dists[far] > 0]  # a row sitting on its center cannot help
            self._move(far, empty[: len(far)])
            if not self.sorted:  # force their exact re-assignment next step
                self.upper[far], self.lower[far] = math.inf, 0.0
        new = (self.sums / self.counts.clamp(min=1)[:, None]).to(self.X.dtype)
        return torch.where((self.counts > 0)[:, None], new, centers)  # still empty: keep the center

    def step(self, centers: torch.Tensor, move: torch.Tensor) -> int:
        """Assign every row to its nearest center; return how many rows moved.

        The centers have moved by δ = `move` (per center) since the last step.
        """
        if self.sorted:
            new = _assign_sorted(self.X, centers)[0]
            rows = torch.nonzero(new != self.assignments)[:, 0]
            self._move(rows, new.index_select(0, rows))
            return len(rows)
        # u grows by δ_a, l shrinks by max δ; x keeps c_a if u ≤ max(l, ½ min_{k≠a} ‖c_a − c_k‖)
        self.upper.add_(move.index_select(0, self.assignments))
        self.lower.sub_(move.max()).clamp_(min=0.0)
        c = centers.double()
        half_gap = 0.5 * torch.cdist(c, c).fill_diagonal_(math.inf).amin(1)
        bound = torch.maximum(self.lower, half_gap.index_select(0, self.assignments))
        rows = torch.nonzero(self.upper > bound)[:, 0]
        x = self.X.index_select(0, rows)
        own = centers.index_select(0, self.assignments.index_select(0, rows))
        tight = ((x - own).double() ** 2).sum(1).sqrt()  # exact u of the candidate rows
        self.upper.index_copy_(0, rows, tight)
        keep = tight > bound.index_select(0, rows)
        rows, (new, upper, lower) = rows[keep], _bounds(x[keep], centers)
        self.upper.index_copy_(0, rows, upper)
        self.lower.index_copy_(0, rows, lower)
        moved = new != self.assignments.index_select(0, rows)
        self._move(rows[moved], new[moved])
        return int(moved.sum())


def _lloyd(X: torch.Tensor, centers: torch.Tensor, max_iter: int, tol: float) -> KMeansResult:
    """Lloyd iterations from `centers` until no row moves, the center shift ≤ tol, or max_iter."""
    # scikit-learn's scale: tol is relative to the mean per-coordinate variance of X
    tol_abs = tol * float(X.double().var(0, unbiased=False).mean())
    state, settled = _Lloyd(X, centers), False
    for n_iter in range(1, max_iter + 1):
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
    assignments = state.assignments if settled else _assign(X, centers)[0]
    return KMeansResult(centers, assignments, _inertia(X, centers, assignments), n_iter)


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


def _with_dominant(X, K, p, init, max_iter, tol, seed, start) -> KMeansResult:
    """Authors' rule: the int(N·p) rows nearest the mean row form cluster 0; K − 1 for the rest."""
    N, size = X.shape[0], int(X.shape[0] * p)
    dominant = torch.zeros(N, dtype=torch.bool)
    dominant[_dominant_rows(X, size)] = True
    rest = _plain(X[~dominant], K - 1, init, max_iter, tol, seed, start)
    codebook = torch.cat([X[dominant].mean(0, keepdim=True), rest.codebook])
    assignments = torch.zeros(N, dtype=torch.int64)
    assignments[~dominant] = rest.assignments + 1
    return KMeansResult(codebook, assignments, _inertia(X, codebook, assignments), rest.n_iter)


def _plain(X, K, init, max_iter, tol, seed, start) -> KMeansResult:
    """k-means of X into K clusters from `start` (K, s) or from `init`."""
    centers = start if start is not None else init_centers(X, K, init, seed)
    return _lloyd(X, centers, max_iter, tol)


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
    when p > 0; `init` and `seed` are then unused. threads: torch threads of the Lloyd iterations
    (restored after; the seeding runs on one); 1 by default, the fastest on a loaded 2-core machine
    (see bench/).
    """
    with torch_threads(check_int("threads", threads, 1, 1024)):
        return _kmeans(X, num_clusters, init, p, max_iter, tol, seed, init_centers)


def _kmeans(X, num_clusters, init, p, max_iter, tol, seed, init_centers) -> KMeansResult:
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
    fit = (
        _with_dominant(X, K, p, init, max_iter, tol, seed, start)
        if p > 0
        else _plain(X, K, init, max_iter, tol, seed, start)
    )
    return KMeansResult(
        fit.codebook.to(device), fit.assignments.to(device), fit.inertia, fit.n_iter
    )
