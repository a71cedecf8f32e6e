"""The experiment pipeline: pretrain → retrain (Deep k-Means or the plain control) → share →
evaluate.

Each stage is a function of the profile (dkm.experiments.profiles) and a `Plan` (dkm.plans); its
result is
cached in the run directory of its full configuration (dkm.experiments.cache), so re-running a
finished
experiment only reads files. The training calls are written out here: `pretrain` and `retrain`
call `dkm.training.loop.train` (with `KMeansRegularizer.from_plan` for Deep k-Means),
`share_and_evaluate`
calls `dkm.sharing.share` and, for Deep Compression, trains the tied centers.

Every stage computes under its run directory's lock (`dkm.io.locked`): of two identical commands,
one computes and the other waits, then reads. A stage writes its outputs, then its commit marker
(`dkm.experiments.cache.commit`); a directory without it resumes (see dkm.experiments.cache).
Configurations are checked
before any directory is made.

Under torchrun (dkm.training.distributed) the training stages run data-parallel: their configuration
records "world_size" when it is > 1 (a serial key is the key it always was), rank 0 writes.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import warnings
from pathlib import Path

import torch

from dkm._checks import check_choice, check_int
from dkm.accounting import CONVENTIONS, compression_ratio, compression_table
from dkm.experiments.cache import (
    RESULT_KEYS,
    RunError,
    config_key,
    finished,
    load_json,
    root_config,
    run_dir,
    side_file,
    stage,
    verified,
)
from dkm.experiments.profiles import Profile
from dkm.io import write_atomic
from dkm.planner import K_GRID, P_GRID, layer_options
from dkm.plans import Plan
from dkm.regularizer import DegenerateRelaxationWarning, KMeansRegularizer
from dkm.rows import conv_layers, num_rows
from dkm.sharing import layer_errors, share, sharing_seed, tie_centers, untie_centers
from dkm.training import data as dkm_data
from dkm.training import distributed
from dkm.training.allocator import keep_freed_memory
from dkm.training.checkpoint import save_atomic, unreadable_reason
from dkm.training.evaluation import evaluate, recalibrate_batchnorm
from dkm.training.loop import History, train
from dkm.training.models import build_model
from dkm.training.threads import torch_threads
from dkm._numerics import numeric_path

RETRAIN_METHODS = ("plain", "dkm")
SOURCES = ("pretrained", "plain", "dkm-indicator", "dkm-spectral")
SHARE_INITS = {"kmeans": "kmeans++", "deep_compression": "linear", "density": "density"}


# ---------------------------------------------------------------- data and models
@functools.lru_cache(maxsize=8)
def _datasets(dataset: str, n_train, n_test):
    load = {"fashion_mnist": dkm_data.fashion_mnist, "cifar10": dkm_data.cifar10}[dataset]
    return load(train=True, n=n_train, seed=0), load(train=False, n=n_test, seed=0)


def datasets(profile: Profile):
    """(train_set, test_set) of the profile (deterministic subsets, seed 0)."""
    return _datasets(profile.dataset, profile.n_train, profile.n_test)


def _subset(dataset, n):
    """The first `n` images of a fixed random order (all of them when n is None)."""
    if n is None or n >= len(dataset):
        return dataset
    idx = dkm_data.subset_indices(len(dataset), n, seed=0)
    return torch.utils.data.TensorDataset(*(t[idx] for t in dataset.tensors))


def _build(model_config: dict) -> torch.nn.Module:
    """A fresh net of the root configuration in the configured memory format (part of every key)."""
    net = build_model(model_config["model"], **model_config["model_kwargs"])
    if model_config.get("memory_format", "contiguous") == "channels_last":
        # the convs' outputs follow; their sums run in another order
        net = net.to(memory_format=torch.channels_last)
    return net


def _read_model(path: Path, model_config: dict) -> torch.nn.Module:
    """The net of a model.pt; unreadable, foreign or non-finite: RunError naming the directory."""
    net = _build(model_config)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        net.load_state_dict(state)
    except Exception as err:  # a truncated or foreign file: say which and how to recover
        raise RunError(
            f"{path} is not a loadable {model_config['model']} state "
            f"({unreadable_reason(path, err)}): delete {path.parent} to recompute it"
        ) from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise RunError(f"{path} holds non-finite values in {bad[:3]}: delete {path.parent}")
    return net


def _load_model(d: Path, config: dict) -> torch.nn.Module:
    """The net of a finished pretrain/retrain run in `d`, its model.pt checked against done.json."""
    return _read_model(verified(d, "model.pt"), root_config(config))


def load_run(path) -> tuple[torch.nn.Module, dict]:
    """(net, config) of a finished pretrain/retrain run directory (`data/runs/<stage>-<key>/`)."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise RunError(f"{path} is not a run directory of the pipeline (no config.json)")
    config = load_json(path / "config.json")
    if config.get("stage") not in ("pretrain", "retrain"):
        raise RunError(
            f"{path} is a {config.get('stage')!r} run, which keeps no model: pass a pretrain-* or "
            f"retrain-* directory (or write a shared model with `python -m dkm share --export`)"
        )
    if not finished(path, config):
        raise RunError(f"{path} holds no finished run: re-run its stage (it resumes)")
    return _load_model(path, config), config


def _compute(profile: Profile):
    """The profile's thread count for a stage, freed activations kept for the next batch."""
    keep_freed_memory()
    return torch_threads(profile.threads)


def _save_run(d: Path, net: torch.nn.Module, history: History) -> None:
    if not distributed.is_main():  # data-parallel: rank 0 writes
        return
    save_atomic(net.state_dict(), d / "model.pt")
    write_atomic(d / "history.json", history.to_json())


# ---------------------------------------------------------------- pre-training
def _world(config: dict) -> dict:
    """`config` with the number of processes that train it data-parallel, when more than one."""
    if distributed.world_size() > 1:
        config["world_size"] = distributed.world_size()
    return config


def pretrain_config(profile: Profile) -> dict:
    """Configuration of the pre-training stage (the root of every key)."""
    config = {
        "stage": "pretrain",
        "dataset": profile.dataset,
        "n_train": profile.n_train,
        "model": profile.model,
        "model_kwargs": profile.model_kwargs,
        "train": dataclasses.asdict(profile.pretrain),
        "threads": profile.threads,
        "memory_format": profile.memory_format,
        "numerics": numeric_path(),  # ATen, oneDNN and MKL pinned to AVX2 or native: dkm._numerics
    }
    return _world(config)


def pretrain(profile: Profile, progress=None) -> tuple[torch.nn.Module, dict]:
    """The pre-trained net of the profile (trained once, then read from its run directory)."""
    config = pretrain_config(profile)
    d = run_dir("pretrain", config)
    net = None
    with stage(d, config, parallel=True) as run:
        if run.todo:
            net = _pretrain(profile, config, d, progress)
    return (_load_model(d, config) if net is None else net), config


def _pretrain(profile: Profile, config: dict, d: Path, progress) -> torch.nn.Module:
    with _compute(profile):
        torch.manual_seed(profile.pretrain.seed)  # a fresh net, initialized from the training seed
        net = _build(config)
        train_set = datasets(profile)[0]
        history = train(net, train_set, profile.pretrain, checkpoint_dir=d, progress=progress)
    _save_run(d, net, history)
    return net


# ---------------------------------------------------------------- re-training
def retrain_config(
    profile: Profile, method: str, seed: int, plan: Plan | None = None, mode: str | None = None
) -> dict:
    """Configuration of a re-training run from the pre-trained net (method "dkm" needs a plan).

    The plan's p is used by the indicator F only (the spectral F has no dominant cluster: p then
    applies at sharing only), and is in the key only when some p > 0."""
    check_choice("method", method, RETRAIN_METHODS)
    check_int("seed", seed, 0)
    if method == "dkm":
        _check_plan(profile, plan, regularized=True)
    train_cfg = dataclasses.asdict(dataclasses.replace(profile.retrain, seed=seed))
    config = _world({"stage": "retrain", "parent": pretrain_config(profile), "method": method,
                     "train": train_cfg, "n_retrain": profile.n_retrain})  # fmt: skip
    if method == "plain":
        return config
    config.update(
        mode=check_choice("mode", mode or "indicator", ("indicator", "spectral")),
        view=profile.view,
        lam=profile.lam,  # λ's one channel: the profile (`get_profile(lam=…)`)
        refresh_every=profile.refresh_every,
        num_clusters=list(plan.K),
    )
    if config["mode"] == "indicator" and any(plan.p):
        config["p"] = list(plan.p)
    return config


@functools.lru_cache(maxsize=8)
def _conv_rows(model_json: str, view: str) -> tuple:
    """((conv name, N under `view`), ...) of the net of a root configuration (as JSON)."""
    net = _build(json.loads(model_json))
    return tuple((name, num_rows(conv.weight.shape, view)) for name, conv in conv_layers(net))


def _check_plan(profile: Profile, plan, regularized: bool = False) -> None:
    """A Plan with one K per conv of the profile's net (re-training: some conv with K < N)."""
    if not isinstance(plan, Plan):
        raise ValueError(f"plan={plan!r} is not allowed: a dkm.plans.Plan (one K and p per conv)")
    model = json.dumps(pretrain_config(profile), sort_keys=True)
    convs = _conv_rows(model, profile.view if regularized else "rows")
    if len(plan.K) != len(convs):
        raise ValueError(
            f"num_clusters has {len(plan.K)} entries but {profile.model} of profile "
            f"{profile.name!r} has {len(convs)} conv layers: allowed one K per conv"
        )
    if regularized and all(k >= n for k, (_, n) in zip(plan.K, convs)):
        raise ValueError(
            f"num_clusters={list(plan.K)} regularizes no conv: every K ≥ its conv's number of "
            f"rows N {[n for _, n in convs]}; allowed some K < N"
        )


def _regularizer(net, config: dict) -> KMeansRegularizer:
    """The k-means regularizer of a dkm re-training: every conv its plan shares (K < N)."""
    plan = Plan(config["num_clusters"], config.get("p", [0.0] * len(config["num_clusters"])))
    with warnings.catch_warnings():  # the degenerate case is reported in the results, not per run
        warnings.simplefilter("ignore", DegenerateRelaxationWarning)
        return KMeansRegularizer.from_plan(
            net, config["lam"], plan, mode=config["mode"], view=config["view"],
            refresh_every=config["refresh_every"], seed=config["train"]["seed"],
        )  # fmt: skip


def retrain(
    profile: Profile, method: str, seed: int, plan: Plan | None = None, mode: str | None = None,
    progress=None,
) -> tuple[torch.nn.Module, dict]:  # fmt: skip
    """Re-train the pre-trained net: `plain` (the control) or `dkm` (the k-means regularizer)."""
    config = retrain_config(profile, method, seed, plan, mode)  # checked before any file
    pretrain(profile, progress)
    d = run_dir("retrain", config)
    net = None
    with stage(d, config, parallel=True) as run:
        if run.todo:
            net = _retrain(profile, config, d, progress)
    return (_load_model(d, config) if net is None else net), config


def _retrain(profile: Profile, config: dict, d: Path, progress) -> torch.nn.Module:
    with _compute(profile):
        parent = config["parent"]
        net = _load_model(run_dir("pretrain", parent), parent)
        reg = None if config["method"] == "plain" else _regularizer(net, config)
        train_set = _subset(datasets(profile)[0], profile.n_retrain)
        tc = dataclasses.replace(profile.retrain, seed=config["train"]["seed"])
        history = train(net, train_set, tc, regularizer=reg, checkpoint_dir=d, progress=progress)
    _save_run(d, net, history)
    return net


def source_net(profile: Profile, source: str, plan: Plan, seed: int, progress=None):
    """(net, config) to share: pre-trained, or re-trained plain / with the regularizer at `plan`."""
    check_choice("source", source, SOURCES)
    if source == "pretrained":
        return pretrain(profile, progress)
    if source == "plain":
        return retrain(profile, "plain", seed, progress=progress)
    mode = source.split("-", 1)[1]
    return retrain(profile, "dkm", seed, plan, mode, progress=progress)


def source_errors(profile: Profile, source: str, plan: Plan, seed: int, progress=None) -> dict:
    """`dkm.sharing.layer_errors` of the net `source` shares at `plan` (its sharing seeds),
    cached beside that net (one file per K and seed)."""
    net, config = source_net(profile, source, plan, seed, progress)
    key = config_key({"K": list(plan.K), "seed": sharing_seed(seed), "init": "kmeans++"})
    path = run_dir(config["stage"], config) / f"kmeans_errors_{key}.json"

    def compute() -> dict:
        with _compute(profile):
            return {"K": list(plan.K), "layers": layer_errors(net, plan, sharing_seed(seed))}

    return side_file(path, ("layers",), compute)["layers"]


# ---------------------------------------------------------------- the planner's k-means runs
def planner_options(profile: Profile, net: torch.nn.Module) -> list:
    """`dkm.planner.layer_options` of the pre-trained net, cached (one k-means per option).

    Sharing seed 0 (1000 + conv index), the grids and the convention are in the key."""
    config = {"stage": "plan", "parent": pretrain_config(profile), "planner": "rd",
              "K_grid": list(K_GRID), "p_grid": list(P_GRID), "seed": sharing_seed(0),
              "convention": "official"}  # fmt: skip
    d = run_dir("plan", config)
    options = None
    with stage(d, config) as run:
        if run.todo:
            with _compute(profile):
                options = layer_options(net, config["seed"], config["convention"])
            write_atomic(d / "options.json", json.dumps({"options": options}, indent=1))
    if options is None:
        options = load_json(verified(d, "options.json"), ("options",))["options"]
    return options


# ---------------------------------------------------------------- share + evaluate
def evaluation_config(profile: Profile, source: dict, method: str, plan: Plan, seed: int) -> dict:
    """Configuration of sharing a source net (a pretrain or retrain config) with `method`."""
    check_choice("share method", method, SHARE_INITS)
    _check_plan(profile, plan)
    config = {
        "stage": "evaluate",
        "parent": source,
        "share": method,
        "init": SHARE_INITS[method],
        "num_clusters": list(plan.K),
        "p": list(plan.p),
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
    profile: Profile, net: torch.nn.Module, source: dict, method: str, plan: Plan, seed: int,
    progress=None,
) -> dict:  # fmt: skip
    """Share a copy of `net` row-wise (§3.3); evaluate it with and without BN re-estimation."""
    config = evaluation_config(profile, source, method, plan, seed)
    d = run_dir("evaluate", config)
    result = None
    with stage(d, config) as run:
        if run.todo:
            result = _share_and_evaluate(profile, net, config, d, progress)
    return load_json(verified(d, "result.json"), RESULT_KEYS) if result is None else result


def _share_and_evaluate(profile: Profile, net, config: dict, d: Path, progress) -> dict:
    source, method, plan, seed = config["parent"], config["share"], _plan_of(config), config["seed"]
    train_set, test_set = datasets(profile)
    net = copy.deepcopy(net)
    with _compute(profile):
        result = {"top1_before": _source_accuracy(source, net, test_set)}
        shared = share(net, plan, init=config["init"], kmeans_seed=sharing_seed(seed))
        if method == "deep_compression":
            _finetune_centers(net, shared, train_set, profile, config, progress)
        result["top1"] = evaluate(net, test_set)["accuracy"]
        recalibrated = copy.deepcopy(net)
        recalibrate_batchnorm(recalibrated, train_set, num_batches=profile.bn_batches, seed=seed)
        result["top1_bn"] = evaluate(recalibrated, test_set)["accuracy"]
    result["cr"] = {name: compression_ratio(net, shared, name) for name in CONVENTIONS}
    result["layers"] = compression_table(net, shared, "official")
    result["skipped"] = shared.skipped
    write_atomic(d / "result.json", json.dumps(result, indent=1))
    return result


def _source_accuracy(source: dict, net, test_set) -> float:
    """Test accuracy of a pre-/re-trained net, cached beside its model (one file per test size)."""
    path = run_dir(source["stage"], source) / f"test_accuracy_{len(test_set)}.json"
    return side_file(path, ("accuracy",), lambda: evaluate(net, test_set))["accuracy"]


def _plan_of(config: dict) -> Plan:
    """The Plan of an evaluate configuration (its K and p)."""
    return Plan(tuple(config["num_clusters"]), tuple(config["p"]))


def _finetune_centers(net, shared, train_set, profile: Profile, config: dict, progress) -> None:
    """Deep Compression (Han et al. 2016): train the codebooks (sum or mean per cluster) and the
    rest."""
    tie_centers(net, shared, gradient=config["center_gradient"])
    tc = dataclasses.replace(profile.finetune, seed=config["seed"])
    train(net, _subset(train_set, profile.n_retrain), tc, progress=progress)
    untie_centers(net, shared)
