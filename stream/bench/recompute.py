"""``clusterstream bench recompute``: the off-peak recompute at full size.

User vectors are drawn around planted centres (the synthetic generator's),
the previous centre set is the planted one slightly moved, and the timed part
is :func:`stream.core.recompute.recompute` with Hungarian id matching.
"""

from __future__ import annotations

import time

import numpy as np

from stream.bench.machine import machine_info, peak_rss_mb
from stream.core.centres import CentreSet
from stream.core.items import unit_rows
from stream.core.recompute import DEFAULT_SAMPLE, recompute
from stream.io.synth import SynthConfig, generate


def user_vectors(users: int, dim: int, k: int, seed: int, spread: float = 0.5):
    """(users, dim) float32 unit vectors around ``k`` planted centres, the
    planted centres (k, dim) and each user's planted cluster (users,)."""
    data = generate(
        SynthConfig(n_users=users, n_clusters=k, n_items=k, dim=dim, n_events=0, seed=seed)
    )
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((users, dim), dtype=np.float32) * (spread / np.sqrt(dim))
    x = unit_rows(data.centres[data.truth_before] + noise)
    return x, data.centres, data.truth_before


def previous_centres(planted: np.ndarray, seed: int, move: float = 0.1) -> CentreSet:
    """The planted centres, each moved a little: the set a recompute replaces."""
    rng = np.random.default_rng(seed + 1)
    moved = planted + rng.standard_normal(planted.shape).astype(np.float32) * (
        move / np.sqrt(planted.shape[1])
    )
    return CentreSet.create(moved, reason="bootstrap", created_at_ms=0)


def run(
    users: int = 1_000_000,
    dim: int = 64,
    k: int = 500,
    seed: int = 0,
    sample: int = DEFAULT_SAMPLE,
    vectors: np.ndarray | None = None,
    planted: np.ndarray | None = None,
) -> dict:
    """Time one recompute (k-means + assignment + matching); return its figures."""
    t0 = time.perf_counter()
    if vectors is None:
        vectors, planted, _ = user_vectors(users, dim, k, seed)
    previous = previous_centres(planted, seed)
    setup_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    centres, stats = recompute(vectors, previous, k=k, seed=seed, sample=sample)
    seconds = time.perf_counter() - t1
    return {
        "benchmark": "recompute",
        "users": int(len(vectors)),
        "dim": int(vectors.shape[1]),
        "k": k,
        "sample": sample,
        "seconds": round(seconds, 3),
        "seconds_kmeans": round(stats.seconds_kmeans, 3),
        "seconds_assign": round(stats.seconds_assign, 3),
        "seconds_match": round(stats.seconds_match, 3),
        "seconds_setup": round(setup_s, 3),
        "matched": stats.matched,
        "new": stats.new,
        "retired": stats.retired,
        "id_churn": round(stats.id_churn, 4),
        "user_churn": round(stats.user_churn, 4),
        "inertia_before": round(stats.inertia_before, 5),
        "inertia_after": round(stats.inertia_after, 5),
        "version": centres.version,
        "peak_rss_mb": peak_rss_mb(),
        **machine_info(),
    }
