"""Step 1 of the method: cut a conv weight into vectors W ∈ R^{s×N} (paper §3.1, "row-wise").

A conv weight has shape (C_out, C_in/groups, kh, kw). Three layouts ("views") are offered:

| view      | one column of W            | s              | N                      |
|-----------|----------------------------|----------------|------------------------|
| `rows`    | one kernel row (the paper) | kw             | C_out·C_in/groups·kh   |
| `kernels` | one kh×kw kernel           | kh·kw          | C_out·C_in/groups      |
| `filters` | one whole filter           | C_in/groups·kh·kw | C_out               |

rank(W) ≤ min(s, N): with kernel rows (s = 3) the spectral relaxation is informative only for K < 3.
"""

from __future__ import annotations

import torch
from torch import nn

from dkm._checks import check_choice

VIEWS = ("rows", "kernels", "filters")


def vector_length(shape, view: str = "rows") -> int:
    """Length s of one column of W for a conv weight of `shape` under `view`."""
    check_choice("view", view, VIEWS)
    if len(shape) != 4:
        raise ValueError(
            f"shape={tuple(shape)} is not a conv weight shape: "
            "expected 4 dims (C_out, C_in, kh, kw)"
        )
    _, c_in, kh, kw = shape
    return {"rows": kw, "kernels": kh * kw, "filters": c_in * kh * kw}[view]


def to_matrix(weight: torch.Tensor, view: str = "rows") -> torch.Tensor:
    """W ∈ R^{s×N}: the columns are the vectors of `view`.

    W is a view of `weight` (no copy when it is contiguous).
    """
    s = vector_length(weight.shape, view)
    return weight.reshape(-1, s).T


def from_matrix(W: torch.Tensor, shape, view: str = "rows") -> torch.Tensor:
    """Inverse of `to_matrix`: fold W ∈ R^{s×N} back into a conv weight of `shape`."""
    s = vector_length(shape, view)
    if W.shape[0] != s or W.numel() != torch.Size(shape).numel():
        raise ValueError(
            f"W has shape {tuple(W.shape)}, which does not fold into {tuple(shape)} "
            f"under view={view!r}"
        )
    return W.T.reshape(shape)


def to_rows(weight: torch.Tensor, view: str = "rows") -> torch.Tensor:
    """The N vectors of `view` as an N×s tensor (the layout k-means works on)."""
    return to_matrix(weight, view).T


def from_rows(rows: torch.Tensor, shape, view: str = "rows") -> torch.Tensor:
    """Inverse of `to_rows`."""
    return from_matrix(rows.T, shape, view)


def num_rows(shape, view: str = "rows") -> int:
    """N, the number of vectors (columns of W) of a conv weight of `shape` under `view`."""
    return torch.Size(shape).numel() // vector_length(shape, view)


def stays_dense(num_clusters: int, num_rows: int) -> bool:
    """The authors' rule: a layer with K ≥ N (a center per row, or more) is left dense."""
    return num_clusters >= num_rows


def rank_bound(shape, view: str = "rows") -> int:
    """min(s, N), the largest rank W can have: a spectral F with K ≥ this is degenerate."""
    return min(vector_length(shape, view), num_rows(shape, view))


def conv_layers(net: nn.Module) -> list[tuple[str, nn.Conv2d]]:
    """Every Conv2d of `net` as (name, module), in model order; raise if there is none."""
    convs = [(n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError(
            f"net={type(net).__name__} has no Conv2d layer: "
            "allowed only models with at least one conv"
        )
    return convs
