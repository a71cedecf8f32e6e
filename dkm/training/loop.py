"""Training and evaluation loops: pre-training, and re-training with the k-means regularizer.

The method is that of paper §3.2 and §5.

Conventions (the contract the pipeline relies on):
- SGD with momentum (optionally Nesterov) and weight decay on every parameter.
  Loss = cross-entropy + regularizer.penalty(); regularizer.after_step() after every optimizer step.
- The learning rate is set **per step**: `cosine` anneals lr → min_lr over all steps; `step`
  multiplies lr by gamma at each epoch listed in `milestones` (so it changes only at epoch
  boundaries); `constant` keeps lr. See `learning_rate`.
- Data order is a function of (seed, epoch) only (`epoch_order`), so a resumed run skips the
  batches it has already seen, exactly. A fresh run calls torch.manual_seed(seed) (dropout);
  the net's initialization is the caller's. On CPU the same seed gives bit-identical weights
  without torch.use_deterministic_algorithms; on CUDA, enable it yourself if you need that.
- Counting: `step` = optimizer steps done (1-based in records), `epoch` = 0-based epoch index.
- Checkpoints: `<checkpoint_dir>/checkpoint.pt`, written atomically (temp file in the same
  directory, fsync, os.replace) after every epoch and every `checkpoint_every` steps.
- Progress: one tqdm bar, shown only when interactive (stderr is a TTY and $CI unset;
  $DKM_PROGRESS=0/1 overrides), or as `progress=True/False` asks. Nothing else is printed.
- Data-parallel under torchrun (dkm.training.distributed): the net is wrapped in DDP, each global
batch of
  the same (seed, epoch) order is split over the ranks, rank 0 alone locks and writes the
  checkpoint (with every rank's generator state), and every rank resumes from it; at each epoch
  end and checkpoint the ranks check that their weights and F agree. Serial runs are unchanged.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F_
from torch import nn
from tqdm.auto import tqdm

from dkm._checks import check_choice, check_float, check_int
from dkm.training import distributed
from dkm.training.checkpoint import (
    CHECKPOINT_NAME,
    FORMAT,
    FORMAT_VERSION,
    CheckpointError,
    digest,
    load_checkpoint,
    remove_stale_temps,
    save_checkpoint,
)
from dkm.training.data import check_dataset, epoch_order
from dkm.training.evaluation import DEVICES, evaluate, modes_kept, resolve_device
from dkm.training.threads import torch_threads

SCHEDULES = ("cosine", "step", "constant")
HISTORY_VERSION = 1


class TrainingDivergedError(ValueError):
    """A run whose loss or weights became NaN or ±inf (too large a learning rate or λ)."""


def _check_bool(name: str, value) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Every hyper-parameter of a training run (paper §5: SGD, momentum 0.9, weight decay 5e-4)."""

    epochs: int = 1
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    batch_size: int = 128
    schedule: str = "cosine"
    min_lr: float = 0.0  # cosine: the final learning rate
    milestones: tuple = ()  # step: epochs at which lr is multiplied by gamma
    gamma: float = 0.1  # step: the factor
    seed: int = 0
    device: str = "auto"
    log_every: int = 50  # steps between history records
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0: only at epoch ends)
    threads: int | None = None  # torch threads while training (restored after); None: left as is

    def __post_init__(self):
        check_int("epochs", self.epochs, 1)
        check_float("lr", self.lr, 0.0, lo_open=True)
        check_float("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        check_float("weight_decay", self.weight_decay, 0.0)
        if _check_bool("nesterov", self.nesterov) and self.momentum == 0:
            raise ValueError(
                "nesterov=True needs momentum > 0: allowed momentum in (0, 1) with nesterov"
            )
        check_int("batch_size", self.batch_size, 1)
        check_choice("schedule", self.schedule, SCHEDULES)
        check_float("min_lr", self.min_lr, 0.0, self.lr)
        object.__setattr__(self, "milestones", _check_milestones(self.milestones))
        check_float("gamma", self.gamma, 0.0, 1.0, lo_open=True)
        check_int("seed", self.seed, 0, 2**63 - 1)
        check_choice("device", self.device, DEVICES)
        check_int("log_every", self.log_every, 1)
        check_int("checkpoint_every", self.checkpoint_every, 0)
        if self.threads is not None:
            check_int("threads", self.threads, 1, 1024)

    def to_dict(self) -> dict:
        """Plain JSON-able dict (milestones as a list)."""
        return {**dataclasses.asdict(self), "milestones": list(self.milestones)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Inverse of `to_dict`; unknown keys are an error naming them."""
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(
                f"TrainConfig: unknown field(s) {unknown}: "
                f"allowed {[f.name for f in dataclasses.fields(cls)]}"
            )
        return cls(**d)


def _check_milestones(milestones) -> tuple:
    if not isinstance(milestones, (list, tuple)):
        raise TypeError(f"milestones must be a list of epochs, got {milestones!r}")
    ms = tuple(check_int(f"milestones[{i}]", m, 1) for i, m in enumerate(milestones))
    if any(a >= b for a, b in zip(ms, ms[1:])):
        raise ValueError(
            f"milestones={list(ms)} is not allowed: epochs must be strictly increasing"
        )
    return ms


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Learning rate of the optimizer step with 0-based index `step` (module docstring)."""
    if config.schedule == "cosine":
        # lr_t = min_lr + (lr − min_lr)·(1 + cos(π·t/T))/2, T = total number of steps
        total = config.epochs * steps_per_epoch
        return (
            config.min_lr + (config.lr - config.min_lr) * (1 + math.cos(math.pi * step / total)) / 2
        )
    if config.schedule == "step":
        # lr·γ^(number of milestones ≤ current epoch)
        epoch = step // steps_per_epoch
        return config.lr * config.gamma ** sum(epoch >= m for m in config.milestones)
    return config.lr


def show_progress(progress=None) -> bool:
    """progress=True/False as given; None → $DKM_PROGRESS if 0/1, else off under $CI or no TTY."""
    if progress is not None:
        return _check_bool("progress", progress)
    if os.environ.get("DKM_PROGRESS") in ("0", "1"):
        return os.environ["DKM_PROGRESS"] == "1"
    return not os.environ.get("CI") and sys.stderr is not None and sys.stderr.isatty()


# ---------------------------------------------------------------- history
@dataclass
class History:
    """Per-log-interval records (`steps`) and per-epoch records (`epochs`), JSON-serializable."""

    # {step, epoch, loss, task_loss, penalty, lr, train_accuracy, layer_errors}: loss terms and
    # accuracy averaged over the steps since the last record; layer_errors as in `epochs` (None
    # without regularizer.layer_errors)
    steps: list = field(default_factory=list)
    # {epoch, step, train_loss, train_accuracy, eval_accuracy, eval_loss, layer_errors, seconds};
    # train_* are running means over the epoch's batches in train mode (no extra pass); eval_* None
    # without eval_set
    epochs: list = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "format_version": HISTORY_VERSION,
            "steps": copy.deepcopy(self.steps),
            "epochs": copy.deepcopy(self.epochs),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "History":
        if not isinstance(d, dict) or d.get("format_version") != HISTORY_VERSION:
            version = d.get("format_version") if isinstance(d, dict) else None
            raise ValueError(f"history format_version={version!r}: allowed {HISTORY_VERSION}")
        return cls(copy.deepcopy(d["steps"]), copy.deepcopy(d["epochs"]))

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "History":
        return cls.from_dict(json.loads(text))


# ---------------------------------------------------------------- the training loop
def _zeros(device) -> torch.Tensor:
    # running sums of [loss, task loss, penalty, #correct, #images, #steps]
    return torch.zeros(6, dtype=torch.float64, device=device)


class _Run:
    """The state of one training run: everything a checkpoint holds."""

    def __init__(self, net, train_set, config: TrainConfig, regularizer):
        self.net, self.train_set, self.config, self.regularizer = (
            net,
            train_set,
            config,
            regularizer,
        )
        self.device = resolve_device(config.device)
        self.n = check_dataset("train_set", train_set)
        self.steps_per_epoch = math.ceil(self.n / config.batch_size)
        self.optimizer = torch.optim.SGD(
            net.to(self.device).parameters(),
            lr=config.lr,
            momentum=config.momentum,
            weight_decay=config.weight_decay,
            nesterov=config.nesterov,
        )
        distributed.check_shards(self.n, config.batch_size)
        self.model = distributed.wrap(net, self.device)  # DDP under torchrun, else `net`
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda t: learning_rate(config, t, self.steps_per_epoch) / config.lr
        )
        self.history, self.step, self.epoch, self.batch, self.seconds = History(), 0, 0, 0, 0.0
        self.interval, self.epoch_sums = _zeros(self.device), _zeros(self.device)

    def state(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "batch": self.batch,
            "seconds": self.seconds,
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "regularizer": None if self.regularizer is None else self.regularizer.state_dict(),
            "rng": self.rng_state(),
            "sums": {"interval": self.interval, "epoch": self.epoch_sums},
            "history": self.history.to_dict(),
        }

    def rng_state(self) -> dict:
        """The generators' state; data-parallel: {"ranks": [the state of each rank]}."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        mine = {"torch": torch.get_rng_state(), "cuda": cuda}
        return mine if distributed.world_size() == 1 else {"ranks": distributed.gather(mine)}

    def restore(self, ckpt: dict, path: Path) -> None:
        ranks = len(ckpt["rng"].get("ranks", [None]))
        if ranks != distributed.world_size():
            raise CheckpointError(
                f"checkpoint {path} was written by {ranks} process(es); this run has "
                f"{distributed.world_size()}: resume it with as many"
            )
        if (ckpt["regularizer"] is None) != (self.regularizer is None):
            had = "without" if ckpt["regularizer"] is None else "with"
            raise CheckpointError(
                f"checkpoint {path} was written {had} a regularizer; this run differs"
            )
        backup = copy.deepcopy(self.net.state_dict())
        try:
            self.net.load_state_dict(ckpt["model"])
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if self.regularizer is not None:
                self.regularizer.load_state_dict(ckpt["regularizer"])
        except (RuntimeError, ValueError, KeyError, TypeError) as e:
            self.net.load_state_dict(backup)
            raise CheckpointError(
                f"checkpoint {path} does not fit this net/regularizer: {e}"
            ) from e
        self.step, self.epoch, self.batch, self.seconds = (
            ckpt["step"],
            ckpt["epoch"],
            ckpt["batch"],
            ckpt["seconds"],
        )
        self.interval, self.epoch_sums = (
            ckpt["sums"][k].to(self.device) for k in ("interval", "epoch")
        )
        self.history = History.from_dict(ckpt["history"])
        rng = ckpt["rng"]["ranks"][distributed.rank()] if ranks > 1 else ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save(self, path: Path) -> None:
        """Write the checkpoint (rank 0 writes; every rank gives its generator state)."""
        state = self.state()
        if distributed.is_main():
            save_checkpoint(state, path)

    def check_agree(self) -> None:
        """Data-parallel: RuntimeError unless every rank holds the same weights and F."""
        if distributed.world_size() > 1:
            reg = None if self.regularizer is None else self.regularizer.state_dict()
            mine = {"params": [p.detach() for p in self.net.parameters()], "regularizer": reg}
            distributed.check_agree(digest(mine), f"the weights and F at step {self.step}")

    def train_step(self, X, y, size: int) -> float:
        """One SGD step on loss = CE + penalty (X, y: this rank's share of a batch of `size`);
        returns the learning rate it used."""
        X, y = X.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        logits = self.model(X)
        task = distributed.weighted(F_.cross_entropy(logits, y), len(y), size)
        penalty = self.regularizer.penalty() if self.regularizer is not None else task.new_zeros(())
        loss = task + penalty
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        if self.regularizer is not None:
            try:
                self.regularizer.after_step()  # its F refresh refuses non-finite weights
            except ValueError:
                self.check_finite_weights()
                raise
        correct = (logits.detach().argmax(1) == y).sum()
        sums = torch.stack([t.detach().double() for t in (loss, task, penalty, correct)])
        # filled on the device, not copied from a list: a copy from the host would wait for the
        # device at every step (torch synchronizes a blocking host-to-device copy)
        row = distributed.sum_row(torch.cat([sums, sums.new_full((1,), len(y)), sums.new_ones(1)]))
        self.interval += row
        self.epoch_sums += row
        self.step, self.batch = self.step + 1, self.batch + 1
        return lr

    def log(self, lr: float, bar) -> None:
        loss, task, penalty, correct, images, count = (
            self.interval.tolist()
        )  # the only sync of a logging step
        if not math.isfinite(loss):
            self.diverged(f"the loss is {loss}")
        self.history.steps.append(
            {
                "step": self.step,
                "epoch": self.epoch,
                "loss": loss / count,
                "task_loss": task / count,
                "penalty": penalty / count,
                "lr": lr,
                "train_accuracy": correct / images,
                "layer_errors": self.layer_errors(),
            }
        )
        self.interval.zero_()
        bar.set_postfix(epoch=self.epoch, loss=f"{loss / count:.4f}", refresh=False)

    def check_finite_weights(self) -> None:
        """TrainingDivergedError if some weight of the net is NaN or ±inf."""
        bad = [n for n, t in self.net.named_parameters() if not torch.isfinite(t).all()]
        if bad:
            self.diverged(f"weights {bad[:3]} are not finite")

    def diverged(self, what: str) -> None:
        lam = getattr(self.regularizer, "lam", None)
        raise TrainingDivergedError(
            f"training diverged at step {self.step} (epoch {self.epoch}): {what}; lower lr "
            f"(now {self.config.lr:g})" + ("" if lam is None else f" or λ (now {lam:g})")
        )

    def layer_errors(self) -> dict | None:
        """{layer: ‖W(I − FFᵀ)‖²} of the regularizer now, or None.

        With the indicator F, each value is that layer's k-means error.
        """
        if not hasattr(self.regularizer, "layer_errors"):
            return None
        return {str(k): float(v) for k, v in self.regularizer.layer_errors().items()}

    def end_epoch(self, eval_set, started: float) -> dict:
        distributed.sync_buffers(self.net)
        self.check_agree()
        loss, _, _, correct, count, steps = self.epoch_sums.tolist()
        record = {
            "epoch": self.epoch,
            "step": self.step,
            "train_loss": loss / steps,
            "train_accuracy": correct / count,
            "eval_accuracy": None,
            "eval_loss": None,
            "layer_errors": self.layer_errors(),
            "seconds": self.seconds + time.perf_counter() - started,
        }
        if eval_set is not None:
            result = evaluate(self.net, eval_set, device=self.device)
            record.update(eval_accuracy=result["accuracy"], eval_loss=result["loss"])
        self.history.epochs.append(record)
        self.epoch, self.batch, self.seconds = self.epoch + 1, 0, 0.0
        self.epoch_sums.zero_()
        return record

    def run_epoch(self, bar, path, eval_set, on_epoch_end) -> None:
        cfg, started = self.config, time.perf_counter()
        order = epoch_order(self.n, cfg.seed, self.epoch)[self.batch * cfg.batch_size :]
        for X, y, size in distributed.shards(self.train_set, order, cfg.batch_size):
            lr = self.train_step(X, y, size)
            bar.update(1)
            if self.step % cfg.log_every == 0 or self.batch == self.steps_per_epoch:
                self.log(lr, bar)
            if (
                path is not None
                and cfg.checkpoint_every
                and self.step % cfg.checkpoint_every == 0
                and self.batch < self.steps_per_epoch
            ):
                self.seconds += time.perf_counter() - started
                started = time.perf_counter()
                self.check_agree()
                self.save(path)
        record = self.end_epoch(eval_set, started)
        if path is not None:
            self.save(path)
        if on_epoch_end is not None:
            on_epoch_end(copy.deepcopy(record))


def _check_regularizer(regularizer) -> None:
    missing = [
        m
        for m in ("penalty", "after_step", "state_dict", "load_state_dict")
        if not hasattr(regularizer, m)
    ]
    if missing:
        raise TypeError(
            f"regularizer={type(regularizer).__name__} lacks {missing}: "
            "allowed None or an object with "
            "penalty(), after_step(), state_dict(), load_state_dict() "
            "(e.g. dkm.regularizer.KMeansRegularizer)"
        )


def train(
    net: nn.Module,
    train_set,
    config: TrainConfig,
    regularizer=None,
    checkpoint_dir=None,
    resume: bool = True,
    progress=None,
    eval_set=None,
    on_epoch_end=None,
) -> History:
    """Train `net` in place (moved to config.device): SGD on CE + regularizer penalty (§3.2).

    Training is checkpointed and resumable. With `checkpoint_dir` and resume=True, a run continues
    from `<checkpoint_dir>/checkpoint.pt` (a finished run returns at once); resume=False starts
    over and overwrites it. A checkpoint that is corrupt, foreign or of another config raises
    CheckpointError before anything is written. `on_epoch_end(record)` is called after each
    epoch's checkpoint. The net's train/eval flags are restored on return.
    """
    if not isinstance(config, TrainConfig):
        raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
    if regularizer is not None:
        _check_regularizer(regularizer)
    _check_bool("resume", resume)
    show = show_progress(progress) and distributed.is_main()
    with torch_threads(config.threads):
        return _train(
            net,
            train_set,
            config,
            regularizer,
            checkpoint_dir,
            resume,
            eval_set,
            on_epoch_end,
            show,
        )


def _train(
    net, train_set, config, regularizer, checkpoint_dir, resume, eval_set, on_epoch_end, show
) -> History:
    run = _Run(net, train_set, config, regularizer)
    if checkpoint_dir is None:
        return _loop(run, None, eval_set, on_epoch_end, show)
    # one run at a time in a checkpoint directory: a second waits, then resumes (or returns)
    with distributed.locked_by_main(checkpoint_dir):
        path = Path(checkpoint_dir) / CHECKPOINT_NAME
        if distributed.broadcast(resume and path.exists()):  # rank 0 decides for every rank
            run.restore(load_checkpoint(path, config, run.device), path)
        else:
            torch.manual_seed(distributed.rank_seed(config.seed))
        if distributed.is_main():
            remove_stale_temps(path)
        return _loop(run, path, eval_set, on_epoch_end, show)


def _loop(run: _Run, path, eval_set, on_epoch_end, show) -> History:
    """The epochs left of `run` (all of them for a fresh run), checkpointed at `path`."""
    net, config = run.net, run.config
    if path is None:
        torch.manual_seed(distributed.rank_seed(config.seed))
    total = config.epochs * run.steps_per_epoch
    with (
        modes_kept(net),
        tqdm(
            total=total,
            initial=run.step,
            desc="train",
            unit="step",
            disable=not show,
            leave=False,
            dynamic_ncols=True,
        ) as bar,
    ):
        net.train()
        while run.epoch < config.epochs:
            run.run_epoch(bar, path, eval_set, on_epoch_end)
    return run.history
