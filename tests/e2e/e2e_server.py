"""A throw-away JupyterLab server for the browser tests: 127.0.0.1, a free port, a token, a
temporary root.

The root holds *copies* of the notebooks (JupyterLab autosaves, so the committed ones are never
opened), each parameterized with `PROFILE = "smoke"` (or the server's `profile`) the way papermill
does it (a cell injected after the one tagged `parameters`); every Jupyter and dkm directory the
server or its kernels could write to is redirected into the temporary directory, unless
`extra_env` points one elsewhere.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import papermill

START_TIMEOUT_S = 90.0  # the 2-core CI machine is shared: a cold start has taken ~15 s
STOP_TIMEOUT_S = 15.0
PARAMETERS = {
    "PROFILE": "smoke"
}  # plus FIG_DIR, into the temporary directory (LabServer.parameters)

# user settings, so that the page is deterministic: every cell attached to the DOM (no windowing,
# which would detach off-screen outputs), no news or update checks (the network is closed)
USER_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {
        "fetchNews": "false",
        "checkForUpdates": False,
    },
}


class ServerDidNotStart(RuntimeError):
    """JupyterLab did not answer /api/status in time; the message carries its log."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    """True when 127.0.0.1:port can be listened on again (as any server would: TIME_WAIT is no
    obstacle)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def prepare_notebook(src: Path, dst: Path, parameters: dict = PARAMETERS) -> Path:
    """Copy `src` to `dst` with `parameters` injected after its `parameters` cell (papermill's
    rule)."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(src),
        str(dst),
        parameters=parameters,
        prepare_only=True,
        kernel_name="python3",
        progress_bar=False,
        log_output=False,
    )
    return dst


def write_user_settings(settings_dir: Path) -> None:
    """Write USER_SETTINGS as JupyterLab user-settings files."""
    for name, values in USER_SETTINGS.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(values))


class LabServer:
    """`jupyter lab` as a subprocess; `start()` waits for /api/status, `stop()` terminates then
    kills."""

    def __init__(
        self, jupyter: Path, tmp: Path, extra_args: tuple = (), extra_env: dict | None = None,
        profile: str = PARAMETERS["PROFILE"],
    ):  # fmt: skip
        self.jupyter, self.tmp, self.profile = Path(jupyter), Path(tmp), profile
        self.root = self.tmp / "root"
        self.log_path = self.tmp / "jupyter-server.log"
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.extra_args, self.extra_env = tuple(extra_args), dict(extra_env or {})
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict:
        """The server's (and its kernels') environment: everything writable points into tmp."""
        t = self.tmp
        env = dict(os.environ)
        env.update(
            {
                "PATH": f"{self.jupyter.parent}{os.pathsep}{env.get('PATH', '')}",
                "JUPYTER_CONFIG_DIR": str(t / "jupyter-config"),
                "JUPYTER_DATA_DIR": str(t / "jupyter-data"),
                "JUPYTER_RUNTIME_DIR": str(t / "jupyter-runtime"),
                "IPYTHONDIR": str(t / "ipython"),
                "JUPYTERLAB_SETTINGS_DIR": str(t / "lab-settings"),
                "JUPYTERLAB_WORKSPACES_DIR": str(t / "lab-workspaces"),
                "DKM_RUNS_DIR": str(t / "runs"),
                "DKM_RESULTS_DIR": str(t / "results"),
                "DKM_PROGRESS": "0",
                # figures as .html only: PNG export is tested by tests/test_notebooks.py
                "DKM_PNG": "0",
            }
        )
        env.update(self.extra_env)
        return env

    def parameters(self, profile: str | None = None) -> dict:
        """What the notebook copies are run with: the server's profile (or `profile`), figures
        written into tmp."""
        return {"PROFILE": profile or self.profile, "FIG_DIR": str(self.tmp / "figures")}

    def prepare(self, src: Path, folder: str, profile: str | None = None) -> str:
        """A parameterized copy of notebook `src` in `folder` of the root; its path for
        JupyterLab."""
        prepare_notebook(src, self.root / folder / src.name, self.parameters(profile))
        return f"{folder}/{src.name}"

    def command(self) -> list[str]:
        return [
            str(self.jupyter),
            "lab",
            "--no-browser",
            "--expose-app-in-browser",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            f"--IdentityProvider.token={self.token}",
            f"--ServerApp.root_dir={self.root}",
            "--ServerApp.terminals_enabled=False",
            "--LabApp.extension_manager=readonly",
            *(["--allow-root"] if os.geteuid() == 0 else []),
            *self.extra_args,
        ]

    def start(self, timeout: float = START_TIMEOUT_S) -> "LabServer":
        """Start the server; raise ServerDidNotStart (with the log) unless /api/status answers in
        time."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_user_settings(self.tmp / "lab-settings")
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                self.command(),
                env=self.env(),
                cwd=self.root,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerDidNotStart(self._why(f"exited with code {self.proc.returncode}"))
            if self.status() is not None:
                return self
            time.sleep(0.5)
        self.stop()
        raise ServerDidNotStart(self._why(f"did not answer /api/status within {timeout:.0f} s"))

    def _why(self, what: str) -> str:
        return (
            f"jupyter lab {what}; command: {' '.join(self.command())}\n"
            f"--- server log ---\n{self.log()}"
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else "(no log)"

    def api(self, path: str, method: str = "GET"):
        """Call the REST API with the token; parsed JSON (None for an empty answer)."""
        req = urllib.request.Request(
            f"{self.url}{path}", method=method, headers={"Authorization": f"token {self.token}"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            body = resp.read()
        return json.loads(body) if body else None

    def status(self):
        """/api/status, or None while the server does not answer."""
        try:
            return self.api("/api/status")
        except (urllib.error.URLError, ConnectionError, OSError):
            return None

    def shutdown_kernels(self) -> None:
        """Delete every session (and so its kernel): each notebook test starts from a fresh
        kernel."""
        for session in self.api("/api/sessions") or []:
            self.api(f"/api/sessions/{session['id']}", method="DELETE")

    def stop(self) -> None:
        """SIGTERM (the server shuts its kernels down), then SIGKILL to the process group."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(STOP_TIMEOUT_S)


def venv_jupyter() -> Path:
    """The `jupyter` next to the running Python (the project's venv)."""
    return Path(sys.executable).parent / "jupyter"


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a notebooks folder without its checkpoints."""
    shutil.copytree(
        src,
        dst,
        ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"),
        dirs_exist_ok=True,
    )
