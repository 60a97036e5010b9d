"""The off-peak recompute: new centres from all user vectors, with stable ids.

1. Spherical k-means (faiss) on the user vectors, seeded by k-means++ on a
   sample; above ``sample`` vectors a uniform sample is clustered.
2. With a k range, k is chosen by the elbow of the inertia curve: the k whose
   point lies farthest below the chord from the first to the last point.
3. New centres are matched to the previous ids by the Hungarian method
   (``scipy.optimize.linear_sum_assignment``) on cosine similarity; a pair is
   accepted only at ``match_threshold`` or above. Matched centres keep their
   id, other new centres get fresh ids (never used before), unmatched old ids
   are retired with an alias to their nearest new centre.

Inertia here is the mean cosine distance ``1 - max cos`` of the vectors to
their nearest centre.

>>> rng = np.random.default_rng(0)
>>> planted = unit(rng.standard_normal((3, 16)))
>>> x = unit(np.repeat(planted, 200, axis=0) + 0.1 * rng.standard_normal((600, 16)))
>>> first, _ = recompute(x, None, k=3, seed=1)
>>> again, stats = recompute(x, first, k=3, seed=2)
>>> sorted(again.ids.tolist()) == sorted(first.ids.tolist()), stats.retired
(True, 0)
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass

import faiss
import numpy as np
from scipy.optimize import linear_sum_assignment

from stream.core.centres import CentreSet
from stream.core.items import unit_rows as unit

logger = logging.getLogger(__name__)

DEFAULT_SAMPLE = 200_000
DEFAULT_MATCH_THRESHOLD = 0.5
ASSIGN_CHUNK = 65_536


@dataclass(frozen=True)
class RecomputeStats:
    """Figures of one recompute (all JSON-ready)."""

    k: int
    n_vectors: int
    n_sampled: int
    inertia_before: float | None
    inertia_after: float
    matched: int
    new: int
    retired: int
    id_churn: float
    user_churn: float | None
    k_curve: dict[int, float] | None
    seconds: float
    seconds_kmeans: float
    seconds_assign: float
    seconds_match: float

    def as_dict(self) -> dict:
        d = asdict(self)
        if self.k_curve is not None:
            d["k_curve"] = {str(k): v for k, v in self.k_curve.items()}
        return d


def nearest(x: np.ndarray, centres: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row of the nearest centre (n,) int64 and its cosine (n,) float32, in chunks.

    ``x``: (n, d) float32 unit; ``centres``: (k, d) float32 unit.
    """
    rows = np.empty(len(x), dtype=np.int64)
    best = np.empty(len(x), dtype=np.float32)
    ct = np.ascontiguousarray(centres.T)
    for start in range(0, len(x), ASSIGN_CHUNK):
        s = x[start : start + ASSIGN_CHUNK] @ ct
        r = np.argmax(s, axis=1)
        rows[start : start + len(r)] = r
        best[start : start + len(r)] = s[np.arange(len(r)), r]
    return rows, best


def kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator, power: float = 2.0) -> np.ndarray:
    """Greedy k-means++ seeding: (k, d) float32 rows of ``x`` (unit rows).

    Each step draws ``2 + log(k)`` candidates with probability proportional to
    ``(1 - cos to the nearest seed) ** power`` and keeps the one that lowers the
    total most. ``(1 - cos)`` is half the squared Euclidean distance, so
    ``power=1`` is classic k-means++; ``power=2`` leans towards uncovered
    clusters: on 500 planted noisy clusters (``bench recompute`` data) it left
    4-5 of them without a seed where ``power=1`` left 11-13, and Lloyd
    iterations cannot repair two seeds in one cluster.
    """
    n = len(x)
    trials = 2 + int(np.log(k))
    chosen = [int(rng.integers(n))]
    dist = np.maximum(1.0 - x @ x[chosen[0]], 0.0).astype(np.float64)
    for _ in range(1, k):
        weight = dist**power
        total = weight.sum()
        if total <= 0:
            cand = rng.integers(n, size=1)
        else:
            cand = np.searchsorted(np.cumsum(weight), rng.random(trials) * total)
            cand = np.minimum(cand, n - 1)
        cand_dist = np.maximum(1.0 - x[cand] @ x.T, 0.0)  # (trials, n)
        np.minimum(cand_dist, dist[None, :], out=cand_dist)
        best = int(np.argmin((cand_dist**power).sum(axis=1)))
        chosen.append(int(cand[best]))
        dist = cand_dist[best].astype(np.float64)
    return x[chosen].copy()


def spherical_kmeans(
    x: np.ndarray,
    k: int,
    seed: int = 0,
    niter: int = 20,
    init_sample: int = 50_000,
    init: np.ndarray | None = None,
) -> tuple[np.ndarray, float]:
    """Unit centres (k, d) float32 and inertia (mean 1 - cos) of ``x`` (n, d) float32 unit;
    ``init`` (k, d) float32: the starting centres (default: k-means++ on a sample)."""
    n, d = x.shape
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of vectors ({n}), got {k}")
    if init is None:
        rng = np.random.default_rng(seed)
        init_rows = x if n <= init_sample else x[rng.choice(n, init_sample, replace=False)]
        init = kmeans_pp(init_rows, k, rng)
    else:
        init = np.ascontiguousarray(init, dtype=np.float32)
    # min_points_per_centroid=1: clustering a few users per centre is intended (a
    # bootstrap, an elbow over a k range); faiss's default of 39 only prints a warning
    km = faiss.Kmeans(
        d, k, niter=niter, spherical=True, seed=seed, max_points_per_centroid=max(256, n // k + 1),
        min_points_per_centroid=1,
    )  # fmt: skip
    km.train(x, init_centroids=init)
    centres = unit(km.centroids)
    _, best = nearest(x, centres)
    return centres, float(np.mean(1.0 - best))


def publish_verdict(
    stats: RecomputeStats, max_churn: float = 1.0, min_gain: float = 0.0
) -> str | None:
    """Why a recompute should not be published, or None to publish it: a new set that
    moves more than ``max_churn`` of the users' primary ids must lower the inertia
    by at least ``min_gain`` (relative), else it is churn without a better fit.

    >>> s = RecomputeStats(k=8, n_vectors=100, n_sampled=100, inertia_before=0.30,
    ...     inertia_after=0.29, matched=8, new=0, retired=0, id_churn=0.0, user_churn=0.4,
    ...     k_curve=None, seconds=0.1, seconds_kmeans=0.1, seconds_assign=0.0, seconds_match=0.0)
    >>> publish_verdict(s, max_churn=0.05, min_gain=0.05)
    'user churn 0.4 > 0.05 for an inertia gain of 0.033 < 0.05'
    >>> publish_verdict(s, max_churn=0.5) is None
    True
    """
    churn, before = stats.user_churn, stats.inertia_before
    if churn is None or before is None or churn <= max_churn:
        return None
    gain = (before - stats.inertia_after) / before if before > 0 else 0.0
    if gain >= min_gain:
        return None
    return f"user churn {churn:.3g} > {max_churn:.3g} for an inertia gain of {gain:.3g} < {min_gain:.3g}"


def elbow(ks: list[int], inertias: list[float]) -> int:
    """The k at the elbow of a decreasing inertia curve (farthest below the chord).

    >>> elbow([2, 4, 6, 8, 10], [0.9, 0.3, 0.25, 0.22, 0.2])
    4
    """
    if len(ks) < 3:
        return ks[int(np.argmin(inertias))] if len(ks) else 0
    k = np.asarray(ks, dtype=np.float64)
    y = np.asarray(inertias, dtype=np.float64)
    kn = (k - k[0]) / (k[-1] - k[0])
    span = y[0] - y[-1]
    yn = (y - y[-1]) / span if span > 0 else np.zeros_like(y)
    chord = 1.0 - kn  # the line from (0, 1) to (1, 0)
    return int(ks[int(np.argmax(chord - yn))])


def k_candidates(lo: int, hi: int, max_points: int = 8) -> list[int]:
    """Up to ``max_points`` k values spread geometrically over [lo, hi].

    >>> k_candidates(2, 10, max_points=5)
    [2, 3, 4, 7, 10]
    """
    if lo < 1 or hi < lo:
        raise ValueError("k range must satisfy 1 <= lo <= hi")
    grid = np.unique(np.round(np.geomspace(lo, hi, num=min(max_points, hi - lo + 1))).astype(int))
    return sorted({int(lo), int(hi), *grid.tolist()})


def match_ids(
    new: np.ndarray, previous: CentreSet, threshold: float = DEFAULT_MATCH_THRESHOLD
) -> tuple[np.ndarray, dict[int, int], int]:
    """Ids for the new centres (k, d) and aliases for the previous ids that are retired.

    Returns ``(ids, aliases, matched)``: matched centres keep their old id, the
    others get fresh ids from ``previous.next_id``; each unmatched old id gets an
    alias to its nearest new centre. The matching maximises the summed cosine
    of the accepted pairs (pairs below ``threshold`` count as 0).
    """
    sim = new.astype(np.float64) @ previous.vectors64.T  # (k_new, k_old)
    # pairs below the threshold can never be accepted: they must not steal an id
    usable = np.where(sim >= threshold, sim, 0.0)
    rows, cols = linear_sum_assignment(-usable)
    ok = sim[rows, cols] >= threshold
    ids = np.full(len(new), -1, dtype=np.int64)
    ids[rows[ok]] = previous.ids[cols[ok]]
    fresh = np.flatnonzero(ids < 0)
    ids[fresh] = previous.next_id + np.arange(len(fresh))
    kept = set(ids.tolist())
    aliases = {}
    for col, old in enumerate(previous.ids.tolist()):
        if old not in kept:
            aliases[old] = int(ids[int(np.argmax(sim[:, col]))])
    return ids, aliases, int(ok.sum())


def recompute(
    vectors: np.ndarray,
    previous: CentreSet | None,
    k: int | None = None,
    k_range: tuple[int, int] | None = None,
    seed: int = 0,
    sample: int = DEFAULT_SAMPLE,
    match_threshold: float = DEFAULT_MATCH_THRESHOLD,
    niter: int = 20,
    reason: str = "recompute",
    created_at_ms: int | None = None,
    warm_start: bool = True,
) -> tuple[CentreSet, RecomputeStats]:
    """New centres from user vectors, ids matched to ``previous``.

    - ``vectors``: (n, d) float32 unit user vectors (zero rows are ignored)
    - ``k`` or ``k_range=(lo, hi)`` (elbow method); with neither, ``previous.k``
    - ``warm_start``: with a fixed k equal to ``previous.k``, k-means starts from
      the previous centres instead of k-means++
    - returns the next :class:`CentreSet` (version 1 when ``previous`` is None)
      and its :class:`RecomputeStats`
    """
    t0 = time.perf_counter()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or (previous is not None and x.shape[1] != previous.dim):
        raise ValueError("vectors must be (n, d) with the dimension of the previous centres")
    x = x[np.einsum("ij,ij->i", x, x) > 0]
    n = len(x)
    rng = np.random.default_rng(seed)
    train = x if n <= sample else x[np.sort(rng.choice(n, sample, replace=False))]
    curve = None
    if k_range is not None:
        lo, hi = k_range
        ks = [c for c in k_candidates(lo, hi) if c <= len(train)]
        if not ks:
            raise ValueError(f"k range {k_range} needs at least {lo} vectors, got {len(train)}")
        fits = {c: spherical_kmeans(train, c, seed, niter) for c in ks}
        curve = {c: fits[c][1] for c in ks}
        k = elbow(ks, [curve[c] for c in ks])
        new_vectors = fits[k][0]
    else:
        if k is None:
            if previous is None:
                raise ValueError("give k or k_range for the first recompute")
            k = previous.k
        # the previous centres as the start when k is unchanged: unchanged data then
        # gives back (nearly) the same centres, and users keep their ids
        start = (
            previous.vectors if warm_start and previous is not None and previous.k == k else None
        )
        new_vectors, _ = spherical_kmeans(train, k, seed, niter, init=start)
    t1 = time.perf_counter()

    new_rows, new_best = nearest(x, new_vectors)
    sizes = np.bincount(new_rows, minlength=len(new_vectors))
    inertia_after = float(np.mean(1.0 - new_best)) if n else 0.0
    inertia_before = None
    old_primary = None
    if previous is not None and n:
        old_rows, old_best = nearest(x, previous.vectors)
        inertia_before = float(np.mean(1.0 - old_best))
        old_primary = previous.ids[old_rows]
    t2 = time.perf_counter()

    if previous is None:
        ids, aliases, matched = np.arange(len(new_vectors)), {}, 0
    else:
        ids, aliases, matched = match_ids(new_vectors, previous, match_threshold)
    user_churn = None
    if old_primary is not None:
        user_churn = float(np.mean(old_primary != ids[new_rows]))
    t3 = time.perf_counter()

    stats = RecomputeStats(
        k=int(len(new_vectors)),
        n_vectors=int(n),
        n_sampled=int(len(train)),
        inertia_before=inertia_before,
        inertia_after=inertia_after,
        matched=matched,
        new=int(len(new_vectors) - matched) if previous is not None else int(len(new_vectors)),
        retired=len(aliases),
        id_churn=(len(aliases) / previous.k) if previous is not None else 0.0,
        user_churn=user_churn,
        k_curve=curve,
        seconds=t3 - t0,
        seconds_kmeans=t1 - t0,
        seconds_assign=t2 - t1,
        seconds_match=t3 - t2,
    )
    if previous is None:
        centres = CentreSet.create(
            new_vectors,
            reason=reason,
            ids=ids,
            sizes=sizes,
            created_at_ms=created_at_ms,
            stats=stats.as_dict(),
        )
    else:
        centres = previous.successor(
            ids, new_vectors, sizes, aliases, reason, created_at_ms, stats.as_dict()
        )
    logger.info(
        "recompute: k=%d n=%d matched=%d new=%d retired=%d in %.2fs",
        stats.k,
        n,
        stats.matched,
        stats.new,
        stats.retired,
        stats.seconds,
    )
    return centres, stats
