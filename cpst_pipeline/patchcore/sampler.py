"""Greedy k-center ("coreset") subsampling of PatchCore memory banks.

PatchCore keeps a memory bank of normal patch features and subsamples it with
greedy k-center (farthest-point) selection: starting from one point, repeatedly
add the point farthest from everything selected so far.  The selected set
minimises, greedily, the *coverage radius* - the largest distance from any bank
point to its nearest selected point - which is what bounds the error of the
nearest-neighbour anomaly score computed against the subsampled bank.

The textbook implementation recomputes the distance of all ``N`` points to each
new centre: ``O(N * k * D)`` work done as ``k`` memory-bound matrix-vector
products (one open-source PatchCore needs 283 s for 10 % of 65,536 x 152).  The
CPU implementation here (:class:`_GreedyKCenter`) returns the *same picks* as
that algorithm - up to exact ties and float32 rounding of near-ties - and does
far less work:

* **Pool of candidates, batched updates.**  Each bank row keeps ``d(x)``, its
  distance to the nearest *applied* centre, and ``a(x)``, that centre.  A pool
  holds the ``T`` rows with the largest ``d``; ``tau`` is the largest ``d``
  outside it.  Distances only shrink, so while the pool's best row (kept exact
  against the newly picked centres with a ``T x D`` product per pick) is
  ``>= tau`` it is the global farthest row and is picked.  When the pool runs
  out, the centres picked since the last update (up to a few hundred) are
  applied to the bank together, with matrix-matrix products instead of one
  matrix-vector product per centre.
* **Triangle-inequality pruning.**  A new centre ``p`` can only come closer to
  row ``x`` than its centre ``c = a(x)`` if ``d(p, c) < 2 d(x)``.  The pending
  centres are grouped by proximity; for a group, only the clusters (rows
  sharing a centre) whose radius passes the test against a centre of the group
  are opened, and of those only the rows that pass it themselves.  The
  centre-to-centre distances that the test needs are themselves pruned through
  a coarse index over the centres (cells around a few of them).  On clustered
  banks - real patch features: near-duplicate background, a long tail - only a
  few per cent of the row-centre distances are ever computed.
* **Fallback.**  When pruning cannot pay - isolated outliers, which greedy picks
  first and which are about equally far from every row, or structureless
  high-dimensional data such as uniform noise - a batch is applied to the whole
  bank as one big BLAS product, so the worst case is the naive algorithm's
  arithmetic done at matrix-matrix speed.

Memory: one float32, mean-centred copy of the bank (the input may be float16)
with two extra columns, ``O(N)`` bookkeeping, ``O(k * D)`` for the centres and
bounded scratch blocks; no ``N x k`` matrix is ever formed.  Distances are
float32, computed as one dot product of ``[x, 1, |x|^2]`` and ``[-2c, |c|^2, 1]``
on mean-centred data; the pruning tests carry safety margins so that rounding
never discards a true improvement.

With a non-CPU torch ``device`` (e.g. ``"cuda"``) the plain exact algorithm runs
on that device instead: there one ``N x D`` matrix-vector product per pick is
cheap and the loop never synchronises with the host.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import os
import warnings

import numpy as np

__all__ = ["coreset_size", "coverage_radius", "greedy_coreset"]

# Scratch blocks hold at most this many float32 values (16 MiB).
_BLOCK_ELEMS = 1 << 22
# Candidate pool size (rows whose distances are kept exact between flushes).
_POOL_SIZE = 1024
# Most centres picked between two batch updates of the bank.
_MAX_PENDING = 512
# Pruning test 2 d(x) > d(p, c), squared, with a relative safety margin for float32 rounding.
_PRUNE_SLACK = 4.0 * (1.0 + 1e-3)
# Pending centres within sqrt(_GROUP_RADIUS2) x (current pick distance) of a group's leader join it ...
_GROUP_RADIUS2 = 16.0
# ... up to this many centres per group.
_GROUP_MAX = 64
# Cost of gathering one bank row, in units of one row-centre distance (for choosing the update mode).
_GATHER_COST = 32
# After a batch where pruning did not pay, the next 1, 2, 4, ... (at most this many) batches skip it.
_MAX_BACKOFF = 4
# Whole-bank updates of at least this many row-centre distances use all BLAS threads.
_BIG_PRODUCT = 1 << 22
# Coarse index over the centres: built at this many centres, rebuilt whenever their number doubled,
# with about _COARSE_PER_SQRT * sqrt(centres) cells.
_COARSE_MIN = 1024
_COARSE_PER_SQRT = 2.0


def coreset_size(n_points: int, ratio: float) -> int:
    """Number of points to keep from a bank of ``n_points`` at ``ratio``.

    ``floor(n_points * ratio)`` (so 10 % of 65,536 is 6,553), clipped to
    ``[1, n_points]``; 0 for an empty bank.
    """
    n_points = int(n_points)
    ratio = float(ratio)
    if n_points < 0:
        raise ValueError(f"n_points must be >= 0, got {n_points}")
    if not (0.0 < ratio <= 1.0) or math.isnan(ratio):
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    if n_points == 0:
        return 0
    # The epsilon keeps e.g. 10 * 0.3 (= 2.9999999999999996) at 3.
    k = int(math.floor(n_points * ratio + 1e-9))
    return max(1, min(n_points, k))


def _as_2d_array(features) -> np.ndarray:
    if hasattr(features, "detach") and hasattr(features, "cpu"):  # torch tensor
        features = features.detach().cpu().numpy()
    arr = np.asarray(features)
    if arr.ndim != 2:
        raise ValueError(f"features must be 2-D (n_points, dim), got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    return arr


def _centred_float32(features: np.ndarray, mean: np.ndarray | None = None) -> np.ndarray:
    """A float32, mean-centred copy of ``features`` built block by block.

    Centring keeps the ``|x|^2 + |c|^2 - 2 x.c`` expansion accurate when features
    share a large common offset (e.g. non-negative CNN activations).
    """
    n, d = features.shape
    rows = max(1, _BLOCK_ELEMS // max(d, 1))
    if mean is None:
        acc = np.zeros(d, dtype=np.float64)
        for s in range(0, n, rows):
            acc += features[s:s + rows].sum(axis=0, dtype=np.float64)
        mean = acc / max(n, 1)
    mean32 = np.asarray(mean, dtype=np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, rows):
        np.subtract(features[s:s + rows], mean32, out=out[s:s + rows], dtype=np.float32, casting="unsafe")
    if not np.isfinite(out).all():
        raise ValueError("features contain NaN or infinite values")
    return out


def _augmented(features: np.ndarray) -> np.ndarray:
    """Mean-centred ``[x, 1, |x|^2]`` float32 rows, built block by block from ``features``.

    With a centre row ``[-2 c, |c|^2, 1]`` (:func:`_centre_form`) one dot product
    is ``|x - c|^2``; folding the norms into the matrix product saves three full
    passes over every ``rows x centres`` distance block.  Centring keeps the
    expansion accurate when features share a large offset (e.g. non-negative
    CNN activations).  This is the only ``N x D`` copy the sampler makes.
    """
    n, d = features.shape
    rows = max(1, _BLOCK_ELEMS // max(d, 1))
    acc = np.zeros(d, dtype=np.float64)
    for s in range(0, n, rows):
        acc += features[s:s + rows].sum(axis=0, dtype=np.float64)
    mean = (acc / max(n, 1)).astype(np.float32)
    xa = np.empty((n, d + 2), dtype=np.float32)
    for s in range(0, n, rows):
        blk = xa[s:s + rows, :d]
        np.subtract(features[s:s + rows], mean, out=blk, dtype=np.float32, casting="unsafe")
        if not np.isfinite(blk).all():
            raise ValueError("features contain NaN or infinite values")
        xa[s:s + rows, d] = 1.0
        xa[s:s + rows, d + 1] = np.einsum("ij,ij->i", blk, blk, dtype=np.float32)
    return xa


def _centre_form(xa_rows: np.ndarray) -> np.ndarray:
    """``[x, 1, |x|^2]`` rows -> ``[-2 x, |x|^2, 1]`` rows (see :func:`_augmented`)."""
    d = xa_rows.shape[1] - 2
    ca = np.empty_like(xa_rows)
    np.multiply(xa_rows[:, :d], -2.0, out=ca[:, :d])
    ca[:, d] = xa_rows[:, d + 1]
    ca[:, d + 1] = 1.0
    return ca


class _BlasThreads:
    """Best-effort, thread-local control of the number of OpenBLAS threads numpy uses.

    Small matrix products split over the cores of a busy machine spend most of
    their time waiting for the other threads (about 10x slower, measured on 2
    shared cores), so the selection runs its many small products on one thread
    and only the big whole-bank products on the default pool.  Uses
    ``openblas_set_num_threads_local`` (OpenBLAS >= 0.3.27, as bundled with
    numpy wheels); with any other BLAS it does nothing.
    """

    _setter = None
    _probed = False

    @classmethod
    def _find(cls):
        if not cls._probed:
            cls._probed = True
            try:
                # dlsym on numpy's own extension module resolves through *its* BLAS
                # library, whichever other BLAS builds (scipy's, faiss's) are loaded.
                try:
                    from numpy._core import _multiarray_umath as umath
                except ImportError:  # numpy < 2
                    from numpy.core import _multiarray_umath as umath
                lib = ctypes.CDLL(umath.__file__, mode=getattr(os, "RTLD_NOLOAD", 0) | ctypes.RTLD_LOCAL)
                fn = getattr(lib, "openblas_set_num_threads_local", None)
                if fn is not None:
                    fn.restype = ctypes.c_int
                    fn.argtypes = [ctypes.c_int]
                cls._setter = fn
            except Exception:  # pragma: no cover - other platform or BLAS
                cls._setter = None
        return cls._setter

    @classmethod
    @contextlib.contextmanager
    def limit(cls, n_threads: int | None):
        """Within the block, numpy's BLAS calls from this thread use ``n_threads`` threads (None: unchanged)."""
        fn = cls._find() if n_threads is not None else None
        if fn is None:
            yield
            return
        prev = fn(int(n_threads))
        try:
            yield
        finally:
            fn(prev)


def _update_rows(xa, rows, cpt, col_ids, mind2, assign) -> None:
    """Lower ``mind2``/``assign`` of bank rows ``rows`` (slice or index array) with the centres ``cpt``.

    ``cpt`` holds centre-form rows (:func:`_centre_form`), ``col_ids`` their ids
    (positions in the selection order).
    """
    g = xa[rows] @ cpt.T
    if g.shape[1] == 1:
        j = np.zeros(g.shape[0], dtype=np.intp)
        v = g[:, 0]
    else:
        j = g.argmin(axis=1)
        v = np.take_along_axis(g, j[:, None], axis=1)[:, 0]
    upd = v < mind2[rows]  # selected rows hold -1 and never update
    pos = np.flatnonzero(upd)
    if pos.size == 0:
        return
    if isinstance(rows, slice):
        pos += rows.start
    else:
        pos = rows[pos]
    mind2[pos] = np.maximum(v[upd], 0.0)
    assign[pos] = col_ids[j[upd]]


def _group_pending(cen_p, cpt, scale2):
    """Split the pending centres into groups of nearby centres (leader clustering).

    Centres of one group touch overlapping parts of the bank, so each bank row
    is fetched about once per batch while the distances computed stay close to
    the (row, centre) pairs that really interact.  Returns a permutation of
    ``range(B)`` that makes groups contiguous and the group boundaries in it.
    """
    b = cen_p.shape[0]
    pp = cen_p @ cpt.T  # (B, B) squared distances
    lim = _GROUP_RADIUS2 * scale2
    free = np.ones(b, dtype=bool)
    perm = np.empty(b, dtype=np.intp)
    bounds = [0]
    k = 0
    for p in range(b):
        if not free[p]:
            continue
        near = free & (pp[p] <= lim)
        near[p] = False
        mem = np.concatenate(([p], np.flatnonzero(near)[: _GROUP_MAX - 1]))
        free[mem] = False
        perm[k:k + mem.size] = mem
        k += mem.size
        bounds.append(k)
    return perm, np.asarray(bounds, dtype=np.intp)


def _runs_min(jj, ss, vals):
    """Collapse runs of equal ``(jj, ss)`` (as ``np.nonzero`` yields them) to ``(j, s, min(vals))``."""
    new = np.empty(jj.size, dtype=bool)
    new[0] = True
    np.not_equal(jj[1:], jj[:-1], out=new[1:])
    new[1:] |= ss[1:] != ss[:-1]
    first = np.flatnonzero(new)
    return jj[first], ss[first], np.minimum.reduceat(vals, first)


class _GreedyKCenter:
    """Exact greedy k-center on the CPU (see the module docstring for the method).

    State, for the ``n`` bank rows: ``mind2`` (squared distance to the nearest
    *applied* centre; -1 for selected rows) and ``assign`` (that centre's id =
    its position in the selection order).  For the centres: their rows
    ``cen`` and a coarse index (``cell``, ``delta``) over them.
    """

    def __init__(self, features: np.ndarray, n_select: int):
        self.xa = _augmented(features)
        self.n = self.xa.shape[0]
        d = self.xa.shape[1] - 2
        self.k = n_select
        self.sel = np.empty(n_select, dtype=np.int64)
        self.pick2 = np.empty(n_select, dtype=np.float32)  # squared distance of each pick when picked
        self.cen = np.empty((n_select, d + 2), dtype=np.float32)
        self.mind2 = np.full(self.n, np.inf, dtype=np.float32)
        self.assign = np.zeros(self.n, dtype=np.int64)
        # Coarse index over the centres: a few of them serve as cell centres.
        self.coarse = None  # (K0, D + 2) row form
        self.coarse_at = 0  # number of centres when it was built
        self.cell = np.zeros(n_select, dtype=np.intp)
        self.delta = np.zeros(n_select, dtype=np.float32)  # distance to the cell centre
        # Absolute scale of the data, for the rounding margins of the bounds.
        self.tol = 1e-3 * float(np.sqrt(max(float(self.xa[:, d + 1].max()), 0.0))) if self.n else 0.0
        # Back-off after batches where pruning did not pay: skip trying for a few batches.
        self.skip_pruning = 0
        self.backoff = 1

    # -- main loop -----------------------------------------------------------------

    def run(self, start_index: int) -> np.ndarray:
        n, k = self.n, self.k
        sel, mind2 = self.sel, self.mind2
        sel[0] = start_index
        self.pick2[0] = np.inf
        mind2[start_index] = -1.0
        n_sel = 1
        n_applied = 0
        while True:
            self._flush(n_applied, n_sel)
            n_applied = n_sel
            if n_sel >= k:
                return sel
            # The pool: the T farthest rows, kept exact while centres are picked;
            # tau bounds every row outside it (distances only ever decrease).
            avail = n - n_sel
            t = min(_POOL_SIZE, avail)
            if t == avail:
                pool = np.flatnonzero(mind2 >= 0.0)
                tau = -np.inf
            else:
                part = np.argpartition(mind2, n - t - 1)
                pool = part[n - t:]
                tau = float(mind2[part[n - t - 1]])
                del part
            with _BlasThreads.limit(1):
                n_sel = self._pick_from_pool(pool, tau, n_sel, min(k, n_applied + _MAX_PENDING))

    def _pick_from_pool(self, pool, tau, n_sel, limit) -> int:
        """Greedy picks from the pool while its best row is provably the global farthest."""
        pxa = self.xa[pool]
        pca = _centre_form(pxa)
        pd = self.mind2[pool]  # a copy
        sel, pick2, mind2 = self.sel, self.pick2, self.mind2
        while n_sel < limit:
            i = int(pd.argmax())
            v = pd[i]
            if v < tau or v < -0.5:
                break  # pool exhausted: a row outside it may now be the farthest
            c = pool[i]
            sel[n_sel] = c
            pick2[n_sel] = v
            n_sel += 1
            mind2[c] = -1.0
            dd = pxa @ pca[i]
            np.maximum(dd, 0.0, out=dd)
            np.minimum(pd, dd, out=pd)
            pd[i] = -1.0
        return n_sel

    # -- applying a batch of centres -------------------------------------------------

    def _flush(self, f0: int, f1: int) -> None:
        """Apply the pending centres ``f0:f1`` to every bank row that they can affect.

        Pruning: a pending centre ``p`` can only beat row ``x``'s centre ``c`` if
        ``d(p, c) < 2 d(x, c)``.  Pending centres are grouped by proximity; for
        each group only the clusters whose radius passes the test against a
        centre of the group are opened, and of their rows only those that pass
        it themselves.  When that would save too little (while the picks are
        isolated outliers, or on structureless high-dimensional data) the batch
        is applied to the whole bank with big matrix products instead.
        """
        xa, mind2, assign = self.xa, self.mind2, self.assign
        n, b = self.n, f1 - f0
        pend = self.sel[f0:f1]
        self.cen[f0:f1] = xa[pend]
        cpt = _centre_form(self.cen[f0:f1])  # (B, D + 2)
        ids = np.arange(f0, f1, dtype=assign.dtype)

        done = False
        if f0 > 0 and self.skip_pruning > 0:
            self.skip_pruning -= 1
        elif f0 > 0:
            with _BlasThreads.limit(1):
                # CSR of the bank by current centre; every cluster holds at least its centre.
                order = np.argsort(assign)
                counts = np.bincount(assign, minlength=f0)
                starts = np.zeros(f0 + 1, dtype=np.int64)
                np.cumsum(counts, out=starts[1:])
                # Snapshot (the tests use pre-flush distances) of 4 d(x)^2 with rounding
                # margins; selected rows stay negative.
                d_sorted = mind2[order]
                lim_sorted = d_sorted * _PRUNE_SLACK
                lim_sorted += self.tol * self.tol
                lim_sorted[d_sorted < 0.0] = -1.0
                del d_sorted
                r2 = np.maximum.reduceat(lim_sorted, starts[:-1])  # (2 radius)^2 of each cluster, > 0 if open
                if f0 >= _COARSE_MIN and f0 >= 2 * self.coarse_at:
                    self._build_coarse(f0, r2)
                perm, bounds = _group_pending(self.cen[f0:f1], cpt, float(self.pick2[f1 - 1]))
                cpt_p, ids_p = cpt[perm], ids[perm]
                gsize = np.diff(bounds)
                gid_of = np.repeat(np.arange(gsize.size), gsize)
                if self.coarse is None:
                    pairs = self._pairs_direct(f0, cpt_p, gid_of, gsize, r2, counts, n * b)
                else:
                    pairs = self._pairs_coarse(f0, cpt_p, gid_of, gsize, r2, counts, n * b)
                if pairs is not None:
                    self._pruned_update(pairs, cpt_p, ids_p, bounds, counts, starts, order, lim_sorted)
                    done = True
                    self.backoff = 1
                else:
                    self.skip_pruning = self.backoff
                    self.backoff = min(2 * self.backoff, _MAX_BACKOFF)
        if not done:
            # Whole bank: big products, on all BLAS threads.
            rows = max(64, _BLOCK_ELEMS // b)
            with _BlasThreads.limit(None if n * b >= _BIG_PRODUCT else 1):
                for s in range(0, n, rows):
                    _update_rows(xa, slice(s, min(n, s + rows)), cpt, ids, mind2, assign)
        assign[pend] = ids
        if self.coarse is not None:
            self._index_centres(f0, f1)

    def _pruned_update(self, pairs, cpt_p, ids_p, bounds, counts, starts, order, lim_sorted) -> None:
        """Update, group by group, the rows of the clusters in ``pairs`` that pass the row-level test."""
        pj, ps, pm = pairs
        o = np.argsort(ps, kind="stable")
        pj, ps, pm = pj[o], ps[o], pm[o]
        gb = np.searchsorted(ps, np.arange(bounds.size))
        for gi in np.flatnonzero(gb[1:] > gb[:-1]).tolist():
            lo, hi = gb[gi], gb[gi + 1]
            jj = pj[lo:hi]
            seg = counts[jj]
            tot = int(seg.sum())
            off = np.cumsum(seg) - seg
            pos = np.repeat(starts[jj] - off, seg) + np.arange(tot)
            keep = lim_sorted[pos] > np.repeat(pm[lo:hi], seg)
            cand = order[pos[keep]]
            if cand.size == 0:
                continue
            a, z = bounds[gi], bounds[gi + 1]
            step = max(64, _BLOCK_ELEMS // (z - a))
            for s in range(0, cand.size, step):
                _update_rows(self.xa, cand[s:s + step], cpt_p[a:z], ids_p[a:z], self.mind2, self.assign)

    # -- which (cluster, group) pairs can interact ----------------------------------

    def _pairs_direct(self, f0, cpt_p, gid_of, gsize, r2, counts, budget):
        """(cluster j, group s, min_{p in s} d(p, c_j)^2) for every pair passing ``d(p, c_j)^2 < 4 r_j^2``.

        Computes all old-centre x pending distances.  None as soon as the
        estimated cost of the pruned update exceeds ``budget``.
        """
        b = cpt_p.shape[0]
        rows = max(64, _BLOCK_ELEMS // b)
        out, cost = [], 0
        for s in range(0, f0, rows):
            e = min(f0, s + rows)
            g = self.cen[s:e] @ cpt_p.T
            jj, pp = np.nonzero(g < r2[s:e, None])
            if jj.size == 0:
                continue
            jj, ss, mm = _runs_min(jj + s, gid_of[pp], g[jj, pp])
            cost += int((counts[jj] * (gsize[ss] + _GATHER_COST)).sum())
            if cost > budget:
                return None
            out.append((jj, ss, mm))
        return self._concat_pairs(out)

    def _pairs_coarse(self, f0, cpt_p, gid_of, gsize, r2, counts, budget):
        """As :meth:`_pairs_direct`, skipping whole cells of the coarse index.

        ``d(p, c_j) >= d(p, o_q) - d(c_j, o_q)``: if ``d(p, o_q) >= max_{j in q}
        (d(c_j, o_q) + 2 r_j)`` no open cluster of cell ``q`` can interact with ``p``.
        """
        open_ids = np.flatnonzero(r2[:f0] > 0.0)
        if open_ids.size == 0:
            return self._concat_pairs([])
        two_r = np.sqrt(r2[open_ids])
        cells = self.cell[open_ids]
        k0 = self.coarse.shape[0]
        reach = np.full(k0, -np.inf, dtype=np.float32)
        np.maximum.at(reach, cells, self.delta[open_ids] + two_r)
        lim = reach * (1.0 + 1e-3) + 2.0 * self.tol
        lim2 = np.where(reach > -np.inf, lim * lim, -1.0).astype(np.float32)
        hit = (self.coarse @ cpt_p.T) < lim2[:, None]  # (K0, B)
        oc = np.argsort(cells, kind="stable")
        by_cell = open_ids[oc]
        cstart = np.searchsorted(cells[oc], np.arange(k0 + 1))
        out, cost = [], 0
        for q in np.flatnonzero(hit.any(axis=1)).tolist():
            cols = np.flatnonzero(hit[q])
            step = max(64, _BLOCK_ELEMS // cols.size)
            for s in range(cstart[q], cstart[q + 1], step):
                js = by_cell[s:min(s + step, cstart[q + 1])]
                g = self.cen[js] @ cpt_p[cols].T
                jj, pp = np.nonzero(g < r2[js][:, None])
                if jj.size == 0:
                    continue
                jj, ss, mm = _runs_min(js[jj], gid_of[cols[pp]], g[jj, pp])
                cost += int((counts[jj] * (gsize[ss] + _GATHER_COST)).sum())
                if cost > budget:
                    return None
                out.append((jj, ss, mm))
        return self._concat_pairs(out)

    @staticmethod
    def _concat_pairs(out):
        if not out:
            return np.empty(0, np.int64), np.empty(0, np.intp), np.empty(0, np.float32)
        return tuple(np.concatenate(parts) for parts in zip(*out))

    # -- coarse index over the centres --------------------------------------------------

    def _build_coarse(self, f0: int, r2: np.ndarray) -> None:
        """Pick ~``_COARSE_PER_SQRT * sqrt(f0)`` open centres as cell centres and index centres ``0:f0``."""
        open_ids = np.flatnonzero(r2[:f0] > 0.0)
        k0 = int(min(open_ids.size, max(16, _COARSE_PER_SQRT * math.sqrt(f0))))
        if k0 == 0:
            return
        pick = open_ids[np.linspace(0, open_ids.size - 1, k0).astype(np.int64)]
        self.coarse = self.cen[np.unique(pick)].copy()
        self.coarse_at = f0
        self._index_centres(0, f0)

    def _index_centres(self, f0: int, f1: int) -> None:
        """Cell (nearest coarse centre) and the distance to it for centres ``f0:f1``."""
        cct = _centre_form(self.coarse)
        rows = max(64, _BLOCK_ELEMS // cct.shape[0])
        for s in range(f0, f1, rows):
            e = min(f1, s + rows)
            g = self.cen[s:e] @ cct.T
            j = g.argmin(axis=1)
            self.cell[s:e] = j
            self.delta[s:e] = np.sqrt(np.maximum(g[np.arange(e - s), j], 0.0))


def _greedy_torch(features: np.ndarray, n_select: int, start_index: int, device) -> np.ndarray:
    """Plain exact greedy k-center with torch on ``device`` (meant for GPUs).

    One ``N x D`` matrix-vector product per pick; indices stay on the device so
    the loop never synchronises with the host.  Memory: the float32 bank plus
    ``O(N)``.
    """
    import torch

    x = torch.from_numpy(_centred_float32(features)).to(device)
    n = x.shape[0]
    n2 = (x * x).sum(dim=1)
    sel = torch.empty(n_select, dtype=torch.int64, device=x.device)
    mind2 = torch.full((n,), float("inf"), dtype=torch.float32, device=x.device)
    c = torch.tensor([start_index], dtype=torch.int64, device=x.device)  # 1-element: no host sync
    for t in range(n_select):
        sel[t : t + 1] = c
        xc = x.index_select(0, c)[0]
        d2 = torch.mv(x, xc).mul_(-2.0).add_(n2).add_(n2.index_select(0, c)).clamp_(min=0.0)
        torch.minimum(mind2, d2, out=mind2)
        mind2.index_fill_(0, c, -1.0)  # selected rows stay at -1 (min with d2 >= 0)
        c = torch.argmax(mind2).view(1)
    return sel.cpu().numpy()


def greedy_coreset(
    features: np.ndarray,
    n_select: int,
    start_index: int = 0,
    device: str = "cpu",
) -> np.ndarray:
    """Greedy k-center (farthest-point) coreset of the rows of ``features``.

    Parameters
    ----------
    features:
        ``(N, D)`` float array (float16/float32/float64; not modified).
    n_select:
        Number of rows to select, ``0 <= n_select <= N``.
    start_index:
        Row of the first centre.
    device:
        ``"cpu"`` (default) runs the pruned numpy algorithm.  Any other torch
        device string (``"cuda"``, ``"cuda:1"``) runs the plain exact algorithm
        with torch on that device; if CUDA is requested but unavailable a
        warning is issued and the CPU algorithm is used.

    Returns
    -------
    ``(n_select,)`` int64 array of distinct row indices in selection order:
    ``out[0] == start_index`` and each following row is the one farthest
    (Euclidean) from all rows selected before it - the same picks as the naive
    ``O(N * k)`` algorithm, up to ties.  Once every remaining row coincides with
    a selected one (distance 0), remaining rows are picked in an unspecified
    order.
    """
    x = _as_2d_array(features)
    n = x.shape[0]
    n_select = int(n_select)
    if not 0 <= n_select <= n:
        raise ValueError(f"n_select must be in [0, {n}], got {n_select}")
    if n_select == 0:
        return np.empty(0, dtype=np.int64)
    start_index = int(start_index)
    if start_index < 0:
        start_index += n
    if not 0 <= start_index < n:
        raise ValueError(f"start_index out of range for {n} points")

    dev = str(device) if device is not None else "cpu"
    if dev != "cpu":
        import torch

        tdev = torch.device(dev)
        if tdev.type == "cuda" and not torch.cuda.is_available():
            warnings.warn("CUDA is not available; running the coreset selection on the CPU", RuntimeWarning, stacklevel=2)
        elif tdev.type != "cpu":
            return _greedy_torch(x, n_select, start_index, tdev)

    return _GreedyKCenter(x, n_select).run(start_index)


def coverage_radius(features: np.ndarray, selected_indices: np.ndarray, chunk_size: int = 65536) -> float:
    """Largest Euclidean distance from any row of ``features`` to its nearest selected row.

    Exact nearest-neighbour search with a faiss ``IndexFlatL2`` over the selected
    rows, querying the bank in chunks of ``chunk_size`` rows to bound memory.
    """
    import faiss

    x = _as_2d_array(features)
    sel = np.asarray(selected_indices, dtype=np.int64).ravel()
    if sel.size == 0:
        raise ValueError("selected_indices is empty")
    if x.shape[0] == 0:
        return 0.0
    # Centre on the selected rows' mean for an accurate |x|^2 + |c|^2 - 2 x.c in float32.
    mean = x[sel].mean(axis=0, dtype=np.float64)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(_centred_float32(x[sel], mean))
    worst = 0.0
    for s in range(0, x.shape[0], int(chunk_size)):
        q = _centred_float32(x[s:s + int(chunk_size)], mean)
        dist, _ = index.search(q, 1)
        worst = max(worst, float(dist.max()))
    return math.sqrt(max(worst, 0.0))
