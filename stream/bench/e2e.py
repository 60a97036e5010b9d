"""``clusterstream bench e2e``: one worker end to end on the embedded broker.

Everything runs on this machine against one embedded broker started here;
the figures are measured in the same run, over the same clicks topic:

- ``events_per_s``: catch-up rate of ONE worker process (``clusterstream
  worker`` as a child, state in RocksDB, outputs produced and acked, offsets
  committed, as in production) over a clicks topic pre-loaded with
  ``events`` synthetic clicks before the worker starts (items with vectors
  and a centre set are published first). The clock runs from the worker's
  ``ready_at`` (/stats: when its first partition assignment was done and
  its stores open) until a /stats poll (every 50 ms) shows
  ``events_applied`` at ``events``. So it leaves out the process start and
  the consumer-group join (``seconds.start_to_ready``), as the two baselines
  leave out their assignment and join;
  ``events_per_s_after_first_batch`` starts at the first poll that saw an
  applied click instead. The catch-up runs ``repeat`` times (default 3), each
  pass a fresh app (its own topics, consumer group and data dir, the same
  clicks pre-loaded) and worker process; the figures are those of the median
  pass (``passes_events_per_s`` lists them all; ``peak_rss_mb`` is the
  largest): single passes vary between runs minutes apart on our shared VMs.
- ``raw_consumer_events_per_s``: the ceiling: a bare aiokafka consumer in this
  process (no group, every partition assigned, ``getmany``, ``orjson.loads``
  of every value); median of three passes with ``max_records`` = the worker's
  batch size and median of three with :data:`RAW_MAX_RECORDS`, whichever is
  faster (a larger ``max_records`` slows this loop, so a larger worker batch
  must not weaken the baseline).
- ``faust_per_event_events_per_s``: the framework baseline: a minimal faust
  app in a child process (:func:`faust_baseline`), one agent doing
  ``orjson.loads`` + one dict update per event, from its first event to its
  ``faust_events``-th.
- ``p50_latency_ms`` / ``p99_latency_ms``: a second worker (fresh app and
  topics, ``trace_latency=True``) fed at half ``events_per_s`` once the
  worker owns every partition, by one aiokafka record batch per partition
  every 5 ms tick (``latency_producer="aiokafka-batch"``, the default; a
  click's send time is when it was due, so the wait for its tick counts) or
  by a kafka-python producer, one ``send`` per click (``"kafka-python"``:
  it burns a core on 2 cores and falls well short of the rate asked, so it
  measures the load generator more than the worker). A click
  (partition p, offset o, taken from its produce ack) is visible when the
  first CF delta of source partition p with ``last_offset >= o`` is applied
  (``GET /debug/cf-applied``); latency = that wall time - the click's send time.
  The one latency worker owns every cf-deltas partition, so it adds every
  delta in-process (``cf_apply_local``); ``cf_apply_local=False``
  (``--no-cf-apply-local``) measures the hop through the broker that the
  deltas of clusters owned by other workers take.
  ``latency_send_to_ack_p50_ms`` / ``_p99_ms``: the share of it spent before
  the load generator saw the broker's ack (generator and broker on the same
  2 cores as the worker), to read the latency figures, not to replace them.
  ``latency_repeat`` (default 3) runs it that many times, each a fresh app and
  worker at the same rate; the latency figures are those of the pass with the
  median p99 (for an even count, the worse of the two middle ones), every
  pass's p50 and p99 in ``latency_passes_p50_ms`` / ``_p99_ms``: one pass's
  p99 varies a lot at the same rate, mostly with the broker's acks
  (BENCHMARKS.md has the spread).
- ``peak_rss_mb``: VmHWM of the catch-up worker once it holds every user.
- ``workers`` (default 1): with N > 1 the catch-up runs N worker processes in
  one consumer group (the one-machine deployment: one worker per core), the
  clock starting when the last has its partitions (clicks applied before
  that are left out of the rate and reported); ``peak_rss_mb`` is then the largest worker's,
  CPU seconds are summed. The latency run always uses one worker. The goals
  are about one worker: compare N > 1 figures as scale-out, not against them.

Also reported, to read the figures: CPU seconds of the worker (per thread),
the broker and the latency producer in each timed phase (``cpu_seconds``),
the 1-minute load average at the start and the end (other work on the
machine skews everything), the worker's /stats at the end of each run, and
when ``events >= users`` the stream is re-labelled so every user clicks
(:func:`cover_all_users`).

Nothing here tunes the worker: it runs with the settings defaults, except
the embedded broker's group timeouts, the partitions and ``batch_size`` when
given. Producing the pre-load is not part of any figure.

The faust child is started as ``python -m stream.bench.e2e faust-baseline
...``; it writes its figures to a JSON file and is stopped by its PID.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from kafka import KafkaProducer

from stream.app.memory import proc_status
from stream.app.process import WorkerProcess
from stream.bench.machine import machine_info
from stream.core.centres import CentreSet
from stream.core.recompute import recompute
from stream.errors import ClusterstreamError
from stream.io.broker import EmbeddedBroker, free_port
from stream.io.embedded_broker_workarounds import (
    EMBEDDED_FETCH_MAX_WAIT_MS,
    EMBEDDED_HEARTBEAT_MS,
    EMBEDDED_SESSION_TIMEOUT_MS,
)
from stream.io.kafka import ensure_topics
from stream.io.synth import SynthConfig, SynthData, generate
from stream.io.topics import Topics
from stream.settings import Settings
from stream.wire.centres import CENTRES_KEY, encode_centres
from stream.wire.items import item_message
from stream.wire.partition import partition_of, user_partition

logger = logging.getLogger(__name__)

POLL_S = 0.05  # /stats polling period while measuring
RAW_PASSES = 3  # the raw consumer figure is the median of this many passes (short, noisy)
RAW_MAX_RECORDS = 2048  # the raw loop's fastest getmany size here (512..32768 tried)
GOALS = {  # from the issue: (figure, comparison, goal)
    "ratio_vs_raw": (">=", 0.5),
    "ratio_vs_faust": (">=", 15.0),
    "p99_latency_ms": ("<=", 250.0),
}
LATENCY_PRODUCERS = ("aiokafka-batch", "kafka-python")
RSS_GOAL_MB = 1500.0  # peak RSS of a worker holding 1M users
RSS_GOAL_USERS = 1_000_000
_STATS_KEYS = (
    "events_applied", "events_rejected", "unknown_items", "unassigned", "assignments_emitted",
    "cf_deltas_sent", "cf_deltas_applied", "cf_deltas_duplicate", "cf_deltas_local",
    "cf_deltas_echo", "users", "clusters", "lag",
    "cf_lag", "cf_entries", "partitions", "cf_partitions", "batches", "batch_ms_mean", "uptime_s",
    "batch_ms_by_step", "flushes", "loop_lag_max_ms_1m",
)  # fmt: skip

Echo = Callable[[str], None]
Record = tuple[int, bytes | None, bytes]  # (partition, key, value)
POLLED_PATHS = ("/stats", "/metrics", "/dashboard")  # what an operator's tools read


class Poller:
    """What an ops dashboard and a Prometheus scraper do to a worker: GET
    :data:`POLLED_PATHS` of every worker ``hz`` times a second, on a thread,
    while a pass runs (``--poll-hz``). A path that answers 404 is dropped (a
    worker without a dashboard)."""

    def __init__(self, urls: list[str], hz: float):
        self.urls = urls
        self.period = 1.0 / hz
        self.paths = list(POLLED_PATHS)
        self.requests = 0
        self.errors = 0  # after the first answer (before it: the worker starting)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="poller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop polling (again: nothing)."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)

    def _get(self, url: str, path: str) -> None:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=5) as resp:
                resp.read()
            self.requests += 1
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and path in self.paths:
                self.paths.remove(path)
            else:
                self.errors += 1
        except OSError:
            if self.requests:
                self.errors += 1

    def _run(self) -> None:
        while not self._stop.wait(self.period):
            for url in self.urls:
                for path in list(self.paths):
                    self._get(url, path)

    def as_dict(self) -> dict:
        return {"requests": self.requests, "errors": self.errors, "paths": self.paths}


class _NoPoller:
    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def as_dict(self) -> None:
        return None


def poller(urls: list[str], hz: float) -> Poller | _NoPoller:
    """A :class:`Poller` when ``hz`` > 0, else a context that does nothing."""
    return Poller(urls, hz) if hz > 0 else _NoPoller()


# --------------------------------------------------------------------------- data


def cover_all_users(data: SynthData, seed: int = 0) -> SynthData:
    """The same stream with repeat clicks re-labelled so that every user clicks
    at least once (when there are enough clicks).

    A repeat click (a user's second or later) is given to a user with no click
    yet from the same planted cluster, so the clicked item still fits the new
    user's interest; what is left is then matched across clusters. Repeats are
    taken evenly over the stream, so new users keep arriving throughout.

    >>> data = generate(SynthConfig(n_users=500, n_clusters=4, n_items=40, n_events=600))
    >>> len(np.unique(data.click_user)) < 500
    True
    >>> len(np.unique(cover_all_users(data).click_user))
    500
    """
    users = data.click_user.copy()
    n_users = len(data.user_ids)
    truth = data.truth_before
    rng = np.random.default_rng(seed)

    def relabel(missing: np.ndarray, repeats: np.ndarray) -> None:
        m = min(len(missing), len(repeats))
        if m:
            pick = repeats[np.linspace(0, len(repeats) - 1, m).astype(np.int64)]
            users[pick] = rng.permutation(missing)[:m]

    def state() -> tuple[np.ndarray, np.ndarray]:
        missing = np.bincount(users, minlength=n_users) == 0
        first = np.zeros(len(users), dtype=bool)
        first[np.unique(users, return_index=True)[1]] = True
        return missing, ~first

    missing, repeat = state()
    for c in range(int(truth.max()) + 1):
        relabel(
            np.flatnonzero(missing & (truth == c)), np.flatnonzero(repeat & (truth[users] == c))
        )
    missing, repeat = state()
    relabel(np.flatnonzero(missing), np.flatnonzero(repeat))
    return dataclasses.replace(data, click_user=users.astype(np.int32))


def user_partitions(user_ids: list[str], partitions: int) -> np.ndarray:
    """(n_users,) int32 partition of each user: Kafka's default partitioner on the key."""
    return np.fromiter(
        (user_partition(u, partitions) for u in user_ids),
        dtype=np.int32,
        count=len(user_ids),
    )


def click_records(data: SynthData, parts: np.ndarray) -> Iterable[Record]:
    """(partition, user_id key, raw click value) of every click, in stream order."""
    users = data.click_user.tolist()
    ids = data.user_ids
    for u, value in zip(users, data.records(), strict=True):
        yield int(parts[u]), ids[u].encode(), value


def item_records(data: SynthData, partitions: int) -> list[Record]:
    out = []
    for rec in data.item_records(with_vectors=True):
        key, value = item_message(rec)
        out.append((partition_of(key, partitions), key, value))
    return out


# --------------------------------------------------------------------------- kafka helpers


async def _produce(bootstrap: str, topic: str, records: Iterable[Record]) -> int:
    """Send ``records`` as whole record batches (aiokafka ``send_batch``); returns the count."""
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        linger_ms=0,
        max_batch_size=1 << 20,
        max_request_size=16 << 20,
    )
    await producer.start()
    n = 0
    try:
        batches: dict[int, object] = {}
        pending: list[asyncio.Future] = []
        for partition, key, value in records:
            batch = batches.get(partition)
            if batch is None:
                batch = batches[partition] = producer.create_batch()
            if batch.append(key=key, value=value, timestamp=None) is None:
                pending.append(await producer.send_batch(batch, topic, partition=partition))
                batch = batches[partition] = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is None:
                    raise ValueError("a record is larger than a batch")
                if len(pending) >= 16:
                    await asyncio.gather(*pending)
                    pending.clear()
            n += 1
        for partition, batch in batches.items():
            if batch.record_count():
                pending.append(await producer.send_batch(batch, topic, partition=partition))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return n


def produce(bootstrap: str, topic: str, records: Iterable[Record]) -> int:
    """:func:`_produce` from synchronous code."""
    return asyncio.run(_produce(bootstrap, topic, records))


async def _raw_consume(bootstrap: str, topic: str, partitions: int, n: int, max_records: int):
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        fetch_max_wait_ms=EMBEDDED_FETCH_MAX_WAIT_MS,
        max_partition_fetch_bytes=8 << 20,
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        loads = orjson.loads
        got = 0
        deadline = time.monotonic() + 60 + n / 1000
        t0 = time.perf_counter()
        while got < n:
            batch = await consumer.getmany(timeout_ms=1000, max_records=max_records)
            for msgs in batch.values():
                for msg in msgs:
                    loads(msg.value)
                got += len(msgs)
            if time.monotonic() > deadline:
                raise ClusterstreamError(f"raw consumer read only {got} of {n} clicks")
        return got, time.perf_counter() - t0
    finally:
        await consumer.stop()


def raw_consumer_seconds(
    bootstrap: str, topic: str, partitions: int, n: int, max_records: int
) -> float:
    """Seconds a bare aiokafka consumer needs to fetch and decode ``n`` records."""
    _, seconds = asyncio.run(_raw_consume(bootstrap, topic, partitions, n, max_records))
    return seconds


# --------------------------------------------------------------------------- faust baseline


def faust_baseline(bootstrap: str, topic: str, events: int, out: Path, datadir: Path) -> None:
    """The faust child: one per-event agent over ``topic`` (runs until SIGTERM).

    Per event: ``orjson.loads`` of the raw value and one dict update. When the
    ``events``-th event is seen it writes ``{"events", "seconds", "events_per_s"}``
    to ``out`` (seconds from the first event to the ``events``-th).
    """
    import faust

    app = faust.App(
        f"bench-faust-{uuid.uuid4().hex[:12]}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        datadir=str(datadir),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        broker_session_timeout=EMBEDDED_SESSION_TIMEOUT_MS / 1000,
        broker_heartbeat_interval=EMBEDDED_HEARTBEAT_MS / 1000,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(topic, key_serializer="raw", value_serializer="raw")
    counts: dict[str, int] = {}

    @app.agent(source)
    async def per_event(stream):
        n = 0
        first = 0.0
        async for value in stream:
            user_id = orjson.loads(value)["user_id"]
            counts[user_id] = counts.get(user_id, 0) + 1
            n += 1
            if n == 1:
                first = time.perf_counter()
            if n == events:
                seconds = time.perf_counter() - first
                tmp = out.with_suffix(".tmp")
                tmp.write_bytes(
                    orjson.dumps(
                        {
                            "events": n,
                            "seconds": seconds,
                            "events_per_s": (n - 1) / seconds if seconds > 0 else None,
                            "users": len(counts),
                        }
                    )
                )
                os.replace(tmp, out)

    app.finalize()
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def _stop_child(proc: subprocess.Popen, timeout_s: float = 15.0) -> None:
    """SIGTERM this one child by its PID, SIGKILL after ``timeout_s``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        logger.warning("faust baseline pid %d ignored SIGTERM; killing it", proc.pid)
        proc.kill()
        proc.wait()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_faust_baseline(bootstrap: str, topic: str, events: int, workdir: Path) -> dict:
    """Run :func:`faust_baseline` in a child process; return its figures."""
    out = workdir / "faust-result.json"
    log_path = workdir / "faust.log"
    cmd = [
        sys.executable, "-m", "stream.bench.e2e", "faust-baseline", "--bootstrap", bootstrap,
        "--topic", topic, "--events", str(events), "--out", str(out),
        "--datadir", str(workdir / "faust-data"),
    ]  # fmt: skip
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120 + events / 500
        while not out.exists():
            if proc.poll() is not None:
                raise ClusterstreamError(
                    f"the faust baseline exited ({proc.returncode}):\n{_tail(log_path)}"
                )
            if time.monotonic() > deadline:
                raise ClusterstreamError(f"the faust baseline timed out:\n{_tail(log_path)}")
            time.sleep(0.1)
        return json.loads(out.read_text())
    finally:
        _stop_child(proc)


# --------------------------------------------------------------------------- workers


def proc_status_mb(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of process ``pid`` in MB, from /proc."""
    status = proc_status(pid)
    return {name: round(status[name] / 1024, 1) for name in ("VmRSS", "VmHWM") if name in status}


def proc_cpu_s(pid: int | None, tid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (or of its thread ``tid``)
    so far; 0.0 when unknown."""
    path = f"/proc/{pid}/stat" if tid is None else f"/proc/{pid}/task/{tid}/stat"
    try:
        with open(path, encoding="ascii") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def thread_cpu_s(pid: int) -> dict[int, float]:
    """CPU seconds of every thread of process ``pid``, by thread id."""
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        return {}
    return {tid: proc_cpu_s(pid, tid) for tid in tids}


def thread_cpu_delta(pid: int, before: dict[int, float]) -> dict[str, object]:
    """CPU seconds per thread since ``before``: the main thread, and the others
    (largest first; /proc does not name Python threads, so only the ids)."""
    after = thread_cpu_s(pid)
    delta = {tid: after[tid] - before.get(tid, 0.0) for tid in after}
    others = sorted((round(d, 2) for t, d in delta.items() if t != pid and d >= 0.05), reverse=True)
    return {"main": round(delta.get(pid, 0.0), 2), "others": others}


def log_problems(path: Path) -> int:
    """Number of WARNING / ERROR / CRITICAL lines in a worker log."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return 0
    return sum(1 for line in text.splitlines() if re.search(r"\[(WARNING|ERROR|CRITICAL)\]", line))


def _stats(worker: WorkerProcess) -> dict | None:
    try:
        return worker.stats(digest=False, timeout=10)
    except (OSError, urllib.error.URLError, ValueError):
        return None


def poll_until(
    worker: WorkerProcess, predicate: Callable[[dict], bool], timeout_s: float, what: str,
    on_poll: Callable[[dict], None] | None = None,
) -> tuple[dict, float]:  # fmt: skip
    """Poll /stats?digest=0 every :data:`POLL_S` until ``predicate``; returns
    (stats, perf_counter time of that poll)."""
    stats, t = poll_all(
        [worker], lambda ss: predicate(ss[0]), timeout_s, what,
        on_poll and (lambda i, s: on_poll(s)),
    )  # fmt: skip
    return stats[0], t


def poll_all(
    workers: list[WorkerProcess], predicate: Callable[[list[dict]], bool], timeout_s: float,
    what: str, on_poll: Callable[[int, dict], None] | None = None,
) -> tuple[list[dict], float]:  # fmt: skip
    """:func:`poll_until` over several workers: every :data:`POLL_S` each worker's
    /stats (``on_poll(i, stats)``), until ``predicate`` holds for the newest
    stats of all of them (none is asked before each has answered once)."""
    deadline = time.monotonic() + timeout_s
    last: list[dict | None] = [None] * len(workers)
    while True:
        for i, worker in enumerate(workers):
            if not worker.alive():
                raise ClusterstreamError(
                    f"the worker exited ({worker.proc.returncode}) while waiting for {what}:\n"
                    f"{worker.log_tail()}"
                )
            s = _stats(worker)
            if s is not None:
                last[i] = s
                if on_poll is not None:
                    on_poll(i, s)
        now = time.perf_counter()
        if all(s is not None for s in last) and predicate(last):
            return last, now
        if time.monotonic() > deadline:
            briefs = [_brief(s or {}) for s in last]
            raise ClusterstreamError(
                f"timed out waiting for {what}: {briefs[0] if len(briefs) == 1 else briefs}\n"
                f"{workers[-1].log_tail()}"
            )
        time.sleep(POLL_S)


def _brief(stats: dict) -> dict:
    return {k: stats[k] for k in _STATS_KEYS if k in stats}


def _as_list(stats: dict | list[dict]) -> list[dict]:
    return stats if isinstance(stats, list) else [stats]


def _worker_settings(
    bootstrap: str, workdir: Path, name: str, args: dict, **extra
) -> Settings:  # fmt: skip
    settings = Settings(
        bootstrap_servers=bootstrap,
        embedded_broker=True,
        app_id=f"bench-e2e-{name}-{uuid.uuid4().hex[:8]}",
        data_dir=workdir / f"data-{name}",
        partitions=args["partitions"],
        session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS,
        heartbeat_interval_ms=EMBEDDED_HEARTBEAT_MS,
        web_port=free_port(),
        dim=args["dim"],
        k=args["k"],
        seed=args["seed"],
        cf_apply_local=args["cf_apply_local"],
        **({"batch_size": args["batch_size"]} if args["batch_size"] else {}),
        **extra,
    )
    ensure_topics(settings, Topics(settings).specs())
    return settings


def _publish_items_and_centres(settings: Settings, data: SynthData, centres: CentreSet) -> None:
    topics = Topics(settings)
    produce(settings.bootstrap_servers, topics.items, item_records(data, settings.partitions))
    produce(settings.bootstrap_servers, topics.centres, [(0, CENTRES_KEY, encode_centres(centres))])


# --------------------------------------------------------------------------- latency


def visible_latencies(sends: np.ndarray, applied: np.ndarray) -> np.ndarray:
    """Latency (s) of each click, NaN when it never became visible.

    - ``sends``: (n, 3) float64 rows (partition, offset, send time)
    - ``applied``: (m, 3) float64 rows (source partition, last source offset,
      applied time) of the CF owner's applied deltas

    A click (p, o) is visible at the earliest applied time among the rows of
    partition p with ``last_offset >= o``.

    >>> sends = np.array([[0, 5, 10.0], [0, 9, 10.5], [1, 3, 10.0], [1, 7, 11.0]])
    >>> applied = np.array([[0, 6, 10.2], [0, 9, 10.6], [1, 3, 10.1]])
    >>> visible_latencies(sends, applied).round(3).tolist()
    [0.2, 0.1, 0.1, nan]
    """
    sends = np.asarray(sends, dtype=np.float64).reshape(-1, 3)
    applied = np.asarray(applied, dtype=np.float64).reshape(-1, 3)
    out = np.full(len(sends), np.nan)
    for p in np.unique(sends[:, 0]):
        rows = applied[applied[:, 0] == p]
        mine = sends[:, 0] == p
        if not len(rows):
            continue
        order = np.argsort(rows[:, 1], kind="stable")
        offsets, times = rows[order, 1], rows[order, 2]
        earliest = np.minimum.accumulate(times[::-1])[::-1]  # min time over offsets >= this
        idx = np.searchsorted(offsets, sends[mine, 1], side="left")
        seen = idx < len(offsets)
        visible_at = np.where(seen, earliest[np.minimum(idx, len(offsets) - 1)], np.nan)
        out[mine] = visible_at - sends[mine, 2]
    return out


def paced_produce(
    bootstrap: str, topic: str, records: list[Record], rate: float
) -> tuple[np.ndarray, float]:
    """Send ``records`` at ``rate`` per second with kafka-python; returns
    (n, 4) rows (partition, offset, send time, ack time) and the seconds taken.
    The ack time is when the producer's I/O thread handled the ack (an upper
    bound of when the broker had the click)."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, batch_size=256 << 10)
    n = len(records)
    send_times = np.empty(n)
    ack_times = np.full(n, np.nan)
    futures = []
    try:
        clock = time.time
        start = clock()
        sent = 0
        while sent < n:
            due = min(n, int((clock() - start) * rate) + 1)
            while sent < due:
                partition, key, value = records[sent]
                send_times[sent] = clock()
                future = producer.send(topic, value, key=key, partition=partition)
                future.add_callback(lambda _, i=sent: ack_times.__setitem__(i, clock()))
                futures.append(future)
                sent += 1
            pause = start + sent / rate - clock()
            if pause > 0:
                time.sleep(min(pause, 0.005))
        producer.flush(timeout=60)
        seconds = clock() - start
        rows = np.empty((n, 4))
        for i, fut in enumerate(futures):
            md = fut.get(timeout=30)
            rows[i] = (md.partition, md.offset, send_times[i], ack_times[i])
    finally:
        producer.close(timeout=10)
    return rows, seconds


def _fill_batches(
    producer, records: list[Record], idx: list[int]
) -> list[tuple[object, list[int]]]:
    """``records[i]`` for ``i`` in ``idx`` as full producer batches, in order:
    ``[(batch, the indexes it holds)]`` (a full batch refuses the next record,
    which then opens the next batch)."""
    out: list[tuple[object, list[int]]] = []
    batch, held = producer.create_batch(), []
    for i in idx:
        if batch.append(key=records[i][1], value=records[i][2], timestamp=None) is None:
            out.append((batch, held))
            batch, held = producer.create_batch(), []
            if batch.append(key=records[i][1], value=records[i][2], timestamp=None) is None:
                raise ValueError("a record is larger than a batch")
        held.append(i)
    if held:
        out.append((batch, held))
    return out


async def _paced_batches(
    bootstrap: str, topic: str, records: list[Record], rate: float, tick_s: float
) -> tuple[np.ndarray, float]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0, max_batch_size=1 << 20)
    await producer.start()
    n = len(records)
    due_times = np.arange(n) / rate  # seconds after the start
    pending = []  # (ack future, partition, record indexes, [ack time])
    try:
        clock = time.time
        start = clock()
        due_times += start
        sent = 0
        while sent < n:
            due = min(n, int((clock() - start) * rate) + 1)
            by_partition: dict[int, list[int]] = {}
            for i in range(sent, due):
                by_partition.setdefault(records[i][0], []).append(i)
            for partition, idx in by_partition.items():
                # a late tick may carry more than one batch holds: several then
                for batch, held in _fill_batches(producer, records, idx):
                    fut = await producer.send_batch(batch, topic, partition=partition)
                    acked = [np.nan]
                    fut.add_done_callback(lambda _, acked=acked: acked.__setitem__(0, clock()))
                    pending.append((fut, partition, held, acked))
            sent = due
            await asyncio.sleep(max(tick_s - (clock() - start) % tick_s, 0.0))
        rows = np.empty((n, 4))
        for fut, partition, idx, acked in pending:
            md = await fut
            rows[idx, 0] = partition
            rows[idx, 1] = md.offset + np.arange(len(idx))
            rows[idx, 2] = due_times[idx]
            rows[idx, 3] = acked[0]
        seconds = clock() - start
    finally:
        await producer.stop()
    return rows, seconds


def paced_produce_batches(
    bootstrap: str, topic: str, records: list[Record], rate: float, tick_s: float = 0.005
) -> tuple[np.ndarray, float]:
    """:func:`paced_produce` with aiokafka ``send_batch``, far less CPU per click
    than kafka-python's ``send``: every ``tick_s`` the clicks due since the last
    tick go out as one record batch per partition (as a producer lingering
    ``tick_s`` would send them). A click's send time is when it was due, so the
    wait for its tick counts in its latency."""
    return asyncio.run(_paced_batches(bootstrap, topic, records, rate, tick_s))


def _cf_applied(worker: WorkerProcess) -> np.ndarray:
    with urllib.request.urlopen(f"{worker.url}/debug/cf-applied", timeout=60) as resp:
        applied = json.loads(resp.read())["applied"]
    return np.asarray(applied, dtype=np.float64).reshape(-1, 3)


def _drained(n: int) -> Callable[[dict], bool]:
    return lambda s: (
        s["events_applied"] + s["events_rejected"] >= n
        and s["lag"] == 0
        and s["cf_lag"] == 0
        and s["cf_deltas_applied"]
        + s["cf_deltas_duplicate"]
        + s.get("cf_deltas_rejected", 0)
        + s.get("cf_deltas_echo", 0)
        >= s["cf_deltas_sent"]
    )


# --------------------------------------------------------------------------- the run


def run(
    events: int = 200_000,
    users: int = 20_000,
    items: int = 5000,
    dim: int = 64,
    clusters: int = 64,
    k: int = 64,
    partitions: int = 2,
    batch_size: int | None = None,
    latency_events: int | None = None,
    latency_seconds: float = 15.0,
    faust_events: int | None = None,
    latency_fraction: float = 0.5,
    latency_producer: str = "aiokafka-batch",
    seed: int = 0,
    workers: int = 1,
    cf_apply_local: bool = True,
    repeat: int = 3,
    latency_repeat: int = 3,
    echo: Echo | None = None,
    poll_hz: float = 0.0,
) -> dict:
    """Run the whole benchmark (see the module doc) and return its figures."""
    echo = echo or (lambda line: None)
    if latency_producer not in LATENCY_PRODUCERS:
        raise ValueError(f"latency_producer must be one of {LATENCY_PRODUCERS}")
    if not 1 <= workers <= partitions:
        raise ValueError("workers must be between 1 and the number of partitions")
    if repeat < 1 or latency_repeat < 1:
        raise ValueError("repeat and latency_repeat must be >= 1")
    args = dict(
        partitions=partitions, dim=dim, k=k, seed=seed, batch_size=batch_size,
        latency_producer=latency_producer, workers=workers, cf_apply_local=cf_apply_local,
        repeat=repeat, latency_repeat=latency_repeat, poll_hz=poll_hz,
    )  # fmt: skip
    faust_events = min(faust_events or events, events)
    workdir = Path(tempfile.mkdtemp(prefix="clusterstream-bench-e2e-"))
    ok = False
    try:
        result = _run(
            events, users, items, dim, clusters, k, partitions, latency_events, latency_seconds,
            latency_fraction, faust_events, seed, args, workdir, echo,
        )  # fmt: skip
        ok = True
        return result
    finally:
        if ok:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            logger.warning("kept the logs of the failed run in %s", workdir)
            echo(f"kept the logs of the failed run in {workdir}")


def _run(
    events, users, items, dim, clusters, k, partitions, latency_events, latency_seconds,
    latency_fraction, faust_events, seed, args, workdir: Path, echo: Echo,
) -> dict:  # fmt: skip
    seconds: dict[str, float] = {}
    t_all = time.perf_counter()
    load_start = os.getloadavg()[0]

    # -- data and centres (untimed) --------------------------------------------
    t = time.perf_counter()
    data = generate(
        SynthConfig(
            n_users=users, n_clusters=clusters, n_items=items, dim=dim, n_events=events,
            seed=seed,
        )
    )  # fmt: skip
    if events >= users:
        data = cover_all_users(data, seed)
    users_clicked = len(np.unique(data.click_user))
    parts = user_partitions(data.user_ids, partitions)
    centres, _ = recompute(
        data.item_vectors, None, k=k, seed=seed, reason="bootstrap", created_at_ms=1
    )
    seconds["generate"] = time.perf_counter() - t
    echo(
        f"data       {events} clicks, {users_clicked} of {users} users, {len(data.item_ids)} "
        f"items, dim {dim}, {clusters} planted clusters, k={centres.k} ({seconds['generate']:.1f}s)"
    )

    with EmbeddedBroker(silent=True) as broker:
        bootstrap = broker.bootstrap
        echo(f"broker     {bootstrap} (pid {broker.pid})")

        # -- pre-load (untimed) --------------------------------------------------
        t = time.perf_counter()
        settings = _worker_settings(bootstrap, workdir, "catchup", args)
        clicks_topic = Topics(settings).clicks
        _publish_items_and_centres(settings, data, centres)
        produce(bootstrap, clicks_topic, click_records(data, parts))
        seconds["preload"] = time.perf_counter() - t
        echo(f"preload    {events} clicks on {clicks_topic} in {seconds['preload']:.1f}s")

        # -- raw consumer ----------------------------------------------------------
        raw_by_size = {
            size: sorted(
                raw_consumer_seconds(bootstrap, clicks_topic, partitions, events, size)
                for _ in range(RAW_PASSES)
            )
            for size in sorted({settings.batch_size, RAW_MAX_RECORDS})
        }
        raw_size = min(raw_by_size, key=lambda size: raw_by_size[size][RAW_PASSES // 2])
        raw_runs = raw_by_size[raw_size]
        raw_s = raw_runs[RAW_PASSES // 2]
        seconds["raw_consumer"] = raw_s
        raw_rate = events / raw_s
        echo(
            f"raw        aiokafka getmany + orjson: {raw_rate:,.0f} events/s "
            f"(median of {RAW_PASSES} passes, max_records {raw_size})"
        )

        # -- faust per-event baseline ------------------------------------------------
        t = time.perf_counter()
        faust = run_faust_baseline(bootstrap, clicks_topic, faust_events, workdir)
        seconds["faust_total"] = time.perf_counter() - t
        seconds["faust"] = faust["seconds"]
        faust_rate = faust["events_per_s"]
        echo(f"faust      per-event agent: {faust_rate:,.0f} events/s over {faust_events} events")

        # -- worker catch-up: ``repeat`` passes, each a fresh app on its own topics -------
        workers = args["workers"]
        passes = []
        for i in range(args["repeat"]):
            pass_settings = settings
            if i:
                pass_settings = _worker_settings(bootstrap, workdir, f"catchup{i}", args)
                _publish_items_and_centres(pass_settings, data, centres)
                produce(bootstrap, Topics(pass_settings).clicks, click_records(data, parts))
            pass_seconds: dict[str, float] = {}
            one = _catch_up(
                pass_settings, workdir, data, events, broker.pid, pass_seconds, echo, workers,
                args["poll_hz"],
            )  # fmt: skip
            passes.append({**one, "seconds": pass_seconds})
            echo(
                f"worker     pass {i + 1}: {one['events_per_s']:,.0f} events/s "
                f"(assigned -> {events} applied), "
                f"{one['events_per_s_after_first_batch']:,.0f} after the first batch"
            )
        catchup = median_pass(passes)
        seconds.update(catchup["seconds"])
        rate = catchup["events_per_s"]
        echo(
            f"worker     {rate:,.0f} events/s (median of {len(passes)} passes); "
            f"peak RSS {max(p['peak_rss_mb'] for p in passes)} MB"
        )

        # -- latency at a fraction (half) of the catch-up rate ---------------------------
        latency_passes = []
        for i in range(args["latency_repeat"]):
            pass_seconds: dict = {}
            one = _latency(
                bootstrap, workdir, args, users, items, dim, clusters, seed, centres, parts,
                latency_fraction * rate, latency_events, latency_seconds, broker.pid,
                pass_seconds, echo, name=f"latency-{i + 1}",
            )  # fmt: skip
            latency_passes.append({**one, "seconds": pass_seconds})
        latency = median_pass(latency_passes, "p99_latency_ms", lower_is_better=True)
        seconds.update(latency["seconds"])
    seconds["total"] = time.perf_counter() - t_all

    result = {
        "benchmark": "e2e",
        "n_events": events,
        "users": users,
        "users_clicked": users_clicked,
        "items": len(data.item_ids),
        "planted_clusters": clusters,
        "state": "rocksdb",
        "broker": "embedded (tansu)",
        "workers": workers,
        "events_applied_before_clock": catchup["events_applied_before_clock"],
        "events_per_s": round(rate, 1),
        "events_per_s_after_first_batch": round(catchup["events_per_s_after_first_batch"], 1),
        "repeat": len(passes),
        "passes_events_per_s": [round(p["events_per_s"], 1) for p in passes],
        "raw_consumer_events_per_s": round(raw_rate, 1),
        "raw_consumer_passes_events_per_s": [round(events / s, 1) for s in raw_runs],
        "raw_consumer_max_records": raw_size,
        "raw_consumer_events_per_s_by_max_records": {
            str(size): round(events / runs[RAW_PASSES // 2], 1)
            for size, runs in raw_by_size.items()
        },
        "faust_per_event_events_per_s": round(faust_rate, 1),
        "faust_events": faust_events,
        "ratio_vs_raw": round(rate / raw_rate, 3),
        "ratio_vs_faust": round(rate / faust_rate, 2),
        **{
            k: v
            for k, v in latency.items()
            if k not in ("worker_stats", "cpu_s", "log_problems", "seconds")
        },
        "latency_repeat": len(latency_passes),
        "latency_passes_p50_ms": [p["p50_latency_ms"] for p in latency_passes],
        "latency_passes_p99_ms": [p["p99_latency_ms"] for p in latency_passes],
        "latency_rate_fraction": latency_fraction,
        "latency_producer": args["latency_producer"],
        "poll_hz": args["poll_hz"],
        "poller": {"catch_up": catchup.get("poller"), "latency": latency.get("poller")},
        "cf_apply_local": args["cf_apply_local"],
        "peak_rss_mb": max(p["peak_rss_mb"] for p in passes),
        "max_rss_mb_polled": max(p["max_rss_mb_polled"] for p in passes),
        "users_held": sum(s.get("users", 0) for s in _as_list(catchup["stats"])),
        "settings": {
            "partitions": settings.partitions,
            "batch_size": settings.batch_size,
            "batch_wait_ms": settings.batch_wait_ms,
            "user_cache_rows": settings.user_cache_rows,
            "dim": settings.dim,
            "k": centres.k,
            "session_timeout_ms": settings.session_timeout_ms,
            "heartbeat_interval_ms": settings.heartbeat_interval_ms,
            "raw_max_records": raw_size,
        },
        "worker_stats": catchup["stats"],
        "latency_worker_stats": latency["worker_stats"],
        "seconds": {name: round(s, 3) for name, s in seconds.items()},
        "cpu_seconds": {"catch_up": catchup["cpu_s"], "latency": latency["cpu_s"]},
        "worker_log_problems": sum(p["log_problems"] for p in [*passes, *latency_passes]),
        "load_avg_1m": {"start": round(load_start, 2), "end": round(os.getloadavg()[0], 2)},
        "thread_env": {
            name: os.environ.get(name)
            for name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
        },
        **machine_info(),
    }
    # the goals are about one worker; a scale-out run reports figures only
    result["goals"] = goals(result) if workers == 1 else {}
    for name, goal in result["goals"].items():
        if not goal["met"]:
            echo(f"goal missed: {name} = {goal['value']} (goal {goal['goal']}, {goal['miss']})")
    return result


def median_pass(passes: list[dict], key: str = "events_per_s", lower_is_better: bool = False):
    """The pass with the median ``key``; for an even count, the worse of the two
    middle ones (the lower rate, or the higher figure when ``lower_is_better``,
    as for a latency).

    >>> median_pass([{"events_per_s": r} for r in (3.0, 1.0, 2.0, 9.0)])
    {'events_per_s': 2.0}
    >>> median_pass([{"p99_latency_ms": r} for r in (300.0, 170.0, 190.0, 180.0)],
    ...             "p99_latency_ms", lower_is_better=True)
    {'p99_latency_ms': 190.0}
    """
    ranked = sorted(passes, key=lambda p: p[key], reverse=lower_is_better)
    return ranked[(len(ranked) - 1) // 2]


def _catch_up(
    settings: Settings, workdir: Path, data: SynthData, events: int, broker_pid: int,
    seconds: dict, echo: Echo, workers: int = 1, poll_hz: float = 0.0,
) -> dict:  # fmt: skip
    """Start ``workers`` worker processes (one consumer group) over the
    pre-loaded topic and time them to ``events`` applied in total (with a
    :class:`Poller` at ``poll_hz`` on them)."""
    n_items = len(data.item_ids)
    procs = [WorkerProcess(settings, workdir / "worker-catchup.log", loglevel="WARNING")]
    for i in range(1, workers):
        other = settings.model_copy(
            update={"web_port": free_port(), "data_dir": workdir / f"data-catchup-{i}"}
        )
        procs.append(WorkerProcess(other, workdir / f"worker-catchup-{i}.log", loglevel="WARNING"))
    t = time.perf_counter()
    for worker in procs:
        worker.start()
    polling = poller([w.url for w in procs], poll_hz)
    try:
        polling.start()
        ready, _ = poll_all(
            procs, lambda ss: all(s["ready"] and s["items"] == n_items for s in ss), 120,
            "the worker to be ready",
        )  # fmt: skip
        seconds["worker_start"] = time.perf_counter() - t
        # the clock starts when the worker had its partitions (its own ready_at,
        # unix time), so no click is applied before it: like the raw consumer's
        # and faust's clocks, it leaves out the group join. Several workers: when
        # the last had its partitions; what the others applied by the next poll
        # is left out (unless that was every click: then from the first's)
        to_perf = time.time() - time.perf_counter()
        t_ready = max(s["ready_at"] for s in ready) - to_perf
        applied0 = 0
        if workers > 1:
            applied0 = sum(s["events_applied"] + s["events_rejected"] for s in ready)
            if applied0 >= events:
                t_ready, applied0 = min(s["ready_at"] for s in ready) - to_perf, 0
        seconds["start_to_ready"] = t_ready - t
        pids = [w.pid for w in procs]
        cpu0 = [proc_cpu_s(pid) for pid in pids], proc_cpu_s(broker_pid)
        threads0 = thread_cpu_s(pids[0])
        first: list[float] = []
        max_rss = [0.0]
        last_echo = [time.perf_counter(), 0]
        applied = [0] * workers

        def on_poll(i: int, s: dict) -> None:
            now = time.perf_counter()
            applied[i] = s["events_applied"] + s["events_rejected"]
            if not first and s["events_applied"] > 0:
                first.extend([now, sum(applied)])
            max_rss[0] = max(max_rss[0], proc_status_mb(pids[i]).get("VmRSS", 0.0))
            if now - last_echo[0] >= 5 and i == workers - 1:
                rate = (sum(applied) - last_echo[1]) / (now - last_echo[0])
                echo(f"  catch-up {sum(applied)}/{events} ({rate:,.0f} events/s now)")
                last_echo[:] = [now, sum(applied)]

        stats, t_done = poll_all(
            procs, lambda ss: sum(s["events_applied"] + s["events_rejected"] for s in ss) >= events,
            300 + events / 500,
            f"{events} clicks to be applied", on_poll,
        )  # fmt: skip
        polling.stop()
        mem = [proc_status_mb(pid) for pid in pids]
        cpu = {
            "worker": round(sum(proc_cpu_s(pid) for pid in pids) - sum(cpu0[0]), 2),
            "broker": round(proc_cpu_s(broker_pid) - cpu0[1], 2),
            "worker_threads": thread_cpu_delta(pids[0], threads0),
        }
        seconds["catch_up"] = t_done - t_ready
        seconds["ready_to_first_batch"] = first[0] - t_ready
        after_first = (events - first[1]) / (t_done - first[0]) if t_done > first[0] else None
        t = time.perf_counter()
        codes = [worker.stop(timeout=60) for worker in procs]
        seconds["worker_stop"] = time.perf_counter() - t
        for worker, code in zip(procs, codes, strict=True):
            if code != 0:
                echo(f"a catch-up worker exited with code {code}:\n{worker.log_tail()}")
        return {
            "events_per_s": (events - applied0) / (t_done - t_ready),
            "events_applied_before_clock": applied0,
            "events_per_s_after_first_batch": after_first or 0.0,
            "peak_rss_mb": max(m.get("VmHWM", 0.0) for m in mem),
            "max_rss_mb_polled": max(max_rss[0], *(m.get("VmRSS", 0.0) for m in mem)),
            "stats": _brief(stats[0]) if workers == 1 else [_brief(s) for s in stats],
            "cpu_s": cpu,
            "log_problems": sum(log_problems(w.log_path) for w in procs),
            "poller": polling.as_dict(),
        }
    finally:
        polling.stop()
        for worker in procs:
            worker.stop(timeout=20)


def _latency(
    bootstrap, workdir, args, users, items, dim, clusters, seed, centres, parts, rate,
    latency_events, latency_seconds, broker_pid, seconds, echo, name="latency",
) -> dict:  # fmt: skip
    """A second worker (trace_latency on) fed at ``rate``; click-to-CF latency."""
    settings = _worker_settings(bootstrap, workdir, name, args, trace_latency=True)
    n = latency_events or max(100, int(rate * latency_seconds))
    data = generate(
        SynthConfig(
            n_users=users, n_clusters=clusters, n_items=items, dim=dim, n_events=n, seed=seed,
            start_ms=int(time.time() * 1000), rate_per_s=rate,
        )
    )  # fmt: skip
    records = list(click_records(data, parts))
    _publish_items_and_centres(settings, data, centres)
    worker = WorkerProcess(settings, workdir / f"worker-{name}.log", loglevel="WARNING")
    t = time.perf_counter()
    worker.start()
    polling = poller([worker.url], args["poll_hz"])
    try:
        polling.start()
        every = list(range(settings.partitions))
        poll_until(
            worker,
            lambda s: (
                s["ready"]
                and s["items"] == len(data.item_ids)
                and s["partitions"] == every
                and s["cf_partitions"] == every
            ),
            120,
            "the latency worker to own every partition",
        )
        seconds["latency_worker_start"] = time.perf_counter() - t
        echo(f"latency    {n} clicks at {rate:,.0f}/s")
        cpu0 = proc_cpu_s(worker.pid), proc_cpu_s(broker_pid), time.process_time()
        threads0 = thread_cpu_s(worker.pid)
        send = (
            paced_produce if args["latency_producer"] == "kafka-python" else paced_produce_batches
        )
        sends, produce_s = send(bootstrap, Topics(settings).clicks, records, rate)
        seconds["latency_produce"] = produce_s
        producer_cpu = time.process_time() - cpu0[2]
        t = time.perf_counter()
        stats, _ = poll_until(worker, _drained(n), 120 + n / 500, "the latency clicks")
        seconds["latency_drain"] = time.perf_counter() - t
        cpu = {
            "worker": round(proc_cpu_s(worker.pid) - cpu0[0], 2),
            "broker": round(proc_cpu_s(broker_pid) - cpu0[1], 2),
            "producer": round(producer_cpu, 2),
            "worker_threads": thread_cpu_delta(worker.pid, threads0),
        }
        polling.stop()
        applied = _cf_applied(worker)
        mem = proc_status_mb(worker.pid)
        worker.stop(timeout=60)
    finally:
        polling.stop()
        worker.stop(timeout=20)
    lat = visible_latencies(sends[:, :3], applied) * 1000.0
    seen = lat[~np.isnan(lat)]
    # the part of it before the broker acked the click (load generator and broker)
    acked = (sends[:, 3] - sends[:, 2]) * 1000.0
    acked = acked[~np.isnan(acked)]
    if not len(seen):
        raise ClusterstreamError(
            f"no click of the latency run became visible ({len(applied)} applied CF deltas "
            f"traced): {_brief(stats)}"
        )
    out = {
        "p50_latency_ms": round(float(np.percentile(seen, 50)), 2),
        "p99_latency_ms": round(float(np.percentile(seen, 99)), 2),
        "max_latency_ms": round(float(seen.max()), 2),
        "latency_send_to_ack_p50_ms": round(float(np.percentile(acked, 50)), 2),
        "latency_send_to_ack_p99_ms": round(float(np.percentile(acked, 99)), 2),
        "latency_visible_fraction": round(len(seen) / n, 4),
        "latency_events": n,
        "latency_rate_target": round(rate, 1),
        "latency_rate_actual": round(n / produce_s, 1),
        "latency_worker_peak_rss_mb": mem.get("VmHWM"),
        "worker_stats": _brief(stats),
        "cpu_s": cpu,
        "log_problems": log_problems(worker.log_path),
        "poller": polling.as_dict(),
    }
    echo(
        f"latency    p50 {out['p50_latency_ms']} ms, p99 {out['p99_latency_ms']} ms, "
        f"visible {out['latency_visible_fraction']:.2%} (sent at {out['latency_rate_actual']:,.0f}/s)"
    )
    return out


def goals(result: dict) -> dict:
    """Each goal of the issue: its value, the goal, whether it is met and by how much not."""
    checks = dict(GOALS)
    if result.get("users_held", 0) and result["users"] >= RSS_GOAL_USERS:
        checks["peak_rss_mb"] = ("<=", RSS_GOAL_MB)
    out = {}
    for name, (op, goal) in checks.items():
        value = result.get(name)
        met = value is not None and (value >= goal if op == ">=" else value <= goal)
        miss = ""
        if not met and value is not None:
            miss = f"{abs(value - goal) / goal:.0%} {'short' if op == '>=' else 'over'}"
        out[name] = {"value": value, "goal": f"{op} {goal:g}", "met": met, "miss": miss}
    return out


# --------------------------------------------------------------------------- child entry


def main(argv: list[str] | None = None) -> None:
    """``python -m stream.bench.e2e faust-baseline --bootstrap B --topic T --events N --out F``."""
    parser = argparse.ArgumentParser(prog="python -m stream.bench.e2e")
    sub = parser.add_subparsers(dest="command", required=True)
    fb = sub.add_parser("faust-baseline", help="the per-event faust agent (a child process)")
    fb.add_argument("--bootstrap", required=True)
    fb.add_argument("--topic", required=True)
    fb.add_argument("--events", type=int, required=True)
    fb.add_argument("--out", type=Path, required=True)
    fb.add_argument("--datadir", type=Path, required=True)
    ns = parser.parse_args(argv)
    sys.argv = sys.argv[:1]  # faust's worker must not see our arguments
    faust_baseline(ns.bootstrap, ns.topic, ns.events, ns.out, ns.datadir)


if __name__ == "__main__":
    main()
