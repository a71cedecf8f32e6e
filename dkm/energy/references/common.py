"""What the energy references share: the validation nets, their layers as CSV rows, reading and
writing the reference CSVs, and R² (dkm.energy.references.zigzag, .nn_dataflow, .validation)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from dkm._checks import check_choice
from dkm.energy.inventory import LayerInfo, layer_inventory
from dkm.io import write_atomic

REFERENCE_DIR = Path(__file__).resolve().parents[3] / "data" / "reference"
RESULTS_DIR = Path(__file__).resolve().parents[3] / "data" / "results"
NETS = ("alexnet", "googlenet")
LAYER_FIELDS = [
    "index",
    "name",
    "kind",
    "batch",
    "c_in",
    "c_out",
    "groups",
    "kh",
    "kw",
    "stride",
    "padding",
    "in_h",
    "in_w",
    "out_h",
    "out_w",
    "macs",
    "params",
]


def reference_net(net: str, device="meta"):
    """The torchvision net of the validation, without weights.

    On the meta device (the default): shapes only, no memory.
    """
    import torch
    import torchvision

    check_choice("net", net, NETS)
    with torch.device(device):
        if net == "alexnet":
            return torchvision.models.alexnet()
        return torchvision.models.googlenet(aux_logits=False, init_weights=True)


def reference_layers(net: str) -> list:
    """Every conv and linear layer of `net` at a 3×224×224 input.

    For GoogLeNet: its convs plus the final fc.
    """
    return layer_inventory(reference_net(net), (3, 224, 224)).layers


def layer_row(net: str, bits: int, index: int, layer: LayerInfo) -> dict:
    """The layer-description columns of a reference CSV row."""
    return {
        "net": net,
        "bits": bits,
        "index": index,
        "name": layer.name,
        "kind": layer.kind,
        "batch": layer.batch,
        "c_in": layer.c_in,
        "c_out": layer.c_out,
        "groups": layer.groups,
        "kh": layer.kernel[0],
        "kw": layer.kernel[1],
        "stride": layer.stride[0],
        "padding": layer.padding[0],
        "in_h": layer.in_size[0],
        "in_w": layer.in_size[1],
        "out_h": layer.out_size[0],
        "out_w": layer.out_size[1],
        "macs": layer.macs,
        "params": layer.params,
    }


def parse_number(v: str):
    """A CSV cell as int, else float, else the text itself."""
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return v


def write_csv(rows: list, path: Path, fields=None) -> None:
    """Write dict rows atomically (a temp file renamed over `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields or list(rows[0]), lineterminator="\r\n")
    w.writeheader()
    w.writerows(rows)
    write_atomic(path, buf.getvalue())


def r2_linear(x, y) -> float:
    """R² of the least-squares line y ≈ a·x + b: 1 − SS_res/SS_tot.

    It equals the squared Pearson correlation.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if x.shape != y.shape or x.size < 3:
        raise ValueError(f"x and y must have the same length ≥ 3, got {x.size} and {y.size}")
    A = np.stack([x, np.ones_like(x)], axis=1)
    coef = np.linalg.lstsq(A, y, rcond=None)[0]
    ss_res, ss_tot = np.sum((y - A @ coef) ** 2), np.sum((y - y.mean()) ** 2)
    return float(1.0 - ss_res / ss_tot)
