"""Fixtures for tests that run real workers against the session broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from stream.app.process import WorkerProcess
from stream.core.centres import CentreSet
from stream.io.broker import free_port
from stream.io.kafka import ensure_topics
from stream.io.topics import Topics
from stream.settings import Settings
from stream.wire.centres import CENTRES_KEY, encode_centres


@pytest.fixture
def settings_for(bootstrap: str, unique_name, tmp_path: Path) -> Callable[..., Settings]:
    """Settings of a fresh app (unique id and topics, own data dir) on the session broker."""

    def make(**overrides) -> Settings:
        base = dict(
            bootstrap_servers=bootstrap,
            embedded_broker=True,
            app_id=unique_name("app"),
            data_dir=tmp_path / "data",
            partitions=2,
            session_timeout_ms=2000,
            heartbeat_interval_ms=500,
            web_port=free_port(),
            batch_size=512,
            batch_wait_ms=20,
            # no scheduled recompute unless a test asks: the default (04:00 UTC)
            # once fired inside a test run and published a centre set it did not expect
            recompute_cron="off",
        )
        base.update(overrides)
        settings = Settings(**base)
        ensure_topics(settings, Topics(settings).specs())
        return settings

    return make


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[[Settings], WorkerProcess]]:
    """Start workers as child processes; every one still running is stopped at the end."""
    started: list[WorkerProcess] = []

    def start(settings: Settings, name: str = "worker") -> WorkerProcess:
        proc = WorkerProcess(settings, tmp_path / f"{name}-{len(started)}.log").start()
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


class Kafka:
    """Small synchronous producer/consumer helpers for the tests."""

    def __init__(self, bootstrap: str):
        self.bootstrap = bootstrap
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)

    def send(self, topic: str, values, keys=None, partition: int | None = None) -> None:
        keys = keys if keys is not None else [None] * len(values)
        for key, value in zip(keys, values, strict=True):
            self.producer.send(topic, value, key=key, partition=partition)
        self.producer.flush()

    def send_json(self, topic: str, records, key_field: str) -> None:
        self.send(
            topic, [orjson.dumps(r) for r in records], [r[key_field].encode() for r in records]
        )

    def send_centres(self, settings: Settings, centres: CentreSet) -> None:
        self.send(Topics(settings).centres, [encode_centres(centres)], [CENTRES_KEY], partition=0)

    def read_all(self, topic: str, timeout_s: float = 5.0) -> list:
        """Every record of ``topic`` (all partitions), reading until idle."""
        consumer = KafkaConsumer(
            topic,
            bootstrap_servers=self.bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            enable_auto_commit=False,
            consumer_timeout_ms=int(timeout_s * 1000),
            fetch_max_wait_ms=100,
        )
        try:
            return list(consumer)
        finally:
            consumer.close()

    def close(self) -> None:
        self.producer.close()


@pytest.fixture
def kafka(bootstrap: str) -> Iterator[Kafka]:
    client = Kafka(bootstrap)
    yield client
    client.close()
