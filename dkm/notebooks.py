"""Headless regeneration of every figure and table: papermill runs the notebooks in order.

`python -m dkm figures [--profile …] [--only 04,05]` runs each notebook (parameters PROFILE and
FIG_DIR injected) into `build/notebooks/<profile>/`; the notebooks save their figures through
`dkm.saving`; then the gallery is written.
"""

from __future__ import annotations

import time
from pathlib import Path

from ._checks import check_choice
from .saving import DEFAULT_PROFILE, PROFILE_NAMES, ROOT, fig_dir_for, write_gallery

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
    output = Path(out_dir) / f"{name}.ipynb"
    output.parent.mkdir(parents=True, exist_ok=True)
    try:
        pm.execute_notebook(
            str(NOTEBOOK_DIR / f"{name}.ipynb"),
            str(output),
            kernel_name=kernel_name,
            parameters={"PROFILE": profile, "FIG_DIR": str(Path(fig_dir).resolve())},
            cwd=str(NOTEBOOK_DIR),
            progress_bar=False,
        )
    except pm.PapermillExecutionError as err:
        raise _failure(name, err, output) from None
    return output


def run_all(
    profile: str = DEFAULT_PROFILE, only=None, out_dir=None, fig_dir=None, log=print
) -> dict:
    """Run the chosen notebooks in order, then write the gallery; return {notebook: seconds}.

    Stops at the first failure.
    """
    check_choice("profile", profile, PROFILE_NAMES)
    out_dir = Path(out_dir) if out_dir else ROOT / "build" / "notebooks" / profile
    fig_dir = Path(fig_dir) if fig_dir else fig_dir_for(profile)
    seconds = {}
    for name in select_notebooks(only):
        started = time.perf_counter()
        log(f"running {name}.ipynb (profile {profile}) …")
        run_notebook(name, profile, out_dir, fig_dir)
        seconds[name] = time.perf_counter() - started
        log(f"  done in {seconds[name]:.0f} s")
    log(f"gallery: {write_gallery(fig_dir, profile)}")
    return seconds
