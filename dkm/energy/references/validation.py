"""The validation table of step 4's energy metric (paper §4.2): R² per layer against two references.

For each net × reference (ZigZag, nn-dataflow) × bit width × layer set (all, convs only) × target
(energy; energy per MAC): the R² of the least-squares line reference ≈ a·x + b for x = our metric
(eyeriss, default; no constant of it fitted to any reference), MACs alone, parameters alone, and
of the two-coefficient fit reference ≈ a·MACs + b·params. For energy per MAC both sides are
divided by the layer's MACs (the MACs+params fit then reads a + b·params/MACs; the single proxies
stay undivided, as before). Goals: R² ≥ 0.95 on all layers, ≥ 0.9 on convs only.

    python -m dkm zigzag validate    # writes data/results/energy_validation.csv
"""

from __future__ import annotations

import numpy as np

from dkm.energy.metric import layer_energy
from dkm.energy.references import nn_dataflow as nn_dataflow_ref
from dkm.energy.references import zigzag as zigzag_ref
from dkm.energy.references.common import NETS, r2_linear, reference_layers

REFERENCES = {"zigzag": "energy_pJ", "nn_dataflow": "energy"}
GOALS = {"all": 0.95, "convs": 0.9}
TARGETS = ("energy", "energy_per_mac")


def _load(reference: str, net: str, bits: int, directory=None) -> list:
    module = {"zigzag": zigzag_ref, "nn_dataflow": nn_dataflow_ref}[reference]
    return module.load_reference(net, bits, directory)


def reference_rows(net: str, bits: int, reference: str, directory=None) -> list:
    """Per layer: MACs, params, our metric and the reference's energy (matched by name and MACs)."""
    ref = {r["name"]: r for r in _load(reference, net, bits, directory)}
    rows = []
    for layer in reference_layers(net):
        r = ref.get(layer.name)
        if r is None or r["macs"] != layer.macs:
            raise ValueError(
                f"the {reference} reference of {net} at {bits} bits does not match layer "
                f"{layer.name!r}: regenerate it"
            )
        rows.append(
            {
                "name": layer.name,
                "kind": layer.kind,
                "macs": layer.macs,
                "params": layer.params,
                "ours": layer_energy(layer, bits)["total"],
                "reference": r[REFERENCES[reference]],
            }
        )
    return rows


def r2_through_origin(X, y) -> float:
    """R² = 1 − SS_res/SS_tot (SS_tot about the mean) of the least-squares y ≈ X·c, no intercept."""
    X, y = np.asarray(X, dtype=float), np.asarray(y, dtype=float)
    coef = np.linalg.lstsq(X, y, rcond=None)[0]
    return float(1.0 - np.sum((y - X @ coef) ** 2) / np.sum((y - y.mean()) ** 2))


def fit_row(rows: list, target: str) -> dict:
    """R² of our metric, MACs, params and the MACs+params fit for one target on `rows`."""
    col = {
        k: np.array([r[k] for r in rows], dtype=float) for k in rows[0] if k not in ("name", "kind")
    }
    per = 1.0 if target == "energy" else col["macs"]
    y = col["reference"] / per
    # two coefficients: E ≈ a·MACs + b·params, divided through by MACs for energy per MAC
    both = np.stack([col["macs"] / per, col["params"] / per], axis=1)
    return {
        "r2_ours": r2_linear(col["ours"] / per, y),
        "r2_macs": r2_linear(col["macs"], y),
        "r2_params": r2_linear(col["params"], y),
        "r2_macs_params": r2_through_origin(both, y),
    }


def validation_table(nets=NETS, bits=(8, 16), directory=None, references=tuple(REFERENCES)) -> list:
    """One row per net × reference × bits × layer set × target (module docstring)."""
    table = []
    for net in nets:
        for reference in references:
            for b in bits:
                rows = reference_rows(net, b, reference, directory)
                for layers, goal in GOALS.items():
                    sel = [r for r in rows if layers == "all" or r["kind"] == "conv"]
                    for target in TARGETS:
                        table.append(_table_row(net, reference, b, layers, target, sel, goal))
    return table


def _table_row(net, reference, bits, layers, target, sel, goal) -> dict:
    r2 = {k: round(v, 4) for k, v in fit_row(sel, target).items()}
    return {
        "net": net,
        "reference": reference,
        "bits": bits,
        "layers": layers,
        "target": target,
        "n": len(sel),
        **r2,
        "goal": goal,
        "met": r2["r2_ours"] >= goal,
        "above_macs_params": r2["r2_ours"] > r2["r2_macs_params"],
    }
