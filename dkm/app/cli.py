"""The command line: `python -m dkm <command> --help` (also installed as `dkm`).

Every command is two functions here, `add_<command>(parser)` for its options and
`run_<command>(args)` that calls the package and prints; bad input is one line on stderr and
exit status 2 (`main`). The λ of `--lam` goes into the profile (`get_profile(lam=…)`), from
there into `pipeline.retrain` and `KMeansRegularizer.from_plan`.

`torchrun --standalone --nproc-per-node=N -m dkm pretrain|retrain ...` trains data-parallel
(dkm.training.distributed): the commands in `DATA_PARALLEL` open the launch's process group; rank 0
alone
prints.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

from dkm import __version__
from dkm import plans as authors
from dkm._checks import check_choice, check_int
from dkm.accounting import CONVENTIONS, compression_ratio, compression_table
from dkm.app import book
from dkm.app import runner as notebooks
from dkm.energy.accelerators import ACCELERATORS
from dkm.energy.inventory import layer_inventory
from dkm.energy.metric import COMPONENTS, UNIT, compare_energy
from dkm.energy.references import common
from dkm.energy.references import zigzag as zigzag_ref
from dkm.energy.references.common import NETS, reference_net, write_csv
from dkm.energy.references.validation import validation_table
from dkm.energy.shares import make_shares
from dkm.experiments import pipeline as pl
from dkm.experiments import platform, study
from dkm.experiments.cache import ROOT, root_config
from dkm.experiments.planning import plan_for
from dkm.experiments.profiles import PROFILES, get_profile
from dkm.experiments.study import STUDIES, profile_and_study
from dkm.experiments.sweep import (
    FINETUNED,
    add_results,
    all_methods,
    finetuned_methods,
    results_path,
    run_point,
    split_method,
    summary,
    sweep,
)
from dkm.export import onnx as onnx_export
from dkm.export.dkmfile import CODINGS, save_shared, size_report
from dkm.io import UnsafePathError, check_writable_path
from dkm.plans import Plan, describe
from dkm.sharing import share, sharing_seed
from dkm.training import distributed
from dkm.training.data import INPUT_SHAPES
from dkm.training.models import load_model_file, wrn16_4
from dkm.viz.files import DEFAULT_PROFILE, PROFILE_NAMES
from dkm.viz.tables import markdown_table, text_table

DATA_PARALLEL = ("pretrain", "retrain")  # the commands torchrun may launch on several processes
ENERGY_MODELS = {"alexnet": (3, 224, 224), "googlenet": (3, 224, 224), "wrn16-4": (3, 32, 32)}


# ---------------------------------------------------------------- shared options
def _add_profile(parser: argparse.ArgumentParser, lam: bool = True) -> None:
    """--profile and --progress; --lam on the commands that re-train (λ reaches nothing else)."""
    parser.add_argument(
        "--profile",
        default="cpu",
        choices=list(PROFILES),
        help="experiment size: smoke (seconds), cpu (default, minutes), paper (GPU, CIFAR-10), "
        "paper-fmnist (GPU, offline)",
    )
    if lam:
        parser.add_argument(
            "--lam",
            type=float,
            default=None,
            help="λ of the k-means regularizer (default: the profile's)",
        )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: in an interactive terminal)")  # fmt: skip


def _add_plan(parser: argparse.ArgumentParser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--target-cr",
        type=float,
        help="target compression ratio (official convention), planned by --planner",
    )
    where.add_argument(
        "--official",
        choices=authors.SETTINGS,
        help="the authors' per-layer K and p by layer role (a WRN-16-k)",
    )
    parser.add_argument(
        "--planner",
        choices=("uniform", "rd"),
        default=None,
        help="with --target-cr: uniform (one K in every conv, default) or rd (per-layer K and p "
        "by rate–distortion, dkm.planner)",
    )
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of re-training and sharing (default 0)")  # fmt: skip


def _profile(args):
    """The profile of --profile, with --lam when given."""
    lam = getattr(args, "lam", None)
    return get_profile(args.profile, **({} if lam is None else {"lam": lam}))


def _plan(args, profile) -> Plan:
    """The Plan of --official, or of --target-cr by --planner, for the profile's pre-trained net."""
    net = pl.pretrain(profile, args.progress)[0]
    return plan_for(profile, net, args.target_cr, args.official, args.planner)


# ---------------------------------------------------------------- pipeline commands
def add_pretrain(parser):
    """Options of `dkm pretrain`."""
    _add_profile(parser, lam=False)


def run_pretrain(args) -> int:
    """Pre-train the profile's net (or read it) and print its accuracy."""
    profile = _profile(args)
    with distributed.process_group(profile.pretrain.device):
        net, config = pl.pretrain(profile, args.progress)
        if not distributed.is_main():
            return 0
    acc = pl.evaluate(net, pl.datasets(profile)[1])["accuracy"]
    where = pl.run_dir("pretrain", config)
    print(f"pre-trained {profile.model} ({profile.name}): top-1 {100 * acc:.2f}%  [{where}]")
    return 0


def add_retrain(parser):
    """Options of `dkm retrain`."""
    _add_profile(parser)
    parser.add_argument(
        "--source",
        choices=[s for s in pl.SOURCES if s != "pretrained"],
        default="dkm-indicator",
        help="the net to make: dkm-indicator (the k-means regularizer with the indicator F, "
        "default), dkm-spectral (the spectral F) or plain (the control, no regularizer)",
    )
    _add_plan(parser)


def run_retrain(args) -> int:
    """Re-train (or read) one configuration and print its accuracy before sharing."""
    profile = _profile(args)
    with distributed.process_group(profile.pretrain.device):
        plan = _plan(args, profile)
        source = args.source
        net, config = pl.source_net(profile, source, plan, args.seed, args.progress)
        if not distributed.is_main():
            return 0
    acc = pl.evaluate(net, pl.datasets(profile)[1])["accuracy"]
    where = "" if source == "plain" else f", {plan.label()}: {describe(plan, net)}"
    print(f"re-trained ({source}{where}): top-1 before sharing {100 * acc:.2f}%  "
          f"[{pl.run_dir('retrain', config)}]")  # fmt: skip
    return 0


def _add_point(parser):
    """Options of one point: the profile, the net to share, the sharing method and the plan."""
    _add_profile(parser)
    parser.add_argument(
        "--source", choices=pl.SOURCES, default="pretrained", help="which net to share"
    )
    parser.add_argument("--sharing", choices=list(pl.SHARE_INITS), default="kmeans",
                        help="how the codebooks are found: kmeans (k-means++, default), density "
                             "(seeded from the weight density) or deep_compression (linear init, "
                             "then center fine-tuning)")  # fmt: skip
    _add_plan(parser)


def add_share(parser):
    """Options of `dkm share`."""
    _add_point(parser)
    parser.add_argument("--export", metavar="PATH", help="also write the shared model to a file")
    parser.add_argument("--coding", choices=CODINGS, default="fixed",
                        help="index coding of --export: fixed (⌈log2 K⌉ bits, the fixed CR; "
                             "default), huffman (the huffman CR) or rans (the entropy: the "
                             "official CR)")  # fmt: skip
    parser.add_argument("--onnx", metavar="PATH",
                        help="also write the shared net as an ONNX graph (codebook + indexes per "
                             "shared conv; needs the onnx extra)")  # fmt: skip


@contextlib.contextmanager
def _writing(option: str):
    """A path that cannot be written (not a regular file, a file system error) in the block is one
    line naming `option`."""
    try:
        yield
    except (UnsafePathError, OSError) as err:
        raise ValueError(f"{option}: {err}") from None


def _check_output(option: str, path) -> None:
    """`option` names a file that may be written (checked before any computation)."""
    if path is None:
        return
    if not path.strip():
        raise ValueError(f"{option} {path!r} is not allowed: give a file path")
    with _writing(option):
        check_writable_path(path)


def run_share(args) -> int:
    """Share one net row-wise; print the per-layer table, the CRs and the export's size."""
    if args.coding != "fixed" and args.export is None:
        raise ValueError(f"--coding {args.coding} codes the --export file: give --export PATH")
    _check_output("--export", args.export)
    _check_output("--onnx", args.onnx)
    if args.onnx is not None:
        onnx_export.check_available()
    profile = _profile(args)
    plan = _plan(args, profile)
    net = copy.deepcopy(pl.source_net(profile, args.source, plan, args.seed, args.progress)[0])
    init = pl.SHARE_INITS[args.sharing]
    shared = share(net, plan, init=init, kmeans_seed=sharing_seed(args.seed))
    columns = ("name", "kind", "K", "p", "N", "s", "bits_index_per_row", "cr")
    print(text_table(compression_table(net, shared, "official"), columns, float_format=".3g"))
    for name, reason in shared.skipped.items():
        print(f"skipped {name}: {reason}")
    crs = ", ".join(f"{c} {compression_ratio(net, shared, c):.2f}" for c in CONVENTIONS)
    print(f"CR: {crs}")
    if args.export is not None:
        with _writing("--export"):
            info = save_shared(net, shared, args.export, coding=args.coding)
        print(size_report(info))
        cr = compression_ratio(net, shared, info["convention"])
        print(
            f"{info['coding']} coding: the file stores what the {info['convention']} CR "
            f"{cr:.2f} counts (+ {info['bytes'] - info['convention_bytes']:,.0f} bytes)"
        )
    if args.onnx is not None:
        shape = (1, *INPUT_SHAPES[profile.dataset])
        with _writing("--onnx"):
            info = onnx_export.save_onnx(net, shared, args.onnx, shape)
        print(onnx_export.onnx_report(info))

    return 0


def add_evaluate(parser):
    """Options of `dkm evaluate` (those of `dkm share` but --export: it adds table rows)."""
    _add_point(parser)


def run_evaluate(args) -> int:
    """Share and evaluate one point; merge its rows into the profile's results table."""
    profile = _profile(args)
    plan = _plan(args, profile)
    # the sweep's method names: a re-trained net is shared with k-means++, or fine-tuned ("+ft")
    finetuned = args.source != "pretrained" and args.sharing == "deep_compression"
    label = args.sharing if args.source == "pretrained" else args.source + FINETUNED * finetuned
    if split_method(label)[1] != args.sharing:
        print(f"note: re-trained nets are shared with k-means++ or, with --sharing "
              f"deep_compression, fine-tuned (--sharing {args.sharing} applies to the pre-trained "
              f"net)")  # fmt: skip
    result, rows = run_point(profile, label, plan, args.seed, args.progress)
    add_results(results_path(profile), rows, platform.of_profile(profile))
    kp = describe(plan, pl.pretrain(profile, args.progress)[0])
    print(f"{label} at {plan.label()} (official CR {result['cr']['official']:.2f}, "
          f"{kp}): top-1 before sharing {100 * result['top1_before']:.2f}%, after "
          f"{100 * result['top1']:.2f}%, "
          f"after BN re-estimation {100 * result['top1_bn']:.2f}%")  # fmt: skip
    return 0


def add_sweep(parser):
    """Options of `dkm sweep`."""
    _add_profile(parser)
    smoke = get_profile("smoke")
    parser.add_argument("--methods", default=None,
                        help=f"comma-separated, from: {', '.join(all_methods(smoke))} "
                             f"(the default: the profile's methods) and the opt-in "
                             f"{', '.join(finetuned_methods(smoke))} "
                             f"(re-training, then center fine-tuning)")  # fmt: skip
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: one stage after another in this process (default); "
                             "ray: every stage a Ray task "
                             "(pip install 'deep-kmeans[distributed]')")  # fmt: skip
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="with --engine ray: a running Ray cluster ('auto', "
                             "'ray://HOST:10001'); default: a local Ray on this "
                             "machine")  # fmt: skip
    parser.add_argument("--num-cpus", type=int, default=None, metavar="N",
                        help="with --engine ray and no --address: CPUs of the local Ray "
                             "(default: all)")  # fmt: skip


def _run_grid(args, profile, methods) -> list[dict]:
    """The grid's rows, computed by the chosen engine (the same rows, the same table)."""
    if args.engine == "local":
        if args.address is not None or args.num_cpus is not None:
            raise ValueError("--address and --num-cpus need --engine ray")
        return sweep(profile, methods=methods, progress=args.progress)
    if args.num_cpus is not None:
        check_int("num_cpus", args.num_cpus, 1)
    from dkm.experiments.ray_engine import sweep_ray

    return sweep_ray(profile, methods=methods, address=args.address, num_cpus=args.num_cpus,
                     progress=args.progress)  # fmt: skip


def _sweep_line(top1: dict, bn: dict) -> dict:
    """One line of the printed sweep table from the summaries of top-1 and top-1 after BN."""
    s = top1
    return {
        "method": s["method"],
        "target": s["setting"] if s["setting"] != "uniform" else f"{s['target_cr']:g}",
        "cr": s["cr_official"],
        "K": f"{s['K']:g}",
        "top1": f"{100 * s['mean']:.2f} ± {100 * s['spread']:.2f}",
        "bn": f"{100 * bn['mean']:.2f} ± {100 * bn['spread']:.2f}",
    }


def run_sweep(args) -> int:
    """Run (or read) the whole grid; print the mean ± spread table."""
    profile = _profile(args)
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",")]
    if methods is not None and not any(methods):
        raise ValueError(f"--methods {args.methods!r} names no method: give at least one")
    rows = _run_grid(args, profile, [m for m in methods if m] if methods else None)
    bn = {(s["method"], s["setting"], s["target_cr"]): s for s in summary(rows, "top1_bn")}
    table = [_sweep_line(s, bn[(s["method"], s["setting"], s["target_cr"])])
             for s in summary(rows, "top1")]  # fmt: skip
    columns = ("method", "target", "cr", "K", "top1", "bn")
    headers = ("method", "target", "CR", "K", "top-1 %", "+BN re-est. %")
    print(text_table(table, columns, headers, float_format=".2f"))
    print(f"written: {results_path(profile)}")
    return 0


def add_study(parser):
    """Options of `dkm study`."""
    parser.add_argument(
        "--profile",
        default="cpu",
        choices=list(STUDIES),
        help="the profile whose study runs (cpu: about 2 h on 2 cores)",
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress bars (default: in an interactive terminal)")  # fmt: skip


def run_study(args) -> int:
    """Run (or read) the budget × λ study; print mean ± std of top-1 after BN per arm."""
    profile, grid = profile_and_study(args.profile)
    started = time.perf_counter()
    rows = study.run_study(profile, grid, progress=args.progress)
    lines = [{**s, "lam": "" if s["lam"] is None else f"{s['lam']:g}",
              "top1": f"{100 * s['mean']:.2f} ± {100 * s['std']:.2f}"}
             for s in study.study_summary(rows, "top1_bn")]  # fmt: skip
    columns = ("method", "setting", "epochs", "lam", "n", "top1")
    headers = ("method", "plan", "epochs", "λ", "seeds", "top-1 after BN %")
    print(text_table(lines, columns, headers))
    print(f"written: {study.study_path(profile)} ({time.perf_counter() - started:.0f} s)")
    return 0


# ---------------------------------------------------------------- figures and energy
def add_figures(parser):
    """Options of `dkm figures`."""
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=PROFILE_NAMES,
        help="experiment size: smoke, cpu (default, writes figures/), paper, paper-fmnist",
    )
    parser.add_argument(
        "--only", default=None, metavar="NN,NN", help="run only these notebooks, e.g. 04,05"
    )
    parser.add_argument(
        "--out-dir",
        default=None,
        help="where the executed notebooks go (default build/notebooks/<profile>)",
    )
    parser.add_argument("--fig-dir", default=None,
                        help="where the figures go (default figures/ for cpu, "
                             "build/figures/<profile>/ otherwise)")  # fmt: skip


def _needs_sweep(only) -> bool:
    """Do the notebooks chosen read the sweep's runs (02, 03, 04)?"""
    return any(name[:2] in ("02", "03", "04") for name in notebooks.select_notebooks(only))


def _flushed(line: str) -> None:
    print(line, flush=True)


def run_figures(args) -> int:
    """Run every notebook with papermill; a failing notebook stops with its name and cell (1)."""
    notice = _platform_notice(args.profile)
    if notice:
        print(notice, flush=True)
    try:
        prepare = _needs_sweep(args.only)
        seconds = notebooks.run_all(args.profile, args.only, args.out_dir, args.fig_dir,
                                    log=_flushed, prepare_first=prepare)  # fmt: skip
    except notebooks.NotebookError as err:
        print(f"dkm figures: {err}", file=sys.stderr)
        return 1
    print(f"{len(seconds)} notebooks in {sum(seconds.values()):.0f} s")
    return 0


def _platform_notice(profile_name: str) -> str | None:
    """One plain line when this machine is not the one that computed the profile's table."""
    found = platform.mismatch(results_path(get_profile(profile_name)), get_profile(profile_name))
    if found is None:
        return None
    before, here, diffs = found
    detail = f" ({'; '.join(diffs)})" if before.get("cpu_name") != "unrecorded" else ""
    return (
        f"note: the committed results were computed on {platform.describe(before)}; this machine "
        f"is {platform.describe(here)}{detail}. CPU training is deterministic per numeric path: "
        f"pinned to AVX2 (the default on x86-64, dkm._numerics) whether two CPU types agree is "
        f"not verified; across unpinned CPU types expect other numbers (measured: pre-trained "
        f"top-1 92.45% vs 93.075%, Deep k-Means at the authors' 45x 86.6% vs 83.8%; "
        f"docs/reproducibility.md). Figures and tables will be rewritten."
    )


def add_book(parser):
    """Options of `dkm book`."""
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=PROFILE_NAMES,
        help="whose executed notebooks (build/notebooks/<profile>/, from "
        "`dkm figures`) become the book (default cpu)",
    )
    parser.add_argument("--out-dir", default=None,
                        help="where the site is written (default build/book/)")  # fmt: skip


def run_book(args) -> int:
    """Build the offline HTML book; print its contents page."""
    try:
        index = book.build_book(args.profile, out_dir=args.out_dir)
    except book.BookError as err:
        raise ValueError(str(err)) from None
    print(f"book: {index} (open it in a browser; it works offline)")
    return 0


def add_energy(parser):
    """Options of `dkm energy`."""
    parser.add_argument(
        "--model",
        required=True,
        help="alexnet, googlenet, wrn16-4, a pipeline run directory (data/runs/"
        "pretrain-… or retrain-…), or a checkpoint file saved as {'model': "
        "{'name', 'kwargs'}, 'state_dict', ['input_shape']}",
    )
    parser.add_argument(
        "--bits", default="16", help="weight bit widths, comma-separated (1–32), e.g. 8,16"
    )
    parser.add_argument(
        "--act-bits",
        default=None,
        help="activation bit widths (1–32): one for every --bits value, or one per --bits value, "
        "comma-separated (default: the same as --bits)",
    )
    parser.add_argument(
        "--accelerator",
        default="eyeriss",
        help="the accelerator description (dkm.energy.accelerators): eyeriss (row stationary, "
        "Eyeriss v1; default) or systolic_ws (weight-stationary systolic array, TPU-like)",
    )
    parser.add_argument(
        "--shared",
        default=None,
        help="45x, 47x or 50x (the authors' settings, by layer role), auto "
        "(distinct kernel rows of the weights) or a JSON file {layer: K or [K, p]}",
    )
    parser.add_argument(
        "--input-shape",
        default=None,
        help="C,H,W (default: 3,224,224; 3,32,32 for wrn16-4; a run's image shape)",
    )
    parser.add_argument("--csv", default=None, help="also write the per-layer rows to this CSV")


def _act_bits(text, bits: list) -> list:
    """--act-bits: one width for all weight widths, or one per weight width (default: the same)."""
    if text is None:
        return list(bits)
    act = _ints("act_bits", text, 1, 32)
    if len(act) not in (1, len(bits)):
        raise ValueError(f"act_bits={text!r} is not allowed: give one width, or {len(bits)} "
                         f"(one per --bits value)")  # fmt: skip
    return act * len(bits) if len(act) == 1 else act


# the largest input C·H·W `dkm energy` traces (a 3×4096×4096 image): beyond it the tracing
# allocation alone would take tens of GB
MAX_INPUT_ELEMENTS = 3 * 4096 * 4096


def _input_shape(text):
    """--input-shape C,H,W, each ≥ 1 and C·H·W ≤ MAX_INPUT_ELEMENTS (None: the model's)."""
    if not text:
        return None
    shape = _ints("input_shape", text, 1, 1 << 20)
    if len(shape) != 3 or shape[0] * shape[1] * shape[2] > MAX_INPUT_ELEMENTS:
        raise ValueError(f"--input-shape {text} is not allowed: C,H,W with C·H·W ≤ "
                         f"{MAX_INPUT_ELEMENTS:,} (a 3×4096×4096 image)")  # fmt: skip
    return shape


def _energy_shares(layers: list, shared, net) -> dict:
    """make_shares for --shared; a file that is not a JSON dict is one line naming the option."""
    try:
        return make_shares(layers, shared, net)
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"--shared {shared}: not a JSON file {{layer: K or [K, p]}} ({err})")
    except UnicodeDecodeError:
        raise ValueError(f"--shared {shared}: not a JSON file {{layer: K or [K, p]}} (binary)")


def energy_model(model: str, input_shape=None) -> tuple:
    """(net, input shape) for a model name, a pipeline run directory or a checkpoint file."""
    if model in ("alexnet", "googlenet"):
        net, shape = reference_net(model), ENERGY_MODELS[model]
    elif model == "wrn16-4":
        net, shape = wrn16_4(), ENERGY_MODELS[model]
    elif Path(model).is_dir():
        net, config = pl.load_run(model)
        shape = INPUT_SHAPES.get(root_config(config).get("dataset"))
    elif Path(model).is_file():
        net, shape = load_model_file(model)
    else:
        raise ValueError(f"model={model!r} is not allowed: choose alexnet, googlenet, wrn16-4, "
                         f"a run directory or a checkpoint file")  # fmt: skip
    shape = input_shape or shape
    if shape is None:
        raise ValueError(f"model={model!r} stores no input_shape: pass --input-shape C,H,W")
    return net, tuple(shape)


def _ints(name: str, text: str, lo: int, hi: int) -> list:
    try:
        values = [int(v) for v in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{name}={text!r} is not a comma-separated list of integers") from None
    return [check_int(name, v, lo, hi) for v in values]


def run_energy(args) -> int:
    """Print the per-layer energy table and totals for each bit width (and write --csv)."""
    bits = _ints("bits", args.bits, 1, 32)
    act = _act_bits(args.act_bits, bits)
    accelerator = check_choice("accelerator", args.accelerator, tuple(ACCELERATORS))
    _check_output("--csv", args.csv)
    net, shape = energy_model(args.model, _input_shape(args.input_shape))
    inv = layer_inventory(net, shape)
    shares = _energy_shares(inv.layers, args.shared, net)
    dense = [f"{x.name} (K {shares[x.name].num_clusters} ≥ N {x.kernel_rows})" for x in inv.layers
             if x.name in shares and shares[x.name].num_clusters >= x.kernel_rows]  # fmt: skip
    if dense:
        print(f"kept dense, K ≥ its number of kernel rows: {', '.join(dense)}")
    rows = [
        r for b, a in zip(bits, act) for r in compare_energy(inv.layers, shares, b, a, accelerator)
    ]
    pre = "shared_" if shares else "dense_"
    columns = ["name", "K", "macs", f"{pre}mults"] + [pre + c for c in COMPONENTS + ("total",)]
    columns += ["dense_total", "ratio"] if shares else []
    headers = ["layer"] + [c.replace(pre, "") for c in columns[1:]]
    for b, a in zip(bits, act):
        acts = "" if a == b else f" (activations {a} bits)"
        print(f"\n{args.model} at {b} bits{acts} on {accelerator}, input {shape}, energy in {UNIT} "
              f"(a 16-bit MAC):")  # fmt: skip
        print(
            text_table([r for r in rows if (r["bits"], r["act_bits"]) == (b, a)], columns, headers)
        )
    skipped: dict = {}
    for name, reason in inv.skipped.items():
        skipped.setdefault(reason, []).append(name)
    for reason, names in skipped.items():
        more = ", …" if len(names) > 4 else ""
        print(f"skipped {len(names)} module(s), {reason}: {', '.join(names[:4])}{more}")
    if args.csv is not None:
        with _writing("--csv"):
            write_csv(rows, Path(args.csv))
        print(f"wrote {args.csv}")
    return 0


def add_zigzag(parser):
    """Options of `dkm zigzag`."""
    parser.add_argument(
        "action",
        nargs="?",
        default="reference",
        choices=["reference", "validate"],
        help="reference: run ZigZag per layer (tens of minutes); validate: R² table",
    )
    parser.add_argument("--nets", default=",".join(NETS))
    parser.add_argument("--bits", default="8,16")
    parser.add_argument("--dir", default=None, help="reference directory (default data/reference)")


def run_zigzag(args) -> int:
    """Regenerate the ZigZag reference CSVs, or print and write the R² validation table."""
    nets = [check_choice("nets", n, NETS) for n in args.nets.split(",")]
    bits = _ints("bits", args.bits, 1, 32)
    if args.action == "validate":
        rows = validation_table(nets, bits, args.dir)
        write_csv(rows, common.RESULTS_DIR / "energy_validation.csv")
        print(markdown_table(rows), end="")
        return 0
    for b in bits:
        for n in nets:
            path = zigzag_ref.generate(n, b, args.dir, log=lambda s: print(s, flush=True))
            print("wrote", path, flush=True)
    return 0


# ---------------------------------------------------------------- JupyterLab
def add_lab(parser):
    """Options of `dkm lab`."""
    parser.add_argument("--port", type=int, default=8888, help="port on 127.0.0.1 (default 8888)")
    parser.add_argument(
        "--token", default=None,
        help="access token (default: $DKM_LAB_TOKEN, else a random one; a --token is visible to "
             "other users in `ps`, $DKM_LAB_TOKEN is not)",
    )  # fmt: skip


def lab_command(port: int, as_root: bool) -> list[str]:
    """The JupyterLab command: on the notebooks, bound to 127.0.0.1; as root (a container) with
    --allow-root, which JupyterLab otherwise demands. The token goes in its environment
    ($JUPYTER_TOKEN), never on its command line, which `ps` shows to every user."""
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--ServerApp.root_dir={ROOT / 'notebooks'}"]  # fmt: skip
    return cmd + ["--allow-root"] if as_root else cmd


def _check_port_free(port: int) -> None:
    """A port where something already listens is one line (JupyterLab prints a dozen)."""
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError as err:
            raise ValueError(
                f"--port {port}: 127.0.0.1:{port} is not free ({err.strerror}): choose another "
                f"with --port"
            ) from None


def run_lab(args) -> int:
    """Start JupyterLab on the notebooks and print the URL to open (with its token)."""
    port = check_int("port", args.port, 1, 65535)
    token = args.token or os.environ.get("DKM_LAB_TOKEN") or secrets.token_hex(24)
    if not token.isalnum():
        raise ValueError(f"token={token!r} is not allowed: letters and digits only")
    _check_port_free(port)
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:
        print("running as root (as in a container): JupyterLab starts with --allow-root")
    print(
        f"JupyterLab on 127.0.0.1 only; open http://127.0.0.1:{port}/lab?token={token}", flush=True
    )
    return subprocess.call(lab_command(port, as_root), env={**os.environ, "JUPYTER_TOKEN": token})


# ---------------------------------------------------------------- the parser
COMMANDS = {
    "pretrain": (add_pretrain, run_pretrain, "pre-train the profile's net (cached)"),
    "retrain": (add_retrain, run_retrain, "re-train with the k-means regularizer, or the control"),
    "share": (add_share, run_share, "share a net row-wise; print the per-layer table and CR"),
    "evaluate": (add_evaluate, run_evaluate, "share and evaluate one point; add it to the results"),
    "sweep": (add_sweep, run_sweep, "every method at every plan and seed (the CR-accuracy grid)"),
    "study": (add_study, run_study, "the budget × λ study: equal training for every method"),
    "figures": (add_figures, run_figures, "run every notebook headlessly, regenerate every figure"),
    "book": (add_book, run_book, "the executed notebooks as an offline HTML book (build/book/)"),
    "energy": (add_energy, run_energy, "per-layer energy estimate of a model, dense or shared"),
    "zigzag": (add_zigzag, run_zigzag, "the ZigZag energy reference and its R² validation"),
    "lab": (add_lab, run_lab, "JupyterLab on the notebooks (127.0.0.1, a token; also as root)"),
}


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per command."""
    parser = argparse.ArgumentParser(
        prog="dkm", description="Deep k-Means: re-train, share, measure."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add, run, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        add(p)
        p.set_defaults(_run=run)
    return parser


def main(argv=None) -> int:
    """Parse `argv`, run the command, return its exit status (bad input: 2, one-line message)."""
    args = make_parser().parse_args(argv)
    try:
        if distributed.launched() and args.command not in DATA_PARALLEL:
            raise ValueError(
                f"torchrun runs {' and '.join(DATA_PARALLEL)} data-parallel, not {args.command}: "
                f"run `python -m dkm {args.command}` as one process"
            )
        return int(args._run(args) or 0)
    except (ValueError, TypeError, OSError) as err:  # bad input, or a path that cannot be used
        if distributed.launch_rank() == 0:  # under torchrun every rank fails alike: one line
            print(f"dkm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dkm {args.command}: interrupted", file=sys.stderr)
        return 130
