"""The authors' released settings (45×, 47×, 50×), keyed by layer role so they fit every WRN-16-k.

Their deploy script shares WRN-16-4 with a K and a dominant-cluster fraction p per conv
(data/reference/wrn16_4_official_sharing.json). A conv's *role* is its place in the Wide ResNet:
the first conv, then in each stage s and block b `conv1`, `conv2` and the 1×1 `shortcut` — exactly
the module names of `dkm.models.WideResNet` ("conv1", "stage1.0.conv1", …, "stage3.1.conv2").
So the settings apply by role to WRN-16-1/2/4 (and WRN-10-k, whose convs are a subset of the
roles), whatever the width; a role the net lacks (WRN-16-1 has no stage-1 shortcut) is unused.
Where a role's K ≥ the layer's N the layer stays dense (the authors' conv1, `dkm.rows.stays_dense`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from ._checks import check_choice
from .models import conv_layers
from .plan import Plan, conv_rows, estimated_cr, layer_specs

SETTINGS = ("45x", "47x", "50x")
REFERENCE_FILE = "wrn16_4_official_sharing.json"
# the reference's layer order: conv1, then per stage block 0 (conv1, conv2, shortcut), block 1
ROLES = ("conv1",) + tuple(
    f"stage{s}.{b}.{conv}"
    for s in (1, 2, 3)
    for b, convs in ((0, ("conv1", "conv2", "shortcut")), (1, ("conv1", "conv2")))
    for conv in convs
)


def _reference_path() -> Path:
    """The reference JSON: data/reference/ of the repo, else the copy packaged in dkm/reference/."""
    here = Path(__file__).resolve()
    candidates = [
        here.parents[1] / "data" / "reference" / REFERENCE_FILE,
        here.parent / "reference" / REFERENCE_FILE,
    ]
    for path in filter(Path.is_file, candidates):
        return path
    raise FileNotFoundError(f"{REFERENCE_FILE} not found in {[str(c.parent) for c in candidates]}")


def load_reference() -> dict:
    """The authors' WRN-16-4 settings, layer table and CR convention (the whole JSON)."""
    return json.loads(_reference_path().read_text())


def setting(name: str = "45x") -> dict:
    """{role: (K, p)} of one of the authors' settings ("45x", "47x", "50x")."""
    check_choice("official setting", name, SETTINGS)
    s = load_reference()["settings"][name]
    return {role: (int(k), float(q)) for role, k, q in zip(ROLES, s["K"], s["p"])}


def reference_specs() -> list[dict]:
    """WRN-16-4 layer specs of the reference, named by role: its 16 convs, then the linear layer."""
    ref = load_reference()
    bias = bool(ref["model"]["conv_bias"])
    convs = [dict(layer, name=role, bias=bias) for role, layer in zip(ROLES, ref["layers"])]
    last_width = max(layer["out"] for layer in ref["layers"])
    fc = {"kind": "linear", "name": "fc", "in": last_width, "out": ref["model"]["num_classes"]}
    return convs + [fc]


def reference_plan(name: str) -> Plan:
    """The setting on the reference's own WRN-16-4 layer table (for `table_from_specs`)."""
    by_role = setting(name)
    return Plan(*zip(*(by_role[role] for role in ROLES)), setting=name, convention="official")


def per_role(names: list, name: str, param: str = "official") -> list[tuple[int, float]]:
    """(K, p) of the setting for each conv name (its role); a conv without a role is an error.

    `param` is the name the caller's user gave the setting, for the error message."""
    by_role = setting(name)
    unknown = [n for n in names if n not in by_role]
    if unknown:
        raise ValueError(
            f"{param}={name!r} applies by layer role to the convs of a WRN-16-k "
            f"({', '.join(ROLES[:4])}, …): the net's convs {unknown} have no role"
        )
    return [by_role[n] for n in names]


def authors_plan(net: nn.Module, name: str) -> Plan:
    """The authors' per-layer K and p on `net` by role; K ≥ N → K = N (dense).

    target_cr is the setting's CR under the official convention with uniform usage of the
    non-dominant clusters, to 2 decimals (on WRN-16-4 the authors' 43.48, 45.41, 48.12)."""
    kp = per_role([n for n, _ in conv_layers(net)], name)
    ks = [min(k, n) for (k, _), n in zip(kp, conv_rows(net))]
    ps = [q if k < n else 0.0 for (_, q), k, n in zip(kp, ks, conv_rows(net))]
    cr = estimated_cr(layer_specs(net), ks, ps, "official")
    return Plan(ks, ps, name, round(cr, 2), cr, "official")


def wrn16_4(device="meta") -> nn.Module:
    """WRN-16-4 as the authors' table describes it (dropout 0.3, conv bias); meta: shapes only."""
    from .models import wide_resnet

    m = load_reference()["model"]
    with torch.device(device):
        return wide_resnet(
            m["depth"], m["widen_factor"], m["dropout"], 3, m["num_classes"], m["conv_bias"]
        )
