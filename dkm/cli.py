"""The command line: `python -m dkm <subcommand> --help` (also installed as `dkm`).

Each subcommand lives next to the code it drives: its module provides
`build_parser(parser)` (adds the options) and `cli_main(args) -> int` (exit status).
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
SUBCOMMANDS = {
    "energy": ("dkm.energy", "per-layer energy estimate of a model, dense or shared"),
}


def make_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per subcommand."""
    parser = argparse.ArgumentParser(prog="dkm", description="Deep k-Means: re-train, share, measure.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        importlib.import_module(module).build_parser(p)
        p.set_defaults(_module=module)
    return parser


def main(argv=None) -> int:
    """Parse `argv`, run the subcommand, return its exit status (errors: status 2 with a one-line message)."""
    parser = make_parser()
    args = parser.parse_args(argv)
    try:
        return int(importlib.import_module(args._module).cli_main(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as err:
        print(f"dkm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"dkm {args.command}: interrupted", file=sys.stderr)
        return 130


def _version() -> str:
    from . import __version__
    return __version__
