"""Networks: Wide ResNets whose conv order matches the authors' layer table, and a small CNN.

The small CNN is for smoke runs. Layer names are stable and readable, e.g. for WRN-16-4:
``conv1, stage1.0.conv1, stage1.0.conv2, stage1.0.shortcut, stage1.1.conv1, stage1.1.conv2,
stage2.0.conv1, …, fc``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_
from torch import nn

from dkm._checks import check_choice, check_float, check_int
from dkm.plans import load_reference


class BasicBlock(nn.Module):
    """Pre-activation wide block (Zagoruyko & Komodakis 2016).

    BN-ReLU-conv3×3-BN-ReLU-(dropout)-conv3×3.
    """

    def __init__(
        self, c_in: int, c_out: int, stride: int, dropout: float, bias: bool, project=False
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.dropout = dropout
        # a 1×1 projection where the shape changes (as in the authors' WideResNet), or if asked
        self.shortcut = None
        if project or c_in != c_out or stride != 1:
            self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, 0, bias=bias)

    def forward(self, x):
        o = F_.relu(self.bn1(x))
        y = self.conv1(o)
        y = F_.relu(self.bn2(y))
        if self.dropout > 0:
            y = F_.dropout(y, p=self.dropout, training=self.training)
        y = self.conv2(y)
        return y + (x if self.shortcut is None else self.shortcut(o))


class WideResNet(nn.Module):
    """WRN-depth-k: conv1, three stages of (depth−4)/6 blocks, BN-ReLU, pool, fc.

    The stages have widths 16k, 32k and 64k. The first block of each stage has a 1×1 shortcut
    conv where its shape changes — in every stage for k > 1; `stage1_shortcut=True` gives stage 1
    one for k = 1 too, so that WRN-16-1 has the 16 convs of the authors' layer table.
    """

    def __init__(
        self, depth=16, widen_factor=4, dropout=0.0, in_channels=3, num_classes=10,
        conv_bias=False, stage1_shortcut=False,
    ):  # fmt: skip
        super().__init__()
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=conv_bias)
        for i in range(3):
            blocks = [
                BasicBlock(
                    widths[i] if b == 0 else widths[i + 1],
                    widths[i + 1],
                    (1 if i == 0 else 2) if b == 0 else 1,
                    dropout,
                    conv_bias,
                    project=stage1_shortcut and i == 0 and b == 0,
                )
                for b in range(n)
            ]
            setattr(self, f"stage{i + 1}", nn.Sequential(*blocks))
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)
        _init_weights(self)

    def forward(self, x):
        x = self.stage3(self.stage2(self.stage1(self.conv1(x))))
        x = F_.relu(self.bn(x))
        return self.fc(torch.flatten(F_.adaptive_avg_pool2d(x, 1), 1))


def wide_resnet(
    depth=16, widen_factor=4, dropout=0.0, in_channels=3, num_classes=10, conv_bias=False,
    stage1_shortcut=False,
) -> WideResNet:  # fmt: skip
    """WRN-depth-widen_factor; depth must be 6n+4.

    WRN-16-k (k > 1, or k = 1 with stage1_shortcut=True) has the 16 convs of the authors' table.
    """
    check_int("depth", depth, 10, 100)
    if (depth - 4) % 6:
        raise ValueError(
            f"depth={depth} is not allowed: a Wide ResNet has depth 6n+4 (10, 16, 22, 28, …)"
        )
    check_int("widen_factor", widen_factor, 1, 20)
    check_float("dropout", dropout, 0.0, 1.0, hi_open=True)
    check_int("in_channels", in_channels, 1, 64)
    check_int("num_classes", num_classes, 2, 100000)
    if not isinstance(stage1_shortcut, bool):
        raise TypeError(f"stage1_shortcut={stage1_shortcut!r} must be True or False")
    return WideResNet(
        depth, widen_factor, dropout, in_channels, num_classes, bool(conv_bias), stage1_shortcut
    )


class SmallCNN(nn.Module):
    """Four 3×3 convs with batch norm (the smoke model): 28×28 → 14×14 → 7×7 → pool → fc."""

    def __init__(self, in_channels=1, num_classes=10, width=16):
        super().__init__()
        w = width
        spec = [(in_channels, w, 1), (w, 2 * w, 2), (2 * w, 2 * w, 1), (2 * w, 4 * w, 2)]
        for i, (c_in, c_out, stride) in enumerate(spec, start=1):
            setattr(self, f"conv{i}", nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False))
            setattr(self, f"bn{i}", nn.BatchNorm2d(c_out))
        self.fc = nn.Linear(4 * w, num_classes)
        _init_weights(self)

    def forward(self, x):
        for i in range(1, 5):
            x = F_.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
        return self.fc(torch.flatten(F_.adaptive_avg_pool2d(x, 1), 1))


def small_cnn(in_channels=1, num_classes=10, width=16) -> SmallCNN:
    """The tiny CNN of the `smoke` profile (about 30k parameters at width 16)."""
    check_int("in_channels", in_channels, 1, 64)
    check_int("num_classes", num_classes, 2, 100000)
    check_int("width", width, 1, 1024)
    return SmallCNN(in_channels, num_classes, width)


def _init_weights(net: nn.Module) -> None:
    """He-normal convs, unit BN, zero biases (as the reference WideResNet code)."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)


MODELS = {"wide_resnet": wide_resnet, "small_cnn": small_cnn}


def build_model(name: str, **kwargs) -> nn.Module:
    """Construct a model of this package by registry name.

    Used to rebuild a net from a config or checkpoint.
    """
    check_choice("model", name, MODELS)
    return MODELS[name](**kwargs)


def load_model_file(path) -> tuple[nn.Module, tuple | None]:
    """(net, input shape or None) of a checkpoint {'model': {'name', 'kwargs'}, 'state_dict', …}."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # not a torch file at all
        raise ValueError(
            f"model={str(path)!r} cannot be read as a torch checkpoint ({type(err).__name__})"
        ) from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(
            f"model={str(path)!r} is not a dkm checkpoint: expected keys 'model' and 'state_dict'"
        )
    net = build_model(ckpt["model"]["name"], **ckpt["model"].get("kwargs", {}))
    net.load_state_dict(ckpt["state_dict"])
    shape = ckpt.get("input_shape")
    return net, tuple(shape) if shape is not None else None


def wrn16_4(device="meta") -> nn.Module:
    """WRN-16-4 as the authors' table describes it (dropout 0.3, conv bias); meta: shapes only."""
    m = load_reference()["model"]
    with torch.device(device):
        return wide_resnet(
            m["depth"], m["widen_factor"], m["dropout"], 3, m["num_classes"], m["conv_bias"]
        )
