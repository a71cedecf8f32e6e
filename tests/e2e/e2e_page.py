"""Drive one notebook in JupyterLab through Playwright: open, run all, move every slider, watch the
figures.

Everything is read from the live page (e2e_js): cells and outputs from the JupyterLab application,
figures from the `.js-plotly-plot` elements' `data` and `layout` (what plotly.js draws), kernel
errors from the kernel's websocket messages. Timeouts are stated below; each failure raises a
subclass of AssertionError whose message says what was seen.

Answer times: from the key press that moves a slider (for a slider with a button: from the click)
to the first poll that sees a watched figure's new data, so up to ANSWER_POLL_S plus one read of
the figures late. Each slider is moved one step and then back; the way back returns to a state the
notebook has already computed (its cached runs exist), and for a button slider (live re-training)
only that answer is held to ANSWER_BOUND_S, the first one being a new training run.
"""

from __future__ import annotations

import re
import time

import e2e_js as js

OPEN_TIMEOUT_S = 90.0  # page load, kernel start
RUN_ALL_TIMEOUT_S = 150.0  # one notebook's "Run All Cells" with the smoke profile
RENDER_TIMEOUT_S = 30.0  # every widget and figure drawn after the run
SETTLE_S = 1.5  # figures unchanged for this long count as settled
SLIDER_TIMEOUT_S = 30.0  # a moved slider must change a figure within this time ...
BUTTON_GRACE_S = (
    3.0  # ... or, with a button beside it, within this time, else the button is clicked
)
BUTTON_TIMEOUT_S = 90.0  # and the figure must change within this time after the click
POLL_S = 0.25
ANSWER_POLL_S = 0.1  # while waiting for a slider's answer
# a generous bound on an answer on a loaded 2-core machine; the goal (README) is 2 s
ANSWER_BOUND_S = 10.0

SLIDERS = ".jp-Notebook .widget-slider"


class NotebookError(AssertionError):
    """A cell raised, printed a traceback, or the run did not finish."""


class WidgetError(AssertionError):
    """A widget or figure was never drawn, or there is no slider to move."""


class FigureDidNotChange(AssertionError):
    """A slider moved but no plotly figure's data changed within the timeout."""


class SlowAnswer(AssertionError):
    """A figure changed, but later than ANSWER_BOUND_S after its slider moved."""


def wait_until(predicate, timeout: float, what: str, exc=AssertionError):
    """Poll `predicate()` until it returns a truthy value;
    raise exc(what(last)) after `timeout` s."""
    deadline, last = time.monotonic() + timeout, None
    while True:
        last = predicate()
        if last:
            return last
        if time.monotonic() > deadline:
            raise exc(what(last) if callable(what) else what)
        time.sleep(POLL_S)


def load_lab(page, server, timeout: float = OPEN_TIMEOUT_S) -> None:
    """Load JupyterLab (a fresh workspace) in `page` and wait until the application has restored."""
    page.goto(f"{server.url}/lab?token={server.token}&reset")
    page.wait_for_function(
        "() => window.jupyterapp && window.jupyterapp.shell", timeout=timeout * 1000
    )
    page.evaluate("() => window.jupyterapp.restored")


def open_notebook(page, server, path: str, timeout: float = OPEN_TIMEOUT_S) -> None:
    """Open `path` (relative to the server root) in the loaded JupyterLab and wait for an idle
    kernel."""
    if not page.evaluate("() => !!window.jupyterapp"):
        load_lab(page, server, timeout)
    page.evaluate(js.OPEN, path)
    page.wait_for_function(js.PANEL, arg=path, timeout=timeout * 1000, polling=500)


def close_all(page) -> None:
    """Close every open document without a save dialog (the copies are throw-away)."""
    page.evaluate(js.CLOSE_ALL)


def kernel_errors(page) -> list[str]:
    """Tracebacks the kernel sent since the page opened (cells and widget callbacks alike)."""
    return page.evaluate("() => window.__e2e ? window.__e2e.kernelErrors : []")


def _describe(cells: list[dict]) -> str:
    return "\n".join(
        f"  cell {c['index']}: [{c['count'] or ' '}] {c['source'][:70]}" for c in cells
    )


def run_all(page, timeout: float = RUN_ALL_TIMEOUT_S) -> list[dict]:
    """Run All Cells; wait for an idle kernel; raise NotebookError on a cell error or an unfinished
    run."""
    page.evaluate(js.RUN_ALL)

    def finished():
        state = page.evaluate(js.CELLS)
        busy = (
            state["runAll"] == "running"
            or state["kernel"] != "idle"
            or any(c["running"] for c in state["cells"])
        )
        return None if busy else state

    def stuck(_):
        state = page.evaluate(js.CELLS)
        running = [c for c in state["cells"] if c["running"]]
        return (
            f"Run All did not finish within {timeout:.0f} s (kernel {state['kernel']}); "
            f"running:\n{_describe(running)}"
        )

    state = wait_until(finished, timeout, stuck, NotebookError)
    failed = [c for c in state["cells"] if c["errors"]]
    if failed:
        c = failed[0]
        raise NotebookError(f"cell {c['index']} ({c['source'][:70]!r}) failed:\n{c['errors'][0]}")
    unrun = [c for c in state["cells"] if c["count"] is None]
    if state["runAll"] != "done" or unrun:
        raise NotebookError(
            f"Run All ended '{state['runAll']}' with cells not run:\n{_describe(unrun)}"
        )
    return state["cells"]


def wait_rendered(page, timeout: float = RENDER_TIMEOUT_S) -> dict:
    """Wait until every widget view and figure is drawn and the figures stop changing; their
    states."""

    def drawn():
        r = page.evaluate(js.RENDERING)
        if r["failed"]:
            raise WidgetError("a widget failed to display:\n" + "\n".join(r["failed"]))
        return r if r["pending"] == 0 and r["undrawn"] == 0 else None

    wait_until(
        drawn,
        timeout,
        lambda _: (
            f"widgets or figures not drawn within {timeout:.0f} s: "
            f"{page.evaluate(js.RENDERING)} (front-end extensions installed?)"
        ),
        WidgetError,
    )
    return settled_figures(page, timeout)


def settled_figures(page, timeout: float = RENDER_TIMEOUT_S) -> dict:
    """Figure states once they have not changed for SETTLE_S seconds."""
    deadline = time.monotonic() + timeout
    last, since = page.evaluate(js.FIGURES), time.monotonic()
    while time.monotonic() - since < SETTLE_S:
        if time.monotonic() > deadline:
            raise WidgetError(f"figures still changing after {timeout:.0f} s")
        time.sleep(POLL_S)
        now = page.evaluate(js.FIGURES)
        if now != last:
            last, since = now, time.monotonic()
    return last


def sliders(page) -> list:
    """Locators of every enabled slider in the notebook (ipywidgets 8 noUiSlider handles)."""
    found = page.locator(SLIDERS)
    return [
        found.nth(i)
        for i in range(found.count())
        if found.nth(i).locator(".noUi-handle[disabled], .noUi-target[disabled]").count() == 0
    ]


def _position(handle) -> float:
    return float(handle.get_attribute("aria-valuenow"))


def _keys(handle) -> tuple[str, str]:
    """(the key that moves the handle up, the one that moves it down)."""
    if handle.get_attribute("aria-orientation") == "vertical":
        return "ArrowUp", "ArrowDown"
    return "ArrowRight", "ArrowLeft"


def move_slider(slider, back: str | None = None) -> tuple[str, str, str, float]:
    """Move a slider one step with the keyboard (right, or left at the maximum; back: the other way
    than key `back`); its readout before and after, the key, and time.monotonic() of the press."""
    handle, readout = slider.locator(".noUi-handle").first, slider.locator(".widget-readout").first
    handle.scroll_into_view_if_needed()
    old, shown = _position(handle), readout.text_content()
    up, down = _keys(handle)
    if back is not None:
        key = down if back == up else up
    else:
        key = down if old >= float(handle.get_attribute("aria-valuemax")) else up
    handle.focus()
    pressed = time.monotonic()
    handle.press(key)
    wait_until(
        lambda: _position(handle) != old,
        5.0,
        f"slider did not move from {shown} on {key}",
        WidgetError,
    )
    return shown, readout.text_content(), key, pressed


def _data(state: str | None) -> str | None:
    return state.split(" layout ")[0] if state else None


def _changed(page, before: dict, watched: str) -> list[str]:
    """Watched figures whose data (traces) differ from `before`: a new title alone does not
    count."""
    now = page.evaluate(js.FIGURES)
    return [k for k, v in now.items() if k.startswith(watched) and _data(before.get(k)) != _data(v)]


def check_slider(
    page, slider, timeout: float = SLIDER_TIMEOUT_S, bound: float | None = ANSWER_BOUND_S
) -> dict:
    """Move `slider` one step and back; assert that a plotly figure's data changes each time, within
    `bound` s (None: not checked); what moved, what changed, and the answer times (module
    docstring)."""
    label = slider.locator(".widget-label").first.text_content() or "(no label)"
    cell = slider.evaluate(js.WHERE)["cell"]
    handle = slider.locator(".noUi-handle").first
    if handle.get_attribute("aria-valuemin") == handle.get_attribute("aria-valuemax"):
        return {"cell": cell, "slider": label, "skipped": "only one position"}
    button = slider.evaluate_handle(js.BUTTON_NEAR).as_element()
    first = _answer(page, slider, (cell, label), button, timeout)
    back = _answer(page, slider, (cell, label), button, timeout, back=first)
    held = [back] if first["clicked"] else [first, back]  # a first click re-trains: not held
    record = {
        "cell": cell, "slider": label, "from": first["from"], "to": first["to"],
        "changed": first["changed"], "button": button is not None,
        "seconds": first["seconds"], "back_seconds": back["seconds"],
        "kernel_s": first["kernel_s"], "back_kernel_s": back["kernel_s"],
        "answer_s": max(a["seconds"] for a in held),
    }  # fmt: skip
    if bound is not None and slow_answer(record, bound):
        raise SlowAnswer(slow_answer(record, bound))
    return record


def slow_answer(record: dict, bound: float = ANSWER_BOUND_S) -> str | None:
    """What was too slow in a `check_slider` record (its `answer_s` above `bound`), or None."""
    if "skipped" in record or record["answer_s"] <= bound:
        return None
    return (
        f"cell {record['cell']}: slider {record['slider']!r} {record['from']} -> {record['to']} "
        f"and back: a figure changed {record['answer_s']:.1f} s after the "
        f"{'click' if record['button'] else 'move'}, allowed {bound:g} s (seconds "
        f"{record['seconds']}, back {record['back_seconds']}; the kernel's: "
        f"{record['kernel_s']}, {record['back_kernel_s']})"
    )


def _answer(page, slider, where: tuple, button, timeout: float, back: dict | None = None) -> dict:
    """Move `slider` (the other way than `back` did, when given) and wait for a watched figure to
    change, clicking `button` when the move alone does not do it; raise if it never does."""
    cell, label = where
    before, errors_before = settled_figures(page), len(kernel_errors(page))
    # the figure it drives: the one(s) in the slider's own output when there is one, else any
    watched = f"cell {cell} " if any(k.startswith(f"cell {cell} ") for k in before) else "cell "
    old, new, key, start = move_slider(slider, None if back is None else back["key"])
    changed, clicked = [], back is not None and back["clicked"]
    if not clicked:
        grace = BUTTON_GRACE_S if button else timeout
        changed = _wait_changed(page, before, watched, errors_before, grace)
        clicked = not changed and button is not None
    if clicked:
        start = time.monotonic()
        button.click()
        changed = _wait_changed(page, before, watched, errors_before, BUTTON_TIMEOUT_S)
    seconds = time.monotonic() - start
    new_errors = kernel_errors(page)[errors_before:]
    if new_errors:
        raise NotebookError(
            f"cell {cell}: slider {label!r} {old} -> {new}: the kernel raised:\n{new_errors[0]}"
        )
    if not changed:
        waited = (
            f"{BUTTON_GRACE_S:.0f} s, then {BUTTON_TIMEOUT_S:.0f} s after clicking its button"
            if button
            else f"{timeout:.0f} s"
        )
        raise FigureDidNotChange(
            f"cell {cell}: slider {label!r} moved {old} -> {new} but "
            f"{_unchanged(page, slider, before, watched)} within {waited}"
        )
    return {"from": old, "to": new, "key": key, "changed": changed, "clicked": clicked,
            "seconds": round(seconds, 2), "kernel_s": _kernel_seconds(slider)}  # fmt: skip


def _kernel_seconds(slider, timeout: float = 5.0) -> float | None:
    """The time `dkm.viz.sliders` reports under the controls ("answered in 0.3 s"); None without
    one."""
    deadline = time.monotonic() + timeout
    while True:
        notes = slider.evaluate(js.WHERE)["notes"]
        found = re.search(r"answered in ([0-9.]+) s", notes)
        if found or "computing" not in notes or time.monotonic() > deadline:
            return float(found.group(1)) if found else None
        time.sleep(ANSWER_POLL_S)


def _unchanged(page, slider, before: dict, watched: str) -> str:
    """What did not change, what changed anyway (layout only), and what the slider's output says."""
    figures, now = [k for k in before if k.startswith(watched)], page.evaluate(js.FIGURES)
    layout_only = [k for k in figures if before[k] != now.get(k)]
    return (
        f"the data of none of the {len(figures)} figures {figures} changed "
        f"(layout only: {layout_only}; "
        f"the output reads: {slider.evaluate(js.WHERE)['notes']!r})"
    )


def _wait_changed(
    page, before: dict, watched: str, errors_before: int, timeout: float
) -> list[str]:
    """Watched figures changed since `before`; [] after `timeout` s or as soon as the kernel reports
    an error."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(kernel_errors(page)) == errors_before:
        changed = _changed(page, before, watched)
        if changed:
            return changed
        time.sleep(ANSWER_POLL_S)
    return []


def check_notebook(page, server, path: str, bound: float = ANSWER_BOUND_S) -> dict:
    """Open, run all, then move each slider and check that a figure follows; records, seconds per
    step, and the answers slower than `bound` (`slow`: not raised, the caller records them)."""
    seconds, start = {}, time.monotonic()

    def lap(step):
        nonlocal start
        seconds[step], start = round(time.monotonic() - start, 1), time.monotonic()

    open_notebook(page, server, path)
    lap("open")
    run_all(page)
    lap("run all")
    wait_rendered(page)
    found = sliders(page)
    if not found:
        raise WidgetError(f"{path}: no slider found in the rendered notebook ({SLIDERS})")
    lap("render")
    records = [check_slider(page, s, bound=None) for s in found]
    if all("skipped" in r for r in records):
        raise WidgetError(f"{path}: no slider can move: {records}")
    lap("sliders")
    slow = [m for m in (slow_answer(r, bound) for r in records) if m]
    return {"sliders": records, "seconds": seconds, "slow": slow}
