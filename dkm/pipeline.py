"""The experiment pipeline: pretrain → retrain (Deep k-Means or the plain control) → share → evaluate.

Every stage's output lives in `data/runs/<stage>-<key>/` (override: $DKM_RUNS_DIR), the key a hash of
the stage's full configuration — which nests the configuration of the stage it starts from — with a
`config.json` beside it. So changing λ, K, a seed or a learning rate never reuses a stale result,
and re-running a finished experiment only reads files.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
import warnings
from pathlib import Path

import torch

from . import data as dkm_data
from ._io import write_atomic
from ._allocator import keep_freed_memory
from ._threads import torch_threads
from ._checks import check_choice, check_float, check_int
from .accounting import CONVENTIONS, compression_ratio, compression_table
from .models import build_model, conv_layers
from .plan import plan_clusters
from .profiles import Profile
from .sharing import share, tie_centers, untie_centers
from .spectral import DegenerateRelaxationWarning, KMeansRegularizer
from .train import evaluate, recalibrate_batchnorm, save_atomic, train

ROOT = Path(__file__).resolve().parents[1]
RETRAIN_METHODS = ("plain", "dkm")
SHARE_INITS = {"kmeans": "kmeans++", "deep_compression": "linear", "density": "density"}


class RunError(ValueError):
    """A run directory whose config.json is missing, corrupt or of another configuration."""


def runs_dir() -> Path:
    """Where stage outputs are cached: $DKM_RUNS_DIR or data/runs/."""
    return Path(os.environ.get("DKM_RUNS_DIR", ROOT / "data" / "runs"))


def config_key(config: dict) -> str:
    """16 hex digits of the SHA-256 of the canonical JSON of `config`."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_dir(stage: str, config: dict) -> Path:
    """The cache directory of `config`, with its config.json (checked against `config` if present)."""
    path = runs_dir() / f"{stage}-{config_key(config)}"
    cfg = path / "config.json"
    canonical = json.loads(json.dumps(config, sort_keys=True, default=str))
    if cfg.exists():
        try:
            saved = json.loads(cfg.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise RunError(f"{cfg} is corrupt ({err}): delete {path} to recompute it") from None
        if saved != canonical:
            raise RunError(
                f"{cfg} holds another configuration than its key says: delete {path} to recompute it"
            )
    else:
        write_atomic(cfg, json.dumps(canonical, indent=2, sort_keys=True))
    return path


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise RunError(f"{path} is corrupt ({err}): delete {path.parent} to recompute it") from None


# ---------------------------------------------------------------- data and models
@functools.lru_cache(maxsize=8)
def _datasets(dataset: str, n_train, n_test):
    load = {"fashion_mnist": dkm_data.fashion_mnist, "cifar10": dkm_data.cifar10}[dataset]
    return load(train=True, n=n_train, seed=0), load(train=False, n=n_test, seed=0)


def datasets(profile: Profile):
    """(train_set, test_set) of the profile (deterministic subsets, seed 0)."""
    return _datasets(profile.dataset, profile.n_train, profile.n_test)


def _data_config(profile: Profile) -> dict:
    return {"dataset": profile.dataset, "n_train": profile.n_train}


def _build(model_config: dict) -> torch.nn.Module:
    """A fresh net of the root configuration, its tensors in the configured memory format (part of every key)."""
    net = build_model(model_config["model"], **model_config["model_kwargs"])
    if model_config.get("memory_format", "contiguous") == "channels_last":
        net = net.to(
            memory_format=torch.channels_last
        )  # the convs' outputs follow; sums run in another order
    return net


def _load_model(path: Path, model_config: dict) -> torch.nn.Module:
    net = _build(model_config)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as err:  # a truncated or foreign file: say which and how to recover
        raise RunError(
            f"{path} is not a loadable {model_config['model']} state ({err}): delete {path.parent}"
        ) from None
    return net


def load_run(path) -> tuple[torch.nn.Module, dict]:
    """(net, config) of a finished pretrain/retrain run directory (`data/runs/<stage>-<key>/`)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RunError(f"{path} is not a run directory of the pipeline (no config.json)")
    config = _load_json(path / "config.json")
    if config.get("stage") not in ("pretrain", "retrain"):
        raise RunError(
            f"{path} is a {config.get('stage')!r} run, which keeps no model: pass a pretrain-* or "
            f"retrain-* directory (or write a shared model with `python -m dkm share --export`)"
        )
    if not (path / "model.pt").is_file():
        raise RunError(f"{path} holds no model.pt: the run did not finish (re-run its stage)")
    return _load_model(path / "model.pt", _root_config(config)), config


# ---------------------------------------------------------------- stages
def pretrain_config(profile: Profile) -> dict:
    """Configuration of the pre-training stage (the root of every key)."""
    return {
        "stage": "pretrain",
        **_data_config(profile),
        "model": profile.model,
        "model_kwargs": profile.model_kwargs,
        "train": dataclasses.asdict(profile.pretrain),
        "threads": profile.threads,
        "memory_format": profile.memory_format,
    }


def pretrain(profile: Profile, progress=None) -> tuple[torch.nn.Module, dict]:
    """The pre-trained net of the profile (trained once, then read from its run directory)."""
    config = pretrain_config(profile)
    with _compute(profile):
        return _trained(
            config,
            progress,
            lambda net, train_set, d: train(
                net, train_set, profile.pretrain, checkpoint_dir=d, progress=progress
            ),
        )


def _compute(profile: Profile):
    """The profile's thread count for a stage, and freed activations kept for the next batch (dkm._allocator)."""
    keep_freed_memory()
    return torch_threads(profile.threads)


def _trained(config: dict, progress, fit) -> tuple[torch.nn.Module, dict]:
    """Load `model.pt` of the config's run, or build/fit it and save it (atomically) with its history."""
    d = run_dir(config["stage"], config)
    root = _root_config(config)
    if (d / "model.pt").exists():
        return _load_model(d / "model.pt", root), config
    net = _start_net(config, progress)
    history = fit(net, _datasets(root["dataset"], root["n_train"], None)[0], d)
    save_atomic(net.state_dict(), d / "model.pt")
    write_atomic(d / "history.json", history.to_json())
    return net, config


def _root_config(config: dict) -> dict:
    while "parent" in config:
        config = config["parent"]
    return config


def _subset(dataset, n):
    """The first `n` images of a fixed random order (all of them when n is None)."""
    if n is None or n >= len(dataset):
        return dataset
    idx = dkm_data.subset_indices(len(dataset), n, seed=0)
    return torch.utils.data.TensorDataset(*(t[idx] for t in dataset.tensors))


def _start_net(config: dict, progress) -> torch.nn.Module:
    if "parent" not in config:  # pre-training: a fresh net, initialized from the training seed
        torch.manual_seed(config["train"]["seed"])
        return _build(config)
    parent = config["parent"]
    return _load_model(run_dir(parent["stage"], parent) / "model.pt", _root_config(config))


def retrain_config(
    profile: Profile,
    method: str,
    seed: int,
    num_clusters=None,
    mode: str | None = None,
    lam: float | None = None,
    p=None,
) -> dict:
    """Configuration of a re-training run from the pre-trained net (method "dkm" needs num_clusters).

    p: per-conv dominant-cluster fractions of the plan; used by the indicator F only (the spectral F has no
    dominant cluster: p then applies at sharing only), and in the key only when some p > 0."""
    check_choice("method", method, RETRAIN_METHODS)
    check_int("seed", seed, 0)
    train_cfg = dataclasses.asdict(dataclasses.replace(profile.retrain, seed=seed))
    config = {
        "stage": "retrain",
        "parent": pretrain_config(profile),
        "method": method,
        "train": train_cfg,
        "n_retrain": profile.n_retrain,
    }
    if method == "dkm":
        if num_clusters is None:
            raise ValueError(
                "num_clusters is required for method='dkm' (one K per conv, e.g. from plan_clusters)"
            )
        lam = profile.lam if lam is None else check_float("lam", lam, 0.0)
        config.update(
            mode=check_choice("mode", mode or "indicator", ("indicator", "spectral")),
            view=profile.view,
            lam=lam,
            refresh_every=profile.refresh_every,
            num_clusters=list(num_clusters),
        )
        if config["mode"] == "indicator" and p is not None and any(p):
            config["p"] = [check_float("p", q, 0.0, 1.0, hi_open=True) for q in p]
    return config


def retrain(
    profile: Profile,
    method: str,
    seed: int,
    num_clusters=None,
    mode=None,
    lam=None,
    progress=None,
    p=None,
):
    """Re-train the pre-trained net: `plain` (the control) or `dkm` (with the k-means regularizer)."""
    pretrain(profile, progress)
    config = retrain_config(profile, method, seed, num_clusters, mode, lam, p)
    tc = dataclasses.replace(profile.retrain, seed=seed)

    def fit(net, train_set, d):
        reg = None if method == "plain" else _regularizer(net, config)
        return train(
            net,
            _subset(train_set, profile.n_retrain),
            tc,
            regularizer=reg,
            checkpoint_dir=d,
            progress=progress,
        )

    with _compute(profile):
        return _trained(config, progress, fit)


SOURCES = ("pretrained", "plain", "dkm-indicator", "dkm-spectral")


def source_net(profile: Profile, source: str, plan: dict, seed: int, progress=None):
    """(net, config) of the net to share: pre-trained, or re-trained plain / with the regularizer at plan's K."""
    check_choice("source", source, SOURCES)
    if source == "pretrained":
        return pretrain(profile, progress)
    if source == "plain":
        return retrain(profile, "plain", seed, progress=progress)
    return retrain(
        profile,
        "dkm",
        seed,
        num_clusters=plan["K"],
        mode=source.split("-", 1)[1],
        progress=progress,
        p=plan["p"],
    )


def _regularizer(net, config: dict) -> KMeansRegularizer:
    """The regularizer of a dkm re-training: every conv whose K is below its number of rows."""
    convs = conv_layers(net)
    chosen = {
        name: k
        for (name, conv), k in zip(convs, config["num_clusters"])
        if k < conv.weight.numel() // conv.weight.shape[-1]
    }
    p = dict(zip([name for name, _ in convs], config.get("p", [0.0] * len(convs))))
    with (
        warnings.catch_warnings()
    ):  # the degenerate case is reported in the results, not warned per run
        warnings.simplefilter("ignore", DegenerateRelaxationWarning)
        return KMeansRegularizer(
            net,
            config["lam"],
            chosen,
            mode=config["mode"],
            view=config["view"],
            refresh_every=config["refresh_every"],
            layers=list(chosen),
            seed=config["train"]["seed"],
            p={name: p[name] for name in chosen},
        )


# ---------------------------------------------------------------- share + evaluate
def evaluation_config(profile: Profile, source: dict, method: str, plan: dict, seed: int) -> dict:
    """Configuration of sharing a source net (pretrain or retrain config) with `method`, then evaluating it."""
    check_choice("share method", method, SHARE_INITS)
    config = {
        "stage": "evaluate",
        "parent": source,
        "share": method,
        "init": SHARE_INITS[method],
        "num_clusters": list(plan["K"]),
        "p": list(plan["p"]),
        "seed": check_int("seed", seed, 0),
        "n_test": profile.n_test,
        "bn_batches": profile.bn_batches,
    }
    if method == "deep_compression":
        config["finetune"] = dataclasses.asdict(dataclasses.replace(profile.finetune, seed=seed))
        config["center_gradient"] = profile.center_gradient
        config["n_retrain"] = profile.n_retrain
    return config


def share_and_evaluate(
    profile: Profile,
    net: torch.nn.Module,
    source: dict,
    method: str,
    plan: dict,
    seed: int,
    progress=None,
) -> dict:
    """Share a copy of `net` (row-wise k-means, §3.3), evaluate it with and without BN re-estimation; cached."""
    config = evaluation_config(profile, source, method, plan, seed)
    d = run_dir("evaluate", config)
    if (d / "result.json").exists():
        return _load_json(d / "result.json")
    with _compute(profile):
        result = _share_and_evaluate(profile, net, source, method, config, seed, progress)
    write_atomic(d / "result.json", json.dumps(result, indent=1))
    return result


def _share_and_evaluate(profile, net, source, method, config, seed, progress) -> dict:
    train_set, test_set = _datasets(profile.dataset, profile.n_train, profile.n_test)
    net = copy.deepcopy(net)
    result = {"top1_before": _source_accuracy(source, net, test_set)}
    shared = share(
        net,
        num_clusters=config["num_clusters"],
        p=config["p"],
        init=config["init"],
        seed=1000 + 100 * seed,
    )
    if method == "deep_compression":
        _finetune_centers(net, shared, train_set, profile, config, progress)
    result["top1"] = evaluate(net, test_set)["accuracy"]
    recalibrated = copy.deepcopy(net)
    recalibrate_batchnorm(recalibrated, train_set, num_batches=profile.bn_batches, seed=seed)
    result["top1_bn"] = evaluate(recalibrated, test_set)["accuracy"]
    result["cr"] = {name: compression_ratio(net, shared, name) for name in CONVENTIONS}
    result["layers"] = compression_table(net, shared, "official")
    result["skipped"] = shared.skipped
    return result


def _source_accuracy(source: dict, net, test_set) -> float:
    """Test accuracy of a pre-/re-trained net, cached beside its model (one file per test-set size)."""
    path = run_dir(source["stage"], source) / f"test_accuracy_{len(test_set)}.json"
    if path.exists():
        return _load_json(path)["accuracy"]
    accuracy = evaluate(net, test_set)["accuracy"]
    write_atomic(path, json.dumps({"accuracy": accuracy}))
    return accuracy


def _finetune_centers(net, shared, train_set, profile: Profile, config: dict, progress) -> None:
    """Deep Compression (Han et al. 2016): train the codebooks (gradient: sum or mean per cluster) and the rest."""
    tie_centers(net, shared, gradient=config["center_gradient"])
    train(
        net,
        _subset(train_set, profile.n_retrain),
        dataclasses.replace(profile.finetune, seed=config["seed"]),
        progress=progress,
    )
    untie_centers(net, shared)
