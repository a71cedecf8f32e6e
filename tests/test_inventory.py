"""The layer inventory against hand-computed loop sizes and MACs (AlexNet, GoogLeNet, the package's
nets)."""

import pytest
import torch
import torchvision
from torch import nn

from dkm.energy.inventory import layer_inventory


def meta(build, *args, **kwargs):
    """Build a net on the meta device: shapes only, no weight initialization (fast)."""
    with torch.device("meta"):
        return build(*args, **kwargs)


# AlexNet (torchvision) at 3×224×224, by hand: (C_out, C_in, k, E) per conv, MACs = C_out·C_in·k²·E²
ALEXNET_CONVS = [
    (64, 3, 11, 55),
    (192, 64, 5, 27),
    (384, 192, 3, 13),
    (256, 384, 3, 13),
    (256, 256, 3, 13),
]
ALEXNET_FCS = [(9216, 4096), (4096, 4096), (4096, 1000)]

# GoogLeNet inception modules (Szegedy et al. 2015, Table 1): in, #1×1, #3×3 reduce, #3×3, #5×5
# reduce, #5×5, pool proj, at spatial size E. torchvision's "5×5" branch uses a 3×3 kernel (kept for
# its weights).
INCEPTIONS = [
    (192, 64, 96, 128, 16, 32, 32, 28),
    (256, 128, 128, 192, 32, 96, 64, 28),
    (480, 192, 96, 208, 16, 48, 64, 14),
    (512, 160, 112, 224, 24, 64, 64, 14),
    (512, 128, 128, 256, 24, 64, 64, 14),
    (512, 112, 144, 288, 32, 64, 64, 14),
    (528, 256, 160, 320, 32, 128, 128, 14),
    (832, 256, 160, 320, 32, 128, 128, 7),
    (832, 384, 192, 384, 48, 128, 128, 7),
]


def _inception_weights(i, c1, c3r, c3, c5r, c5, pp):
    return i * c1 + i * c3r + c3r * c3 * 9 + i * c5r + c5r * c5 * 9 + i * pp


def test_alexnet_macs_and_params_by_hand():
    inv = layer_inventory(meta(torchvision.models.alexnet), (3, 224, 224))
    assert len(inv.layers) == 8 and inv.skipped == {}
    conv1 = inv.layers[0]
    assert (conv1.c_in, conv1.c_out, conv1.kernel, conv1.stride, conv1.padding) == (
        3,
        64,
        (11, 11),
        (4, 4),
        (2, 2),
    )
    assert (conv1.in_size, conv1.out_size) == ((224, 224), (55, 55))
    assert conv1.macs == 64 * 3 * 11 * 11 * 55 * 55 == 70_276_800
    hand = [co * ci * k * k * e * e for co, ci, k, e in ALEXNET_CONVS] + [
        i * o for i, o in ALEXNET_FCS
    ]
    assert [layer.macs for layer in inv.layers] == hand
    assert inv.totals()["macs"] == sum(hand) == 714_188_480
    params = sum(co * ci * k * k + co for co, ci, k, _ in ALEXNET_CONVS) + sum(
        i * o + o for i, o in ALEXNET_FCS
    )
    assert inv.totals()["params"] == params == 61_100_840  # AlexNet's well-known 61.1M
    fc6 = inv.layers[5]
    assert (fc6.kind, fc6.c_in, fc6.c_out, fc6.inputs, fc6.outputs) == (
        "linear",
        9216,
        4096,
        9216,
        4096,
    )


def test_googlenet_macs_by_hand():
    net = meta(torchvision.models.googlenet, aux_logits=False, init_weights=True)
    inv = layer_inventory(net, (3, 224, 224))
    by = {layer.name: layer for layer in inv.layers}
    assert by["conv1.conv"].macs == 64 * 3 * 7 * 7 * 112 * 112 == 118_013_952
    assert by["conv2.conv"].macs == 64 * 64 * 56 * 56
    assert by["conv3.conv"].macs == 192 * 64 * 9 * 56 * 56
    assert by["inception3a.branch2.1.conv"].macs == 128 * 96 * 9 * 28 * 28
    assert by["inception5b.branch4.1.conv"].macs == 128 * 832 * 7 * 7
    stem = 118_013_952 + 64 * 64 * 56 * 56 + 192 * 64 * 9 * 56 * 56
    incep = sum(_inception_weights(*c[:7]) * c[7] ** 2 for c in INCEPTIONS)
    assert len(inv.layers) == 3 + 6 * 9 + 1
    assert inv.totals()["macs"] == stem + incep + 1024 * 1000 == 1_498_376_192
    weights = (
        64 * 3 * 49 + 64 * 64 + 192 * 64 * 9 + sum(_inception_weights(*c[:7]) for c in INCEPTIONS)
    )
    assert inv.totals()["params"] == weights + 1024 * 1000 + 1000  # convs have no bias
    assert len(inv.skipped) == 57 and all("BatchNorm2d" in r for r in inv.skipped.values())


def test_package_models():
    from dkm.rows import conv_layers
    from dkm.training.models import small_cnn, wide_resnet

    net = meta(wide_resnet, 16, 4, 0.3, 3, 10, True)
    inv = layer_inventory(net, (3, 32, 32))
    assert [layer.name for layer in inv.layers if layer.kind == "conv"] == [
        n for n, _ in conv_layers(net)
    ]
    assert len(inv.layers) == 17 and inv.layers[-1].name == "fc"
    assert inv.layers[0].macs == 16 * 3 * 9 * 32 * 32
    sc = {layer.name: layer for layer in inv.layers}["stage2.0.shortcut"]
    assert (sc.kernel, sc.stride, sc.in_size, sc.out_size, sc.macs) == (
        (1, 1),
        (2, 2),
        (32, 32),
        (16, 16),
        128 * 64 * 16 * 16,
    )
    assert inv.totals()["params"] == sum(
        p.numel() for n, p in net.named_parameters() if "bn" not in n
    )
    inv = layer_inventory(small_cnn(), (1, 28, 28))
    hand = [
        16 * 1 * 9 * 28 * 28,
        32 * 16 * 9 * 14 * 14,
        32 * 32 * 9 * 14 * 14,
        64 * 32 * 9 * 7 * 7,
        64 * 10,
    ]
    assert [layer.macs for layer in inv.layers] == hand


class Odd(nn.Module):
    """A conv used twice, a grouped strided conv with padding='same'-like sizes, a Conv1d, a 3D
    linear."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding="same", bias=False)
        self.grouped = nn.Conv2d(4, 8, 3, stride=2, padding=1, groups=2)
        self.bn = nn.BatchNorm2d(8)
        self.c1d = nn.Conv1d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.bn(self.grouped(self.conv(self.conv(x))))  # 4×9×9 → 8×5×5
        x = self.c1d(x.flatten(2))  # (B, 8, 25)
        return self.fc(x.transpose(1, 2))  # (B, 25, 5)


def test_reused_grouped_same_and_skipped_layers():
    net = Odd().train()
    inv = layer_inventory(net, (2, 4, 9, 9))
    assert net.training  # the training flag is restored
    names = [layer.name for layer in inv.layers]
    assert names == ["conv", "conv#2", "grouped", "fc"]
    conv, grouped, fc = inv.layers[0], inv.layers[2], inv.layers[3]
    assert conv.padding == (1, 1) and conv.macs == 2 * 4 * 4 * 9 * 81
    assert grouped.out_size == (5, 5) and grouped.macs == 2 * 8 * 25 * (4 // 2) * 9
    assert grouped.params == 8 * 2 * 9 + 8
    assert (fc.batch, fc.macs) == (2 * 25, 2 * 25 * 8 * 5)  # leading dims act as the batch
    assert set(inv.skipped) == {"bn", "c1d"}
    assert "unsupported" in inv.skipped["c1d"] and "not counted" in inv.skipped["bn"]


def test_batch_scales_macs():
    net = meta(torchvision.models.alexnet)
    one, four = layer_inventory(net, (3, 224, 224)), layer_inventory(net, (4, 3, 224, 224))
    assert four.totals()["macs"] == 4 * one.totals()["macs"]


@pytest.mark.parametrize("shape", [(3, 224), (1, 2, 3, 4, 5), "3x32x32", (3, 0, 32), (3, 32.5, 32)])
def test_bad_input_shape_names_parameter(shape):
    with pytest.raises((ValueError, TypeError), match="input_shape"):
        layer_inventory(nn.Conv2d(3, 4, 3), shape)


def test_failing_forward_is_reported():
    with pytest.raises(
        ValueError, match=r"forward of AlexNet failed .*input_shape=\(1, 1, 224, 224\)"
    ):
        layer_inventory(meta(torchvision.models.alexnet), (1, 224, 224))
