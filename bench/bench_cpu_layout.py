"""The cpu profile's speed settings vs torch's defaults: WRN-10-1 train steps and test batches
(goal ≥ 1.2×).

The cpu profile keeps the nets in channels_last layout (`Profile.memory_format`, part of every cache
key: the convs sum in another order) and keeps freed activations in the process
(`dkm.training.allocator`:
glibc would otherwise hand them back to the OS and page-fault them in again every batch). The
allocator setting lasts for the whole process, so each side runs in a fresh child process, the
sides interleaved per repeat; each child times 20 training steps (batch 128) and 10 test batches
(batch 512) after a warm-up, with the cpu profile's 2 threads. Ratio: default time / tuned time of
(train steps + test batches); the two settings are also timed one at a time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time

SIDES = {
    "default": (False, False),
    "channels_last": (True, False),
    "allocator": (False, True),
    "cpu profile": (True, True),
}
TRAIN_STEPS, TEST_BATCHES = 20, 10


def child(channels_last: bool, allocator: bool) -> dict:
    import torch

    from dkm.training.allocator import keep_freed_memory
    from dkm.training.models import wide_resnet

    kept = keep_freed_memory() if allocator else False
    torch.set_num_threads(2)
    torch.manual_seed(0)
    net = wide_resnet(depth=10, widen_factor=1, in_channels=1, num_classes=10, conv_bias=False)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x, y, test = (
        torch.randn(128, 1, 28, 28),
        torch.randint(0, 10, (128,)),
        torch.randn(512, 1, 28, 28),
    )

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(TRAIN_STEPS):
        step()
    train_s = (time.perf_counter() - start) / TRAIN_STEPS
    net.eval()
    with torch.no_grad():
        net(test)
        start = time.perf_counter()
        for _ in range(TEST_BATCHES):
            net(test)
    return {
        "train_step_s": train_s,
        "test_batch_s": (time.perf_counter() - start) / TEST_BATCHES,
        "allocator_set": kept,
    }


def _spawn(side: str) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(__file__.rsplit('/', 1)[0])!r}); "
        "import bench_cpu_layout as b; "
        f"print(json.dumps(b.child(*{SIDES[side]!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def run(repeats: int = 5) -> dict:
    times = {side: [] for side in SIDES}
    for _ in range(repeats):
        for side in SIDES:
            r = _spawn(side)
            if SIDES[side][1] and not r["allocator_set"]:
                raise RuntimeError(
                    "dkm.training.allocator.keep_freed_memory() did not apply here (not glibc, or "
                    "MALLOC_*_/GLIBC_TUNABLES set): this benchmark needs it"
                )
            times[side].append(r["train_step_s"] + r["test_batch_s"])
    median = {side: statistics.median(t) for side, t in times.items()}
    ratio = median["default"] / median["cpu profile"]
    return {
        "name": "cpu_profile_layout_and_allocator",
        "seconds_per_step_plus_batch": median,
        "ratio": ratio,
        "speedup_channels_last_alone": median["default"] / median["channels_last"],
        "speedup_allocator_alone": median["default"] / median["allocator"],
        "goal": (
            "default/cpu-profile time >= 1.2 (WRN-10-1, 2 threads, train step 128 + test batch 512)"
        ),
        "met": ratio >= 1.2,
    }


if __name__ == "__main__":
    print(run())
