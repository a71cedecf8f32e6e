"""Checkpoints of `dkm.train`: written atomically, validated before a run resumes from them.

A checkpoint is a dict saved with torch.save: "format" = FORMAT, "format_version", the run's
config and every piece of state listed in `KEYS`. `load_checkpoint` refuses (CheckpointError naming
the file) a file that is unreadable, foreign, of another version, incomplete, or of another training
config (fields in RESUME_FREE excepted: they do not change the maths).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ._io import atomic_open

if TYPE_CHECKING:
    from .train import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "dkm.train.checkpoint"
FORMAT_VERSION = 1
# config fields that may differ between an interrupted run and its resumption (no effect on the
# maths)
RESUME_FREE = ("device", "threads", "log_every", "checkpoint_every")
KEYS = (
    "config",
    "step",
    "epoch",
    "batch",
    "seconds",
    "model",
    "optimizer",
    "scheduler",
    "regularizer",
    "rng",
    "sums",
    "history",
)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed (corrupt, foreign, other version or config).

    The message names the file.
    """


def save_atomic(obj, path) -> None:
    """torch.save to a temp file in the same directory, fsync, then os.replace.

    `path` is always whole.
    """
    with atomic_open(path) as f:
        torch.save(obj, f)


def remove_stale_temps(path: Path) -> None:
    """Temp files left by a run killed while writing (never the checkpoint itself)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def load_checkpoint(path, config: "TrainConfig | None" = None, map_location="cpu") -> dict:
    """Load and validate a checkpoint of `train`; with `config`, also check it is of that config."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # any unreadable file: truncated, not a zip, a foreign pickle…
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(e).__name__}: {e}); delete it to start over"
        ) from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} is not a {FORMAT} file (a foreign checkpoint?)")
    if ckpt.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format_version={ckpt.get('format_version')!r}: "
            f"allowed {FORMAT_VERSION}"
        )
    missing = [k for k in KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(
            f"checkpoint {path} lacks {missing}: a damaged or hand-edited checkpoint"
        )
    if config is not None:
        _check_same_config(path, ckpt["config"], config.to_dict())
    return ckpt


def _check_same_config(path: Path, saved: dict, current: dict) -> None:
    keys = sorted((set(saved) | set(current)) - set(RESUME_FREE))
    diffs = [
        f"{k}={saved.get(k)!r} in the checkpoint, {current.get(k)!r} now"
        for k in keys
        if saved.get(k) != current.get(k)
    ]
    if diffs:
        raise CheckpointError(
            f"checkpoint {path} was written with another config: {'; '.join(diffs)}"
        )
