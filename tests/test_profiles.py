"""`paper-fmnist`: the paper's WRN-16-4 and schedules on Fashion-MNIST, beside `paper`."""

import dataclasses

import pytest
import torch

from dkm import plans as authors
from dkm.experiments import pipeline as pl
from dkm.experiments.cache import config_key
from dkm.experiments.profiles import PROFILES, get_profile
from dkm.plans import Plan
from dkm.rows import conv_layers, num_rows
from dkm.training.models import build_model


def _net(profile):
    with torch.device("meta"):
        return build_model(profile.model, **profile.model_kwargs)


def test_paper_fmnist_is_paper_on_fashion_mnist_and_nothing_else():
    paper, fmnist = get_profile("paper").asdict(), get_profile("paper-fmnist").asdict()
    differ = {k for k in paper if paper[k] != fmnist[k]}
    assert differ == {"name", "dataset", "model_kwargs", "description"}
    assert fmnist["dataset"] == "fashion_mnist" and fmnist["model_kwargs"]["in_channels"] == 1
    assert {**fmnist["model_kwargs"], "in_channels": 3} == paper["model_kwargs"]
    pre = get_profile("paper-fmnist").pretrain  # the paper's §5 schedule
    assert (pre.epochs, pre.schedule, pre.milestones) == (200, "step", (60, 120, 160))
    assert get_profile("paper-fmnist").retrain.epochs == 30
    assert get_profile("paper-fmnist").official_settings == authors.SETTINGS


def test_paper_fmnist_convs_are_the_authors_roles_and_shapes():
    convs = conv_layers(_net(get_profile("paper-fmnist")))
    assert tuple(name for name, _ in convs) == authors.ROLES
    for (name, conv), layer in zip(convs, authors.load_reference()["layers"], strict=True):
        c_in = 1 if name == "conv1" else layer["in"]  # one grey channel instead of RGB
        assert (conv.in_channels, conv.out_channels, conv.kernel_size[0]) == (
            c_in, layer["out"], layer["k"],
        ), name  # fmt: skip
        assert conv.bias is not None, name  # the authors' convs have a bias


@pytest.mark.parametrize("setting", authors.SETTINGS)
def test_authors_settings_apply_by_role_on_paper_fmnist(setting):
    net = _net(get_profile("paper-fmnist"))
    plan, by_role = authors.authors_plan(net, setting), authors.setting(setting)
    for (name, conv), k, q in zip(conv_layers(net), plan.K, plan.p, strict=True):
        n = num_rows(conv.weight.shape)
        want_k, want_p = by_role[name]
        assert (k, q) == ((n, 0.0) if want_k >= n else (want_k, want_p)), name
    # conv1 has 16·1·3 = 48 rows here (144 on CIFAR-10): dense in both, so the CR is close
    paper_cr = authors.authors_plan(_net(get_profile("paper")), setting).target_cr
    assert plan.target_cr == pytest.approx(paper_cr, rel=0.01)


def test_paper_fmnist_cache_keys_differ_from_papers():
    paper, fmnist = get_profile("paper"), get_profile("paper-fmnist")
    plan = Plan([8] * len(authors.ROLES), [0.0] * len(authors.ROLES))
    for config in (
        pl.pretrain_config,
        lambda p: pl.retrain_config(p, "plain", 0),
        lambda p: pl.retrain_config(p, "dkm", 0, plan, "spectral"),
        lambda p: pl.evaluation_config(p, pl.pretrain_config(p), "kmeans", plan, 0),
    ):
        assert config_key(config(paper)) != config_key(config(fmnist))


def test_every_profile_is_registered_and_accepted_by_the_command_line():
    from dkm.app.cli import make_parser

    assert list(PROFILES) == ["smoke", "cpu", "paper", "paper-fmnist"]
    for name in PROFILES:
        assert make_parser().parse_args(["sweep", "--profile", name]).profile == name
        assert get_profile(name).name == name
    with pytest.raises(ValueError, match="profile='paper_fmnist' is not allowed"):
        get_profile("paper_fmnist")
    assert dataclasses.replace(get_profile("paper-fmnist"), lam=1.0).lam == 1.0


def test_the_summary_line_names_the_net_and_the_authors_45x_on_it():
    from dkm.experiments.profiles import summary_line

    assert summary_line("cpu") == (
        "cpu: fashion_mnist, all training images, WRN-16-1, 16 convs; "
        "the authors' 45x is official CR 28.56 here"
    )
    assert summary_line("paper").endswith(
        "WRN-16-4, 16 convs; the authors' 45x is official CR 43.48 here"
    )
    assert (
        summary_line("smoke") == "smoke: fashion_mnist, 2,000 training images, small_cnn, 4 convs"
    )
