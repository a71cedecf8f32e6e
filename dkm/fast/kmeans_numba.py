"""Compiled kernels of dkm.clustering on the CPU (numba): Hamerly's Lloyd iterations for rows of
length s > 1, and the labelling and running sums of the sorted path for s = 1.

Why numba: one Lloyd iteration over 200k rows × 3 is a few million flops, which scikit-learn's
compiled loops do in ~10–20 ms; vectorized torch spends that much on temporaries and dispatch, and
torch's intra-op threads are a process-wide setting (unsafe to change while another thread uses
torch) that degrades badly on a loaded machine. A numba kernel is a plain loop over rows: Hamerly's
bounds test (SDM 2010) costs a few nanoseconds per row, only rows whose bounds fail pay for K
distances, and the kernels release the GIL (`nogil`), so k-means in two Python threads runs in
parallel and `threads` > 1 splits the rows of each iteration among Python threads (results do not
depend on the split: moves are applied afterwards in row order). Compiled kernels are cached on
disk (`cache=True`: in dkm/__pycache__, or numba's user cache directory where that is read-only), so
only the first call on a machine compiles (~seconds, measured in bench/bench_kmeans.py); a wheel
needs no compiler (numba brings LLVM as llvmlite).

Distances are computed as Σ_j (x_j − c_j)² in float64 from the rows' own values (no ‖x‖² − 2x·c
+ ‖c‖² expansion), so assignments are the exactly nearest centers up to float64 rounding; ties go
to the lowest center index.

numba is optional at import: without it (`AVAILABLE` is False) dkm.clustering runs its torch path.
"""

from __future__ import annotations

import math

import numpy as np

try:
    from numba import njit
except ImportError:  # pragma: no cover - exercised by the GPU check's hidden-packages test
    AVAILABLE = False
else:
    AVAILABLE = True

if AVAILABLE:
    _jit = njit(cache=True, nogil=True, boundscheck=False)

    @_jit
    def _sq(x, C, k):
        """‖x − C[k]‖² in float64."""
        d = 0.0
        for j in range(x.shape[0]):
            t = np.float64(x[j]) - np.float64(C[k, j])
            d += t * t
        return d

    @_jit
    def _two_nearest(x, CT, d):
        """(index of the nearest center, its squared distance, the second smallest one).

        CT: the centers transposed (s, K), so that the distances to all K centers are one loop over
        contiguous memory per coordinate (vectorized by LLVM); d: scratch of length K."""
        K = CT.shape[1]
        for k in range(K):
            t = np.float64(x[0]) - np.float64(CT[0, k])
            d[k] = t * t
        for j in range(1, CT.shape[0]):
            xj = np.float64(x[j])
            for k in range(K):
                t = xj - np.float64(CT[j, k])
                d[k] += t * t
        best, d1 = 0, d[0]
        for k in range(1, K):
            if d[k] < d1:
                best, d1 = k, d[k]
        d2 = math.inf
        for k in range(K):
            if k != best and d[k] < d2:
                d2 = d[k]
        return best, d1, d2

    @_jit
    def assign_bounds(X, C, lo, hi, a, u, lower):
        """Rows lo..hi: nearest center a, u = its distance, lower = the second nearest distance."""
        CT, d = np.ascontiguousarray(C.T), np.empty(C.shape[0])
        for i in range(lo, hi):
            best, d1, d2 = _two_nearest(X[i], CT, d)
            a[i], u[i], lower[i] = best, math.sqrt(d1), math.sqrt(d2)

    @_jit
    def neighbours(C):
        """Per center a, the other centers by increasing distance: (order (K, K − 1), their
        distances ‖c_a − c_k‖ (K, K − 1)); ties by index. For K = 1: one column of inf."""
        K = C.shape[0]
        dist = np.zeros((K, K))
        for k in range(K):
            for m in range(k + 1, K):
                dist[k, m] = dist[m, k] = math.sqrt(_sq(C[k], C, m))
        order = np.zeros((K, max(K - 1, 1)), np.int64)
        gaps = np.full((K, max(K - 1, 1)), math.inf)
        for k in range(K):
            t = 0
            for m in np.argsort(dist[k], kind="mergesort"):
                if m != k:
                    order[k, t], gaps[k, t] = m, dist[k, m]
                    t += 1
        return order, gaps

    @_jit
    def hamerly_step(X, C, move, order, gaps, lo, hi, a, u, lower, rows, new):
        """Rows lo..hi after the centers moved by `move`: re-assign those whose bounds fail.

        Hamerly's test: u grows by δ_a, the lower bound shrinks by the largest δ of another
        center; a row keeps c_a when u ≤ max(lower, ½ min_{k≠a} ‖c_a − c_k‖), with a relative
        margin of 1e-12 for the rounding of the bounds. A row that fails it (with u made exact)
        visits the other centers by increasing ‖c_a − c_k‖ and stops once ‖c_a − c_k‖ − u exceeds
        the second smallest distance seen: by the triangle inequality no center from there on is
        as close, so the nearest and the second nearest distance are exact (an exact lower bound
        keeps the row from failing again soon: measured, fewer rows re-visited than stopping at
        the nearest). Rows that change cluster are written to rows/new (from index lo); returns
        how many.
        """
        K = C.shape[0]
        top, second, arg = -1.0, -1.0, -1
        for k in range(K):
            if move[k] > top:
                top, second, arg = move[k], top, k
            elif move[k] > second:
                second = move[k]
        if second < 0.0:
            second = 0.0
        n = 0
        for i in range(lo, hi):
            ai = a[i]
            u[i] += move[ai]
            lower[i] = max(0.0, lower[i] - (second if ai == arg else top))
            bound = max(lower[i], 0.5 * gaps[ai, 0]) * (1.0 - 1e-12)
            if u[i] <= bound:
                continue
            best_sq = _sq(X[i], C, ai)
            own = math.sqrt(best_sq)
            u[i] = own
            if own <= bound:
                continue
            best, second_sq, stop = ai, math.inf, math.inf
            for t in range(K - 1):
                gap = gaps[ai, t] - own  # ≤ the distance to every center from t on
                if gap > 0.0 and gap * gap > second_sq * (1.0 + 1e-11):
                    stop = gap
                    break
                k = order[ai, t]
                d_sq = _sq(X[i], C, k)
                if d_sq < best_sq or (d_sq == best_sq and k < best):
                    best, best_sq, second_sq = k, d_sq, best_sq
                elif d_sq < second_sq:
                    second_sq = d_sq
            u[i], lower[i] = math.sqrt(best_sq), min(math.sqrt(second_sq), stop)
            if best != ai:
                rows[lo + n], new[lo + n] = i, best
                n += 1
        return n

    @_jit
    def apply_moves(X, a, rows, new, n, sums, counts):
        """Move rows[:n] to clusters new[:n], in that order: float64 sums and counts follow."""
        for t in range(n):
            i, k = rows[t], new[t]
            old = a[i]
            for j in range(X.shape[1]):
                v = np.float64(X[i, j])
                sums[old, j] -= v
                sums[k, j] += v
            counts[old] -= 1
            counts[k] += 1
            a[i] = k

    @_jit
    def sums_counts(X, a, K):
        """Float64 sums and counts of the rows of each cluster (rows in order)."""
        sums = np.zeros((K, X.shape[1]))
        counts = np.zeros(K, np.int64)
        for i in range(X.shape[0]):
            counts[a[i]] += 1
            for j in range(X.shape[1]):
                sums[a[i], j] += np.float64(X[i, j])
        return sums, counts

    @_jit
    def sq_to_own(X, C, a):
        """‖x_i − c_{a_i}‖² of every row (float64)."""
        out = np.empty(X.shape[0])
        for i in range(X.shape[0]):
            out[i] = _sq(X[i], C, a[i])
        return out

    @_jit
    def seed_min_sq(X, c, closest):
        """k-means++ step: min(closest_i, ‖x_i − c‖²) and its sum, for one candidate row c."""
        out, C = np.empty(X.shape[0]), c.reshape((1, c.shape[0]))
        total = 0.0
        for i in range(X.shape[0]):
            out[i] = min(closest[i], _sq(X[i], C, 0))
            total += out[i]
        return out, total

    @njit(cache=True, nogil=True, boundscheck=False, fastmath={"reassoc"})
    def _label_few(x, t0, t1, t2, l0, l1, l2, l3, c0, c1, c2, c3, out):
        """label_sorted for K ≤ 4 (sorted thresholds t0 ≤ t1 ≤ t2, +inf where absent; sorted center
        j has the label l_j and the value c_j): out[i] = l_j and the inertia, j = #{t < x[i]}.

        The label and center are picked by a chain of selects (each later true comparison
        overrides: the thresholds are sorted), which LLVM turns into vector blends, and the inertia
        is the one sum whose order is left to the compiler ("reassoc", nothing else relaxed): a
        vectorized sum of float64 terms, fixed for a given CPU. Measured on 500k rows: 0.24 ms
        against 0.87 ms for the count-and-look-up loop below summed in row order."""
        total = 0.0
        for i in range(x.shape[0]):
            v = x[i]
            a, c = l0, c0
            if t0 < v:
                a, c = l1, c1
            if t1 < v:
                a, c = l2, c2
            if t2 < v:
                a, c = l3, c3
            out[i] = a
            d = np.float64(v) - c
            total += d * d
        return total

    @_jit
    def label_sorted(x, thresholds, labels, codebook):
        """s = 1: per row the cluster labels[j], j = #{t < x} over the sorted thresholds, and the
        inertia Σ (x − codebook[label])² in float64 (codebook: float64), summed in row order for
        K > 4 (for K ≤ 4 in a vectorized order: _label_few).

        j is counted, not searched for: a binary search branches on the data, which a CPU cannot
        predict, while a count of comparisons is a few instructions without a branch. 1 to 3
        thresholds are held in registers (inf where absent; _label_few); up to 127 all are
        compared; above, the count first runs over every 16th threshold (which block of 16 x falls
        in), then over that block (padded with +inf). Measured on 500k rows: 3–5× faster than a
        binary search at K = 2…256."""
        N, m = x.shape[0], thresholds.shape[0]
        lab, cs = np.zeros(max(m + 1, 4), np.int64), np.zeros(max(m + 1, 4))
        for j in range(m + 1):  # per sorted center: its label and its value
            lab[j], cs[j] = labels[j], codebook[labels[j]]
        out = np.empty(N, np.int64)
        total = 0.0
        if 1 <= m <= 3:
            t = np.full(3, np.inf, thresholds.dtype)
            t[:m] = thresholds
            total = _label_few(
                x, t[0], t[1], t[2], lab[0], lab[1], lab[2], lab[3], cs[0], cs[1], cs[2], cs[3], out
            )
            return out, total
        if m < 127:
            for i in range(N):
                v = x[i]
                j = 0
                for t in range(m):
                    j += thresholds[t] < v
                out[i] = lab[j]
                d = np.float64(v) - cs[j]
                total += d * d
            return out, total
        B = 16
        nb = (m + B - 1) // B
        padded = np.full(nb * B, np.inf, thresholds.dtype)
        padded[:m] = thresholds
        coarse = np.empty(nb - 1, thresholds.dtype)
        for b in range(nb - 1):
            coarse[b] = padded[b * B + B - 1]  # the last threshold of block b
        for i in range(N):
            v = x[i]
            c = 0
            for b in range(nb - 1):
                c += coarse[b] < v  # blocks entirely below x
            j = c * B
            for t in range(B):
                j += padded[c * B + t] < v
            out[i] = lab[j]
            d = np.float64(v) - cs[j]
            total += d * d
        return out, total

    PREFIX_BLOCK = 64

    @_jit
    def block_prefix(xs):
        """Sorted rows xs: (the float64 sum of xs[:64·b] for every b, added in order; the
        population variance of xs). prefix_at() continues such a sum to any end, so the sums are
        those of one running sum over xs without storing all N of them (N float64 values to write
        and page in for every k-means call, measured as much time as the sort). The variance is
        Σ(x − s)² − (Σ(x − s))²/N over N with s the median row, so it needs no second pass."""
        N, B = xs.shape[0], PREFIX_BLOCK
        blocks = np.empty(N // B + 1)
        shift = np.float64(xs[N // 2])
        total, s1, s2 = 0.0, 0.0, 0.0
        for i in range(N):
            if i % B == 0:
                blocks[i // B] = total
            v = np.float64(xs[i])
            total += v
            d = v - shift
            s1 += d
            s2 += d * d
        if N % B == 0:
            blocks[N // B] = total
        return blocks, max(0.0, (s2 - s1 * s1 / N) / N)

    @_jit
    def prefix_at(xs, blocks, ends):
        """Per end e, the float64 sum of xs[:e] added in order (see block_prefix)."""
        out = np.empty(ends.shape[0])
        B = PREFIX_BLOCK
        for t in range(ends.shape[0]):
            e = ends[t]
            b = e // B
            total = blocks[b]
            for i in range(b * B, e):
                total += np.float64(xs[i])
            out[t] = total
        return out

    @_jit
    def sorted_clusters(xs, blocks, thresholds, labels, K):
        """s = 1: the clusters of the sorted rows xs cut at the sorted thresholds (sorted center j
        takes the rows between thresholds j − 1 and j, and gives them the cluster labels[j]).

        Returns (float64 sums (K, 1), counts (K,), the ends of the runs, their labels): runs in
        canonical form, empty ones dropped and neighbours of the same label merged. The sums are
        added per label in run order, as np.bincount(labels, weights) does."""
        m, N = thresholds.shape[0], xs.shape[0]
        edges = np.empty(m + 2, np.int64)
        edges[0], edges[m + 1] = 0, N
        edges[1 : m + 1] = np.searchsorted(xs, thresholds, side="right")
        prefix = prefix_at(xs, blocks, edges)
        sums, counts = np.zeros((K, 1)), np.zeros(K, np.int64)
        ends, run_labels = np.empty(m + 1, np.int64), np.empty(m + 1, np.int64)
        r = 0
        for j in range(m + 1):
            k, n = labels[j], edges[j + 1] - edges[j]
            sums[k, 0] += prefix[j + 1] - prefix[j]
            counts[k] += n
            if n == 0:
                continue
            if r > 0 and run_labels[r - 1] == k:
                ends[r - 1] = edges[j + 1]
            else:
                ends[r], run_labels[r] = edges[j + 1], k
                r += 1
        return sums, counts, ends[:r], run_labels[:r]

    @_jit
    def sorted_centers(c):
        """dkm.fast.paths.sorted_centers compiled (the same thresholds and labels, bit for bit):
        the K − 1 thresholds between neighbouring sorted centers and the index each sorted center's
        rows go to."""
        order = np.argsort(c, kind="mergesort")  # stable
        K = c.shape[0]
        values = c[order]
        labels = np.empty(K, np.int64)
        first = 0
        for j in range(K):
            if j > 0 and values[j] != values[j - 1]:
                first = j
            labels[j] = order[first]
        thresholds = np.empty(max(K - 1, 0), c.dtype)
        neg = np.empty(1, c.dtype)
        neg[0] = -np.inf
        for j in range(K - 1):
            mid = (np.float64(values[j + 1]) + np.float64(values[j])) / 2
            thresholds[j] = mid  # rounded to c's dtype, as astype does
            t = thresholds[j]
            below = np.nextafter(t, neg[0])
            if np.float64(t) > mid or (np.float64(t) == mid and labels[j + 1] < labels[j]):
                thresholds[j] = below
        return thresholds, labels

    @_jit
    def sorted_lloyd(xs, blocks, centers, max_iter, tol_abs):
        """dkm.clustering._lloyd on the sorted path, all iterations in one call (each one in Python
        costs ~0.1 ms of small-array calls, as much as the whole search): from the start centers
        (K,), Lloyd iterations until the shift Σ_k (c_k^new − c_k)² ≤ tol_abs, max_iter, or no row
        moves — or until a cluster is empty, which _lloyd's own loop then takes over (re-seeding
        needs the rows in their own order).

        Returns (centers, iterations done, status, sums, counts, ends, run labels) where status is
        0 (a cluster is empty: sums, counts and runs are those of the returned centers, the
        iteration not begun), 1 (stopped by the shift or max_iter) or 2 (settled: no row moved;
        the count includes the iteration that found it, as in _lloyd)."""
        K = centers.shape[0]
        c = centers.copy()
        new = np.empty_like(c)
        diff = np.empty(1, c.dtype)
        thresholds, labels = sorted_centers(c)
        sums, counts, ends, runs = sorted_clusters(xs, blocks, thresholds, labels, K)
        n_iter = 0
        while True:
            for k in range(K):
                if counts[k] == 0:
                    return c, n_iter, 0, sums, counts, ends, runs
            n_iter += 1
            shift = 0.0
            for k in range(K):
                new[k] = sums[k, 0] / counts[k]  # float64 division, rounded to c's dtype
                diff[0] = new[k] - c[k]  # in c's dtype, as torch subtracts the centers
                d = np.float64(diff[0])
                move = math.sqrt(d * d)
                shift += move * move
            c[:] = new
            if shift <= tol_abs or n_iter == max_iter:
                return c, n_iter, 1, sums, counts, ends, runs
            thresholds, labels = sorted_centers(c)
            sums, counts, ends2, runs2 = sorted_clusters(xs, blocks, thresholds, labels, K)
            same = ends2.shape[0] == ends.shape[0]
            if same:
                for r in range(ends.shape[0]):
                    if ends2[r] != ends[r] or runs2[r] != runs[r]:
                        same = False
                        break
            ends, runs = ends2, runs2
            if same:
                return c, n_iter + 1, 2, sums, counts, ends, runs
