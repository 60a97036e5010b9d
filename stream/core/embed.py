"""Item vectors learnt from a click log, for catalogues that carry none.

This plays the role item2vec (word2vec over click sessions) plays elsewhere,
with the count-based equivalent of skip-gram: a factorised positive PMI
matrix (Levy & Goldberg 2014, "Neural word embedding as implicit
matrix factorization"; Levy, Goldberg & Dagan 2015, "Improving distributional
similarity with lessons learned from word embeddings"). It needs no training
loop, no learning rate and no epochs, and is deterministic for a given seed.

The method, in order:

1. **Rare items out.** Items clicked fewer than ``min_count`` times are removed
   from the log first (as word2vec removes rare words from a sentence before
   windowing), so they neither get a vector nor break up a window. They are
   reported in :attr:`Embedding.dropped`.
2. **Histories.** Each user's remaining clicks in time order (ties keep the
   order of the log).
3. **Co-occurrences.** Two clicks ``d`` positions apart in one history
   (``1 <= d <= window``) co-occur with weight ``window - d + 1``: word2vec's
   dynamic window (a context ``d`` away is sampled with probability
   ``(window - d + 1) / window``), without the division, which PMI does not
   see. Pairs of the same item (re-clicks) are skipped: they say nothing
   about what an item is close to. The counts are symmetric: a sparse
   item x item matrix ``C = M + M.T``. A user with one click adds nothing.
   Integer weights make the sums exact, so ``C`` does not depend on the
   order of users in the log.
4. **PPMI** with context-distribution smoothing:
   ``max(0, log(C_ij / (C_i * P_a(j))))`` with ``C_i`` the row sum and
   ``P_a(j) = C_j**a / sum_k C_k**a``, ``a = 0.75`` as in word2vec's negative
   sampling. Only the non-zeros of ``C`` are touched. An item whose PPMI row
   is empty (never co-clicked, or only with items that explain it no better
   than chance) gets no vector; it is reported in :attr:`Embedding.isolated`.
5. **Truncated SVD** ``PPMI ~ U S V^T`` by randomized SVD (Halko, Martinsson &
   Tropp 2011, with QR re-orthonormalised power iterations), written with
   numpy over the scipy.sparse matrix, the Gaussian sketch drawn from
   ``seed``; singular vectors get a fixed sign (largest entry positive).
   The vectors are ``U * sqrt(S)`` (the symmetric weighting Levy et al.
   recommend) with unit rows.

Shapes and figures are in :class:`Embedding`; :func:`item_records` turns one
into records of the ``item`` topic (schemas/item.schema.json).

>>> users = [f"u{u}" for u in range(40) for _ in range(6)]
>>> items = [f"{'ab'[u % 2]}{(u + k) % 5}" for u in range(40) for k in range(6)]
>>> emb = learn_item_vectors(users, items, np.arange(240), dim=2, window=3, min_count=1)
>>> emb.item_ids
['a0', 'a1', 'a2', 'a3', 'a4', 'b0', 'b1', 'b2', 'b3', 'b4']
>>> emb.vectors.shape, emb.vectors.dtype, emb.n_users
((10, 2), dtype('float32'), 40)
>>> v = dict(zip(emb.item_ids, emb.vectors))
>>> bool(v["a0"] @ v["a1"] > 0.9 and abs(v["a0"] @ v["b1"]) < 0.1)
True
>>> item_records(emb, ts_ms=1_700_000_000_000)[0]["item_id"]
'a0'
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numba
import numpy as np
import scipy.linalg
import scipy.sparse as sp
from threadpoolctl import threadpool_limits

from stream.core.items import unit_rows

logger = logging.getLogger(__name__)

#: Exponent of the smoothed context distribution (word2vec's negative sampling).
CONTEXT_ALPHA = 0.75
#: Extra columns of the randomized SVD sketch beyond ``dim``.
OVERSAMPLE = 16
#: Power iterations of the randomized SVD (PPMI spectra decay slowly).
POWER_ITERATIONS = 6
_ORTH_TOL = 1e-8

#: ``progress(phase, n, total)``: ``n`` more steps of ``phase`` are done.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True, eq=False)
class Embedding:
    """Item vectors learnt from a click log, and how they were made.

    - ``item_ids``: ``list[str]`` of the n items with a vector, sorted
    - ``vectors``: (n, dim) float32, unit rows, row i is ``item_ids[i]``
    - ``dropped``: ``{item_id: clicks}`` of items below ``min_count`` clicks
    - ``isolated``: ``{item_id: clicks}`` of items with enough clicks but an
      empty PPMI row (no informative co-click), so no vector
    - ``n_clicks``: clicks in the log; ``n_users``: distinct users in it
    - ``n_pairs``: co-occurring click pairs counted (rare items and re-clicks
      excluded); ``nnz``: distinct item pairs with a positive PPMI
    - ``seconds``: wall time of :func:`learn_item_vectors`
    """

    item_ids: list[str]
    vectors: np.ndarray
    dropped: dict[str, int]
    isolated: dict[str, int]
    dim: int
    window: int
    min_count: int
    seed: int
    n_clicks: int
    n_users: int
    n_pairs: int
    nnz: int
    seconds: float
    singular_values: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def __len__(self) -> int:
        return len(self.item_ids)

    def stats(self) -> dict:
        """The figures as a JSON-ready dict (no vectors, no id lists)."""
        return {
            "items_embedded": len(self.item_ids),
            "items_dropped": len(self.dropped),
            "items_isolated": len(self.isolated),
            "dim": self.dim,
            "window": self.window,
            "min_count": self.min_count,
            "seed": self.seed,
            "clicks": self.n_clicks,
            "users": self.n_users,
            "pairs": self.n_pairs,
            "nnz": self.nnz,
            "seconds": round(self.seconds, 3),
        }


def learn_item_vectors(
    user_ids: Sequence[str],
    item_ids: Sequence[str],
    ts: np.ndarray,
    dim: int = 32,
    window: int = 10,
    min_count: int = 5,
    seed: int = 0,
    *,
    alpha: float = CONTEXT_ALPHA,
    progress: Progress | None = None,
) -> Embedding:
    """Learn a unit (dim,) float32 vector per item from who clicked what when.

    ``user_ids`` / ``item_ids``: one entry per click; ``ts``: (n,) numbers
    (e.g. int64 epoch ms) that order each user's clicks. See the module
    docstring for the method. Raises ``ValueError`` for inconsistent input,
    non-positive ``dim`` / ``window`` / ``min_count``, or fewer items with a
    vector than ``dim``.
    """
    started = time.perf_counter()
    n = len(user_ids)
    ts_arr = np.asarray(ts)
    if len(item_ids) != n or ts_arr.shape != (n,):
        raise ValueError("user_ids, item_ids and ts must have the same length")
    if n and ts_arr.dtype.kind not in "iuf":
        raise ValueError(f"ts must be numeric, got dtype {ts_arr.dtype}")
    for name, value in (("dim", dim), ("window", window), ("min_count", min_count)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
    if not 0.0 < alpha <= 1.0:
        raise ValueError(f"alpha must be in (0, 1], got {alpha}")
    report = progress or (lambda phase, k, total: None)

    # 1. items (sorted ids, so the result does not depend on first-seen order)
    item_code, seen_items = _factorise(item_ids)
    order_ids = np.array(sorted(range(len(seen_items)), key=seen_items.__getitem__), np.int64)
    remap = np.empty(len(seen_items), dtype=np.int64)
    remap[order_ids] = np.arange(len(seen_items))
    all_ids = [seen_items[i] for i in order_ids.tolist()]
    item_code = remap[item_code]
    clicks = np.bincount(item_code, minlength=len(all_ids))
    kept = clicks >= min_count
    dropped = {all_ids[i]: int(clicks[i]) for i in np.flatnonzero(~kept).tolist()}
    n_kept = int(kept.sum())
    if n_kept < dim:
        raise ValueError(
            f"only {n_kept} items have at least {min_count} clicks (of {len(all_ids)} items "
            f"in {n} clicks); need at least dim={dim}: lower --dim or --min-count"
        )
    kept_code = np.cumsum(kept) - 1  # old code -> row among kept items
    kept_ids = [all_ids[i] for i in np.flatnonzero(kept).tolist()]

    # 2. histories: kept clicks grouped by user, in time order
    user_code, seen_users = _factorise(user_ids)
    mask = kept[item_code]
    u = user_code[mask]
    order = np.lexsort((ts_arr[mask], u))
    u = u[order]
    seq = kept_code[item_code[mask]][order]

    # 3. weighted co-occurrence counts within the window
    upper = sp.csr_matrix((n_kept, n_kept), dtype=np.float64)
    n_pairs = 0
    for d in range(1, window + 1):
        if d < seq.size:
            same = (u[:-d] == u[d:]) & (seq[:-d] != seq[d:])
            a, b = seq[:-d][same], seq[d:][same]
            if a.size:
                w = np.full(a.size, float(window - d + 1))
                upper = upper + sp.coo_matrix((w, (a, b)), shape=(n_kept, n_kept)).tocsr()
                n_pairs += int(a.size)
        report("pairs", 1, window)
    counts = (upper + upper.T).tocsr()
    del upper

    # 4. positive PMI with a smoothed context distribution
    ppmi = _ppmi(counts, alpha)
    del counts
    has_row = np.diff(ppmi.indptr) > 0
    isolated = {kept_ids[i]: int(clicks[kept][i]) for i in np.flatnonzero(~has_row).tolist()}
    n_rows = int(has_row.sum())
    if n_rows < dim:
        raise ValueError(
            f"only {n_rows} items were co-clicked with other items within window={window} "
            f"(of {n_kept} with at least {min_count} clicks); need at least dim={dim}"
        )
    rows = ppmi[has_row] if n_rows < n_kept else ppmi

    # 5. truncated SVD -> U * sqrt(S), unit rows
    with threadpool_limits(1, user_api="blas"):  # see randomized_svd
        u_vecs, s_vals = randomized_svd(rows, dim, seed=seed, progress=report)
    vectors = unit_rows(u_vecs * np.sqrt(s_vals))
    out_ids = [kept_ids[i] for i in np.flatnonzero(has_row).tolist()]

    emb = Embedding(
        item_ids=out_ids,
        vectors=vectors,
        dropped=dropped,
        isolated=isolated,
        dim=dim,
        window=window,
        min_count=min_count,
        seed=seed,
        n_clicks=n,
        n_users=len(seen_users),
        n_pairs=n_pairs,
        nnz=int(ppmi.nnz),
        seconds=time.perf_counter() - started,
        singular_values=s_vals,
    )
    logger.info(
        "embedded %d items (%d dropped, %d isolated) from %d clicks in %.2f s",
        len(out_ids),
        len(dropped),
        len(isolated),
        n,
        emb.seconds,
    )
    return emb


def item_records(embedding: Embedding, ts_ms: int) -> list[dict]:
    """``item`` topic records ``{"item_id", "ts", "vector"}``, one per embedded item."""
    ts_ms = int(ts_ms)
    if ts_ms < 0:
        raise ValueError(f"ts_ms must be >= 0, got {ts_ms}")
    return [
        {"item_id": item_id, "ts": ts_ms, "vector": vec}
        for item_id, vec in zip(embedding.item_ids, embedding.vectors.tolist(), strict=True)
    ]


def randomized_svd(
    a: sp.spmatrix | np.ndarray,
    k: int,
    seed: int = 0,
    oversample: int = OVERSAMPLE,
    n_iter: int = POWER_ITERATIONS,
    progress: Progress | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` left singular vectors and values of a (m, n) matrix.

    Returns ``(U, S)``: (m, k) float64 and (k,) float64, descending; each
    column of ``U`` has its largest-magnitude entry positive, so the result is
    fixed for a given ``seed``. Needs ``k <= min(m, n)``.
    """
    m, n = a.shape
    if not 1 <= k <= min(m, n):
        raise ValueError(f"k must be in [1, {min(m, n)}], got {k}")
    report = progress or (lambda phase, step, total: None)
    width = min(k + oversample, min(m, n))
    if sp.issparse(a):  # CSR both ways, so A @ x and A.T @ x run the same kernel
        a, a_t = sp.csr_matrix(a, dtype=np.float64), sp.csr_matrix(a.T, dtype=np.float64)
        a.sort_indices()
        a_t.sort_indices()
        mul = _csr_times_dense
    else:
        a = np.asarray(a, dtype=np.float64)
        a_t = a.T
        mul = np.matmul
    sketch = np.random.default_rng(seed).standard_normal((n, width))
    q = _orth(mul(a, sketch))
    total = n_iter + 1
    for _ in range(n_iter):
        q = _orth(mul(a, _orth(mul(a_t, q))))
        report("svd", 1, total)
    b_t = mul(a_t, q)  # (n, width) = (Q^T A)^T
    v, s, ub_t = scipy.linalg.svd(b_t, full_matrices=False, lapack_driver="gesdd")
    u = q @ ub_t.T[:, :k]
    s = s[:k]
    big = np.argmax(np.abs(u), axis=0)
    u *= np.where(u[big, np.arange(k)] < 0, -1.0, 1.0)
    report("svd", 1, total)
    return u, s


def _csr_times_dense(a: sp.csr_matrix, x: np.ndarray) -> np.ndarray:
    """``a @ x`` for a float64 CSR matrix and a C-ordered float64 array.

    Rows in parallel (numba), each summed in index order: the result does not
    depend on the number of threads; scipy's product runs on one thread.
    """
    out = np.empty((a.shape[0], x.shape[1]), dtype=np.float64)
    _spmm(a.indptr, a.indices, a.data, np.ascontiguousarray(x, dtype=np.float64), out)
    return out


@numba.njit(parallel=True, cache=True)
def _spmm(indptr, indices, data, x, out):
    for i in numba.prange(out.shape[0]):
        for c in range(out.shape[1]):
            out[i, c] = 0.0
        for p in range(indptr[i], indptr[i + 1]):
            v = data[p]
            j = indices[p]
            for c in range(out.shape[1]):
                out[i, c] += v * x[j, c]


def _orth(x: np.ndarray) -> np.ndarray:
    """Orthonormal basis of the columns of a tall (m, l) array, l small.

    CholeskyQR2 (two passes of ``x @ inv(chol(x.T @ x))``): two small Gram
    products instead of a Householder QR, which with OpenBLAS on a busy
    machine cost more than the rest of an iteration. Falls back to QR
    when the columns are (nearly) dependent and the result is not orthonormal.
    """
    q = x
    for _ in range(2):
        try:
            r = scipy.linalg.cholesky(q.T @ q, lower=False, check_finite=False)
        except np.linalg.LinAlgError:
            break
        q = q @ scipy.linalg.solve_triangular(r, np.eye(r.shape[0]), check_finite=False)
    else:
        if np.abs(q.T @ q - np.eye(q.shape[1])).max() < _ORTH_TOL:
            return q
    q, _ = scipy.linalg.qr(x, mode="economic", check_finite=False)
    return q


def _ppmi(counts: sp.csr_matrix, alpha: float) -> sp.csr_matrix:
    """PPMI of a symmetric count matrix (no validation; zeros stay implicit)."""
    row = np.asarray(counts.sum(axis=1)).ravel()
    ctx = np.asarray(counts.sum(axis=0)).ravel() ** alpha
    total_ctx = ctx.sum()
    out = counts.copy()
    if out.nnz == 0:
        return out
    r = np.repeat(np.arange(out.shape[0]), np.diff(out.indptr))
    pmi = np.log(out.data) - np.log(row[r]) - np.log(ctx[out.indices] / total_ctx)
    out.data = np.maximum(pmi, 0.0)
    out.eliminate_zeros()
    return out


def _factorise(values: Sequence[str]) -> tuple[np.ndarray, list[str]]:
    """(n,) int64 codes of ``values`` in first-seen order, and the distinct values."""
    index: dict[str, int] = {}
    codes = np.fromiter(
        (index.setdefault(v, len(index)) for v in values), dtype=np.int64, count=len(values)
    )
    return codes, list(index)
