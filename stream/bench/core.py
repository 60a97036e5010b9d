"""``clusterstream bench core``: the click hot path of the core against baselines.

One synthetic stream (planted clusters, Zipf popularity), three consumers in
the same process:

- ours: :func:`stream.core.pipeline.process_batch` in batches (user vector
  update + assignment with hysteresis + CF deltas into a CF table), its user
  phase on ``threads`` threads (:mod:`stream.core.shards`) and BLAS
  single-threaded, as the worker runs it;
- scikit-learn: ``MiniBatchKMeans(k).partial_fit(batch)`` + ``predict(batch)``
  on the clicked items' vectors, batch by batch, with its own defaults (its
  OpenMP threads on every core, BLAS single-threaded inside);
- river: ``river.cluster.KMeans(k)`` ``learn_one`` + ``predict_one`` on a
  prefix of the same stream (river is per event and slow; the prefix keeps
  the run short, the rate is per event either way).

The centres for ours come from a k-means over the item vectors (untimed).
Ours and scikit-learn run ``repeat`` times, alternating (each pass of ours on
a fresh state), and the figures are the medians: on a shared VM one pass of
ours varies more than scikit-learn's (its 1M-user state is fresh memory,
slow to write the first time); medians of interleaved passes make the ratio
steadier. Every pass is
reported.
"""

from __future__ import annotations

import logging
import time

import numba
import numpy as np
from threadpoolctl import threadpool_limits

from stream.bench.machine import machine_info, peak_rss_mb
from stream.core.centres import CentreSet
from stream.core.clicks import ClickBatch
from stream.core.pipeline import EngineConfig, EngineState, process_batch, warm_up
from stream.core.recompute import spherical_kmeans
from stream.io.synth import SynthConfig, generate
from stream.settings import Settings

logger = logging.getLogger(__name__)


def decoded_batches(data, batch: int) -> list[ClickBatch]:
    """The stream cut into batches whose id strings are fresh objects, laid out
    batch by batch, as the worker's decoder hands them over (the generator's
    shared id strings are scattered over memory and would cost a cache miss
    each)."""
    out = []
    for start in range(0, data.n_events, batch):
        b = data.click_batch(start, start + batch)
        out.append(
            ClickBatch(
                [u.encode().decode() for u in b.user_ids],
                [i.encode().decode() for i in b.item_ids],
                b.ts,
                b.weights,
                b.event_ids,
            )
        )
    return out


def _ours(data, centres: CentreSet, config: EngineConfig, batch: int, progress) -> float:
    with threadpool_limits(1, user_api="blas"):  # as the worker runs
        # untimed: load the compiled kernels once (a start-up cost of a long-running
        # worker, not a per-event one), as the worker does
        warm_up(config)
        state = EngineState.in_memory(config, centres=centres)
        state.items.upsert_many(data.item_ids, data.item_vectors)
        batches = decoded_batches(data, batch)
        t0 = time.perf_counter()
        for b in batches:
            process_batch(state, b)
            progress(len(b))
        return time.perf_counter() - t0


def _sklearn(data, k: int, batch: int, seed: int, progress) -> float:
    from sklearn.cluster import MiniBatchKMeans

    model = MiniBatchKMeans(n_clusters=k, batch_size=batch, n_init=1, random_state=seed)
    x_all = data.item_vectors[data.click_item]
    if len(x_all) < k:
        raise ValueError(f"the sklearn baseline needs at least k={k} events")
    step = max(batch, k)  # partial_fit needs k samples in its first call
    t0 = time.perf_counter()
    for start in range(0, len(x_all), step):
        x = x_all[start : start + step]
        if len(x) >= k or start > 0:
            model.partial_fit(x)
            model.predict(x)
        progress(len(x))
    return time.perf_counter() - t0


def _river(data, k: int, n: int, seed: int, progress) -> float:
    from river.cluster import KMeans

    model = KMeans(n_clusters=k, seed=seed)
    rows = [dict(enumerate(v.tolist())) for v in data.item_vectors[data.click_item[:n]]]
    t0 = time.perf_counter()
    for x in rows:
        model.learn_one(x)
        model.predict_one(x)
        progress(1)
    return time.perf_counter() - t0


def run(
    users: int = 1_000_000,
    dim: int = 64,
    k: int = 500,
    events: int = 1_000_000,
    batch: int = 1024,
    items: int = 20_000,
    river_events: int = 2000,
    seed: int = 0,
    repeat: int = 3,
    progress=None,
    threads: int = 2,
) -> dict:
    """Run the three consumers and return the figures (see the module doc)."""
    progress = progress or (lambda phase, n: None)
    t0 = time.perf_counter()
    data = generate(
        SynthConfig(
            n_users=users,
            n_clusters=k,
            n_items=max(items, k),
            dim=dim,
            n_events=events,
            seed=seed,
        )
    )
    centre_vectors, _ = spherical_kmeans(data.item_vectors, k, seed=seed, niter=10)
    centres = CentreSet.create(centre_vectors, created_at_ms=0)
    setup_s = time.perf_counter() - t0
    config = Settings(dim=dim, threads=threads).worker_engine_config()  # as a worker runs it

    ours_runs, sk_runs = [], []
    for _ in range(repeat):
        ours_runs.append(_ours(data, centres, config, batch, lambda n: progress("ours", n)))
        sk_runs.append(_sklearn(data, k, batch, seed, lambda n: progress("sklearn", n)))
    ours_s, sk_s = float(np.median(ours_runs)), float(np.median(sk_runs))
    n_river = min(river_events, events)
    river_s = _river(data, k, n_river, seed, lambda n: progress("river", n))

    ours = events / ours_s
    sk = events / sk_s
    rv = n_river / river_s
    return {
        "benchmark": "core",
        "users": users,
        "dim": dim,
        "k": k,
        "events": events,
        "batch": batch,
        "threads": threads,
        "numba_threads": numba.get_num_threads(),  # shards: at most this many
        "items": len(data.item_ids),
        "events_per_s": round(ours, 1),
        "sklearn_events_per_s": round(sk, 1),
        "river_events_per_s": round(rv, 2),
        "river_events": n_river,
        "ratio_vs_sklearn": round(ours / sk, 3),
        "repeat": repeat,
        "passes_events_per_s": [round(events / t, 1) for t in ours_runs],
        "passes_sklearn_events_per_s": [round(events / t, 1) for t in sk_runs],
        "passes_ratio_vs_sklearn": [
            round(b / a, 3) for a, b in zip(ours_runs, sk_runs, strict=True)
        ],
        "ratio_vs_river": round(ours / rv, 1),
        "seconds_ours": round(ours_s, 3),
        "seconds_sklearn": round(sk_s, 3),
        "seconds_river": round(river_s, 3),
        "seconds_setup": round(setup_s, 3),
        "peak_rss_mb": peak_rss_mb(),
        **machine_info(),
    }
