"""The notebooks' exercises: a student's answer checked against a reference solution.

In a notebook an exercise is a prompt (markdown) and one cell::

    answer = None  # your code here
    exercises.check("01.1", answer, W=W_toy, assignments=a)

`check` computes the reference solution from the same inputs. With an answer it says "right" or
raises AssertionError naming what was expected; with `answer = None` it says there is no answer yet
and shows the reference solution's value (so the notebooks run, and nbval checks the references).
The solutions live here, one short function each, not in the notebooks: a student who wants to
peek has to come looking.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from dkm._checks import check_choice


@dataclass(frozen=True)
class Exercise:
    solve: Callable
    rtol: float  # relative tolerance of a numeric answer


EXERCISES: dict[str, Exercise] = {}


def _exercise(key: str, rtol: float = 1e-6):
    def register(solve):
        EXERCISES[key] = Exercise(solve, rtol)
        return solve

    return register


def _close(answer, expected, rtol: float) -> bool:
    if isinstance(expected, torch.Tensor):
        answer = torch.as_tensor(answer, dtype=expected.dtype)
        return answer.shape == expected.shape and torch.allclose(answer, expected, rtol, 1e-12)
    if isinstance(answer, torch.Tensor):
        answer = answer.item() if answer.numel() == 1 else answer
    if isinstance(expected, int) and not isinstance(expected, bool):
        return isinstance(answer, (int, float)) and answer == expected
    try:
        return math.isclose(float(answer), float(expected), rel_tol=rtol, abs_tol=1e-12)
    except (TypeError, ValueError):
        return False


def _show(value) -> str:
    if isinstance(value, torch.Tensor) and value.numel() > 6:
        return f"a tensor of shape {tuple(value.shape)}"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value.tolist() if isinstance(value, torch.Tensor) else value)


def check(key: str, answer, **inputs) -> None:
    """Check `answer` to exercise `key` (e.g. "01.1"); without one (None), show the reference's
    value (printed, not returned: the cell shows no solution twice)."""
    check_choice("exercise", key, EXERCISES)
    exercise = EXERCISES[key]
    expected = exercise.solve(**inputs)
    if answer is None:
        print(f"exercise {key}: no answer yet. The reference solution gives {_show(expected)}; "
              "write yours in `answer` and run the cell again.")  # fmt: skip
    elif _close(answer, expected, exercise.rtol):
        print(f"exercise {key}: right ({_show(answer)}).")
    else:
        tolerance = f"relative tolerance {exercise.rtol:g}"
        raise AssertionError(f"exercise {key}: {_show(answer)} is not it; expected "
                             f"{_show(expected)} ({tolerance})")  # fmt: skip


# ---------------------------------------------------------------- 01: the relaxation
@_exercise("01.1")
def trace_form_error(W: torch.Tensor, assignments: torch.Tensor) -> float:
    """Tr(WᵀW) − Tr(FᵀWᵀWF) with F the normalized indicator of `assignments`, built by hand."""
    K = int(assignments.max()) + 1
    F = torch.zeros(W.shape[1], K, dtype=W.dtype)
    F[torch.arange(W.shape[1]), assignments] = 1.0
    F = F / F.sum(0).clamp(min=1).sqrt()
    return float(torch.trace(W.T @ W) - torch.trace(F.T @ W.T @ W @ F))


@_exercise("01.2")
def relaxed_optimum(W: torch.Tensor, K: int) -> float:
    """Σ_{i>K} σ_i²: the squared singular values of W beyond the K largest."""
    return float((torch.linalg.svdvals(W)[K:] ** 2).sum())


@_exercise("01.3")
def first_zero_K(weight_shape: tuple, view: str) -> int:
    """The smallest K from which the spectral term is zero in every case: min(s, N) of the view."""
    C_out, C_in, kh, kw = weight_shape
    s = {"rows": kw, "kernels": kh * kw, "filters": C_in * kh * kw}[view]
    return min(s, C_out * C_in * kh * kw // s)


# ---------------------------------------------------------------- 02: re-training
@_exercise("02.1")
def penalty_from_error(W: torch.Tensor, assignments: torch.Tensor, lam: float) -> float:
    """λ/2 × the k-means error of the rows under `assignments` (the indicator term's value)."""
    K = int(assignments.max()) + 1
    means = torch.stack([W[:, assignments == k].mean(1) if (assignments == k).any()
                         else W.new_zeros(W.shape[0]) for k in range(K)], 1)  # fmt: skip
    return lam / 2 * float(((W - means[:, assignments]) ** 2).sum())


@_exercise("02.2")
def cosine_lr(lr: float, min_lr: float, step: int, total: int) -> float:
    """The cosine schedule: min_lr + (lr − min_lr)·(1 + cos(π·step/total))/2."""
    return min_lr + (lr - min_lr) * (1 + math.cos(math.pi * step / total)) / 2


@_exercise("02.3")
def refreshes_per_epoch(images: int, batch_size: int, refresh_every: int) -> int:
    """F refreshes in one epoch: ⌈images / batch size⌉ steps, one refresh every T of them."""
    return math.ceil(images / batch_size) // refresh_every


# ---------------------------------------------------------------- 03: assignments
@_exercise("03.1")
def dominant_size(N: int, p: float) -> int:
    """Rows in the dominant cluster: ⌊N·p⌋."""
    return int(N * p)


@_exercise("03.2")
def distinct_rows(shared_weight: torch.Tensor) -> int:
    """Distinct kernel rows of a shared conv (at most K: every row is a codebook row)."""
    return int(torch.unique(shared_weight.reshape(-1, shared_weight.shape[-1]), dim=0).shape[0])


@_exercise("03.3")
def median_distance(rows: torch.Tensor, codebook: torch.Tensor, assignments: torch.Tensor) -> float:
    """Median over rows of ‖row − its center‖, divided by the RMS row norm √(mean ‖w‖²)."""
    rows = rows.double()
    dist = (rows - codebook.double()[assignments]).norm(dim=1)
    return float(dist.median() / rows.pow(2).sum(1).mean().sqrt())


# ---------------------------------------------------------------- 04: compression
@_exercise("04.1")
def index_entropy(K: int, p: float) -> float:
    """Bits per index: one cluster holds p of the rows, the other K − 1 share the rest equally."""
    rest = (1 - p) / (K - 1)
    return -p * math.log2(p) - (K - 1) * rest * math.log2(rest)


@_exercise("04.2")
def layer_cr(N: int, s: int, K: int, bits_per_index: float, bias: int) -> float:
    """The official CR of one layer: 32·(N·s + bias) / (K·s·32 + N·H + 32·bias)."""
    return 32 * (N * s + bias) / (K * s * 32 + N * bits_per_index + 32 * bias)


@_exercise("04.3")
def fixed_index_bits(K: int) -> int:
    """Bits of a fixed-width index into K centers: ⌈log₂K⌉ (K = 1: none)."""
    return math.ceil(math.log2(K))


# ---------------------------------------------------------------- 05: energy
@_exercise("05.1")
def accumulator(weight_bits: int, act_bits: int, reduction: int) -> int:
    """Accumulator width that sums R products of w×a bits: w + a + ⌈log₂R⌉."""
    return weight_bits + act_bits + math.ceil(math.log2(reduction))


@_exercise("05.2")
def arithmetic_energy(macs: int, weight_bits: int, act_bits: int, acc_bits: int) -> float:
    """Dense arithmetic in E_MAC16: (MACs·w·a + MACs·acc) / 288 full adders."""
    return (macs * weight_bits * act_bits + macs * acc_bits) / 288


@_exercise("05.3")
def dram_share(energy: dict) -> float:
    """DRAM's share of a layer's total energy (the dict `layer_energy` returns)."""
    return energy["dram"] / energy["total"]
