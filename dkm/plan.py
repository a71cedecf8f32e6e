"""Target compression ratio → per-layer K: the knob that places every method at the same CR (paper §5)."""

from __future__ import annotations

from torch import nn

from ._checks import check_float
from .accounting import get_convention, table_from_specs, total_row


def layer_specs(net: nn.Module) -> list[dict]:
    """Conv, linear and batch-norm layers of `net` as accounting specs, in module order."""
    specs = []
    for name, m in net.named_modules():
        if isinstance(m, nn.Conv2d):
            if m.kernel_size[0] != m.kernel_size[1]:
                raise ValueError(
                    f"layer {name!r} has a non-square kernel {m.kernel_size}: allowed square kernels only"
                )
            specs.append(
                {
                    "kind": "conv",
                    "name": name,
                    "in": m.in_channels,
                    "out": m.out_channels,
                    "k": m.kernel_size[0],
                    "groups": m.groups,
                    "bias": m.bias is not None,
                }
            )
        elif isinstance(m, nn.Linear):
            specs.append(
                {
                    "kind": "linear",
                    "name": name,
                    "in": m.in_features,
                    "out": m.out_features,
                    "bias": m.bias is not None,
                }
            )
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine:
            specs.append({"kind": "batchnorm", "name": name, "num_features": m.num_features})
    return specs


def _num_rows(spec: dict) -> int:
    """N, the number of kernel rows of a conv spec."""
    return spec["out"] * spec["in"] // spec.get("groups", 1) * spec["k"]


def estimated_cr(specs: list[dict], num_clusters: list, p: list, convention="official") -> float:
    """CR of the specs with uniform usage of the non-dominant clusters (an upper bound on the index entropy)."""
    return total_row(table_from_specs(specs, {"K": num_clusters, "p": p}, convention))["cr"]


def plan_clusters(net: nn.Module, target_cr: float, convention="official", p: float = 0.0) -> dict:
    """The largest uniform K (one K for every conv, capped at N = left dense) whose estimated CR ≥ target_cr.

    Returns {"K": [...], "p": [...], "estimated_cr": float, "target_cr": float, "convention": name,
    "setting": "uniform"}.
    Under `official` the real CR after sharing is higher (real usage has lower entropy than uniform).
    """
    target_cr = check_float("target_cr", target_cr, 1.0, lo_open=True)
    p = check_float("p", p, 0.0, 1.0, hi_open=True)
    specs = layer_specs(net)
    convs = [s for s in specs if s["kind"] == "conv"]
    if not convs:
        raise ValueError(
            f"net={type(net).__name__} has no Conv2d layer: allowed only models with at least one conv"
        )

    rows = [_num_rows(s) for s in convs]

    def plan(k):  # K = N marks a layer left dense (the authors' convention)
        ks = [min(k, n) for n in rows]
        ps = [p if 2 <= kk < n else 0.0 for kk, n in zip(ks, rows)]
        return ks, ps, estimated_cr(specs, ks, ps, convention)

    best = plan(1)
    if best[2] < target_cr:
        raise ValueError(
            f"target_cr={target_cr:g} is not reachable under convention "
            f"{get_convention(convention).name!r}: allowed at most {best[2]:.2f} (K=1 in every conv)"
        )
    lo, hi = 1, max(rows)
    while (
        lo < hi
    ):  # estimated CR decreases as K grows: find the largest K that still reaches the target
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if plan(mid)[2] >= target_cr else (lo, mid - 1)
    ks, ps, cr = plan(lo)
    return {
        "K": ks,
        "p": ps,
        "estimated_cr": cr,
        "target_cr": target_cr,
        "convention": get_convention(convention).name,
        "setting": "uniform",
    }


def official_plan(net: nn.Module, setting: str) -> dict:
    """The authors' per-layer K and p ("45x" | "47x" | "50x", WRN-16-4 only) as a plan like `plan_clusters`'.

    Its target_cr is the setting's CR under the official convention with uniform cluster usage, rounded to
    2 decimals (43.48, 45.41, 48.12: the authors' own numbers, see dkm.accounting)."""
    from .accounting import load_reference
    from .sharing import official_per_layer

    specs = layer_specs(net)
    convs = [s for s in specs if s["kind"] == "conv"]
    ks, ps = official_per_layer(setting, len(convs))
    ks = list(ks)
    for i, (spec, ref) in enumerate(zip(convs, load_reference()["layers"])):
        n, n_ref = _num_rows(spec), ref["out"] * ref["in"] * ref["k"]
        if (
            ks[i] >= n_ref
        ):  # K = N: the authors leave the layer dense (conv1); dense here too, whatever its N
            ks[i] = n
        elif n != n_ref:
            raise ValueError(
                f"official={setting!r}: layer {spec['name']!r} has {n} kernel rows, the authors' WRN-16-4 "
                f"{n_ref}: allowed only WRN-16-4's shared layer shapes"
            )
    cr = estimated_cr(specs, ks, ps, "official")
    return {
        "K": list(ks),
        "p": list(ps),
        "estimated_cr": cr,
        "target_cr": round(cr, 2),
        "convention": "official",
        "setting": setting,
    }
