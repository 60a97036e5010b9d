"""The broker goes away mid-stream and comes back empty (the embedded broker
keeps nothing): the worker must stay up, keep serving recommendations from its
local state, log the loss and the return once each (not thousands of client
errors), and apply the clicks sent to the new broker once each, from the new
logs' start, into topics with the app's partition counts.

This test runs its OWN broker (it is stopped and restarted on the same port),
never the session one.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from stream.core.centres import CentreSet
from stream.io.broker import EmbeddedBroker, free_port
from stream.io.kafka import ensure_topics
from stream.io.topics import Topics
from stream.settings import Settings
from tests.integration.conftest import Kafka
from tests.integration.helpers import centres_from_items, send_clicks, start_worker
from tests.integration.test_rebalance import _status
from tests.integration.test_worker import DIM, _dataset, _replay_digest

pytestmark = pytest.mark.broker


def _get(url: str) -> int:
    return _status(url, timeout=5)


def _settings(broker: EmbeddedBroker, unique_name, tmp_path: Path, **overrides) -> Settings:
    """A fresh app on this test's own broker, its topics created."""
    settings = Settings(
        bootstrap_servers=broker.bootstrap, embedded_broker=True, app_id=unique_name("app"),
        data_dir=tmp_path / "data", partitions=2, session_timeout_ms=2000,
        heartbeat_interval_ms=500, web_port=free_port(), batch_size=256, batch_wait_ms=20,
        recompute_cron="off", dim=DIM, k=4, **overrides,
    )  # fmt: skip
    ensure_topics(settings, Topics(settings).specs())
    return settings


def test_broker_lost_and_back_empty(tmp_path: Path, unique_name, workers):
    broker = EmbeddedBroker(port=free_port()).start()
    try:
        settings = _settings(broker, unique_name, tmp_path, flush_interval_s=1)
        data = _dataset(n_events=4000)
        centres = centres_from_items(settings, data)
        kafka = Kafka(broker.bootstrap)
        worker = start_worker(settings, data, kafka, workers, centres)
        half = data.n_events // 2
        send_clicks(kafka, settings, data, 0, half)
        worker.wait_for(lambda s: s["events_applied"] >= half and s["lag"] == 0, 60, "first half")
        kafka.close()
        users = sorted({r["user_id"] for r in data.click_records(0, half)})[:40]
        ok_before = sum(_get(f"{worker.url}/users/{u}/recommendations?n=5") == 200 for u in users)
        assert ok_before == len(users)
        log_mark = worker.log_path.stat().st_size

        broker.stop()
        outage_codes: list[int] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for u in users[:10]:
                outage_codes.append(_get(f"{worker.url}/users/{u}/recommendations?n=5"))
            time.sleep(0.5)
        assert worker.alive()

        broker = EmbeddedBroker(port=broker.port).start()
        ensure_topics(settings, Topics(settings).specs())
        kafka = Kafka(broker.bootstrap)
        send_clicks(kafka, settings, data, half, None)
        kafka.close()
        # every click, before and after the loss, counted once: the users and
        # every CF entry equal the offline replay of the whole log
        worker.wait_for(lambda s: s["broker"]["up"], 60, "the broker back")
        expected = _replay_digest(settings, data, centres)
        worker.wait_for(
            lambda s: s["lag"] == 0 and worker.stats(digest=True)["state_digest"] == expected,
            90, "the clicks sent after the restart",
        )  # fmt: skip
        assert worker.alive()
        # the feeds read the new logs from their start: a centre set sent to the
        # new centres log (its offset 0, below the old log's end) is installed
        kafka = Kafka(broker.bootstrap)
        kafka.send_centres(settings, CentreSet.create(
            centres.vectors, ids=centres.ids.tolist(), version=2, created_at_ms=2,
        ))  # fmt: skip
        kafka.close()
        worker.wait_for(lambda s: s["centres_version"] == 2, 30, "centres v2 from the new log")
        stats = worker.stats()
        assert stats["broker"]["up"] and stats["broker"]["losses"] == 1
        # the topics came back with their own partition counts, not the broker's
        # default (the worker's clients no longer have them auto-created)
        assert stats["partitions"] == stats["cf_partitions"] == list(range(settings.partitions))
        text = worker.log_path.read_text(errors="replace")[log_mark:]
        errors = [line for line in text.splitlines() if "[ERROR]" in line]
        codes = {c: outage_codes.count(c) for c in set(outage_codes)}
        print(
            f"\noutage: {len(outage_codes)} requests, status codes {codes}; "
            f"{len(errors)} ERROR lines, {stats['broker']['log_lines_dropped']} dropped"
        )
        assert codes == {200: len(outage_codes)}
        assert len(errors) < 20, "\n".join(errors)
        assert sum("broker lost" in line for line in text.splitlines()) == 1
        assert sum("broker back" in line for line in text.splitlines()) == 1
        assert worker.stop() == 0
    finally:
        broker.stop()


def test_a_stop_while_the_broker_is_away_exits_within_the_stop_timeout(
    tmp_path: Path, unique_name, workers
):
    """SIGTERM with the broker gone: the final flush can never be acked, so the
    worker exits by itself ``stop_timeout_s`` into the stop (code 1), as if it
    had crashed: its store holds the state after its last flush."""
    broker = EmbeddedBroker(port=free_port()).start()
    try:
        settings = _settings(broker, unique_name, tmp_path, flush_interval_s=60, stop_timeout_s=3)
        data = _dataset(n_events=1000)
        kafka = Kafka(broker.bootstrap)
        worker = start_worker(settings, data, kafka, workers, centres_from_items(settings, data))
        send_clicks(kafka, settings, data)
        kafka.close()
        stats = worker.wait_for(lambda s: s["lag"] == 0 and s["events_applied"] > 0, 60, "clicks")
        assert stats["unflushed_clicks"] > 0  # the stop has a flush to make
        broker.stop()
        worker.wait_for(lambda s: not s["broker"]["up"], 30, "the loss to be seen")
        started = time.monotonic()
        assert worker.stop(timeout=60) == 1
        took = time.monotonic() - started
        print(f"\nstopped with the broker away: exit code 1 after {took:.1f} s")
        assert took < 20, took
        text = worker.log_path.read_text(errors="replace")
        assert "state was not saved within 3s of the stop" in text
    finally:
        broker.stop()


def test_an_offset_past_the_log_end_reads_on_from_the_end(bootstrap, unique_name, caplog):
    """What the loops do when a fetch is out of range past the end (on Apache
    Kafka: an unclean leader election cut the log back): go on from the end,
    never from the start, which would apply every retained click again."""
    import asyncio

    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.errors import OffsetOutOfRangeError
    from kafka import KafkaProducer

    from stream.app.brokerwatch import resume_after_out_of_range

    topic = unique_name("cut")
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(5):  # one record batch each: this broker's log end is then exact
        producer.send(topic, f"r{i}".encode(), partition=0).get(timeout=10)
    producer.close()
    tp = TopicPartition(topic, 0)

    async def resume(asked: int) -> dict:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            consumer.assign([tp])
            return await resume_after_out_of_range(
                consumer, OffsetOutOfRangeError({tp: asked}), "clicks"
            )
        finally:
            await consumer.stop()

    with caplog.at_level("ERROR", logger="stream.app.brokerwatch"):
        assert asyncio.run(resume(100)) == {tp: (100, 5)}
    assert "offset 100 lies past the log end 5" in caplog.text
