"""The command line: `python -m dkm <subcommand> --help` (also installed as `dkm`).

Each subcommand lives next to the code it drives: its module provides a function that adds the
options to an argparse parser and a function that runs it and returns the exit status.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, parser builder, runner, one-line help)
SUBCOMMANDS = {
    "pretrain": (
        "dkm.commands",
        "build_pretrain",
        "run_pretrain",
        "pre-train the profile's net (cached)",
    ),
    "retrain": (
        "dkm.commands",
        "build_retrain",
        "run_retrain",
        "re-train with the k-means regularizer, or the plain control",
    ),
    "share": (
        "dkm.commands",
        "build_share",
        "run_share",
        "share a net row-wise; print the per-layer table and CR",
    ),
    "evaluate": (
        "dkm.commands",
        "build_evaluate",
        "run_evaluate",
        "share and evaluate one configuration; append it to the results",
    ),
    "sweep": (
        "dkm.commands",
        "build_sweep",
        "run_sweep",
        "every method at every target CR and seed (the CR-accuracy grid)",
    ),
    "figures": (
        "dkm.figures",
        "build_parser",
        "cli_main",
        "run every notebook headlessly and regenerate every figure (figures/ for cpu)",
    ),
    "energy": (
        "dkm.energy_cli",
        "build_parser",
        "cli_main",
        "per-layer energy estimate of a model, dense or shared",
    ),
}


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(
        prog="dkm", description="Deep k-Means: re-train, share, measure."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, build, run, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        getattr(importlib.import_module(module), build)(p)
        p.set_defaults(_run=(module, run))
    return parser


def main(argv=None) -> int:
    """Parse `argv`, run the subcommand, return its exit status (errors: status 2 with a one-line message)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        module, run = args._run
        return int(getattr(importlib.import_module(module), run)(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"dkm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dkm {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from . import __version__

    return __version__
