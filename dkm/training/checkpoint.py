"""Checkpoints of `dkm.training.loop`: written atomically, validated before a run resumes from them.

A checkpoint is a dict saved with torch.save: "format" = FORMAT, "format_version", the run's
config and every piece of state listed in `KEYS`. `load_checkpoint` refuses (CheckpointError naming
the file) a file that is unreadable, foreign, of another version, incomplete, or of another training
config (fields in RESUME_FREE excepted: they do not change the maths).

Integrity: `save_checkpoint` adds "digest", the SHA-256 of every value it holds (tensors by
dtype, shape and bytes; the rest by repr), and `load_checkpoint` recomputes it, so a flipped byte
or a NaN written into a tensor is refused instead of resumed. A checkpoint without "digest"
(written before digests existed, by the same format version) is accepted as it is.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from dkm import io as _io
from dkm.io import WriteError, atomic_open

if TYPE_CHECKING:
    from dkm.training.loop import TrainConfig

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT = "dkm.train.checkpoint"  # written in every checkpoint: kept when the module moved
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

    `path` is always whole. A failed write (a full disk: torch reports it as a RuntimeError) is one
    WriteError naming the path; the old file is kept.
    """
    try:
        with atomic_open(path) as f:
            torch.save(obj, f)
    except RuntimeError as err:
        raise WriteError(f"cannot write {path}: {_first_line(str(err))}") from None


def save_checkpoint(state: dict, path) -> None:
    """`save_atomic` of a checkpoint `state` with its "digest" (module docstring)."""
    save_atomic({**state, "digest": digest(state)}, path)


def remove_stale_temps(path: Path) -> None:
    """Temp files left by a run killed while writing (never the checkpoint itself)."""
    _io.remove_stale_temps(Path(path).parent, Path(path).name)


def _feed(h, obj) -> None:
    """Feed `obj` (nested dicts, lists, tensors, scalars) into the hash `h`, in order."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for k, v in obj.items():
            h.update(repr(k).encode())
            _feed(h, v)
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        for v in obj:
            _feed(h, v)
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def digest(state: dict) -> str:
    """SHA-256 (hex) of every value of a checkpoint's state, "digest" itself left out."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in state.items() if k != "digest"})
    return h.hexdigest()


def unreadable_reason(path: Path, err: Exception) -> str:
    """One line on why torch.load failed (torch's multi-line advice cut to its first line)."""
    if path.is_file() and path.stat().st_size == 0:
        return "an empty file"
    text = str(err)
    if "WeightsUnpickler error:" in text:  # torch's advice to drop weights_only: left out
        text = "not a weights-only file: " + _first_line(text.split("WeightsUnpickler error:")[1])
    first = _first_line(text).split(". ")[0]  # its first sentence
    return f"{type(err).__name__}: {first[:200]}" if first else type(err).__name__


def _first_line(text: str) -> str:
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def load_checkpoint(path, config: "TrainConfig | None" = None, map_location="cpu") -> dict:
    """Load and validate a checkpoint of `train`; with `config`, also check it is of that config."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # any unreadable file: truncated, not a zip, a foreign pickle…
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({unreadable_reason(path, e)}); "
            f"delete it to start over"
        ) from None
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
    if "digest" in ckpt and ckpt["digest"] != digest(ckpt):
        raise CheckpointError(
            f"checkpoint {path} fails its checksum (a damaged file): delete {path.parent} "
            f"(or the checkpoint) to start over"
        )
    floats = {
        k: v for k, v in ckpt["model"].items() if torch.is_tensor(v) and v.is_floating_point()
    }
    bad = [k for k, v in floats.items() if not torch.isfinite(v).all()]
    if bad:  # a digest over NaN weights matches them: a training run never saves such a state
        raise CheckpointError(
            f"checkpoint {path} holds non-finite weights ({', '.join(bad[:3])}): "
            f"delete it to start over"
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
