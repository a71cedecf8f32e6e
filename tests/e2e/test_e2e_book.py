"""`make book` offline in headless Chromium: the contents page in teaching order, every page loads
with the network off, its plotly figures drawn, its maths typeset, each slider replaced by a note,
no console error and no request off disk; the docs pages beside the notebooks, linked from the
contents page and to each other."""

import json

import pytest

from dkm.app import book
from dkm.app import runner as notebooks

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smoke_book(tmp_path_factory, smoke_cache):
    """The book of the five notebooks executed on the smoke profile (the shared smoke run cache)."""
    tmp = tmp_path_factory.mktemp("book")
    with pytest.MonkeyPatch.context() as mp:
        for key, value in smoke_cache.items():
            mp.setenv(key, value)
        executed, quiet = tmp / "executed", lambda _: None
        notebooks.run_all("smoke", out_dir=executed, fig_dir=tmp / "fig", log=quiet)
    index = book.build_book("smoke", executed=tmp / "executed", out_dir=tmp / "book")
    return {"index": index, "executed": tmp / "executed"}


def _outputs(path, mime: str) -> int:
    cells = json.loads(path.read_text())["cells"]
    return sum(mime in o.get("data", {}) for c in cells for o in c.get("outputs", []))


FIGURES = "[...document.querySelectorAll('[id^=dkm-fig-]')]"
DRAWN = (
    f"() => {FIGURES}.every(d => d._fullData && d.querySelector('.main-svg'))"
    " && window.MathJax && MathJax.startup && MathJax.startup.document"
)
STATE = f"""() => ({{
  figures: {FIGURES}.map(d => d._fullData.length),
  maths: document.querySelectorAll('mjx-container').length,
  notes: document.querySelectorAll('.jp-OutputArea .dkm-note').length,
  links: [...document.querySelectorAll('a')].map(a => a.getAttribute('href')),
  contents: [...document.querySelectorAll('li a')].map(a => a.getAttribute('href')),
  tables: document.querySelectorAll('table').length,
  text: document.body.innerText,
}})"""
DOC_READY = "() => document.readyState === 'complete'"


def _open(browser, path, ready: str | None = None):
    """(page state once `ready` holds, console errors, requested URLs) of one page, offline."""
    context = browser.new_context(offline=True)
    page, console, requests = context.new_page(), [], []
    page.on("console", lambda m: console.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(path.as_uri())
        if ready:
            page.wait_for_function(ready, timeout=60_000)
        if ready == DRAWN:
            page.evaluate("() => MathJax.startup.promise")
        state = page.evaluate(STATE)
    finally:
        context.close()
    return state, console, requests


def test_contents_page_lists_the_notebooks_in_teaching_order(smoke_book, browser):
    state, console, requests = _open(browser, smoke_book["index"])
    docs = [f"{page.stem}.html" for page in book.docs_pages()]
    assert state["contents"] == [f"{name}.html" for name in notebooks.NOTEBOOKS] + docs
    assert not console and all(url.startswith("file://") for url in requests)


def test_a_docs_page_works_offline(smoke_book, browser):
    """docs/method.md as a page of the book: its table drawn, its links to the other docs pages and
    to the notebooks point at their pages, nothing requested off the disk."""
    site = smoke_book["index"].parent
    state, console, requests = _open(browser, site / "method.html", DOC_READY)
    assert state["tables"] >= 1 and "rank(W)" in state["text"]
    assert {"index.html", "layout.html", "01_spectral_relaxation.html"} <= set(state["links"])
    assert all(
        (site / link.split("#")[0]).is_file() for link in state["links"] if link and link[0] != "#"
    )
    assert not console, console
    assert all(url.startswith("file://") for url in requests), requests


@pytest.mark.parametrize("name", notebooks.NOTEBOOKS)
def test_every_page_works_offline(smoke_book, browser, name):
    executed = smoke_book["executed"] / f"{name}.ipynb"
    state, console, requests = _open(browser, smoke_book["index"].parent / f"{name}.html", DRAWN)
    assert len(state["figures"]) == _outputs(executed, book.PLOTLY_MIME) > 0
    assert all(n > 0 for n in state["figures"]), state["figures"]
    assert state["notes"] == _outputs(executed, book.WIDGET_MIME) > 0  # every slider, a note
    assert "index.html" in state["links"] and "make lab" in state["text"]
    if name in ("01_spectral_relaxation", "02_retraining"):
        assert state["maths"] >= 1  # the $$…$$ displays, typeset by the local MathJax
    assert "$$" not in state["text"]
    assert not console, console
    assert all(url.startswith("file://") for url in requests), requests
