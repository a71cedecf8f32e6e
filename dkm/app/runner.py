"""Headless regeneration of every figure and table: papermill runs the notebooks in order.

`python -m dkm figures [--profile …] [--only 04,05]` runs each notebook (parameters PROFILE and
FIG_DIR injected) into `build/notebooks/<profile>/`; the notebooks save their figures through
`dkm.viz.files`; then the gallery is written. With `prepare=True` (the command line) the profile's
long
stages — pre-training and the sweep — run first in this process (`prepare`), showing progress: the
notebooks then read them from the run cache.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

from dkm._checks import check_choice, check_float, check_int
from dkm.energy.accelerators import ACCELERATORS
from dkm.experiments.profiles import PROFILES
from dkm.io import check_writable_path, write_atomic
from dkm.plans import SETTINGS
from dkm.viz.files import DEFAULT_PROFILE, PROFILE_NAMES, ROOT, fig_dir_for, write_gallery

NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = (
    "01_spectral_relaxation",
    "02_retraining",
    "03_cluster_assignments",
    "04_compression",
    "05_energy",
)


class NotebookError(RuntimeError):
    """A notebook that failed under papermill (names the notebook and the failing cell)."""


# ---------------------------------------------------------------- the notebooks' parameters
def _ints(name, values, lo=1):
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name}={values!r} is not allowed: a non-empty list of integers ≥ {lo}")
    return [check_int(f"{name}[{i}]", v, lo) for i, v in enumerate(values)]


def _lams(name, values):
    if not isinstance(values, (list, tuple)) or not values:
        raise ValueError(f"{name}={values!r} is not allowed: a non-empty list of numbers ≥ 0")
    return [check_float(f"{name}[{i}]", v, 0.0) for i, v in enumerate(values)]


def _fig_dir(name, value):
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"{name}={value!r} is not allowed: None or a directory path")


_RULES = {  # parameter → check; each error names the parameter and what is allowed
    "PROFILE": lambda n, v: check_choice(n, v, PROFILES),
    "LIVE_PROFILE": lambda n, v: check_choice(n, v, PROFILES),
    "SEED": lambda n, v: check_int(n, v, 0),
    "FIG_DIR": _fig_dir,
    "TARGET_CR": lambda n, v: v is None or check_float(n, v, 1.0, lo_open=True),
    "LAMBDAS": _lams,
    "K_OPTIONS": _ints,
    "BITS": lambda n, v: check_int(n, v, 1, 32),
    "ACT_BITS": lambda n, v: v is None or check_int(n, v, 1, 32),
    "ACCELERATOR": lambda n, v: check_choice(n, v, ACCELERATORS),
    "SETTING": lambda n, v: check_choice(n, v, SETTINGS),
    **{k: lambda n, v: check_int(n, v, 1) for k in (
        "K_MAX", "TOY_N", "TOY_S", "TOY_CLUSTERS", "MAX_POINTS", "N_FILTERS", "SLIDER_TEST_IMAGES"
    )},
}  # fmt: skip


def check_parameters(**values) -> None:
    """Check a notebook's parameters (its first code cell calls this): one error naming the bad
    parameter, before any work is done."""
    for name, value in values.items():
        if name not in _RULES:
            raise ValueError(f"unknown notebook parameter {name}: known {', '.join(_RULES)}")
        _RULES[name](name, value)


def _matches(notebook: str, key: str) -> bool:
    return notebook.startswith(key) or notebook.startswith(key.zfill(2))


def select_notebooks(only=None) -> list[str]:
    """Every notebook, or those whose name starts with one of the `only` entries.

    only: a list, or comma-separated entries in a string; "4" is the same as "04".
    """
    if only is None:
        return list(NOTEBOOKS)
    keys = [
        str(k).strip()
        for k in (only.split(",") if isinstance(only, str) else only)
        if str(k).strip()
    ]
    unknown = [k for k in keys if not any(_matches(nb, k) for nb in NOTEBOOKS)]
    if unknown or not keys:
        raise ValueError(
            f"only={only!r}: unknown {unknown or keys}; "
            f"allowed notebook numbers or names: {', '.join(NOTEBOOKS)}"
        )
    return [nb for nb in NOTEBOOKS if any(_matches(nb, k) for k in keys)]


def _failure(name: str, err, output: Path) -> NotebookError:
    source = (getattr(err, "source", "") or "").strip().splitlines()
    shown = "\n    ".join(source[:6] + (["…"] if len(source) > 6 else []))
    return NotebookError(
        f"notebook {name}.ipynb failed in cell {getattr(err, 'cell_index', '?')} (execution count "
        f"{getattr(err, 'exec_count', '?')}):\n    {shown}\n"
        f"{getattr(err, 'ename', type(err).__name__)}: "
        f"{getattr(err, 'evalue', err)}\nexecuted copy with the traceback: {output}"
    )


def run_notebook(name: str, profile: str, out_dir, fig_dir, kernel_name: str = "python3") -> Path:
    """Execute notebooks/<name>.ipynb with papermill into out_dir; NotebookError on failure.

    The parameters PROFILE and FIG_DIR are injected.
    """
    import papermill as pm

    check_choice("notebook", name, NOTEBOOKS)
    output = check_writable_path(Path(out_dir) / f"{name}.ipynb")  # not a link, fifo or device
    output.parent.mkdir(parents=True, exist_ok=True)
    # papermill writes its output after every cell: into a private directory, then published
    with tempfile.TemporaryDirectory(prefix="dkm-notebook-") as scratch:
        executed = Path(scratch) / output.name
        try:
            pm.execute_notebook(
                str(NOTEBOOK_DIR / f"{name}.ipynb"),
                str(executed),
                kernel_name=kernel_name,
                parameters={"PROFILE": profile, "FIG_DIR": str(Path(fig_dir).resolve())},
                cwd=str(NOTEBOOK_DIR),
                progress_bar=False,
            )
        except pm.PapermillExecutionError as err:
            write_atomic(output, executed.read_bytes())  # the executed copy with the traceback
            raise _failure(name, err, output) from None
        write_atomic(output, executed.read_bytes())
    return output


class Heartbeat:
    """While in the with-block, log `status` (a one-item list, set by the caller) every `every` s
    from a daemon thread, with the time since the block started."""

    def __init__(self, log=print, every: float = 20.0):
        self.log, self.every, self.status = log, every, [""]
        self._stop, self._thread = threading.Event(), None

    def __enter__(self):
        self.started = time.perf_counter()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()
        return self

    def _beat(self):
        while not self._stop.wait(self.every):
            self.log(f"  … {self.status[0]} ({_minutes(time.perf_counter() - self.started)})")

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 90 else f"{seconds:.0f} s"


def prepare(profile: str, log=print, every: float = 20.0) -> None:
    """Pre-train the profile's net and run its sweep (cached stages are read): a progress bar in an
    interactive terminal, else a line at least every `every` seconds (runs done / total, the run
    in progress, the time left if the rest is not cached)."""
    from dkm.experiments import pipeline as pl
    from dkm.experiments.profiles import get_profile
    from dkm.experiments.sweep import sweep
    from dkm.training.loop import show_progress

    p = get_profile(profile)
    with Heartbeat(log, 1e9 if show_progress() else every) as beat:
        beat.status[0] = f"pre-training the {profile} net ({p.pretrain.epochs} epochs)"
        pl.pretrain(p)
        computed = {"seconds": 0.0, "runs": 0, "last": None}

        def report(done, total, what):
            now = time.perf_counter()
            if computed["last"] is not None and now - computed["last"][0] > 1.0:  # not cached
                computed["seconds"] += now - computed["last"][0]
                computed["runs"] += 1
            computed["last"] = (now, what)
            mean = computed["seconds"] / max(computed["runs"], 1)
            left = f", at most ~{_minutes(mean * (total - done))} left" if computed["runs"] else ""
            beat.status[0] = f"sweep {profile}: {done}/{total} runs done, now {what}{left}"

        sweep(p, report=report)
    log(f"  pre-training and sweep of {profile}: ready")


def run_all(
    profile: str = DEFAULT_PROFILE,
    only=None,
    out_dir=None,
    fig_dir=None,
    log=print,
    prepare_first: bool = False,
) -> dict:
    """Run the chosen notebooks in order, then write the gallery; return {notebook: seconds}.

    prepare_first: run `prepare` before the notebooks. Stops at the first failure; while a
    notebook runs, a line every 20 s says so.
    """
    check_choice("profile", profile, PROFILE_NAMES)
    out_dir = Path(out_dir) if out_dir else ROOT / "build" / "notebooks" / profile
    fig_dir = Path(fig_dir) if fig_dir else fig_dir_for(profile)
    if prepare_first:
        log(f"preparing the runs of profile {profile} (cached stages are read) …")
        prepare(profile, log)
    seconds = {}
    for name in select_notebooks(only):
        started = time.perf_counter()
        log(f"running {name}.ipynb (profile {profile}) …")
        with Heartbeat(log) as beat:
            beat.status[0] = f"{name}.ipynb running"
            run_notebook(name, profile, out_dir, fig_dir)
        seconds[name] = time.perf_counter() - started
        log(f"  done in {seconds[name]:.0f} s")
    log(f"gallery: {write_gallery(fig_dir, profile)}")
    return seconds
