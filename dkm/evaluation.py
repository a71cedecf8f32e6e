"""Evaluation, batch-norm re-estimation and the data order shared with `dkm.train` (paper §5).

Data order is a function of (seed, epoch) only (`epoch_order`): training resumes exactly, and batch
norm is re-estimated on the same images for the same seed.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
import torch.nn.functional as F_
from torch import nn
from torch.utils.data import default_collate

from ._checks import check_choice, check_int

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device="auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' is not available (torch.cuda.is_available() is False): allowed 'auto' or 'cpu'"
        )
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ---------------------------------------------------------------- data order and batches
def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of range(n) used in epoch `epoch`: a function of (seed, epoch) only."""
    mixed = int(np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0])
    return torch.randperm(n, generator=torch.Generator().manual_seed(mixed))


def _batches(dataset, indices: torch.Tensor, batch_size: int):
    """(X, y) for consecutive chunks of `indices`; a TensorDataset is indexed directly."""
    tensors = getattr(dataset, "tensors", None)
    for chunk in indices.split(batch_size):
        if tensors is not None:
            yield tensors[0][chunk], tensors[1][chunk]
        else:
            yield tuple(default_collate([dataset[i] for i in chunk.tolist()])[:2])


def _check_dataset(name: str, dataset) -> int:
    n = len(dataset) if hasattr(dataset, "__len__") else 0
    if n < 1:
        raise ValueError(f"{name} has {n} examples: allowed a dataset of at least 1 (X, y) pair")
    return n


@contextlib.contextmanager
def _modes_kept(net: nn.Module):
    """Restore every submodule's train/eval flag on exit."""
    modes = [(m, m.training) for m in net.modules()]
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(net: nn.Module, dataset, batch_size: int = 512, device="auto") -> dict:
    """{'accuracy': top-1, 'loss': mean cross-entropy} in eval mode; the net is moved to `device` (§5)."""
    batch_size, n = check_int("batch_size", batch_size, 1), _check_dataset("dataset", dataset)
    device = resolve_device(device)
    net.to(device)
    correct, loss = (
        torch.zeros((), device=device),
        torch.zeros((), dtype=torch.float64, device=device),
    )
    with _modes_kept(net):
        net.eval()
        for X, y in _batches(dataset, torch.arange(n), batch_size):
            logits, y = net(X.to(device)), y.to(device)
            loss += F_.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
    return {"accuracy": float(correct) / n, "loss": float(loss) / n}


@torch.no_grad()
def recalibrate_batchnorm(
    net: nn.Module,
    dataset,
    num_batches: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    device="auto",
) -> nn.Module:
    """Re-estimate BN running stats after sharing: the average over the first num_batches of epoch_order(n, seed, 0).

    Only batch-norm layers run in train mode (dropout stays off, as at inference); momentum is
    set to None (cumulative average: running_mean = mean of the batch means, running_var = mean of
    the unbiased batch variances), then every mode and momentum is restored.
    """
    num_batches, batch_size = (
        check_int("num_batches", num_batches, 1),
        check_int("batch_size", batch_size, 1),
    )
    n, seed = _check_dataset("dataset", dataset), check_int("seed", seed, 0, 2**63 - 1)
    device = resolve_device(device)
    bns = [
        m
        for m in net.to(device).modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]
    momenta = [m.momentum for m in bns]
    with _modes_kept(net):
        net.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            for X, _ in _batches(
                dataset, epoch_order(n, seed, 0)[: num_batches * batch_size], batch_size
            ):
                net(X.to(device))
        finally:
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
    return net
