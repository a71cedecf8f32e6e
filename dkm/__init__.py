"""deep-kmeans: a tested, notebook-driven reproduction of Deep k-Means (Wu et al., ICML 2018).

The top-level modules are the method, one file per step (docs/method.md):

  1. reshape  dkm.rows        a conv weight as W ∈ R^{s×N}: kernel rows (or kernels, filters)
  2. re-train dkm.regularizer the k-means regularizer λ/2·‖W(I − FFᵀ)‖², indicator or spectral F
  3. share    dkm.clustering  k-means over rows (a readable reference; dkm.fast plugs in)
              dkm.sharing     row-wise weight sharing of every conv at a plan
              dkm.plans       a plan: K and p per conv (uniform, the authors' 45x/47x/50x)
              dkm.planner     per-conv (K, p) for a target CR, by rate–distortion
  4. measure  dkm.accounting  the compression ratio under a named convention

The whole use, as a short loop::

    import dkm

    plan = dkm.authors_plan(net, "45x")                       # or dkm.plan_clusters(net, 20.0)
    reg = dkm.KMeansRegularizer.from_plan(net, lam=5.0, plan=plan)
    for X, y in batches:
        loss = task_loss(net(X), y) + reg.penalty()           # E(W) + λ/2·‖W(I − FFᵀ)‖²
        optimizer.zero_grad(); loss.backward(); optimizer.step()
        reg.after_step()                                      # every T steps: refresh F
    shared = dkm.share(net, plan)                             # W = codebook[assignments]
    print(dkm.compression_ratio(net, shared))                 # the authors' convention

Everything else lives in named wings that import the core, never the reverse: dkm.fast (compiled
k-means kernels), dkm.io (safe writes), dkm.training (loop, data, models, checkpoints, DDP),
dkm.export (the .dkm file, entropy codings), dkm.energy (the energy metric and its references),
dkm.experiments (profiles, run cache, pipeline, sweep, study, Ray), dkm.viz (figures, sliders,
files), dkm.app (command line, papermill runner, book).
"""

from dkm import _numerics  # noqa: F401  (first: it pins the numeric path before torch runs)
from dkm.accounting import compression_ratio, compression_table
from dkm.clustering import kmeans
from dkm.planner import rd_plan
from dkm.plans import Plan, authors_plan, plan_clusters, uniform_plan
from dkm.regularizer import KMeansRegularizer
from dkm.rows import from_matrix, to_matrix
from dkm.sharing import share

__version__ = "0.3.0"

__all__ = [
    "to_matrix", "from_matrix", "KMeansRegularizer", "kmeans", "share", "Plan", "plan_clusters",
    "uniform_plan", "authors_plan", "rd_plan", "compression_ratio", "compression_table",
]  # fmt: skip
