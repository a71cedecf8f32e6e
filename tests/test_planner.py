"""The rate–distortion planner (dkm.planner) against brute force, dkm.sharing and the accounting."""

import itertools

import pytest
import torch

from dkm.accounting import compression_ratio
from dkm.planner import layer_options, rd_plan
from dkm.plans import ROLES
from dkm.rows import conv_layers
from dkm.sharing import share
from dkm.training.models import small_cnn, wide_resnet

SMALL = dict(ks=(2, 3, 5), ps=(0.0, 0.5))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return small_cnn(width=4)  # convs of 12, 48, 96 and 192 kernel rows


@pytest.fixture(scope="module")
def options(net):
    return layer_options(net, **SMALL)


def test_option_errors_are_those_of_sharing(net, options):
    rows = [conv.weight.detach().reshape(-1, 3) for _, conv in conv_layers(net)]
    for i, opts in enumerate(options):
        assert opts[0] == {"K": rows[i].shape[0], "p": 0.0, "bits": opts[0]["bits"], "error": 0.0}
        name = conv_layers(net)[i][0]
        for o in opts[1:3] + opts[-1:]:
            shared = small_cnn(width=4)
            shared.load_state_dict(net.state_dict())
            share(shared, {name: o["K"]}, {name: o["p"]}, kmeans_seed=1000)  # conv i: seed 1000 + i
            w = conv_layers(shared)[i][1].weight.detach().reshape(-1, 3)
            err = float(((w - rows[i]).double() ** 2).sum() / (rows[i].double() ** 2).sum())
            assert o["error"] == pytest.approx(err, rel=1e-6, abs=1e-12)


def test_plan_reaches_the_target_and_sharing_reaches_it_too(net, options):
    for target in (3.0, 6.0, 9.0):
        plan = rd_plan(net, target, options)
        assert plan.setting == "rd" and plan.target_cr == target and plan.estimated_cr >= target
        shared = small_cnn(width=4)
        shared.load_state_dict(net.state_dict())
        result = share(shared, plan, kmeans_seed=1000)
        # real usage has at most the entropy of the estimate (dominant cluster exactly ⌊N·p⌋ rows)
        assert compression_ratio(shared, result, "official") >= plan.estimated_cr - 1e-9


def test_lagrangian_plan_is_optimal_for_its_own_bits_by_brute_force(net, options):
    """Everett (1963): no choice of options with at most the plan's bits has a lower error sum."""
    for target in (3.0, 6.0):
        plan = rd_plan(net, target, options)
        chosen = [next(o for o in opts if (o["K"], o["p"]) == (k, p))
                  for opts, k, p in zip(options, plan.K, plan.p)]  # fmt: skip
        bits, error = sum(o["bits"] for o in chosen), sum(o["error"] for o in chosen)
        best = min(
            sum(o["error"] for o in combo)
            for combo in itertools.product(*options)
            if sum(o["bits"] for o in combo) <= bits
        )
        assert error <= best + 1e-12


def test_higher_targets_take_fewer_bits(net, options):
    plans = [rd_plan(net, t, options) for t in (2.0, 4.0, 8.0)]
    crs = [p.estimated_cr for p in plans]
    assert crs == sorted(crs) and crs[0] >= 2.0


def test_unreachable_target_names_the_parameter(net, options):
    with pytest.raises(
        ValueError, match=r"target_cr=1000 is not reachable with the planner's grid"
    ):
        rd_plan(net, 1000, options)
    with pytest.raises(ValueError, match="target_cr=1"):
        rd_plan(net, 1.0, options)


def test_stage1_shortcut_gives_wrn16_1_the_authors_sixteen_convs():
    plain = wide_resnet(16, 1, in_channels=1)
    with_shortcut = wide_resnet(16, 1, in_channels=1, stage1_shortcut=True)
    assert len(conv_layers(plain)) == 15
    assert tuple(n for n, _ in conv_layers(with_shortcut)) == ROLES
    assert with_shortcut.stage1[0].shortcut.weight.shape == (16, 16, 1, 1)
    assert with_shortcut(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(TypeError, match="stage1_shortcut='yes'"):
        wide_resnet(16, 1, stage1_shortcut="yes")
