"""A clicks consumer whose fetch stops, or whose assignment is lost, recovers by
itself (issue 23, the soak's stall): the stall watch sees a partition behind its
log end with no click applied for ``stall_s``, fetches it again or restarts the
consumer, and every click is applied once (the state digest equals an offline
replay's). Without the watch (``stall_s=0``) the same fault leaves the clicks
unapplied: the faults are real."""

from __future__ import annotations

import time

import pytest

from stream.core.clicks import ClickBatch
from stream.core.pipeline import replay
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics
from tests.integration.test_dedupe_ttl import DIM, _setup

pytestmark = pytest.mark.broker


def _run(settings_for, kafka, workers, crash_at: str, stall_s: float, **overrides):
    data = generate(
        SynthConfig(n_users=200, n_clusters=4, n_items=100, dim=DIM, n_events=3000, seed=3)
    )
    settings, offline, worker = _setup(
        settings_for, kafka, workers, data,
        batch_size=100, stall_s=stall_s, crash_at=crash_at, batch_linger_ms=0, **overrides,
    )  # fmt: skip
    records = list(data.click_records())
    # a few small sends: the fault lands after the 3rd batch, with clicks still to come
    for start in range(0, len(records), 300):
        kafka.send_json(Topics(settings).clicks, records[start : start + 300], "user_id")
        time.sleep(0.2)
    replay(offline, ClickBatch.from_records(records), batch_size=500)
    return worker, records, offline.digest()


@pytest.mark.parametrize(
    "crash_at, step", [("stall_fetch:3", "seek"), ("lose_assignment:3", "restart")]
)
def test_a_stalled_consumer_recovers(settings_for, kafka, workers, crash_at, step):
    worker, records, expected = _run(settings_for, kafka, workers, crash_at, stall_s=5.0)
    stats = worker.wait_for(
        lambda s: s["events_applied"] >= len(records) and s["lag"] == 0, 90, "every click"
    )
    assert stats["events_applied"] == len(records)
    assert stats["stalls"][step] >= 1, stats["stalls"]
    assert stats["stalls"]["exit"] == 0
    # a restart raises the fetch wait (the embedded broker's empty fetches of a long log)
    assert stats["stalls"]["fetch_wait_ms"] == (100 if step == "restart" else None)
    assert worker.stats(digest=True)["state_digest"] == expected


@pytest.mark.parametrize("loop", ["clicks", "cf"])
def test_without_the_watch_the_fault_stalls(settings_for, kafka, workers, loop):
    crash_at, overrides = (
        ("stall_fetch:3", {})
        if loop == "clicks"
        else ("cf_stall_fetch:2", {"cf_apply_local": False})
    )
    worker, records, expected = _run(
        settings_for, kafka, workers, crash_at, stall_s=0.0, **overrides
    )
    time.sleep(8.0)  # more than the watch's stall_s and a check in the tests around
    stats = worker.stats()
    if loop == "clicks":
        assert stats["events_applied"] < len(records)
    else:
        # the CF tables miss the deltas after the fault (the CF loop's own lag
        # cannot say so: only a fetch, or the watch's look, moves its log end)
        assert stats["events_applied"] == len(records)
        assert worker.stats(digest=True)["state_digest"] != expected
    assert stats["stalls"] == {"seek": 0, "restart": 0, "exit": 0, "fetch_wait_ms": None}
    assert stats["cf_stalls"] == {"seek": 0, "restart": 0, "exit": 0}


def test_a_stalled_cf_loop_is_fetched_again(settings_for, kafka, workers):
    # every delta through the topic: the CF tables are right only if the CF loop recovers
    worker, records, expected = _run(
        settings_for, kafka, workers, "cf_stall_fetch:2", stall_s=5.0, cf_apply_local=False
    )
    stats = worker.wait_for(
        lambda s: s["events_applied"] >= len(records) and s["lag"] == 0 and s["cf_lag"] == 0,
        90, "every click and CF delta",
    )  # fmt: skip
    assert stats["cf_stalls"]["seek"] >= 1, stats["cf_stalls"]
    assert stats["cf_stalls"]["exit"] == 0
    assert stats["cf_deltas_local"] == 0 and stats["cf_deltas_applied"] > 0
    assert worker.stats(digest=True)["state_digest"] == expected
    assert "cf-deltas partition" in worker.log_path.read_text(errors="replace")
