"""The notebooks' exercises: each reference solution against the package (an independent
computation of the same quantity), and `check`'s three answers (none, right, wrong)."""

import math

import pytest
import torch

import dkm
from dkm import accounting, energy
from dkm.rows import rank_bound
from dkm.training.loop import TrainConfig, learning_rate
from dkm.viz import exercises as ex
from dkm.viz.figdata import layer_clusters


@pytest.fixture
def toy():
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(3, 200, dtype=torch.float64, generator=gen)
    return W, dkm.kmeans(W.T, 5, seed=0).assignments


def test_the_relaxation_exercises_match_the_package(toy):
    W, a = toy
    assert ex.trace_form_error(W, a) == pytest.approx(dkm.regularizer.kmeans_error(W, a), 1e-10)
    for K in (1, 2, 3):
        assert ex.relaxed_optimum(W, K) == pytest.approx(
            dkm.regularizer.relaxed_bound(W, K), rel=1e-10, abs=1e-12
        )
    for shape in ((16, 8, 3, 3), (4, 2, 3, 3), (8, 16, 1, 1)):
        for view in ("rows", "kernels", "filters"):
            assert ex.first_zero_K(shape, view) == rank_bound(shape, view)


def test_the_retraining_exercises_match_the_package(toy):
    W, a = toy
    assert ex.penalty_from_error(W, a, 5.0) == pytest.approx(
        5.0 / 2 * dkm.regularizer.kmeans_error(W, a), 1e-10
    )
    config = TrainConfig(epochs=2, lr=0.1, min_lr=0.001, schedule="cosine")
    for step in (0, 7, 39):
        assert ex.cosine_lr(0.1, 0.001, step, 40) == pytest.approx(learning_rate(config, step, 20))
    reg = dkm.KMeansRegularizer(torch.nn.Sequential(torch.nn.Conv2d(2, 4, 3)), 1.0, 3,
                                refresh_every=4)  # fmt: skip
    calls = []
    reg.refresh = lambda: calls.append(reg.step)  # count the refreshes after_step makes
    for _ in range(math.ceil(1000 / 64)):  # one epoch: 1000 images in batches of 64, 16 steps
        reg.after_step()
    assert ex.refreshes_per_epoch(1000, 64, 4) == len(calls) == 4 and calls == [4, 8, 12, 16]


def test_the_assignment_exercises_match_the_package():
    gen = torch.Generator().manual_seed(1)
    X = torch.randn(500, 3, generator=gen)
    km = dkm.kmeans(X, 6, p=0.7, seed=0)
    assert ex.dominant_size(500, 0.7) == int((km.assignments == 0).sum()) == 350
    conv = torch.nn.Conv2d(4, 8, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen))
    net = torch.nn.Sequential(conv)
    shared = dkm.share(net, dkm.uniform_plan(net, 5))
    used = int((shared.layers["0"].counts() > 0).sum())
    assert ex.distinct_rows(net[0].weight.detach()) == used <= 5
    c = layer_clusters(conv.weight, 5, seed=0)
    rows = dkm.to_matrix(conv.weight.detach(), "rows").T
    km5 = dkm.kmeans(rows.double(), 5, seed=0)
    median = ex.median_distance(rows, km5.codebook, km5.assignments)
    assert median == pytest.approx(float(torch.as_tensor(c["distances"]).median()), 1e-12)


def test_the_compression_exercises_match_the_accounting():
    N, s, K, p, bias = 196_608, 3, 7, 0.9, 256
    counts = accounting.analytic_counts(N, K, p)
    H = accounting.entropy(counts)
    assert ex.index_entropy(K, int(N * p) / N) == pytest.approx(H, 1e-12)
    bits = accounting.layer_bits(N, s, counts, bias, "official")
    assert ex.layer_cr(N, s, K, H, bias) == pytest.approx(32 * (N * s + bias) / bits, 1e-12)
    for K in (1, 2, 7, 8, 90):
        assert ex.fixed_index_bits(K) == accounting.fixed_index_width(K)


def test_the_energy_exercises_match_the_metric():
    net = torch.nn.Sequential(torch.nn.Conv2d(16, 32, 3))
    (layer,) = energy.layer_inventory(net, (1, 16, 8, 8)).layers
    acc = ex.accumulator(8, 8, layer.reduction)
    assert acc == energy.accumulator_bits(8, 8, layer.reduction) == 8 + 8 + 8  # R = 144
    dense = energy.layer_energy(layer, 8)
    assert ex.arithmetic_energy(layer.macs, 8, 8, acc) == pytest.approx(dense["arith"], 1e-12)
    assert 0 < ex.dram_share(dense) == dense["dram"] / dense["total"] < 1


def test_check_shows_the_reference_without_an_answer_and_judges_one(capsys):
    assert ex.check("04.3", None, K=90) is None
    assert "no answer yet. The reference solution gives 7" in capsys.readouterr().out
    ex.check("04.3", 7, K=90)
    assert "exercise 04.3: right (7)" in capsys.readouterr().out
    with pytest.raises(AssertionError, match=r"exercise 04.3: 6 is not it; expected 7"):
        ex.check("04.3", 6, K=90)
    with pytest.raises(AssertionError, match="is not it"):
        ex.check("04.3", 7.0001, K=90)  # an integer answer is exact
    with pytest.raises(AssertionError, match="relative tolerance 1e-06"):
        ex.check("04.1", 0.7275, K=7, p=0.9)  # rounded to 4 digits: computed answers are exact
    with pytest.raises(ValueError, match="exercise='09.9' is not allowed"):
        ex.check("09.9", None)


def test_every_exercise_appears_in_its_notebook():
    import json
    from pathlib import Path

    notebooks = Path(__file__).resolve().parents[1] / "notebooks"
    text = {p.name[:2]: p.read_text() for p in notebooks.glob("*.ipynb")}
    for key in ex.EXERCISES:
        assert f'exercises.check(\\"{key}\\"' in text[key[:2]], key
    for name, body in text.items():
        count = sum(f'exercises.check(\\"{k}\\"' in body for k in ex.EXERCISES if k[:2] == name)
        assert count >= 3, f"notebook {name} has {count} exercises"
        assert json.loads(body)  # still a notebook
