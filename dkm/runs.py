"""The run cache: one directory per stage configuration, keyed by a hash of the whole configuration.

A stage's output lives in `data/runs/<stage>-<key>/` (override: $DKM_RUNS_DIR) with its
`config.json`; the key is the first 16 hex digits of the SHA-256 of the canonical JSON of the
configuration, which nests the configuration of the stage it starts from. So changing λ, K, a
seed or a learning rate never reuses a stale result. The browsing helpers at the end list the
finished runs (for the notebooks' sliders over cached runs).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ._io import write_atomic

ROOT = Path(__file__).resolve().parents[1]


class RunError(ValueError):
    """A run directory whose config.json is missing, corrupt or of another configuration."""


def runs_dir() -> Path:
    """Where stage outputs are cached: $DKM_RUNS_DIR or data/runs/."""
    return Path(os.environ.get("DKM_RUNS_DIR", ROOT / "data" / "runs"))


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
            saved = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"{cfg} is corrupt ({err}): delete {path} to recompute it") from None
        if saved != canonical(config):
            raise RunError(
                f"{cfg} holds another configuration than its key says: "
                f"delete {path} to recompute it"
            )
    else:
        write_atomic(cfg, json.dumps(canonical(config), indent=2, sort_keys=True))
    return path


def load_json(path: Path) -> dict:
    """A JSON file of a run; a corrupt one is a RunError naming the directory to delete."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is corrupt ({err}): delete {path.parent} to recompute it") from None


def root_config(config: dict) -> dict:
    """The pre-training configuration at the root of a stage's configuration."""
    while "parent" in config:
        config = config["parent"]
    return config


# ---------------------------------------------------------------- browsing the cache
def run_history(stage: str, config: dict) -> dict:
    """The history.json of a finished run (steps and epochs records of dkm.train.History)."""
    return load_json(run_dir(stage, config) / "history.json")


def cached_runs(parent: dict, stage: str) -> list[tuple[dict, Path]]:
    """[(config, run dir)] of every finished run of `stage` started from `parent` (a config)."""
    want, found = canonical(parent), []
    for cfg_path in sorted(runs_dir().glob(f"{stage}-*/config.json")):
        config = json.loads(cfg_path.read_text())
        done = any((cfg_path.parent / name).exists() for name in ("model.pt", "result.json"))
        if config.get("parent") == want and done:
            found.append((config, cfg_path.parent))
    return found


def cached_retrains(pretrain_config: dict) -> list[dict]:
    """Every finished Deep k-Means re-training from a pre-training configuration.

    Each as {"lam", "mode", "K" (the largest), "Ks" (per conv), "seed", "config", "history",
    "results"} (results: its k-means sharings)."""
    runs = []
    for config, d in cached_runs(pretrain_config, "retrain"):
        if config["method"] != "dkm" or not (d / "history.json").exists():
            continue
        results = [
            load_json(e / "result.json")
            for c, e in cached_runs(config, "evaluate")
            if c["share"] == "kmeans"
        ]
        runs.append(
            {"lam": config["lam"], "mode": config["mode"], "K": max(config["num_clusters"]),
             "Ks": tuple(config["num_clusters"]), "seed": config["train"]["seed"],
             "config": config, "history": load_json(d / "history.json"), "results": results}
        )  # fmt: skip
    return sorted(runs, key=lambda r: (r["lam"], r["Ks"], r["mode"], r["seed"]))
