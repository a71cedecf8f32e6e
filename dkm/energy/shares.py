"""How a net is shared, as the energy metric of step 4 reads it (paper §4): K and usage per conv.

A `Share` is read from a plan (`dkm.plans.Plan`), the authors' settings (`dkm.plans`), a
`dkm.sharing.ShareResult`, a dict or JSON file, or the distinct kernel rows of a net's weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from dkm import plans as authors
from dkm._checks import check_int
from dkm.plans import Plan
from dkm.io import read_text
from dkm.rows import to_rows


@dataclass(frozen=True)
class Share:
    """How one conv layer is shared: K centers; exact `assignments` (N,), or else the expected usage
    with a dominant cluster holding a fraction p of the rows and the others used uniformly."""

    num_clusters: int
    p: float = 0.0
    assignments: torch.Tensor | None = None


def plan_shares(layers: list, plan) -> dict:
    """name → Share of a `dkm.plans.Plan` (K, p in conv order) for the convs of `layers` (each
    module once: its 2nd call uses the same sharing)."""
    convs = [layer for layer in layers if layer.kind == "conv" and "#" not in layer.name]
    if len(convs) != len(plan.K):
        raise ValueError(f"the plan has {len(plan.K)} K for the {len(convs)} convs of the net")
    return {c.name: Share(int(k), float(q)) for c, k, q in zip(convs, plan.K, plan.p)}


def authors_shares(layers: list, setting: str) -> dict:
    """name → Share of the authors' `setting` ("45x", "47x", "50x"), by layer role (dkm.plans)."""
    if setting not in authors.SETTINGS:
        raise ValueError(
            f"shared={setting!r} is not allowed: choose one of {', '.join(authors.SETTINGS)}"
        )
    convs = [layer.name for layer in layers if layer.kind == "conv" and "#" not in layer.name]
    return {
        name: Share(k, q) for name, (k, q) in zip(convs, authors.per_role(convs, setting, "shared"))
    }


def auto_shares(net: torch.nn.Module, layers: list) -> dict:
    """name → Share read from the weights: a conv's distinct kernel rows are its centers (K < N)."""
    mods, shares = dict(net.named_modules()), {}
    for layer in layers:
        if layer.kind != "conv" or layer.name not in mods:
            continue
        _, assignments = torch.unique(
            to_rows(mods[layer.name].weight.detach()), dim=0, return_inverse=True
        )
        K = int(assignments.max()) + 1
        if K < layer.kernel_rows:
            shares[layer.name] = Share(K, 0.0, assignments)
    return shares


def _as_share(name: str, v) -> Share:
    if isinstance(v, Share):
        return v
    if hasattr(v, "assignments") and hasattr(v, "codebook"):  # a dkm.sharing.SharedLayer
        return Share(v.num_clusters, float(v.p), v.assignments)
    if isinstance(v, dict):
        return Share(int(v["K"]), float(v.get("p", 0.0)))
    if isinstance(v, (tuple, list)):
        return Share(int(v[0]), float(v[1]) if len(v) > 1 else 0.0)
    return Share(check_int(f"K of {name}", v, 1))


def make_shares(layers: list, shared=None, net=None) -> dict:
    """name → Share from: None; a Plan; a dict name → K | (K, p) | {"K","p"} | SharedLayer; a
    ShareResult; "45x"/"47x"/"50x" (the authors' settings, by role); "auto" (distinct rows of
    `net`);
    or a JSON file of a dict."""
    if shared is None:
        return {}
    if isinstance(shared, Plan):
        return plan_shares(layers, shared)
    if hasattr(shared, "layers") and hasattr(shared, "skipped"):  # a dkm.sharing.ShareResult
        shared = shared.layers
    if isinstance(shared, str):
        return _shares_from_str(layers, shared, net)
    if not isinstance(shared, dict):
        raise TypeError(
            f"shared must be a dict, a ShareResult or a string, got {type(shared).__name__}"
        )
    return {name: _as_share(name, v) for name, v in shared.items()}


def _shares_from_str(layers: list, shared: str, net) -> dict:
    """Shares named by a string: an authors' setting, "auto" or a JSON file."""
    if shared in authors.SETTINGS:
        return authors_shares(layers, shared)
    if shared == "auto":
        if net is None:
            raise ValueError("shared='auto' reads the shared rows from the weights: pass the net")
        return auto_shares(net, layers)
    if not Path(shared).exists():
        raise ValueError(
            f"shared={shared!r} is not allowed: choose 45x, 47x, 50x, auto or an existing JSON file"
        )
    return make_shares(layers, json.loads(read_text(shared)))
