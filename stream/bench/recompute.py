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


def run_from_kafka(
    users: int = 1_000_000,
    dim: int = 64,
    k: int = 500,
    seed: int = 0,
    sample: int = DEFAULT_SAMPLE,
    bootstrap: str | None = None,
) -> dict:
    """The recompute as the CLI runs it: read every user vector from the users
    changelog topic on a broker (the embedded one unless ``bootstrap`` is given),
    then k-means and matching. The changelog is written first (untimed)."""
    import asyncio
    import contextlib
    import tempfile
    import uuid
    from pathlib import Path

    from stream.io.broker import EmbeddedBroker
    from stream.io.changelog import read_user_vectors
    from stream.io.kafka import ensure_topics
    from stream.io.topics import Topics
    from stream.settings import Settings

    vectors, planted, _ = user_vectors(users, dim, k, seed)
    previous = previous_centres(planted, seed)
    with contextlib.ExitStack() as stack:
        if bootstrap is None:
            bootstrap = stack.enter_context(EmbeddedBroker()).bootstrap
        settings = Settings(
            bootstrap_servers=bootstrap,
            embedded_broker=True,
            app_id=f"bench-{uuid.uuid4().hex[:8]}",
            data_dir=Path(tempfile.gettempdir()),
            dim=dim,
            partitions=4,
        )
        topics = Topics(settings)
        ensure_topics(settings, topics.specs())
        dtype = settings.engine_config().user_dtype()
        t0 = time.perf_counter()
        asyncio.run(_write_changelog(settings, topics.changelog, vectors, dtype))
        write_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        read = asyncio.run(read_user_vectors(settings, topics.changelog, dtype, None, seed))
        t2 = time.perf_counter()
        centres, stats = recompute(read.vectors, previous, k=k, seed=seed, sample=sample)
        t3 = time.perf_counter()
    return {
        "benchmark": "recompute",
        "from_kafka": True,
        "users": int(read.users),
        "dim": dim,
        "k": k,
        "sample": sample,
        "seconds": round(t3 - t1, 3),
        "seconds_read": round(t2 - t1, 3),
        "seconds_kmeans": round(stats.seconds_kmeans, 3),
        "seconds_assign": round(stats.seconds_assign, 3),
        "seconds_match": round(stats.seconds_match, 3),
        "seconds_write_changelog": round(write_s, 3),
        "changelog_records": read.records,
        "matched": stats.matched,
        "new": stats.new,
        "retired": stats.retired,
        "id_churn": round(stats.id_churn, 4),
        "user_churn": round(stats.user_churn, 4),
        "version": centres.version,
        "peak_rss_mb": peak_rss_mb(),
        **machine_info(),
    }


async def _write_changelog(settings, topic: str, vectors: np.ndarray, dtype: np.dtype) -> None:
    """One changelog record per user (key ``u:<id>``), as the workers write them."""
    from stream.app.runtime import BatchProducer
    from stream.core.state import blank_rows

    producer = BatchProducer(settings)
    await producer.start()
    try:
        parts = await producer.partitions(topic)
        chunk = 50_000
        for start in range(0, len(vectors), chunk):
            rows = blank_rows(dtype, min(chunk, len(vectors) - start))
            rows["mean"] = vectors[start : start + len(rows)]
            rows["weight"] = 1.0
            rows["clicks"] = 1
            data = rows.tobytes()
            size = dtype.itemsize
            records = [
                ((start + i) % parts, b"u:u%08d" % (start + i), data[i * size : (i + 1) * size])
                for i in range(len(rows))
            ]
            await producer.send(topic, records)
    finally:
        await producer.stop()
