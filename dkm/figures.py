"""Headless regeneration of every figure and table: `python -m dkm figures [--profile …] [--only 04,05]`.

papermill runs each notebook (parameters PROFILE and FIG_DIR injected) into
`build/notebooks/<profile>/`; the notebooks save their figures through `save_figure` / `save_table`
(`.html` + `.png`, `.csv` + `.md`, each written atomically: temp file + os.replace); then the
gallery `<fig_dir>/README.md` shows every PNG with one line. The default profile `cpu` writes into
`figures/` (committed); any other profile into `build/figures/<profile>/`.
"""

from __future__ import annotations

import argparse
import atexit
import csv
import io
import os
import re
import sys
import time
import warnings
from pathlib import Path

from ._checks import check_choice
from ._io import write_atomic

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = (
    "01_spectral_relaxation",
    "02_retraining",
    "03_cluster_assignments",
    "04_compression",
    "05_energy",
)
PROFILE_NAMES = ("smoke", "cpu", "paper")
DEFAULT_PROFILE = "cpu"
# stem -> (notebook, what it shows): the contract of DESIGN.md, "Figures the package regenerates"
FIGURES = {
    "fig01_relaxation": (
        "01",
        "k-means error vs its spectral relaxation over K; the rank condition",
    ),
    "fig02_retraining": (
        "02",
        "training curves with and without the regularizer; k-means error of each layer falling",
    ),
    "fig03_assignments": (
        "03",
        "kernel rows in R³ coloured by cluster, before and after re-training; "
        "histograms of distance to the nearest center",
    ),
    "fig04_filters": ("03", "conv filters before/after sharing, pre-trained vs re-trained"),
    "fig05_cr_accuracy": ("04", "accuracy vs CR: Deep k-Means vs every baseline"),
    "fig06_energy_validation": (
        "05",
        "our energy metric vs the ZigZag reference per layer, AlexNet and GoogLeNet, "
        "with R² (and R² of MACs alone)",
    ),
    "fig07_energy_breakdown": ("05", "energy per layer, dense vs shared, by component"),
}
TABLES = {
    "table01_compression": ("04", "per-layer K, p, bits, CR of the authors' reference settings")
}
_STEM = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
PNG_HELP = (
    "Plotly's PNG export (kaleido ≥ 1) drives a headless Chrome/Chromium. Install one: "
    "`sudo apt-get install chromium` (Debian/Ubuntu; `make setup` does it when run as root) or "
    "`plotly_get_chrome` (downloads Chrome for kaleido); if it is installed elsewhere, set "
    "BROWSER_PATH=/path/to/chromium."
)


class FigureExportError(RuntimeError):
    """A figure that could not be exported (names the stem and how to fix it)."""


class NotebookError(RuntimeError):
    """A notebook that failed under papermill (names the notebook and the failing cell)."""


def fig_dir_for(profile: str) -> Path:
    """figures/ for the default profile (committed), build/figures/<profile>/ for the others."""
    check_choice("profile", profile, PROFILE_NAMES)
    return ROOT / "figures" if profile == DEFAULT_PROFILE else ROOT / "build" / "figures" / profile


def _check_stem(stem: str) -> str:
    if not isinstance(stem, str) or not _STEM.match(stem):
        raise ValueError(
            f"stem={stem!r}: allowed a file name without directory or extension, e.g. 'fig01_relaxation'"
        )
    return stem


_KALEIDO = {"started": False}


def png_bytes(fig, scale: float = 1.0) -> bytes:
    """The figure as PNG through kaleido; one browser per process, started at the first call."""
    import kaleido
    import plotly.io as pio

    if not _KALEIDO["started"]:
        kaleido.start_sync_server(
            silence_warnings=True, mathjax=False
        )  # no LaTeX in our figures: no CDN fetch
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        _KALEIDO["started"] = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return pio.to_image(fig, format="png", scale=scale)


def save_figure(fig, stem: str, fig_dir) -> list[Path]:
    """Write `<fig_dir>/<stem>.html` (plotly.js from its CDN) and `<stem>.png`; both are rendered before either is written.

    $DKM_PNG=0 skips the PNG (only for re-runs whose PNGs were already produced, as the nbval pass of the tests).
    """
    stem, fig_dir = _check_stem(stem), Path(fig_dir)
    # a fixed div id: regenerating an unchanged figure gives the same .html
    html = fig.to_html(include_plotlyjs="cdn", full_html=True, div_id=stem).encode()
    if (
        os.environ.get("DKM_PNG") == "0"
    ):  # a re-run whose PNGs were already checked (tests/test_notebooks.py)
        write_atomic(fig_dir / f"{stem}.html", html)
        return [fig_dir / f"{stem}.html"]
    try:
        png = png_bytes(fig)
    except Exception as err:  # any failure of the browser: say which figure and how to fix it
        raise FigureExportError(
            f"PNG export of {stem!r} failed ({type(err).__name__}: {err}). {PNG_HELP} "
            f"Nothing was written for {stem!r}."
        ) from err
    paths = [fig_dir / f"{stem}.html", fig_dir / f"{stem}.png"]
    for path, data in zip(paths, (html, png)):
        write_atomic(path, data)
    return paths


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict], columns=None) -> str:
    """A GitHub markdown table of `rows` (floats with 4 significant digits, None as empty)."""
    columns = list(columns or rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def save_table(rows: list[dict], stem: str, fig_dir, columns=None) -> list[Path]:
    """Write `<fig_dir>/<stem>.csv` (full precision) and `<stem>.md` (a markdown table), atomically."""
    stem, fig_dir = _check_stem(stem), Path(fig_dir)
    if not rows:
        raise ValueError(f"rows of table {stem!r} is empty: allowed a non-empty list of dicts")
    columns = list(columns or rows[0])
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    paths = [fig_dir / f"{stem}.csv", fig_dir / f"{stem}.md"]
    for path, text in zip(paths, (buf.getvalue(), markdown_table(rows, columns))):
        write_atomic(path, text.encode())
    return paths


# ---------------------------------------------------------------- the gallery
def gallery(fig_dir, profile: str | None = None) -> str:
    """Markdown showing every PNG of `fig_dir` with one line on what it shows, then links to the tables."""
    fig_dir = Path(fig_dir)
    head = [
        "# Figures",
        "",
        "Regenerated headlessly by `make figures`"
        + (f" (profile `{profile}`)" if profile else "")
        + ": every notebook run with papermill, each figure saved as an interactive `.html` and a static `.png`.",
        "",
    ]
    body = []
    for png in sorted(fig_dir.glob("*.png")):
        notebook, line = FIGURES.get(png.stem, ("?", "(not a figure of DESIGN.md's table)"))
        body += [
            f"## `{png.stem}` (notebook {notebook})",
            "",
            f"{line}. Interactive: [{png.stem}.html]({png.stem}.html)",
            "",
            f"![{png.stem}]({png.name})",
            "",
        ]
    for md in sorted(fig_dir.glob("table*.md")):
        notebook, line = TABLES.get(md.stem, ("?", "(not a table of DESIGN.md's table)"))
        body += [
            f"## `{md.stem}` (notebook {notebook})",
            "",
            f"{line}: [{md.name}]({md.name}), [{md.stem}.csv]({md.stem}.csv)",
            "",
        ]
    return "\n".join(head + (body or ["No figure yet: run `make figures`.", ""]))


def write_gallery(fig_dir, profile: str | None = None) -> Path:
    """Write `<fig_dir>/README.md` (atomically) and return its path."""
    path = Path(fig_dir) / "README.md"
    write_atomic(path, gallery(fig_dir, profile).encode())
    return path


# ---------------------------------------------------------------- the runner
def _matches(notebook: str, key: str) -> bool:
    return notebook.startswith(key) or notebook.startswith(key.zfill(2))


def select_notebooks(only=None) -> list[str]:
    """Every notebook, or those whose name starts with one of the comma-separated `only` entries ("4" = "04")."""
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
            f"only={only!r}: unknown {unknown or keys}; allowed notebook numbers or names: {', '.join(NOTEBOOKS)}"
        )
    return [nb for nb in NOTEBOOKS if any(_matches(nb, k) for k in keys)]


def _failure(name: str, err, output: Path) -> NotebookError:
    source = (getattr(err, "source", "") or "").strip().splitlines()
    shown = "\n    ".join(source[:6] + (["…"] if len(source) > 6 else []))
    return NotebookError(
        f"notebook {name}.ipynb failed in cell {getattr(err, 'cell_index', '?')} (execution count "
        f"{getattr(err, 'exec_count', '?')}):\n    {shown}\n{getattr(err, 'ename', type(err).__name__)}: "
        f"{getattr(err, 'evalue', err)}\nexecuted copy with the traceback: {output}"
    )


def run_notebook(name: str, profile: str, out_dir, fig_dir, kernel_name: str = "python3") -> Path:
    """Execute notebooks/<name>.ipynb with papermill (PROFILE, FIG_DIR injected) into out_dir; NotebookError on failure."""
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
    """Run the chosen notebooks in order, then write the gallery; {notebook: seconds}. Stops at the first failure."""
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


def build_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Options of `python -m dkm figures`."""
    parser.add_argument(
        "--profile",
        default=DEFAULT_PROFILE,
        choices=PROFILE_NAMES,
        help="experiment size: smoke (seconds), cpu (default, writes figures/), paper (GPU)",
    )
    parser.add_argument(
        "--only", default=None, metavar="NN,NN", help="run only these notebooks, e.g. 04,05"
    )
    parser.add_argument(
        "--out-dir",
        default=None,
        help="where the executed notebooks go (default build/notebooks/<profile>)",
    )
    parser.add_argument(
        "--fig-dir",
        default=None,
        help="where the figures go (default figures/ for cpu, build/figures/<profile>/ otherwise)",
    )
    return parser


def cli_main(args) -> int:
    """Run `python -m dkm figures`; a failing notebook stops the run with its name and cell (exit status 1)."""
    started = time.perf_counter()
    try:
        seconds = run_all(args.profile, args.only, args.out_dir, args.fig_dir)
    except NotebookError as err:
        print(f"dkm figures: {err}", file=sys.stderr)
        return 1
    print(f"{len(seconds)} notebooks in {time.perf_counter() - started:.0f} s")
    return 0


def main(argv=None) -> int:
    """`python -m dkm.figures …` (the same as `python -m dkm figures …`)."""
    args = build_parser(
        argparse.ArgumentParser(prog="dkm figures", description=__doc__)
    ).parse_args(argv)
    try:
        return cli_main(args)
    except ValueError as err:  # a bad --only or --profile: one line, as dkm.cli does
        print(f"dkm figures: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
