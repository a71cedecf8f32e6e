"""`make book`: the executed notebooks of a profile as a static HTML site that works offline.

nbconvert (its JupyterLab template) turns each executed notebook of `build/notebooks/<profile>/`
(what `make figures` leaves there) into one page; a contents page lists them in teaching order.
Jupyter Book 2 needs the web to build, nbconvert does not. Everything a page loads sits beside it:

- plotly figures: the notebook's plotly outputs become a div and a `Plotly.newPlot` call, drawn by
  one shared `plotly.min.js` (the figures' own copy, as in `figures/`);
- maths: MathJax 3 (`mathjax/tex-svg.js`, from the `django-static-mathjax` wheel, a dependency;
  no Django needed) typesets `$…$` and `$$…$$`;
- sliders: ipywidgets need a running kernel, so each live view is replaced by a note that points to
  `make lab`, and the widget state papermill saved is dropped (it would load a widget manager from
  the web);
- nothing is fetched from the network: the template leaves out require.js, mermaid and the widget
  manager;
- the manual: every `docs/*.md` page becomes a page beside the notebooks (mistune, the markdown
  renderer nbconvert itself uses), listed on the contents page. Its links to another docs page or
  to a notebook point at that page of the book; a link to any other file of the repository points
  at the file, relative to the book.
"""

from __future__ import annotations

import copy
import html
import os
import re
from importlib import resources
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from dkm.app.runner import NOTEBOOKS
from dkm.io import UnsafePathError, read_text, write_atomic
from dkm.viz.files import ROOT, write_plotlyjs

PLOTLY_MIME = "application/vnd.plotly.v1+json"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
MATHJAX = "mathjax/tex-svg.js"
DOCS_DIR = ROOT / "docs"
# the manual's reading order on the contents page; a page not named here follows, by name
DOCS_ORDER = ("usage", "method", "pipeline", "evidence", "reproducibility", "energy", "export",
              "scaling", "benchmarks", "layout", "glossary")  # fmt: skip
PAGE_STYLE = (
    "body{font:16px/1.5 sans-serif;max-width:50em;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;font-size:14px}th,td{border:1px solid #ccc;padding:.2em .5em}"
    "code{background:#f4f4f4}pre{background:#f4f4f4;padding:.5em;overflow-x:auto}"
    "img{max-width:100%}.dkm-nav{font:14px sans-serif;margin:1em 0}"
)
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
            "MathJax is not installed: pip install django-static-mathjax (a dependency of this "
            "package)"
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


def build_book(profile: str = "cpu", executed=None, out_dir=None, docs_dir=None) -> Path:
    """Write the book of a profile's executed notebooks and of the docs pages into `out_dir`
    (default build/book/); return its contents page. BookError when an executed notebook is
    missing."""
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
    if (out / "mathjax").is_symlink():  # its files would land wherever it points
        raise UnsafePathError(f"{out / 'mathjax'} is a symlink: refusing to write into it")
    write_atomic(out / MATHJAX, Path(mathjax).read_bytes())  # never through a link or device
    write_plotlyjs(out)
    import nbformat

    exporter, names, titles = _exporter(), list(NOTEBOOKS), {}
    for i, name in enumerate(names):
        nb = nbformat.reads(read_text(executed / f"{name}.ipynb"), as_version=4)
        titles[name] = _title(nb, name)
        _write_page(exporter, static_outputs(nb), out / f"{name}.html", _nav(names, i), profile)
    docs = build_docs(out, docs_dir)
    index = out / "index.html"
    write_atomic(index, _contents(titles, profile, docs))
    return index


def _write_page(exporter, nb, path: Path, nav: str, profile: str) -> None:
    banner = (
        f"Executed on the <code>{html.escape(profile)}</code> profile by "
        "<code>make figures</code>; the figures are interactive (zoom, hover). Sliders need a "
        "kernel: <code>make lab</code>."
    )
    resources = {"dkm_nav": nav, "dkm_banner": banner, "dkm_mathjax": MATHJAX}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    write_atomic(path, body)


def _contents(titles: dict, profile: str, docs: dict | None = None) -> str:
    """The contents page: the notebooks in teaching order, then the docs pages."""
    items, manual = (
        "\n".join(f'<li><a href="{n}.html">{html.escape(t)}</a></li>' for n, t in pages.items())
        for pages in (titles, docs or {})
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Deep k-Means, step by step</title>
<style>{PAGE_STYLE}</style>
</head><body>
<h1>Deep k-Means, step by step</h1>
<p>The five notebooks of <code>deep-kmeans</code>, executed on the
<code>{html.escape(profile)}</code> profile, in the order they teach the method. The figures are
interactive and everything here works offline; the sliders need a running kernel
(<code>make lab</code>).</p>
<ol class="dkm-notebooks">
{items}
</ol>
<h2>The manual</h2>
<p>The pages of <code>docs/</code>: how to run it, the method, the evidence and the code.</p>
<ul class="dkm-docs">
{manual}
</ul>
</body></html>
"""


# ---------------------------------------------------------------- the docs pages

DOC_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>{style}</style>
</head><body>
<nav class="dkm-nav">{nav}</nav>
{body}
</body></html>
"""


def docs_pages(docs_dir=None) -> list[Path]:
    """The docs/*.md pages in the book's order (DOCS_ORDER, then by name). BookError when a
    page's name is taken by the contents page or a notebook."""
    docs_dir = Path(docs_dir) if docs_dir else DOCS_DIR
    rank = {name: i for i, name in enumerate(DOCS_ORDER)}
    pages = sorted(docs_dir.glob("*.md"), key=lambda p: (rank.get(p.stem, len(rank)), p.stem))
    for page in pages:
        if page.stem == "index" or page.stem in NOTEBOOKS:
            raise BookError(f"{page}: its page would replace {page.stem}.html; rename it")
    return pages


def site_href(url: str, src_dir: Path, out_dir: Path, docs_dir: Path) -> str:
    """Where a link of a markdown file in `src_dir` points in the book written to `out_dir`: a docs
    page or a notebook -> its page of the book; another file -> that file, relative to the book.
    Web links, anchors of the same page and absolute paths are kept."""
    if not url or url.startswith(("#", "/")) or urlsplit(url).scheme:
        return url
    path, sep, fragment = url.partition("#")
    target = (Path(src_dir) / unquote(path)).resolve()
    is_doc = target.suffix == ".md" and target.parent == Path(docs_dir).resolve()
    if is_doc or (target.suffix == ".ipynb" and target.stem in NOTEBOOKS):
        page = f"{target.stem}.html"
    else:
        page = quote(os.path.relpath(target, Path(out_dir).resolve()))
    return page + sep + fragment


def heading_id(text: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    plain = html.unescape(re.sub(r"<[^>]+>", "", text)).strip().lower()
    return re.sub(r"[^\w\- ]", "", plain).replace(" ", "-")


def _markdown(docs_dir: Path, out_dir: Path):
    """mistune, its links and images where `site_href` says, its headings with GitHub's ids."""
    import mistune

    class SiteRenderer(mistune.HTMLRenderer):
        def link(self, text, url, title=None):
            return super().link(text, site_href(url, docs_dir, out_dir, docs_dir), title)

        def image(self, text, url, title=None):
            return super().image(text, site_href(url, docs_dir, out_dir, docs_dir), title)

        def heading(self, text, level, **attrs):
            return super().heading(text, level, id=heading_id(text))

    return mistune.create_markdown(renderer=SiteRenderer(), plugins=["table", "url"])


def _doc_title(text: str, stem: str) -> str:
    """The page's first '# ' heading, else its name."""
    first = next((ln for ln in text.splitlines() if ln.startswith("# ")), None)
    return first[2:].strip() if first else stem


def build_docs(out_dir, docs_dir=None) -> dict:
    """Render every docs page into `out_dir/<name>.html` (atomically); return {name: title} in the
    book's order."""
    docs_dir = Path(docs_dir) if docs_dir else DOCS_DIR
    out = Path(out_dir)
    pages = docs_pages(docs_dir)
    render, names = _markdown(docs_dir, out), [p.stem for p in pages]
    titles = {}
    for i, page in enumerate(pages):
        text = page.read_text(encoding="utf-8")
        titles[page.stem] = _doc_title(text, page.stem)
        body = DOC_PAGE.format(
            title=html.escape(titles[page.stem]),
            style=PAGE_STYLE,
            nav=_nav(names, i),
            body=render(text),
        )
        write_atomic(out / f"{page.stem}.html", body)
    return titles
