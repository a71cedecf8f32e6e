"""What the figures show, as plain numbers for dkm.viz.plots: relaxation curves, training curves,
each layer's k-means error and the spectral term's residual, the clusters of one layer and its
kernels, the energy metric against its references.
"""

from __future__ import annotations

import csv
import warnings

import numpy as np
import torch

from dkm._checks import check_int
from dkm.clustering import kmeans
from dkm.energy.inventory import layer_inventory
from dkm.energy.references import common
from dkm.energy.references import validation as ev
from dkm.plans import Plan, authors_plan
from dkm.regularizer import DegenerateRelaxationWarning, KMeansRegularizer, relaxed_bound
from dkm.rows import conv_layers, rank_bound, to_rows
from dkm.sharing import layer_errors
from dkm.training.models import wrn16_4


# ---------------------------------------------------------------- 01: the relaxation
def relaxation_curve(W: torch.Tensor, Ks, seed: int = 0, title: str = "") -> dict:
    """k-means error and relaxed optimum Σ_{i>K} σ_i² over K, both divided by ‖W‖² (§3.2).

    The k-means error is Lloyd's from k-means++.
    """
    W = W.detach().double()
    total = float((W * W).sum())
    Ks = [check_int("K", k, 1, W.shape[1]) for k in Ks]
    km = [kmeans(W.T, k, seed=seed).inertia / total for k in Ks]
    relaxed = [relaxed_bound(W, k) / total for k in Ks]
    return {
        "title": title,
        "K": Ks,
        "kmeans": km,
        "relaxed": relaxed,
        "rank": min(W.shape),
        "total": total,
    }


def largest_conv(net) -> tuple[int, str]:
    """(conv index, name) of the conv with the most kernel rows (the first of equals)."""
    convs = conv_layers(net)
    sizes = [m.weight.numel() // m.weight.shape[-1] for _, m in convs]
    i = int(np.argmax(sizes))
    return i, convs[i][0]


# ---------------------------------------------------------------- runs of the pipeline
# ---------------------------------------------------------------- 02: re-training
def layer_kmeans_errors(net, plan, seed: int = 0) -> dict:
    """{conv name: k-means error of its rows} at a Plan's K (or a K per conv); dense layers skipped.

    Conv i is clustered with seed `seed + i` (`dkm.sharing.layer_errors`)."""
    plan = plan if isinstance(plan, Plan) else Plan(plan, [0.0] * len(plan))
    return {name: e["error"] for name, e in layer_errors(net, plan, seed).items()}


def spectral_residuals(net, plan: Plan, lam: float, seed: int = 0) -> tuple[dict, list]:
    """The spectral term where it must vanish (§3.2): ({layer: ‖W(I − FFᵀ)‖² / ‖W‖²} of the spectral
    F in each layer the plan regularizes, at its K raised to min(s, N) where smaller; the layers
    where it was raised, in which the term at the plan's own K is Σ_{i>K} σ_i², not zero)."""
    convs = conv_layers(net)
    rank = [rank_bound(m.weight.shape) for _, m in convs]  # min(s, N) of each conv
    raised = Plan(tuple(max(k, r) for k, r in zip(plan.K, rank)), plan.p)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateRelaxationWarning)  # degenerate on purpose
        spectral = KMeansRegularizer.from_plan(net, lam, raised, mode="spectral", seed=seed)
    modules = dict(convs)
    relative = {name: err / float((modules[name].weight.detach() ** 2).sum())
                for name, err in spectral.layer_errors().items()}  # fmt: skip
    acting = [name for (name, _), k, r in zip(convs, plan.K, rank) if name in relative and k < r]
    return relative, acting


def curves(
    history: dict, start: dict | None = None, final: dict | None = None, layer_errors: bool = True
) -> dict:
    """The numbers of one run for plots.retraining_figure, per log record.

    Layer errors are divided by `start`. layer_errors=False drops the recorded ‖W(I − FFᵀ)‖² (they
    are k-means errors only for the indicator F); `final` ({layer: k-means error of the final
    weights}) is drawn as end points, also divided by `start`.
    """
    steps = history["steps"]
    accuracy = [r.get("train_accuracy") for r in steps]
    out = {
        "step": [r["step"] for r in steps],
        "loss": [r["task_loss"] for r in steps],
        "accuracy": None if None in accuracy else accuracy,
        "layer_errors": None,
        "final_errors": None,
    }
    if layer_errors and start is not None and steps and steps[0].get("layer_errors"):
        out["layer_errors"] = {
            name: [r["layer_errors"][name] / start[name] for r in steps]
            for name in steps[0]["layer_errors"]
            if name in start
        }
    if start is not None and final is not None:
        out["final_errors"] = {name: final[name] / start[name] for name in final if name in start}
    return out


# ---------------------------------------------------------------- 03: assignments
def layer_clusters(
    weight: torch.Tensor, num_clusters: int, seed: int = 0, max_points: int = 1500
) -> dict:
    """k-means of a conv's kernel rows: a random subset of rows, every row's distance to its center.

    The subset is for drawing. Distances are divided by the RMS row norm √(mean ‖w‖²), so a net
    whose weights merely shrink does not look "harder" (§3.3).
    """
    rows = to_rows(weight.detach()).double()
    km = kmeans(rows, num_clusters, seed=seed)
    dist = (rows - km.codebook[km.assignments]).norm(dim=1) / rows.pow(2).sum(1).mean().sqrt()
    keep = torch.randperm(rows.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
    return {
        "rows": rows[keep].numpy(),
        "assignments": km.assignments[keep].numpy(),
        "distances": dist.numpy(),
        "codebook": km.codebook.numpy(),
        "inertia": km.inertia,
        "rank": rank_bound(weight.shape),
    }


def first_kernels(weight: torch.Tensor, count: int = 8) -> np.ndarray:
    """The kh×kw kernels of the first `count` filters on input channel 0 (plots.filters_figure)."""
    return weight.detach()[:count, 0].double().numpy()


# ---------------------------------------------------------------- 05: energy
def wrn16_4_at(setting: str) -> tuple[list, Plan]:
    """WRN-16-4's layers at a 3×32×32 input (shapes only: the meta device) and the authors'
    `setting` on it."""
    net = wrn16_4()
    return layer_inventory(net, (3, 32, 32)).layers, authors_plan(net, setting)


def read_table(path) -> list[dict]:
    """The rows of a committed CSV table, values as strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def energy_validation() -> tuple[list, list]:
    """The energy metric's validation table computed now, and the committed one
    (data/results/energy_validation.csv): the notebook checks that they agree."""
    return ev.validation_table(), read_table(common.RESULTS_DIR / "energy_validation.csv")


def _scaled(x, y) -> np.ndarray:
    """x times the least-squares factor a of y ≈ a·x: x drawn on the scale of y."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    return x * (x @ y) / (x @ x)


def validation_panel(net: str, bits: int, reference: str) -> dict:
    """Per layer of `net`: the reference's energy, our metric and MACs on its scale, both R²."""
    rows = ev.reference_rows(net, bits, reference)
    ref, ours, macs = ([r[k] for r in rows] for k in ("reference", "ours", "macs"))
    return {"names": [r["name"] for r in rows], "reference": ref, "ours": _scaled(ours, ref),
            "macs": _scaled(macs, ref), "r2": common.r2_linear(ours, ref),
            "r2_macs": common.r2_linear(macs, ref)}  # fmt: skip


def validation_panels(bits: int) -> dict:
    """{"<net> vs <reference>": `validation_panel`} for each reference, then each net."""
    return {f"{net} vs {ref}": validation_panel(net, bits, ref)
            for ref in ev.REFERENCES for net in common.NETS}  # fmt: skip
