"""The independent energy reference for step 4 (paper §4.2): ZigZag's Eyeriss-like accelerator.

Energies are per layer.

The paper validated its metric against the (web-only) Eyeriss energy estimation tool. Here the
reference is ZigZag (PyPI `zigzag-dse`, KU Leuven; Mei et al., IEEE TC 2021), run one layer at a
time with its shipped `eyeriss_like.yaml` accelerator and `default.yaml` mapping (spatial K×C
unrolling clipped to the 14×12 array; ZigZag's LOMA temporal-mapping search, minimal energy).
Operand precision: W = I = `bits`, partial sums O = 2·bits, final outputs `bits`.

    python -m dkm zigzag [reference] [--nets alexnet,googlenet] [--bits 8,16]   # ~20–40 min
    python -m dkm zigzag validate                                                # R² table

writes data/reference/zigzag_<net>_<bits>.csv (resumable: rows already there are kept) and
data/results/energy_validation.csv (R² against ZigZag and nn-dataflow,
`dkm.energy.references.validation`). What the references share: `common`.
"""

from __future__ import annotations

import csv
import logging
import tempfile
import time
from importlib import metadata
from pathlib import Path

from dkm._checks import check_int
from dkm.energy.inventory import LayerInfo
from dkm.energy.references.common import (
    LAYER_FIELDS,
    REFERENCE_DIR,
    layer_row,
    parse_number,
    reference_layers,
    write_csv,
)

ACCELERATOR = "eyeriss_like.yaml"
MAPPING = "default.yaml"
ENERGY_FIELDS = [
    "energy_pJ",
    "mac_energy_pJ",
    "mem_energy_pJ",
    "mem_W_pJ",
    "mem_I_pJ",
    "mem_O_pJ",
    "latency_cycles",
    "wall_s",
]
TEXT_FIELDS = ("net", "name", "kind", "zigzag_version", "accelerator", "mapping")
FIELDS = (
    ["net", "bits"] + LAYER_FIELDS + ENERGY_FIELDS + ["zigzag_version", "accelerator", "mapping"]
)


def zigzag_workload(layer: LayerInfo, bits: int) -> list:
    """One ZigZag workload layer (yaml-as-dict) for a conv.

    A linear layer is its 1×1 conv on a 1×1 map.
    """
    check_int("bits", bits, 1, 32)
    if layer.groups != 1:
        raise ValueError(
            f"layer {layer.name!r} has groups={layer.groups}: "
            "the ZigZag reference supports groups=1 only"
        )
    (sy, sx), (py, px) = layer.stride, layer.padding
    return [
        {
            "id": 0,
            "name": layer.name,
            "operator_type": "Conv",
            # O[b][k][oy][ox] += W[k][c][fy][fx] · I[b][c][iy][ix], ix = sx·ox + fx
            "equation": "O[b][k][oy][ox]+=W[k][c][fy][fx]*I[b][c][iy][ix]",
            "dimension_relations": [f"ix={sx}*ox+1*fx", f"iy={sy}*oy+1*fy"],
            "loop_dims": ["B", "K", "C", "OY", "OX", "FY", "FX"],
            "loop_sizes": [layer.batch, layer.c_out, layer.c_in, *layer.out_size, *layer.kernel],
            "operand_precision": {"W": bits, "I": bits, "O": 2 * bits, "O_final": bits},
            "operand_source": {"I": 0, "W": 0},
            "pr_loop_dims": ["IX", "IY"],
            "padding": [[px, px], [py, py]],
        }
    ]


def _zigzag_inputs() -> tuple:
    """Paths of the accelerator and mapping yaml files shipped inside the zigzag package."""
    import zigzag

    root = Path(zigzag.__file__).parent / "inputs"
    return str(root / "hardware" / ACCELERATOR), str(root / "mapping" / MAPPING)


def run_layer(layer: LayerInfo, bits: int) -> dict:
    """ZigZag's minimal-energy mapping of one layer.

    Energies in pJ, latency in cycles, wall time in s.
    """
    from zigzag.api import get_hardware_performance_zigzag

    accelerator, mapping = _zigzag_inputs()
    logging.disable(logging.WARNING)  # ZigZag logs every mapping step at INFO/WARNING
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as dump:
        _, latency, cmes = get_hardware_performance_zigzag(
            zigzag_workload(layer, bits),
            accelerator,
            mapping,
            opt="energy",
            dump_folder=dump,
            loma_show_progress_bar=False,
        )
    wall = time.perf_counter() - t0
    logging.disable(logging.NOTSET)
    cme = cmes[0][0]
    per_op = {str(op): sum(v) for op, v in cme.mem_energy_breakdown.items()}
    return {
        "energy_pJ": cme.energy_total,
        "mac_energy_pJ": cme.mac_energy,
        "mem_energy_pJ": cme.mem_energy,
        "mem_W_pJ": per_op.get("W", 0.0),
        "mem_I_pJ": per_op.get("I", 0.0),
        "mem_O_pJ": per_op.get("O", 0.0),
        "latency_cycles": latency,
        "wall_s": round(wall, 3),
    }


def csv_path(net: str, bits: int, directory=None) -> Path:
    """data/reference/zigzag_<net>_<bits>.csv."""
    return Path(directory or REFERENCE_DIR) / f"zigzag_{net}_{bits}.csv"


def load_reference(net: str, bits: int, directory=None) -> list:
    """The rows of a reference CSV, numbers parsed (raises FileNotFoundError naming the file)."""
    path = csv_path(net, bits, directory)
    if not path.exists():
        raise FileNotFoundError(
            f"reference {path} does not exist: run `python -m dkm zigzag reference`"
        )
    with open(path, newline="") as f:
        return [
            {k: v if k in TEXT_FIELDS else parse_number(v) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def generate(net: str, bits: int, directory=None, log=print) -> Path:
    """Run ZigZag on every layer of `net` at `bits`, saving after each layer.

    Layers already saved are kept.
    """
    path, version = csv_path(net, bits, directory), metadata.version("zigzag-dse")
    done = {r["name"]: r for r in load_reference(net, bits, directory)} if path.exists() else {}
    rows, layers = [], reference_layers(net)
    for i, layer in enumerate(layers):
        row = done.get(layer.name)
        if row is None or row.get("zigzag_version") != version:
            row = {
                **layer_row(net, bits, i, layer),
                **run_layer(layer, bits),
                "zigzag_version": version,
                "accelerator": ACCELERATOR,
                "mapping": MAPPING,
            }
            log(
                f"{net} {bits}b {i + 1}/{len(layers)} {layer.name}: "
                f"{row['energy_pJ']:.4g} pJ in {row['wall_s']} s"
            )
        rows.append(row)
        write_csv(rows, path, FIELDS)
    return path
