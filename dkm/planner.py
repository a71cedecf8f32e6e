"""A planner that uses the dominant cluster: per-conv (K, p) for any target CR, by rate–distortion.

The rule (stated, fitted to nothing). Each conv l takes one option o from a grid — dense, or a K
of `K_GRID` below its N with a dominant-cluster fraction p of `P_GRID` — so that the sum over the
convs of the relative k-means error

    D_l(o) = ‖rows_l − codebook[assignments]‖² / ‖rows_l‖²    (k-means of the pre-trained rows)

is least while the net's bits give the target CR (official convention, uniform usage of the
non-dominant clusters: the bound `dkm.plans.estimated_cr` uses; the real CR after sharing is
higher). The budget is met by Lagrangian relaxation (Everett 1963; Shoham & Gersho 1988): for a
multiplier μ each conv on its own takes the option of least D_l(o) + μ·bits_l(o), and μ is bisected
to the smallest value whose plan reaches the target.

Why relative error, each conv counted once: batch norm follows every conv, so a conv's output
does not depend on the scale of its weights; what sharing changes is the error relative to ‖W‖².
Nothing of the authors' pattern is put in; what comes out depends on the CR. Large convs save
the most bits per unit of error, so they get the smallest K, and at high CRs a large p (on the cpu
profile at CR 60: p = 0.9 in the four largest convs, like the authors' K = 7, p = 0.9); at moderate
CRs it prefers K = 2 without a dominant cluster there, and small convs keep larger K.
"""

from __future__ import annotations

from torch import nn

from dkm._checks import check_float
from dkm.accounting import get_convention, table_from_specs
from dkm.clustering import kmeans
from dkm.plans import Plan, estimated_cr, layer_specs
from dkm.rows import conv_layers, num_rows, stays_dense, to_rows

K_GRID = (2, 3, 4, 5, 7, 10, 14, 20, 28, 40, 56, 80, 112, 160, 224)
P_GRID = (0.0, 0.3, 0.5, 0.75, 0.9)
SETTING = "rd"  # the Plan.setting of this planner's plans


def _conv_bits(spec: dict, k: int, p: float, convention) -> float:
    """Bits of one conv spec stored with (K, p) (K = N: dense), by dkm.accounting's table."""
    return table_from_specs([spec], {"K": [k], "p": [p]}, convention)[0]["compressed_bits"]


def layer_options(
    net: nn.Module, kmeans_seed: int = 1000, convention="official", ks=K_GRID, ps=P_GRID
):
    """Per conv, its options [{"K", "p", "bits", "error"}]: dense first, then every (K, p).

    "error" is the relative k-means error of the conv's kernel rows (k-means++ from seed
    `kmeans_seed + conv index`, as `dkm.sharing.share` clusters: seed 1000 is the sharing of run
    seed 0); dense has error 0.
    """
    convs = conv_layers(net)
    specs = [s for s in layer_specs(net) if s["kind"] == "conv"]
    out = []
    for i, ((_, conv), spec) in enumerate(zip(convs, specs)):
        rows = to_rows(conv.weight.detach())
        n, total = num_rows(conv.weight.shape), float((rows.double() ** 2).sum())
        options = [{"K": n, "p": 0.0, "bits": _conv_bits(spec, n, 0.0, convention), "error": 0.0}]
        for k in (k for k in ks if not stays_dense(k, n)):
            for p in (p for p in ps if p == 0 or 1 <= int(n * p) <= n - (k - 1)):
                inertia = kmeans(rows, k, p=p, seed=kmeans_seed + i).inertia
                bits = _conv_bits(spec, k, p, convention)
                options.append({"K": k, "p": p, "bits": bits, "error": inertia / total})
        out.append(options)
    return out


def _choose(options: list, mu: float) -> list[dict]:
    """Each conv's option of least error + μ·bits (ties: fewer bits)."""
    return [min(opts, key=lambda o: (o["error"] + mu * o["bits"], o["bits"])) for opts in options]


def _cr(specs: list, chosen: list, convention) -> float:
    """The estimated CR (`dkm.plans.estimated_cr`) of the chosen options."""
    return estimated_cr(specs, [o["K"] for o in chosen], [o["p"] for o in chosen], convention)


def rd_plan(
    net: nn.Module, target_cr: float, options=None, convention="official", kmeans_seed=1000
) -> Plan:
    """The rate–distortion plan reaching `target_cr` (see the module docstring).

    `options` (from `layer_options(net, kmeans_seed, convention)`) can be passed to plan several
    targets from one set of k-means runs.
    """
    target_cr = check_float("target_cr", target_cr, 1.0, lo_open=True)
    name = get_convention(convention).name
    options = options if options is not None else layer_options(net, kmeans_seed, convention)
    specs = layer_specs(net)
    best = _cr(specs, _choose(options, float("inf")), convention)
    if best < target_cr:
        raise ValueError(
            f"target_cr={target_cr:g} is not reachable with the planner's grid under convention "
            f"{name!r}: allowed at most {best:.2f} (K={min(K_GRID)}, p={max(P_GRID)})"
        )
    lo, hi = 0.0, 1.0
    while _cr(specs, _choose(options, hi), convention) < target_cr:
        hi *= 4.0
    for _ in range(80):  # bisection on μ: the CR of the chosen options grows with μ
        mid = (lo + hi) / 2
        lo, hi = (
            (lo, mid) if _cr(specs, _choose(options, mid), convention) >= target_cr else (mid, hi)
        )
    chosen = _choose(options, hi)
    ks, ps = [o["K"] for o in chosen], [o["p"] for o in chosen]
    return Plan(ks, ps, SETTING, target_cr, _cr(specs, chosen, convention), name)
