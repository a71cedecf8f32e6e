"""Compiled kernels that the core's k-means plugs in (dkm.clustering's one hook, `_nb`): numba.

Holds `kmeans_numba`: Hamerly's Lloyd iterations for rows of length s > 1, the sorted path's
labelling and running sums for s = 1. Same results as the core's reference path; only faster.

May import: numpy, numba. Imported by: dkm.clustering, lazily, on first use.
"""
