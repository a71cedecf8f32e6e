"""Issue 14: the run cache never serves a damaged, unfinished or foreign run, and finishes every
interrupted one (checksums, the commit marker, code versions, locks, checked configurations)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from test_pipeline import FOUR, tiny

from dkm.experiments import cache as runs
from dkm.experiments import pipeline as pl
from dkm.experiments import sweep as sw
from dkm.experiments.profiles import get_profile
from dkm.plans import Plan
from dkm.training.checkpoint import CheckpointError, load_checkpoint


def _pretrained(profile):
    net, config = pl.pretrain(profile)
    return net, config, runs.run_dir("pretrain", config)


def _same_weights(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


# ---------------------------------------------------------------- item 2: checksums
def test_a_flipped_byte_in_model_pt_is_refused_naming_the_directory(dirs):
    _, _, d = _pretrained(tiny())
    data = bytearray((d / "model.pt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "model.pt").write_bytes(bytes(data))
    with pytest.raises(runs.RunError, match=f"delete {d}"):
        pl.pretrain(tiny())


def test_a_nan_written_into_model_pt_is_refused(dirs):
    _, _, d = _pretrained(tiny())
    state = torch.load(d / "model.pt", weights_only=True)
    next(v for v in state.values() if v.is_floating_point()).view(-1)[0] = float("nan")
    torch.save(state, d / "model.pt")
    with pytest.raises(runs.RunError, match="checksum"):
        pl.pretrain(tiny())


def test_a_damaged_checkpoint_fails_its_digest(dirs):
    _, _, d = _pretrained(tiny())
    ckpt = torch.load(d / "checkpoint.pt", weights_only=True)
    assert "digest" in ckpt
    ckpt["model"][next(iter(ckpt["model"]))].view(-1)[0] += 1.0
    torch.save(ckpt, d / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="fails its checksum"):
        load_checkpoint(d / "checkpoint.pt")


@pytest.mark.parametrize("content", [b"", b"garbage, not a zip"])
def test_an_empty_or_garbage_checkpoint_is_one_short_line(tmp_path, content):
    (tmp_path / "checkpoint.pt").write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "checkpoint.pt")
    message = str(err.value)
    assert "\n" not in message and "weights_only" not in message and "()" not in message
    assert (content == b"") == ("an empty file" in message)


# ---------------------------------------------------------------- item 3: the commit marker
@pytest.mark.parametrize("lost", [("history.json",), ("history.json", "model.pt"), ()])
def test_a_run_killed_between_its_final_files_completes_bit_identically(dirs, lost):
    net, config, d = _pretrained(tiny())
    reference = {name: (d / name).read_bytes() for name in ("model.pt", "history.json")}
    for name in (*lost, runs.DONE_NAME):
        (d / name).unlink()
    (d / runs.PENDING_NAME).write_text(json.dumps({"versions": runs.chain_versions(config)}))
    again, _ = pl.pretrain(tiny())
    assert _same_weights(net, again)
    assert {n: (d / n).read_bytes() for n in reference} == reference
    marker = json.loads((d / runs.DONE_NAME).read_text())
    assert set(marker["files"]) == {"model.pt", "history.json"}
    assert not (d / runs.PENDING_NAME).exists()
    assert pl.load_run(d)[1] == runs.canonical(config)
    assert runs.run_history("pretrain", config)["epochs"]


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[2])  # tests/: the tiny profile
    from dkm.experiments import cache as runs, pipeline
    from test_pipeline import tiny

    def killing(write):
        def wrapped(*args, **kwargs):  # write_atomic(path, text), save_atomic(obj, path)
            out = write(*args, **kwargs)
            path = next(a for a in args if isinstance(a, (str, os.PathLike)))
            if Path(path).name == sys.argv[1]:
                os.kill(os.getpid(), signal.SIGKILL)  # a real kill -9, right after that file
            return out
        return wrapped

    pipeline.save_atomic = killing(pipeline.save_atomic)
    pipeline.write_atomic = killing(pipeline.write_atomic)
    runs.write_atomic = killing(runs.write_atomic)
    pipeline.pretrain(tiny())
    """
)


def _untimed(path):
    """A history.json without its wall-clock fields (the only ones two runs may differ in)."""

    def strip(x):
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if "seconds" not in k}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return strip(json.loads(path.read_text()))


@pytest.mark.parametrize("after", ["model.pt", "history.json", "done.json"])
def test_a_real_kill_9_between_the_final_files_resumes_to_a_complete_identical_run(
    dirs, monkeypatch, after
):
    """SIGKILL of a pre-training process right after it wrote `after` (model.pt, history.json and
    done.json are its last three files): the next run completes the directory, bit-identically."""
    tests = os.path.dirname(os.path.abspath(__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([os.path.dirname(tests), tests])}
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, after, tests], env=env, capture_output=True, text=True
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    config = pl.pretrain_config(tiny())
    d = runs.run_dir("pretrain", config)
    assert (d / after).exists()
    assert (d / runs.DONE_NAME).exists() == (after == "done.json")
    resumed, _ = pl.pretrain(tiny())  # completes the directory (or reads the finished run)
    monkeypatch.setenv("DKM_RUNS_DIR", str(dirs / "uninterrupted"))
    reference, _ = pl.pretrain(tiny())
    ref = runs.run_dir("pretrain", config)
    assert _same_weights(resumed, reference)
    assert (d / "model.pt").read_bytes() == (ref / "model.pt").read_bytes()
    assert _untimed(d / "history.json") == _untimed(ref / "history.json")
    marker = json.loads((d / runs.DONE_NAME).read_text())
    assert set(marker["files"]) == {"model.pt", "history.json"}
    assert not (d / runs.PENDING_NAME).exists() and not list(d.glob(".*.tmp"))
    monkeypatch.setenv("DKM_RUNS_DIR", str(dirs / "runs"))
    assert runs.run_history("pretrain", config)["epochs"]


def test_stale_temps_of_a_killed_stage_are_removed_when_it_resumes(dirs):
    _, config, d = _pretrained(tiny())
    (d / runs.DONE_NAME).unlink()
    (d / "history.json").unlink()
    for name in ("model.pt", "history.json", "config.json", "checkpoint.pt"):
        (d / f".{name}.k1ll3d.tmp").write_bytes(b"half")
    pl.pretrain(tiny())
    assert not list(d.glob(".*.tmp"))


def test_an_unfinished_run_is_not_listed_by_the_browser(dirs):
    p = tiny()
    _, config = pl.retrain(p, "dkm", 0, FOUR)
    d = runs.run_dir("retrain", config)
    assert len(runs.cached_retrains(pl.pretrain_config(p))) == 1
    (d / runs.DONE_NAME).unlink()
    (d / "history.json").unlink()
    assert runs.cached_retrains(pl.pretrain_config(p)) == []
    with pytest.raises(runs.RunError, match="not a finished run"):
        runs.run_history("retrain", config)
    pl.retrain(p, "dkm", 0, FOUR)
    assert len(runs.cached_retrains(pl.pretrain_config(p))) == 1


# ---------------------------------------------------------------- item 6: code versions
def test_outputs_without_a_marker_are_recomputed_never_adopted(dirs):
    """Issue 37, S5: with done.json and pending.json gone, a flipped but finite model.pt was
    adopted as a run written before markers. A run without its marker is computed again."""
    net, config, d = _pretrained(tiny())
    state = torch.load(d / "model.pt", weights_only=True)
    next(v for v in state.values() if v.is_floating_point()).view(-1)[0] += 0.5  # finite
    torch.save(state, d / "model.pt")
    (d / runs.DONE_NAME).unlink()
    (d / runs.PENDING_NAME).unlink(missing_ok=True)
    again, _ = pl.pretrain(tiny())
    assert _same_weights(net, again)  # recomputed: the flipped weight is gone
    assert _same_weights(net, pl.load_run(d)[0])
    assert json.loads((d / runs.DONE_NAME).read_text())["versions"] == runs.chain_versions(config)


def test_a_run_of_other_code_is_refused(dirs, monkeypatch):
    _, _, d = _pretrained(tiny())
    monkeypatch.setitem(runs.CODE_VERSIONS, "pretrain", runs.CODE_VERSIONS["pretrain"] + 1)
    with pytest.raises(runs.StaleRunError, match=f"{d} was computed by another version"):
        pl.pretrain(tiny())
    with pytest.raises(runs.StaleRunError):
        pl.load_run(d)


def test_runs_without_a_marker_are_not_browsed(dirs):
    """The cached-run browser (notebook 02's λ slider) lists finished runs only, and reads only
    files their marker lists."""
    profile = tiny()
    net, config = pl.retrain(profile, "dkm", 0, FOUR)
    pl.share_and_evaluate(profile, net, config, "kmeans", FOUR, 0)
    [run] = runs.cached_retrains(pl.pretrain_config(profile))
    assert len(run["results"]) == 1 and run["history"]["steps"]
    for marker in (dirs / "runs").glob(f"evaluate-*/{runs.DONE_NAME}"):
        marker.unlink()
    [run] = runs.cached_retrains(pl.pretrain_config(profile))
    assert run["results"] == []
    (runs.run_dir("retrain", config) / runs.DONE_NAME).unlink()
    assert runs.cached_retrains(pl.pretrain_config(profile)) == []
    with pytest.raises(runs.RunError, match="not a finished run"):
        runs.verified(runs.run_dir("retrain", config), "history.json")


def test_a_finished_run_reads_where_pending_json_cannot_be_removed(dirs, monkeypatch):
    """A finished cache on a read-only disk: removing a left-over pending.json fails (EROFS);
    the run is read as it is."""
    net, config, d = _pretrained(tiny())
    (d / runs.PENDING_NAME).write_text(json.dumps({"versions": runs.chain_versions(config)}))
    real_unlink = type(d).unlink

    def read_only(self, missing_ok=False):
        if self.name == runs.PENDING_NAME:
            raise OSError(30, "Read-only file system", str(self))
        return real_unlink(self, missing_ok)

    monkeypatch.setattr(type(d), "unlink", read_only)
    again, _ = pl.pretrain(tiny())
    assert _same_weights(net, again)


def test_the_keys_do_not_change():
    """The root key's fields: those of issue 14, and since 0.3.0 the numeric path (every key
    changed once, on purpose: tests/test_cache_keys.py); never the code version."""
    p = get_profile("cpu")
    config = pl.pretrain_config(p)
    assert set(config) == {"stage", "dataset", "n_train", "model", "model_kwargs", "train",
                           "threads", "memory_format", "numerics"}  # fmt: skip
    assert "code_version" not in json.dumps(config)


# ---------------------------------------------------------------- items 4, 8: checked inputs
@pytest.mark.parametrize(
    "plan, match",
    [
        (Plan((4,) * 3, (0.0,) * 3), "has 3 entries but"),
        (Plan((10**9,) * 4, (0.0,) * 4), "regularizes no conv"),
        ([4, 4, 4, 4], "a dkm.plans.Plan"),
    ],
)
def test_a_bad_plan_is_refused_before_any_directory_is_made(dirs, plan, match):
    with pytest.raises(ValueError, match=match):
        pl.retrain(tiny(), "dkm", 0, plan)
    with pytest.raises(ValueError, match=match):
        pl.retrain_config(tiny(), "dkm", 0, plan)
    assert not (dirs / "runs").exists()


def test_a_bad_plan_is_refused_by_evaluation_config():
    source = pl.pretrain_config(tiny())
    with pytest.raises(ValueError, match="has 2 entries but"):
        pl.evaluation_config(tiny(), source, "kmeans", Plan((4, 4), (0.0, 0.0)), 0)


@pytest.mark.parametrize("content", ["{}", "[]", '{"top1": 0.5}'])
def test_a_damaged_result_json_is_an_error_naming_the_file(dirs, content):
    p = tiny()
    net, source = pl.pretrain(p)
    pl.share_and_evaluate(p, net, source, "kmeans", FOUR, 0)
    config = pl.evaluation_config(p, source, "kmeans", FOUR, 0)
    d = runs.run_dir("evaluate", config)
    (d / "result.json").write_text(content)
    runs.commit(d, config)  # a checksum that holds it: the keys are checked
    with pytest.raises(runs.RunError, match=f"{d / 'result.json'}.*delete {d}"):
        pl.share_and_evaluate(p, net, source, "kmeans", FOUR, 0)


def test_side_files_damaged_or_of_other_code_are_recomputed(dirs, monkeypatch):
    p = tiny()
    net, source = pl.pretrain(p)
    pl.share_and_evaluate(p, net, source, "kmeans", FOUR, 0)
    path = runs.run_dir("pretrain", source) / "test_accuracy_200.json"
    written = json.loads(path.read_text())
    accuracy = written["accuracy"]
    calls = []
    evaluate = pl.evaluate
    monkeypatch.setattr(pl, "evaluate", lambda *a, **k: (calls.append(1), evaluate(*a, **k))[1])
    assert pl._source_accuracy(source, net, pl.datasets(p)[1]) == accuracy and not calls  # read
    flipped = path.read_text().replace(f"{accuracy}", f"{accuracy + 0.1}")  # one digit changed
    for damaged in (flipped, json.dumps({"accuracy": 0.0, "code_version": 2})):  # no checksum
        path.write_text(damaged)
        assert pl._source_accuracy(source, net, pl.datasets(p)[1]) == accuracy
        assert json.loads(path.read_text()) == written  # computed again, written whole
    monkeypatch.setitem(runs.CODE_VERSIONS, "evaluate", runs.CODE_VERSIONS["evaluate"] + 1)
    assert pl._source_accuracy(source, net, pl.datasets(p)[1]) == accuracy
    assert (
        len(calls) == 3 and json.loads(path.read_text())["code_version"] != written["code_version"]
    )


# ---------------------------------------------------------------- item 13: locks
_TRAIN_ONCE = """
import dataclasses, sys
from dkm.experiments import pipeline as pl
from dkm.experiments.profiles import get_profile
calls = []
train = pl.train
pl.train = lambda *a, **k: (calls.append(1), train(*a, **k))[1]
p = dataclasses.replace(get_profile("smoke"), n_train=256, n_test=200, bn_batches=2)
net, _ = pl.pretrain(p)
print(len(calls), float(sum(t.double().sum() for t in net.state_dict().values())))
"""


def test_two_identical_commands_train_once(dirs):
    env = {**os.environ, "DKM_RUNS_DIR": str(dirs / "runs"), "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", _TRAIN_ONCE], env=env, stdout=subprocess.PIPE)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300)[0].decode().split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(int(o[0]) for o in outs) == [0, 1] and outs[0][1] == outs[1][1]


_WRITE_ROWS = """
import sys
from pathlib import Path
from dkm.experiments import sweep as sw
tag = sys.argv[1]
for i in range(15):
    row = {c: "1" for c in sw.COLUMNS}
    sw.add_results(Path(sys.argv[2]), [{**row, "run_key": f"{tag}{i}", "method": tag}])
"""


def test_concurrent_writers_of_one_results_table_lose_no_row(tmp_path):
    path = tmp_path / "sweep_x.csv"
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITE_ROWS), tag, str(path)])
        for tag in ("a", "b")
    ]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    keys = {r["run_key"] for r in sw.read_results(path)}
    assert keys == {f"{t}{i}" for t in "ab" for i in range(15)}
