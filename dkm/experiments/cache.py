"""The run cache: one directory per stage configuration, keyed by a hash of the whole configuration.

A stage's output lives in `data/runs/<stage>-<key>/` (override: $DKM_RUNS_DIR) with its
`config.json`; the key is the first 16 hex digits of the SHA-256 of the canonical JSON of the
configuration, which nests the configuration of the stage it starts from. So changing λ, K, a
seed or a learning rate never reuses a stale result. The browsing helpers at the end list the
finished runs (for the notebooks' sliders over cached runs).

What the key does not cover, the commit marker does. A stage's outputs (`OUTPUTS`) are written
first, each atomically, then `done.json` last (`commit`): the SHA-256 of each output and the code
version of every stage in the run's chain (`CODE_VERSIONS`, e.g. an evaluate run records
evaluate, retrain and pretrain). So:
- a directory without `done.json` is unfinished: the stage resumes from its checkpoint (bit-
  identical) and writes what is missing, whatever point a kill -9 stopped it at;
- a damaged output fails its checksum: `RunError` naming the directory to delete;
- a run of other code fails the version check: `StaleRunError` naming the run and how to rebuild.
  A change to training, sharing or evaluation code that can change a number bumps the version of
  every stage it touches (the code version is not in the key, so the results tables keep theirs).
- A computation first writes `pending.json` (its code versions). A run is finished only with its
  `done.json`: every file a run's readers read is in the marker's checksums. Outputs without a
  marker (a kill between the last output and the marker, or files put there by hand) are never
  adopted: the stage computes them again (bit-identical where they were the stage's own).

Under torchrun (dkm.training.distributed) rank 0 alone writes in the cache, holds its locks and
decides
whether a stage is finished; a training stage is then computed by every rank together, any other
stage by rank 0 alone while the others wait and then read its outputs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

from dkm import __version__
from dkm.io import (
    WriteError,
    env_path,
    locked,
    read_bytes,
    read_text,
    remove_stale_temps,
    write_atomic,
)
from dkm.training import distributed

ROOT = Path(__file__).resolve().parents[2]
# a checkout of the repository (make figures, the tests): its data/ directory; an installed wheel
# writes under the user's XDG directories instead, never into site-packages
IN_CHECKOUT = (ROOT / "pyproject.toml").is_file() and (ROOT / "notebooks").is_dir()


def user_dir(kind: str) -> Path:
    """An installed package's directory for `kind` ("runs": $XDG_CACHE_HOME/dkm/runs, a cache;
    "results": $XDG_DATA_HOME/dkm/results), with the XDG defaults ~/.cache and ~/.local/share."""
    xdg = {"runs": ("XDG_CACHE_HOME", ".cache"), "results": ("XDG_DATA_HOME", ".local/share")}
    var, default = xdg[kind]
    base = os.environ.get(var) or str(Path.home() / default)
    return Path(base) / "dkm" / kind


DONE_NAME = "done.json"
DONE_FORMAT = "dkm.runs.done"  # the marker format's name, written in every done.json: kept
PENDING_NAME = "pending.json"  # written when a computation starts: its code versions
# the version of the code of each stage: bump it when a change can alter the stage's numbers.
# 2: k-means assigns exactly nearest centers (float64 distances, exact 1-D midpoints) and seeds from
# float64 D² (re-training's indicator F, sharing, the planner's errors); the spectral term for
# K ≥ rank is exactly zero (re-training's spectral F)
CODE_VERSIONS = {"pretrain": 1, "retrain": 2, "evaluate": 2, "plan": 2}
OUTPUTS = {
    "pretrain": ("model.pt", "history.json"),
    "retrain": ("model.pt", "history.json"),
    "evaluate": ("result.json",),
    "plan": ("options.json",),
}


HISTORY_KEYS = ("format_version", "steps", "epochs")
RESULT_KEYS = ("top1_before", "top1", "top1_bn", "cr", "layers", "skipped")


class RunError(ValueError):
    """A run directory whose config.json is missing, corrupt or of another configuration."""


class StaleRunError(RunError):
    """A run computed by another version of the stage's code (its done.json says which)."""


def runs_dir() -> Path:
    """Where stage outputs are cached: $DKM_RUNS_DIR, else data/runs/ in a checkout (else
    `user_dir("runs")`)."""
    return env_path("DKM_RUNS_DIR", ROOT / "data" / "runs" if IN_CHECKOUT else user_dir("runs"))


def canonical(config: dict) -> dict:
    """The configuration as its config.json holds it (sorted keys, non-JSON values as strings)."""
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def config_key(config: dict) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of `config`."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def run_dir(stage: str, config: dict) -> Path:
    """The cache directory of `config` with its config.json (checked against `config` if there)."""
    path = runs_dir() / f"{stage}-{config_key(config)}"
    cfg = path / "config.json"
    if cfg.exists():
        try:
            saved = json.loads(read_text(cfg))
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"{cfg} is corrupt ({err}): delete {path} to recompute it") from None
        if saved != canonical(config):
            raise RunError(
                f"{cfg} holds another configuration than its key says: "
                f"delete {path} to recompute it"
            )
    elif distributed.is_main():  # under torchrun the other ranks leave the writing to rank 0
        try:
            with locked(path):  # a stage cleaning temps under the lock never meets this one
                write_atomic(cfg, json.dumps(canonical(config), indent=2, sort_keys=True))
        except WriteError as err:
            raise WriteError(
                f"{err} (the run cache: set $DKM_RUNS_DIR to a writable directory)"
            ) from None
    return path


def load_json(path: Path, keys=()) -> dict:
    """A JSON object of a run holding `keys`; anything else is a RunError naming the directory."""
    try:
        data = json.loads(read_text(path))
    except (OSError, ValueError) as err:
        raise RunError(f"{path} is corrupt ({err}): delete {path.parent} to recompute it") from None
    missing = [k for k in keys if k not in data] if isinstance(data, dict) else None
    if missing is None or missing:
        what = f"lacks {missing}" if missing else f"is a JSON {type(data).__name__}, not an object"
        raise RunError(f"{path} {what}: a damaged file: delete {path.parent} to recompute it")
    return data


# ---------------------------------------------------------------- the commit marker
def sha256_file(path: Path) -> str:
    """SHA-256 (hex) of a file's bytes."""
    return hashlib.sha256(read_bytes(path)).hexdigest()


def chain_versions(config: dict) -> dict:
    """{stage: code version} of every stage in the chain of `config`, as this code has them."""
    versions = {}
    while config is not None:
        versions[config["stage"]] = CODE_VERSIONS[config["stage"]]
        config = config.get("parent")
    return versions


def begin(d: Path, config: dict) -> None:
    """Record, before computing, that this code computes the run (`PENDING_NAME`)."""
    write_atomic(d / PENDING_NAME, json.dumps({"versions": chain_versions(config)}))


def commit(d: Path, config: dict, versions: dict | None = None) -> None:
    """Write `done.json` (last): checksums of the stage's outputs and the chain's code versions."""
    marker = {
        "format": DONE_FORMAT,
        "versions": chain_versions(config) if versions is None else versions,
        "dkm_version": __version__,
        "files": {name: sha256_file(d / name) for name in OUTPUTS[config["stage"]]},
    }
    write_atomic(d / DONE_NAME, json.dumps(marker, indent=1, sort_keys=True))
    (d / PENDING_NAME).unlink(missing_ok=True)


def finished(d: Path, config: dict) -> bool:
    """Is the run in `d` finished and of this code? (False: compute or resume it.) Only a run
    with its `done.json` is; one of other code is a StaleRunError."""
    if not (d / DONE_NAME).exists():
        return False
    marker = load_json(d / DONE_NAME, ("format", "versions", "files"))
    return _check_versions(d, marker["versions"], config)


def _check_versions(d: Path, versions: dict, config: dict) -> bool:
    """True if `versions` are this code's for the chain of `config`; else StaleRunError."""
    now = chain_versions(config)
    stale = [f"{s} v{versions.get(s)} (now v{v})" for s, v in now.items() if versions.get(s) != v]
    if stale:
        raise StaleRunError(
            f"{d} was computed by another version of the code ({', '.join(stale)}): "
            f"delete it (or every run of those stages: rm -r {d.parent}/<stage>-*) to recompute"
        )
    return True


def verified(d: Path, name: str) -> Path:
    """`d/name` after checking it against the checksum its done.json recorded (a file the marker
    does not list is not the run's output: refused too)."""
    path = d / name
    if not (d / DONE_NAME).exists():
        raise RunError(f"{d} is not a finished run (no {DONE_NAME}): run its stage (it resumes)")
    files = load_json(d / DONE_NAME, ("files",))["files"]
    if name not in files or not path.is_file() or sha256_file(path) != files[name]:
        raise RunError(
            f"{path} is damaged or missing (it fails the checksum in {DONE_NAME}): "
            f"delete {d} to recompute it"
        )
    return path


def root_config(config: dict) -> dict:
    """The pre-training configuration at the root of a stage's configuration."""
    while "parent" in config:
        config = config["parent"]
    return config


class Stage:
    """What `stage` yields: `todo` — compute the outputs in the with-block (False: finished)."""

    todo: bool = False


@contextlib.contextmanager
def stage(d: Path, config: dict, parallel: bool = False):
    """The run of `config` in `d`: under its lock; committed when the with-block ends normally.

        with stage(d, config) as run:
            if run.todo:
                ...  # compute and write the outputs

    Under torchrun, `parallel` (a training stage) has every rank compute, else rank 0 alone."""
    if distributed.world_size() > 1:
        with _distributed_stage(d, config, parallel) as run:
            yield run
        return
    run = Stage()
    with locked(d):
        if finished(d, config):
            # a writer killed between done.json and removing pending.json left it: finish that
            # (where the cache is writable: a finished run on a read-only disk is read as it is)
            if (d / PENDING_NAME).exists():
                with contextlib.suppress(OSError):
                    (d / PENDING_NAME).unlink()
            yield run
            return
        remove_stale_temps(d)  # of a killed writer: under the lock, no one else writes here
        begin(d, config)
        run.todo = True
        yield run
        commit(d, config)


@contextlib.contextmanager
def _distributed_stage(d: Path, config: dict, parallel: bool):
    """`stage` under torchrun: rank 0 locks, decides, writes and commits (module docstring).

    Every rank leaves after rank 0 has committed; a rank that does not compute has todo False."""
    if not parallel:
        if distributed.is_main():
            with distributed.alone(), stage(d, config) as run:
                yield run
        else:
            yield Stage()
        distributed.barrier()
        return
    run = Stage()
    with distributed.locked_by_main(d):
        if distributed.broadcast(distributed.is_main() and finished(d, config)):
            yield run
            return
        if distributed.is_main():
            remove_stale_temps(d)
            begin(d, config)
        run.todo = True
        yield run
        if distributed.is_main():
            commit(d, config)
    distributed.barrier()


def side_file(path: Path, keys: tuple, compute: Callable) -> dict:
    """A JSON file cached beside a finished run: read if this code wrote it and it is intact,
    else computed again (it is a cache).

    It carries the SHA-256 of its own content ("sha256"; a file without one, or failing it, is
    recomputed) and its "code_version", the evaluate stage's (sharing, evaluation)."""
    with locked(path.parent):  # one writer; the temp files of a killed one are removed
        remove_stale_temps(path.parent, path.name)
        if path.exists():
            data = load_json(path, keys)
            digest = data.pop("sha256", None)
            if digest == _digest(data) and data.get("code_version") == CODE_VERSIONS["evaluate"]:
                return data
        data = {**compute(), "code_version": CODE_VERSIONS["evaluate"]}
        write_atomic(path, json.dumps({**data, "sha256": _digest(data)}, indent=1))
    return data


def _digest(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------- browsing the cache
def run_history(stage: str, config: dict) -> dict:
    """The history.json of a finished run (steps and epochs records of
    dkm.training.loop.History)."""
    d = run_dir(stage, config)
    if not finished(d, config):
        raise RunError(f"{d} is not a finished run: run its stage first (it resumes)")
    return load_json(verified(d, "history.json"), HISTORY_KEYS)


def cached_runs(parent: dict, stage: str) -> list[tuple[dict, Path]]:
    """[(config, run dir)] of every finished run of `stage` started from `parent` (a config)."""
    want, found = canonical(parent), []
    for cfg_path in sorted(runs_dir().glob(f"{stage}-*/config.json")):
        config = load_json(cfg_path)
        if config.get("parent") == want and finished(cfg_path.parent, {"stage": stage, **config}):
            found.append((config, cfg_path.parent))
    return found


def cached_retrains(pretrain_config: dict) -> list[dict]:
    """Every finished Deep k-Means re-training from a pre-training configuration.

    Each as {"lam", "mode", "K" (the largest), "Ks" (per conv), "seed", "config", "history",
    "results"} (results: its k-means sharings)."""
    runs = []
    for config, d in cached_runs(pretrain_config, "retrain"):
        if config["method"] != "dkm":
            continue
        results = [
            load_json(verified(e, "result.json"), RESULT_KEYS)
            for c, e in cached_runs(config, "evaluate")
            if c["share"] == "kmeans"
        ]
        runs.append(
            {"lam": config["lam"], "mode": config["mode"], "K": max(config["num_clusters"]),
             "Ks": tuple(config["num_clusters"]), "seed": config["train"]["seed"],
             "config": config, "history": load_json(verified(d, "history.json"), HISTORY_KEYS),
             "results": results}
        )  # fmt: skip
    return sorted(runs, key=lambda r: (r["lam"], r["Ks"], r["mode"], r["seed"]))
