"""Issue 36, item 3: the package as a user installs it. `python -m build` makes an sdist and a
wheel, `twine check` passes, and the wheel installed into a fresh venv (no checkout on the path)
runs the command line, reading every package data file it needs from the installed package and
writing its run cache under the user's directories, never into site-packages."""

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(cmd, **kwargs):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    pytest.importorskip("build", reason="python -m build (the dev extra)")
    out = tmp_path_factory.mktemp("dist")
    # the sdist, then the wheel built from the unpacked sdist (what an installer does); offline
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT])
    return out


def test_build_makes_an_sdist_and_a_wheel_that_twine_accepts(dist):
    [sdist], [wheel] = sorted(dist.glob("*.tar.gz")), sorted(dist.glob("*.whl"))
    assert sdist.name.startswith("deep_kmeans-") and wheel.name.startswith("deep_kmeans-")
    out = _run([sys.executable, "-m", "twine", "check", "--strict", sdist, wheel])
    assert out.count("PASSED") == 2


def test_the_wheel_runs_without_the_checkout(dist, tmp_path):
    [wheel] = sorted(dist.glob("*.whl"))
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--quiet",
          wheel])  # fmt: skip
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"])
                .strip())  # fmt: skip
    # the dependencies (torch, numba, ...) from this environment's site-packages, as a plain path:
    # its .pth files (this checkout's editable install among them) are not read
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DKM_", "PYTHON", "XDG_"))}
    env.update(HOME=str(home), DKM_PROGRESS="0", DKM_PNG="0")
    work = tmp_path / "work"
    work.mkdir()

    where = _run([python, "-c", "import dkm; print(dkm.__file__)"], cwd=work, env=env)
    assert Path(where.strip()).is_relative_to(site), where
    assert "usage: dkm" in _run([python, "-m", "dkm", "--help"], cwd=work, env=env)
    energy = _run([venv / "bin" / "dkm", "energy", "--model", "alexnet", "--bits", "8"], cwd=work,
                  env=env)  # fmt: skip
    assert "alexnet at 8 bits" in energy
    # the authors' settings (package data) and a smoke share with its export
    out = _run([python, "-m", "dkm", "share", "--profile", "smoke", "--target-cr", "8",
                "--export", "smoke.dkm"], cwd=work, env=env)  # fmt: skip
    assert "CR: official" in out and (work / "smoke.dkm").stat().st_size > 0
    assert list((home / ".cache" / "dkm" / "runs").glob("pretrain-*/done.json"))
    installed = {p.relative_to(site).parts[0] for p in site.iterdir()}
    assert "data" not in installed and not (site.parent / "data").exists()
    reference = _run([python, "-c", "import dkm.plans as p; print(p._reference_path())"],
                     cwd=work, env=env)  # fmt: skip
    assert Path(reference.strip()).is_relative_to(site), reference  # the packaged copy
