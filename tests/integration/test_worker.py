"""The worker end to end on the embedded broker: clicks in, state and outputs out.

The reference for every check is the offline replay: the same clicks through
``process_batch`` in one process. A user's clicks stay in order within their
partition, and the core's result does not depend on batching, so the
worker's state digest must equal the replay's.
"""

from __future__ import annotations

import base64
import re

import orjson
import pytest

from stream.core.clicks import ClickBatch
from stream.core.pipeline import replay
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics
from stream.wire.centres import decode_centres
from tests.integration.helpers import (
    caught_up,
    centres_from_items,
    offline_state,
    send_clicks,
    start_worker,
)

pytestmark = pytest.mark.broker

DIM = 16


def _dataset(**overrides):
    config = dict(n_users=300, n_clusters=4, n_items=200, dim=DIM, n_events=4000, seed=3)
    config.update(overrides)
    return generate(SynthConfig(**config))


def _valid_clicks(data) -> ClickBatch:
    bad = set(data.malformed_kinds)
    return ClickBatch.from_records(r for i, r in enumerate(data.click_records()) if i not in bad)


def _replay_digest(settings, data, centres) -> str:
    """The state digest of the offline replay of all valid clicks."""
    offline = offline_state(settings, data, centres)
    replay(offline, _valid_clicks(data), batch_size=500)
    return offline.digest()


def _wait_for_replay_state(worker, settings, data, centres) -> dict:
    """Wait until a restarted worker's state digest equals the offline replay of all
    valid clicks (its counters restart at 0, so wait for the state itself)."""
    expected = _replay_digest(settings, data, centres)
    return worker.wait_for(
        lambda s: s["ready"] and worker.stats(digest=True)["state_digest"] == expected,
        90,
        "the restarted worker to reach the replay's state",
    )


def test_end_to_end_state_digest_assignments_and_dead_letters(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=4)
    data = _dataset(malformed=0.02)
    centres = centres_from_items(settings, data)
    worker = start_worker(settings, data, kafka, workers, centres)
    send_clicks(kafka, settings, data)
    stats = worker.wait_for(caught_up(data.n_events), 60, "all clicks")
    assert stats["events_rejected"] == len(data.malformed_kinds) > 0
    assert stats["centres_version"] == 1

    offline = offline_state(settings, data, centres)
    replay(offline, _valid_clicks(data), batch_size=333)
    assert worker.stats(digest=True)["state_digest"] == offline.digest()

    # the newest assignment of every user equals the replay's memberships
    topics = Topics(settings)
    latest = {}
    for rec in kafka.read_all(topics.assignments):
        value = orjson.loads(rec.value)
        assert rec.key.decode() == value["user_id"] and value["centres_version"] == 1
        latest[value["user_id"]] = [m["cluster_id"] for m in value["memberships"]]
    expected = {}
    for ids, rows in offline.users.iter_chunks():
        for uid, row in zip(ids, rows, strict=True):
            if row["cluster_ids"][0] >= 0:
                expected[uid] = [c for c in row["cluster_ids"].tolist() if c >= 0]
    assert latest == expected

    # one dead letter per malformed record, with its reason, offset and raw bytes
    dead = [orjson.loads(r.value) for r in kafka.read_all(topics.clicks_dlq)]
    assert len(dead) == len(data.malformed_kinds)
    reasons = {d["reason"] for d in dead}
    assert "invalid JSON" in reasons and "missing field: user_id" in reasons
    raws = {base64.b64decode(d["raw"]) for d in dead}
    bad_values = {v for i, v in enumerate(data.records()) if i in data.malformed_kinds}
    assert raws == bad_values
    assert all(d["topic"] == topics.clicks and d["offset"] >= 0 for d in dead)
    assert worker.stop() == 0


@pytest.mark.parametrize("how", ["graceful", "kill"])
def test_restart_neither_loses_nor_double_applies(settings_for, kafka, workers, how):
    settings = settings_for(dim=DIM, k=4, batch_size=256)
    data = _dataset(n_events=6000)
    centres = centres_from_items(settings, data)
    worker = start_worker(settings, data, kafka, workers, centres)
    half = data.n_events // 2
    send_clicks(kafka, settings, data, 0, half)
    if how == "graceful":
        worker.wait_for(caught_up(half), 60, "the first half")
        assert worker.stop() == 0
    else:
        worker.wait_for(lambda s: s["events_applied"] > 500, 60, "some clicks")
        worker.kill()  # mid-stream: part of the first half is not applied yet
    send_clicks(kafka, settings, data, half, None)
    worker = workers(settings, name="restarted")
    stats = _wait_for_replay_state(worker, settings, data, centres)
    assert stats["lag"] == 0
    assert worker.stop() == 0


@pytest.mark.parametrize(
    "point", ["before_outputs", "after_outputs", "after_changelog", "after_commit"]
)
def test_crash_at_each_step_of_a_batch(settings_for, kafka, workers, point):
    """Exit the process between the steps of the 3rd batch (outputs) or the 3rd
    flush (changelog, commit); the restarted worker must reach exactly the
    replay's state, users and CF tables alike."""
    # a flush is due after every batch, so the 3rd batch and the 3rd flush come early
    settings = settings_for(dim=DIM, k=4, batch_size=200, flush_interval_s=0)
    data = _dataset(n_events=3000)
    centres = centres_from_items(settings, data)
    kafka.send_json(Topics(settings).items, list(data.item_records()), "item_id")
    kafka.send_centres(settings, centres)
    send_clicks(kafka, settings, data)
    crashing = workers(settings.model_copy(update={"crash_at": f"{point}:3"}), name="crashing")
    crashing.proc.wait(60)
    assert crashing.proc.returncode == 70, crashing.log_tail()

    worker = workers(settings, name="restarted")
    _wait_for_replay_state(worker, settings, data, centres)
    if point == "after_outputs":
        # the 3rd batch's CF deltas went out before the crash and were sent again,
        # one per click: dropped as duplicates when read (which may come after the
        # state is complete: this worker added its own batches' deltas in-process)
        worker.wait_for(
            lambda s: s["cf_deltas_duplicate"] > 0, 30, "the re-sent CF deltas to be dropped"
        )
        assert worker.stats(digest=True)["state_digest"] == _replay_digest(settings, data, centres)
    if point == "after_changelog":
        # the store was behind its changelog: the 3rd batch came back from it, not re-run
        log = worker.log_path.read_text()
        assert re.search(r"clicks partition \d+: .*\([1-9]\d* changelog records\)", log)
    assert worker.stop() == 0


def test_centres_hot_swap_reaches_the_assignments(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=4)
    data = _dataset(n_events=4000)
    v1 = centres_from_items(settings, data)
    worker = start_worker(settings, data, kafka, workers, v1)
    send_clicks(kafka, settings, data, 0, 2000)
    worker.wait_for(caught_up(2000), 60, "the first clicks")

    v2 = v1.successor(
        ids=v1.ids, vectors=v1.vectors[::-1], sizes=v1.sizes, aliases={}, reason="recompute",
        created_at_ms=2,
    )  # fmt: skip
    kafka.send_centres(settings, v2)
    worker.wait_for(lambda s: s["centres_version"] == 2, 30, "version 2")
    send_clicks(kafka, settings, data, 2000, None)
    worker.wait_for(caught_up(data.n_events), 60, "the rest")
    versions = [
        orjson.loads(r.value)["centres_version"]
        for r in kafka.read_all(Topics(settings).assignments)
    ]
    assert versions[0] == 1 and 2 in versions
    # centres swapped under users: the reversed order sends most of them to another id
    assert versions.count(2) > 100
    assert worker.stop() == 0


def test_bootstrap_publishes_version_1(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=4, bootstrap_users=100, worker_coclicks=True)
    data = _dataset(n_events=3000)
    worker = start_worker(settings, data, kafka, workers, centres=None)
    send_clicks(kafka, settings, data, 0, 1500)
    stats = worker.wait_for(lambda s: s["centres_version"] == 1, 60, "the bootstrap")
    assert stats["centres_reason"] == "bootstrap" and stats["clusters"] == 4
    published = [decode_centres(r.value) for r in kafka.read_all(Topics(settings).centres)]
    assert [c.version for c in published] == [1] and published[0].reason == "bootstrap"
    # clicks after the bootstrap get clusters and feed the CF tables
    send_clicks(kafka, settings, data, 1500, None)
    stats = worker.wait_for(caught_up(data.n_events), 60, "all clicks")
    assert stats["assignments_emitted"] > 0 and stats["cf_entries"] > 0
    assert stats["coclick_entries"] >= stats["coclick_rows"] > 0  # each row has an entry
    assert worker.stop() == 0


@pytest.mark.parametrize("cf_apply_local", [True, False], ids=["local-cf", "cf-via-topic"])
def test_a_partition_taken_back_after_another_owner_crashed_before_its_first_flush(
    settings_for, kafka, workers, cf_apply_local
):
    """Worker A hands its partitions over cleanly; B (another data dir: another
    machine) takes them, produces the outputs of one batch and dies before its
    first flush; A takes them back. B's CF deltas for clicks after the hand-over
    are on the topic, so A must replay those clicks one by one (CF owners drop
    what B's deltas counted already) to reach exactly the replay's state. What
    tells A so is the mark B wrote to the changelog on taking the partitions;
    without it A's store and the changelog both said "clean at the hand-over"
    and A re-ran the clicks in batches (counted twice, or lost)."""
    settings = settings_for(dim=DIM, k=4, batch_size=200, cf_apply_local=cf_apply_local)
    data = _dataset(n_events=4000)
    centres = centres_from_items(settings, data)
    worker = start_worker(settings, data, kafka, workers, centres)
    half = data.n_events // 2
    send_clicks(kafka, settings, data, 0, half)
    worker.wait_for(caught_up(half), 60, "the first half")
    assert worker.stop() == 0  # a clean hand-over
    send_clicks(kafka, settings, data, half, None)
    other = settings.model_copy(
        update={"data_dir": settings.data_dir.parent / "other", "crash_at": "after_outputs:1"}
    )
    crashing = workers(other, name="other")
    crashing.proc.wait(60)
    assert crashing.proc.returncode == 70, crashing.log_tail()

    back = workers(settings, name="back")
    _wait_for_replay_state(back, settings, data, centres)
    assert back.stop() == 0
