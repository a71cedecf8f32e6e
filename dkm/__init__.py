"""deep-kmeans: a tested, notebook-driven reproduction of Deep k-Means (Wu et al., ICML 2018).

The method in four steps, one module each (see README, "How the code is layered"):
  1. reshape   -> dkm.rows      (kernel rows / kernels / filters as W in R^{s x N})
  2. re-train  -> dkm.spectral  (the k-means regularizer, spectral or indicator F), dkm.train
  3. share     -> dkm.kmeans, dkm.sharing  (row-wise k-means weight sharing), at a dkm.plan.Plan
  4. measure   -> dkm.accounting, dkm.export, dkm.energy
The authors' settings: dkm.authors. Experiments: dkm.pipeline, dkm.sweep; command line: dkm.cli.
"""

__version__ = "0.1.1"
