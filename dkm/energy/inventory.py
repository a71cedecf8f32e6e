"""Layer inventory for step 4 (measure): every conv and linear layer of a net, with its loops.

The loops are the layer's loop dimensions (paper §4). One forward pass with hooks records, for
each `nn.Conv2d` and `nn.Linear` call, the loop nest
O[b][k][oy][ox] += W[k][c][fy][fx] · I[b][c][oy·sy+fy][ox·sx+fx] of the layer: batch, C_in, C_out,
groups, kernel, stride, padding, input and output sizes. A linear layer is the 1×1 case with
1×1 input and output (its leading dims folded into the batch). Leaf modules that hold
parameters but are neither (batch norm, Conv1d, …) are listed in `Inventory.skipped` with the
reason.
Only shapes matter: a net built on the meta device (`with torch.device("meta"): net = …`) is
inventoried without allocating or initializing its weights.
A module called twice is listed per call ("name", "name#2"); a conv that uses another's weight
(tied) is listed under its own name, with `owner` naming the module whose weight (and sharing) it
uses; the net's parameter count counts each weight once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import nn

from dkm._checks import check_int
from dkm.accounting import param_of


@dataclass(frozen=True)
class LayerInfo:
    """One conv or linear call: the sizes of its loop nest."""

    name: str  # module name in the net (a 2nd call of the same module gets "#2")
    kind: str  # "conv" or "linear"
    batch: int
    c_in: int
    c_out: int
    groups: int
    kernel: tuple  # (kh, kw)
    stride: tuple  # (sh, sw)
    padding: tuple  # (ph, pw), per side
    in_size: tuple  # (H, W) of the input
    out_size: tuple  # (E, F) of the output
    bias: bool
    weights_of: str = ""  # the module whose weight the call uses, where not `name` (see `owner`)

    @property
    def owner(self) -> str:
        """The module whose weight (and sharing) this call uses: the module itself, for a 2nd
        call too; for a conv tied to another's weight, the first module holding that weight."""
        return self.weights_of or self.name.split("#")[0]

    @property
    def new_params(self) -> int:
        """Parameters this call adds to the net: none for a 2nd call, a tied conv's own bias."""
        if "#" in self.name:
            return 0
        return self.params if self.owner == self.name else (self.c_out if self.bias else 0)

    @property
    def weights(self) -> int:
        """C_out·C_in/groups·kh·kw."""
        return self.c_out * self.c_in // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def params(self) -> int:
        """Weights plus biases."""
        return self.weights + (self.c_out if self.bias else 0)

    @property
    def reduction(self) -> int:
        """Products summed into one output: C_in/groups·kh·kw."""
        return self.c_in // self.groups * self.kernel[0] * self.kernel[1]

    @property
    def macs(self) -> int:
        """B·C_out·E·F·(C_in/groups·kh·kw)."""
        return self.outputs * self.reduction

    @property
    def inputs(self) -> int:
        """Input activations B·C_in·H·W."""
        return self.batch * self.c_in * self.in_size[0] * self.in_size[1]

    @property
    def outputs(self) -> int:
        """Output activations B·C_out·E·F."""
        return self.batch * self.c_out * self.out_size[0] * self.out_size[1]

    @property
    def kernel_rows(self) -> int:
        """N = C_out·C_in/groups·kh, the number of kernel rows (length-kw vectors) of the weight."""
        return self.c_out * self.c_in // self.groups * self.kernel[0]


@dataclass
class Inventory:
    """The conv and linear layers of a net in call order, plus the skipped parametrized modules."""

    input_shape: tuple
    layers: list = field(default_factory=list)  # LayerInfo, in forward-call order
    skipped: dict = field(default_factory=dict)  # module name -> reason

    def totals(self) -> dict:
        """Sums of MACs, parameters (of the listed layers) and output activations."""
        return {
            "layers": len(self.layers),
            "macs": sum(layer.macs for layer in self.layers),
            "params": sum(layer.new_params for layer in self.layers),  # a tied weight once
            "activations": sum(layer.outputs for layer in self.layers),
            "skipped": len(self.skipped),
        }


def check_input_shape(input_shape) -> tuple:
    """(C, H, W) or (B, C, H, W) with positive ints, else a ValueError naming `input_shape`."""
    shape = tuple(input_shape) if isinstance(input_shape, (tuple, list, torch.Size)) else None
    if shape is None or len(shape) not in (3, 4):
        raise ValueError(
            f"input_shape={input_shape!r} is not an image shape: allowed (C, H, W) or (B, C, H, W)"
        )
    shape = tuple(check_int(f"input_shape[{i}]", v, 1, 1 << 20) for i, v in enumerate(shape))
    return shape if len(shape) == 4 else (1,) + shape


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _conv_padding(m: nn.Conv2d, hw_in, hw_out) -> tuple:
    """Padding per side; for padding='same'/'valid', the total padding the sizes imply, halved."""
    if not isinstance(m.padding, str):
        return _pair(m.padding)
    # total pad = (out−1)·stride + dilation·(k−1) + 1 − in
    tot = [
        (o - 1) * s + d * (k - 1) + 1 - i
        for o, s, d, k, i in zip(hw_out, m.stride, m.dilation, m.kernel_size, hw_in)
    ]
    return tuple(max(t, 0) // 2 for t in tot)


def _conv_info(name: str, m: nn.Conv2d, x: torch.Tensor, y: torch.Tensor) -> LayerInfo:
    hw_in, hw_out = tuple(x.shape[-2:]), tuple(y.shape[-2:])
    return LayerInfo(
        name,
        "conv",
        int(x.shape[0]),
        m.in_channels,
        m.out_channels,
        m.groups,
        _pair(m.kernel_size),
        _pair(m.stride),
        _conv_padding(m, hw_in, hw_out),
        hw_in,
        hw_out,
        m.bias is not None,
    )


def _linear_info(name: str, m: nn.Linear, x: torch.Tensor) -> LayerInfo:
    batch = x.numel() // m.in_features  # leading dims act as the batch
    return LayerInfo(
        name,
        "linear",
        batch,
        m.in_features,
        m.out_features,
        1,
        (1, 1),
        (1, 1),
        (0, 0),
        (1, 1),
        (1, 1),
        m.bias is not None,
    )


def _skip_reason(m: nn.Module):
    """Why a leaf module with own parameters is not counted, or None if it is counted / has none."""
    if isinstance(m, (nn.Conv2d, nn.Linear)) or not any(True for _ in m.parameters(recurse=False)):
        return None
    if isinstance(m, nn.modules.batchnorm._NormBase) or isinstance(m, (nn.LayerNorm, nn.GroupNorm)):
        return f"{type(m).__name__}: elementwise normalization, not a MAC layer (not counted)"
    return f"{type(m).__name__}: unsupported layer type with parameters (not counted)"


def _hook(records: list, counts: dict, name: str, owner: str):
    def hook(m, args, out):
        counts[name] = counts.get(name, 0) + 1
        tag = name if counts[name] == 1 else f"{name}#{counts[name]}"
        x = args[0]
        info = _conv_info(tag, m, x, out) if isinstance(m, nn.Conv2d) else _linear_info(tag, m, x)
        records.append(replace(info, weights_of=owner if owner != name else ""))

    return hook


def layer_inventory(net: nn.Module, input_shape) -> Inventory:
    """Run `net` once on zeros of `input_shape` in eval mode and record its layers.

    input_shape: (C,H,W) or (B,C,H,W).
    """
    shape = check_input_shape(input_shape)
    inv, counts, handles, owners = Inventory(shape), {}, [], {}
    for name, m in net.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            name = name or "<net>"
            owner = owners.setdefault(id(param_of(m)), name)  # tied: the first module's weight
            handles.append(m.register_forward_hook(_hook(inv.layers, counts, name, owner)))
        elif (reason := _skip_reason(m)) is not None:
            inv.skipped[name or "<net>"] = reason
    _run(net, shape, handles)
    return inv


def _run(net: nn.Module, shape: tuple, handles: list) -> None:
    """One no-grad eval-mode forward on zeros; restores the training flag and removes the hooks."""
    p = next(net.parameters(), None)
    x = torch.zeros(
        shape,
        dtype=p.dtype if p is not None else torch.float32,
        device=p.device if p is not None else "cpu",
    )
    was_training = net.training
    try:
        net.eval()
        with torch.no_grad():
            net(x)
    except Exception as err:
        raise ValueError(
            f"forward of {type(net).__name__} failed on an input of shape "
            f"input_shape={shape}: {type(err).__name__}: {err}"
        ) from err
    finally:
        net.train(was_training)
        for h in handles:
            h.remove()
