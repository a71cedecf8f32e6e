"""What the notebooks compute, as plain numbers for dkm.plots: relaxation curves, cached pipeline runs, clusters.

The functions read the pipeline's cached runs (dkm.pipeline) or run small computations (k-means of one
layer, a shared copy of a net); the sliders that call them live in dkm.widgets.
"""

from __future__ import annotations

import copy
import json
import time

import numpy as np
import torch

from . import pipeline as pl
from ._checks import check_int
from .kmeans import kmeans
from .models import conv_layers
from .plan import plan_clusters
from .rows import rank_bound, to_rows
from .sharing import share
from .spectral import relaxed_bound


# ---------------------------------------------------------------- 01: the relaxation
def relaxation_curve(W: torch.Tensor, Ks, seed: int = 0, title: str = "") -> dict:
    """k-means error (Lloyd from k-means++) and relaxed optimum Σ_{i>K} σ_i² over K, both divided by ‖W‖² (§3.2)."""
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
def run_history(stage: str, config: dict) -> dict:
    """The history.json of a finished run (steps and epochs records of dkm.train.History)."""
    return json.loads((pl.run_dir(stage, config) / "history.json").read_text())


def retrain_run(
    profile,
    method: str,
    seed: int,
    plan: dict | None = None,
    mode: str | None = None,
    lam: float | None = None,
):
    """(net, config, history) of a re-training run of the pipeline (trained once, then read)."""
    K, p = (
        (None, None) if plan is None else (plan["K"], plan["p"])
    )  # as pl.source_net: the sweep's cache
    net, config = pl.retrain(profile, method, seed, num_clusters=K, mode=mode, lam=lam, p=p)
    return net, config, run_history("retrain", config)


def _canonical(config: dict) -> dict:
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def cached_runs(parent: dict, stage: str) -> list[tuple[dict, object]]:
    """[(config, run dir)] of every finished run of `stage` started from `parent` (a config), in the runs dir."""
    want, found = _canonical(parent), []
    for cfg_path in sorted(pl.runs_dir().glob(f"{stage}-*/config.json")):
        config = json.loads(cfg_path.read_text())
        done = any((cfg_path.parent / name).exists() for name in ("model.pt", "result.json"))
        if config.get("parent") == want and done:
            found.append((config, cfg_path.parent))
    return found


def cached_retrains(profile) -> list[dict]:
    """Every finished Deep k-Means re-training of the profile: {"lam", "mode", "K", "config", "history", "results"}."""
    runs = []
    for config, d in cached_runs(pl.pretrain_config(profile), "retrain"):
        if config["method"] != "dkm" or not (d / "history.json").exists():
            continue
        results = [
            json.loads((e / "result.json").read_text())
            for c, e in cached_runs(config, "evaluate")
            if c["share"] == "kmeans"
        ]
        runs.append(
            {
                "lam": config["lam"],
                "mode": config["mode"],
                "K": max(config["num_clusters"]),
                "config": config,
                "history": json.loads((d / "history.json").read_text()),
                "results": results,
            }
        )
    return sorted(runs, key=lambda r: (r["lam"], r["K"], r["mode"]))


def uniform_plan(net, num_clusters: int) -> dict:
    """One K for every conv, capped at its number of rows (K = N: left dense), no dominant cluster."""
    rows = [m.weight.numel() // m.weight.shape[-1] for _, m in conv_layers(net)]
    K = [min(check_int("num_clusters", num_clusters, 1), n) for n in rows]
    return {"K": K, "p": [0.0] * len(K), "target_cr": None}


def shared_copy(net, plan: dict, seed: int = 0):
    """(a shared deep copy of net, ShareResult): row-wise k-means with the pipeline's seed convention (§3.3)."""
    net = copy.deepcopy(net)
    return net, share(net, num_clusters=plan["K"], p=plan["p"], seed=1000 + 100 * seed)


def layer_kmeans_errors(net, plan: dict, seed: int = 0) -> dict:
    """{conv name: k-means error of its rows} with the plan's K (layers with K ≥ N skipped), seed + conv index."""
    errors = {}
    for i, ((name, conv), K) in enumerate(zip(conv_layers(net), plan["K"])):
        rows = to_rows(conv.weight.detach())
        if K < rows.shape[0]:
            errors[name] = kmeans(rows, K, seed=seed + i).inertia
    return errors


def curves(
    history: dict, start: dict | None = None, final: dict | None = None, layer_errors: bool = True
) -> dict:
    """The numbers of one run for plots.retraining_figure: per log record, layer errors divided by `start`.

    layer_errors=False drops the recorded ‖W(I − FFᵀ)‖² (they are k-means errors only for the indicator F);
    `final` ({layer: k-means error of the final weights}) is drawn as end points, also divided by `start`.
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


def live_retrain(
    profile, lam: float, mode: str = "indicator", seed: int = 0, target_cr: float | None = None
) -> dict:
    """Re-train the profile's net at λ (cached per λ), share it, evaluate: {"curves", "result", "seconds", "K"}."""
    started = time.perf_counter()
    net0, _ = pl.pretrain(profile)
    plan = plan_clusters(net0, target_cr or max(profile.cr_targets), p=profile.p)
    start = layer_kmeans_errors(net0, plan, seed)
    net, config, history = retrain_run(profile, "dkm", seed, plan, mode, lam)
    result = pl.share_and_evaluate(profile, net, config, "kmeans", plan, seed)
    return {
        "curves": curves(history, start),
        "result": result,
        "K": max(plan["K"]),
        "seconds": time.perf_counter() - started,
    }


# ---------------------------------------------------------------- 03: assignments
def layer_clusters(
    weight: torch.Tensor, num_clusters: int, seed: int = 0, max_points: int = 1500
) -> dict:
    """k-means of a conv's kernel rows: a random subset of rows for drawing, every row's distance to its center.

    Distances are divided by the RMS row norm √(mean ‖w‖²), so a net whose weights merely shrink does
    not look "harder" (§3.3).
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
    """The kh×kw kernels of the first `count` filters on input channel 0 (for plots.filters_figure)."""
    return weight.detach()[:count, 0].double().numpy()
