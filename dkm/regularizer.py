"""Step 2 of the method: the k-means regularizer λ/2·‖W(I − FFᵀ)‖²_F (paper §3.2).

The k-means error of W ∈ R^{s×N} (columns = vectors) under an assignment is
Tr(WᵀW) − Tr(FᵀWᵀWF) with F the normalized indicator (F_ik = 1/√n_k if a(i) = k).
Two choices of F:

- `spectral`: any F with FᵀF = I (Zha et al., NIPS 2001); the optimum is the top-K right
  singular vectors of W (Ky Fan) and the relaxed error is Σ_{i>K} σ_i². Since rank(W) ≤ min(s, N),
  it is identically zero — value and gradient — when K ≥ min(s, N) (kernel rows: s = 3, K ≥ 3).
- `indicator`: the hard k-means indicator, so W F Fᵀ replaces each column by its cluster mean
  and the term is the exact k-means error.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from dkm._checks import check_choice, check_finite, check_float, check_int, check_not_meta
from dkm.accounting import param_of
from dkm.clustering import dominant_p
from dkm.plans import Plan, conv_index, per_conv
from dkm.rows import VIEWS, conv_layers, num_rows, rank_bound, stays_dense, to_matrix

MODES = ("spectral", "indicator")


class DegenerateRelaxationWarning(UserWarning):
    """A spectral F with K ≥ min(s, N): the relaxed term and its gradient are identically zero."""


def _check_W(W: torch.Tensor) -> torch.Tensor:
    if not isinstance(W, torch.Tensor) or W.dim() != 2:
        raise ValueError(
            f"W must be a 2-D tensor s×N (columns are the vectors), got {getattr(W, 'shape', W)!r}"
        )
    return check_finite("W", W)


def _check_assignments(
    assignments: torch.Tensor, n: int, num_clusters: int | None = None
) -> torch.Tensor:
    a = torch.as_tensor(assignments)
    if a.dim() != 1 or a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool:
        raise ValueError(
            f"assignments must be a 1-D integer tensor, "
            f"got dtype {a.dtype} and shape {tuple(a.shape)}"
        )
    if n is not None and a.numel() != n:
        raise ValueError(
            f"assignments has {a.numel()} entries: allowed exactly N={n} (one per column of W)"
        )
    hi = "" if num_clusters is None else f" < num_clusters={num_clusters}"
    if a.numel() and (a.min() < 0 or (num_clusters is not None and a.max() >= num_clusters)):
        raise ValueError(
            f"assignments has values in [{int(a.min())}, {int(a.max())}]: allowed 0 ≤ a{hi}"
        )
    return a.long()


def cluster_means(W: torch.Tensor, assignments: torch.Tensor, num_clusters: int, counts=None):
    """Cluster means μ_k as an s×K matrix (empty clusters: zero column) and the counts n_k
    (`counts`: the n_k of these assignments when already known, else counted here)."""
    sums = W.new_zeros(W.shape[0], num_clusters).index_add(1, assignments, W)
    if counts is None:
        counts = torch.bincount(assignments, minlength=num_clusters)
    return sums / counts.clamp(min=1).to(W.dtype), counts


def kmeans_error(W: torch.Tensor, assignments: torch.Tensor) -> float:
    """Σ_i ‖w_i − μ_{a(i)}‖², the k-means error by its definition (brute force, eq. 1)."""
    W = _check_W(W)
    a = _check_assignments(assignments, W.shape[1])
    error = 0.0
    for k in torch.unique(a):
        cols = W[:, a == k]
        error += float(((cols - cols.mean(dim=1, keepdim=True)) ** 2).sum())
    return error


def indicator_matrix(
    assignments: torch.Tensor, num_clusters: int, dtype=torch.float64
) -> torch.Tensor:
    """F ∈ R^{N×K}, F_ik = 1/√n_k if a(i) = k (empty clusters: zero column), so FᵀF = I on used
    clusters."""
    K = check_int("num_clusters", num_clusters, lo=1)
    a = _check_assignments(assignments, None, K)
    counts = torch.bincount(a, minlength=K).to(dtype)
    F = torch.zeros(a.numel(), K, dtype=dtype)
    F[torch.arange(a.numel()), a] = counts[a].rsqrt()
    return F


@dataclass
class IndicatorF:
    """A normalized indicator F stored as its assignments: W F Fᵀ maps each column to its mean."""

    assignments: torch.Tensor  # (N,) int64
    num_clusters: int
    inertia: float = float("nan")  # k-means error reported by k-means when F was computed
    # n_k, fixed until the next refresh, so counted once here and not at every training step (on
    # CUDA, bincount waits for the device: it reads the largest label back to size its output)
    counts: torch.Tensor = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        self.counts = torch.bincount(self.assignments, minlength=self.num_clusters)

    def dense(self, dtype=torch.float64) -> torch.Tensor:
        """The N×K matrix F (only for small N: tests and figures)."""
        return indicator_matrix(self.assignments, self.num_clusters, dtype)

    def on(self, device) -> tuple:
        """(assignments, counts) on `device`, moved there once and kept (a net moved to the GPU
        after its F was computed copies them at its first step, not at every step)."""
        if self.assignments.device != device:
            self.assignments, self.counts = self.assignments.to(device), self.counts.to(device)
        return self.assignments, self.counts

    def means(self, W: torch.Tensor) -> torch.Tensor:
        """The cluster means of W's columns under these assignments (s×K, empty: zero column)."""
        a, counts = self.on(W.device)
        return cluster_means(W, a, self.num_clusters, counts)[0]

    def project(self, W: torch.Tensor) -> torch.Tensor:
        """W F Fᵀ: column i replaced by μ_{a(i)} (index_add, never an N×K matrix)."""
        means = self.means(W)  # moves the assignments to W's device first
        return means[:, self.assignments]


def _project(W: torch.Tensor, F) -> torch.Tensor:
    if isinstance(F, IndicatorF):
        return F.project(W)
    F = F.to(dtype=W.dtype, device=W.device)
    return (W @ F) @ F.T


def trace_form(W: torch.Tensor, F) -> torch.Tensor:
    """Tr(WᵀW) − Tr(FᵀWᵀWF) = ‖W‖² − ‖WF‖² (eq. 2), without WᵀW (N×N); rounding clamped at 0."""
    if isinstance(F, IndicatorF):
        # ‖WF‖² = Σ_k n_k‖μ_k‖² = ‖W F Fᵀ‖² for an indicator F
        return ((W * W).sum() - (F.project(W) ** 2).sum()).clamp(min=0)
    F = F.to(dtype=W.dtype, device=W.device)
    return ((W * W).sum() - ((W @ F) ** 2).sum()).clamp(min=0)


def residual(W: torch.Tensor, F) -> torch.Tensor:
    """W(I − FFᵀ) = W − (WF)Fᵀ (indicator F: each column minus its cluster mean).

    A spectral F with at least min(s, N) columns spans W's whole row space, so the residual is
    exactly zero, and is returned as zeros (W − WFFᵀ computed in floating point would be rounding
    noise of ~1e-13, with a gradient of ~1e-7 in float32)."""
    if not isinstance(F, IndicatorF) and F.shape[1] >= min(W.shape):
        return torch.zeros_like(W)
    return W - _project(W, F)


def _check_K(W: torch.Tensor, num_clusters) -> int:
    return check_int("num_clusters", num_clusters, lo=1, hi=W.shape[1])


def relaxed_bound(W: torch.Tensor, num_clusters: int) -> float:
    """Σ_{i>K} σ_i², the relaxation's optimum (Ky Fan): ≤ the k-means error of any assignment."""
    K = _check_K(_check_W(W), num_clusters)
    sigma = torch.linalg.svdvals(W.detach())
    return float((sigma[K:] ** 2).sum())


def _randomized_right_vectors(W, rank, oversample, n_iter, seed):
    """Top right singular vectors of W: randomized range finder on Wᵀ (Halko et al. 2011, alg. 4.4,
    5.1)."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    width = min(rank + oversample, *W.shape)
    omega = torch.randn(W.shape[0], width, generator=gen, dtype=W.dtype).to(W.device)
    Q = torch.linalg.qr(W.T @ omega).Q  # N×l basis of range(Wᵀ)
    for _ in range(n_iter):  # power iterations, re-orthonormalized
        Q = torch.linalg.qr(W.T @ torch.linalg.qr(W @ Q).Q).Q
    # W ≈ (WQ)Qᵀ and WQ = U Σ Vbᵀ  ⇒  right singular vectors ≈ Q Vb
    _, _, Vbh = torch.linalg.svd(W @ Q, full_matrices=False)
    return Q @ Vbh[:rank].T


def spectral_F(
    W: torch.Tensor,
    num_clusters: int,
    randomized: bool = False,
    oversample: int = 10,
    n_iter: int = 2,
    seed: int = 0,
) -> torch.Tensor:
    """Top-K right singular vectors of W (N×min(K, s, N), orthonormal columns): the relaxed optimum
    (§3.2).

    W has rank ≤ r = min(s, N), so at most r columns are meaningful: when K ≥ r, F holds the r
    right singular vectors of the thin SVD, spans the whole row space of W, and W(I − FFᵀ) = 0.
    """
    W = _check_W(W).detach()
    K = _check_K(W, num_clusters)
    rank = min(K, *W.shape)
    if randomized:
        oversample = check_int("oversample", oversample, lo=0)
        n_iter = check_int("n_iter", n_iter, lo=0)
        return _randomized_right_vectors(W, rank, oversample, n_iter, check_int("seed", seed))
    _, _, Vh = torch.linalg.svd(W, full_matrices=False)
    return Vh[:rank].T.contiguous()


def indicator_F(
    W: torch.Tensor,
    num_clusters: int,
    seed: int = 0,
    p: float = 0.0,
    init_centers: torch.Tensor | None = None,
) -> IndicatorF:
    """Normalized indicator F of hard k-means (dkm.clustering, where W lives: on a GPU net's
    device) of the columns of W, as assignments."""
    from dkm.clustering import kmeans

    W = _check_W(W).detach()
    K = _check_K(W, num_clusters)
    X = W.T if W.dtype in (torch.float32, torch.float64) else W.T.float()
    result = kmeans(X, K, p=p, seed=seed, init_centers=init_centers)
    return IndicatorF(result.assignments.to(W.device), K, float(result.inertia))


def warm_start(W: torch.Tensor, F: IndicatorF) -> torch.Tensor:
    """Starting centers (K, s) of a refresh: the cluster means of W under the last assignments."""
    # Lloyd from these centers cannot end above the error of the previous assignments (empty: zero
    # center)
    return F.means(W.detach()).T.double()


class _Penalty(torch.autograd.Function):
    """λ/2·Σ_l ‖W_l(I − F_lF_lᵀ)‖² as one autograd node (cheaper than autograd through every op)."""

    @staticmethod
    def forward(ctx, lam, view, Fs, *weights):
        residuals = [residual(to_matrix(weight, view), F) for weight, F in zip(weights, Fs)]
        ctx.lam, ctx.shapes = lam, [weight.shape for weight in weights]
        ctx.save_for_backward(*residuals)
        return lam / 2 * torch.stack([(R * R).sum() for R in residuals]).sum()

    @staticmethod
    def backward(ctx, grad):
        # grad of λ/2‖W(I−FFᵀ)‖² is λ·W(I−FFᵀ)(I−FFᵀ)ᵀ = λ·W(I−FFᵀ): I − FFᵀ is a symmetric
        # projection
        grads = (
            grad * ctx.lam * R.T.reshape(shape) for R, shape in zip(ctx.saved_tensors, ctx.shapes)
        )
        return (None, None, None, *grads)


@dataclass
class _Layer:
    name: str
    index: int  # position among the net's Conv2d layers (as SharedLayer.index)
    module: nn.Conv2d
    num_clusters: int
    p: float = 0.0  # dominant-cluster fraction (indicator F only)
    F: object = None  # spectral: N×r tensor; indicator: IndicatorF


def _select(net: nn.Module, layers):
    """(every Conv2d name, [(conv index, name, module) of the chosen layers])."""
    convs = [(name, m) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"net ({type(net).__name__}) has no nn.Conv2d layer: "
            f"the regularizer acts on conv weights"
        )
    names = [name for name, _ in convs]
    layers = [layers] if isinstance(layers, (str, int)) else layers
    chosen = (
        names
        if layers is None
        else [names[conv_index("layers", k, names, "layers")] for k in layers]
    )
    if not chosen or len(set(chosen)) != len(chosen):
        raise ValueError(
            f"layers={layers!r} must select at least one Conv2d, each once: "
            f"allowed names {names} or indices 0..{len(names) - 1}"
        )
    return names, [(names.index(name), name, convs[names.index(name)][1]) for name in chosen]


def _per_layer(param: str, value, names: list, chosen: list) -> dict:
    """`value` (num_clusters or p) as {name: value} for every chosen layer (a scalar applies to
    all)."""
    if not isinstance(value, dict):
        return {name: value for name in chosen}
    given = {n: v for n, v in zip(names, per_conv(param, value, names)) if v is not None}
    missing, extra = [n for n in chosen if n not in given], [n for n in given if n not in chosen]
    if missing or extra:
        raise ValueError(
            f"{param}={value!r} must give one value for each selected layer {chosen}: "
            f"missing {missing}, not selected {extra}"
        )
    return given


class KMeansRegularizer:
    """λ/2·Σ_layers ‖W(I − FFᵀ)‖²_F on chosen conv layers, F held fixed between refreshes (§3.2).

    Normalization: the squared residuals are SUMMED (not averaged) over every vector of every chosen
    layer, so with indicator F the penalty is exactly λ/2 × (total k-means error); the gradient
    w.r.t. W is λ·W(I − FFᵀ). Call `after_step()` after each optimizer step: F is recomputed from
    the current weights every `refresh_every` steps (spectral: K-truncated SVD; indicator: k-means++
    with seed `seed` + conv index at construction, then Lloyd warm-started from the cluster means of
    the previous assignments, so with p = 0 a refresh never raises a layer's k-means error).
    num_clusters: an int, or {layer name or conv index: K} giving a K for every selected layer;
    layers: None (every Conv2d) or a list of names / conv indices. p (indicator F only; a float or a
    dict like num_clusters): the authors' dominant cluster, the ⌊N·p⌋ vectors nearest the mean
    vector in cluster 0 (dkm.clustering), so F matches the sharing that follows; it is ignored
    where K < 2 or ⌊N·p⌋ = 0, as in dkm.sharing.share. A weight used by several selected convs
    (tied) gets one term, at its first conv (`tied`: name → that conv). A spectral F with
    K ≥ min(s, N) is degenerate (the term is identically zero): a DegenerateRelaxationWarning is
    issued once per such layer.
    """

    def __init__(
        self,
        net,
        lam,
        num_clusters,
        mode="indicator",
        view="rows",
        refresh_every=50,
        layers=None,
        randomized=False,
        seed=0,
        p=0.0,
    ):
        self.lam = check_float("lam", lam, lo=0.0)
        self.mode = check_choice("mode", mode, MODES)
        self.view = check_choice("view", view, VIEWS)
        self.refresh_every = check_int("refresh_every", refresh_every, lo=1)
        self.randomized, self.seed, self.step = bool(randomized), check_int("seed", seed), 0
        check_not_meta(net, "KMeansRegularizer")
        names, chosen = _select(net, layers)
        Ks = _per_layer("num_clusters", num_clusters, names, [name for _, name, _ in chosen])
        ps = _per_layer("p", p, names, [name for _, name, _ in chosen])
        owners = {}  # a weight used by several convs (tied) gets one term, at its first conv
        self.tied = {
            name: owner
            for _, name, m in chosen
            if (owner := owners.setdefault(id(param_of(m)), name)) != name
        }
        self._layers = [
            _Layer(name, i, m, self._check_layer_K(name, m, Ks[name]))
            for i, name, m in chosen
            if name not in self.tied
        ]
        for layer in self._layers:
            layer.p = self._check_layer_p(layer, ps[layer.name])
        self.layer_names = [layer.name for layer in self._layers]
        self.num_clusters = {layer.name: layer.num_clusters for layer in self._layers}
        self._warned = set()
        self.refresh()

    @classmethod
    def from_plan(cls, net, lam, plan: Plan, mode="indicator", **kwargs) -> "KMeansRegularizer":
        """The regularizer of every conv the plan shares (K < N), at the plan's K.

        The plan's p is used by the indicator F only: the spectral F has no dominant cluster (p then
        applies at sharing only)."""
        convs = conv_layers(net)
        if len(convs) != len(plan.K):
            raise ValueError(f"plan has {len(plan.K)} K for the net's {len(convs)} convs")
        chosen = {
            name: (k, q)
            for (name, m), k, q in zip(convs, plan.K, plan.p)
            if not stays_dense(k, num_rows(m.weight.shape))
        }
        p = {name: q if mode == "indicator" else 0.0 for name, (_, q) in chosen.items()}
        Ks = {name: k for name, (k, _) in chosen.items()}
        return cls(net, lam, Ks, mode=mode, layers=list(chosen), p=p, **kwargs)

    def _check_layer_K(self, name, module, K) -> int:
        n = to_matrix(module.weight, self.view).shape[1]
        return check_int(f"num_clusters[{name!r}]", K, lo=1, hi=n)

    def _check_layer_p(self, layer: _Layer, p) -> float:
        p = check_float(f"p[{layer.name!r}]", p, 0.0, 1.0, hi_open=True)
        if p > 0 and self.mode != "indicator":
            raise ValueError(
                f"p[{layer.name!r}]={p}: a dominant cluster needs mode='indicator' (allowed p=0 "
                f"with mode={self.mode!r})"
            )
        return dominant_p(self._matrix(layer).shape[1], layer.num_clusters, p)

    def _matrix(self, layer: _Layer) -> torch.Tensor:
        return to_matrix(layer.module.weight, self.view)

    def penalty(self) -> torch.Tensor:
        """λ/2·Σ_layers ‖W(I − FFᵀ)‖²_F, differentiable w.r.t. the weights (F fixed)."""
        weights = [layer.module.weight for layer in self._layers]
        return _Penalty.apply(self.lam, self.view, [layer.F for layer in self._layers], *weights)

    def after_step(self) -> None:
        """Count one optimizer step; refresh F at every multiple of `refresh_every`."""
        self.step += 1
        if self.step % self.refresh_every == 0:
            self.refresh()

    def refresh(self) -> None:
        """Recompute every layer's F from the current weights (no grad)."""
        for layer in self._layers:
            W = check_finite(f"weight of layer {layer.name!r}", self._matrix(layer).detach())
            seed = self.seed + layer.index
            if self.mode == "indicator":
                start = warm_start(W, layer.F) if isinstance(layer.F, IndicatorF) else None
                if start is not None and layer.p > 0:
                    start = start[
                        1:
                    ]  # cluster 0 (the dominant one) is recomputed, not warm-started
                layer.F = indicator_F(
                    W, layer.num_clusters, seed=seed, p=layer.p, init_centers=start
                )
            else:
                layer.F = spectral_F(W, layer.num_clusters, randomized=self.randomized, seed=seed)
                self._warn_if_degenerate(layer)

    def _warn_if_degenerate(self, layer: _Layer) -> None:
        r = rank_bound(layer.module.weight.shape, self.view)
        if layer.num_clusters < r or layer.name in self._warned:
            return
        self._warned.add(layer.name)
        fix = f"use num_clusters < {r}, another view" if r > 1 else "use another view"
        warnings.warn(
            f"layer {layer.name!r}: spectral F with num_clusters={layer.num_clusters} ≥ rank bound "
            f"min(s, N)={r} (view={self.view!r}): the relaxed k-means term and its gradient are "
            f"identically zero; {fix} or mode='indicator'",
            DegenerateRelaxationWarning,
            stacklevel=4,
        )

    def layer_errors(self) -> dict:
        """{name: ‖W(I − FFᵀ)‖²} at the current weights (indicator F: the exact k-means error)."""
        return {
            layer.name: float((residual(self._matrix(layer).detach(), layer.F) ** 2).sum())
            for layer in self._layers
        }

    def state_dict(self) -> dict:
        """Step counter and each layer's F (spectral: N×r matrix; indicator: its assignments)."""
        layers = {}
        for layer in self._layers:
            F = layer.F
            layers[layer.name] = (
                {
                    "assignments": F.assignments.clone(),
                    "num_clusters": F.num_clusters,
                    "inertia": F.inertia,
                }
                if isinstance(F, IndicatorF)
                else {"F": F.clone()}
            )
        return {"step": self.step, "mode": self.mode, "view": self.view, "layers": layers}

    def load_state_dict(self, state: dict) -> None:
        """Restore the step counter and F saved by `state_dict` (same net layout, mode and view)."""
        for key in ("mode", "view"):
            if state.get(key) != getattr(self, key):
                raise ValueError(
                    f"state[{key!r}]={state.get(key)!r}: allowed only this regularizer's "
                    f"{key}={getattr(self, key)!r}"
                )
        if sorted(state["layers"]) != sorted(self.layer_names):
            raise ValueError(
                f"state has layers {sorted(state['layers'])}: "
                f"allowed exactly {sorted(self.layer_names)}"
            )
        step = check_int("state['step']", state["step"], lo=0)
        new = {
            layer.name: self._load_F(layer, state["layers"][layer.name]) for layer in self._layers
        }
        for layer in self._layers:
            layer.F = new[layer.name]
        self.step = step

    def _load_F(self, layer: _Layer, saved: dict):
        W = self._matrix(layer)
        if self.mode == "indicator":
            K = check_int(
                f"state num_clusters of {layer.name!r}",
                saved["num_clusters"],
                lo=layer.num_clusters,
                hi=layer.num_clusters,
            )
            a = _check_assignments(saved["assignments"], W.shape[1], K).to(W.device)
            return IndicatorF(a, K, float(saved.get("inertia", float("nan"))))
        F = saved["F"]
        expected = (W.shape[1], min(layer.num_clusters, *W.shape))
        if tuple(F.shape) != expected:
            raise ValueError(
                f"state F of layer {layer.name!r} has shape {tuple(F.shape)}: allowed {expected}"
            )
        return F.to(dtype=W.dtype, device=W.device).clone()
