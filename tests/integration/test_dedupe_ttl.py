"""Duplicate clicks and idle users in the worker (issue 23), on the embedded broker."""

from __future__ import annotations

from collections import Counter

import numpy as np
import orjson
import pytest

from stream.core.clicks import ClickBatch
from stream.core.pipeline import replay
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics
from tests.integration.helpers import (
    centres_from_items,
    offline_state,
    send_records,
    start_worker,
)

pytestmark = pytest.mark.broker

DIM = 16
DAY = 86_400_000


def _setup(settings_for, kafka, workers, data, **overrides):
    settings = settings_for(
        **{"dim": DIM, "k": 4, "batch_size": 256, "worker_coclicks": True, **overrides}
    )
    centres = centres_from_items(settings, data)
    worker = start_worker(settings, data, kafka, workers, centres)
    return settings, offline_state(settings, data, centres), worker


def test_duplicates_are_dropped_counted_and_remembered_across_a_kill(settings_for, kafka, workers):
    """1,000 exact duplicates among 4,000 clicks: events_applied does not move,
    duplicates_dropped is 1,000 and the state equals the log without them. Then
    SIGKILL, restart, and the whole log again: every click is a duplicate (the
    windows came back with the user records) and the state is unchanged."""
    data = generate(
        SynthConfig(n_users=300, n_clusters=4, n_items=200, dim=DIM, n_events=4000, seed=5)
    )
    records = list(data.click_records())
    window = max(Counter(r["user_id"] for r in records).values())
    settings, offline, worker = _setup(settings_for, kafka, workers, data, dedupe_window=window)
    rng = np.random.default_rng(1)
    picked = set(rng.choice(len(records), 1000, replace=False).tolist())
    with_dups = []
    for i, rec in enumerate(records):
        with_dups.append(rec)
        if i in picked:
            with_dups.append(dict(rec))  # a producer's retry, right behind it
    send_records(kafka, settings, with_dups)
    stats = worker.wait_for(
        lambda s: s["events_applied"] + s["duplicates_dropped"] >= len(with_dups) and s["lag"] == 0,
        60,
        "all clicks",
    )
    assert (stats["events_applied"], stats["duplicates_dropped"]) == (len(records), 1000)
    replay(offline, ClickBatch.from_records(records), batch_size=500)
    expected = offline.digest()
    assert worker.stats(digest=True)["state_digest"] == expected

    worker.kill()
    worker = workers(settings, name="restarted")
    send_records(kafka, settings, records)  # the log again
    worker.wait_for(
        lambda s: (
            s["ready"]
            and s["lag"] == 0
            and s["duplicates_dropped"] == len(records)
            and worker.stats(digest=True)["state_digest"] == expected
        ),
        90,
        "the log again to be dropped as duplicates",
    )
    assert worker.stop() == 0


def test_idle_users_expire_with_tombstones_and_smaller_clusters(settings_for, kafka, workers):
    """50 users click on day 0, 50 others on day 10; with a TTL of 5 days the
    first 50 expire: /stats users and cluster sizes drop, an assignment record
    with no memberships says each left, a worker rebuilt from the changelog
    alone agrees (without a tombstone for each expired user it would hold 100),
    and a returning user starts blank. (kafka-python's consumer hung reading
    tombstones from the embedded broker, so the changelog is not read here.)"""
    data = generate(
        SynthConfig(n_users=100, n_clusters=4, n_items=200, dim=DIM, n_events=400, seed=8)
    )
    settings, _, worker = _setup(
        settings_for, kafka, workers, data, user_ttl_s=5 * DAY / 1000, user_ttl_check_s=0.5
    )
    t0 = 1_700_000_000_000
    clicks = []
    for i, rec in enumerate(data.click_records()):
        user = i % 100
        ts = t0 + (10 * DAY if user >= 50 else 0) + i
        clicks.append({**rec, "user_id": f"user{user:03d}", "ts": ts})
    send_records(kafka, settings, clicks)
    stats = worker.wait_for(
        lambda s: s["users_expired"] >= 50 and s["lag"] == 0, 60, "50 users to expire"
    )
    assert stats["users_expired"] == 50
    stats = worker.wait_for(
        lambda s: s["users"] == 50 and sum(s["cluster_sizes"].values()) == 50,
        30,
        "users and cluster sizes to drop",
    )
    digest = worker.stats(digest=True)["state_digest"]  # flushes the tombstones

    topics = Topics(settings)
    left = [orjson.loads(r.value) for r in kafka.read_all(topics.assignments)]
    gone = {a["user_id"] for a in left if not a["memberships"]}
    assert gone == {f"user{u:03d}" for u in range(50)}
    assert worker.stop() == 0

    # another machine: a store rebuilt from the changelog alone
    other = settings.model_copy(update={"data_dir": settings.data_dir.parent / "other"})
    rebuilt = workers(other, name="rebuilt")
    rebuilt.wait_for(lambda s: s["ready"] and s["users"] == 50, 60, "the rebuilt worker")
    assert rebuilt.stats(digest=True)["state_digest"] == digest

    # a returning user starts from a blank record
    send_records(kafka, settings, [{**clicks[0], "event_id": "back", "ts": t0 + 10 * DAY + 999}])
    rebuilt.wait_for(lambda s: s["users"] == 51, 30, "the returning user")
    assert rebuilt.stop() == 0
