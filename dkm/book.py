"""`make book`: the executed notebooks of a profile as a static HTML site that works offline.

nbconvert (its JupyterLab template) turns each executed notebook of `build/notebooks/<profile>/`
(what `make figures` leaves there) into one page; a contents page lists them in teaching order.
Jupyter Book 2 needs the web to build, nbconvert does not. Everything a page loads sits beside it:

- plotly figures: the notebook's plotly outputs become a div and a `Plotly.newPlot` call, drawn by
  one shared `plotly.min.js` (the figures' own copy, as in `figures/`);
- maths: MathJax 3 (`mathjax/tex-svg.js`, from the `django-static-mathjax` wheel of the `book`
  extra; no Django needed) typesets `$…$` and `$$…$$`;
- sliders: ipywidgets need a running kernel, so each live view is replaced by a note that points to
  `make lab`, and the widget state papermill saved is dropped (it would load a widget manager from
  the web);
- nothing is fetched from the network: the template leaves out require.js, mermaid and the widget
  manager.
"""

from __future__ import annotations

import copy
import html
import shutil
from importlib import resources
from pathlib import Path

from .notebooks import NOTEBOOKS
from .saving import ROOT, write_plotlyjs

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
MATHJAX = "mathjax/tex-svg.js"
KERNEL_NOTE = (
    "This is a live slider: it needs a running kernel, so the static book shows none. Open the "
    "notebook with <code>make lab</code> to use it."
)
# the lab template without anything loaded from the web; MathJax 3 and plotly.js from beside it
TEMPLATE = """{%- extends 'lab/index.html.j2' -%}
{%- block html_head_js -%}{%- endblock html_head_js -%}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{%- block html_head_js_mermaidjs -%}{%- endblock html_head_js_mermaidjs -%}
{%- block html_head_js_mathjax -%}
<script>window.MathJax = {tex: {inlineMath: [["$", "$"], ["\\\\(", "\\\\)"]],
  displayMath: [["$$", "$$"], ["\\\\[", "\\\\]"]], processEscapes: true},
  svg: {fontCache: "global"}};
</script>
<script src="{{ resources.dkm_mathjax }}"></script>
<script src="plotly.min.js"></script>
<style>.dkm-nav{font:14px sans-serif;margin:1em 0}.dkm-note{border-left:4px solid #1f77b4;
  background:#eef4fb;padding:.6em 1em;margin:.5em 0;font:14px sans-serif}</style>
{%- endblock html_head_js_mathjax -%}
{%- block body_header -%}
{{ super() }}
<nav class="dkm-nav">{{ resources.dkm_nav }}</nav>
<div class="dkm-note">{{ resources.dkm_banner }}</div>
{%- endblock body_header -%}
"""


class BookError(RuntimeError):
    """What is missing to build the book (names the file and the command that makes it)."""


def mathjax_file() -> Path:
    """MathJax 3's self-contained SVG build, from the django-static-mathjax wheel."""
    try:
        path = resources.files("mathjax") / "static" / "mathjax" / "es5" / "tex-svg.js"
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise BookError(
            "MathJax is not installed: pip install -e '.[book]' (django-static-mathjax)"
        )
    return Path(str(path))


def static_outputs(nb: dict) -> dict:
    """A copy of an executed notebook as the book shows it: plotly outputs as HTML, sliders as a
    note, no saved widget state."""
    nb = copy.deepcopy(nb)
    nb["metadata"].pop("widgets", None)
    count = 0
    for cell in nb["cells"]:
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if WIDGET_MIME in data:
                out["data"] = {"text/html": f'<div class="dkm-note">{KERNEL_NOTE}</div>'}
            elif PLOTLY_MIME in data:
                count += 1
                out["data"] = {"text/html": _plotly_html(data[PLOTLY_MIME], f"dkm-fig-{count}")}
    return nb


def _plotly_html(figure: dict, div_id: str) -> str:
    """A div and the Plotly.newPlot call that draws `figure` into it (plotly.js loaded once)."""
    import plotly.io as pio

    return pio.to_html(figure, include_plotlyjs=False, full_html=False, div_id=div_id)


def _title(nb: dict, name: str) -> str:
    """The notebook's first heading ('# 01 — …'), else its name."""
    for cell in nb["cells"]:
        if cell["cell_type"] == "markdown":
            first = "".join(cell["source"]).strip().splitlines()[0]
            return first.lstrip("# ").strip() if first.startswith("#") else name
    return name


def _nav(names: list[str], i: int) -> str:
    """Contents · previous · next links of page i."""
    links = ['<a href="index.html">contents</a>']
    if i > 0:
        links.append(f'<a href="{names[i - 1]}.html">← {names[i - 1]}</a>')
    if i + 1 < len(names):
        links.append(f'<a href="{names[i + 1]}.html">{names[i + 1]} →</a>')
    return " · ".join(links)


def _exporter():
    import jinja2
    from nbconvert import HTMLExporter

    return HTMLExporter(
        extra_loaders=[jinja2.DictLoader({"dkm_book.html.j2": TEMPLATE})],
        template_file="dkm_book.html.j2",
        exclude_anchor_links=True,
    )


def executed_dir(profile: str) -> Path:
    """Where `make figures` leaves the executed notebooks of a profile."""
    return ROOT / "build" / "notebooks" / profile


def build_book(profile: str = "cpu", executed=None, out_dir=None) -> Path:
    """Write the book of a profile's executed notebooks into `out_dir` (default build/book/);
    return its contents page. BookError when an executed notebook is missing."""
    executed = Path(executed) if executed else executed_dir(profile)
    out = Path(out_dir) if out_dir else ROOT / "build" / "book"
    missing = [n for n in NOTEBOOKS if not (executed / f"{n}.ipynb").is_file()]
    if missing:
        raise BookError(
            f"no executed notebook {executed / (missing[0] + '.ipynb')}: run `make figures` "
            f"(python -m dkm figures --profile {profile}) first"
        )
    mathjax = mathjax_file()
    out.mkdir(parents=True, exist_ok=True)
    (out / "mathjax").mkdir(exist_ok=True)
    shutil.copyfile(mathjax, out / MATHJAX)
    write_plotlyjs(out)
    import nbformat

    exporter, names, titles = _exporter(), list(NOTEBOOKS), {}
    for i, name in enumerate(names):
        nb = nbformat.read(executed / f"{name}.ipynb", as_version=4)
        titles[name] = _title(nb, name)
        _write_page(exporter, static_outputs(nb), out / f"{name}.html", _nav(names, i), profile)
    index = out / "index.html"
    index.write_text(_contents(titles, profile))
    return index


def _write_page(exporter, nb, path: Path, nav: str, profile: str) -> None:
    banner = (
        f"Executed on the <code>{html.escape(profile)}</code> profile by "
        "<code>make figures</code>; the figures are interactive (zoom, hover). Sliders need a "
        "kernel: <code>make lab</code>."
    )
    resources = {"dkm_nav": nav, "dkm_banner": banner, "dkm_mathjax": MATHJAX}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    path.write_text(body)


def _contents(titles: dict, profile: str) -> str:
    """The contents page: the notebooks in teaching order."""
    items = "\n".join(
        f'<li><a href="{name}.html">{html.escape(title)}</a></li>' for name, title in titles.items()
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Deep k-Means, step by step</title>
<style>body{{font:16px/1.5 sans-serif;max-width:50em;margin:2em auto;padding:0 1em}}</style>
</head><body>
<h1>Deep k-Means, step by step</h1>
<p>The five notebooks of <code>deep-kmeans</code>, executed on the
<code>{html.escape(profile)}</code> profile, in the order they teach the method. The figures are
interactive and everything here works offline; the sliders need a running kernel
(<code>make lab</code>).</p>
<ol>
{items}
</ol>
</body></html>
"""
