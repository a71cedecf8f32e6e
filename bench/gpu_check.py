"""GPU check (issue 18): a shortened `paper-fmnist` on one GPU in minutes, nothing downloaded.

The `paper-fmnist` net (WRN-16-4 with the authors' 16 convs, dropout 0.3, conv bias), λ, T and
schedules' learning rates, cut to a few epochs on a subset of Fashion-MNIST. Two runs from the same
seeds, each: pre-train, re-train with the k-means regularizer at the authors' 45x plan, share at
45x, re-estimate batch norm. Printed, and written as one JSON object to --out:
- `pretrain_images_per_s`, `retrain_images_per_s`: training throughput over each stage's last epoch
  (the regularizer's penalty and F refreshes included in re-training);
- `f_refresh_s`: the time of one F refresh of the regularizer on the pre-trained net, per mode
  (the indicator F runs k-means where the weights are: on the GPU);
- `kmeans_device_vs_cpu`: k-means of the kernel rows of every conv the plan shares, on the device
  and on the CPU from the same starting centers: whether all assignments are equal, the largest
  center difference, the relative inertia difference, and each side's seconds;
- `step_syncs`: where a re-training step waits for the device: torch's CUDA sync debug mode over
  `probe_steps` regularized steps (one epoch, on a copy of the pre-trained net) as {"file:line":
  calls}; a line called `probe_steps` times or more waits at every step (the epoch's end counts
  once). Off CUDA nothing waits: {};
- `top1_before`, `top1_shared`, `top1_bn`: the re-trained net's test top-1, after sharing at 45x,
  and after BN re-estimation;
- `identical_runs`: the two runs' weights (pre-trained, re-trained, shared) and accuracies are equal
  bit for bit. torch.use_deterministic_algorithms(True, warn_only=True) with
  CUBLAS_WORKSPACE_CONFIG=:4096:8 (set before CUDA starts); ops without a deterministic kernel
  still run and are named in `nondeterministic_ops`.

On a GPU machine (Python with torch, numpy, scipy and tqdm; no install step, no network), from the
root of a checkout, with the four Fashion-MNIST idx files (gzipped or not) in one directory:

    DKM_DATA_DIR=/path/to/fashion-mnist PYTHONPATH=. python bench/gpu_check.py --device cuda

The defaults (20k training images, 3 + 2 epochs, twice) are sized for a few minutes on one GPU;
`--help` lists every size. It imports only the standard library, torch, numpy, scipy, tqdm and
dkm. Here it runs on the CPU with `--device cpu` and tiny sizes (tests/test_gpu_check.py).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import json
import os
import platform
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from dkm.experiments.profiles import get_profile
from dkm.io import write_atomic
from dkm.clustering import init_centers, kmeans
from dkm.plans import authors_plan
from dkm.regularizer import KMeansRegularizer
from dkm.rows import conv_layers, stays_dense, to_rows
from dkm.sharing import share, sharing_seed
from dkm.training.data import fashion_mnist
from dkm.training.evaluation import evaluate, recalibrate_batchnorm
from dkm.training.loop import train
from dkm.training.models import build_model

PROFILE = "paper-fmnist"
SETTING = "45x"
MODES = ("indicator", "spectral")
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "build" / "gpu_check.json"
PROBE_STEPS = 4
SYNCHRONIZING = "called a synchronizing CUDA operation"
NONDETERMINISTIC = "does not have a deterministic implementation"


def parse_args(argv=None) -> argparse.Namespace:
    """The command line (sizes default to a few minutes on one GPU)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    p.add_argument("--n-train", type=int, default=20000, help="training images (a fixed subset)")
    p.add_argument("--n-test", type=int, default=10000, help="test images (a fixed subset)")
    p.add_argument("--pretrain-epochs", type=int, default=3)
    p.add_argument("--retrain-epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--mode", choices=MODES, default="indicator", help="F of the re-training")
    p.add_argument("--widen", type=int, default=4, help="WRN-16-k width (the paper: 4)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: as is)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="where the JSON summary goes")
    args = p.parse_args(argv)
    for name in ("n_train", "n_test", "pretrain_epochs", "retrain_epochs", "batch_size", "widen"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')}={getattr(args, name)}: allowed an integer ≥ 1")
    return args


def setup(args) -> torch.device:
    """Deterministic algorithms, CPU threads, and the device (an error if CUDA is absent)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before CUDA starts
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: --device cuda but torch.cuda.is_available() is False")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    return torch.device(args.device)


def shortened_profile(args):
    """`paper-fmnist` cut to the check's epochs and width, on `args.device`."""
    profile = get_profile(PROFILE)
    kwargs = {**profile.model_kwargs, "widen_factor": args.widen}
    if args.widen == 1:
        kwargs["stage1_shortcut"] = True  # keep all 16 of the authors' convs
    cut = {"device": args.device, "batch_size": args.batch_size, "log_every": 10**9}
    pre = dataclasses.replace(profile.pretrain, epochs=args.pretrain_epochs, **cut)
    re = dataclasses.replace(profile.retrain, epochs=args.retrain_epochs, **cut)
    return dataclasses.replace(profile, model_kwargs=kwargs, pretrain=pre, retrain=re)


def images_per_s(history, n: int) -> float:
    """Training images per second over the last epoch of a run (warm: after the first steps)."""
    return n / history.epochs[-1]["seconds"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def refresh_seconds(net, profile, plan, mode: str, device) -> float:
    """Seconds of one F refresh of the regularizer at `plan` (after the one at construction)."""
    reg = KMeansRegularizer.from_plan(
        net, profile.lam, plan, mode=mode, view=profile.view, refresh_every=profile.refresh_every
    )
    _sync(device)
    started = time.perf_counter()
    reg.refresh()
    _sync(device)
    return time.perf_counter() - started


def kmeans_device_vs_cpu(net, plan, device) -> dict:
    """k-means of each shared conv's kernel rows on `device` and on the CPU, same start (§3.3)."""
    equal, center_diff, inertia_diff, seconds = True, 0.0, 0.0, {"device": 0.0, "cpu": 0.0}
    for (name, conv), k in zip(conv_layers(net), plan.K):
        rows = to_rows(conv.weight.detach())
        if stays_dense(k, rows.shape[0]):
            continue
        start = init_centers(rows.cpu(), k, seed=0)
        fits = {}
        for side, X in (("device", rows), ("cpu", rows.cpu())):
            _sync(device)
            started = time.perf_counter()
            fits[side] = kmeans(X, k, init_centers=start)
            _sync(device)
            seconds[side] += time.perf_counter() - started
        a, b = fits["device"], fits["cpu"]
        equal = equal and torch.equal(a.assignments.cpu(), b.assignments)
        center_diff = max(center_diff, float((a.codebook.cpu() - b.codebook).abs().max()))
        inertia_diff = max(inertia_diff, abs(a.inertia - b.inertia) / max(b.inertia, 1e-300))
    return {"equal_assignments": equal, "max_center_diff": center_diff,
            "max_inertia_rel_diff": inertia_diff, "seconds": seconds}  # fmt: skip


@contextlib.contextmanager
def _sync_debug(device: torch.device):
    """torch warns at every call that waits for the device (CUDA only), then as before."""
    if device.type != "cuda":
        yield
        return
    before = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("warn")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(before)


def sync_sites(caught: list) -> dict:
    """{"file:line": calls} of the sync debug mode's warnings (files of the checkout relative to
    it, others by their last two path parts)."""

    def where(w) -> str:
        path = Path(w.filename).resolve()
        name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else Path(*path.parts[-2:])
        return f"{name.as_posix()}:{w.lineno}"

    counts = Counter(where(w) for w in caught if SYNCHRONIZING in str(w.message))
    return dict(sorted(counts.items()))


def step_syncs(net, profile, plan, mode: str, train_set, device) -> dict:
    """Where re-training waits for the device: `PROBE_STEPS` regularized steps (one epoch) of a
    copy of `net` under the sync debug mode; F is computed before, as training gets it."""
    net = copy.deepcopy(net)
    config = dataclasses.replace(profile.retrain, epochs=1)
    n = min(len(train_set), PROBE_STEPS * config.batch_size)
    subset = TensorDataset(*(t[:n] for t in train_set.tensors))
    reg = KMeansRegularizer.from_plan(
        net, profile.lam, plan, mode=mode, view=profile.view,
        refresh_every=profile.refresh_every, seed=profile.retrain.seed,
    )  # fmt: skip
    with warnings.catch_warnings(record=True) as caught, _sync_debug(device):
        warnings.simplefilter("always")
        train(net, subset, config, regularizer=reg, progress=False)
    return sync_sites(caught)


def pretrain(profile, train_set, device):
    """(net, history): a fresh net from the training seed, trained on `train_set`."""
    torch.manual_seed(profile.pretrain.seed)
    net = build_model(profile.model, **profile.model_kwargs).to(device)
    return net, train(net, train_set, profile.pretrain, progress=False)


def retrain(net, profile, plan, mode: str, train_set):
    """History of re-training `net` in place with the k-means regularizer at `plan` (§3.2)."""
    reg = KMeansRegularizer.from_plan(
        net, profile.lam, plan, mode=mode, view=profile.view,
        refresh_every=profile.refresh_every, seed=profile.retrain.seed,
    )  # fmt: skip
    return train(net, train_set, profile.retrain, regularizer=reg, progress=False)


def share_and_evaluate(net, plan, train_set, test_set, profile, device) -> dict:
    """Top-1 before sharing, after sharing at `plan`, and after BN re-estimation (§5)."""
    result = {"top1_before": evaluate(net, test_set, device=device)["accuracy"]}
    share(net, plan, kmeans_seed=sharing_seed(0))
    result["top1_shared"] = evaluate(net, test_set, device=device)["accuracy"]
    recalibrate_batchnorm(net, train_set, num_batches=profile.bn_batches, device=device)
    result["top1_bn"] = evaluate(net, test_set, device=device)["accuracy"]
    return result


def _weights(net) -> list:
    return [t.detach().cpu().clone() for t in net.state_dict().values()]


def one_run(args, profile, data, device) -> dict:
    """Pre-train, time the F refreshes, re-train, share and evaluate; every measured number."""
    train_set, test_set = data
    net, pre_history = pretrain(profile, train_set, device)
    plan = authors_plan(net, SETTING)
    refresh = {mode: refresh_seconds(net, profile, plan, mode, device) for mode in MODES}
    kmeans_check = kmeans_device_vs_cpu(net, plan, device)
    syncs = step_syncs(net, profile, plan, args.mode, train_set, device)
    weights = _weights(net)
    re_history = retrain(net, profile, plan, args.mode, train_set)
    weights += _weights(net)
    result = share_and_evaluate(net, plan, train_set, test_set, profile, device)
    return {
        "pretrain_images_per_s": images_per_s(pre_history, len(train_set)),
        "retrain_images_per_s": images_per_s(re_history, len(train_set)),
        "f_refresh_s": refresh,
        "kmeans_device_vs_cpu": kmeans_check,
        "probe_steps": PROBE_STEPS,
        "step_syncs": syncs,
        "target_cr": plan.target_cr,
        **result,
        "weights": weights + _weights(net),
    }


def identical(a: dict, b: dict) -> bool:
    """Equal weights (bit for bit) and equal accuracies of two runs."""
    same = len(a["weights"]) == len(b["weights"]) and all(
        torch.equal(x, y) for x, y in zip(a["weights"], b["weights"])
    )
    return same and all(a[k] == b[k] for k in ("top1_before", "top1_shared", "top1_bn"))


def nondeterministic_ops(caught: list) -> list[str]:
    """The ops that torch warned have no deterministic implementation (on CUDA), each once."""
    messages = (str(w.message) for w in caught)
    return sorted({m.split(" does not")[0] for m in messages if NONDETERMINISTIC in m})


def third_party_modules() -> list[str]:
    """Top-level modules imported so far that are neither the standard library nor dkm."""
    tops = {name.split(".")[0] for name, module in sys.modules.items() if module is not None}
    return sorted(t for t in tops - set(sys.stdlib_module_names) - {"dkm", "__main__"}
                  if not t.startswith("_"))  # fmt: skip


def environment(device: torch.device) -> dict:
    """Versions and the device's name."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    return {"device": device.type, "device_name": name or platform.machine(),
            "torch": torch.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda, "threads": torch.get_num_threads()}  # fmt: skip


def summary(args, profile, runs: list, ops: list, seconds: float, device) -> dict:
    """The JSON summary: sizes, the first run's numbers, and whether the runs were identical."""
    first = {k: v for k, v in runs[0].items() if k != "weights"}
    sizes = {"profile": PROFILE, "model_kwargs": profile.model_kwargs, "n_train": args.n_train,
             "n_test": args.n_test, "pretrain_epochs": args.pretrain_epochs,
             "retrain_epochs": args.retrain_epochs, "batch_size": args.batch_size,
             "mode": args.mode, "lam": profile.lam, "refresh_every": profile.refresh_every,
             "setting": SETTING}  # fmt: skip
    return {**environment(device), **sizes, **first,
            "identical_runs": identical(*runs), "deterministic_algorithms": True,
            "nondeterministic_ops": ops, "seconds": round(seconds, 1),
            "imported": third_party_modules()}  # fmt: skip


def main(argv=None) -> dict:
    """Run the check twice, print and write the summary."""
    args = parse_args(argv)
    started, device = time.perf_counter(), setup(args)
    profile = shortened_profile(args)
    data = (fashion_mnist(True, n=args.n_train), fashion_mnist(False, n=args.n_test))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = [one_run(args, profile, data, device) for _ in range(2)]
    ops, seconds = nondeterministic_ops(caught), time.perf_counter() - started
    result = summary(args, profile, runs, ops, seconds, device)
    text = json.dumps(result, indent=1)
    print(text)
    write_atomic(args.out, text + "\n")
    return result


if __name__ == "__main__":
    main()
