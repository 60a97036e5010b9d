"""Jobs run from the command line, against Kafka only (no worker needed).

``clusterstream merge`` and ``clusterstream recompute`` read what they need
from the topics (the newest centre set, the workers' cluster sizes, the users
changelog), run the same core functions as the leader's jobs and publish the
next centre set; every worker installs it. So the recompute can also run as a
separate batch job (a Kubernetes CronJob). ``subscribe`` prints an output
topic as it grows: the Kafka-subscriber view of the system.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator

import orjson
from kafka import KafkaConsumer, KafkaProducer

from stream.app.jobs import merge_min_size, merge_plan, merge_report, recompute_report
from stream.app.registry import RegistryView
from stream.core.centres import CentreSet
from stream.core.merge import apply_merges
from stream.errors import ClusterstreamError, ConfigError
from stream.io.changelog import read_user_vectors_sync
from stream.io.kafka import kafka_python_config, read_to_end
from stream.io.topics import Topics
from stream.settings import Settings
from stream.wire.centres import CENTRES_KEY, decode_centres, encode_centres
from stream.wire.workers import decode_worker


def latest_centres(settings: Settings) -> CentreSet | None:
    """The newest centre set on the centres topic, or None."""
    found: list[CentreSet] = []

    def on_batch(msgs):
        for m in msgs:
            if m.value is not None:
                try:
                    found.append(decode_centres(m.value))
                except (ValueError, KeyError, TypeError):
                    continue

    asyncio.run(read_to_end(settings, Topics(settings).centres, on_batch))
    return max(found, key=lambda c: c.version) if found else None


def with_dim_of(settings: Settings, centres: CentreSet | None) -> Settings:
    """``settings`` with the dimension of the app's centre set: a command run
    against an app need not be told its dim. One set explicitly (environment,
    TOML) that differs is an error, not a guess."""
    if centres is None or centres.dim == settings.dim:
        return settings
    if "dim" in settings.model_fields_set:
        raise ConfigError(
            f"dim is set to {settings.dim} but centre set v{centres.version} on "
            f"{Topics(settings).centres} has dim {centres.dim}: unset CLUSTERSTREAM_DIM"
        )
    return settings.model_copy(update={"dim": centres.dim})


def registry_view(settings: Settings) -> RegistryView:
    """The workers' latest registry records."""
    view = RegistryView()

    def on_batch(msgs):
        for m in msgs:
            record = decode_worker(m.value) if m.value is not None else None
            if record is not None:
                view.update(record)

    asyncio.run(read_to_end(settings, Topics(settings).workers, on_batch))
    return view


def publish_centres(settings: Settings, centres: CentreSet) -> None:
    producer = KafkaProducer(**kafka_python_config(settings), acks="all", max_request_size=16 << 20)
    try:
        producer.send(
            Topics(settings).centres, encode_centres(centres), key=CENTRES_KEY, partition=0
        ).get(30)
    finally:
        producer.close()


def merge(settings: Settings, min_size: int | None = None, dry_run: bool = False) -> dict:
    """The merge rule over the live sizes the workers report."""
    centres = latest_centres(settings)
    if centres is None:
        raise ClusterstreamError("no centre set on the centres topic yet: nothing to merge")
    view = registry_view(settings)
    if not view.live():
        raise ClusterstreamError("no live worker reports cluster sizes (are the workers running?)")
    sizes = view.sizes(dict(centres.aliases))
    min_size = merge_min_size(settings, sizes) if min_size is None else min_size
    plan = merge_plan(centres, sizes, min_size)
    published = None
    if plan and not dry_run:
        published = apply_merges(centres, plan, int(time.time() * 1000))
        publish_centres(settings, published)
    report = merge_report(plan, published)
    report.update(dry_run=dry_run, from_version=centres.version)
    return report


def run_recompute(
    settings: Settings,
    k: int | None = None,
    k_range: tuple[int, int] | None = None,
    sample: int | None = None,
    dry_run: bool = False,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> dict:
    """Recompute from every user vector in the users changelog; publish unless ``dry_run``."""
    started = time.perf_counter()
    previous = latest_centres(settings)
    settings = with_dim_of(settings, previous)
    dtype = settings.engine_config().user_dtype()
    seen = [0]

    def records_read(n: int, total: int | None) -> None:
        if progress is not None:
            progress("read", n - seen[0], total)
            seen[0] = n

    read = read_user_vectors_sync(
        settings, Topics(settings).changelog, dtype, sample, settings.seed, records_read
    )
    if len(read.vectors) == 0:
        raise ClusterstreamError("the users changelog holds no user with a vector")
    if progress is not None:
        progress("cluster", 0, 1)
    centres, report = recompute_report(read, previous, settings, k, k_range, sample)
    if progress is not None:
        progress("cluster", 1, 1)
    report.update(
        dry_run=dry_run,
        dim=settings.dim,
        from_version=previous.version if previous is not None else None,
        seconds_total=round(time.perf_counter() - started, 3),
    )
    if not dry_run and not report["withheld"]:
        publish_centres(settings, centres)
        report["published_version"] = centres.version
    return report


def subscribe(settings: Settings, topic: str, from_beginning: bool = False) -> Iterator[dict]:
    """Records of an output topic as they arrive: ``{topic, partition, offset,
    key, value}`` with the value parsed as JSON (or given as text)."""
    name = topic if topic.startswith(f"{settings.app_id}-") else settings.topic(topic)
    consumer = KafkaConsumer(
        name,
        group_id=None,
        auto_offset_reset="earliest" if from_beginning else "latest",
        enable_auto_commit=False,
        fetch_max_wait_ms=100,
        **kafka_python_config(settings),
    )
    try:
        for msg in consumer:
            try:
                value = orjson.loads(msg.value) if msg.value is not None else None
            except orjson.JSONDecodeError:
                value = msg.value.decode("utf-8", "replace")
            yield {
                "topic": msg.topic,
                "partition": msg.partition,
                "offset": msg.offset,
                "key": msg.key.decode("utf-8", "replace") if msg.key else None,
                "value": value,
            }
    finally:
        consumer.close()
