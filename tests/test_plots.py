"""Figure builders (dkm.viz.plots), figure files (dkm.viz.files) and slider helpers
(dkm.viz.sliders) against
hand-made data."""

import csv
import dataclasses
import json
import math

import ipywidgets as W_
import numpy as np
import plotly.graph_objects as go
import pytest
import torch

import dkm.io
from dkm.app import cli
from dkm.app import runner as notebooks
from dkm.experiments import cache as runs
from dkm.clustering import kmeans
from dkm.plans import uniform_plan
from dkm.training.loop import TrainConfig, train
from dkm.training.models import small_cnn
from dkm.viz import figdata, plots, sliders
from dkm.viz import files as saving


def ys(fig, name=None, kind=None):
    return [
        list(t.y)
        for t in fig.data
        if (name is None or t.name == name) and (kind is None or t.type == kind)
    ]


# -------------------------------------------------------- builders draw exactly what they are given
def test_relaxation_figure_holds_the_values_and_the_rank_line():
    panels = [
        {
            "title": "a",
            "K": [1, 2, 3],
            "kmeans": [0.9, 0.5, 0.2],
            "relaxed": [0.6, 0.1, 0.0],
            "rank": 2,
        },
        {"title": "b", "K": [1, 2], "kmeans": [1.0, 0.7], "relaxed": [0.8, 0.3], "rank": 3},
    ]
    fig = plots.relaxation_figure(panels)
    assert [list(t.x) for t in fig.data] == [[1, 2, 3], [1, 2, 3], [1, 2], [1, 2]]
    assert [list(t.y) for t in fig.data] == [
        [0.9, 0.5, 0.2],
        [0.6, 0.1, 0.0],
        [1.0, 0.7],
        [0.8, 0.3],
    ]
    assert sorted(s.x0 for s in fig.layout.shapes) == [2, 3]
    assert [a.text for a in fig.layout.annotations if "min(s, N)" in a.text] == [
        "K = min(s, N) = 2",
        "K = min(s, N) = 3",
    ]


def test_clusters_figure_colours_by_assignment_in_2d_and_3d():
    pts2, pts3, a = (
        np.array([[0, 1], [2, 3], [4, 5.0]]),
        np.arange(9.0).reshape(3, 3),
        np.array([0, 1, 0]),
    )
    fig2 = plots.clusters_figure(pts2, a, centers=[[1, 1]])
    assert (
        fig2.data[0].type == "scatter"
        and list(fig2.data[0].x) == [0, 2, 4]
        and list(fig2.data[0].y) == [1, 3, 5]
    )
    assert list(fig2.data[0].marker.color) == [plots.PALETTE[0], plots.PALETTE[1], plots.PALETTE[0]]
    assert list(fig2.data[1].x) == [1] and fig2.data[1].name == "centers"
    fig3 = plots.clusters_figure(pts3, a)
    assert (
        fig3.data[0].type == "scatter3d"
        and list(fig3.data[0].z) == [2, 5, 8]
        and len(fig3.data) == 1
    )


def test_retraining_figure_curves_layers_and_end_points():
    runs = {
        "plain": {
            "step": [10, 20],
            "loss": [2.0, 1.5],
            "accuracy": [0.25, 0.5],
            "layer_errors": None,
            "final_errors": {"conv1": 0.9, "conv2": 0.8},
        },
        "dkm-indicator": {
            "step": [10, 20],
            "loss": [2.1, 1.6],
            "accuracy": None,
            "layer_errors": {"conv1": [0.7, 0.5], "conv2": [0.6, 0.4]},
            "final_errors": None,
        },
    }
    fig = plots.retraining_figure(runs)
    assert ys(fig, "plain") == [[2.0, 1.5], [25.0, 50.0]]  # loss, then accuracy in %
    assert ys(fig, "dkm-indicator") == [[2.1, 1.6]]  # no accuracy recorded: no trace
    assert ys(fig, "dkm-indicator: conv1") == [[0.7, 0.5]] and ys(fig, "dkm-indicator: conv2") == [
        [0.6, 0.4]
    ]
    end = next(t for t in fig.data if t.name == "plain: end")
    assert (
        list(end.x) == [20, 20]
        and list(end.y) == [0.9, 0.8]
        and list(end.text) == ["conv1", "conv2"]
    )
    assert fig.layout.yaxis3.type == "log" and not fig.layout.shapes
    runs["dkm-spectral"] = dict(runs["plain"])  # the same numbers as plain: drawn thin, dotted
    fig = plots.retraining_figure(runs, refresh_every=8)
    lines = {t.name: t.line for t in fig.data if t.xaxis == "x"}
    assert (lines["dkm-spectral"].dash, lines["dkm-spectral"].width) == ("dot", 1.5)
    assert (lines["plain"].dash, lines["plain"].width) == ("solid", 2.5)
    assert [s.x0 for s in fig.layout.shapes] == [8, 16]  # refreshes up to the last step (20)
    assert "F refreshed, T = 8" in fig.layout.annotations[2].text


def test_assignments_figure_histograms_hold_every_distance():
    def side(label, d):
        return {"label": label, "rows": np.eye(3), "assignments": [0, 1, 2], "distances": d}

    fig = plots.assignments_figure(side("before", [0.5, 1.0, 2.0]), side("after", [0.1, 0.2]))
    hists = [t for t in fig.data if t.type == "histogram"]
    assert [list(h.x) for h in hists] == [[0.5, 1.0, 2.0], [0.1, 0.2]] and [
        h.name for h in hists
    ] == ["before", "after"]
    assert sum(t.type == "scatter3d" for t in fig.data) == 2


def test_filters_figure_tiles_kernels_with_nan_gaps_and_a_symmetric_scale():
    k = np.arange(2 * 2 * 3, dtype=float).reshape(2, 2, 3) - 5  # two 2×3 kernels
    tiles = plots._tiles(k)
    assert tiles.shape == (2, 7) and np.isnan(tiles[:, 3]).all()
    assert np.array_equal(tiles[:, :3], k[0]) and np.array_equal(tiles[:, 4:], k[1])
    fig = plots.filters_figure({"before": k, "after": k / 2})
    assert np.array_equal(np.asarray(fig.data[0].z, dtype=float), tiles[::-1], equal_nan=True)
    assert fig.data[1].zmin == -6 and fig.data[1].zmax == 6  # max |value| over all panels


def test_bars_and_cr_accuracy_figures():
    fig = plots.bars_figure(
        ["kmeans", "dkm-indicator"], [50.0, 60.0], errors=[1.0, 2.0], reference=70.0
    )
    assert list(fig.data[0].y) == [50.0, 60.0] and list(fig.data[0].error_y.array) == [1.0, 2.0]
    assert fig.layout.shapes[0].y0 == 70.0
    rows = [
        {"method": "kmeans", "setting": "rd", "cr_official": 16.0, "mean": 0.4, "std": 0.01},
        {"method": "kmeans", "setting": "rd", "cr_official": 8.0, "mean": 0.6, "std": 0.02},
        {"method": "kmeans", "setting": "45x", "cr_official": 9.0, "mean": 0.5, "std": 0.0},
        {"method": "kmeans", "setting": "uniform", "cr_official": 8.0, "mean": 0.3, "std": 0.0},
        {"method": "dkm-indicator", "setting": "rd", "cr_official": 8.1, "mean": 0.7, "std": 0},
        {"method": "dkm-indicator+ft", "setting": "rd", "cr_official": 8.1, "mean": 0.75, "std": 0},
    ]
    rows.append({"method": "dkm-spectral", "setting": "rd", "cr_official": 8.1, "mean": 0.7,
                 "std": 0})  # fmt: skip
    fig = plots.cr_accuracy_figure(rows, reference=0.8)
    titles = [a.text for a in fig.layout.annotations if a.text != "uncompressed"]
    assert titles == list(plots.FAMILIES.values())  # one panel per plan family, in order
    panel = {"x": "authors", "x2": "rd", "x3": "uniform"}
    traces = [(panel[t.xaxis], t.name) for t in fig.data]
    assert traces == [("authors", "kmeans"), ("rd", "kmeans"), ("rd", "dkm-indicator"),
                      ("rd", "dkm-indicator+ft"), ("rd", "dkm-spectral"),
                      ("uniform", "kmeans")]  # fmt: skip
    legend = [t.name for t in fig.data if t.showlegend]
    assert legend == ["kmeans", "dkm-indicator", "dkm-indicator+ft", "dkm-spectral"]  # once each
    by_panel = {(panel[t.xaxis], t.name): t for t in fig.data}
    km = by_panel[("rd", "kmeans")]
    assert list(km.x) == [8.0, 16.0] and list(km.y) == pytest.approx([60.0, 40.0])  # by CR, in %
    assert list(km.error_y.array) == pytest.approx([2.0, 1.0]) and km.line.dash == "dash"
    assert by_panel[("rd", "dkm-indicator")].line.width == 3
    assert by_panel[("rd", "dkm-indicator")].line.dash == "solid"
    assert by_panel[("rd", "dkm-indicator+ft")].line.dash == "dot"
    spectral = by_panel[("rd", "dkm-spectral")]  # thin, dotted, x markers: plain shows under it
    assert (spectral.line.width, spectral.line.dash, spectral.marker.symbol) == (1.5, "dot", "x")
    assert [s.y0 for s in fig.layout.shapes] == [80.0] * 3


def test_the_study_figure_puts_lambda_on_a_colour_ramp():
    def arm(method, epochs, lam, mean):
        return {"method": method, "setting": "45x", "epochs": epochs, "lam": lam, "mean": mean,
                "std": 0.01}  # fmt: skip

    rows = [arm("deep_compression", e, None, 0.8 + e / 100) for e in (1, 3)]
    rows += [arm("dkm-indicator", e, lam, 0.7 + lam / 1000) for e in (1, 3) for lam in (0.5, 5, 50)]
    rows.append(arm("kmeans", 0, None, 0.6))
    fig = plots.study_figure(rows, lam=5.0, reference=0.9)
    left = {t.name: t for t in fig.data if t.xaxis == "x"}
    lams = [left[f"dkm-indicator, λ = {lam:g}"] for lam in (0.5, 5, 50)]
    assert len({t.line.color for t in lams}) == 3  # one colour per λ, not one faded pink
    assert [t.line.width for t in lams] == [1.5, 3.5, 1.5]  # the profile's λ drawn thickest
    assert left["deep_compression"].line.color == plots.METHOD_COLORS["deep_compression"]
    assert list(left["deep_compression"].y) == pytest.approx([81.0, 83.0])
    assert any(s.y0 == pytest.approx(60.0) for s in fig.layout.shapes)  # kmeans, no training


def test_energy_figures():
    nets = {
        "alexnet": {
            "names": ["a", "b", "c"],
            "reference": [1.0, 2.0, 4.0],
            "ours": [1.1, 1.9, 4.2],
            "macs": [3.0, 1.0, 2.0],
            "r2": 0.99,
            "r2_macs": 0.1,
        }
    }
    fig = plots.energy_validation_figure(nets)
    assert ys(fig, "our metric") == [[1.1, 1.9, 4.2]] and ys(fig, "MACs alone") == [[3.0, 1.0, 2.0]]
    assert fig.layout.annotations[0].text == "alexnet: R² = 0.990 (MACs alone: 0.100)"
    rows = [
        {"layer": "c1", "variant": "dense", "arith": 3.0, "dram": 5.0},
        {"layer": "c1", "variant": "shared", "arith": 1.0, "dram": 2.0},
    ]
    fig = plots.energy_breakdown_figure(rows, ["arith", "dram"])
    assert (
        ys(fig, "arith") == [[3.0, 1.0]]
        and ys(fig, "dram") == [[5.0, 2.0]]
        and fig.layout.barmode == "stack"
    )


# ---------------------------------------------------------------- figure files
def test_fig_dir_for_the_default_and_other_profiles():
    assert saving.fig_dir_for("cpu") == saving.ROOT / "figures"
    assert saving.fig_dir_for("smoke") == saving.ROOT / "build" / "figures" / "smoke"
    with pytest.raises(ValueError, match="profile"):
        saving.fig_dir_for("laptop")


def test_save_figure_writes_html_and_png(tmp_path):
    paths = saving.save_figure(go.Figure(go.Bar(x=["a"], y=[1])), "fig99_test", tmp_path)
    assert [p.name for p in paths] == ["fig99_test.html", "fig99_test.png"]
    assert paths[1].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = paths[0].read_text()
    # offline: plotly.js from one shared copy beside the figures, nothing from the network
    assert 'id="fig99_test"' in html and 'src="plotly.min.js"' in html and "http" not in html
    from plotly.offline import get_plotlyjs

    assert (tmp_path / "plotly.min.js").read_text() == get_plotlyjs()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "fig99_test.html",
        "fig99_test.png",
        "plotly.min.js",
    ]  # no temp files left


def test_save_figure_is_all_or_nothing_when_png_export_fails(tmp_path, monkeypatch):
    (tmp_path / "fig98.html").write_text("old html")
    monkeypatch.setattr(
        saving, "png_bytes", lambda fig: (_ for _ in ()).throw(RuntimeError("no browser"))
    )
    with pytest.raises(
        saving.FigureExportError, match=r"(?s)'fig98'.*no browser.*apt-get install chromium"
    ):
        saving.save_figure(go.Figure(), "fig98", tmp_path)
    assert (
        sorted(p.name for p in tmp_path.iterdir()) == ["fig98.html"]
        and (tmp_path / "fig98.html").read_text() == "old html"
    )


def test_save_table_keeps_the_old_files_when_writing_fails(tmp_path, monkeypatch):
    (tmp_path / "table97.csv").write_text("old")
    monkeypatch.setattr(
        dkm.io.os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full"))
    )
    with pytest.raises(OSError, match="disk full"):
        saving.save_table([{"a": 1}], "table97", tmp_path)
    assert (tmp_path / "table97.csv").read_text() == "old" and [
        p.name for p in tmp_path.iterdir()
    ] == ["table97.csv"]


@pytest.mark.parametrize("stem", ["../evil", "a/b", "", ".hidden", "x.png/"])
def test_bad_stems_are_refused(stem, tmp_path):
    with pytest.raises(ValueError, match="stem"):
        saving.save_table([{"a": 1}], stem, tmp_path)


def test_save_table_round_trips_and_renders_markdown(tmp_path):
    rows = [
        {"layer": "conv1", "K": 8, "cr": 12.3456789, "p": None},
        {"layer": "total", "K": None, "cr": 3.0, "p": 0.5},
    ]
    csv_path, md_path = saving.save_table(rows, "table99", tmp_path)
    with open(csv_path, newline="") as f:
        back = list(csv.DictReader(f))
    assert back == [
        {"layer": "conv1", "K": "8", "cr": "12.3456789", "p": ""},
        {"layer": "total", "K": "", "cr": "3.0", "p": "0.5"},
    ]
    assert md_path.read_text().splitlines() == [
        "| layer | K | cr | p |",
        "|---|---|---|---|",
        "| conv1 | 8 | 12.35 |  |",
        "| total |  | 3 | 0.5 |",
    ]
    with pytest.raises(ValueError, match="rows"):
        saving.save_table([], "table98", tmp_path)


def test_gallery_lists_every_png_with_one_line(tmp_path):
    for name in (
        "fig01_relaxation.png",
        "fig05_cr_accuracy.png",
        "extra.png",
        "table01_compression.md",
        "notes.txt",
    ):
        (tmp_path / name).write_bytes(b"x")
    text = saving.write_gallery(tmp_path, "smoke").read_text()
    for stem in ("fig01_relaxation", "fig05_cr_accuracy", "extra"):
        assert f"![{stem}]({stem}.png)" in text and f"[{stem}.html]({stem}.html)" in text
    assert saving.FIGURES["fig05_cr_accuracy"][1] in text and "not a figure of DESIGN.md" in text
    assert "[table01_compression.md](table01_compression.md)" in text and "notes.txt" not in text
    assert text.count("![") == 3 and "profile `smoke`" in text


def test_select_notebooks():
    assert notebooks.select_notebooks(None) == list(notebooks.NOTEBOOKS)
    assert notebooks.select_notebooks("04,05") == ["04_compression", "05_energy"]
    assert notebooks.select_notebooks("1") == ["01_spectral_relaxation"]
    with pytest.raises(ValueError, match=r"only='07'.*allowed notebook"):
        notebooks.select_notebooks("07")


def test_cli_main_refuses_an_unknown_notebook(capsys):
    assert cli.main(["figures", "--profile", "smoke", "--only", "07"]) == 2
    assert "only='07'" in capsys.readouterr().err


def test_cli_parser_defaults():
    args = cli.make_parser().parse_args(["figures", "--only", "04,05"])
    assert (args.profile, args.only, args.out_dir, args.fig_dir) == ("cpu", "04,05", None, None)


# ---------------------------------------------------------------- slider helper
def test_live_figure_rebuilds_on_change():
    slider = W_.IntSlider(value=2, min=1, max=5)
    box = sliders.live_figure(
        lambda K: go.Figure(go.Scatter(x=list(range(K)), y=[K] * K)), {"K": slider}
    )
    assert list(box.figure.data[0].x) == [0, 1]  # the default state, at once
    slider.value = 4
    assert list(box.figure.data[0].y) == [4, 4, 4, 4] and box.status.value.startswith("answered")


def test_live_figure_with_a_button_waits_for_the_click_and_shows_errors():
    slider = W_.FloatSlider(value=1.0)

    def build(lam):
        if lam < 0:
            raise ValueError("lam must be ≥ 0")
        return go.Figure(go.Bar(x=["a"], y=[lam]))

    box = sliders.live_figure(build, {"lam": slider}, button="re-train")
    slider.value = 3.0
    assert list(box.figure.data[0].y) == [1.0]  # not yet: no click
    button = box.children[0].children[-1]
    button.click()
    assert list(box.figure.data[0].y) == [3.0]
    slider.min, slider.value = -5.0, -1.0
    button.click()
    assert "lam must be ≥ 0" in box.status.value and list(box.figure.data[0].y) == [3.0]


def test_precompute_builds_every_option_once_and_says_which_took_long(monkeypatch):
    calls, lines = [], []
    clock = iter([0.0, 0.0, 0.2, 0.2, 3.2, 3.2, 3.3, 3.3])  # K = 2: 0.2 s, 4: 3.0 s, 8: 0.1 s

    def build(K):
        calls.append(K)
        return go.Figure(go.Bar(x=["a"], y=[K]))

    monkeypatch.setattr(sliders.time, "perf_counter", lambda: next(clock))
    answers = sliders.precompute(build, "K", [2, 4, 8], log=lines.append)
    monkeypatch.undo()  # the real clock again
    assert calls == [2, 4, 8]
    assert {K: list(f.data[0].y) for K, f in answers.items()} == {2: [2], 4: [4], 8: [8]}
    assert lines == ["K = 4: computed in 3.0 s", "3 answers of the K slider ready in 3.3 s"]
    slider = W_.SelectionSlider(options=[2, 4, 8], value=2)
    box = sliders.live_figure(lambda K: answers[K], {"K": slider})
    slider.value = 8
    assert list(box.figure.data[0].y) == [8] and calls == [2, 4, 8]  # no build on a move


# ---------------------------------------------------------------- numbers the notebooks draw
def test_relaxation_curve_against_svd_and_kmeans():
    W = torch.randn(4, 50, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    c = figdata.relaxation_curve(W, [1, 3, 4, 6], seed=0)
    sigma2 = torch.linalg.svdvals(W) ** 2
    total = float((W * W).sum())
    assert c["relaxed"] == pytest.approx([float(sigma2[k:].sum()) / total for k in (1, 3, 4, 6)])
    assert c["kmeans"] == pytest.approx(
        [kmeans(W.T, k, seed=0).inertia / total for k in (1, 3, 4, 6)]
    )
    assert (
        c["rank"] == 4
        and c["relaxed"][2] == pytest.approx(0, abs=1e-12)
        and c["kmeans"][0]
        == pytest.approx(float(((W - W.mean(1, keepdim=True)) ** 2).sum()) / total)
    )


def test_curves_from_a_hand_history():
    history = {
        "steps": [
            {
                "step": 5,
                "task_loss": 2.0,
                "train_accuracy": 0.1,
                "layer_errors": {"a": 4.0, "b": 1.0},
            },
            {
                "step": 10,
                "task_loss": 1.0,
                "train_accuracy": 0.3,
                "layer_errors": {"a": 2.0, "b": 0.5},
            },
        ]
    }
    c = figdata.curves(history, start={"a": 8.0, "b": 2.0}, final={"a": 1.0})
    assert c == {
        "step": [5, 10],
        "loss": [2.0, 1.0],
        "accuracy": [0.1, 0.3],
        "layer_errors": {"a": [0.5, 0.25], "b": [0.5, 0.25]},
        "final_errors": {"a": 0.125},
    }
    assert figdata.curves(history, {"a": 8.0, "b": 2.0}, layer_errors=False)["layer_errors"] is None
    old = {"steps": [{"step": 5, "task_loss": 2.0}]}  # a history from before train_accuracy
    assert figdata.curves(old)["accuracy"] is None


def test_uniform_plan_caps_K_at_the_rows():
    net = small_cnn(width=2)  # conv1 has 2·1·3 = 6 rows
    plan = uniform_plan(net, 8)
    assert plan.K == (6, 8, 8, 8) and plan.p == (0.0,) * 4
    with pytest.raises(ValueError, match="num_clusters"):
        uniform_plan(net, 0)


def test_layer_clusters_distances_by_hand():
    weight = torch.tensor(
        [[[[0.0, 0, 0], [2, 0, 0]]], [[[10, 0, 0], [10, 0, 4]]]]
    )  # 4 rows of length 3
    c = figdata.layer_clusters(weight, 2, seed=0)
    rms = math.sqrt((0 + 4 + 100 + 116) / 4)
    assert sorted(c["distances"].tolist()) == pytest.approx(
        sorted([1 / rms, 1 / rms, 2 / rms, 2 / rms])
    )
    assert c["inertia"] == pytest.approx(1 + 1 + 4 + 4) and c["rows"].shape == (4, 3)


def test_cached_runs_finds_finished_children_only(tmp_path, monkeypatch):
    monkeypatch.setenv("DKM_RUNS_DIR", str(tmp_path))
    parent = {"stage": "pretrain", "x": 1}
    for name, cfg, done in (
        ("retrain-a", {"parent": parent, "lam": 0.5}, True),
        ("retrain-b", {"parent": parent, "lam": 2.0}, False),
        ("retrain-c", {"parent": {"stage": "pretrain", "x": 2}, "lam": 1.0}, True),
    ):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"stage": "retrain", **cfg}))
        (tmp_path / name / "model.pt").write_bytes(b"")
        (tmp_path / name / "history.json").write_text("{}")
        if done:  # its commit marker: finished (without one, outputs are not a finished run)
            runs.commit(tmp_path / name, {"stage": "retrain", **cfg})
    found = runs.cached_runs(parent, "retrain")
    assert [(c["lam"], d.name) for c, d in found] == [(0.5, "retrain-a")]


def test_train_step_records_carry_accuracy_and_layer_errors():
    class Reg:  # a regularizer whose layer errors count the steps
        def __init__(self):
            self.n = 0

        def penalty(self):
            return torch.zeros(())

        def after_step(self):
            self.n += 1

        def layer_errors(self):
            return {"conv": float(self.n)}

        def state_dict(self):
            return {}

        def load_state_dict(self, state):
            pass

    X = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(X, torch.zeros(32, dtype=torch.long))
    cfg = TrainConfig(epochs=1, lr=1e-3, batch_size=8, log_every=2, device="cpu", threads=1)
    history = train(small_cnn(width=2), data, cfg, regularizer=Reg(), progress=False)
    assert [r["layer_errors"] for r in history.steps] == [{"conv": 2.0}, {"conv": 4.0}]
    assert all(0.0 <= r["train_accuracy"] <= 1.0 for r in history.steps)
    plain = train(small_cnn(width=2), data, dataclasses.replace(cfg, log_every=4), progress=False)
    assert plain.steps[0]["layer_errors"] is None
