"""The number of torch intra-op threads, set for a block and restored after it."""

from __future__ import annotations

from contextlib import contextmanager

import torch

from dkm._checks import check_int


@contextmanager
def torch_threads(threads: int | None):
    """Run the block with `threads` torch threads (None: leave the current setting), restore after.

    On CPU, results can depend on the thread count (float sums split across threads), so a fixed
    count is part of what makes a run reproducible.
    """
    if threads is None:
        yield
        return
    check_int("threads", threads, 1, 1024)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
