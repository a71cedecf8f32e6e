"""Figure builders of the notebooks: plain numbers in, a `plotly.graph_objects.Figure` out.

A figure is never shown or saved here.

Each builder draws exactly the values it is given (no hidden computation), so a notebook computes,
a builder draws, and `dkm.viz.files.save_figure` writes. Stems of the saved figures: DESIGN.md.
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative, sample_colorscale
from plotly.subplots import make_subplots

PALETTE = qualitative.D3
METHOD_COLORS = {
    "kmeans": PALETTE[0],
    "density": PALETTE[7],
    "deep_compression": PALETTE[4],
    "plain": PALETTE[5],
    "dkm-indicator": PALETTE[3],
    "dkm-spectral": PALETTE[1],
    "pretrained": "#444",
}
TEMPLATE = "plotly_white"


def _color(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _method_color(label: str, i: int) -> str:
    for method, color in METHOD_COLORS.items():
        if label.startswith(method):
            return color
    return _color(i)


def _finish(fig: go.Figure, title: str, height: int = 420, width: int = 1100) -> go.Figure:
    fig.update_layout(
        title=title,
        template=TEMPLATE,
        height=height,
        width=width,
        margin=dict(t=80, l=60, r=30, b=50),
    )
    return fig


# ---------------------------------------------------------------- 01: the relaxation
def relaxation_figure(
    panels: list[dict],
    title: str = "k-means error and its spectral relaxation",
    ytitle: str = "error / ‖W‖²",
) -> go.Figure:
    """fig01: both errors over K, and the line K = rank bound, one panel per entry.

    Each panel is {"title", "K", "kmeans", "relaxed", "rank"}.
    """
    fig = make_subplots(
        1, len(panels), subplot_titles=[p["title"] for p in panels], horizontal_spacing=0.07
    )
    for j, p in enumerate(panels, start=1):
        _relaxation_traces(fig, p, j)
        fig.add_vline(
            x=p["rank"],
            line=dict(color="#888", dash="dot"),
            row=1,
            col=j,
            annotation_text=f"K = min(s, N) = {p['rank']}",
            annotation_position="top right",
        )
        fig.update_xaxes(title_text="K (clusters)", row=1, col=j)
    fig.update_yaxes(title_text=ytitle, rangemode="tozero", row=1, col=1)
    return _finish(fig, title)


def _relaxation_traces(fig: go.Figure, p: dict, j: int) -> None:
    """Panel j of fig01: the k-means error and the relaxed optimum over K, as lines with markers."""
    curves = (
        ("kmeans", "k-means error (Lloyd, k-means++)", dict(color=_color(0)), "km"),
        ("relaxed", "relaxed optimum Σ_{i>K} σ_i²", dict(color=_color(1), dash="dash"), "rx"),
    )
    for key, name, line, group in curves:
        fig.add_trace(
            go.Scatter(
                x=list(p["K"]),
                y=list(p[key]),
                name=name,
                mode="lines+markers",
                line=line,
                legendgroup=group,
                showlegend=j == 1,
            ),
            1,
            j,
        )


def clusters_figure(points, assignments, title: str = "", centers=None) -> go.Figure:
    """Points (n×2 or n×3) coloured by cluster; optional centers (K×2|3) as black crosses."""
    points, assignments = np.asarray(points, dtype=float), np.asarray(assignments)
    colors = [_color(int(a)) for a in assignments]
    three = points.shape[1] == 3
    scatter = go.Scatter3d if three else go.Scatter
    coords = lambda P: dict(x=P[:, 0], y=P[:, 1], **({"z": P[:, 2]} if three else {}))  # noqa: E731
    fig = go.Figure(
        scatter(
            **coords(points),
            mode="markers",
            name="rows",
            text=[f"cluster {a}" for a in assignments],
            marker=dict(size=2.5 if three else 5, color=colors, opacity=0.7),
        )
    )
    if centers is not None:
        fig.add_trace(
            scatter(
                **coords(np.asarray(centers, dtype=float)),
                mode="markers",
                name="centers",
                marker=dict(size=5 if three else 11, color="black", symbol="x"),
            )
        )
    return _finish(fig, title, height=480, width=640)


# ---------------------------------------------------------------- 02: re-training
RETRAINING_PANELS = ("task loss (cross-entropy)", "training accuracy (%)",
                     "k-means error of each layer / pre-trained")  # fmt: skip


def retraining_figure(
    runs: dict,
    title: str = "Re-training with and without the k-means regularizer",
    refresh_every: int | None = None,
) -> go.Figure:
    """fig02: task loss, training accuracy and per-layer k-means error of each run over the steps.

    runs: {label: {"step", "loss", "accuracy", "layer_errors" {layer: [...]}|None,
    "final_errors" {layer: x}|None}}. `dkm-spectral` is drawn thin and dotted over the others (it
    is the plain control where its term is zero: both stay visible). refresh_every: T, the steps
    between refreshes of F, marked in the third panel.
    """
    fig = make_subplots(1, 3, horizontal_spacing=0.08, subplot_titles=RETRAINING_PANELS)
    for i, (label, run) in enumerate(runs.items()):
        color = _method_color(label, i)
        thin = label.startswith("dkm-spectral")
        line = dict(color=color, width=1.5 if thin else 2.5, dash="dot" if thin else "solid")
        kw = dict(name=label, mode="lines", legendgroup=label, line=line)
        fig.add_trace(go.Scatter(x=run["step"], y=run["loss"], **kw), 1, 1)
        if run.get("accuracy") is not None:
            accuracy = [100 * a for a in run["accuracy"]]
            fig.add_trace(go.Scatter(x=run["step"], y=accuracy, showlegend=False, **kw), 1, 2)
        _layer_traces(fig, label, run, color)
    last = max((run["step"][-1] for run in runs.values() if run["step"]), default=0)
    if refresh_every:
        for step in range(refresh_every, last + 1, refresh_every):
            fig.add_vline(x=step, line=dict(color="#999", dash="dot", width=1), row=1, col=3)
        refreshed = f"grey: F refreshed, T = {refresh_every}"
        fig.layout.annotations[2].text = f"k-means error / pre-trained ({refreshed})"
    fig.update_xaxes(title_text="optimizer step")
    fig.update_yaxes(type="log", row=1, col=3)
    return _finish(fig, title, height=440, width=1250)


def _layer_traces(fig: go.Figure, label: str, run: dict, color: str) -> None:
    """Panel 3: per-layer error curves (first solid, one dash per layer) and end-of-run markers."""
    dashes = ("solid", "dot", "dash", "longdash", "dashdot", "longdashdot")
    for j, (layer, values) in enumerate((run.get("layer_errors") or {}).items()):
        fig.add_trace(
            go.Scatter(
                x=run["step"],
                y=values,
                name=f"{label}: {layer}",
                mode="lines",
                legendgroup=label,
                showlegend=False,
                line=dict(color=color, dash=dashes[j % len(dashes)]),
            ),
            1,
            3,
        )
    final = run.get("final_errors") or {}
    if final:
        fig.add_trace(
            go.Scatter(
                x=[run["step"][-1]] * len(final),
                y=list(final.values()),
                text=list(final),
                name=f"{label}: end",
                mode="markers",
                legendgroup=label,
                showlegend=False,
                marker=dict(color=color, size=9, symbol="diamond"),
            ),
            1,
            3,
        )


# ---------------------------------------------------------------- 03: assignments and filters
def assignments_figure(
    before: dict, after: dict, title: str = "Kernel rows coloured by cluster"
) -> go.Figure:
    """fig03: kernel rows coloured by cluster and their distance histograms, before and after.

    before, after (re-training): {"label", "rows" (n×3), "assignments" (n,), "distances" (N,)}.
    """
    fig = make_subplots(
        2,
        2,
        specs=[[{"type": "scene"}, {"type": "scene"}], [{"colspan": 2}, None]],
        row_heights=[0.62, 0.38],
        vertical_spacing=0.08,
        subplot_titles=(before["label"], after["label"], "distance of each row to its center"),
    )
    for col, side in enumerate((before, after), start=1):
        cloud, histogram = _side_traces(side, col)
        fig.add_trace(cloud, 1, col)
        fig.add_trace(histogram, 2, 1)
    fig.update_layout(barmode="overlay")
    fig.update_xaxes(title_text="‖row − its center‖ / RMS row norm", row=2, col=1)
    fig.update_yaxes(title_text="fraction of rows", row=2, col=1)
    return _finish(fig, title, height=860, width=1100)


def _side_traces(side: dict, col: int) -> tuple[go.Scatter3d, go.Histogram]:
    """One side of fig03: its rows in R³ coloured by cluster, and the histogram of its distances."""
    rows = np.asarray(side["rows"], dtype=float)
    cloud = go.Scatter3d(
        x=rows[:, 0],
        y=rows[:, 1],
        z=rows[:, 2],
        mode="markers",
        showlegend=False,
        name=side["label"],
        marker=dict(size=2, opacity=0.7, color=[_color(int(a)) for a in side["assignments"]]),
    )
    histogram = go.Histogram(
        x=list(side["distances"]),
        name=side["label"],
        opacity=0.6,
        nbinsx=60,
        histnorm="probability",
        marker_color=_color(col + 1),
    )
    return cloud, histogram


def _tiles(kernels) -> np.ndarray:
    """(n, kh, kw) kernels side by side, separated by one NaN column."""
    kernels = np.asarray(kernels, dtype=float)
    n, kh, kw = kernels.shape
    out = np.full((kh, n * (kw + 1) - 1), np.nan)
    for i, k in enumerate(kernels):
        out[:, i * (kw + 1) : i * (kw + 1) + kw] = k
    return out


def filters_figure(panels: dict, title: str = "Conv kernels before and after sharing") -> go.Figure:
    """fig04: {label: (n, kh, kw) kernels}: a row of tiles per label, one symmetric colour scale."""
    tiles = {label: _tiles(k) for label, k in panels.items()}
    zmax = max(float(np.nanmax(np.abs(t))) for t in tiles.values())
    fig = make_subplots(len(tiles), 1, subplot_titles=list(tiles), vertical_spacing=0.08)
    for i, t in enumerate(tiles.values(), start=1):
        fig.add_trace(
            go.Heatmap(
                z=t[::-1],
                zmin=-zmax,
                zmax=zmax,
                zmid=0,
                colorscale="RdBu_r",
                showscale=i == 1,
                hoverongaps=False,
            ),
            i,
            1,
        )
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(
        showticklabels=False, showgrid=False, zeroline=False, scaleanchor="x", scaleratio=1
    )
    return _finish(fig, title, height=150 + 170 * len(tiles), width=1100)


# ---------------------------------------------------------------- 03/04: bars (slider states)
def bars_figure(
    labels,
    values,
    title: str = "",
    ytitle: str = "top-1 accuracy (%)",
    errors=None,
    reference: float | None = None,
    reference_label: str = "",
) -> go.Figure:
    """One bar per label (colour by method name), optional error bars, a dashed reference line."""
    labels = list(labels)
    fig = go.Figure(
        go.Bar(
            x=labels,
            y=list(values),
            text=[f"{v:.1f}" for v in values],
            textposition="outside",
            marker_color=[_method_color(lab, i) for i, lab in enumerate(labels)],
            error_y=None if errors is None else dict(type="data", array=list(errors)),
        )
    )
    if reference is not None:
        fig.add_hline(
            y=reference, line=dict(dash="dash", color="#444"), annotation_text=reference_label
        )
    fig.update_yaxes(title_text=ytitle, rangemode="tozero")
    return _finish(fig, title, height=430, width=760)


# ---------------------------------------------------------------- 04: accuracy vs CR
def _dash(method: str) -> str:
    """Deep k-Means solid, baselines dashed, re-training + center fine-tuning (`…+ft`) dotted."""
    return "dot" if method.endswith("+ft") else "solid" if method.startswith("dkm") else "dash"


def cr_accuracy_figure(
    rows: list[dict],
    reference: float | None = None,
    title: str = "Top-1 accuracy vs compression ratio",
) -> go.Figure:
    """fig05: top-1 accuracy over the compression ratio, one panel per plan family (`FAMILIES`:
    the authors' settings, the planner's per-layer plans, uniform K), one line per method.

    rows: summary rows {"method", "setting", "cr_official", "mean", "std"}, accuracies as
    fractions. The legend names each method once; `dkm-spectral` is drawn thin and dotted over
    `plain`, so where the two are the same run both stay visible."""
    families = [f for f in FAMILIES if any(_family(r["setting"]) == f for r in rows)]
    fig = make_subplots(1, len(families), subplot_titles=[FAMILIES[f] for f in families],
                        shared_yaxes=True, horizontal_spacing=0.05)  # fmt: skip
    methods = list(dict.fromkeys(r["method"] for r in rows))
    shown: set = set()
    for j, family in enumerate(families, start=1):
        for i, method in enumerate(methods):
            pts = [r for r in rows if r["method"] == method and _family(r["setting"]) == family]
            if pts:
                _cr_trace(fig, method, sorted(pts, key=lambda r: r["cr_official"]), j, i,
                          legend=method not in shown)  # fmt: skip
                shown.add(method)
        if reference is not None:
            fig.add_hline(y=100 * reference, line=dict(color="#444", dash="dot"), row=1, col=j,
                          annotation_text="uncompressed")  # fmt: skip
        fig.update_xaxes(title_text="compression ratio (official)", type="log", row=1, col=j)
    fig.update_yaxes(title_text="top-1 accuracy (%)", row=1, col=1)
    return _finish(fig, title, height=480, width=1250)


def _family(setting: str) -> str:
    """How a plan was made: "rd" (the planner), "uniform" (one K) or "authors" (45x, 47x, 50x)."""
    return setting if setting in ("rd", "uniform") else "authors"


FAMILIES = {  # the panels of fig05, in order
    "authors": "the authors' settings (45x, 47x, 50x)",
    "rd": "the planner's per-layer plans (rd)",
    "uniform": "uniform K, the contrast",
}


def _cr_trace(fig, method: str, pts: list, j: int, i: int, legend: bool) -> None:
    """One method's line in panel j of fig05, with ± one standard deviation over seeds."""
    color = _method_color(method, i)
    spectral = method.startswith("dkm-spectral")
    width = 1.5 if spectral or not method.startswith("dkm") else 3
    fig.add_trace(
        go.Scatter(
            x=[r["cr_official"] for r in pts],
            y=[100 * r["mean"] for r in pts],
            name=method,
            legendgroup=method,
            showlegend=legend,
            mode="lines+markers",
            line=dict(color=color, width=width, dash="dot" if spectral else _dash(method)),
            marker=dict(
                symbol="x" if spectral else "circle", size=9 if spectral else 7, color=color
            ),  # fmt: skip
            error_y=dict(type="data", array=[100 * r["std"] for r in pts]),
        ),
        1,
        j,
    )


# ---------------------------------------------------------------- 04: the budget × λ study
def study_figure(
    rows: list[dict], lam: float, reference: float | None = None, title: str = ""
) -> go.Figure:
    """fig08: the budget × λ study, one row of panels per plan.

    rows: `dkm.experiments.study.study_summary` rows {"method", "setting", "epochs", "lam", "mean",
    "std"}.
    Left: top-1 over the training budget, one line per method (Deep k-Means at λ = `lam`; its other
    λ faded), post-training k-means (no training) as a dashed line. Right: Deep k-Means top-1 over
    λ, one line per budget. The uncompressed net is the dotted line."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    plans = {s: "the planner (rd)" if s == "rd" else f"the authors' {s}" for s in settings}
    titles = [t for s in settings for t in (f"{plans[s]}: top-1 vs training budget",
                                             f"{plans[s]}: Deep k-Means top-1 vs λ")]  # fmt: skip
    fig = make_subplots(len(settings), 2, horizontal_spacing=0.08, vertical_spacing=0.14,
                        subplot_titles=titles)  # fmt: skip
    for i, setting in enumerate(settings, start=1):
        here = [r for r in rows if r["setting"] == setting]
        _budget_traces(fig, here, lam, i)
        _lam_traces(fig, here, i)
        _study_axes(fig, here, reference, i)
    return _finish(fig, title, height=380 * len(settings) + 80, width=1250)


def _study_axes(fig: go.Figure, rows: list[dict], reference: float | None, i: int) -> None:
    """Row i's axes: the uncompressed line, the top-1 titles, log budget and λ axes."""
    for j in (1, 2):
        if reference is not None:
            fig.add_hline(
                y=100 * reference,
                line=dict(color="#444", dash="dot"),
                row=i,
                col=j,
                annotation_text="uncompressed",
                annotation_position="top left",
            )
        fig.update_yaxes(title_text="top-1 after BN re-est. (%)", row=i, col=j)
    budgets = sorted({r["epochs"] for r in rows if r["epochs"] > 0})
    lams = sorted({r["lam"] for r in rows if r["lam"] is not None})
    fig.update_xaxes(
        title_text="epochs of training after pre-training", type="log", tickvals=budgets, row=i,
        col=1,
    )  # fmt: skip
    fig.update_xaxes(title_text="λ", type="log", tickvals=lams, row=i, col=2)


def _budget_traces(fig: go.Figure, rows: list[dict], lam: float, i: int) -> None:
    """Left panel of row i: one line per (method, λ) over the budget; the λ of one method on a
    colour ramp (`lam`, the profile's, drawn thickest), the other methods in their colours."""
    arms = list(dict.fromkeys((r["method"], r["lam"]) for r in rows if r["epochs"] > 0))
    lams = sorted({arm_lam for _, arm_lam in arms if arm_lam is not None})
    ramp = dict(zip(lams, sample_colorscale("Viridis", [0.85 * k / max(1, len(lams) - 1)
                                                        for k in range(len(lams))])))  # fmt: skip
    for k, (method, arm_lam) in enumerate(arms):
        pts = sorted((r for r in rows if (r["method"], r["lam"]) == (method, arm_lam)),
                     key=lambda r: r["epochs"])  # fmt: skip
        several = len({a for m, a in arms if m == method}) > 1
        color = ramp[arm_lam] if several else _method_color(method, k)
        name = method if arm_lam is None else f"{method}, λ = {arm_lam:g}"
        trace = _line([r["epochs"] for r in pts], pts, name, color, _dash(method), 1.0, i == 1)
        trace.line.width = 3.5 if arm_lam in (None, lam) else 1.5
        fig.add_trace(trace, i, 1)
    for r in rows:
        if r["epochs"] == 0:
            fig.add_hline(y=100 * r["mean"], line=dict(color=_method_color(r["method"], 0),
                          dash="dash"), annotation_text=f"{r['method']} (no training)",
                          row=i, col=1)  # fmt: skip


def _lam_traces(fig: go.Figure, rows: list[dict], i: int) -> None:
    """Right panel of row i: per regularized method with several λ, one line per budget."""
    for method in dict.fromkeys(r["method"] for r in rows if r["lam"] is not None):
        pts_all = [r for r in rows if r["method"] == method]
        if len({r["lam"] for r in pts_all}) < 2:
            continue
        for k, epochs in enumerate(sorted({r["epochs"] for r in pts_all})):
            pts = sorted((r for r in pts_all if r["epochs"] == epochs), key=lambda r: r["lam"])
            fig.add_trace(_line([r["lam"] for r in pts], pts, f"{method}, {epochs} epoch(s)",
                                _color(k + 6), _dash(method), 1.0, i == 1), i, 2)  # fmt: skip


def _line(x, pts, name, color, dash, opacity, legend) -> go.Scatter:
    """A line with ± one standard deviation over seeds."""
    return go.Scatter(
        x=list(x), y=[100 * r["mean"] for r in pts], name=name, legendgroup=name,
        showlegend=legend, mode="lines+markers", opacity=opacity,
        line=dict(color=color, dash=dash), marker=dict(color=color, size=7),
        error_y=dict(type="data", array=[100 * r["std"] for r in pts]),
    )  # fmt: skip


# ---------------------------------------------------------------- 05: energy
def energy_validation_figure(
    nets: dict, title: str = "Energy metric vs the ZigZag reference, per layer"
) -> go.Figure:
    """fig06: a log-log scatter per net of the estimates vs the reference, R² in the titles.

    nets: {net: {"names", "reference", "ours", "macs", "r2", "r2_macs"}}.
    """
    titles = [
        f"{net}: R² = {d['r2']:.3f} (MACs alone: {d['r2_macs']:.3f})" for net, d in nets.items()
    ]
    fig = make_subplots(1, len(nets), subplot_titles=titles, horizontal_spacing=0.08)
    for j, d in enumerate(nets.values(), start=1):
        _energy_traces(fig, d, j)
        fig.update_xaxes(title_text="ZigZag energy (pJ)", type="log", row=1, col=j)
        fig.update_yaxes(type="log", row=1, col=j)
    fig.update_yaxes(title_text="estimate (scaled to the reference by least squares)", row=1, col=1)
    return _finish(fig, title, height=470, width=1200)


def _energy_traces(fig: go.Figure, d: dict, j: int) -> None:
    """Panel j of fig06: the diagonal y = x, then our metric and MACs alone vs the reference."""
    ref = np.asarray(d["reference"], dtype=float)
    fig.add_trace(
        go.Scatter(
            x=[ref.min(), ref.max()],
            y=[ref.min(), ref.max()],
            mode="lines",
            name="y = x",
            legendgroup="diag",
            showlegend=j == 1,
            line=dict(color="#999", dash="dot"),
        ),
        1,
        j,
    )
    for i, (key, label) in enumerate((("ours", "our metric"), ("macs", "MACs alone"))):
        y = np.asarray(d[key], dtype=float)
        fig.add_trace(
            go.Scatter(
                x=ref,
                y=y,
                mode="markers",
                name=label,
                legendgroup=key,
                showlegend=j == 1,
                text=list(d["names"]),
                marker=dict(color=_color(i), size=8, opacity=0.8),
            ),
            1,
            j,
        )


def energy_breakdown_figure(
    rows: list[dict],
    components: list,
    title: str = "Energy per layer, dense vs shared",
    unit: str = "E_MAC16",
) -> go.Figure:
    """fig07: energy per layer and variant, as bars stacked by component.

    rows: {"layer", "variant", <component>: energy}, in drawing order.
    """
    x = [
        [r["layer"] for r in rows],
        [r["variant"] for r in rows],
    ]  # layer, then dense/shared side by side
    fig = go.Figure(
        [
            go.Bar(x=x, y=[r[comp] for r in rows], name=comp, marker_color=_color(i))
            for i, comp in enumerate(components)
        ]
    )
    fig.update_layout(barmode="stack")
    fig.update_yaxes(title_text=f"energy ({unit})")
    return _finish(fig, title, height=480, width=1200)
