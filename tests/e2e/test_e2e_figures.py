"""The committed .html figures open offline in headless Chromium: plotly.js from the shared
figures/plotly.min.js, every trace drawn, no console error and no network request."""

import json
import re
from pathlib import Path

import pytest

from dkm.viz import files as saving

pytestmark = pytest.mark.e2e

FIGURES = Path(__file__).resolve().parents[2] / "figures"
HTML = sorted(FIGURES.glob("fig*.html"))


def _traces_in_file(path: Path) -> int:
    """The number of traces the file's Plotly.newPlot call holds (read without a browser)."""
    text = path.read_text()
    call = text[text.index("Plotly.newPlot(") :]
    data = call[call.index("[") :]
    return len(json.JSONDecoder().raw_decode(data)[0])


def test_every_committed_figure_is_offline():
    assert [p.stem for p in HTML] == sorted(saving.FIGURES)
    assert (FIGURES / "plotly.min.js").is_file()
    for path in HTML:
        text = path.read_text()
        assert re.findall(r"<script[^>]*src=\"([^\"]+)\"", text) == ["plotly.min.js"], path.name
        assert "cdn.plot.ly" not in text, path.name


@pytest.mark.parametrize("path", HTML, ids=[p.stem for p in HTML])
def test_figure_draws_every_trace_offline(browser, path):
    context = browser.new_context(offline=True)
    page, console, requests = context.new_page(), [], []
    page.on(
        "console", lambda m: console.append(f"{m.type}: {m.text}") if m.type == "error" else None
    )
    page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
    page.on("request", lambda r: requests.append(r.url))
    try:
        page.goto(path.as_uri())
        page.wait_for_function(
            "() => { const d = document.querySelector('.js-plotly-plot');"
            " return d && d._fullData && d.querySelector('.main-svg'); }",
            timeout=30_000,
        )
        drawn = page.evaluate("() => document.querySelector('.js-plotly-plot')._fullData.length")
    finally:
        context.close()
    assert drawn == _traces_in_file(path) > 0
    assert not console, console
    assert all(url.startswith("file://") for url in requests), requests
