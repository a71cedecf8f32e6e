"""The row-stationary energy reference of step 4 (paper §4.2): nn-dataflow 2.1 (TETRIS).

nn-dataflow schedules the row-stationary dataflow of Eyeriss; its own test `test_eyeriss_isca16`
reproduces the per-layer AlexNet breakdown of Eyeriss (ISCA 2016). Here each conv and linear layer
of our inventory (torchvision AlexNet and GoogLeNet at 3×224×224, batch 1, forward order) is
scheduled alone under that test's configuration: 16×16 PEs, 128 kB buffer, 512 B register file,
costs MAC 1 / RF 1 / array 2 / buffer 6 / DRAM 200 per word, minimal energy. At `bits` the word is
`bits` wide (nn-dataflow's `--word`): buffer and RF hold 128 kB and 512 B of such words, and the
energy is in units of one MAC at that width. A linear layer is an FC layer on a 1×1 map.

nn-dataflow needs sympy 1.5.1 and torch a newer one, so it lives in its own virtual environment
(`make references` builds build/nn-dataflow-venv); `tools/nn_dataflow_layers.py` runs there, this
module sends it the layer shapes and writes data/reference/nn_dataflow_<net>_<bits>.csv plus the
sidecar nn_dataflow_provenance.json (command, versions, configuration):

    python -m dkm.energy.references.nn_dataflow [--venv build/nn-dataflow-venv] [--nets ...]
    [--bits 8,16]
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import subprocess
import sys
from pathlib import Path

from dkm._checks import check_choice, check_int
from dkm.energy.inventory import LayerInfo
from dkm.energy.references.common import (
    NETS,
    REFERENCE_DIR,
    layer_row,
    parse_number,
    reference_layers,
    write_csv,
)

ROOT = Path(__file__).resolve().parents[3]
WORKER = ROOT / "tools" / "nn_dataflow_layers.py"
VENV = ROOT / "build" / "nn-dataflow-venv"
PINS = ("nn-dataflow==2.1", "sympy==1.5.1")
COMMAND = (
    "make references  # = python -m dkm.energy.references.nn_dataflow --venv build/nn-dataflow-venv"
)
CONFIG = {
    "source": "nn_dataflow/tests/dataflow_test/test_nn_dataflow.py, test_eyeriss_isca16",
    "array": [16, 16],
    "gbuf_bytes": 128 * 1024,
    "regf_bytes": 512,
    "cost": {"mac": 1, "rf": 1, "array": 2, "buffer": 6, "dram": 200, "noc_hop": 0, "idle": 0},
    "map_strategy": "MapStrategyEyeriss",
    "options": "Option() (defaults: minimal energy, no partitioning, no bypass)",
    "batch": 1,
    "word": "bits wide; sizes in words = bytes / ceil(bits / 8); costs per word",
}
LEVELS = ("rf", "array", "buffer", "dram")
DATA = ("weights", "inputs", "psums")
RESULT_FIELDS = ["energy", "ops"] + [f"{lv}_{d}" for lv in LEVELS for d in DATA]
RESULT_FIELDS += list(LEVELS) + ["time_cycles", "wall_s", "nn_dataflow_version"]
TEXT_FIELDS = ("net", "name", "kind", "nn_dataflow_version")


def venv_python(venv=None) -> Path:
    """The Python of nn-dataflow's virtual environment (default build/nn-dataflow-venv)."""
    return Path(venv or VENV) / "bin" / "python"


def layer_job(layer: LayerInfo) -> dict:
    """The shapes of one layer as the worker reads them (groups = 1 only)."""
    if layer.groups != 1:
        raise ValueError(
            f"layer {layer.name!r} has groups={layer.groups}: nn-dataflow supports groups=1 only"
        )
    keys = ("name", "kind", "batch", "c_in", "c_out", "in_size", "out_size", "kernel", "stride")
    return {k: getattr(layer, k) for k in keys}


def run_layers(layers: list, bits: int, venv=None) -> list:
    """Schedule each layer with nn-dataflow in its own venv; one result dict per layer."""
    check_int("bits", bits, 1, 32)
    python = venv_python(venv)
    if not python.exists():
        raise FileNotFoundError(f"{python} does not exist: run `make references` to build it")
    job = json.dumps({"bits": bits, "layers": [layer_job(x) for x in layers]})
    done = subprocess.run(
        [str(python), str(WORKER)], input=job, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"nn-dataflow failed ({python}):\n{done.stderr[-2000:]}")
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    for row in rows:
        row["energy"] = row.pop("cost")
    return rows


def csv_path(net: str, bits: int, directory=None) -> Path:
    """data/reference/nn_dataflow_<net>_<bits>.csv."""
    return Path(directory or REFERENCE_DIR) / f"nn_dataflow_{net}_{bits}.csv"


def load_reference(net: str, bits: int, directory=None) -> list:
    """The rows of an nn-dataflow reference CSV, numbers parsed."""
    path = csv_path(net, bits, directory)
    if not path.exists():
        raise FileNotFoundError(f"reference {path} does not exist: run `make references`")
    with open(path, newline="") as f:
        return [
            {k: v if k in TEXT_FIELDS else parse_number(v) for k, v in row.items()}
            for row in csv.DictReader(f)
        ]


def generate(net: str, bits: int, venv=None, directory=None) -> Path:
    """Schedule every layer of `net` at `bits` and write its CSV (layer columns, then results)."""
    check_choice("net", net, NETS)
    layers = reference_layers(net)
    results = run_layers(layers, bits, venv)
    rows = [
        layer_row(net, bits, i, x) | {k: r[k] for k in RESULT_FIELDS}
        for i, (x, r) in enumerate(zip(layers, results))
    ]
    path = csv_path(net, bits, directory)
    write_csv(rows, path, list(rows[0]))
    return path


def versions(venv=None) -> dict:
    """pip freeze of nn-dataflow's venv and its Python version."""
    python = str(venv_python(venv))
    freeze = subprocess.run([python, "-m", "pip", "freeze"], capture_output=True, text=True)
    version = subprocess.run([python, "--version"], capture_output=True, text=True)
    return {"python": version.stdout.strip(), "packages": freeze.stdout.split()}


def write_provenance(nets, bits, venv=None, directory=None) -> Path:
    """data/reference/nn_dataflow_provenance.json: command, pins, versions, configuration."""
    info = {
        "command": COMMAND,
        "pins": list(PINS),
        "venv": versions(venv),
        "host_python_for_dkm": platform.python_version(),
        "nets": list(nets),
        "bits": list(bits),
        "config": CONFIG,
        "files": [csv_path(n, b, directory).name for n in nets for b in bits],
    }
    path = Path(directory or REFERENCE_DIR) / "nn_dataflow_provenance.json"
    path.write_text(json.dumps(info, indent=1) + "\n")
    return path


def main(argv=None) -> int:
    """Regenerate the nn-dataflow reference CSVs and their provenance file."""
    ap = argparse.ArgumentParser(
        prog="python -m dkm.energy.references.nn_dataflow", description=__doc__
    )
    ap.add_argument("--venv", default=None, help="nn-dataflow's venv (build/nn-dataflow-venv)")
    ap.add_argument("--nets", default=",".join(NETS), help="alexnet,googlenet")
    ap.add_argument("--bits", default="8,16", help="word widths, comma-separated")
    ap.add_argument("--dir", default=None, help="output directory (default data/reference)")
    args = ap.parse_args(argv)
    nets = [check_choice("nets", n, NETS) for n in args.nets.split(",")]
    bits = [check_int("bits", int(b), 1, 32) for b in args.bits.split(",")]
    for n in nets:
        for b in bits:
            print("wrote", generate(n, b, args.venv, args.dir), flush=True)
    print("wrote", write_provenance(nets, bits, args.venv, args.dir))
    return 0


if __name__ == "__main__":
    sys.exit(main())
