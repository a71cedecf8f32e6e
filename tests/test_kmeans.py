"""dkm.clustering against references: scikit-learn's KMeans, brute-force distances, hand
computations."""

import math

import numpy as np
import pytest
import torch
from sklearn.cluster import KMeans

from dkm import clustering as km
from dkm.fast import paths
from dkm.clustering import INITS, KMeansResult, assign, init_centers, kmeans


def normal(N, s, seed=0, dtype=torch.float32):
    return torch.randn(N, s, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def brute_sq_dists(X, codebook):
    """(N, K) squared distances in float64, the slow obvious way."""
    return ((X.double()[:, None, :] - codebook.double()[None, :, :]) ** 2).sum(-1)


def assert_consistent(X, result: KMeansResult):
    """Assignments are nearest centers and the inertia is their brute-force sum of squared
    distances."""
    d = brute_sq_dists(X, result.codebook)
    chosen = d.gather(1, result.assignments[:, None])[:, 0]
    scale = float((X.double() ** 2).sum(1).max() + (result.codebook.double() ** 2).sum(1).max())
    assert (chosen <= d.min(1).values + 1e-5 * scale).all()
    assert result.inertia == pytest.approx(float(chosen.sum()), rel=1e-9, abs=1e-12)
    assert result.assignments.dtype == torch.int64 and result.codebook.dtype == X.dtype


# ---- against scikit-learn ------------------------------------------------------------------


@pytest.mark.parametrize("N,s", [(500, 1), (2000, 3), (1000, 9), (300, 27)])
@pytest.mark.parametrize("K", [2, 8, 32])
def test_inertia_matches_sklearn_from_the_same_centers(N, s, K):
    X = normal(N, s, seed=N + s + K)
    start = init_centers(X, K, "kmeans++", seed=K)
    ours = kmeans(X, K, init_centers=start, max_iter=100, tol=1e-4)
    ref = KMeans(
        n_clusters=K, init=start.numpy(), n_init=1, algorithm="lloyd", tol=1e-4, max_iter=100
    ).fit(X.numpy())
    assert ours.inertia == pytest.approx(ref.inertia_, rel=0.01)
    assert_consistent(X, ours)


@pytest.mark.parametrize("init", INITS)
def test_every_init_then_lloyd_matches_sklearn(init):
    X = normal(1500, 3, seed=4)
    start = init_centers(X, 16, init, seed=2)
    ours = kmeans(X, 16, init_centers=start)
    ref = KMeans(
        n_clusters=16, init=start.numpy(), n_init=1, algorithm="lloyd", tol=1e-4, max_iter=100
    ).fit(X.numpy())
    assert ours.inertia == pytest.approx(ref.inertia_, rel=0.01)
    assert ours.n_iter == ref.n_iter_  # same stopping rule, same trajectory
    assert_consistent(X, ours)


def test_init_name_equals_explicit_centers():
    X = normal(800, 3, seed=9)
    by_name = kmeans(X, 8, init="density", seed=3)
    explicit = kmeans(X, 8, init_centers=init_centers(X, 8, "density", seed=3))
    assert torch.equal(by_name.codebook, explicit.codebook)


def test_float64_is_kept_and_agrees_with_float32():
    X = normal(1000, 3, seed=5, dtype=torch.float64)
    r64 = kmeans(X, 8, seed=1)
    r32 = kmeans(X.float(), 8, seed=1)
    assert r64.codebook.dtype == torch.float64
    assert_consistent(X, r64)
    assert r64.inertia == pytest.approx(r32.inertia, rel=1e-3)


def test_max_iter_is_respected_and_result_stays_consistent():
    X = normal(3000, 3, seed=6)
    result = kmeans(X, 32, max_iter=2, tol=0.0, seed=0)
    assert result.n_iter == 2
    assert_consistent(X, result)


# ---- assignment --------------------------------------------------------------------------------


@pytest.mark.parametrize("N,s,K", [(1000, 1, 7), (1000, 3, 64), (300, 27, 5), (50, 2, 1)])
def test_assign_is_the_brute_force_nearest_center(N, s, K):
    X, codebook = normal(N, s, seed=1), normal(K, s, seed=2)
    assignments, sq_dists = assign(X, codebook)
    d = brute_sq_dists(X, codebook)
    assert torch.equal(assignments, d.argmin(1))
    assert torch.allclose(sq_dists.double(), d.min(1).values, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("K", [1, 2, 3, 4, 5, 64, 127, 128, 129, 300])
def test_sorted_labelling_is_the_brute_force_nearest_center_for_every_K(K):
    """Every branch of the compiled s = 1 labelling (2–3 thresholds in registers, all compared, in
    blocks of 16), with duplicate centers and rows exactly on midpoints: the lowest index among the
    nearest, and the inertia summed in row order (K > 4) or to float64 accuracy (K ≤ 4)."""
    centers = torch.round(normal(K, 1, seed=K) * 8) / 8  # duplicates among them for larger K
    mids = (centers[:-1] + centers[1:]) / 2  # exactly representable: rows on the midpoints
    X = torch.cat([normal(3000, 1, seed=K + 1), mids, centers]).contiguous()
    assignments, inertia = paths.label_sorted(X[:, 0].numpy(), centers[:, 0].numpy())
    d = brute_sq_dists(X, centers)
    nearest = (d == d.min(1, keepdim=True).values).float().argmax(1)  # lowest index of the ties
    assert np.array_equal(assignments, nearest.numpy())
    own = (X[:, 0].double() - centers[:, 0].double()[nearest]) ** 2
    if K > 4 or not km._nb.AVAILABLE:
        assert inertia == float(np.cumsum(own.numpy())[-1])  # in row order, to the last bit
    # K ≤ 4 (compiled): a vectorized order; any order of n terms ≥ 0 is within (n − 1)·eps of
    # the exactly rounded sum (math.fsum), relative
    exact = math.fsum(own.tolist())
    assert abs(inertia - exact) <= (len(own) - 1) * np.finfo(np.float64).eps * exact


@pytest.mark.skipif(not km._nb.AVAILABLE, reason="the compiled kernels need numba")
@pytest.mark.parametrize("N", [1, 63, 64, 65, 128, 1000])
def test_block_prefix_sums_are_the_running_sum_and_the_variance(N):
    xs = np.sort(normal(N, 1, seed=N)[:, 0].numpy() * 3 + 100)  # far from 0: a shifted variance
    running = np.concatenate([[0.0], np.cumsum(xs, dtype=np.float64)])
    blocks, variance = km._nb.block_prefix(xs)
    assert np.array_equal(km._nb.prefix_at(xs, blocks, np.arange(N + 1)), running)  # bit for bit
    assert variance == pytest.approx(np.var(xs, dtype=np.float64), rel=1e-9, abs=1e-12)


@pytest.mark.skipif(not km._nb.AVAILABLE, reason="the compiled kernels need numba")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_sorted_centers_are_the_numpy_ones_bit_for_bit(dtype):
    """Duplicate centers (labels to the lowest index), midpoints exactly representable or not,
    neighbours one ulp apart, a single center."""
    rng = np.random.default_rng(0)
    cases = [np.array([0.25]), np.array([1.0, np.nextafter(1.0, 2.0)])]
    for K in (2, 3, 4, 7, 16, 65):
        cases.append(np.round(rng.standard_normal(K) * 4) / 4)  # duplicates, exact midpoints
        cases.append(rng.standard_normal(K))
    for c in cases:
        c = c.astype(torch.empty(0, dtype=dtype).numpy().dtype)
        if dtype == torch.float32:  # neighbours one float32 ulp apart
            c = np.append(c, np.nextafter(c[:1], np.float32(np.inf)))
        t_np, l_np = paths.sorted_centers(c)
        t_nb, l_nb = km._nb.sorted_centers(c)
        assert t_nb.dtype == t_np.dtype and np.array_equal(t_nb, t_np)
        assert np.array_equal(l_nb, l_np)


@pytest.mark.skipif(not km._nb.AVAILABLE, reason="the compiled kernels need numba")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_compiled_sorted_iterations_equal_lloyds_loop(monkeypatch, dtype):
    """_nb.sorted_lloyd against _lloyd's own loop (compiled_loop off), bit for bit: stops by
    tol, by max_iter, settled, and empty clusters handed back to the loop (few distinct rows)."""
    g = torch.Generator().manual_seed(5)
    data = [
        torch.randn(3000, 1, generator=g, dtype=dtype),
        torch.randn(3000, 1, generator=g, dtype=dtype) ** 3,
        torch.randint(0, 3, (500, 1), generator=g).to(dtype),  # 3 distinct rows
    ]
    runs = []
    for compiled in (True, False):
        monkeypatch.setattr(paths.Sorted, "compiled_loop", compiled)
        runs.append(
            [
                kmeans(X, K, init=init, tol=tol, max_iter=max_iter, seed=1)
                for X in data
                for K in (1, 2, 4, 5, 16)
                for init in ("kmeans++", "random")
                for tol in (0.0, 1e-4, 1e-1)
                for max_iter in (1, 2, 100)
            ]
        )
    for a, b in zip(*runs):
        assert torch.equal(a.codebook, b.codebook) and a.codebook.dtype == dtype
        assert torch.equal(a.assignments, b.assignments)
        assert a.n_iter == b.n_iter and a.inertia == b.inertia
    assert len({r.n_iter for r in runs[0]}) > 3  # the stops differ among the cases


def test_sorted_path_equals_the_device_path_with_duplicate_centers():
    X = normal(2000, 1, seed=3)
    codebook = torch.tensor([[0.5], [-1.0], [0.5], [2.0], [-1.0], [0.0]])  # 0.5 and -1.0 twice
    a_sorted, d_sorted = paths.assign_sorted(X, codebook)
    a_blocks, d_blocks = km._nearest_blocks(X, codebook)
    assert torch.equal(a_sorted, a_blocks)  # ties go to the lowest index in both
    assert torch.equal(d_sorted, d_blocks)
    assert not (a_sorted == 2).any() and not (a_sorted == 4).any()


@pytest.mark.parametrize("init", ["kmeans++", "linear", "random"])
def test_s1_fast_path_equals_the_general_path(init):
    # a zero second coordinate leaves every distance unchanged
    # but sends k-means down the general path
    X = normal(500, 1, seed=8)
    start = init_centers(X, 8, init, seed=1)
    fast = kmeans(X, 8, init_centers=start)
    padded = kmeans(
        torch.cat([X, torch.zeros_like(X)], 1),
        8,
        init_centers=torch.cat([start, torch.zeros_like(start)], 1),
    )
    assert torch.equal(fast.assignments, padded.assignments)
    assert torch.allclose(fast.codebook[:, 0], padded.codebook[:, 0], atol=1e-6)
    assert fast.n_iter == padded.n_iter
    assert fast.inertia == pytest.approx(padded.inertia, rel=1e-6)


# ---- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("init", ["kmeans++", "random"])
def test_same_seed_same_result_other_seed_other_result(init):
    X = normal(1000, 3, seed=10)
    a, b, c = (kmeans(X, 16, init=init, seed=seed) for seed in (4, 4, 5))
    assert torch.equal(a.codebook, b.codebook) and torch.equal(a.assignments, b.assignments)
    assert not torch.equal(a.codebook, c.codebook)


def test_global_rng_and_thread_count_are_left_alone():
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    kmeans(normal(500, 3), 8, init="kmeans++", seed=1)
    init_centers(normal(500, 3), 8, "random", seed=1)
    assert torch.equal(state, torch.random.get_rng_state())
    assert torch.get_num_threads() == threads
    two = kmeans(normal(5000, 3, seed=2), 8, seed=1, threads=2)
    one = kmeans(normal(5000, 3, seed=2), 8, seed=1)
    # the rows of each iteration split among threads, the moves applied in row order: same bits
    assert torch.equal(one.assignments, two.assignments) and torch.equal(one.codebook, two.codebook)
    assert one.inertia == two.inertia and one.n_iter == two.n_iter
    assert torch.get_num_threads() == threads
    with pytest.raises(ValueError, match="threads=0"):
        kmeans(normal(50, 3), 4, threads=0)


# ---- dominant cluster (the authors' p) ------------------------------------------------------


def test_dominant_cluster_is_the_rows_nearest_the_mean_row():
    X, K, p = normal(1000, 3, seed=11), 6, 0.37
    result = kmeans(X, K, p=p, seed=2)
    size = int(1000 * p)
    dist = ((X.double() - X.double().mean(0)) ** 2).sum(1)
    nearest = set(torch.argsort(dist)[:size].tolist())
    in_zero = set(torch.nonzero(result.assignments == 0)[:, 0].tolist())
    assert in_zero == nearest
    assert torch.allclose(result.codebook[0], X[sorted(nearest)].mean(0), atol=1e-6)
    # the other rows: exactly a (K − 1)-means of them, shifted to indexes 1..K−1
    rest = torch.ones(1000, dtype=torch.bool)
    rest[sorted(nearest)] = False
    sub = kmeans(X[rest], K - 1, seed=2)
    assert torch.equal(result.codebook[1:], sub.codebook)
    assert torch.equal(result.assignments[rest], sub.assignments + 1)
    assert result.codebook.shape == (K, 3) and set(result.assignments.tolist()) == set(range(K))
    assert result.inertia == pytest.approx(
        float(brute_sq_dists(X, result.codebook).gather(1, result.assignments[:, None]).sum()),
        rel=1e-9,
    )


def test_dominant_cluster_with_explicit_centers_for_the_rest():
    X = normal(400, 3, seed=12)
    start = normal(3, 3, seed=13)
    result = kmeans(X, 4, p=0.5, init_centers=start)
    assert int((result.assignments == 0).sum()) == 200
    with pytest.raises(ValueError, match=r"init_centers has shape \(4, 3\): allowed \(3, 3\)"):
        kmeans(X, 4, p=0.5, init_centers=normal(4, 3))


# ---- empty clusters and degenerate data -----------------------------------------------------


STATES = {
    "compiled": lambda X, C: paths.Compiled(X, C, 1),
    "blocks": km._Blocks,
}


@pytest.mark.parametrize("path", list(STATES))
def test_empty_cluster_takes_the_farthest_row_by_hand(path):
    X = torch.tensor([[0.0, 0.0], [0.0, 1.0], [5.0, 0.0], [20.0, 0.0]])
    centers = torch.tensor([[0.0, 0.5], [5.0, 0.0], [100.0, 100.0]])  # cluster 2 gets no row
    state = STATES[path](X, centers)
    assert state.counts.tolist() == [2, 2, 0]
    # squared distances to own centers: 0.25, 0.25, 0, 15² = 225 -> row 3 re-seeds cluster 2
    new = state.means(centers)
    assert torch.equal(new, torch.tensor([[0.0, 0.5], [5.0, 0.0], [20.0, 0.0]]))
    result = kmeans(X, 3, init_centers=centers)
    assert result.assignments.tolist() == [0, 0, 1, 2] and result.inertia == pytest.approx(0.5)


def test_empty_cluster_by_hand_on_the_sorted_path():
    X = torch.tensor([[0.0], [1.0], [5.0], [20.0]])
    centers = torch.tensor([[0.5], [5.0], [100.0]])  # cluster 2 gets no row
    state = paths.Sorted(X, centers)
    # the compiled iterations stop before the first one: a cluster is empty
    assert state.iterate(centers, 100, 0.0)[1:] == (0, False, False)
    assert state.counts.tolist() == [2, 2, 0]
    # squared distances to own centers: 0.25, 0.25, 0, 15² = 225 -> row 3 re-seeds cluster 2
    assert torch.equal(state.means(centers), torch.tensor([[0.5], [5.0], [20.0]]))
    result = kmeans(X, 3, init_centers=centers)
    assert result.assignments.tolist() == [0, 0, 1, 2] and result.inertia == pytest.approx(0.5)


def test_empty_cluster_reseeding_matches_sklearn():
    blobs = torch.cat([normal(300, 2, seed=s) * 0.1 + 4 * s for s in range(4)])
    start = torch.cat(
        [blobs[[0, 300, 600]], torch.full((3, 2), 50.0)]
    )  # 3 centers far from every row
    ours = kmeans(blobs, 6, init_centers=start)
    ref = KMeans(n_clusters=6, init=start.numpy(), n_init=1, algorithm="lloyd").fit(blobs.numpy())
    assert torch.bincount(ours.assignments, minlength=6).min() > 0
    assert ours.inertia == pytest.approx(ref.inertia_, rel=0.01)
    assert_consistent(blobs, ours)


@pytest.mark.parametrize("init", INITS)
def test_fewer_distinct_rows_than_clusters(init):
    distinct = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 3.0], [-4.0, 0.0, 1.0]])
    X = distinct.repeat(10, 1)
    result = kmeans(X, 5, init=init, seed=1, max_iter=50)
    assert result.codebook.shape == (5, 3) and torch.isfinite(result.codebook).all()
    assert result.inertia == pytest.approx(0.0, abs=1e-10)  # every row sits on a center
    assert result.n_iter <= 50
    assert_consistent(X, result)


@pytest.mark.parametrize("init", INITS)
def test_all_rows_equal(init):
    X = torch.full((12, 3), 0.25)
    result = kmeans(X, 4, init=init)
    assert torch.equal(result.codebook, torch.full((4, 3), 0.25)) and result.inertia == 0.0


# ---- initializations ---------------------------------------------------------------------------


def test_linear_init_s1_is_linspace_of_the_weight_range():
    X = normal(300, 1, seed=14)
    centers = init_centers(X, 9, "linear")
    assert torch.equal(centers[:, 0], torch.linspace(float(X.min()), float(X.max()), 9))


def test_linear_init_is_evenly_spaced_along_the_first_principal_direction():
    X = normal(500, 3, seed=15) * torch.tensor([3.0, 1.0, 0.3]) + torch.tensor([1.0, -2.0, 0.5])
    centers = init_centers(X, 7, "linear").double()
    steps = centers[1:] - centers[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-5)
    Xc = X.double().numpy() - X.double().numpy().mean(0)
    v = np.linalg.svd(Xc, full_matrices=False)[2][0]  # numpy's first principal direction
    assert abs(abs(float(steps[0] @ torch.from_numpy(v))) - float(steps[0].norm())) < 1e-6
    t = Xc @ v
    ends = (centers[[0, -1]].numpy() - X.double().numpy().mean(0)) @ v
    assert sorted(ends) == pytest.approx([t.min(), t.max()], abs=1e-4)


def test_density_init_is_the_means_of_equal_mass_bins():
    X = normal(1003, 1, seed=16)
    values = np.sort(X[:, 0].double().numpy())
    bins = np.arange(1003) * 10 // 1003
    expected = [values[bins == k].mean() for k in range(10)]
    assert init_centers(X, 10, "density")[:, 0].double().numpy() == pytest.approx(
        expected, abs=1e-5
    )


@pytest.mark.parametrize("s", [1, 3])
def test_density_init_puts_more_centers_where_the_weights_are_dense(s):
    # 90% of the rows in a narrow blob at 0, 10% in a wide blob at 10 along the first axis
    X = torch.cat([normal(900, s, seed=17) * 0.1, normal(100, s, seed=18) + 10 * torch.eye(s)[0]])

    def near_dense(C):
        return int((C[:, 0] < 5).sum())

    assert near_dense(init_centers(X, 10, "density")) >= 8
    assert near_dense(init_centers(X, 10, "linear")) <= 6


def test_kmeanspp_picks_rows_one_per_separated_blob():
    X = torch.cat([normal(50, 3, seed=s) * 0.01 + 10 * s for s in range(8)])
    for seed in range(5):
        centers = init_centers(X, 8, "kmeans++", seed=seed)
        assert (brute_sq_dists(centers, X).min(1).values == 0).all()  # every center is a row
        assert sorted((centers[:, 0] / 10).round().long().tolist()) == list(range(8))


def test_random_init_picks_distinct_rows():
    X = normal(40, 2, seed=19)
    centers = init_centers(X, 40, "random", seed=3)
    assert (brute_sq_dists(centers, X).min(1).values == 0).all()
    assert len({tuple(r) for r in centers.tolist()}) == 40


# ---- bad input ---------------------------------------------------------------------------------

X10 = normal(10, 3)

BAD = [
    (lambda: kmeans(X10, 0), ValueError, r"num_clusters=0 .*1 ≤ num_clusters ≤ 10"),
    (lambda: kmeans(X10, 11), ValueError, r"num_clusters=11 .*≤ 10"),
    (lambda: kmeans(X10, 2.5), TypeError, r"num_clusters must be an integer"),
    (lambda: kmeans(X10, 2, p=1.0), ValueError, r"p=1.0 .*0.0 ≤ p < 1.0"),
    (lambda: kmeans(X10, 2, p=-0.1), ValueError, r"p=-0.1"),
    (lambda: kmeans(X10, 1, p=0.5), ValueError, r"num_clusters=1 .*num_clusters ≥ 2 when p > 0"),
    (lambda: kmeans(X10, 2, p=0.05), ValueError, r"p=0.05 puts int\(N·p\)=0 of N=10"),
    (lambda: kmeans(X10, 5, p=0.7), ValueError, r"p=0.7 puts int\(N·p\)=7 .*= 6"),
    (lambda: kmeans(X10, 2, max_iter=0), ValueError, r"max_iter=0 .*1 ≤ max_iter"),
    (lambda: kmeans(X10, 2, tol=-1e-3), ValueError, r"tol=-0.001 .*0.0 ≤ tol"),
    (lambda: kmeans(X10, 2, seed=-1), ValueError, r"seed=-1"),
    (
        lambda: kmeans(X10, 2, init="kmeans"),
        ValueError,
        r"init='kmeans' .*'kmeans\+\+', 'linear', 'density', 'random'",
    ),
    (lambda: kmeans(torch.tensor([[0.0, float("nan")]] * 3), 2), ValueError, r"X has 3 non-finite"),
    (lambda: kmeans(torch.tensor([[0.0, float("inf")]] * 3), 2), ValueError, r"X has 3 non-finite"),
    (lambda: kmeans(torch.zeros(10), 2), ValueError, r"X has shape \(10,\): allowed a 2-D"),
    (lambda: kmeans(torch.zeros(2, 3, 4), 2), ValueError, r"X has shape \(2, 3, 4\)"),
    (lambda: kmeans(torch.zeros(0, 3), 1), ValueError, r"X has shape \(0, 3\)"),
    (
        lambda: kmeans(torch.zeros(5, 3, dtype=torch.int64), 2),
        TypeError,
        r"X has dtype torch.int64",
    ),
    (
        lambda: kmeans(X10, 2, init_centers=torch.zeros(3, 3)),
        ValueError,
        r"init_centers has shape \(3, 3\): allowed \(2, 3\)",
    ),
    (
        lambda: kmeans(X10, 2, init_centers=torch.full((2, 3), float("nan"))),
        ValueError,
        r"init_centers has 6 non-finite",
    ),
    (lambda: init_centers(X10, 2, "bogus"), ValueError, r"init='bogus'"),
    (lambda: init_centers(X10, 20), ValueError, r"num_clusters=20"),
    (
        lambda: assign(X10, torch.zeros(2, 4)),
        ValueError,
        r"codebook has rows of length 4: allowed s=3",
    ),
    (lambda: assign(X10, torch.zeros(4)), ValueError, r"codebook has shape \(4,\)"),
]


@pytest.mark.parametrize("call,error,message", BAD)
def test_bad_input_names_the_parameter(call, error, message):
    with pytest.raises(error, match=message):
        call()


# ---- exactly nearest, every path the same, thread safety (issue 15) -------------------------


def test_far_from_the_origin_the_nearest_center_is_exact():
    # rows and centers near 1000: the expansion ‖x‖² − 2x·c + ‖c‖² in float32 has rounding errors
    # of ~1e-1 there, larger than the gaps between these distances; float64 differences do not
    X = 1000.0 + normal(3000, 3, seed=21) * 0.01
    codebook = 1000.0 + normal(16, 3, seed=22) * 0.01
    expansion = (codebook * codebook).sum(1) - 2.0 * X @ codebook.T  # what a matmul path compares
    exact = brute_sq_dists(X, codebook).argmin(1)
    assert (expansion.argmin(1) != exact).sum() > 100  # the case is a real one
    for path in (paths.nearest_compiled, km._nearest_blocks):
        assert torch.equal(path(X, codebook)[0], exact)
    assert torch.equal(assign(X, codebook)[0], exact)
    result = kmeans(X, 16, init_centers=codebook, max_iter=20)
    assert torch.equal(result.assignments, brute_sq_dists(X, result.codebook).argmin(1))


def test_sorted_path_decides_midpoints_exactly():
    # c1 = 1, c2 = 1 + 3 ulp: their float32 midpoint rounds to 1 + 2 ulp, so a midpoint compared in
    # float32 sends x = 1 + 2 ulp to c1, though it is 1 ulp from c2 and 2 ulp from c1
    ulp = float(np.spacing(np.float32(1.0)))
    c = torch.tensor([[1.0], [1.0 + 3 * ulp]])
    x = torch.tensor([[1.0 + k * ulp] for k in range(-2, 6)])
    assert float((c[0, 0] + c[1, 0]) / 2) == 1.0 + 2 * ulp  # the float32 midpoint is off
    assignments = assign(x, c)[0]
    assert assignments.tolist() == brute_sq_dists(x, c).argmin(1).tolist()
    assert assignments.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # 1 + 1.5 ulp: the midpoint
    # the audit's case (issue 14): 0.093232945 is 1e-8 nearer the second center
    codebook, row = torch.tensor([[0.08170384], [0.10476204]]), torch.tensor([[0.093232945]])
    assert brute_sq_dists(row, codebook).argmin(1).tolist() == [1]
    assert assign(row, codebook)[0].tolist() == [1]
    assert (
        kmeans(torch.cat([row, codebook]), 2, init_centers=codebook, max_iter=1).assignments[0] == 1
    )


def _fit_by(monkeypatch, path, X, K, start):
    """kmeans through one chosen path: sorted (s = 1), compiled or blocks."""
    with monkeypatch.context() as m:
        if path == "blocks":
            m.setattr(km, "_state", lambda X, C, threads: km._Blocks(X, C))
        return kmeans(X, K, init_centers=start, max_iter=100, tol=1e-4)


@pytest.mark.parametrize(
    "case",
    ["s1", "s1 duplicates", "s1 empty", "s3", "s3 empty", "s9 float64"],
)
def test_every_path_gives_the_same_fit(monkeypatch, case):
    """The sorted path (s = 1), the compiled path (s > 1) and the device path (torch, any device;
    here on the CPU) give the same assignments and iterations, and centers within float rounding."""
    s = int(case[1])
    X = normal(3000, s, seed=30 + s, dtype=torch.float64 if "float64" in case else torch.float32)
    start = init_centers(X, 12, "kmeans++", seed=3)
    if "duplicates" in case:
        X = torch.round(X * 4) / 4  # many equal rows
        start = torch.round(start * 4) / 4
    if "empty" in case:
        start[-3:] = 50.0  # three centers far from every row
    ours = _fit_by(monkeypatch, "default", X, 12, start)
    device = _fit_by(monkeypatch, "blocks", X, 12, start)
    assert torch.equal(ours.assignments, device.assignments)
    assert ours.n_iter == device.n_iter
    assert torch.allclose(ours.codebook, device.codebook, rtol=0, atol=1e-6)
    assert ours.inertia == pytest.approx(device.inertia, rel=1e-9)
    assert_consistent(X, ours)


def test_without_numba_the_same_fit_and_seeding(monkeypatch):
    X = normal(4000, 3, seed=40)
    seeds, ours = init_centers(X, 16, seed=5), kmeans(X, 16, seed=5)
    monkeypatch.setattr(km._nb, "AVAILABLE", False)  # the GPU machine's case: torch and numpy only
    assert torch.equal(init_centers(X, 16, seed=5), seeds)  # numpy's D² picks the same rows
    plain = kmeans(X, 16, seed=5)
    assert torch.equal(ours.assignments, plain.assignments) and ours.n_iter == plain.n_iter
    assert torch.allclose(ours.codebook, plain.codebook, rtol=0, atol=1e-6)


def test_two_kmeans_in_two_python_threads_at_once():
    import threading

    jobs = {
        "a": (normal(60_000, 3, seed=50), 32, 2),
        "b": (normal(80_000, 1, seed=51), 16, 1),
        "c": (normal(40_000, 9, seed=52), 8, 1),
    }
    alone = {name: kmeans(X, K, seed=1, threads=t) for name, (X, K, t) in jobs.items()}
    threads_before = torch.get_num_threads()
    together, barrier = {}, threading.Barrier(len(jobs))

    def run(name):
        X, K, t = jobs[name]
        barrier.wait()
        together[name] = kmeans(X, K, seed=1, threads=t)

    workers = [threading.Thread(target=run, args=(name,)) for name in jobs]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert torch.get_num_threads() == threads_before
    for name in jobs:
        a, b = alone[name], together[name]
        assert torch.equal(a.codebook, b.codebook) and torch.equal(a.assignments, b.assignments)
        assert a.inertia == b.inertia


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("s", [1, 3, 9])
def test_on_cuda_the_same_fit_as_on_the_cpu(s):
    X = normal(20_000, s, seed=60 + s)
    start = init_centers(X, 32, seed=6)
    cpu = kmeans(X, 32, init_centers=start)
    gpu = kmeans(X.cuda(), 32, init_centers=start.cuda())
    assert gpu.codebook.is_cuda and gpu.assignments.is_cuda
    assert torch.equal(gpu.assignments.cpu(), cpu.assignments) and gpu.n_iter == cpu.n_iter
    assert torch.allclose(gpu.codebook.cpu(), cpu.codebook, rtol=0, atol=1e-6)
    assert gpu.inertia == pytest.approx(cpu.inertia, rel=1e-9)
    again = kmeans(X.cuda(), 32, seed=6, p=0.1)  # seeded on the CPU, dominant cluster on the GPU
    assert torch.equal(again.assignments, kmeans(X.cuda(), 32, seed=6, p=0.1).assignments)
