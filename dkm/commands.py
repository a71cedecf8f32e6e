"""Pipeline subcommands of `python -m dkm`: pretrain, retrain, share, evaluate, sweep (each with --help)."""

from __future__ import annotations

import argparse
import copy

from . import pipeline as pl
from .accounting import OFFICIAL_SETTINGS
from .plan import official_plan
from .profiles import PROFILES, get_profile
from .sweep import (
    FINETUNED,
    _rows,
    finetuned_methods,
    methods_of,
    results_path,
    split_method,
    summary,
    sweep,
    write_results,
)

SOURCES = pl.SOURCES


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--profile",
        default="cpu",
        choices=list(PROFILES),
        help="experiment size: smoke (seconds), cpu (default, minutes), paper (GPU)",
    )
    parser.add_argument(
        "--lam",
        type=float,
        default=None,
        help="λ of the k-means regularizer (default: the profile's)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: only in an interactive terminal)",
    )


def _target(parser) -> None:
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument(
        "--target-cr",
        type=float,
        help="target compression ratio (official convention): one uniform K",
    )
    where.add_argument(
        "--official",
        choices=OFFICIAL_SETTINGS,
        help="the authors' per-layer K and p instead of --target-cr (WRN-16-4 only, e.g. --profile paper)",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of re-training and sharing (default 0)"
    )


def _plan(args, profile) -> dict:
    """The per-layer K (and p) of --target-cr or --official, for the profile's pre-trained net."""
    net = pl.pretrain(profile, args.progress)[0]
    if args.official:
        return official_plan(net, args.official)
    return pl.plan_clusters(net, args.target_cr, p=profile.p)


def _profile(args):
    return get_profile(args.profile, **({} if args.lam is None else {"lam": args.lam}))


def _where(plan: dict) -> str:
    return (
        f"target CR {plan['target_cr']:g}"
        if plan["setting"] == "uniform"
        else f"the authors' {plan['setting']} setting"
    )


def build_pretrain(parser):
    _common(parser)


def run_pretrain(args) -> int:
    profile = _profile(args)
    net, config = pl.pretrain(profile, args.progress)
    acc = pl.evaluate(net, pl.datasets(profile)[1])["accuracy"]
    print(
        f"pre-trained {profile.model} ({profile.name}): top-1 {100 * acc:.2f}%  [{pl.run_dir('pretrain', config)}]"
    )
    return 0


def build_retrain(parser):
    _common(parser)
    parser.add_argument(
        "--method",
        choices=pl.RETRAIN_METHODS,
        default="dkm",
        help="dkm (regularized) or plain (control)",
    )
    parser.add_argument(
        "--mode",
        choices=("indicator", "spectral"),
        default="indicator",
        help="F of the regularizer",
    )
    _target(parser)


def run_retrain(args) -> int:
    profile = _profile(args)
    plan = _plan(args, profile)
    source = "plain" if args.method == "plain" else f"dkm-{args.mode}"
    net, config = pl.source_net(profile, source, plan, args.seed, args.progress)
    acc = pl.evaluate(net, pl.datasets(profile)[1])["accuracy"]
    print(
        f"re-trained ({source}, K={max(plan['K'])}): top-1 before sharing {100 * acc:.2f}%  "
        f"[{pl.run_dir('retrain', config)}]"
    )
    return 0


def build_share(parser):
    _common(parser)
    parser.add_argument(
        "--source", choices=SOURCES, default="pretrained", help="which net to share"
    )
    parser.add_argument(
        "--method", choices=list(pl.SHARE_INITS), default="kmeans", help="sharing method"
    )
    _target(parser)
    parser.add_argument(
        "--export", metavar="PATH", help="also write the shared model to a compact file"
    )


def run_share(args) -> int:
    from .accounting import CONVENTIONS, compression_ratio, compression_table
    from .export import save_shared, size_report
    from .sharing import share

    profile = _profile(args)
    plan = _plan(args, profile)
    net, _ = pl.source_net(profile, args.source, plan, args.seed, args.progress)
    net = copy.deepcopy(net)
    shared = share(
        net,
        num_clusters=plan["K"],
        p=plan["p"],
        init=pl.SHARE_INITS[args.method],
        seed=1000 + 100 * args.seed,
    )
    print(_format_table(compression_table(net, shared, "official")))
    for name, reason in shared.skipped.items():
        print(f"skipped {name}: {reason}")
    print("CR: " + ", ".join(f"{c} {compression_ratio(net, shared, c):.2f}" for c in CONVENTIONS))
    if args.export:
        print(size_report(save_shared(net, shared, args.export)))
    return 0


def _format_table(rows: list[dict]) -> str:
    cols = ("name", "kind", "K", "N", "s", "bits_index_per_row", "cr")
    lines = ["  ".join(f"{c:>18s}" if i == 0 else f"{c:>10s}" for i, c in enumerate(cols))]
    for r in rows:
        cells = ["-" if r.get(c) is None else r[c] for c in cols]
        lines.append(
            "  ".join(
                f"{str(v):>18s}"
                if i == 0
                else (f"{v:>10.3g}" if isinstance(v, float) else f"{str(v):>10s}")
                for i, v in enumerate(cells)
            )
        )
    return "\n".join(lines)


def build_evaluate(parser):
    build_share(parser)


def run_evaluate(args) -> int:
    profile = _profile(args)
    plan = _plan(args, profile)
    net, config = pl.source_net(profile, args.source, plan, args.seed, args.progress)
    # the sweep's method names: a re-trained net is shared with k-means++, or fine-tuned ("+ft")
    label = (
        args.method
        if args.source == "pretrained"
        else args.source + (FINETUNED if args.method == "deep_compression" else "")
    )
    method = split_method(label)[1]
    if method != args.method:
        print(
            f"note: re-trained nets are shared with k-means++ or, with --method deep_compression, fine-tuned "
            f"(--method {args.method} applies to the pre-trained net)"
        )
    result = pl.share_and_evaluate(profile, net, config, method, plan, args.seed, args.progress)
    key = pl.config_key(pl.evaluation_config(profile, config, method, plan, args.seed))
    lam = profile.lam if args.source.startswith("dkm") else None
    write_results(results_path(profile), _rows(profile, label, plan, args.seed, key, result, lam))
    print(
        f"{label} at {_where(plan)} (official CR {result['cr']['official']:.2f}, K={max(plan['K'])}): "
        f"top-1 before sharing {100 * result['top1_before']:.2f}%, after {100 * result['top1']:.2f}%, "
        f"after BN re-estimation {100 * result['top1_bn']:.2f}%"
    )
    return 0


def build_sweep(parser):
    _common(parser)
    parser.add_argument(
        "--methods",
        default=None,
        help=f"comma-separated, from: {', '.join(methods_of(get_profile('smoke')))} (the default: all of "
        f"these) and the opt-in {', '.join(finetuned_methods(get_profile('smoke')))} "
        f"(re-training, then center fine-tuning)",
    )


def run_sweep(args) -> int:
    profile = _profile(args)
    methods = (
        None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    )
    rows = sweep(profile, methods=methods, progress=args.progress)
    print(
        f"{'method':18s} {'target':>7s} {'CR':>7s} {'K':>5s} {'top-1 %':>16s} {'+BN re-est. %':>16s}"
    )
    bn = {(s["method"], s["setting"], s["target_cr"]): s for s in summary(rows, "top1_bn")}
    for s in summary(rows, "top1"):
        b = bn[(s["method"], s["setting"], s["target_cr"])]
        target = f"{s['target_cr']:g}" if s["setting"] == "uniform" else s["setting"]
        print(
            f"{s['method']:18s} {target:>7s} {s['cr_official']:7.2f} {s['K']:5g} "
            f"{100 * s['mean']:9.2f} ± {100 * s['spread']:4.2f} {100 * b['mean']:9.2f} ± {100 * b['spread']:4.2f}"
        )
    print(f"written: {results_path(profile)}")
    return 0
