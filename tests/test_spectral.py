"""dkm.regularizer: the k-means regularizer, against brute force, numpy's SVD, autograd and
dkm.clustering."""

import io
import warnings

import numpy as np
import pytest
import torch
from torch import nn

import dkm.regularizer as spectral
from dkm.regularizer import (
    DegenerateRelaxationWarning,
    IndicatorF,
    KMeansRegularizer,
    indicator_F,
    indicator_matrix,
    kmeans_error,
    relaxed_bound,
    residual,
    spectral_F,
    trace_form,
)
from dkm.rows import from_matrix, to_matrix

D = torch.float64


def small_net(dtype=D):
    """Three convs: 3×3, depthwise 3×3, 1×1 (conv indices 0, 1, 2); a non-conv layer in between."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 4, 3),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, groups=4),
        nn.BatchNorm2d(4),
        nn.Conv2d(4, 6, 1),
    )
    return net.to(dtype)


def dense_F(reg, name):
    """The N×K matrix F of a layer, from the public state_dict."""
    saved = reg.state_dict()["layers"][name]
    return (
        saved["F"]
        if "F" in saved
        else indicator_matrix(saved["assignments"], saved["num_clusters"])
    )


# ---- the trace identity (eq. 2) -------------------------------------------------------------


def test_kmeans_error_by_hand():
    W = torch.tensor([[0.0, 2.0, 10.0], [1.0, 1.0, 5.0]], dtype=D)
    # cluster 0 = columns 0, 1 with mean (1, 1): 1 + 1; cluster 1 = column 2 alone: 0
    assert kmeans_error(W, torch.tensor([0, 0, 1])) == 2.0
    assert kmeans_error(W, torch.tensor([0, 0, 0])) == pytest.approx(
        ((W - W.mean(1, keepdim=True)) ** 2).sum().item()
    )


def test_indicator_matrix_by_hand():
    F = indicator_matrix(torch.tensor([2, 0, 2, 2]), 4)
    expected = torch.zeros(4, 4, dtype=D)
    expected[1, 0] = 1.0
    expected[[0, 2, 3], 2] = 3**-0.5
    assert torch.allclose(F, expected, rtol=1e-15, atol=0)
    # FᵀF = I on the used clusters, 0 on the empty ones
    assert torch.allclose(F.T @ F, torch.diag(torch.tensor([1.0, 0, 1, 0], dtype=D)), atol=1e-15)


@pytest.mark.parametrize(
    "s, N, K, empty",
    [
        (3, 40, 5, []),
        (3, 40, 8, [0, 5]),
        (9, 17, 4, [3]),
        (1, 30, 2, []),
        (20, 6, 6, [1, 2]),
        (5, 7, 1, []),
    ],
)
def test_trace_form_equals_brute_force_kmeans_error(s, N, K, empty):
    gen = torch.Generator().manual_seed(s * 100 + N)
    W = torch.randn(s, N, generator=gen, dtype=D)
    used = torch.tensor([k for k in range(K) if k not in empty])
    a = used[torch.randint(len(used), (N,), generator=gen)]
    brute = kmeans_error(W, a)
    assert float(trace_form(W, indicator_matrix(a, K))) == pytest.approx(brute, rel=1e-9)
    assert float(trace_form(W, IndicatorF(a, K))) == pytest.approx(brute, rel=1e-9)
    # residual of the indicator: each column minus its cluster mean, by index_add or by dense F
    r = residual(W, IndicatorF(a, K))
    assert torch.allclose(r, W - W @ indicator_matrix(a, K) @ indicator_matrix(a, K).T, atol=1e-12)
    assert float((r**2).sum()) == pytest.approx(brute, rel=1e-9)


def test_indicator_counts_once_per_F(monkeypatch):
    """A training step's projection and a refresh's warm start use the n_k counted when F was
    made: no bincount per step (on CUDA it waits for the device); same bits as counting anew."""
    gen = torch.Generator().manual_seed(3)
    W = torch.randn(3, 500, generator=gen, dtype=torch.float32)
    a = torch.tensor([0, 2, 3, 5, 6])[torch.randint(5, (500,), generator=gen)]  # 1 and 4 empty
    F = IndicatorF(a, 7)
    assert F.counts.tolist() == [int((a == k).sum()) for k in range(7)]
    means = torch.stack(
        [W[:, a == k].mean(1) if (a == k).any() else W.new_zeros(3) for k in range(7)]
    )
    counted, _ = spectral.cluster_means(W, a, 7)
    monkeypatch.setattr(torch, "bincount", lambda *args, **kw: pytest.fail("bincount per step"))
    assert torch.equal(F.project(W), counted[:, a])
    assert torch.allclose(F.project(W), means.T[:, a], atol=1e-6)
    assert torch.equal(spectral.warm_start(W, F), counted.T.double())
    # moved to the weights' device once, then kept there
    moved = F.on(torch.device("meta"))
    assert moved[0].is_meta and moved[1].is_meta
    assert all(x is y for x, y in zip(F.on(torch.device("meta")), moved))


# ---- the spectral relaxation (Zha et al. 2001, Ky Fan) ---------------------------------------


def random_assignment(N, K, gen):
    return torch.randint(K, (N,), generator=gen)


@pytest.mark.parametrize("trial", range(8))
def test_relaxed_bound_is_below_every_kmeans_error(trial):
    from dkm.clustering import kmeans

    gen = torch.Generator().manual_seed(trial)
    s, N = [(3, 50), (9, 40), (12, 30), (30, 12)][trial % 4]
    W = torch.randn(s, N, generator=gen, dtype=D) * torch.rand(s, 1, generator=gen, dtype=D)
    for K in (1, 2, 4, 7):
        bound = relaxed_bound(W, K)
        # reference: Σ_{i>K} σ_i² from numpy's SVD
        sigma = np.linalg.svd(W.numpy(), compute_uv=False)
        assert bound == pytest.approx(float((sigma[K:] ** 2).sum()), rel=1e-9, abs=1e-12)
        assert bound <= kmeans(W.T, K, seed=trial).inertia * (1 + 1e-9)
        for _ in range(5):
            assert bound <= kmeans_error(W, random_assignment(N, K, gen)) * (1 + 1e-9)
        # the relaxation attains its optimum at F = top-K right singular vectors ...
        assert float(trace_form(W, spectral_F(W, K))) == pytest.approx(
            bound, rel=1e-9, abs=1e-10 * float((W**2).sum())
        )
        # ... and any other orthonormal F does no better (Ky Fan)
        Q = torch.linalg.qr(torch.randn(N, min(K, N), generator=gen, dtype=D)).Q
        assert float(trace_form(W, Q)) >= bound * (1 - 1e-9)


def test_spectral_F_is_orthonormal_and_truncated_at_the_rank_bound():
    W = torch.randn(3, 25, dtype=D)
    for K, cols in ((1, 1), (2, 2), (3, 3), (10, 3)):
        F = spectral_F(W, K)
        assert F.shape == (25, cols)
        assert torch.allclose(F.T @ F, torch.eye(cols, dtype=D), atol=1e-12)


def test_randomized_svd_is_close_to_exact():
    gen = torch.Generator().manual_seed(1)
    # a spectrum with a gap after the 5th value, plus noise
    W = (
        torch.randn(40, 300, generator=gen, dtype=D)
        * torch.cat([torch.full((5,), 10.0), torch.full((35,), 0.5)]).to(D)[:, None]
    )
    F, Fr = spectral_F(W, 5), spectral_F(W, 5, randomized=True, seed=3)
    assert Fr.shape == F.shape and torch.allclose(Fr.T @ Fr, torch.eye(5, dtype=D), atol=1e-12)
    assert float(trace_form(W, Fr)) == pytest.approx(relaxed_bound(W, 5), rel=1e-6)
    assert torch.allclose(Fr @ Fr.T, F @ F.T, atol=1e-4)  # the same subspace
    assert torch.equal(Fr, spectral_F(W, 5, randomized=True, seed=3))  # seeded


# ---- the regularizer ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["spectral", "indicator"])
@pytest.mark.parametrize("view, K", [("rows", 2), ("kernels", 3), ("filters", 2)])
def test_penalty_gradient_is_lam_W_times_I_minus_FFt(mode, view, K):
    net, lam = small_net(), 0.7
    reg = KMeansRegularizer(net, lam, K, mode=mode, view=view, layers=[0, 1])
    net.zero_grad()
    reg.penalty().backward()
    for name in ("0", "2"):
        weight = net.get_submodule(name).weight
        W, F = to_matrix(weight.detach(), view), dense_F(reg, name)
        # grad of λ/2‖W(I−FFᵀ)‖² is λ·W(I−FFᵀ)
        expected = from_matrix(lam * (W - W @ F @ F.T), weight.shape, view)
        assert torch.allclose(weight.grad, expected, rtol=1e-10, atol=1e-12)
        assert expected.abs().max() > 1e-3  # the term is not trivially zero here
    assert net.get_submodule("4").weight.grad is None  # an unselected layer


@pytest.mark.parametrize("mode", ["spectral", "indicator"])
def test_penalty_matches_finite_differences_and_plain_autograd(mode):
    net = small_net()
    reg = KMeansRegularizer(net, 1.3, 2, mode=mode, view="rows", layers=[0, 1])
    weights = [net.get_submodule(name).weight for name in ("0", "2")]
    Fs = [reg.state_dict()["layers"][name] for name in ("0", "2")]
    Fs = [
        IndicatorF(F["assignments"], F["num_clusters"]) if "assignments" in F else F["F"]
        for F in Fs
    ]

    def plain(*ws):  # the same penalty by autograd through every op
        return 1.3 / 2 * sum((residual(to_matrix(w, "rows"), F) ** 2).sum() for w, F in zip(ws, Fs))

    def fused(*ws):
        return spectral._Penalty.apply(1.3, "rows", Fs, *ws)

    assert torch.autograd.gradcheck(fused, [w.detach().clone().requires_grad_() for w in weights])
    assert fused(*weights).item() == pytest.approx(plain(*weights).item(), rel=1e-12)
    for g, h in zip(
        torch.autograd.grad(fused(*weights), weights), torch.autograd.grad(plain(*weights), weights)
    ):
        assert torch.allclose(g, h, rtol=1e-10, atol=1e-14)


def test_indicator_penalty_is_half_lam_times_kmeans_error():
    from dkm.clustering import kmeans

    net, lam = small_net(), 2.5
    reg = KMeansRegularizer(net, lam, {0: 4, "2": 3, 2: 5}, mode="indicator", seed=7)
    total, errors = 0.0, reg.layer_errors()
    for index, name in enumerate(["0", "2", "4"]):
        W = to_matrix(net.get_submodule(name).weight.detach(), "rows")
        saved = reg.state_dict()["layers"][name]
        total += kmeans_error(W, saved["assignments"])
        # after a refresh the layer's error is k-means's inertia (seed = seed + conv index)
        result = kmeans(W.T, reg.num_clusters[name], seed=7 + index)
        assert torch.equal(saved["assignments"], result.assignments)
        assert errors[name] == pytest.approx(float(result.inertia), rel=1e-9)
        assert errors[name] == pytest.approx(kmeans_error(W, saved["assignments"]), rel=1e-9)
    assert reg.penalty().item() == pytest.approx(lam / 2 * total, rel=1e-9)


def test_indicator_refresh_warm_starts_lloyd_and_never_raises_the_error():
    from dkm.clustering import kmeans

    net = small_net()
    reg = KMeansRegularizer(net, 1.0, 4, layers=[0], refresh_every=1)
    weight = net.get_submodule("0").weight
    gen = torch.Generator().manual_seed(5)
    for _ in range(5):
        with torch.no_grad():
            weight.add_(0.3 * torch.randn(weight.shape, generator=gen, dtype=D))
        old = reg.state_dict()["layers"]["0"]["assignments"]
        W = to_matrix(weight.detach(), "rows")
        before = reg.layer_errors()["0"]
        assert before == pytest.approx(kmeans_error(W, old), rel=1e-9)
        reg.after_step()
        # reference: Lloyd from the cluster means of the previous assignments
        means = torch.stack(
            [
                W[:, old == k].mean(1) if (old == k).any() else torch.zeros(3, dtype=D)
                for k in range(4)
            ]
        )
        expected = kmeans(W.T, 4, init_centers=means).assignments
        assert torch.equal(reg.state_dict()["layers"]["0"]["assignments"], expected)
        assert reg.layer_errors()["0"] <= before * (1 + 1e-12)


def test_indicator_F_with_a_dominant_cluster_is_kmeans_with_p():
    from dkm.clustering import kmeans

    net = small_net()
    reg = KMeansRegularizer(
        net, 1.0, {0: 4, 1: 1, 2: 3}, p={0: 0.25, 1: 0.5, 2: 0.0}, seed=3, refresh_every=1
    )
    W = to_matrix(
        net.get_submodule("0").weight.detach(), "rows"
    )  # N = 24 rows: 6 in the dominant one
    expected = kmeans(W.T, 4, p=0.25, seed=3)
    saved = reg.state_dict()["layers"]["0"]
    assert (
        torch.equal(saved["assignments"], expected.assignments)
        and int((saved["assignments"] == 0).sum()) == 6
    )
    assert reg.layer_errors()["0"] == pytest.approx(float(expected.inertia), rel=1e-9)
    assert [layer.p for layer in reg._layers] == [0.25, 0.0, 0.0]  # K = 1: no dominant cluster
    with torch.no_grad():
        net.get_submodule("0").weight.add_(0.3)
    reg.after_step()  # refresh: Lloyd warm-started from
    W = to_matrix(net.get_submodule("0").weight.detach(), "rows")  # the K − 1 non-dominant means
    means = torch.stack([W[:, saved["assignments"] == k].mean(1) for k in range(1, 4)])
    again = kmeans(W.T, 4, p=0.25, init_centers=means)
    assert torch.equal(reg.state_dict()["layers"]["0"]["assignments"], again.assignments)


def test_spectral_layer_errors_are_the_relaxed_bound_after_refresh():
    net = small_net()
    reg = KMeansRegularizer(net, 1.0, 2, mode="spectral", view="kernels", layers=[0, 1])
    for name, error in reg.layer_errors().items():
        W = to_matrix(net.get_submodule(name).weight.detach(), "kernels")
        assert error == pytest.approx(relaxed_bound(W, 2), rel=1e-9)


@pytest.mark.parametrize("K", [3, 5])
def test_degenerate_spectral_rows_are_zero_and_warn_once_per_layer(K):
    net = small_net()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        reg = KMeansRegularizer(
            net, 10.0, K, mode="spectral", view="rows", layers=[0, 1], refresh_every=1
        )
        for _ in range(3):
            reg.after_step()  # three refreshes
            net.zero_grad()
            reg.penalty().backward()
    degenerate = [w for w in caught if issubclass(w.category, DegenerateRelaxationWarning)]
    assert len(degenerate) == 2 and all("identically zero" in str(w.message) for w in degenerate)
    for name in ("0", "2"):
        weight = net.get_submodule(name).weight
        assert relaxed_bound(to_matrix(weight.detach(), "rows"), K) == 0.0
        assert not weight.grad.any()  # exactly zero, not rounding noise (issue 14, item 14)
    assert reg.penalty().item() == 0.0
    assert all(error == 0.0 for error in reg.layer_errors().values())


def test_warning_only_at_or_above_the_rank_bound():
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateRelaxationWarning)
        reg = KMeansRegularizer(small_net(), 1.0, 2, mode="spectral", view="rows", layers=[0, 1])
        KMeansRegularizer(
            small_net(), 1.0, 3, mode="spectral", view="kernels", layers=[1]
        )  # N = 4 > 3
        KMeansRegularizer(
            small_net(), 1.0, 2, mode="indicator", view="rows"
        )  # never for indicator F
    assert reg.penalty().item() > 0
    # a 1×1 conv has rows of length s = 1: even K = 2 is degenerate
    with pytest.warns(
        DegenerateRelaxationWarning,
        match=r"layer '4'.*num_clusters=2 ≥ rank bound min\(s, N\)=1.*"
        r"zero; use another view or mode='indicator'",
    ):
        KMeansRegularizer(small_net(), 1.0, 2, mode="spectral", view="rows", layers=[2])


def sgd_step(net, reg):
    net.zero_grad()
    (reg.penalty() + sum((p**3).sum() for p in net.parameters())).backward()
    with torch.no_grad():
        for p in net.parameters():
            p -= 0.01 * p.grad
    reg.after_step()


@pytest.mark.filterwarnings("ignore::dkm.regularizer.DegenerateRelaxationWarning")  # the 1×1 conv
def test_spectral_F_changes_only_every_refresh_every_steps():
    net = small_net()
    reg = KMeansRegularizer(net, 1.0, 2, mode="spectral", view="rows", refresh_every=3)
    changed = []
    for step in range(1, 10):
        before = dense_F(reg, "0").clone()
        sgd_step(net, reg)
        changed.append(not torch.equal(before, dense_F(reg, "0")))
    assert changed == [step % 3 == 0 for step in range(1, 10)]
    assert reg.step == 9


def test_indicator_refreshes_only_every_refresh_every_steps(monkeypatch):
    calls = []
    original = spectral.indicator_F
    monkeypatch.setattr(
        spectral, "indicator_F", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    net = small_net()
    reg = KMeansRegularizer(net, 1.0, 2, refresh_every=4, layers=["0"])
    counts = []
    for _ in range(9):
        sgd_step(net, reg)
        counts.append(len(calls))
    assert counts == [1, 1, 1, 2, 2, 2, 2, 3, 3]  # 1 at construction, then at steps 4 and 8


@pytest.mark.filterwarnings("ignore::dkm.regularizer.DegenerateRelaxationWarning")  # the 1×1 conv
@pytest.mark.parametrize("mode", ["spectral", "indicator"])
def test_state_dict_round_trip(mode):
    net = small_net()
    reg = KMeansRegularizer(net, 0.3, 2, mode=mode, refresh_every=2)
    for _ in range(3):
        sgd_step(net, reg)
    buffer = io.BytesIO()
    torch.save(reg.state_dict(), buffer)
    weight, saved = net.get_submodule("0").weight, net.get_submodule("0").weight.detach().clone()
    with torch.no_grad():  # a different F before loading
        weight.add_(torch.randn_like(weight))
    other = KMeansRegularizer(net, 0.3, 2, mode=mode, refresh_every=2)
    with torch.no_grad():
        weight.copy_(saved)
    assert other.penalty().item() != reg.penalty().item()
    buffer.seek(0)
    other.load_state_dict(torch.load(buffer))
    assert other.step == 3 and other.penalty().item() == reg.penalty().item()
    sgd_step(net, reg), other.after_step()  # both refresh at step 4, from the same weights
    assert other.penalty().item() == reg.penalty().item()


@pytest.mark.filterwarnings("ignore::dkm.regularizer.DegenerateRelaxationWarning")  # the 1×1 conv
def test_layers_by_name_or_index_and_randomized_svd_agree():
    net = small_net()
    by_index = KMeansRegularizer(net, 1.0, {1: 3}, mode="spectral", view="kernels", layers=1)
    by_name = KMeansRegularizer(
        net, 1.0, {"2": 3}, mode="spectral", view="kernels", layers=["2"], randomized=True
    )
    assert by_index.layer_names == by_name.layer_names == ["2"] and by_index.num_clusters == {
        "2": 3
    }
    assert by_name.penalty().item() == pytest.approx(by_index.penalty().item(), rel=1e-9)


@pytest.mark.filterwarnings("ignore::dkm.regularizer.DegenerateRelaxationWarning")  # the 1×1 conv
def test_float32_net_and_penalty_dtype():
    net = small_net(torch.float32)
    for mode in ("spectral", "indicator"):
        p = KMeansRegularizer(net, 1.0, 2, mode=mode).penalty()
        assert p.dtype == torch.float32 and p.requires_grad


# ---- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lam=-1.0), r"lam=-1\.0 .*0\.0 ≤ lam"),
        (dict(lam=float("nan")), r"lam=nan is not finite"),
        (dict(refresh_every=0), r"refresh_every=0 .*1 ≤ refresh_every"),
        (dict(num_clusters=0), r"num_clusters\['0'\]=0 .*1 ≤ num_clusters\['0'\] ≤ 24"),
        (dict(num_clusters=25), r"num_clusters\['0'\]=25 .*≤ 24"),
        (dict(num_clusters=7, view="filters"), r"num_clusters\['0'\]=7 .*≤ 4"),
        (dict(mode="hard"), r"mode='hard'.*'spectral', 'indicator'"),
        (dict(view="cols"), r"view='cols'.*'rows', 'kernels', 'filters'"),
        (dict(layers=["conv9"]), r"layers: unknown layer name 'conv9'.*\['0', '2', '4'\]"),
        (dict(layers=[3]), r"layers=3 .*0 ≤ layers ≤ 2"),
        (dict(layers=[0, "0"]), r"layers=\[0, '0'\] must select .* each once"),
        (dict(layers=[]), r"layers=\[\] must select at least one"),
        (dict(num_clusters={0: 2, 1: 2}), r"num_clusters=.*missing \['4'\]"),
        (
            dict(num_clusters={0: 2, 1: 2, 2: 2}, layers=[0, 1]),
            r"num_clusters=.*not selected \['4'\]",
        ),
        (dict(num_clusters={"x": 2}), r"num_clusters: unknown layer name 'x'"),
        (dict(p=1.0), r"p\['0'\]=1.0 .*0 ≤ p\['0'\] < 1"),
        (dict(p=0.5, mode="spectral"), r"p\['0'\]=0.5: a dominant cluster needs mode='indicator'"),
        (dict(p={0: 0.1}), r"p=.*missing \['2', '4'\]"),
    ],
)
def test_bad_regularizer_arguments_name_the_parameter(kwargs, match):
    args = dict(lam=1.0, num_clusters=2) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        KMeansRegularizer(small_net(), args.pop("lam"), args.pop("num_clusters"), **args)


def test_net_without_conv_and_non_finite_weights():
    with pytest.raises(ValueError, match=r"net \(Linear\) has no nn\.Conv2d"):
        KMeansRegularizer(nn.Linear(3, 3), 1.0, 2)
    net = small_net()
    reg = KMeansRegularizer(net, 1.0, 2)
    with torch.no_grad():
        net.get_submodule("2").weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"weight of layer '2' has 1 non-finite"):
        reg.refresh()


@pytest.mark.filterwarnings("ignore::dkm.regularizer.DegenerateRelaxationWarning")  # the 1×1 conv
def test_load_state_dict_mismatch():
    net = small_net()
    spec = KMeansRegularizer(net, 1.0, 2, mode="spectral").state_dict()
    ind = KMeansRegularizer(net, 1.0, 2, mode="indicator")
    with pytest.raises(
        ValueError, match=r"state\['mode'\]='spectral': allowed only .* mode='indicator'"
    ):
        ind.load_state_dict(spec)
    partial = ind.state_dict()
    del partial["layers"]["4"]
    with pytest.raises(
        ValueError, match=r"state has layers \['0', '2'\]: allowed exactly \['0', '2', '4'\]"
    ):
        KMeansRegularizer(net, 1.0, 2).load_state_dict(partial)
    with pytest.raises(
        ValueError, match=r"state F of layer '0' has shape \(24, 2\): allowed \(24, 3\)"
    ):
        KMeansRegularizer(net, 1.0, 3, mode="spectral").load_state_dict(spec)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: relaxed_bound(torch.randn(3, 5), 0), r"num_clusters=0 .*1 ≤ num_clusters ≤ 5"),
        (lambda: relaxed_bound(torch.randn(3, 5), 6), r"num_clusters=6 .*≤ 5"),
        (lambda: spectral_F(torch.randn(5), 2), r"W must be a 2-D tensor"),
        (lambda: spectral_F(torch.full((3, 5), float("inf")), 2), r"W has 15 non-finite"),
        (
            lambda: spectral_F(torch.randn(3, 5), 2, randomized=True, oversample=-1),
            r"oversample=-1 .*0 ≤ oversample",
        ),
        (lambda: spectral_F(torch.randn(3, 5), 2, randomized=True, n_iter=-2), r"n_iter=-2"),
        (lambda: indicator_F(torch.randn(3, 5), 9), r"num_clusters=9 .*≤ 5"),
        (
            lambda: indicator_matrix(torch.tensor([0, 3]), 3),
            r"assignments has values in \[0, 3\]: allowed 0 ≤ a < num_clusters=3",
        ),
        (
            lambda: indicator_matrix(torch.tensor([0.0, 1.0]), 3),
            r"assignments must be a 1-D integer tensor",
        ),
        (lambda: indicator_matrix(torch.tensor([0, 1]), 0), r"num_clusters=0 .*1 ≤ num_clusters"),
        (
            lambda: kmeans_error(torch.randn(3, 5), torch.tensor([0, 1])),
            r"assignments has 2 entries: allowed exactly N=5",
        ),
        (
            lambda: kmeans_error(torch.randn(3, 2), torch.tensor([0, -1])),
            r"assignments has values in \[-1, 0\]",
        ),
    ],
)
def test_bad_function_arguments_name_the_parameter(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_the_trace_form_at_k_at_least_the_rank_is_zero_not_rounding_noise():  # issue 37, D11
    gen = torch.Generator().manual_seed(3)
    for trial in range(20):
        W = torch.randn(3, 500, generator=gen) * 10.0 ** (trial % 5)
        value = float(trace_form(W, spectral_F(W, 3)))  # K = rank: the relaxation is exact, 0
        assert 0.0 <= value <= 1e-4 * float((W * W).sum())
        assert float(trace_form(W, spectral_F(W, 3))) >= 0.0
