"""Read every user's vector from the users changelog topic(s).

The off-peak recompute needs all user vectors, not one worker's share: it
reads the changelog (``<app>-users-changelog``, records as in
:mod:`stream.wire.changelog`), keeps the newest record per user and returns the unit
vectors of users that have one. It never needs a worker's memory or disk, so
it also runs as a separate batch job (``clusterstream recompute``).
Above ``sample`` users a uniform sample is returned.

Reading is a group-less aiokafka consumer over all partitions up to their
high watermarks (taken from a fetch on the embedded broker, see
:mod:`stream.io.embedded_broker_workarounds`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from stream.core.items import unit_rows
from stream.io.kafka import read_to_end
from stream.settings import Settings
from stream.wire.changelog import user_id_of, user_rows

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChangelogRead:
    """Vectors read from the changelog: ``vectors`` (n, d) float32 unit rows,
    ``user_ids`` list[str] aligned with them, and what it cost."""

    vectors: np.ndarray
    user_ids: list[str]
    records: int
    users: int
    seconds: float


async def read_user_vectors(
    settings: Settings,
    topic: str,
    dtype: np.dtype,
    sample: int | None = None,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> ChangelogRead:
    """Newest record of every user in ``topic``; ``progress(records read, None)``
    is called after each fetch."""
    started = time.perf_counter()
    index: dict[bytes, int] = {}
    arrays = {
        "means": np.zeros((1024, dtype["mean"].shape[0]), dtype=np.float32),
        "weights": np.zeros(1024, dtype=np.float64),
    }
    read = [0]

    def on_batch(msgs) -> None:
        read[0] += len(msgs)
        keys, rows = user_rows(msgs, dtype, topic)
        if keys:
            slots = np.fromiter(
                (index.setdefault(key, len(index)) for key in keys), np.int64, len(keys)
            )
            if len(index) > len(arrays["weights"]):
                grow = max(len(index), 2 * len(arrays["weights"]))
                arrays["means"] = np.resize(arrays["means"], (grow, arrays["means"].shape[1]))
                arrays["weights"] = np.resize(arrays["weights"], grow)
            arrays["means"][slots] = rows["mean"]  # in offset order: the newest record wins
            arrays["weights"][slots] = rows["weight"]
        if progress is not None:
            progress(read[0], None)

    await read_to_end(settings, topic, on_batch)
    means, weights = arrays["means"], arrays["weights"]
    read = read[0]
    n = len(index)
    keys = list(index)
    has = np.flatnonzero(weights[:n] > 0)
    if sample is not None and len(has) > sample:
        has = np.sort(np.random.default_rng(seed).choice(has, sample, replace=False))
    vectors = unit_rows(means[has])
    user_ids = [user_id_of(keys[i]) for i in has.tolist()]
    seconds = time.perf_counter() - started
    logger.info("read %d changelog records of %d users in %.2fs", read, n, seconds)
    return ChangelogRead(vectors, user_ids, read, n, seconds)


def read_user_vectors_sync(*args, **kwargs) -> ChangelogRead:
    """:func:`read_user_vectors` for callers without an event loop (the CLI)."""
    return asyncio.run(read_user_vectors(*args, **kwargs))
