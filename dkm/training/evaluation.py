"""Evaluation and batch-norm re-estimation after sharing (paper §5), and the device choice.

Batch norm is re-estimated on the first batches of `dkm.training.data.epoch_order(n, seed, 0)`: the
same
images for the same seed.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F_
from torch import nn

from dkm._checks import check_choice, check_int
from dkm.training.data import batches, check_dataset, epoch_order

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device="auto") -> torch.device:
    """'auto' → CUDA when available, else CPU; 'cuda' without CUDA is an error."""
    if isinstance(device, torch.device):
        return device
    check_choice("device", device, DEVICES)
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "device='cuda' is not available (torch.cuda.is_available() is False): "
            "allowed 'auto' or 'cpu'"
        )
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@contextlib.contextmanager
def modes_kept(net: nn.Module):
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
    """{'accuracy': top-1, 'loss': mean cross-entropy} in eval mode (§5).

    The net is moved to `device`.
    """
    batch_size, n = check_int("batch_size", batch_size, 1), check_dataset("dataset", dataset)
    device = resolve_device(device)
    net.to(device)
    correct, loss = (
        torch.zeros((), device=device),
        torch.zeros((), dtype=torch.float64, device=device),
    )
    with modes_kept(net):
        net.eval()
        for X, y in batches(dataset, torch.arange(n), batch_size):
            logits, y = net(X.to(device)), y.to(device)
            loss += F_.cross_entropy(logits, y, reduction="sum").double()
            correct += (logits.argmax(1) == y).sum()
    return {"accuracy": float(correct) / n, "loss": float(loss) / n}


def _tracked_batchnorms(net: nn.Module) -> list:
    """The batch-norm layers of `net` that track running stats."""
    return [
        m
        for m in net.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recalibrate_batchnorm(
    net: nn.Module,
    dataset,
    num_batches: int = 20,
    batch_size: int = 128,
    seed: int = 0,
    device="auto",
) -> nn.Module:
    """Re-estimate BN running stats after sharing, over the first batches of the data.

    The average is over the first num_batches of epoch_order(n, seed, 0). Only batch-norm layers
    run in train mode (dropout stays off, as at inference); momentum is set to None (cumulative
    average: running_mean = mean of the batch means, running_var = mean of the unbiased batch
    variances), then every mode and momentum is restored.
    """
    num_batches = check_int("num_batches", num_batches, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    n, seed = check_dataset("dataset", dataset), check_int("seed", seed, 0, 2**63 - 1)
    device = resolve_device(device)
    bns = _tracked_batchnorms(net.to(device))
    momenta = [m.momentum for m in bns]
    with modes_kept(net):
        net.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None
            m.train()
        try:
            order = epoch_order(n, seed, 0)[: num_batches * batch_size]
            for X, _ in batches(dataset, order, batch_size):
                net(X.to(device))
        finally:
            for m, momentum in zip(bns, momenta):
                m.momentum = momentum
    return net
