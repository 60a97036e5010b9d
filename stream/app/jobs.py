"""Jobs of the leader worker. The bodies are core functions; faust schedules them.

Bootstrap: while no centre set exists, the leader checks once a second how
many of its users have a vector; at ``bootstrap_users`` it runs the core
recompute on them (k = ``k``, or fewer when there are fewer users) and
publishes version 1 (reason "bootstrap") on the centres topic. Until then
clicks move user vectors but nobody has a cluster and no CF is learnt; from
then on users are assigned at their next click.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from stream.app.hotpath import HotPath
from stream.app.runtime import Runtime
from stream.app.topics import CENTRES_KEY
from stream.core.centres import CentreSet
from stream.core.items import unit_rows
from stream.core.recompute import recompute

logger = logging.getLogger(__name__)


def owned_user_vectors(hotpath: HotPath, limit: int | None = None) -> np.ndarray:
    """(n, d) float32 unit vectors of the users in this worker's stores."""
    parts = []
    total = 0
    for owned in list(hotpath.owned.values()):
        for _, rows in owned.store.iter_chunks():
            has = rows["weight"] > 0
            parts.append(unit_rows(rows["mean"][has]))
            total += int(has.sum())
            if limit is not None and total >= limit:
                break
    if not parts:
        return np.zeros((0, hotpath.runtime.engine.dim), dtype=np.float32)
    return np.concatenate(parts)


async def publish_centres(runtime: Runtime, centres: CentreSet) -> None:
    """Publish a centre set on the centres topic (the feeds install it everywhere)."""
    await runtime.producer.send_one(
        runtime.topics.centres, CENTRES_KEY, centres.to_bytes(), partition=0
    )
    logger.info(
        "published centres version %d (%s, k=%d)", centres.version, centres.reason, centres.k
    )


async def bootstrap_if_needed(runtime: Runtime, hotpath: HotPath) -> CentreSet | None:
    """Make and publish centre set 1 when there is none and enough users have vectors."""
    settings = runtime.settings
    if (
        runtime.centres is not None
        or not runtime.is_leader()
        or hotpath.users() < settings.bootstrap_users
    ):
        return None
    async with hotpath.lock:
        vectors = await hotpath._run(owned_user_vectors, hotpath)
    if len(vectors) < settings.bootstrap_users or runtime.centres is not None:
        return None
    k = min(settings.k, len(vectors))
    centres, stats = await hotpath._run(
        lambda: recompute(
            vectors, None, k=k, seed=settings.seed, reason="bootstrap",
            created_at_ms=int(time.time() * 1000),
        )
    )  # fmt: skip
    await publish_centres(runtime, centres)
    logger.info("bootstrap: k=%d from %d users in %.2fs", stats.k, stats.n_vectors, stats.seconds)
    return centres
