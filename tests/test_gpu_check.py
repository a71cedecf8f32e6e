"""bench/gpu_check.py run as a GPU machine runs it: from the source tree (PYTHONPATH, no install),
with every package a GPU machine lacks made unimportable, on the CPU with tiny sizes."""

import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from dkm.training.data import DatasetNotFoundError, find_fashion_mnist

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
# what a GPU machine may lack: the notebook, figure, test and distributed stacks
HIDDEN = (
    "plotly", "papermill", "jupyter", "jupyterlab", "jupyter_client", "jupyter_core",
    "jupyter_server", "nbformat", "nbconvert", "nbclient", "nbval", "ipywidgets", "IPython",
    "ipykernel", "anywidget", "sklearn", "pandas", "kaleido", "ray", "matplotlib", "numba",
    "llvmlite",
)  # fmt: skip
# run before anything else (a sitecustomize on PYTHONPATH): a None in sys.modules makes `import`
# raise ModuleNotFoundError and importlib.util.find_spec return None, as for a missing package
BLOCKER = f"import sys\nsys.modules.update(dict.fromkeys({HIDDEN!r}))\n"
TINY = [
    "--device", "cpu", "--n-train", "128", "--n-test", "128", "--pretrain-epochs", "1",
    "--retrain-epochs", "1", "--batch-size", "64", "--widen", "1", "--threads", "1",
]  # fmt: skip


@pytest.fixture
def gpu_env(tmp_path):
    """The environment of a GPU machine's run: PYTHONPATH=<blocker>:<repo>, DKM_DATA_DIR set."""
    try:
        data_dir = find_fashion_mnist()
    except DatasetNotFoundError as err:
        pytest.skip(f"the GPU check reads Fashion-MNIST: {str(err).splitlines()[-1]}")
    (tmp_path / "sitecustomize.py").write_text(BLOCKER)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "DKM_"))}
    return env | {"PYTHONPATH": f"{tmp_path}{os.pathsep}.", "PYTHONNOUSERSITE": "1",
                  "DKM_DATA_DIR": str(data_dir)}  # fmt: skip


def _python(args: list, env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-s", *args]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def test_the_hidden_packages_are_unimportable_in_that_environment(gpu_env):
    done = _python(["-c", "import torch, numpy, scipy, tqdm, dkm; import plotly"], gpu_env)
    assert done.returncode == 1, done.stderr
    assert "ModuleNotFoundError: import of plotly halted; None in sys.modules" in done.stderr


def test_gpu_check_runs_on_the_cpu_with_nothing_but_its_dependencies(gpu_env, tmp_path):
    out = tmp_path / "out" / "gpu_check.json"
    done = _python([str(SCRIPT.relative_to(ROOT)), *TINY, "--out", str(out)], gpu_env)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert json.loads(done.stdout) == result  # printed, and written to --out
    assert result["profile"] == "paper-fmnist" and result["device"] == "cpu"
    assert result["setting"] == "45x" and result["target_cr"] > 1
    for key in ("top1_before", "top1_shared", "top1_bn"):
        assert 0.0 <= result[key] <= 1.0, key
    assert result["pretrain_images_per_s"] > 0 and result["retrain_images_per_s"] > 0
    assert set(result["f_refresh_s"]) == {"indicator", "spectral"}
    assert all(s > 0 for s in result["f_refresh_s"].values())
    assert result["identical_runs"] is True and result["nondeterministic_ops"] == []
    assert result["probe_steps"] == 4 and result["step_syncs"] == {}  # the CPU never waits
    assert "torch" in result["imported"] and not set(result["imported"]) & set(HIDDEN)


def _module():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_options_name_what_is_allowed(capsys):
    gpu_check = _module()
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--help"])
    assert exit_.value.code == 0 and "DKM_DATA_DIR" not in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        gpu_check.parse_args(["--n-train", "0"])
    assert exit_.value.code == 2
    assert "--n-train=0: allowed an integer ≥ 1" in capsys.readouterr().err
    args = gpu_check.parse_args(["--device", "cpu", "--widen", "1"])
    profile = gpu_check.shortened_profile(args)
    assert profile.model_kwargs["stage1_shortcut"] and profile.pretrain.device == "cpu"
    assert profile.lam == 0.5 and profile.retrain.lr == 0.01  # paper-fmnist's, shortened


def test_sync_sites_count_the_sync_warnings_by_line(tmp_path):
    gpu_check = _module()

    def caught(message, filename, lineno):
        return warnings.WarningMessage(UserWarning(message), UserWarning, str(filename), lineno)

    sync = "called a synchronizing CUDA operation"
    train_py, torch_py = ROOT / "dkm" / "training" / "loop.py", tmp_path / "torch" / "functional.py"
    seen = [caught(sync, train_py, 331)] * 4 + [
        caught(sync, torch_py, 7),
        caught("index_add_cuda_ does not have a deterministic implementation", train_py, 9),
    ]
    assert gpu_check.sync_sites(seen) == {"dkm/training/loop.py:331": 4, "torch/functional.py:7": 1}
    assert gpu_check.sync_sites([]) == {}
