"""The sweep on Ray: the grid of `dkm.experiments.sweep` as Ray tasks, on a local Ray or on a
cluster.

`sweep_ray(profile)` computes what `dkm.experiments.sweep.sweep(profile)` computes, the same rows
into the same
table, with every stage a Ray task, in three waves:
  1. pre-training, then the plans (they need the pre-trained net; the planner's k-means is cached);
  2. each distinct re-training the grid shares: `plain` per seed, `dkm-<mode>` per plan and seed;
  3. each grid point: sharing and evaluation (`dkm.experiments.sweep.run_point`), reading the
  cached nets.
A wave starts when the one before it has finished, so no two workers ever train the same
configuration: every net a point shares exists before the points start.

The run cache is the single source of truth: every task reads and writes $DKM_RUNS_DIR (passed to
the workers, with $DKM_DATA_DIR; on a cluster a directory that every node mounts at the same path),
so cached stages are skipped and a second sweep only reads. Each task asks for one GPU where the
cluster has any, and the profile's `threads` CPUs (1 when None). On the CPU a table is bit-identical
to the serial sweep's when the profile fixes `threads` (every CPU profile does).

Ray is an optional dependency, imported only here: `pip install 'deep-kmeans[distributed]'`.
"""

from __future__ import annotations

import logging
import os
import socket

from tqdm.auto import tqdm

from dkm._checks import check_choice, check_int
from dkm.experiments import pipeline as pl
from dkm.experiments import platform
from dkm.experiments.cache import config_key, runs_dir
from dkm.experiments.planning import plans_of
from dkm.experiments.profiles import Profile
from dkm.experiments.sweep import (
    all_methods,
    finetuned_methods,
    methods_of,
    results_path,
    run_point,
    split_method,
    write_results,
)
from dkm.training.loop import show_progress

EXTRA = "pip install 'deep-kmeans[distributed]'"
WORKER_ENV = ("DKM_RUNS_DIR", "DKM_DATA_DIR")  # what a worker reads besides its arguments


class MissingExtraError(ImportError, ValueError):
    """An optional dependency is not installed; the message names the extra that installs it."""


def import_ray():
    """The `ray` module, or MissingExtraError naming the extra to install."""
    try:
        import ray
    except ImportError:
        raise MissingExtraError(
            f"engine='ray' needs Ray, which is not installed: {EXTRA} (or pip install ray)"
        ) from None
    return ray


# ---------------------------------------------------------------- the tasks (run in the workers)
def _plans_task(env: dict, profile: Profile) -> list:
    """Pre-train (or read) the profile's net; the sweep's plans on it."""
    os.environ.update(env)
    net, _ = pl.pretrain(profile, progress=False)
    return plans_of(profile, net)


def _retrain_task(env: dict, profile: Profile, source: str, plan, seed: int) -> None:
    """Re-train (or read) the net that `source` shares at `plan` and `seed`."""
    os.environ.update(env)
    pl.source_net(profile, source, plan, seed, progress=False)


def _point_task(env: dict, profile: Profile, method: str, plan, seed: int) -> list:
    """The table rows of one grid point (its nets read from the cache)."""
    os.environ.update(env)
    return run_point(profile, method, plan, seed, progress=False)[1]


# ---------------------------------------------------------------- the driver
def worker_env() -> dict:
    """The variables every worker gets: the run cache (an absolute path) and the data, if set."""
    env = {name: os.environ[name] for name in WORKER_ENV if name in os.environ}
    return env | {"DKM_RUNS_DIR": str(runs_dir().resolve())}


def retrain_config(profile: Profile, source: str, plan, seed: int) -> dict:
    """The re-training configuration of a re-trained source net (as
    dkm.experiments.pipeline.source_net)."""
    if source == "plain":
        return pl.retrain_config(profile, "plain", seed)
    return pl.retrain_config(profile, "dkm", seed, plan, source.split("-", 1)[1])


def retrainings(profile: Profile, grid: list) -> list[tuple]:
    """(source, plan, seed) of each distinct re-training the grid shares, in grid order."""
    found = {}
    for method, plan, seed in grid:
        source = split_method(method)[0]
        if source != "pretrained":
            key = config_key(retrain_config(profile, source, plan, seed))
            found.setdefault(key, (source, plan, seed))
    return list(found.values())


def _label(what: str, plan, seed: int) -> str:
    return f"{what} at {plan.label()}, seed {seed}"


class _Progress:
    """Stages done / total: a tqdm bar and `report(done, total, what)` after each stage."""

    def __init__(self, total: int, report, show: bool, name: str):
        self.done, self.total, self.report = 0, total, report
        self.bar = tqdm(total=total, desc=f"sweep {name} (ray)", unit="stage", disable=not show)

    def step(self, what: str) -> None:
        self.done += 1
        self.bar.update(1)
        if self.report:
            self.report(self.done, self.total, what)

    def close(self) -> None:
        self.bar.close()


def _wait(ray, futures: list, labels: list, progress: _Progress) -> list:
    """Results of `futures` in their order, counting each as it finishes (a failure raises)."""
    label = dict(zip(futures, labels))
    pending = list(futures)
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        ray.get(ready)  # a failed task raises here, with its worker's traceback
        progress.step(label[ready[0]])
    return ray.get(futures)


def _remote(ray, profile: Profile) -> dict:
    """The three tasks as Ray remote functions with the resources of one stage."""
    cpus = profile.threads or 1
    gpus = 1 if ray.cluster_resources().get("GPU", 0) > 0 else 0
    tasks = (_plans_task, _retrain_task, _point_task)
    return {f.__name__: ray.remote(num_cpus=cpus, num_gpus=gpus)(f) for f in tasks}


def _run(ray, profile: Profile, methods: list, report, show: bool) -> list:
    """The three waves; the rows in the serial sweep's order."""
    env, remote = worker_env(), _remote(ray, profile)
    plans = ray.get(remote["_plans_task"].remote(env, profile))
    grid = [(m, plan, seed) for plan in plans for seed in profile.seeds for m in methods]
    jobs = retrainings(profile, grid)
    progress = _Progress(1 + len(jobs) + len(grid), report, show, profile.name)
    progress.step("pre-training and plans")
    try:
        futures = [remote["_retrain_task"].remote(env, profile, *job) for job in jobs]
        _wait(ray, futures, [_label(f"re-training {s}", p, n) for s, p, n in jobs], progress)
        futures = [remote["_point_task"].remote(env, profile, *point) for point in grid]
        results = _wait(ray, futures, [_label(*point) for point in grid], progress)
    finally:
        progress.close()
    return [row for rows in results for row in rows]


CONNECT_TIMEOUT_S = 5.0  # a cluster address that does not answer within this is an error


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A "host:port" or "ray://host:port" address answers a TCP connection within `timeout`
    seconds; else one ConnectionError naming it ("auto" is Ray's own lookup, left to Ray).
    Ray itself waits minutes on an address where nothing listens."""
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ValueError(f"--address {address!r}: allowed auto, host:port or ray://host:port")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = "no answer" if isinstance(err, TimeoutError) else (err.strerror or str(err))
        raise ConnectionError(
            f"--address {address!r}: no Ray cluster answers there ({reason}, within "
            f"{timeout:g} s): start one (ray start --head) or leave --address out for a local Ray"
        ) from None


def _connect(ray, address, num_cpus) -> bool:
    """Connect to the cluster at `address`, or start a local Ray; True if this call started it."""
    if ray.is_initialized():
        return False
    if address is not None:
        check_address(address)
        ray.init(address=address, logging_level=logging.WARNING)
    else:
        num_cpus = None if num_cpus is None else check_int("num_cpus", num_cpus, 1)
        ray.init(num_cpus=num_cpus, include_dashboard=False, logging_level=logging.WARNING)
    return True


def sweep_ray(
    profile: Profile, methods=None, address: str | None = None, num_cpus: int | None = None,
    progress=None, write: bool = True, report=None,
) -> list[dict]:  # fmt: skip
    """`dkm.experiments.sweep.sweep` with each stage a Ray task; the same rows, written as the same
    table.

    address: a running cluster ("auto", "ray://host:10001", ...); None starts a local Ray with
    `num_cpus` CPUs (None: all), shut down at the end (a Ray already initialized is used as is).
    report(done, total, what): after each finished stage."""
    ray = import_ray()
    methods = methods_of(profile) if methods is None else list(methods)
    for m in methods:
        check_choice("method", m, all_methods(profile) + finetuned_methods(profile))
    started = _connect(ray, address, num_cpus)
    try:
        rows = _run(ray, profile, methods, report, show_progress(progress))
    finally:
        if started:
            ray.shutdown()
    if write:
        # the driver's platform: on a cluster of other CPU types, the workers' may differ
        write_results(results_path(profile), rows, platform.of_profile(profile))
    return rows
