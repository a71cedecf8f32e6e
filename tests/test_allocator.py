"""dkm.training.allocator: glibc thresholds set once, the user's own settings respected, no number
changed."""

import os
import subprocess
import sys

import pytest

from dkm.training import allocator as _allocator


def test_user_settings_are_respected(monkeypatch):
    _allocator.keep_freed_memory.cache_clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "0")
    try:
        assert _allocator.keep_freed_memory() is False
    finally:
        _allocator.keep_freed_memory.cache_clear()


CHILD = """
import hashlib, sys, torch
from dkm.training.allocator import keep_freed_memory
from dkm.training.models import wide_resnet
print(keep_freed_memory() if sys.argv[1] == "1" else False)
torch.set_num_threads(2); torch.manual_seed(0)
net = wide_resnet(depth=10, widen_factor=1, in_channels=1, num_classes=10, conv_bias=False)
opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(256, 1, 28, 28), torch.randint(0, 10, (256,))
for _ in range(3):
    opt.zero_grad(); torch.nn.functional.cross_entropy(net(x), y).backward(); opt.step()
state = b"".join(t.detach().contiguous().numpy().tobytes() for t in net.state_dict().values())
print(hashlib.sha256(state).hexdigest())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_training_gives_the_same_bits_with_and_without_it():
    runs = [
        subprocess.run(
            [sys.executable, "-c", CHILD, flag],
            check=True,
            capture_output=True,
            text=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")},
        ).stdout.split()
        for flag in ("0", "1")
    ]
    assert (
        runs[0][0] == "False" and runs[1][0] == "True"
    )  # the setting applied on this (glibc) machine
    assert runs[0][1] == runs[1][1]  # and changed no bit of the trained weights
