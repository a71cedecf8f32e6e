"""One training step with the k-means regularizer vs without, on the smoke model (goal ≤ 1.15×).

Both sides run interleaved in one process (same threads, same data): for each repeat, a block of
plain steps and a block of regularized steps (indicator F, refreshed every 50 steps as in the
profiles — the refresh cost is spread over its period), median over repeats.
"""

from __future__ import annotations

import statistics
import time

import torch

from dkm.regularizer import KMeansRegularizer
from dkm.training.models import small_cnn

STEPS = 50


def _block(net, opt, x, y, reg) -> float:
    start = time.perf_counter()
    for _ in range(STEPS):
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        if reg is not None:
            loss = loss + reg.penalty()
        loss.backward()
        opt.step()
        if reg is not None:
            reg.after_step()
    return (time.perf_counter() - start) / STEPS


def run(repeats: int = 5) -> dict:
    torch.manual_seed(0)
    x, y = torch.randn(64, 1, 28, 28), torch.randint(0, 10, (64,))
    nets = [small_cnn(width=8), small_cnn(width=8)]
    opts = [torch.optim.SGD(n.parameters(), lr=0.01, momentum=0.9) for n in nets]
    reg = KMeansRegularizer(nets[1], lam=0.5, num_clusters=8, mode="indicator", refresh_every=50)
    _block(nets[0], opts[0], x, y, None), _block(nets[1], opts[1], x, y, reg)  # warm-up
    plain, regularized = [], []
    for _ in range(repeats):
        plain.append(_block(nets[0], opts[0], x, y, None))
        regularized.append(_block(nets[1], opts[1], x, y, reg))
    ratio = statistics.median(regularized) / statistics.median(plain)
    return {
        "name": "train_step_regularizer_vs_plain",
        "plain_step_s": statistics.median(plain),
        "regularized_step_s": statistics.median(regularized),
        "ratio": ratio,
        "goal": "regularized/plain step time <= 1.15 (smoke model, batch 64, indicator F, T=50)",
        "met": ratio <= 1.15,
    }


if __name__ == "__main__":
    print(run())
