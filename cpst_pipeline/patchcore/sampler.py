"""Greedy k-center ("coreset") subsampling of PatchCore memory banks.

PatchCore keeps a memory bank of normal patch features and subsamples it with
greedy k-center (farthest-point) selection: starting from one point, repeatedly
add the point farthest from everything selected so far.  The selected set
minimises, greedily, the *coverage radius* - the largest distance from any bank
point to its nearest selected point - which is what bounds the error of the
nearest-neighbour anomaly score computed against the subsampled bank.

The textbook implementation recomputes the distance of all ``N`` points to each
new centre, ``O(N * k * D)`` work done as ``k`` memory-bound matrix-vector
products; for 500,000 x 152 features at 10 % that is hours on a CPU.  The
implementation here returns the *same picks* (up to exact ties and float32
rounding of near-ties) but does far less work:

* **Lazy batched updates.**  Distances to new centres are not pushed to all
  points immediately.  A *pool* holds the ``T`` points with the largest current
  nearest-centre distance; ``tau`` is the largest distance outside the pool.
  Distances only ever shrink, so while the pool's best (kept exact against the
  pending centres with a tiny ``T x D`` product per pick) is ``>= tau`` it is the
  global farthest point and is picked.  When the pool is exhausted, the pending
  centres are applied to the bank in one batch with a BLAS matrix-matrix product
  (compute-bound rather than memory-bound), and the pool is rebuilt.
* **Triangle-inequality pruning.**  Every point remembers its nearest centre
  ``a(x)`` and the distance ``d(x)``.  A pending centre ``p`` can only be closer
  to ``x`` if ``d(p, c_a(x)) < 2 d(x)``, so a batch flush only touches points
  with ``2 d(x) > min_p d(p, c_a(x))``.  On clustered banks (real patch features:
  near-duplicate background, a long tail) most of the bank is skipped at each
  flush; on structureless high-dimensional data (uniform noise) nothing can be
  pruned and the cost is that of the batched exact product.

Memory is ``O(N * D)`` for one float32, mean-centred copy of the bank (the input
may be float16) plus ``O(N)`` bookkeeping and bounded scratch blocks; no
``N x k`` matrix is ever formed.  Distances are float32, computed with the
``|x|^2 + |c|^2 - 2 x.c`` expansion on mean-centred data; the pruning tests carry
a small safety margin so that rounding never discards a true improvement.

With a non-CPU torch ``device`` (e.g. ``"cuda"``) the plain exact algorithm runs
on that device instead: there a full ``N x D`` matrix-vector product per pick is
cheap and needs no host synchronisation.
"""

from __future__ import annotations

import math
import warnings

import numpy as np

__all__ = ["coreset_size", "coverage_radius", "greedy_coreset"]

# Scratch blocks hold at most this many float32 values (16 MiB).
_BLOCK_ELEMS = 1 << 22
# Candidate pool size (points whose distances are kept exact between flushes).
_POOL_SIZE = 1024
# Most centres picked between two batch updates of the bank.
_MAX_PENDING = 512
# Relative safety margin of the pruning test  2 d(x) > d(p, c_a(x))  (squared: 4 d^2 > m^2).
_PRUNE_SLACK = 4.0 * (1.0 + 1e-3)
_DBG = None


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


def _flush(xa, cen, sel, f0, f1, mind2, assign) -> None:
    """Apply the pending centres ``sel[f0:f1]`` to every point that they can affect.

    ``xa`` is the augmented bank (:func:`_augmented`) and ``cen[:f0]`` holds the
    augmented rows of the centres applied so far.  Updates ``mind2`` (squared
    distance to the nearest applied centre; -1 for selected points) and
    ``assign`` (position in ``sel`` of that centre).
    """
    n = xa.shape[0]
    pend = sel[f0:f1]
    cen[f0:f1] = xa[pend]
    cp = _centre_form(cen[f0:f1]).T.copy()  # (D + 2, B)
    b = f1 - f0

    if f0 == 0:
        cand = None  # first flush: every point is new
    else:
        # m2[j]: squared distance from old centre j to its nearest pending centre.
        m2 = np.empty(f0, dtype=np.float32)
        rows = max(256, _BLOCK_ELEMS // b)
        for s in range(0, f0, rows):
            e = min(f0, s + rows)
            (cen[s:e] @ cp).min(axis=1, out=m2[s:e])
        # A pending centre p can beat x's current centre c only if d(p, c) < 2 d(x, c).
        keep = np.multiply(mind2, _PRUNE_SLACK)
        np.greater(keep, m2[assign], out=keep)
        cand = np.flatnonzero(keep)
        del keep
        if _DBG is not None:
            pairs = 0
            for s0 in range(0, f0, 2048):
                G = cen[s0:s0+2048] @ cp
                msk = (assign >= s0) & (assign < s0 + 2048)
                xs = np.flatnonzero(msk)
                pairs += int((_PRUNE_SLACK * mind2[xs][:, None] > G[assign[xs] - s0]).sum())
            _DBG.append((f0, b, cand.size, pairs))
        if cand.size == 0:
            assign[pend] = np.arange(f0, f1, dtype=assign.dtype)
            return
        if cand.size > n // 2:
            cand = None  # cheaper to stream the whole bank than to gather most of it

    rows = max(64, _BLOCK_ELEMS // b)
    total = n if cand is None else cand.size
    for s in range(0, total, rows):
        e = min(total, s + rows)
        if cand is None:
            idx = slice(s, e)
            g = xa[s:e] @ cp
        else:
            idx = cand[s:e]
            g = xa[idx] @ cp
        j = g.argmin(axis=1)
        v = np.take_along_axis(g, j[:, None], axis=1)[:, 0]
        upd = v < mind2[idx]  # selected points hold -1 and never update
        pos = np.flatnonzero(upd)
        if cand is None:
            pos += s
        else:
            pos = idx[pos]
        mind2[pos] = np.maximum(v[upd], 0.0)
        assign[pos] = j[upd] + f0
    assign[pend] = np.arange(f0, f1, dtype=assign.dtype)


def _greedy_numpy(x: np.ndarray, n_select: int, start_index: int) -> np.ndarray:
    xa = _augmented(x)
    n, d = xa.shape[0], xa.shape[1] - 2
    sel = np.empty(n_select, dtype=np.int64)
    cen = np.empty((n_select, d + 2), dtype=np.float32)
    mind2 = np.full(n, np.inf, dtype=np.float32)
    assign = np.zeros(n, dtype=np.int64)

    sel[0] = start_index
    mind2[start_index] = -1.0
    n_sel = 1
    n_applied = 0
    while True:
        _flush(xa, cen, sel, n_applied, n_sel, mind2, assign)
        n_applied = n_sel
        if n_sel >= n_select:
            break

        # Rebuild the pool: the T farthest points; tau bounds everything else.
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
        pxa = xa[pool]
        pca = _centre_form(pxa)
        pd = mind2[pool]  # fancy indexing: a copy

        limit = min(n_select, n_applied + _MAX_PENDING)
        while n_sel < limit:
            i = int(pd.argmax())
            if pd[i] < tau or pd[i] < -0.5:
                break  # pool exhausted: a point outside it may now be the farthest
            c = pool[i]
            sel[n_sel] = c
            n_sel += 1
            mind2[c] = -1.0
            dd = pxa @ pca[i]
            np.maximum(dd, 0.0, out=dd)
            np.minimum(pd, dd, out=pd)
            pd[i] = -1.0
    return sel


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

    return _greedy_numpy(x, n_select, start_index)


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
