"""Plans, the per-layer resolution rule, the dense rule, the regularizer from a plan, and the
table formatters, against hand computations."""

import pytest
import torch

from dkm.plans import Plan, conv_index, conv_rows, describe, per_conv, plan_clusters, uniform_plan
from dkm.regularizer import DegenerateRelaxationWarning, KMeansRegularizer
from dkm.rows import conv_layers, num_rows, stays_dense
from dkm.training.models import small_cnn
from dkm.viz.tables import markdown_table, text_table

NAMES = ["conv1", "conv2", "conv3"]


def test_plan_holds_tuples_and_checks_them():
    plan = Plan([2, 3], [0.0, 0.5], setting="45x", target_cr=43.48)
    assert plan.K == (2, 3) and plan.p == (0.0, 0.5)
    assert plan == Plan((2, 3), (0, 0.5), "45x", 43.48) and len({plan, Plan((2, 3), (0, 0.5))}) == 2
    assert plan.label() == "the authors' 45x setting"
    assert Plan((2,), (0.0,), target_cr=16.0).label() == "target CR 16"
    with pytest.raises(ValueError, match="K=0"):
        Plan((0, 3), (0.0, 0.0))
    with pytest.raises(ValueError, match="p=1.0"):
        Plan((2, 3), (0.0, 1.0))
    with pytest.raises(ValueError, match="a plan has 2 K and 1 p"):
        Plan((2, 3), (0.0,))
    with pytest.raises(AttributeError):
        plan.K = (4, 4)  # frozen: a plan is a value (hashable, safe as a cache-key input)


def test_per_conv_resolves_numbers_lists_and_dicts():
    assert per_conv("K", 4, NAMES) == [4, 4, 4]
    assert per_conv("p", None, NAMES, default=0.0) == [0.0, 0.0, 0.0]
    assert per_conv("K", [2, 3, 4], NAMES) == [2, 3, 4]
    assert per_conv("K", {"conv3": 5, 0: 2}, NAMES) == [2, None, 5]
    with pytest.raises(ValueError, match="K has 2 entries but the net has 3 conv layers"):
        per_conv("K", [2, 3], NAMES)
    with pytest.raises(ValueError, match="K: unknown layer name 'fc'"):
        per_conv("K", {"fc": 2}, NAMES)
    with pytest.raises(ValueError, match="K layer index=3"):
        per_conv("K", {3: 2}, NAMES)
    with pytest.raises(TypeError, match="K must be a number, a list"):
        per_conv("K", "4", NAMES)
    assert conv_index("exclude", "conv2", NAMES) == 1 and conv_index("exclude", 2, NAMES) == 2


@pytest.mark.parametrize(
    "k,n,dense", [(1, 24, False), (23, 24, False), (24, 24, True), (30, 24, True)]
)
def test_stays_dense_is_k_at_least_n(k, n, dense):
    assert stays_dense(k, n) is dense


def test_uniform_plan_and_plan_clusters_cap_k_at_n():
    net = small_cnn(width=2)  # conv1: 2·1·3 = 6 kernel rows
    rows = [num_rows(m.weight.shape) for _, m in conv_layers(net)]
    assert conv_rows(net) == rows and rows[0] == 6
    assert uniform_plan(net, 8).K == tuple(min(8, n) for n in rows)
    plan = plan_clusters(net, 4.0)
    assert plan.target_cr == 4.0 and plan.estimated_cr >= 4.0 and plan.setting == "uniform"
    assert all(k <= n for k, n in zip(plan.K, rows))


def test_regularizer_from_plan_skips_dense_layers_and_takes_p_for_the_indicator_only():
    torch.manual_seed(0)
    net = small_cnn(width=2)  # conv1 has 6 rows: K = 6 leaves it dense, so it is not regularized
    plan = Plan((6, 3, 4, 5), (0.5, 0.25, 0.0, 0.5))
    reg = KMeansRegularizer.from_plan(net, 0.5, plan, "indicator")
    assert reg.layer_names == ["conv2", "conv3", "conv4"]
    assert reg.num_clusters == {"conv2": 3, "conv3": 4, "conv4": 5}
    by_hand = KMeansRegularizer(
        net, 0.5, {"conv2": 3, "conv3": 4, "conv4": 5}, mode="indicator",
        layers=["conv2", "conv3", "conv4"], p={"conv2": 0.25, "conv3": 0.0, "conv4": 0.5},
    )  # fmt: skip
    assert torch.equal(reg.penalty(), by_hand.penalty())
    with pytest.warns(DegenerateRelaxationWarning):  # K ≥ 3 = s on kernel rows
        spectral = KMeansRegularizer.from_plan(net, 0.5, plan, "spectral")
    assert [layer.p for layer in spectral._layers] == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="plan has 2 K for the net's 4 convs"):
        KMeansRegularizer.from_plan(net, 0.5, Plan((3, 3), (0.0, 0.0)))


def test_text_and_markdown_tables_by_hand():
    rows = [{"name": "conv1", "K": 3, "cr": 2.5}, {"name": "fc", "K": None, "cr": 10.0}]
    assert text_table(rows, ["name", "K", "cr"], ["layer", "K", "CR"]).split("\n") == [
        "layer  K   CR",
        "conv1  3  2.5",
        "fc     -   10",
    ]
    assert markdown_table(rows) == (
        "| name | K | cr |\n|---|---|---|\n| conv1 | 3 | 2.5 |\n| fc |  | 10 |\n"
    )
    assert text_table([], ["name", "K"]) == "name  K"
    assert markdown_table([], ["a"]) == "| a |\n|---|\n"
    with pytest.raises(ValueError, match="needs columns="):
        markdown_table([])


def test_describe_and_label_name_the_plan():
    net = small_cnn(width=2)  # convs of 6, 24, 48, 96 kernel rows
    plan = Plan((6, 3, 7, 7), (0.0, 0.0, 0.5, 0.9), "rd", 12.0)
    assert describe(plan, net) == "K 3–7, p 0–0.9 in 3 of 4 convs"  # conv1 (K = N) stays dense
    assert plan.label() == "the rd planner at target CR 12"
    assert describe(Plan((6, 24, 48, 96), (0.0,) * 4), net) == "every one of the 4 convs dense"
    assert describe(Plan((2,) * 4, (0.0,) * 4), net) == "K 2, p 0 in 4 of 4 convs"
