"""What sharing saves: the split into row reuse and weight storage against recomputations with one
effect switched off, and the committed table against a fresh one."""

import csv

import pytest

from dkm import energy as en
from dkm.energy import metric
from dkm import plans as authors
from dkm.energy.inventory import layer_inventory
from dkm.experiments import energy_savings as es
from dkm.training.models import wrn16_4

WRN = layer_inventory(wrn16_4(), (3, 32, 32)).layers


@pytest.mark.parametrize("accelerator", ["eyeriss", "systolic_ws"])
@pytest.mark.parametrize("bits", [8, 16])
def test_split_against_one_effect_at_a_time(monkeypatch, accelerator, bits):
    plan = authors.authors_plan(wrn16_4(), "45x")
    row = es.plan_row("wrn16-4", WRN, plan, bits, accelerator=accelerator)
    assert row["saved_reuse"] + row["saved_storage"] == pytest.approx(
        row["dense_total"] - row["shared_total"], rel=1e-12
    )
    dense = row["dense_total"]
    # weights stored densely: only row reuse is left
    monkeypatch.setattr(metric, "weight_storage_bits", lambda layer, b, share: layer.weights * b)
    reuse_only = es.plan_row("wrn16-4", WRN, plan, bits, accelerator=accelerator)["shared_total"]
    assert dense - reuse_only == pytest.approx(row["saved_reuse"], rel=1e-9)
    monkeypatch.undo()
    # every product computed: only the smaller storage is left
    monkeypatch.setattr(metric, "shared_mults", lambda layer, share: float(layer.macs))
    storage_only = es.plan_row("wrn16-4", WRN, plan, bits, accelerator=accelerator)["shared_total"]
    assert dense - storage_only == pytest.approx(row["saved_storage"], rel=1e-9)


def test_committed_table_is_reproduced_without_the_planner():
    committed = list(csv.DictReader(open(es.RESULT)))
    fresh = es.savings_table(accelerators=("eyeriss", "systolic_ws"), planner=False)
    by_key = {(r["net"], r["plan"], int(r["bits"]), r["accelerator"]): r for r in committed}
    assert len(fresh) == 8 * 2 * 2 and len(committed) == len(fresh) + 4 * 2 * 2  # + 4 rd plans
    for f in fresh:
        c = by_key[f["net"], f["plan"], f["bits"], f["accelerator"]]
        for k in ("dense_total", "shared_total", "saved_reuse", "saved_storage", "shared_mults"):
            assert float(c[k]) == pytest.approx(f[k], rel=1e-12), k
    planner = [r for r in committed if r["setting"] == "rd"]
    assert all(1.0 < float(r["ratio"]) and float(r["cr"]) > 15 for r in planner)


def test_sharing_never_costs_energy_and_k_equal_n_saves_nothing():
    for r in csv.DictReader(open(es.RESULT)):
        assert float(r["shared_total"]) < float(r["dense_total"])
        assert float(r["shared_mults"]) < float(r["dense_mults"])
    # K = N rows in every conv: each layer left as is (the authors' convention), nothing saved
    shares = {x.name: en.Share(x.kernel_rows) for x in WRN if x.kind == "conv"}
    saving = es.split_saving(en.compare_energy(WRN, shares, 8)[-1])
    assert saving["saved_reuse"] == 0 and saving["saved_storage"] == 0
