"""Figure and table files: `save_figure` (.html + .png), `save_table` (.csv + .md), the gallery.

Each file is written atomically (temp file + os.replace), and a figure's two files are rendered
before either is written. The default profile `cpu` writes into `figures/` (committed); any other
profile into `build/figures/<profile>/`. The gallery `<fig_dir>/README.md` shows every PNG with
one line on what it shows (the figure contract of DESIGN.md below).
"""

from __future__ import annotations

import atexit
import csv
import io
import os
import re
import warnings
from pathlib import Path

from dkm._checks import check_choice
from dkm.experiments.profiles import PROFILES
from dkm.io import write_atomic
from dkm.viz.tables import markdown_table

ROOT = Path(__file__).resolve().parents[2]
PROFILE_NAMES = tuple(PROFILES)
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
    "fig08_study": (
        "04",
        "the budget × λ study: top-1 vs training epochs per method and vs λ per budget, "
        "at equal training for every method",
    ),
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


def fig_dir_for(profile: str) -> Path:
    """figures/ for the default profile (committed), build/figures/<profile>/ for the others."""
    check_choice("profile", profile, PROFILE_NAMES)
    return ROOT / "figures" if profile == DEFAULT_PROFILE else ROOT / "build" / "figures" / profile


def _check_stem(stem: str) -> str:
    if not isinstance(stem, str) or not _STEM.match(stem):
        raise ValueError(
            f"stem={stem!r}: allowed a file name without directory or extension, "
            "e.g. 'fig01_relaxation'"
        )
    return stem


_KALEIDO = {"started": False}


def png_bytes(fig, scale: float = 1.0) -> bytes:
    """The figure as PNG through kaleido; one browser per process, started at the first call."""
    import kaleido
    import plotly.io as pio

    if not _KALEIDO["started"]:
        # no LaTeX in our figures: no CDN fetch
        kaleido.start_sync_server(silence_warnings=True, mathjax=False)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        _KALEIDO["started"] = True
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The kopts argument is ignored")
        return pio.to_image(fig, format="png", scale=scale)


def save_figure(fig, stem: str, fig_dir) -> list[Path]:
    """Write `<fig_dir>/<stem>.html` and `<stem>.png`; the .html loads plotly.js from
    `<fig_dir>/plotly.min.js` (one shared copy, written when missing or stale), so it works offline.

    Both are rendered before either is written. $DKM_PNG=0 skips the PNG (only for re-runs whose
    PNGs were already produced, as the nbval pass of the tests).
    """
    stem, fig_dir = _check_stem(stem), Path(fig_dir)
    # a fixed div id: regenerating an unchanged figure gives the same .html
    html = fig.to_html(include_plotlyjs="directory", full_html=True, div_id=stem).encode()
    # a re-run whose PNGs were already checked (tests/test_notebooks.py)
    if os.environ.get("DKM_PNG") == "0":
        write_plotlyjs(fig_dir)
        write_atomic(fig_dir / f"{stem}.html", html)
        return [fig_dir / f"{stem}.html"]
    try:
        png = png_bytes(fig)
    except Exception as err:  # any failure of the browser: say which figure and how to fix it
        raise FigureExportError(
            f"PNG export of {stem!r} failed ({type(err).__name__}: {err}). {PNG_HELP} "
            f"Nothing was written for {stem!r}."
        ) from err
    write_plotlyjs(fig_dir)
    paths = [fig_dir / f"{stem}.html", fig_dir / f"{stem}.png"]
    for path, data in zip(paths, (html, png)):
        write_atomic(path, data)
    return paths


PLOTLYJS = "plotly.min.js"


def write_plotlyjs(fig_dir) -> Path:
    """`<fig_dir>/plotly.min.js`: the plotly.js bundled with the installed plotly (the figures'
    offline copy); rewritten only when it differs."""
    from plotly.offline import get_plotlyjs

    path, js = Path(fig_dir) / PLOTLYJS, get_plotlyjs().encode()
    if not path.is_file() or path.read_bytes() != js:
        write_atomic(path, js)
    return path


def save_table(rows: list[dict], stem: str, fig_dir, columns=None) -> list[Path]:
    """Write `<fig_dir>/<stem>.csv` (full precision) and `<stem>.md` (markdown), atomically."""
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
# the paragraphs of a gallery section: {line} is what the file shows, {stem} and {name} its own
_FIGURE_TEXT = ("{line}. Interactive: [{stem}.html]({stem}.html)", "![{stem}]({name})")
_TABLE_TEXT = ("{line}: [{name}]({name}), [{stem}.csv]({stem}.csv)",)


def _sections(paths, known: dict, what: str, paragraphs: tuple[str, ...]) -> list[str]:
    """A gallery section per path (sorted): its heading, then each of `paragraphs` filled in."""
    out = []
    for path in sorted(paths):
        notebook, line = known.get(path.stem, ("?", f"(not a {what} of DESIGN.md's table)"))
        out.append(f"## `{path.stem}` (notebook {notebook})")
        for paragraph in paragraphs:
            out += ["", paragraph.format(line=line, stem=path.stem, name=path.name)]
        out.append("")
    return out


def gallery(fig_dir, profile: str | None = None) -> str:
    """Markdown showing every PNG of `fig_dir` with a line on what it shows, then the tables."""
    fig_dir = Path(fig_dir)
    head = [
        "# Figures",
        "",
        "Regenerated headlessly by `make figures`"
        + (f" (profile `{profile}`)" if profile else "")
        + (
            ": every notebook run with papermill, each figure saved as an interactive `.html` "
            "and a static `.png`."
        ),
        "",
    ]
    body = _sections(fig_dir.glob("*.png"), FIGURES, "figure", _FIGURE_TEXT)
    body += _sections(fig_dir.glob("table*.md"), TABLES, "table", _TABLE_TEXT)
    return "\n".join(head + (body or ["No figure yet: run `make figures`.", ""]))


def write_gallery(fig_dir, profile: str | None = None) -> Path:
    """Write `<fig_dir>/README.md` (atomically) and return its path."""
    path = Path(fig_dir) / "README.md"
    write_atomic(path, gallery(fig_dir, profile).encode())
    return path
