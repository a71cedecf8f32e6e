"""`python -m dkm energy`: the per-layer energy table of a named model, a checkpoint or a pipeline run."""

from __future__ import annotations

from pathlib import Path

import torch

from ._checks import check_int
from .energy import COMPONENTS, UNIT, compare_energy, make_shares, wrn16_4

MODEL_SHAPES = {"alexnet": (3, 224, 224), "googlenet": (3, 224, 224), "wrn16-4": (3, 32, 32)}


def build_parser(parser):
    """Add the options of `python -m dkm energy` to an argparse parser."""
    parser.add_argument(
        "--model",
        required=True,
        help="alexnet, googlenet, wrn16-4, a pipeline run directory (data/runs/pretrain-… or "
        "retrain-…), or a checkpoint file saved as "
        "{'model': {'name', 'kwargs'}, 'state_dict', ['input_shape']}",
    )
    parser.add_argument(
        "--bits", default="16", help="operand bit widths, comma-separated (1–32), e.g. 8,16"
    )
    parser.add_argument(
        "--shared",
        default=None,
        help="45x, 47x or 50x (the authors' WRN-16-4 settings), auto (distinct kernel rows "
        "of the checkpoint's weights) or a JSON file {layer name: K or [K, p]}",
    )
    parser.add_argument(
        "--input-shape",
        default=None,
        help="C,H,W (default: 3,224,224; 3,32,32 for wrn16-4; a run's dataset's image shape)",
    )
    parser.add_argument(
        "--csv", default=None, help="also write the per-layer rows to this CSV file"
    )
    return parser


def load_model(model: str, input_shape=None) -> tuple:
    """(net, input shape) for a model name, a pipeline run directory or a checkpoint file."""
    if model in ("alexnet", "googlenet"):
        from .zigzag_ref import reference_net

        net, shape = reference_net(model), MODEL_SHAPES[model]
    elif model == "wrn16-4":
        net, shape = wrn16_4(), MODEL_SHAPES[model]
    elif Path(model).is_dir():
        net, shape = _load_run(model)
    elif Path(model).is_file():
        net, shape = _load_checkpoint(model)
    else:
        raise ValueError(
            f"model={model!r} is not allowed: choose alexnet, googlenet, wrn16-4, a run directory "
            f"or a checkpoint file"
        )
    shape = input_shape or shape
    if shape is None:
        raise ValueError(f"model={model!r} stores no input_shape: pass --input-shape C,H,W")
    return net, tuple(shape)


def _load_run(path: str) -> tuple:
    from .data import INPUT_SHAPES
    from .pipeline import _root_config, load_run

    net, config = load_run(path)
    return net, INPUT_SHAPES.get(_root_config(config).get("dataset"))


def _load_checkpoint(path: str) -> tuple:
    from .models import build_model

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file at all
        raise ValueError(
            f"model={path!r} cannot be read as a torch checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"model={path!r} is not a dkm checkpoint: expected keys 'model' and 'state_dict'"
        )
    net = build_model(ckpt["model"]["name"], **ckpt["model"].get("kwargs", {}))
    net.load_state_dict(ckpt["state_dict"])
    shape = ckpt.get("input_shape")
    return net, tuple(shape) if shape is not None else None


def _parse_ints(name: str, text: str, lo: int, hi: int) -> list:
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a comma-separated list of integers") from None
    return [check_int(name, v, lo, hi) for v in values]


def cli_main(args) -> int:
    """Print the per-layer energy table and totals for each bit width (and write --csv)."""
    from .inventory import layer_inventory

    bits = _parse_ints("bits", args.bits, 1, 32)
    shape = _parse_ints("input_shape", args.input_shape, 1, 1 << 20) if args.input_shape else None
    net, shape = load_model(args.model, shape)
    inv = layer_inventory(net, shape)
    shares = make_shares(inv.layers, args.shared, net)
    rows = [r for b in bits for r in compare_energy(inv.layers, shares, b)]
    for b in bits:
        print(f"\n{args.model} at {b} bits, input {shape}, energy in {UNIT} (a 16-bit MAC):")
        print(_format([r for r in rows if r["bits"] == b], bool(shares)))
    for reason, names in _group(inv.skipped).items():
        print(
            f"skipped {len(names)} module(s), {reason}: {', '.join(names[:4])}{', …' if len(names) > 4 else ''}"
        )
    if args.csv:
        from .zigzag_ref import write_csv

        write_csv(rows, Path(args.csv))
        print(f"wrote {args.csv}")
    return 0


def _group(skipped: dict) -> dict:
    """reason → module names."""
    out = {}
    for name, reason in skipped.items():
        out.setdefault(reason, []).append(name)
    return out


def _format(rows: list, shared: bool) -> str:
    """A fixed-width text table of compare_energy rows."""
    pre = "shared_" if shared else "dense_"
    cols = ["macs", f"{pre}mults"] + [pre + c for c in COMPONENTS + ("total",)]
    cols += ["dense_total", "ratio"] if shared else []
    width = max(len(r["name"]) for r in rows)
    head = f"{'layer':<{width}} {'K':>5} " + " ".join(f"{c.replace(pre, ''):>11}" for c in cols)
    lines = [head] + [
        f"{r['name']:<{width}} {str(r['K'] or ''):>5} " + " ".join(f"{r[c]:>11.4g}" for c in cols)
        for r in rows
    ]
    return "\n".join(lines)
