"""Data-parallel training (dkm.training.distributed): the slicing of each global batch and the
serial
identities by hand; then torchrun with the gloo backend and 2 processes on the smoke profile,
against references: two launches give the same bytes, a launch killed with SIGKILL and launched
again gives the weights of the uninterrupted one, both ranks compute the same F at every refresh,
and ranks that disagree stop with an error.

Run as a script (`python -m torch.distributed.run ... tests/test_distributed.py RECORD_DIR [--delay
S] [--perturb] -- <dkm arguments>`), this file is the child of those launches: it writes its pid
and the digest of F after each refresh into RECORD_DIR, then runs the dkm command line.
"""

import contextlib
import copy
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

from dkm.app.cli import main
from dkm.experiments import cache as runs
from dkm.experiments import pipeline as pl
from dkm.experiments.profiles import get_profile
from dkm.training import distributed
from dkm.training.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from dkm.training.data import batches, epoch_order
from dkm.training.loop import TrainConfig, train

HERE = Path(__file__).resolve()
ROOT = HERE.parents[1]
RETRAIN = ["retrain", "--profile", "smoke", "--target-cr", "8", "--no-progress"]
# the pre-training keys of one process, pinned to AVX2 (the cpu one: the committed results' root)
SERIAL_KEYS = {"smoke": "2157c037bfc4de0b", "cpu": "818a456a674c4847"}
SERIAL_SMOKE_KEY = SERIAL_KEYS["smoke"]


# ---------------------------------------------------------------- by hand, one process
@pytest.mark.parametrize("world", [1, 2, 3])
def test_each_global_batch_is_cut_into_disjoint_slices_in_rank_order(world):
    order = epoch_order(37, seed=5, epoch=2)
    per_rank = [list(distributed.slices(order, 8, world, r)) for r in range(world)]
    for b, chunk in enumerate(order.split(8)):
        parts = [per_rank[r][b][0] for r in range(world)]
        assert torch.equal(torch.cat(parts), chunk)  # the serial batch, in rank order
        assert all(per_rank[r][b][1] == len(chunk) for r in range(world))
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_a_serial_run_goes_through_unchanged():
    assert distributed.world_size() == 1 and distributed.rank() == 0 and distributed.is_main()
    X, y = torch.randn(21, 1, 4, 4), torch.arange(21) % 3
    data = TensorDataset(X, y)
    order = epoch_order(21, 0, 0)
    got = list(distributed.shards(data, order, 8))
    want = list(batches(data, order, 8))
    assert [(len(b[1]), s) for b, s in zip(want, [g[2] for g in got])] == [(8, 8), (8, 8), (5, 5)]
    assert all(torch.equal(g[0], w[0]) and torch.equal(g[1], w[1]) for g, w in zip(got, want))
    loss, row, net = torch.tensor(1.5), torch.arange(6.0), torch.nn.Linear(2, 2)
    assert distributed.weighted(loss, 5, 5) is loss and distributed.sum_row(row) is row
    assert distributed.wrap(net, torch.device("cpu")) is net and distributed.rank_seed(7) == 7
    assert distributed.broadcast("x") == "x" and distributed.gather("x") == ["x"]


def test_a_batch_too_small_for_the_ranks_is_refused(monkeypatch):
    monkeypatch.setattr(distributed, "world_size", lambda: 3)
    distributed.check_shards(2000, 64)  # the last batch has 16 images
    with pytest.raises(ValueError, match="batch of 2 image.*too few for 3 processes"):
        distributed.check_shards(130, 64)


def test_world_size_enters_the_key_only_when_above_one(monkeypatch):
    monkeypatch.setattr(pl, "numeric_path", lambda: "avx2")  # the keys of any machine pinned
    for name, key in SERIAL_KEYS.items():
        serial = pl.pretrain_config(get_profile(name))
        assert "world_size" not in serial and runs.config_key(serial) == key
    smoke, plan = get_profile("smoke"), pl.Plan((4,) * 4, (0.0,) * 4)
    assert "world_size" not in pl.retrain_config(smoke, "dkm", 0, plan)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    config = pl.retrain_config(smoke, "dkm", 0, plan)
    assert config["world_size"] == 2 and config["parent"]["world_size"] == 2
    assert runs.config_key(config["parent"]) != SERIAL_SMOKE_KEY


def test_torchrun_runs_only_the_training_commands(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    assert main(["figures"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "torchrun runs pretrain and retrain data-parallel" in err
    monkeypatch.setenv("RANK", "1")
    assert main(["figures"]) == 2 and capsys.readouterr().err == ""  # rank 0 says it once


def test_a_checkpoint_of_another_world_size_is_refused(tmp_path):
    data = TensorDataset(torch.randn(32, 1, 4, 4), torch.arange(32) % 2)
    config = TrainConfig(epochs=1, batch_size=8, device="cpu", threads=1)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2))
    train(net, data, config, checkpoint_dir=tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    ckpt = load_checkpoint(path)
    ckpt["rng"] = {"ranks": [ckpt["rng"], ckpt["rng"]]}
    save_checkpoint({k: v for k, v in ckpt.items() if k != "digest"}, path)
    with pytest.raises(CheckpointError, match="written by 2 process.*this run has 1"):
        train(net, data, config, checkpoint_dir=tmp_path, progress=False)


# ---------------------------------------------------------------- torchrun, 2 processes
def _launch(root: Path, *options) -> subprocess.Popen:
    """torchrun of this file on 2 processes (gloo) over the run cache `root/runs`."""
    (root / "record").mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DKM_RUNS_DIR": str(root / "runs"), "OMP_NUM_THREADS": "1",
           "DKM_RESULTS_DIR": str(root / "results"), "DKM_PROGRESS": "0"}  # fmt: skip
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    command = [*torchrun, str(HERE), str(root / "record"), *options, "--", *RETRAIN]
    with open(root / "launch.log", "w") as out:
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip


def _finish(root: Path, *options, ok: bool = True) -> str:
    """Launch, wait (at most 120 s), return the log; with `ok`, a failed launch fails the test."""
    child = _launch(root, *options)
    try:
        child.wait(timeout=120)
    finally:
        _kill(child, root)
    log = (root / "launch.log").read_text()
    assert (child.returncode == 0) == ok, log
    return log


def _kill(child: subprocess.Popen, root: Path) -> None:
    """SIGKILL the launcher's process group and each worker (torchrun starts them in sessions of
    their own), then wait until they are gone."""
    workers = [int(p.read_text()) for p in (root / "record").glob("pid-*")]
    if child.poll() is None:
        os.killpg(child.pid, signal.SIGKILL)
    for pid in workers:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)
    child.wait()
    deadline = time.time() + 30
    while any(_alive(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.05)


def _alive(pid: int) -> bool:
    """Is `pid` a running process (not gone, not a zombie)?"""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _run(root: Path, stage: str) -> Path:
    (d,) = (root / "runs").glob(f"{stage}-*")
    return d


def _weights(root: Path, stage: str) -> dict:
    return torch.load(_run(root, stage) / "model.pt", weights_only=True)


def _history(root: Path, stage: str) -> dict:
    history = json.loads((_run(root, stage) / "history.json").read_text())
    for record in history["epochs"]:
        record.pop("seconds")
    return history


def _assert_same_run(a: Path, b: Path) -> None:
    for stage in ("pretrain", "retrain"):
        wa, wb = _weights(a, stage), _weights(b, stage)
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), stage
        assert _history(a, stage) == _history(b, stage), stage


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted launch: `dkm retrain` (Deep k-Means, indicator F) on 2 processes."""
    root = tmp_path_factory.mktemp("ddp-reference")
    return root, _finish(root)


@pytest.mark.slow
def test_a_launch_finishes_keyed_by_its_world_size_and_ranks_agree_on_F(reference):
    root, log = reference
    assert log.count("re-trained (dkm-indicator") == 1  # rank 0 prints
    for stage in ("pretrain", "retrain"):
        d = _run(root, stage)
        assert json.loads((d / "config.json").read_text())["world_size"] == 2
        assert (d / runs.DONE_NAME).is_file() and d.name != f"pretrain-{SERIAL_SMOKE_KEY}"
    F = [json.loads((root / "record" / f"F-{r}.json").read_text()) for r in (0, 1)]
    assert len(F[0]) == 1 + 32 // 10  # at the start, then every 10 of the 32 steps
    assert F[0] == F[1]
    steps = [json.loads((root / "record" / f"steps-{r}.json").read_text()) for r in (0, 1)]
    assert steps == [96 + 32] * 2  # 3 + 1 epochs of 2000 images in global batches of 64


@pytest.mark.slow
def test_two_launches_give_identical_weights(reference, tmp_path):
    _finish(tmp_path)
    _assert_same_run(reference[0], tmp_path)


@pytest.mark.slow
def test_a_launch_killed_and_launched_again_gives_the_uninterrupted_weights(reference, tmp_path):
    child = _launch(tmp_path, "--delay", "0.1")
    try:
        deadline = time.time() + 120
        while time.time() < deadline and child.poll() is None:
            found = list((tmp_path / "runs").glob(f"pretrain-*/{CHECKPOINT_NAME}"))
            if found and load_checkpoint(found[0])["epoch"] >= 1:
                break
            time.sleep(0.01)
        assert child.poll() is None, (tmp_path / "launch.log").read_text()
    finally:
        _kill(child, tmp_path)
    assert child.returncode == -signal.SIGKILL
    assert not (_run(tmp_path, "pretrain") / runs.DONE_NAME).exists()  # killed mid-run
    done = load_checkpoint(_run(tmp_path, "pretrain") / CHECKPOINT_NAME)["step"]
    assert 32 <= done < 96
    _finish(tmp_path)
    _assert_same_run(reference[0], tmp_path)
    steps = [json.loads((tmp_path / "record" / f"steps-{r}.json").read_text()) for r in (0, 1)]
    assert steps == [96 - done + 32] * 2  # resumed: the steps left of pre-training, re-training


@pytest.mark.slow
def test_ranks_that_disagree_on_F_stop_with_an_error(reference, tmp_path):
    pretrained = _run(reference[0], "pretrain")
    (tmp_path / "runs").mkdir()
    subprocess.run(["cp", "-r", str(pretrained), str(tmp_path / "runs")], check=True)
    log = _finish(tmp_path, "--perturb", ok=False)
    assert "ranks [1] disagree with rank 0 on the weights and F" in log
    assert not list((tmp_path / "runs").glob(f"retrain-*/{runs.DONE_NAME}"))


@pytest.mark.slow
def test_train_data_parallel_against_serial_and_its_own_resume(tmp_path):
    _finish(tmp_path, "--toy")
    for r in (0, 1):
        toy = json.loads((tmp_path / "record" / f"toy-{r}.json").read_text())
        assert toy == {"gap_to_serial": pytest.approx(0, abs=1e-6), "resumed_from": 10,
                       "resumed_equal": True}  # fmt: skip


# ---------------------------------------------------------------- the children of the launches
def _toy(record: Path) -> dict:
    """dkm.training.loop on 2 ranks, 125 images in batches of 16 (the last one cut 7 + 6):
    - a net without batch norm or dropout trained data-parallel and serially (the gradient is the
      mean over the global batch either way): the largest weight difference;
    - test_train's WRN with dropout and a stateful regularizer interrupted at step 11 on both
      ranks, then resumed from the checkpoint of step 10 (every rank's generator restored):
      equal to the uninterrupted data-parallel run?"""
    sys.path.insert(0, str(HERE.parent))
    import test_train as tt

    data = tt.toy_data(125)
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 16), torch.nn.ReLU(),
                              torch.nn.Linear(16, 4))  # fmt: skip
    nets = [copy.deepcopy(mlp) for _ in range(2)]
    train(nets[0], data, tt.RESUME_CFG, progress=False)
    with distributed.alone():
        train(nets[1], data, tt.RESUME_CFG, progress=False)
    gap = max((a - b).abs().max().item() for a, b in zip(*(n.parameters() for n in nets)))

    class Stop(tt.FakeRegularizer):
        def after_step(self):
            super().after_step()
            if self.step == 11:
                raise tt.Interrupt

    ref = tt.tiny_wrn()
    train(ref, data, tt.RESUME_CFG, tt.FakeRegularizer(ref), progress=False)
    net, ckpt = tt.tiny_wrn(), record / "ckpt"
    with contextlib.suppress(tt.Interrupt):
        train(net, data, tt.RESUME_CFG, Stop(net), checkpoint_dir=ckpt, progress=False)
    step = load_checkpoint(ckpt / CHECKPOINT_NAME)["step"]
    net = tt.tiny_wrn(seed=99)  # the weights come from the checkpoint
    train(net, data, tt.RESUME_CFG, tt.FakeRegularizer(net), checkpoint_dir=ckpt, progress=False)
    same = all(
        torch.equal(a, b) for a, b in zip(ref.state_dict().values(), net.state_dict().values())
    )
    return {"gap_to_serial": gap, "resumed_from": step, "resumed_equal": same}


def _child(argv: list) -> int:
    """RECORD_DIR [--delay S] [--perturb] [--toy] -- <dkm arguments> (module docstring)."""
    from dkm import regularizer as spectral
    from dkm.training import checkpoint
    from dkm.training import loop as dkm_train

    record, options, args = Path(argv[0]), argv[1 : argv.index("--")], argv[argv.index("--") + 1 :]
    rank = os.environ["RANK"]
    (record / f"pid-{rank}").write_text(str(os.getpid()))
    if "--toy" in options:
        torch.set_num_threads(1)
        with distributed.process_group("cpu"):
            (record / f"toy-{rank}.json").write_text(json.dumps(_toy(record)))
        return 0
    digests, refresh = [], spectral.KMeansRegularizer.refresh

    def recorded(self):
        refresh(self)
        if "--perturb" in options and rank == "1":  # one row of the first conv moved elsewhere
            F = self._layers[0].F
            F.assignments[0] = (F.assignments[0] + 1) % F.num_clusters
        digests.append(checkpoint.digest(self.state_dict()))

    spectral.KMeansRegularizer.refresh = recorded
    delay = float(options[options.index("--delay") + 1]) if "--delay" in options else 0.0
    steps, step = [], dkm_train._Run.train_step

    def counted(*a):
        time.sleep(delay)
        steps.append(1)
        return step(*a)

    dkm_train._Run.train_step = counted
    try:
        return main(args)
    finally:
        (record / f"F-{rank}.json").write_text(json.dumps(digests))
        (record / f"steps-{rank}.json").write_text(json.dumps(len(steps)))


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
