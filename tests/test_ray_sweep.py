"""The sweep on Ray (dkm.experiments.ray_engine) against the serial sweep: a local Ray with 2
workers on the
smoke profile writes the same table, and a second run trains nothing."""

import importlib.util
import sys
import time

import pytest

from dkm.app.cli import main
from dkm.experiments import ray_engine as ray_sweep
from dkm.experiments.profiles import get_profile
from dkm.experiments.sweep import results_path, sweep, write_results
from dkm.plans import Plan

needs_ray = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None,
    reason=f"Ray is not installed (the optional extra): {ray_sweep.EXTRA}",
)


def _files(root) -> dict:
    """{path: (size, mtime_ns)} of every file under `root`."""
    return {p: (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


@needs_ray
def test_ray_sweep_writes_the_serial_table_and_a_second_run_trains_nothing(tmp_path, monkeypatch):
    profile = get_profile("smoke")
    monkeypatch.setenv("DKM_RUNS_DIR", str(tmp_path / "serial" / "runs"))
    monkeypatch.setenv("DKM_RESULTS_DIR", str(tmp_path / "serial" / "results"))
    serial = sweep(profile, write=False, progress=False)
    write_results(results_path(profile), serial)
    serial_table = results_path(profile).read_bytes()

    runs = tmp_path / "ray" / "runs"
    monkeypatch.setenv("DKM_RUNS_DIR", str(runs))
    monkeypatch.setenv("DKM_RESULTS_DIR", str(tmp_path / "ray" / "results"))
    seen = []  # report(done, total, what) after each stage
    rows = ray_sweep.sweep_ray(
        profile, num_cpus=2, progress=False, report=lambda *args: seen.append(args)
    )
    assert rows == serial and results_path(profile).read_bytes() == serial_table
    # stages done / total: pre-training, 5 distinct re-trainings, 12 points
    assert [done for done, _, _ in seen] == list(range(1, 19)) and seen[-1][1] == 18
    assert sum(what.startswith("re-training plain") for _, _, what in seen) == 1
    stages = sorted(d.name.split("-")[0] for d in runs.iterdir())
    assert stages == sorted(["pretrain"] + ["retrain"] * 5 + ["evaluate"] * 12)

    before = _files(runs)
    assert ray_sweep.sweep_ray(profile, num_cpus=2, progress=False) == serial
    assert _files(runs) == before  # nothing trained, nothing written


@needs_ray
@pytest.mark.parametrize(
    "address, match",
    [("127.0.0.1:1", "no Ray cluster answers there"), ("no-such-host.invalid:6379", "no Ray"),
     ("ray://127.0.0.1:1", "no Ray cluster"), ("nonsense", "allowed auto, host:port")],
)  # fmt: skip
def test_an_address_that_does_not_answer_fails_within_seconds(address, match):
    """Issue 37, H4: `--address 127.0.0.1:1` hung for more than 180 s."""
    start = time.monotonic()
    with pytest.raises(ValueError if address == "nonsense" else ConnectionError, match=match):
        ray_sweep.sweep_ray(get_profile("smoke"), address=address, write=False, progress=False)
    assert time.monotonic() - start < 2 * ray_sweep.CONNECT_TIMEOUT_S


@needs_ray
def test_cli_unanswered_address_is_one_line_exit_2(capsys):
    rc = main(["sweep", "--profile", "smoke", "--engine", "ray", "--address", "127.0.0.1:1"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "no Ray cluster answers" in err


def test_without_ray_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # as where Ray is not installed
    with pytest.raises(ImportError, match=r"pip install 'deep-kmeans\[distributed\]'") as err:
        ray_sweep.sweep_ray(get_profile("smoke"))
    assert isinstance(err.value, ValueError)  # the command line reports it in one line


def test_retrainings_are_the_distinct_nets_the_grid_shares():
    profile = get_profile("smoke")
    plans = [Plan([4, 8, 8, 8], [0.0] * 4, "uniform", 8.0), Plan([2, 4, 4, 4], [0.0] * 4)]
    methods = ["kmeans", "plain", "dkm-indicator", "dkm-spectral", "plain+ft", "dkm-spectral+ft"]
    grid = [(m, plan, seed) for plan in plans for seed in (0, 1) for m in methods]
    jobs = ray_sweep.retrainings(profile, grid)
    # plain: one per seed; dkm-<mode> (and its +ft): one per plan, mode and seed
    assert len(jobs) == 2 + 2 * 2 * 2
    assert [(s, n) for s, _, n in jobs[:4]] == [
        ("plain", 0), ("dkm-indicator", 0), ("dkm-spectral", 0), ("plain", 1),
    ]  # fmt: skip


def test_cli_engine_ray_without_ray_names_the_extra(monkeypatch, capsys):
    from dkm.app.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    assert main(["sweep", "--profile", "smoke", "--engine", "ray"]) == 2
    assert "deep-kmeans[distributed]" in capsys.readouterr().err


@pytest.mark.parametrize("extra", [["--address", "auto"], ["--num-cpus", "2"]])
def test_cli_ray_options_need_the_ray_engine(capsys, extra):
    from dkm.app.cli import main

    assert main(["sweep", "--profile", "smoke", *extra]) == 2
    assert "--address and --num-cpus need --engine ray" in capsys.readouterr().err
