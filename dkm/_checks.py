"""Argument checks shared by every module: errors name the parameter, value and what is allowed."""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch


def _fmt_range(name: str, lo, hi, lo_open: bool, hi_open: bool) -> str:
    parts = []
    if lo is not None:
        parts.append(f"{lo} {'<' if lo_open else '≤'} ")
    parts.append(name)
    if hi is not None:
        parts.append(f" {'<' if hi_open else '≤'} {hi}")
    return "".join(parts)


def check_int(name: str, value, lo=None, hi=None) -> int:
    """Return `value` as int, or raise ValueError naming `name`, the value and the range lo..hi."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int,))
        and not (hasattr(value, "__index__") and not isinstance(value, float))
    ):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ValueError(
            f"{name}={value} is out of range: allowed {_fmt_range(name, lo, hi, False, False)}"
        )
    return value


def check_float(name: str, value, lo=None, hi=None, lo_open=False, hi_open=False) -> float:
    """Return `value` as a finite float in the range, or raise ValueError naming `name`."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(value):
        raise ValueError(
            f"{name}={value} is not finite: allowed {_fmt_range(name, lo, hi, lo_open, hi_open)}"
        )
    bad_lo = lo is not None and (value <= lo if lo_open else value < lo)
    bad_hi = hi is not None and (value >= hi if hi_open else value > hi)
    if bad_lo or bad_hi:
        raise ValueError(
            f"{name}={value} is out of range: allowed {_fmt_range(name, lo, hi, lo_open, hi_open)}"
        )
    return value


def check_choice(name: str, value, choices: Iterable):
    """Return `value` if it is one of `choices`, else raise ValueError listing them."""
    choices = list(choices)
    if value not in choices:
        raise ValueError(
            f"{name}={value!r} is not allowed: choose one of {', '.join(map(repr, choices))}"
        )
    return value


def check_finite(name: str, tensor: torch.Tensor) -> torch.Tensor:
    """Raise ValueError if `tensor` holds NaN or ±inf."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float32, torch.float64):
        # numpy's single-threaded check: torch's is 10-100× slower on a loaded machine (measured)
        finite = np.isfinite(tensor.detach().numpy())
        ok, bad = bool(finite.all()), lambda: int(finite.size - finite.sum())
    else:
        ok, bad = bool(torch.isfinite(tensor).all()), lambda: int((~torch.isfinite(tensor)).sum())
    if not ok:
        bad = bad()
        raise ValueError(
            f"{name} has {bad} non-finite value(s) (NaN or inf): allowed finite values only"
        )
    return tensor


def check_not_meta(net: torch.nn.Module, what: str) -> None:
    """A net whose tensors have no data (the meta device) is one clear error naming `what`."""
    if any(t.is_meta for t in list(net.parameters()) + list(net.buffers())):
        raise ValueError(
            f"{what}: the net is on the meta device (no weights): allowed a net with real tensors "
            f"(materialize it with net.to_empty(device='cpu') and load its weights first)"
        )
