"""deep-kmeans: a tested, notebook-driven reproduction of Deep k-Means (Wu et al., ICML 2018).

The method in four steps, one module each:
  1. reshape   -> dkm.rows      (kernel rows / kernels / filters as W in R^{s x N})
  2. re-train  -> dkm.spectral  (the k-means regularizer, spectral or indicator F)
  3. share     -> dkm.kmeans, dkm.sharing  (row-wise k-means weight sharing)
  4. measure   -> dkm.accounting, dkm.export, dkm.energy
"""

__version__ = "0.1.0"
