"""Replay a loaded click log into a running system (``clusterstream replay``).

Order of events:

1. the app's topics are created if missing (:func:`stream.io.kafka.ensure_topics`);
2. the item records go to ``<app>-items`` (key ``item_id``) and are flushed,
   so a worker knows the items before their first click;
3. the clicks go to ``<app>-clicks`` in time order (the log is sorted), as
   schemas/click JSON (:func:`stream.wire.clicks.encode_click`; ``weight`` left out when 1.0), key
   ``user_id``, on partition :func:`stream.wire.partition.user_partition` of the topic's actual
   partition count, which is the partition the workers expect a user on;
   at ``rate`` clicks per second when given, else as fast as the producer goes.

kafka-python 3's producer is idempotent by default (acks=all), so retries
neither duplicate nor reorder clicks within a partition.

With ``to_now`` every timestamp (clicks and items) is shifted by the same
amount so the last click is at the current time; otherwise they are kept.

>>> b = ClickBatch.from_columns(["u1", "u2"], ["i1", "i2"], [1000, 5000], [0.5, 1.0], ["e1", "e2"])
>>> time_shift(b.ts, now_ms=9000)
4000
>>> partition, key, value = next(click_messages(b, partitions=4, shift_ms=10))
>>> partition == user_partition("u1", 4), key, value
(True, b'u1', b'{"event_id":"e1","user_id":"u1","item_id":"i1","ts":1010,"weight":0.5}')
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream.core.clicks import ClickBatch
from stream.errors import BrokerUnavailable, ClusterstreamError, ConfigError
from stream.io.kafka import ensure_topics, kafka_python_config
from stream.io.loaders import ClickLog
from stream.io.topics import Topics
from stream.settings import Settings
from stream.wire.clicks import TS_MAX, encode_click
from stream.wire.items import item_message
from stream.wire.partition import user_partition

logger = logging.getLogger(__name__)

PROGRESS_EVERY = 2000  # clicks between progress callbacks
_SLEEP_MIN_S = 0.002  # pacing sleeps shorter than this are folded into the next one

#: ``progress(phase, n_done_since_last_call, total)``, as ``cli.progress_bars`` yields.
Progress = Callable[[str, int, int | None], None]


def infer_format(path: str | Path) -> str:
    """The click-log format a file or directory name tells (``replay`` without ``--format``).

    ``behaviors.tsv`` or a directory holding one: ``mind``; ``u.data``,
    ``ratings.csv`` or a directory holding one: ``movielens``; ``*.jsonl``
    (or ``*.json``, ``*.ndjson``): ``jsonl``. Anything else raises
    :class:`ConfigError` saying to give ``--format``.

    >>> infer_format("/data/MINDsmall_train/behaviors.tsv"), infer_format("log/clicks.jsonl")
    ('mind', 'jsonl')
    >>> infer_format("ml-100k/u.data")
    'movielens'
    >>> infer_format("clicks.parquet")
    Traceback (most recent call last):
    ...
    stream.errors.ConfigError: cannot tell the format of clicks.parquet from its name: give --format jsonl|mind|movielens
    """
    p = Path(path)
    names = {p.name.lower()}
    if p.is_dir():
        names = {child.name.lower() for child in p.iterdir()}
    if "behaviors.tsv" in names:
        return "mind"
    if names & {"u.data", "ratings.csv"}:
        return "movielens"
    if not p.is_dir() and p.suffix.lower() in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ConfigError(
        f"cannot tell the format of {path} from its name: give --format jsonl|mind|movielens"
    )


def time_shift(ts: np.ndarray, now_ms: int) -> int:
    """Milliseconds to add to ``ts`` ((n,) int64) so its maximum becomes ``now_ms``; 0 when empty."""
    return int(now_ms - int(ts.max())) if ts.size else 0


def _shifted(ts: int, shift_ms: int) -> int:
    return min(max(ts + shift_ms, 0), TS_MAX)


def click_messages(
    clicks: ClickBatch, partitions: int, shift_ms: int = 0
) -> Iterator[tuple[int, bytes, bytes]]:
    """``(partition, key, value)`` of every click, in batch order.

    ``key`` is the UTF-8 user id, ``value`` the click record (schemas/click)
    with ``ts + shift_ms`` (kept within the schema's range); a batch without
    event ids gets ``"<user>-<item>-<ts>"`` (its original ts): the same click has
    the same id in a second replay (dropped as a duplicate), and two logs'
    clicks do not share ids by position.
    """
    dumps = encode_click
    ts = clicks.ts.tolist()
    weights = clicks.weights.tolist()
    events = clicks.event_ids or [
        f"{u}-{i}-{t}" for u, i, t in zip(clicks.user_ids, clicks.item_ids, ts, strict=True)
    ]
    cache: dict[str, tuple[int, bytes]] = {}
    for i, user_id in enumerate(clicks.user_ids):
        hit = cache.get(user_id)
        if hit is None:
            hit = cache[user_id] = (user_partition(user_id, partitions), user_id.encode("utf-8"))
        record = {
            "event_id": events[i],
            "user_id": user_id,
            "item_id": clicks.item_ids[i],
            "ts": _shifted(ts[i], shift_ms),
        }
        if weights[i] != 1.0:
            record["weight"] = weights[i]
        yield hit[0], hit[1], dumps(record)


def item_messages(items: list[dict], shift_ms: int = 0) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of every item record, ``ts + shift_ms`` (kept within range).

    >>> next(item_messages([{"item_id": "i1", "ts": 5, "category": "news"}], shift_ms=-10))
    (b'i1', b'{"item_id":"i1","ts":0,"category":"news"}')
    """
    for record in items:
        if shift_ms:
            record = {**record, "ts": _shifted(record["ts"], shift_ms)}
        yield item_message(record)


@dataclass(frozen=True)
class ReplayResult:
    """What a replay sent: counts, the time shift applied, and the skipped input."""

    clicks_sent: int
    items_sent: int
    skipped: dict[str, int]
    shift_ms: int
    seconds: float
    clicks_topic: str
    items_topic: str

    def summary(self) -> str:
        """One line for the terminal.

        >>> ReplayResult(10, 2, {"invalid JSON": 1}, 0, 2.0, "a-clicks", "a-items").summary()
        'sent 10 clicks to a-clicks and 2 items to a-items in 2.0 s (5 clicks/s); skipped: invalid JSON 1'
        """
        rate = self.clicks_sent / self.seconds if self.seconds > 0 else 0.0
        shift = f"; timestamps shifted by {self.shift_ms / 1000:+.3f} s" if self.shift_ms else ""
        skipped = ", ".join(f"{reason} {n}" for reason, n in sorted(self.skipped.items()))
        return (
            f"sent {self.clicks_sent} clicks to {self.clicks_topic} and {self.items_sent} items "
            f"to {self.items_topic} in {self.seconds:.1f} s ({rate:.0f} clicks/s){shift}; "
            f"skipped: {skipped or 'nothing'}"
        )


class _Failures:
    """Counts failed sends (producer callbacks run on its I/O thread) and keeps the first."""

    def __init__(self) -> None:
        self.count = 0
        self.first: BaseException | None = None

    def __call__(self, exc: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = exc

    def check(self, what: str) -> None:
        if self.count:
            raise ClusterstreamError(f"{self.count} {what} could not be sent: {self.first}")


def replay(
    settings: Settings,
    log: ClickLog,
    *,
    rate: float | None = None,
    limit: int | None = None,
    to_now: bool = False,
    progress: Progress | None = None,
    now_ms: int | None = None,
) -> ReplayResult:
    """Produce ``log``'s items, then its clicks, into the app of ``settings``.

    - ``rate``: clicks per second (> 0), or None for as fast as possible
    - ``limit``: send only the first ``limit`` clicks (in time order)
    - ``to_now``: shift every timestamp so the last click sent is at ``now_ms``
      (default: the current time)
    - ``progress``: called as ``progress("items" | "clicks", n, total)``

    Raises :class:`BrokerUnavailable` when Kafka cannot be reached and
    :class:`ClusterstreamError` when records could not be delivered.
    """
    if rate is not None and not rate > 0:
        raise ValueError("rate must be > 0")
    if limit is not None and limit < 0:
        raise ValueError("limit must be >= 0")
    advance = progress or (lambda phase, n, total=None: None)
    topics = Topics(settings)
    clicks = log.clicks if limit is None else log.clicks.slice(0, limit)
    shift_ms = 0
    if to_now:
        shift_ms = time_shift(clicks.ts, now_ms if now_ms is not None else int(time.time() * 1000))

    ensure_topics(settings, topics.specs())
    try:
        producer = KafkaProducer(
            client_id=f"{settings.app_id}-replay",
            linger_ms=20,
            batch_size=256 << 10,
            **kafka_python_config(settings),
        )
    except KafkaError as exc:
        raise BrokerUnavailable(
            f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}"
        ) from exc
    started = time.monotonic()
    failures = _Failures()
    try:
        advance("items", 0, len(log.items))
        for n, (key, value) in enumerate(item_messages(log.items, shift_ms), 1):
            producer.send(topics.items, value, key=key).add_errback(failures)
            if n % PROGRESS_EVERY == 0:
                advance("items", PROGRESS_EVERY, len(log.items))
        producer.flush()
        advance("items", len(log.items) % PROGRESS_EVERY, len(log.items))
        failures.check("items")

        partitions = producer.partitions_for(topics.clicks)
        if not partitions:
            raise BrokerUnavailable(f"topic {topics.clicks} has no partitions")
        n_parts = len(partitions)
        total = len(clicks)
        clicks_started = time.monotonic()
        sent = 0
        advance("clicks", 0, total)
        for partition, key, value in click_messages(clicks, n_parts, shift_ms):
            if rate is not None:
                wait = clicks_started + sent / rate - time.monotonic()
                if wait > _SLEEP_MIN_S:
                    time.sleep(wait)
            producer.send(topics.clicks, value, key=key, partition=partition).add_errback(failures)
            sent += 1
            if sent % PROGRESS_EVERY == 0:
                advance("clicks", PROGRESS_EVERY, total)
        producer.flush()
        advance("clicks", sent % PROGRESS_EVERY, total)
        failures.check("clicks")
    except KafkaError as exc:
        raise BrokerUnavailable(f"replay to {settings.bootstrap_servers} failed: {exc}") from exc
    finally:
        producer.close(timeout=10)
    seconds = time.monotonic() - started
    logger.info("replayed %d clicks and %d items from %s", sent, len(log.items), log.source)
    return ReplayResult(
        clicks_sent=sent,
        items_sent=len(log.items),
        skipped=dict(log.skipped),
        shift_ms=shift_ms,
        seconds=seconds,
        clicks_topic=topics.clicks,
        items_topic=topics.items,
    )
