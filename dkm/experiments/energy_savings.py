"""What row-wise sharing saves in energy (paper §4): from row reuse, from smaller weight storage.

The split is exact, by component, for every accelerator of `dkm.energy.accelerators`:
- row reuse (fewer distinct products) changes the multiplications and the register-file reads
  only: arith (mults·w·a) and rf (weight and input reads at `mults`, plus the reused products read
  back) — saved_reuse = Δarith + Δrf;
- smaller weight storage (indexes + codebook) changes the width of the weight traffic above the
  register file only: saved_storage = Δarray + Δbuffer + Δdram (inputs and psums are unchanged).

The energy of a plan depends on the layer shapes, K and the cluster usage (p) only, not on the
trained weights, so a net from a seeded initialization (or on the meta device) gives the same
counts as a trained one; and every method shares the same K and p at a plan, so one row stands for
every method at that CR (the metric uses the expected usage of the plan, not a method's real one).

    python -m dkm.experiments.energy_savings    # writes data/results/energy_savings.csv (about 30
    s)
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import torch

from dkm import plans as authors
from dkm.energy.inventory import layer_inventory
from dkm.energy.metric import COMPONENTS, compare_energy
from dkm.energy.shares import plan_shares
from dkm.experiments.planning import plans_of
from dkm.experiments.profiles import get_profile
from dkm.planner import layer_options
from dkm.training.data import INPUT_SHAPES
from dkm.training.models import build_model, wrn16_4

REUSE, STORAGE = ("arith", "rf"), ("array", "buffer", "dram")


def split_saving(total: dict) -> dict:
    """The TOTAL row of `compare_energy` → saving by component, from row reuse, from storage."""
    saved = {c: total[f"dense_{c}"] - total[f"shared_{c}"] for c in COMPONENTS}
    return {
        **{f"saved_{c}": saved[c] for c in COMPONENTS},
        "saved_reuse": sum(saved[c] for c in REUSE),
        "saved_storage": sum(saved[c] for c in STORAGE),
    }


def plan_row(net_name: str, layers: list, plan, bits: int, act_bits=None, accelerator="eyeriss"):
    """Dense vs shared energy of one plan on one net, by component, and the split of the saving."""
    total = compare_energy(layers, plan_shares(layers, plan), bits, act_bits, accelerator)[-1]
    dense, shared = total["dense_total"], total["shared_total"]
    return {
        "net": net_name,
        "plan": plan.label(),
        "setting": plan.setting,
        "cr": round(plan.estimated_cr, 2),
        "bits": bits,
        "act_bits": act_bits or bits,
        "accelerator": total["accelerator"],
        "dense_mults": total["dense_mults"],
        "shared_mults": total["shared_mults"],
        **{f"{v}_{c}": total[f"{v}_{c}"] for v in ("dense", "shared") for c in COMPONENTS},
        "dense_total": dense,
        "shared_total": shared,
        "ratio": dense / shared,
        **split_saving(total),
    }


def profile_plans(profile_name: str = "cpu", seed: int = 0, planner: bool = True) -> tuple:
    """(name, layers, plans) of a profile's net from a seeded init: uniform K at its CR targets, the
    authors' settings, and (planner=True) the rate–distortion plans at its targets."""
    profile = get_profile(profile_name)
    torch.manual_seed(seed)
    net = build_model(profile.model, **profile.model_kwargs)
    if not planner:
        profile = dataclasses.replace(profile, rd_targets=())
    options = layer_options(net, 1000 + seed) if profile.rd_targets else None
    plans = plans_of(profile, net, options)
    name = f"{profile.model} ({profile_name} profile)"
    return name, layer_inventory(net, INPUT_SHAPES[profile.dataset]).layers, plans


def savings_table(profile_name="cpu", bits=(8, 16), accelerators=("eyeriss",), planner=True):
    """Rows of `plan_row`: the profile's net (seeded init) at its plans, WRN-16-4 at the authors'
    settings (shapes only), at each bit width and accelerator."""
    name, layers, plans = profile_plans(profile_name, planner=planner)
    wrn = wrn16_4()
    wrn_layers = layer_inventory(wrn, (3, 32, 32)).layers
    wrn_plans = [authors.authors_plan(wrn, s) for s in authors.SETTINGS]
    jobs = [(name, layers, plans), ("wrn16-4", wrn_layers, wrn_plans)]
    return [
        plan_row(net, lays, plan, b, None, acc)
        for net, lays, ps in jobs
        for plan in ps
        for acc in accelerators
        for b in bits
    ]


RESULT = Path(__file__).resolve().parents[2] / "data" / "results" / "energy_savings.csv"


def main() -> int:
    """Write data/results/energy_savings.csv (cpu profile and WRN-16-4, eyeriss and systolic_ws)."""
    from dkm.energy.references.zigzag import write_csv

    torch.set_num_threads(1)  # k-means of the planner: deterministic
    write_csv(savings_table(accelerators=("eyeriss", "systolic_ws")), RESULT)
    print("wrote", RESULT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
