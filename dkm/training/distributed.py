"""One training run over several processes: torchrun and DistributedDataParallel (DDP).

`torchrun --standalone --nproc-per-node=N -m dkm pretrain|retrain ...` trains one configuration
data-parallel; `dkm.training.loop` asks this module who it is and what it trains on. Without
torchrun (or
with one process) every function here is the identity, so a serial run is today's, bit for bit.

Choices made here:
- Process group: from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
  MASTER_PORT), backend nccl on CUDA (rank r on GPU LOCAL_RANK), gloo on CPU (`process_group`).
- Data: the global batch is the configured batch_size. Each epoch's order is the serial
  `dkm.training.data.epoch_order(n, seed, epoch)`; each global batch of it is cut into WORLD_SIZE
  contiguous near-equal slices (torch.tensor_split) and rank r trains on slice r (`shards`). So
  steps per epoch, the learning rate of each step, F refreshes, logging, checkpoints and the
  resume position count the same steps as a serial run. Each rank's cross-entropy is weighted by
  its slice's share (`weighted`), so the averaged gradient is the mean over the global batch.
- What differs from a serial run: batch norm normalizes each slice by its own statistics and the
  running averages are rank 0's (DDP broadcasts them at each forward), and floating-point sums run
  in another order. A run of N > 1 processes is therefore another configuration: the pipeline puts
  "world_size" in its cache key (only when N > 1, so every serial key stays as it was).
- F is deterministic everywhere: every rank refreshes its own F from its own replica of the
  weights. DDP keeps the replicas identical (rank 0's weights broadcast at the start, gradients
  all-reduced, the same optimizer step), and k-means and the SVD are seeded and run with the same
  thread count, so each rank computes the same F. Checked, not assumed: at each epoch end and each
  checkpoint the ranks compare a SHA-256 of their parameters and regularizer state (F included),
  and stop with an error naming the ranks if they differ (`check_agree`).
- Random numbers (dropout): rank 0 draws from the run's seed, rank r > 0 from a stream mixed from
  (seed, r) (`rank_seed`); a checkpoint holds every rank's generator state, so a resumed run draws
  what the uninterrupted one would have.
- Files: rank 0 alone holds the run directories' locks and writes checkpoints, models and commit
  markers; the other ranks read them. One machine, or a file system shared by every node.
"""

from __future__ import annotations

import contextlib
import datetime
import os

import numpy as np
import torch
import torch.distributed as dist

from dkm.io import locked
from dkm.training.data import batches

_ALONE = [0]  # depth of `alone()` blocks: inside one, this process acts as a serial run
# how long a rank waits for the others (rank 0 may compute a stage alone, e.g. the plan)
TIMEOUT = datetime.timedelta(hours=2)


def launched() -> bool:
    """Is this process one of several started by torchrun (WORLD_SIZE > 1 in the environment)?"""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def launch_rank() -> int:
    """This process's RANK in torchrun's environment (0 without torchrun)."""
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """Number of processes training together (1: serial, or inside `alone`)."""
    if _ALONE[0] or not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def rank() -> int:
    """This process's rank among `world_size()` (0 when serial)."""
    return dist.get_rank() if world_size() > 1 else 0


def is_main() -> bool:
    """Rank 0: the process that writes files and prints."""
    return rank() == 0


@contextlib.contextmanager
def alone():
    """Run the block as a serial run (rank 0 computing a stage the others then read)."""
    _ALONE[0] += 1
    try:
        yield
    finally:
        _ALONE[0] -= 1


# ---------------------------------------------------------------- the process group
def _backend(device: str) -> str:
    """nccl where the profile trains on CUDA (one GPU per local process), else gloo."""
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if not cuda:
        return "gloo"
    local = int(os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1")))
    if torch.cuda.device_count() < local:
        raise ValueError(
            f"torchrun started {local} processes on this machine but it has "
            f"{torch.cuda.device_count()} GPU(s): allowed --nproc-per-node ≤ the number of GPUs"
        )
    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return "nccl"


@contextlib.contextmanager
def process_group(device: str = "auto"):
    """The process group of a torchrun launch for the block (nothing without one)."""
    if not launched() or dist.is_initialized():
        yield
        return
    backend = _backend(device)
    if backend == "nccl":
        gpu = torch.device("cuda", torch.cuda.current_device())
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=gpu)
    else:
        dist.init_process_group(backend, timeout=TIMEOUT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def broadcast(obj):
    """Rank 0's `obj` on every rank (a decision all ranks must share)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """[obj of rank 0, obj of rank 1, ...] on every rank."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def barrier() -> None:
    """Wait until every rank is here."""
    if world_size() > 1:
        dist.barrier()


@contextlib.contextmanager
def locked_by_main(directory):
    """`dkm.io.locked(directory)` on rank 0; the other ranks follow rank 0 and take no lock."""
    with locked(directory) if is_main() else contextlib.nullcontext(directory) as d:
        yield d


# ---------------------------------------------------------------- the data of each rank
def check_shards(n: int, batch_size: int) -> None:
    """Every global batch of n images must give each rank at least one image."""
    smallest = min(batch_size, n % batch_size or batch_size)
    if smallest < world_size():
        raise ValueError(
            f"batch_size={batch_size} over {n} images makes a batch of {smallest} image(s), "
            f"too few for {world_size()} processes: allowed at most {smallest} processes"
        )


def slices(order: torch.Tensor, batch_size: int, world: int, r: int):
    """(indices of rank r, size of the global batch) for each global batch of `order`."""
    for chunk in order.split(batch_size):
        yield chunk.tensor_split(world)[r], len(chunk)


def shards(dataset, order: torch.Tensor, batch_size: int):
    """(X, y, global batch size) of this rank for each batch of `order` (serial: the batch)."""
    if world_size() == 1:
        for X, y in batches(dataset, order, batch_size):
            yield X, y, len(y)
        return
    for part, size in slices(order, batch_size, world_size(), rank()):
        X, y = next(batches(dataset, part, len(part)))
        yield X, y, size


def weighted(task: torch.Tensor, count: int, size: int) -> torch.Tensor:
    """This rank's mean loss over `count` of `size` images, scaled so that DDP's average of the
    ranks' gradients is the gradient of the mean over the global batch."""
    # mean over the batch = (1/W)·Σ_r W·(count_r/size)·mean_r
    scale = world_size() * count / size
    return task if scale == 1 else task * scale


def sum_row(row: torch.Tensor) -> torch.Tensor:
    """[loss, task, penalty, correct, images, steps] of one step summed over ranks, the loss terms
    and the step count averaged (every rank then logs and checkpoints the same sums)."""
    if world_size() == 1:
        return row
    row = row.clone()
    dist.all_reduce(row)
    # slices of the row (loss terms, step count), not a list index, which is copied from the host
    row[:3].div_(world_size())
    row[5:].div_(world_size())
    return row


# ---------------------------------------------------------------- the replicas
def wrap(net: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`net` in DistributedDataParallel (rank 0's weights broadcast); serial: `net` itself."""
    if world_size() == 1:
        return net
    ids = [torch.cuda.current_device()] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(net, device_ids=ids)


def sync_buffers(net: torch.nn.Module) -> None:
    """Rank 0's buffers (batch norm's running averages) on every rank."""
    if world_size() > 1:
        for buffer in net.buffers():
            dist.broadcast(buffer, src=0)


def rank_seed(seed: int) -> int:
    """The seed of this rank's torch generator: `seed` on rank 0, mixed from (seed, rank) else."""
    if rank() == 0:
        return seed
    return int(np.random.SeedSequence([seed, rank()]).generate_state(1, np.uint64)[0])


def check_agree(digest: str, what: str) -> None:
    """RuntimeError on every rank unless every rank has the same `digest` of `what`."""
    digests = gather(digest)
    differ = [r for r, d in enumerate(digests) if d != digests[0]]
    if differ:
        raise RuntimeError(
            f"ranks {differ} disagree with rank 0 on {what}: the replicas diverged "
            f"(a nondeterministic kernel?): run it serially, or with "
            f"torch.use_deterministic_algorithms(True)"
        )
