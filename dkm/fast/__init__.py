"""The fast k-means that the core plugs in (dkm.clustering's hooks `_fast` and `_nb`).

Holds `paths` (the two CPU paths of the core's Lloyd loop: `Sorted` for rows of length s = 1,
`Compiled` for s > 1) and `kmeans_numba` (their numba kernels: Hamerly's iterations, the sorted
path's labelling and running sums). Same results as the core's reference path; only faster.

May import: numpy, numba, torch, dkm.clustering. Imported by: dkm.clustering, lazily, on first use.
"""
