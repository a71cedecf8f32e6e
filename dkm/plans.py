"""A plan: one K and one dominant-cluster fraction p per conv, and the CR it aims at (paper §5).

Every step that needs per-layer K takes a `Plan`: sharing (`dkm.sharing.share`), the regularizer
(`KMeansRegularizer.from_plan`), the pipeline, energy and export. Plans come from
`plan_clusters` (a target CR → one uniform K), `uniform_plan` (a given K),
`dkm.plans.authors_plan` (the authors' per-layer settings) or `dkm.planner.rd_plan` (per-layer
K and p for a target CR, by rate–distortion).

Choices made here:
- K is capped at N, the layer's number of kernel rows; K = N marks a layer left dense (the
  authors' rule, `dkm.rows.stays_dense`).
- A per-layer value is given as one number for every conv, a list in conv order, or a dict by conv
  name or index (`per_conv`): the one resolution rule of the package.

The authors' released settings (45×, 47×, 50×) live here too, keyed by layer role so they fit
every WRN-16-k:

Their deploy script shares WRN-16-4 with a K and a dominant-cluster fraction p per conv
(data/reference/wrn16_4_official_sharing.json). A conv's *role* is its place in the Wide ResNet:
the first conv, then in each stage s and block b `conv1`, `conv2` and the 1×1 `shortcut` — exactly
the module names of `dkm.training.models.WideResNet` ("conv1", "stage1.0.conv1", …,
"stage3.1.conv2").
So the settings apply by role to WRN-16-1/2/4 (and WRN-10-k, whose convs are a subset of the
roles), whatever the width; a role the net lacks (WRN-16-1 has no stage-1 shortcut) is unused.
Where a role's K ≥ the layer's N the layer stays dense (the authors' conv1, `dkm.rows.stays_dense`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from dkm._checks import check_choice, check_float, check_int
from dkm.accounting import get_convention, param_of, table_from_specs, total_row
from dkm.rows import conv_layers, num_rows, stays_dense


@dataclass(frozen=True)
class Plan:
    """Per-conv K and p in conv order; `setting` says how they were chosen ("uniform", "45x", …)."""

    K: tuple
    p: tuple
    setting: str = "uniform"
    target_cr: float | None = None  # the CR asked for (the authors' settings: their own CR)
    estimated_cr: float | None = None  # with uniform usage of the non-dominant clusters
    convention: str = "official"  # the CR convention of target_cr and estimated_cr

    def __post_init__(self):
        object.__setattr__(self, "K", tuple(check_int("K", k, 1) for k in self.K))
        ps = tuple(check_float("p", q, 0.0, 1.0, hi_open=True) for q in self.p)
        object.__setattr__(self, "p", ps)
        if len(self.K) != len(self.p):
            raise ValueError(f"a plan has {len(self.K)} K and {len(self.p)} p: allowed one each")

    def label(self) -> str:
        """'target CR 16', 'the rd planner at target CR 28.56' or "the authors' 45x setting"."""
        if self.setting == "uniform":
            return f"target CR {self.target_cr:g}"
        if self.setting == "rd":
            return f"the rd planner at target CR {self.target_cr:g}"
        return f"the authors' {self.setting} setting"


def conv_index(param: str, key, names: list, index_name: str | None = None) -> int:
    """Position of a conv given by name or by index; the error lists what exists."""
    if isinstance(key, str):
        if key not in names:
            raise ValueError(f"{param}: unknown layer name {key!r}: allowed names {names}")
        return names.index(key)
    return check_int(index_name or f"{param} layer index", key, 0, len(names) - 1)


def per_conv(param: str, value, names: list, default=None) -> list:
    """One value per conv from a number, a list in conv order or a dict by name/index (unset: None).

    The one resolution rule of per-layer arguments (K, p) in the package."""
    if value is None or isinstance(value, (int, float)):
        return [default if value is None else value] * len(names)
    if isinstance(value, (list, tuple)):
        if len(value) != len(names):
            raise ValueError(
                f"{param} has {len(value)} entries but the net has {len(names)} conv layers: "
                f"allowed one entry per conv, or a dict by layer name/index"
            )
        return list(value)
    if isinstance(value, dict):
        out = [None] * len(names)
        for key, v in value.items():
            out[conv_index(param, key, names)] = v
        return out
    raise TypeError(
        f"{param} must be a number, a list (one per conv) or a dict by layer name/index, "
        f"got {type(value).__name__}"
    )


def layer_specs(net: nn.Module) -> list[dict]:
    """Conv, linear and batch-norm layers of `net` as accounting specs, in module order."""
    specs, owners = [], {}
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            owner = owners.setdefault(id(param_of(m)), name)  # a tied weight is counted once
            specs.append(
                {"kind": "conv", "name": name, "in": m.in_channels, "out": m.out_channels,
                 **({"k": kh} if kh == kw else {"kh": kh, "kw": kw}), "groups": m.groups,
                 "bias": m.bias is not None, **({"tied_to": owner} if owner != name else {})}
            )  # fmt: skip
        elif isinstance(m, nn.Linear):
            specs.append(
                {"kind": "linear", "name": name, "in": m.in_features, "out": m.out_features,
                 "bias": m.bias is not None}
            )  # fmt: skip
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            specs.append({"kind": "batchnorm", "name": name, "num_features": m.num_features})
    return specs


def _span(values) -> str:
    """'7–100', or '3' where every value is the same."""
    lo, hi = min(values), max(values)
    return f"{lo:g}" if lo == hi else f"{lo:g}–{hi:g}"


def describe(plan: Plan, net: nn.Module) -> str:
    """'K 7–100, p 0.3–0.9 in 15 of 16 convs': the convs the plan shares (K < N; others dense)."""
    kp = [(k, q) for k, q, n in zip(plan.K, plan.p, conv_rows(net)) if not stays_dense(k, n)]
    if not kp:
        return f"every one of the {len(plan.K)} convs dense"
    ks, ps = zip(*kp)
    return f"K {_span(ks)}, p {_span(ps)} in {len(kp)} of {len(plan.K)} convs"


def conv_rows(net: nn.Module) -> list[int]:
    """N, the number of kernel rows, of every conv of `net` in conv order."""
    return [num_rows(m.weight.shape) for _, m in conv_layers(net)]


def estimated_cr(specs: list[dict], num_clusters, p, convention="official") -> float:
    """CR of the specs with uniform usage of the non-dominant clusters (an upper bound on the
    entropy)."""
    return total_row(table_from_specs(specs, {"K": list(num_clusters), "p": list(p)}, convention))[
        "cr"
    ]


def _uniform(rows: list[int], k: int, p: float) -> tuple[list, list]:
    """K = min(k, N) in every conv; p only where a dominant cluster fits (2 ≤ K < N)."""
    ks = [min(k, n) for n in rows]
    return ks, [p if 2 <= kk and not stays_dense(kk, n) else 0.0 for kk, n in zip(ks, rows)]


def uniform_plan(net: nn.Module, num_clusters: int, p: float = 0.0) -> Plan:
    """One K for every conv (capped at its N: left dense), with its estimated official CR."""
    k = check_int("num_clusters", num_clusters, 1)
    ks, ps = _uniform(conv_rows(net), k, check_float("p", p, 0.0, 1.0, hi_open=True))
    return Plan(ks, ps, estimated_cr=estimated_cr(layer_specs(net), ks, ps))


def plan_clusters(net: nn.Module, target_cr: float, convention="official", p: float = 0.0) -> Plan:
    """The largest uniform K (capped at N: left dense) whose estimated CR ≥ target_cr.

    Under `official` the real CR after sharing is higher (real usage has lower entropy than
    uniform).
    """
    target_cr = check_float("target_cr", target_cr, 1.0, lo_open=True)
    p = check_float("p", p, 0.0, 1.0, hi_open=True)
    specs, rows = layer_specs(net), conv_rows(net)

    def cr(k):
        return estimated_cr(specs, *_uniform(rows, k, p), convention)

    if cr(1) < target_cr:
        raise ValueError(
            f"target_cr={target_cr:g} is not reachable under convention "
            f"{get_convention(convention).name!r}: allowed at most {cr(1):.2f} (K=1 in every conv)"
        )
    lo, hi = 1, max(rows)
    while lo < hi:  # the estimated CR falls as K grows: the largest K that still reaches the target
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if cr(mid) >= target_cr else (lo, mid - 1)
    ks, ps = _uniform(rows, lo, p)
    return Plan(ks, ps, "uniform", target_cr, cr(lo), get_convention(convention).name)


# The authors' settings

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
