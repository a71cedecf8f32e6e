"""Models: the conv order of WRN-16-4 matches the authors' layer table; shapes and errors."""

import json
from pathlib import Path

import pytest
import torch

from dkm.rows import conv_layers
from dkm.training.models import build_model, small_cnn, wide_resnet

REF = json.loads(
    (
        Path(__file__).resolve().parents[1] / "data/reference/wrn16_4_official_sharing.json"
    ).read_text()
)


def test_wrn16_4_conv_order_matches_official_table():
    net = wide_resnet(
        **{k: v for k, v in REF["model"].items() if k != "depth"}, depth=16, in_channels=3
    )
    convs = conv_layers(net)
    assert len(convs) == len(REF["layers"]) == 16
    for (name, conv), layer in zip(convs, REF["layers"]):
        assert (conv.in_channels, conv.out_channels, conv.kernel_size) == (
            layer["in"],
            layer["out"],
            (layer["k"],) * 2,
        ), name
        assert ("shortcut" in name) == layer.get("shortcut", False)
        assert conv.bias is not None  # the official model has conv biases


def test_wrn16_4_parameter_count_by_hand():
    net = wide_resnet(16, 4, conv_bias=False)
    # convs: Σ out·in·k² over the official table; BN: 2·C per BN; fc: 256·10 + 10
    conv = sum(c["out"] * c["in"] * c["k"] ** 2 for c in REF["layers"])
    # (bn1, bn2) of each block, stage by stage, then the final bn; 2 parameters per channel
    bns = 2 * ((16 + 64) + (64 + 64) + (64 + 128) + (128 + 128) + (128 + 256) + (256 + 256) + 256)
    assert sum(p.numel() for p in net.parameters()) == conv + bns + 256 * 10 + 10


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: small_cnn(), (3, 1, 28, 28)),
        (lambda: wide_resnet(10, 1, in_channels=1), (3, 1, 28, 28)),
        (lambda: wide_resnet(16, 2, 0.3, 3, 10, True), (3, 3, 32, 32)),
    ],
)
def test_forward_shapes(make, shape):
    torch.manual_seed(0)
    net = make().eval()
    assert net(torch.randn(shape)).shape == (3, 10)


def test_stable_names_and_registry():
    names = [n for n, _ in conv_layers(wide_resnet(16, 1))]
    assert names[:5] == [
        "conv1",
        "stage1.0.conv1",
        "stage1.0.conv2",
        "stage1.1.conv1",
        "stage1.1.conv2",
    ]
    assert type(build_model("small_cnn", width=8)).__name__ == "SmallCNN"


@pytest.mark.parametrize(
    "kwargs,param",
    [
        ({"depth": 15}, "depth"),
        ({"widen_factor": 0}, "widen_factor"),
        ({"dropout": 1.0}, "dropout"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_bad_arguments_name_the_parameter(kwargs, param):
    with pytest.raises(ValueError, match=param):
        wide_resnet(**kwargs)


def test_unknown_model_and_no_conv():
    with pytest.raises(ValueError, match="model='resnet'.*small_cnn"):
        build_model("resnet")
    with pytest.raises(ValueError, match="no Conv2d"):
        conv_layers(torch.nn.Linear(3, 3))
