"""Step 3 of the method: row-wise k-means weight sharing of every conv layer (paper §3.3)."""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import parametrize

from dkm._checks import check_choice, check_float, check_int, check_not_meta
from dkm.accounting import param_of
from dkm.clustering import dominant_p, kmeans
from dkm.plans import Plan, conv_index, per_conv
from dkm.rows import conv_layers, stays_dense, to_rows


@dataclass
class SharedLayer:
    """One shared conv layer: W is replaced by codebook[assignments] (rows of length s)."""

    name: str  # module name in the net, e.g. "block1.layer.0.conv1"
    index: int  # position among the net's Conv2d layers (0-based, model order)
    shape: tuple  # conv weight shape (C_out, C_in/groups, kh, kw)
    codebook: torch.Tensor  # (K, s) float32 centers
    assignments: torch.Tensor  # (N,) int64, N = C_out·C_in/groups·kh
    p: float = 0.0  # dominant-cluster fraction used (0: none)
    bias_numel: int = 0  # size of the conv bias (kept uncompressed), 0 if none

    @property
    def num_clusters(self) -> int:
        return int(self.codebook.shape[0])

    @property
    def num_rows(self) -> int:
        return int(self.assignments.numel())

    @property
    def row_length(self) -> int:
        return int(self.codebook.shape[1])

    def counts(self) -> torch.Tensor:
        """How many rows use each center (length K)."""
        return torch.bincount(self.assignments, minlength=self.num_clusters)

    def weight(self) -> torch.Tensor:
        """The shared weight codebook[assignments] folded back to `shape`."""
        return self.codebook[self.assignments].reshape(self.shape)


@dataclass
class ShareResult:
    """Every shared layer by module name, plus the conv layers skipped with the reason."""

    layers: dict = field(default_factory=dict)  # name -> SharedLayer
    skipped: dict = field(default_factory=dict)  # name -> reason (str)


def sharing_seed(seed: int = 0) -> int:
    """Base seed of sharing for run seed `seed`: layer i gets 1000 + 100·seed + i.

    The authors cluster layer i with seed 1000 + i (seed 0); each run seed shifts it by 100."""
    return 1000 + 100 * check_int("seed", seed, 0)


def _skip_reason(name: str, conv: nn.Conv2d, k, n_rows: int, explicit: bool) -> str | None:
    """Why this conv is not shared (None: share it); an explicit K > N is left to the K check."""
    if parametrize.is_parametrized(conv, "weight"):
        raise ValueError(
            f"conv {name!r} has a parametrized weight: share writes the weight itself; remove "
            f"the parametrization first (torch.nn.utils.parametrize.remove_parametrizations, "
            f"or untie_centers for tied centers)"
        )
    if k is None:
        return "no K given for this layer"
    if not torch.isfinite(conv.weight).all():
        raise ValueError(
            f"the weight of conv {name!r} has non-finite values: allowed finite weights only"
        )
    if stays_dense(k, n_rows) and not (explicit and k > n_rows):
        return f"K={k} ≥ the number of rows N={n_rows}: left dense (the authors' rule)"
    return None


def share(
    net: nn.Module,
    num_clusters,
    p=0.0,
    init: str = "kmeans++",
    exclude=(),
    kmeans_seed: int = 1000,
    max_iter: int = 100,
    tol: float = 1e-4,
) -> ShareResult:
    """Row-wise k-means sharing of every Conv2d (paper §3.3): W ← codebook[assignments], in place.

    num_clusters: a `dkm.plans.Plan` (its K and p), or K as one int for all convs, a list in conv
    order or a dict by conv name/index (then p likewise). Layer i is clustered with seed
    `kmeans_seed + i` (the authors: 1000 + layer index; the pipeline: `sharing_seed(run seed) + i`).
    """
    if isinstance(num_clusters, Plan):
        num_clusters, p = list(num_clusters.K), list(num_clusters.p)
    if num_clusters is None:
        raise ValueError("num_clusters is required: a Plan, an int, a list per conv or a dict")
    check_not_meta(net, "share")
    convs = conv_layers(net)
    names = [n for n, _ in convs]
    explicit = not isinstance(num_clusters, int)
    ks = per_conv("num_clusters", num_clusters, names)
    ps = per_conv("p", p, names, default=0.0)
    excluded = {conv_index("exclude", e, names) for e in exclude}
    result, owners = ShareResult(), {}
    for i, ((name, conv), k, p_i) in enumerate(zip(convs, ks, ps)):
        rows = to_rows(conv.weight.detach())
        owner = owners.setdefault(id(param_of(conv)), name)
        reason = _why_not(name, conv, k, rows.shape[0], explicit, owner, i in excluded)
        if reason:
            result.skipped[name] = reason
            continue
        result.layers[name] = _share_layer(
            name, i, conv, rows, k, p_i, init, kmeans_seed + i, max_iter, tol
        )
    _warn_if_nothing_shared(result, num_clusters)
    return result


def _why_not(name, conv, k, n_rows, explicit, owner, excluded) -> str | None:
    """Why `share` leaves a conv as it is (None: it is shared)."""
    if owner != name:
        return f"ties its weight to {owner!r}: shared once, there"
    if excluded:
        return "excluded by the caller"
    return _skip_reason(name, conv, k, n_rows, explicit)


def _warn_if_nothing_shared(result: ShareResult, num_clusters) -> None:
    """A UserWarning naming the layers when `share` shares no conv at all."""
    if not result.layers and result.skipped:
        names = ", ".join(result.skipped)
        warnings.warn(
            f"share(num_clusters={num_clusters!r}) shares no conv: {names} left dense "
            f"(K ≥ the number of rows N, or excluded)",
            UserWarning,
            stacklevel=3,
        )


def _share_layer(name, i, conv, rows, k, p, init, seed, max_iter, tol) -> SharedLayer:
    """k-means of one conv's kernel rows; its weight becomes codebook[assignments]."""
    check_int(f"num_clusters[{name}]", k, 1, rows.shape[0])
    check_float(f"p[{name}]", p or 0.0, 0.0, 1.0, hi_open=True)
    p = dominant_p(rows.shape[0], k, p)  # no room for a dominant cluster: plain k-means
    km = kmeans(rows, k, init=init, p=p, max_iter=max_iter, tol=tol, seed=seed)
    bias_numel = 0 if conv.bias is None else conv.bias.numel()
    layer = SharedLayer(
        name, i, tuple(conv.weight.shape), km.codebook, km.assignments, p, bias_numel
    )
    with torch.no_grad():
        conv.weight.copy_(layer.weight())
    return layer


def layer_errors(net: nn.Module, plan: Plan, kmeans_seed: int = 1000) -> dict:
    """{conv name: {"error", "weight_sq"}}: the k-means error of its kernel rows at the plan's K
    (k-means++, conv i with seed `kmeans_seed + i`, no dominant cluster) and ‖W‖²; dense convs
    left out.

    The relative error error / weight_sq does not change when a conv's weight is scaled; the
    absolute one, which the regularizer's penalty is, does."""
    out = {}
    for i, ((name, conv), k) in enumerate(zip(conv_layers(net), plan.K)):
        rows = to_rows(conv.weight.detach())
        if not stays_dense(k, rows.shape[0]):
            error = kmeans(rows, k, seed=kmeans_seed + i).inertia
            out[name] = {"error": float(error), "weight_sq": float(rows.double().square().sum())}
    return out


def shared_copy(net: nn.Module, plan: Plan, seed: int = 0, init: str = "kmeans++"):
    """(a shared deep copy of `net`, its ShareResult) with the pipeline's seeds (`sharing_seed`)."""
    net = copy.deepcopy(net)
    return net, share(net, plan, init=init, kmeans_seed=sharing_seed(seed))


# ---- Deep Compression style fine-tuning of the centers, weights kept tied ---------------------

CENTER_GRADIENTS = ("mean", "sum")


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by `scale` (one factor per center)."""

    @staticmethod
    def forward(ctx, codebook, scale):
        ctx.save_for_backward(scale)
        return codebook.view_as(codebook)

    @staticmethod
    def backward(ctx, grad):
        (scale,) = ctx.saved_tensors
        return grad * scale, None


class TiedWeight(nn.Module):
    """Parametrization weight = codebook[assignments]; a center's gradient is the sum or the mean
    over its cluster."""

    def __init__(
        self,
        assignments: torch.Tensor,
        shape: tuple,
        gradient: str = "sum",
        num_clusters: int | None = None,
    ):
        super().__init__()
        check_choice("gradient", gradient, CENTER_GRADIENTS)
        self.register_buffer("assignments", assignments.clone())
        self.shape = tuple(shape)
        self.gradient = gradient
        k = num_clusters or (int(assignments.max()) + 1 if assignments.numel() else 0)
        self.register_buffer(
            "inverse_counts",
            1.0 / torch.bincount(assignments, minlength=k).clamp_min(1).unsqueeze(1),
        )

    def forward(self, codebook):
        # ∂L/∂c_k = Σ_{i: a(i)=k} ∂L/∂w_i  (Han et al. 2016, eq. 3) — the backward of this gather.
        # "mean" divides it by n_k, the size of cluster k: SGD then moves a center by a weight's
        # step (lr·mean gradient) instead of n_k times it, i.e. Han et al.'s sum with a step lr/n_k
        # per center.
        if self.gradient == "mean":
            codebook = _ScaleGrad.apply(codebook, self.inverse_counts.to(codebook))
        # index_select, not codebook[assignments]: the latter's backward (index_put_ accumulate)
        # adds with atomics on a multi-threaded CPU, so fine-tuning was not reproducible; index_add_
        # sums in index order
        return codebook.index_select(0, self.assignments).reshape(self.shape)

    def right_inverse(self, weight):
        # the least-squares codebook of a weight: each center is the mean of its rows
        rows = to_rows(weight)
        sums = torch.zeros(len(self.inverse_counts), rows.shape[1], dtype=rows.dtype).index_add_(
            0, self.assignments, rows
        )
        return sums * self.inverse_counts.to(sums)


def tie_centers(net: nn.Module, result: ShareResult, gradient: str = "sum") -> list[nn.Parameter]:
    """Make each shared conv's weight a function of its codebook; return the codebooks to optimize.

    gradient="sum" is Han et al.'s rule (a center gets the sum of its weights' gradients); "mean"
    divides it by the cluster size, so that one learning rate suits the codebooks and the rest of
    the net."""
    modules = dict(net.named_modules())
    owners = {id(modules[name].weight): name for name in result.layers}
    for other, m in modules.items():  # a conv that uses a shared conv's weight (tied weights)
        if isinstance(m, nn.Conv2d) and other not in result.layers and id(m.weight) in owners:
            raise ValueError(
                f"conv {other!r} uses the weight of shared conv {owners[id(m.weight)]!r}: "
                f"fine-tuning tied centers of a weight several convs use is not supported"
            )
    params = []
    for name, layer in result.layers.items():
        conv = modules[name]
        tied = TiedWeight(
            layer.assignments, layer.shape, gradient=gradient, num_clusters=layer.codebook.shape[0]
        )
        parametrize.register_parametrization(conv, "weight", tied)
        with (
            torch.no_grad()
        ):  # keep the exact codebook (unused centers included), not the recomputed means
            conv.parametrizations.weight.original.copy_(
                layer.codebook.to(conv.parametrizations.weight.original)
            )
        params.append(conv.parametrizations.weight.original)
    return params


def untie_centers(net: nn.Module, result: ShareResult) -> None:
    """Store the fine-tuned codebooks in `result`; turn the weights back into plain parameters."""
    modules = dict(net.named_modules())
    for name, layer in result.layers.items():
        conv = modules[name]
        layer.codebook = conv.parametrizations.weight.original.detach().clone()
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
