"""The notebooks' sliders: live views that rebuild a figure when a control moves.

The views are ipywidgets controls above a plotly FigureWidget; `slider`, `buttons` and `menu` make
the controls. `live_figure(build, controls)` is the one slider helper: it shows `build(**values)`
at once (the default state, so a papermill run never waits for a user), and rebuilds it when a
control moves — or when a button is clicked, for answers that take seconds (live re-training).
What the sliders compute is in dkm.viz.figdata; `live_retrain` is the live λ slider's computation;
`precompute` builds every answer of a slider up front, where each takes seconds the first time.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import time

from dkm.experiments import pipeline as pl
from dkm.experiments.cache import run_history
from dkm.experiments.planning import plan_for
from dkm.viz.figdata import curves, layer_kmeans_errors


# ---------------------------------------------------------------- the controls
def slider(description: str, options, value=None):
    """A slider over `options`: an IntSlider over a range of step 1, else a SelectionSlider
    (options may be (label, value) pairs); `value` None: the first option."""
    import ipywidgets as W

    if isinstance(options, range) and options.step == 1:
        first = options.start if value is None else value
        return W.IntSlider(value=first, min=options.start, max=options.stop - 1,
                           description=description)  # fmt: skip
    chosen = {} if value is None else {"value": value}
    return W.SelectionSlider(options=list(options), description=description, **chosen)


def buttons(description: str, options):
    """Toggle buttons over `options`, the first one selected."""
    import ipywidgets as W

    return W.ToggleButtons(options=list(options), description=description)


def menu(description: str, options, value=None):
    """A dropdown over `options` (or (label, value) pairs); `value` None: the first option."""
    import ipywidgets as W

    chosen = {} if value is None else {"value": value}
    return W.Dropdown(options=list(options), description=description, **chosen)


# ---------------------------------------------------------------- the slider helper
def control_values(controls: dict) -> dict:
    """{name: widget.value} of the controls."""
    return {name: widget.value for name, widget in controls.items()}


def _replace(view, new) -> None:
    """Swap the traces and the layout of a FigureWidget for those of the figure `new`."""
    with view.batch_update():
        view.data = []
        view.add_traces(new.data)
        view.layout = new.layout


def _rebuild(build, controls: dict, view, status, _event=None) -> None:
    """Rebuild the figure from the controls' values; a failure is shown in `status`, figure kept."""
    started = time.perf_counter()
    status.value = "computing…"
    try:
        new = build(**control_values(controls))
    except Exception as err:  # shown to the user, never swallowed
        status.value = f"<b>error</b>: {html.escape(f'{type(err).__name__}: {err}')}"
        return
    _replace(view, new)
    status.value = f"answered in {time.perf_counter() - started:.1f} s"


def precompute(build, name: str, options, log=print) -> dict:
    """{option: build(**{name: option})} for every option of a slider, computed now.

    For a slider whose answers take seconds the first time (sharing and evaluating nets) and are
    read from the run cache after: a move then swaps figures already built. Says what it computed
    (an option computed for more than a second gets its own line as it finishes)."""
    started, answers = time.perf_counter(), {}
    for option in options:
        begun = time.perf_counter()
        answers[option] = build(**{name: option})
        took = time.perf_counter() - begun
        if took > 1.0:
            log(f"{name} = {option}: computed in {took:.1f} s")
    took = time.perf_counter() - started
    log(f"{len(answers)} answers of the {name} slider ready in {took:.1f} s")
    return answers


def live_figure(build, controls: dict, button: str | None = None, initial=None):
    """Controls above a FigureWidget of build(**values), rebuilt on each change.

    With `button` (a label), it is rebuilt instead on a click of a button with that label.
    `initial` is the figure of the current values when the caller has it already (the default
    state).
    A failing rebuild leaves the figure as it was and shows the error under the controls.
    """
    import ipywidgets as W
    import plotly.graph_objects as go

    view = go.FigureWidget(initial if initial is not None else build(**control_values(controls)))
    status = W.HTML(value="")
    update = functools.partial(_rebuild, build, controls, view, status)
    row = list(controls.values())
    if button is None:
        for widget in row:
            widget.observe(update, names="value")
    else:
        clicker = W.Button(description=button, button_style="primary")
        clicker.on_click(update)
        row.append(clicker)
    box = W.VBox([W.HBox(row), status, view])
    box.update, box.figure, box.status = update, view, status
    return box


# ---------------------------------------------------------------- the live λ slider
def live_retrain(
    profile, lam: float, mode: str = "indicator", seed: int = 0, target_cr: float | None = None
) -> dict:
    """Re-train the profile's net at λ (cached per λ), share it, evaluate it.

    The plan: uniform K at `target_cr` if given, else the profile's headline plan
    (`dkm.experiments.planning.plan_for`). λ reaches the re-training through the profile, its one
    channel.
    Returns {"curves", "result", "seconds", "K" (the largest), "plan"}."""
    started = time.perf_counter()
    net0, _ = pl.pretrain(profile)
    plan = plan_for(profile, net0, target_cr)
    start = layer_kmeans_errors(net0, plan, seed)
    profile = dataclasses.replace(profile, lam=lam)
    net, config = pl.retrain(profile, "dkm", seed, plan, mode)
    history = run_history("retrain", config)
    result = pl.share_and_evaluate(profile, net, config, "kmeans", plan, seed)
    return {
        "curves": curves(history, start),
        "result": result,
        "K": max(plan.K),
        "plan": plan,
        "seconds": time.perf_counter() - started,
    }
