"""`dkm lab` / `make lab`: JupyterLab on 127.0.0.1 with a token, and it starts as root too."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from dkm.app.cli import lab_command, main

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(port: int, token: str | None) -> int:
    url = f"http://127.0.0.1:{port}/api/status" + (f"?token={token}" if token else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as err:
        return err.code


def test_lab_command_binds_localhost_and_allows_root_only_as_root():
    cmd = lab_command(8899, as_root=False)
    assert cmd[:3] == [sys.executable, "-m", "jupyterlab"]
    assert "--ip=127.0.0.1" in cmd and not any("token" in c.lower() for c in cmd)
    assert "--port=8899" in cmd and "--no-browser" in cmd and "--allow-root" not in cmd
    assert f"--ServerApp.root_dir={ROOT / 'notebooks'}" in cmd
    assert lab_command(8899, as_root=True)[-1] == "--allow-root"


def test_lab_bad_input_is_one_error(capsys):
    assert main(["lab", "--port", "0"]) == 2
    assert "port=0" in capsys.readouterr().err
    assert main(["lab", "--token", "a b"]) == 2
    assert "token='a b' is not allowed" in capsys.readouterr().err


def test_lab_on_a_busy_port_is_one_line(capsys):
    """Issue 37 (low): JupyterLab printed 13 log lines for a port in use."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert main(["lab", "--port", str(port)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"127.0.0.1:{port} is not free" in err


def _cmdlines_below(pid: int) -> list[str]:
    """The command lines of every process descended from `pid` (Linux /proc)."""
    children, out = {pid}, []
    for _ in range(3):  # dkm -> jupyterlab (-> its own helpers)
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
                if ppid in children and int(stat.parent.name) not in children:
                    children.add(int(stat.parent.name))
                    out.append((stat.parent / "cmdline").read_bytes().decode(errors="replace"))
            except (OSError, ValueError, IndexError):
                continue
    return out


def test_lab_answers_with_the_token_and_refuses_without(tmp_path):
    port, token = _free_port(), "dkmtest0123456789"
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp_path), JUPYTER_CONFIG_DIR=str(tmp_path),
               DKM_LAB_TOKEN=token)  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "dkm", "lab", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while _status_or_none(port, token) != 200:
            assert proc.poll() is None, proc.stdout.read()
            assert time.monotonic() < deadline, "JupyterLab did not answer within 90 s"
            time.sleep(0.5)
        assert _status(port, None) == 403 and _status(port, "wrong") == 403
        if Path("/proc/self/stat").exists():  # the token is in no command line `ps` shows
            lines = _cmdlines_below(proc.pid)
            assert lines and not any(token in line for line in lines), lines
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        out = proc.communicate(timeout=30)[0]
    assert f"open http://127.0.0.1:{port}/lab?token={token}" in out
    if os.geteuid() == 0:  # as in a container: the one line that says why --allow-root
        assert "running as root" in out


def _status_or_none(port: int, token: str) -> int | None:
    try:
        return _status(port, token)
    except (urllib.error.URLError, ConnectionError, OSError):
        return None


def test_make_lab_runs_the_cli():
    recipe = (ROOT / "Makefile").read_text().split("\nlab:", 1)[1].split("\n\n", 1)[0]
    assert "python -m dkm lab" in recipe
