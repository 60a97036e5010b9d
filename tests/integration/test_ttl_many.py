"""Idle users expire even when there are more of them than the user cache
holds, and the expiry runs in chunks between batches (issue 23's soak: an
expiry of more users than the cache had room for failed at every check)."""

from __future__ import annotations

import orjson
import pytest

from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics
from tests.integration.helpers import centres_from_items, start_worker

pytestmark = pytest.mark.broker

DIM = 16
DAY = 86_400_000


def test_more_idle_users_than_the_cache_holds_all_expire(settings_for, kafka, workers):
    data = generate(
        SynthConfig(n_users=100, n_clusters=4, n_items=200, dim=DIM, n_events=200, seed=4)
    )
    settings = settings_for(
        dim=DIM, k=4, batch_size=256, user_cache_rows=1024, user_ttl_s=5 * DAY / 1000,
        user_ttl_check_s=0.5,
    )  # fmt: skip
    worker = start_worker(settings, data, kafka, workers, centres_from_items(settings, data))
    t0 = 1_700_000_000_000
    item = data.item_ids[0]
    old = [
        {"event_id": f"e{u}", "user_id": f"old{u:05d}", "item_id": item, "ts": t0 + u}
        for u in range(5000)  # ~2,500 a partition: more than its 1,024 cached rows
    ]
    new = [
        {"event_id": f"n{u}", "user_id": f"new{u:02d}", "item_id": item, "ts": t0 + 10 * DAY}
        for u in range(40)
    ]
    records = old + new
    kafka.send(
        Topics(settings).clicks,
        [orjson.dumps(r) for r in records],
        [r["user_id"].encode() for r in records],
    )
    stats = worker.wait_for(
        lambda s: s["users_expired"] >= 5000 and s["lag"] == 0, 90, "5,000 users to expire"
    )
    assert stats["users_expired"] == 5000
    worker.wait_for(
        lambda s: s["users"] == 40 and sum(s["cluster_sizes"].values()) == 40,
        30,
        "40 users held, in the cluster sizes too",
    )
    assert "expiry of clicks partition" not in worker.log_path.read_text()
