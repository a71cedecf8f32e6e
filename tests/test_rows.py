"""dkm.rows: the three views of a conv weight as W ∈ R^{s×N}, checked against index arithmetic by
hand."""

import pytest
import torch

from dkm.rows import VIEWS, from_matrix, from_rows, rank_bound, to_matrix, to_rows, vector_length

# (C_out, C_in/groups, kh, kw): plain 3×3, 1×1, non-square, grouped (C_in=8, groups=4), depthwise
SHAPES = [(4, 3, 3, 3), (5, 6, 1, 1), (2, 3, 5, 3), (6, 2, 3, 3), (8, 1, 3, 3)]


def expected_s_N(shape, view):
    c_out, c_in, kh, kw = shape
    return {
        "rows": (kw, c_out * c_in * kh),
        "kernels": (kh * kw, c_out * c_in),
        "filters": (c_in * kh * kw, c_out),
    }[view]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("view", VIEWS)
def test_s_and_N_match_the_table(shape, view):
    W = to_matrix(torch.randn(shape), view)
    assert tuple(W.shape) == expected_s_N(shape, view)
    assert vector_length(shape, view) == expected_s_N(shape, view)[0]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("view", VIEWS)
def test_round_trip(shape, view):
    weight = torch.randn(shape, dtype=torch.float64)
    assert torch.equal(from_matrix(to_matrix(weight, view), shape, view), weight)
    assert torch.equal(from_rows(to_rows(weight, view), shape, view), weight)
    assert torch.equal(to_rows(weight, view), to_matrix(weight, view).T)


@pytest.mark.parametrize("shape", SHAPES)
def test_columns_are_the_vectors_of_each_view(shape):
    # hand indexing: column i of the rows view is weight[o, c, r, :] with i = (o·C_in + c)·kh + r
    weight = torch.randn(shape)
    c_out, c_in, kh, kw = shape
    rows, kernels, filters = (to_matrix(weight, v) for v in ("rows", "kernels", "filters"))
    for o in range(c_out):
        assert torch.equal(filters[:, o], weight[o].flatten())
        for c in range(c_in):
            assert torch.equal(kernels[:, o * c_in + c], weight[o, c].flatten())
            for r in range(kh):
                assert torch.equal(rows[:, (o * c_in + c) * kh + r], weight[o, c, r])


def test_to_matrix_is_a_view_that_carries_gradients():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    W = to_matrix(weight, "rows")
    assert W.data_ptr() == weight.data_ptr()
    (W * torch.arange(W.numel()).reshape(W.shape)).sum().backward()
    # d/dW_ij of Σ c_ij W_ij is c_ij, folded back to the conv shape
    assert torch.equal(
        weight.grad,
        from_matrix(torch.arange(W.numel()).reshape(W.shape).float(), weight.shape, "rows"),
    )


@pytest.mark.parametrize(
    "shape, view, bound",
    [
        ((64, 64, 3, 3), "rows", 3),
        ((64, 64, 1, 1), "rows", 1),
        ((64, 64, 3, 3), "kernels", 9),
        ((16, 64, 3, 3), "filters", 16),
        ((64, 2, 3, 3), "filters", 18),
        ((1, 1, 3, 3), "rows", 3),
        ((1, 1, 1, 3), "rows", 1),
    ],
)
def test_rank_bound_is_min_s_N(shape, view, bound):
    assert rank_bound(shape, view) == bound
    W = to_matrix(torch.randn(shape, dtype=torch.float64), view)
    assert int(torch.linalg.matrix_rank(W)) == bound  # a random W attains the bound


def test_bad_view_names_the_parameter():
    with pytest.raises(ValueError, match=r"view='cols'.*'rows', 'kernels', 'filters'"):
        to_matrix(torch.randn(2, 2, 3, 3), "cols")
    with pytest.raises(ValueError, match="view='x'"):
        rank_bound((2, 2, 3, 3), "x")


def test_bad_shape_is_rejected():
    with pytest.raises(ValueError, match=r"shape=\(4, 3, 3\).*4 dims"):
        to_matrix(torch.randn(4, 3, 3), "rows")
    with pytest.raises(ValueError, match=r"W has shape \(3, 10\).*\(4, 3, 3, 3\)"):
        from_matrix(torch.randn(3, 10), (4, 3, 3, 3), "rows")
    with pytest.raises(ValueError, match=r"W has shape \(9, 12\).*view='rows'"):
        from_matrix(torch.randn(9, 12), (4, 3, 3, 3), "rows")
