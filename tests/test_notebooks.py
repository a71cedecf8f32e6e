"""The five notebooks: committed clean, run headlessly with PROFILE="smoke", every figure produced,
nbval --nbval-lax.

One smoke run (papermill, through `dkm.app.runner.run_all` as `python -m dkm figures` does)
executes every notebook into a temporary directory, with the session's smoke run cache and results
table (tests/conftest.py, shared with tests/e2e), so nothing committed is touched; nbval then
re-runs the executed copies and compares the cells marked `# NBVAL_CHECK_OUTPUT` (deterministic
values: CR, bounds, counts, accuracies read from the cache) with the first run.
"""

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from dkm.app import runner as notebooks
from dkm.viz import files as saving

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# DESIGN.md, "Figures the package regenerates": the contract
DESIGN_FIGURES = {
    "fig01_relaxation": "01",
    "fig02_retraining": "02",
    "fig03_assignments": "03",
    "fig04_filters": "03",
    "fig05_cr_accuracy": "04",
    "fig08_study": "04",
    "fig06_energy_validation": "05",
    "fig07_energy_breakdown": "05",
}
DESIGN_TABLES = {"table01_compression": "04"}


def _env(cache: dict) -> dict:
    """Caches and results in the session's smoke cache (nothing committed is touched); one thread
    per process (2 run at once)."""
    return {**cache, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "DKM_PROGRESS": "0"}


def _nbval(notebook: Path, env: dict, log: Path) -> subprocess.Popen:
    """nbval --nbval-lax on one executed copy, in the background (its PNGs are already checked:
    DKM_PNG=0)."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pytest",
                "--nbval-lax",
                "--nbval-current-env",
                "-p",
                "no:cacheprovider",
                "-q",
                "--rootdir",
                str(notebook.parent),
                "--basetemp",
                str(log.with_suffix(".tmp")),
                str(notebook),
            ],
            cwd=notebook.parent,
            env={**os.environ, **env, "DKM_PNG": "0"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory, smoke_cache):
    """Every notebook executed with PROFILE="smoke" by the headless runner (papermill), then re-run
    by nbval.

    The nbval run of a notebook starts as soon as its papermill run is done, beside the papermill
    run of the next one: it only reads the caches its own first run wrote, so the two never compute
    the same thing.
    """
    tmp = tmp_path_factory.mktemp("smoke")
    out, fig, env, nbval = tmp / "notebooks", tmp / "figures", _env(smoke_cache), {}
    try:
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            for name in notebooks.NOTEBOOKS:
                notebooks.run_all("smoke", only=name, out_dir=out, fig_dir=fig, log=lambda _: None)
                nbval[name] = _nbval(out / f"{name}.ipynb", env, tmp / f"nbval_{name}.log")
    finally:
        codes = {name: proc.wait() for name, proc in nbval.items()}
    logs = {name: (tmp / f"nbval_{name}.log").read_text() for name in nbval}
    return {"tmp": tmp, "out": out, "fig": fig, "nbval": codes, "nbval_logs": logs}


# ---------------------------------------------------------------- the committed notebooks
def test_the_five_notebooks_are_there():
    assert [p.stem for p in NOTEBOOKS] == list(notebooks.NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_notebook_has_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    dirty = [
        i
        for i, c in enumerate(nb.cells)
        if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not dirty, (
        f"{path.name}: cells {dirty} carry outputs or execution counts; "
        "clear them before committing"
    )
    assert "widgets" not in nb.metadata, (
        f"{path.name} carries widget state: clear it before committing"
    )


def _parameters(nb) -> list:
    return [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_layout(path):
    """H1 title and the stems it regenerates, one `parameters` cell of literals, a Summary, then the
    saving cell."""
    nb = nbformat.read(path, as_version=4)
    first, stems = (
        nb.cells[0].source,
        [s for s, n in {**DESIGN_FIGURES, **DESIGN_TABLES}.items() if path.stem.startswith(n)],
    )
    assert first.startswith("# ") and all(f"`{s}`" in first for s in stems), (
        f"{path.name}: title cell must name {stems}"
    )
    params = _parameters(nb)
    assert len(params) == 1, (
        f"{path.name}: {len(params)} cells tagged 'parameters', allowed exactly one"
    )
    names = []
    for stmt in ast.parse(params[0].source).body:
        assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1, (
            f"{path.name}: parameters hold assignments only"
        )
        ast.literal_eval(stmt.value)  # literals only: papermill injects after this cell
        names.append(stmt.targets[0].id)
    assert names[:3] == ["PROFILE", "SEED", "FIG_DIR"]
    assert any(
        c.cell_type == "markdown" and c.source.startswith("## Summary") for c in nb.cells[-3:]
    )
    last = nb.cells[-1].source
    assert all(f'"{s}"' in last for s in stems) and ("save_figure" in last or "save_table" in last)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_functions_stay_short(path):
    nb = nbformat.read(path, as_version=4)
    for c in nb.cells:
        if c.cell_type == "code":
            for node in ast.walk(ast.parse(c.source)):
                if isinstance(node, ast.FunctionDef):
                    assert node.end_lineno - node.lineno + 1 <= 15, (
                        f"{path.name}: def {node.name} is longer than 15 lines"
                    )


# ---------------------------------------------------------------- the smoke run
def test_every_design_figure_is_produced(smoke_run):
    assert set(saving.FIGURES) == set(DESIGN_FIGURES) and set(saving.TABLES) == set(DESIGN_TABLES)
    for stem in DESIGN_FIGURES:
        png, html = smoke_run["fig"] / f"{stem}.png", smoke_run["fig"] / f"{stem}.html"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000, stem
        assert f'id="{stem}"' in html.read_text(), stem
    for stem in DESIGN_TABLES:
        assert (smoke_run["fig"] / f"{stem}.csv").read_text().count("\n") > 10
        assert (smoke_run["fig"] / f"{stem}.md").read_text().startswith("| layer |")


def test_gallery_shows_every_png(smoke_run):
    text = (smoke_run["fig"] / "README.md").read_text()
    pngs = sorted(smoke_run["fig"].glob("*.png"))
    assert len(pngs) == len(DESIGN_FIGURES)
    assert all(f"![{p.stem}]({p.name})" in text and saving.FIGURES[p.stem][1] in text for p in pngs)


def test_executed_notebooks_have_no_errors_and_show_their_sliders(smoke_run):
    for name in notebooks.NOTEBOOKS:
        nb = nbformat.read(smoke_run["out"] / f"{name}.ipynb", as_version=4)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
        assert not [o for o in outputs if o.output_type == "error"], name
        widgets = [
            o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
        ]
        assert widgets, f"{name}: no slider rendered its default state"


def test_nbval_reproduces_the_checked_outputs(smoke_run):
    """nbval --nbval-lax re-ran each executed copy: every cell runs, the NBVAL_CHECK_OUTPUT cells
    print the same."""
    for name in notebooks.NOTEBOOKS:
        assert smoke_run["nbval"][name] == 0, (
            f"nbval failed on {name}:\n{smoke_run['nbval_logs'][name][-6000:]}"
        )
        assert " passed" in smoke_run["nbval_logs"][name]
    checked = sum(
        "NBVAL_CHECK_OUTPUT" in c.source
        for name in notebooks.NOTEBOOKS
        for c in nbformat.read(smoke_run["out"] / f"{name}.ipynb", as_version=4).cells
    )
    assert checked >= 10


def test_a_failing_notebook_names_itself_and_the_cell(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook(
        cells=[
            nbformat.v4.new_code_cell('PROFILE = "cpu"\nFIG_DIR = None'),
            nbformat.v4.new_code_cell("x = 1"),
            nbformat.v4.new_code_cell("raise ValueError('broken on purpose')"),
        ],
        metadata={
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
    )
    nb.cells[0].metadata["tags"] = ["parameters"]
    nbformat.write(nb, tmp_path / "09_broken.ipynb")
    monkeypatch.setattr(notebooks, "NOTEBOOK_DIR", tmp_path)
    monkeypatch.setattr(notebooks, "NOTEBOOKS", ("09_broken",))
    with pytest.raises(
        notebooks.NotebookError,
        match=r"(?s)notebook 09_broken\.ipynb failed in cell \d.*"
        r"broken on purpose.*executed copy",
    ):
        notebooks.run_all(
            "smoke", out_dir=tmp_path / "out", fig_dir=tmp_path / "fig", log=lambda s: None
        )
    assert (tmp_path / "out" / "09_broken.ipynb").exists() and not (
        tmp_path / "fig" / "README.md"
    ).exists()


def test_heartbeat_says_what_runs_at_least_every_interval():
    import time

    lines = []
    with notebooks.Heartbeat(lines.append, every=0.05) as beat:
        beat.status[0] = "sweep smoke: 3/9 runs done"
        time.sleep(0.3)
    n = len(lines)
    time.sleep(0.15)
    assert len(lines) == n >= 3  # stopped with the block
    assert all(line.startswith("  … sweep smoke: 3/9 runs done (") for line in lines)


def test_figures_prepares_the_sweep_only_for_the_notebooks_that_read_it():
    from dkm.app.cli import _needs_sweep

    assert _needs_sweep(None) and _needs_sweep("04") and _needs_sweep("01,03")
    assert not _needs_sweep("01") and not _needs_sweep("05")


def test_book_without_executed_notebooks_is_one_clear_error(tmp_path, capsys):
    from dkm.app.cli import main

    assert main(["book", "--profile", "paper", "--out-dir", str(tmp_path / "book")]) == 2
    err = capsys.readouterr().err
    assert "no executed notebook" in err and "make figures" in err
    assert not (tmp_path / "book").exists()


# ---------------------------------------------------------------- parameters checked first
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_code_cell_checks_every_parameter(path):
    """The cell after `parameters` calls check_parameters with each parameter, before any work."""
    nb = nbformat.read(path, as_version=4)
    i = nb.cells.index(_parameters(nb)[0])
    names = [s.targets[0].id for s in ast.parse(nb.cells[i].source).body]
    tree = ast.parse(nb.cells[i + 1].source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call)
             and getattr(n.func, "id", None) == "check_parameters"]  # fmt: skip
    assert len(calls) == 1, f"{path.name}: the cell after the parameters must check them"
    assert [(k.arg, k.value.id) for k in calls[0].keywords] == [(n, n) for n in names]
    first_work = next(s for s in tree.body if not isinstance(s, (ast.Import, ast.ImportFrom)))
    assert calls[0] in ast.walk(first_work), f"{path.name}: check the parameters before any work"


@pytest.mark.parametrize(
    "name,value,message",
    [("SEED", -1, "SEED=-1 is out of range: allowed 0 ≤ SEED"),
     ("PROFILE", "big", "PROFILE='big' is not allowed: choose one of 'smoke', 'cpu'"),
     ("LAMBDAS", [], "LAMBDAS=[] is not allowed"), ("K_OPTIONS", [4, 0], "K_OPTIONS[1]=0"),
     ("TARGET_CR", 0.5, "TARGET_CR=0.5 is out of range"), ("BITS", 0, "BITS=0 is out of range"),
     ("SETTING", "44x", "SETTING='44x' is not allowed"), ("ACT_BITS", 33, "ACT_BITS=33"),
     ("ACCELERATOR", "tpu", "ACCELERATOR='tpu' is not allowed"),
     ("FIG_DIR", "", "FIG_DIR='' is not"), ("NOPE", 1, "unknown notebook parameter NOPE")],
)  # fmt: skip
def test_check_parameters_names_the_bad_one(name, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        notebooks.check_parameters(**{name: value})


def test_papermill_with_a_bad_parameter_fails_in_the_checking_cell(tmp_path):
    import papermill as pm

    path = ROOT / "notebooks" / "04_compression.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(path), str(tmp_path / "out.ipynb"), progress_bar=False,
                            parameters={"PROFILE": "smoke", "SEED": -1},
                            cwd=str(path.parent))  # fmt: skip
    assert err.value.ename == "ValueError" and "SEED=-1 is out of range" in err.value.evalue
    nb = nbformat.read(tmp_path / "out.ipynb", as_version=4)
    failed = [c for c in nb.cells if c.cell_type == "code"
              and any(o.output_type == "error" for o in c.outputs)]  # fmt: skip
    assert len(failed) == 1 and "check_parameters(" in failed[0].source
