"""`dkm.training.loop.train` vs a bare PyTorch loop doing the same work: throughput (goal ≥ 0.95×).

The work is one re-training run of the default (`cpu`) profile without the regularizer: its net
(WRN-16-1 with the authors' 16 convs, channels_last, from a seeded initialization), its 5000
Fashion-MNIST re-training images, its re-training config (1 epoch, batch 128, SGD lr 0.01, momentum
0.9, weight decay 5e-4, cosine lr per step, a history record every 10 steps) on its 2 threads, with
glibc keeping freed memory (`dkm.training.allocator`), as `dkm.experiments.pipeline` runs a stage.
The bare loop
(`bare_train`) is what a PyTorch user writes for the same run: the same optimizer and per-step
lr (LambdaLR), the same batches in the same order (`dkm.training.data.epoch_order`), forward,
cross-entropy,
backward, step; nothing else. It gives bit-identical weights (tests/test_bench.py), so the two sides
differ only by what `dkm.training.loop` adds: checks, the running sums, the history, the progress
bar.

Each timed side is a whole call (optimizer creation to the last step), on its own copy of the net;
the sides alternate, one run each per repeat, after one warm-up run each. Ratio: images/s of
`dkm.training.loop.train` / images/s of the bare loop, from the median times.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F_

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from dkm.experiments.profiles import get_profile
from dkm.training.allocator import keep_freed_memory
from dkm.training.data import epoch_order, fashion_mnist
from dkm.training.loop import learning_rate, train
from dkm.training.models import build_model
from dkm.training.threads import torch_threads

GOAL = 0.95


def bare_train(net, X, y, config) -> None:
    """`config.epochs` epochs of plain SGD on (X, y): the loop of `dkm.training.loop.train`,
    bare."""
    torch.manual_seed(config.seed)  # dropout, as train() does for a fresh run
    steps = math.ceil(len(y) / config.batch_size)
    opt = torch.optim.SGD(
        net.parameters(), lr=config.lr, momentum=config.momentum,
        weight_decay=config.weight_decay, nesterov=config.nesterov,
    )  # fmt: skip
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda t: learning_rate(config, t, steps) / config.lr
    )
    net.train()
    for epoch in range(config.epochs):
        for idx in epoch_order(len(y), config.seed, epoch).split(config.batch_size):
            loss = F_.cross_entropy(net(X[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()


def _setup():
    """(net, train_set, config, threads) of the cpu profile's re-training, net seeded, no file."""
    profile = get_profile("cpu")
    torch.manual_seed(profile.pretrain.seed)
    net = build_model(profile.model, **profile.model_kwargs)
    if profile.memory_format == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    config = dataclasses.replace(profile.retrain, device="cpu")
    return net, fashion_mnist(True, n=profile.n_retrain), config, profile.threads


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(repeats: int = 5) -> dict:
    net, train_set, config, threads = _setup()
    X, y = train_set.tensors
    ours, bare = copy.deepcopy(net), copy.deepcopy(net)
    sides = {
        "dkm.training.loop": lambda: train(ours, train_set, config, progress=False),
        "bare": lambda: bare_train(bare, X, y, config),
    }
    keep_freed_memory()  # as dkm.experiments.pipeline does for every stage (lasts for the process)
    times = {side: [] for side in sides}
    with torch_threads(threads):
        for fn in sides.values():  # warm-up
            fn()
        for _ in range(repeats):
            for side, fn in sides.items():
                times[side].append(_timed(fn))
    median = {side: statistics.median(t) for side, t in times.items()}
    images_per_s = {side: len(y) * config.epochs / t for side, t in median.items()}
    ratio = images_per_s["dkm.training.loop"] / images_per_s["bare"]
    return {
        "name": "train_loop_vs_bare_pytorch",
        "images_per_s": images_per_s,
        "seconds_per_run": median,
        "images": len(y) * config.epochs,
        "threads": threads,
        "ratio": ratio,
        "goal": (
            f"dkm.training.loop images/s / bare loop's >= {GOAL} (cpu profile re-training run: "
            "WRN-16-1, channels_last, 5000 images, batch 128, 2 threads, no regularizer)"
        ),
        "met": ratio >= GOAL,
    }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
