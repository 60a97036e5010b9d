"""``make soak``: one worker under a steady click rate for a long time.

``python -m stream.bench.soak --minutes 30`` starts an embedded broker and one
``clusterstream worker`` (a child process, state in RocksDB under a
temporary directory), publishes items with vectors and a centre set, then
sends ``rate`` clicks per second (one record batch per partition every
``tick_s``) for the whole run. Users keep arriving: about ``users`` distinct
ones over the run, each new user clicking again a few times while recent,
then going idle (so a TTL, when the worker has the ``user_ttl_s`` setting and
``--ttl-s`` is given, expires them). Each user clicks items of one planted
cluster.

Every ``report_s`` it prints one line and keeps one report: elapsed seconds,
clicks sent, distinct users sent, the worker's ``events_applied``, ``users``
held, ``users_expired`` (when the worker counts them), RSS (VmRSS, MB) of
the worker and of the broker (which keeps every record in memory),
RocksDB size on disk (MB, every file under the data dir), ``cf_entries``
against their cap (``cf_max_items`` x clusters; a table may hold up to twice
that between two compactions: ``cf_bound``), lag, and the click-to-CF
latency p50 / p99 (ms) of the clicks sent since the previous report (a
click's send time is when it was due; it is visible when the first applied
CF delta of its partition covers its offset: ``GET /debug/cf-applied``,
``trace_latency``), split where the batch loop's getmany handed the click
over (``GET /debug/clicks-fetched``): ``fetch_p99_ms`` is the way through the
producer, the broker and the consumer's read-ahead, ``worker_p50_ms`` /
``worker_p99_ms`` the worker's batch loop, from there to CF applied (the
embedded broker's part grows with its log, which it keeps whole in memory).
The last stdout line is one JSON object: the settings, every report, and the
start / middle / end figures of RSS, RocksDB size and the p99s (start = the
first report after ``warmup_s``, end = the final one, taken once every click
sent was applied), the worker's own
count of where its memory goes (``/stats`` ``memory``: the stores, the CF
tables, glibc's malloc figures) and its RSS by kind of mapping
(``rss_parts``: files, glibc's main arena and thread arenas, other
anonymous memory; :func:`stream.app.memory.rss_parts`).

Not part of ``make test`` at full size; a smoke size (``--seconds 20``) is
(tests/bench/test_soak_smoke.py).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import numpy as np
from aiokafka import AIOKafkaProducer

from stream.app.memory import rss_parts
from stream.app.process import WorkerProcess
from stream.bench.e2e import (
    _fill_batches,
    _publish_items_and_centres,
    proc_status_mb,
    visible_latencies,
)
from stream.core.centres import CentreSet
from stream.errors import ClusterstreamError
from stream.io.broker import EmbeddedBroker, free_port
from stream.io.embedded_broker_workarounds import EMBEDDED_HEARTBEAT_MS, EMBEDDED_SESSION_TIMEOUT_MS
from stream.io.kafka import ensure_topics
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics
from stream.settings import Settings
from stream.wire.clicks import encode_click
from stream.wire.partition import partition_of

logger = logging.getLogger(__name__)

REPEATS = 3  # later clicks of a new user, on average, while it is recent
RECENT = 20_000  # users that may click again (the newest ones)


class ClickSource:
    """Clicks of an arriving population: a click is a new user's first with
    probability ``p_new``, else a click of one of the ``RECENT`` newest users;
    a user clicks items of its planted cluster (user index mod clusters).

    >>> src = ClickSource(np.array([0, 1, 0, 1]), ["a", "b", "c", "d"], 2, p_new=0.5, seed=1)
    >>> clicks = [src.next(1000) for _ in range(200)]
    >>> sorted(clicks[0]), 50 < src.distinct < 150
    (['event_id', 'item_id', 'ts', 'user_id'], True)
    """

    def __init__(
        self, item_cluster: np.ndarray, item_ids: list[str], partitions: int, p_new: float,
        seed: int = 0,
    ):  # fmt: skip
        self.item_ids = item_ids
        self.rng = np.random.default_rng(seed)
        self.partitions = partitions
        self.p_new = p_new
        n_clusters = int(item_cluster.max()) + 1
        self.items = [np.flatnonzero(item_cluster == c) for c in range(n_clusters)]
        self.n_clusters = n_clusters
        self.distinct = 0
        self.sent = 0
        self.run = uuid.uuid4().hex[:6]

    def user(self, n: int) -> str:
        return f"s{self.run}-{n}"

    def next(self, ts_ms: int) -> dict:
        if self.distinct == 0 or self.rng.random() < self.p_new:
            n = self.distinct
            self.distinct += 1
        else:
            n = self.distinct - 1 - int(self.rng.integers(min(self.distinct, RECENT)))
        pool = self.items[n % self.n_clusters]
        item = int(pool[self.rng.integers(len(pool))]) if len(pool) else 0
        self.sent += 1
        return {
            "event_id": f"{self.run}-{self.sent}",
            "user_id": self.user(n),
            "item_id": self.item_ids[item],
            "ts": ts_ms,
        }

    def record(self, click: dict) -> tuple[int, bytes, bytes]:
        key = click["user_id"].encode()
        return partition_of(key, self.partitions), key, encode_click(click)


def _get(url: str, timeout: float = 60.0) -> dict:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def _ms(seconds: np.ndarray, q: float) -> float:
    """The ``q``-th percentile of ``seconds`` ((n,) float64) in ms, to 0.1.

    >>> _ms(np.array([0.01, 0.02, 0.03]), 50)
    20.0
    """
    return round(float(np.percentile(seconds, q)) * 1000, 1)


def _disk_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(root, name))
            except OSError:
                pass
    return round(total / 2**20, 1)


class Soak:
    def __init__(self, ns: argparse.Namespace, workdir: Path, broker: EmbeddedBroker):
        self.ns = ns
        self.workdir = workdir
        extra = {}
        self.ttl = None
        if ns.ttl_s is not None and "user_ttl_s" in Settings.model_fields:
            extra["user_ttl_s"] = ns.ttl_s
            self.ttl = ns.ttl_s
            if "user_ttl_check_s" in Settings.model_fields:
                extra["user_ttl_check_s"] = max(1.0, min(60.0, ns.ttl_s / 4))
        self.settings = Settings(
            bootstrap_servers=broker.bootstrap, embedded_broker=True,
            app_id=f"soak-{uuid.uuid4().hex[:8]}", data_dir=workdir / "data",
            partitions=ns.partitions, session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS,
            heartbeat_interval_ms=EMBEDDED_HEARTBEAT_MS, web_port=free_port(), dim=ns.dim,
            k=ns.clusters, trace_latency=True, recompute_cron="off", **extra,
        )  # fmt: skip
        self.reports: list[dict] = []
        self.broker_pid = broker.pid
        self.sends: list[np.ndarray] = []  # (n, 3) partition, offset, due time
        # route -> (m, 3) float64 rows (partition, offset, time) read so far from
        # the worker's two latency traces (trace_rows)
        self.traces = {route: np.empty((0, 3)) for route in ("cf-applied", "clicks-fetched")}
        self.read_to: dict[str, float] = {}  # route -> the newest row's time read
        self.caught_up = True  # every click sent was applied in the end

    def prepare(self) -> WorkerProcess:
        ns, settings = self.ns, self.settings
        ensure_topics(settings, Topics(settings).specs())
        data = generate(
            SynthConfig(n_users=100, n_clusters=ns.clusters, n_items=ns.items, dim=ns.dim,
                        n_events=100, seed=ns.seed)
        )  # fmt: skip
        centres = CentreSet.create(data.centres[: ns.clusters], reason="bootstrap", created_at_ms=1)
        _publish_items_and_centres(settings, data, centres)
        self.item_cluster = np.asarray(data.item_cluster[: len(data.item_ids)], dtype=np.int32)
        self.item_ids = data.item_ids
        worker = WorkerProcess(settings, self.workdir / "worker.log", loglevel=ns.loglevel).start()
        worker.wait_for(
            lambda s: s["ready"] and s["items"] == len(data.item_ids)
            and s["centres_version"] == 1, 120, "the worker",
        )  # fmt: skip
        return worker

    async def produce(self, worker: WorkerProcess) -> None:
        ns = self.ns
        seconds = ns.seconds if ns.seconds else ns.minutes * 60
        p_new = min(1.0, ns.users / max(ns.rate * seconds, 1))
        source = ClickSource(self.item_cluster, self.item_ids, ns.partitions, p_new, ns.seed)
        topic = Topics(self.settings).clicks
        producer = AIOKafkaProducer(
            bootstrap_servers=self.settings.bootstrap_servers, linger_ms=0,
            max_batch_size=1 << 20,
        )  # fmt: skip
        await producer.start()
        loop = asyncio.get_running_loop()
        start = time.time()
        next_report = start + ns.report_s
        sent = 0
        pending: list = []
        reporting = None
        try:
            while True:
                now = time.time()
                if now - start >= seconds:
                    break
                due = int((now - start) * ns.rate)
                if due > sent:
                    ts = int(now * 1000)
                    records = []
                    for _ in range(due - sent):
                        records.append(source.record(source.next(ts)))
                    by_part: dict[int, list[int]] = {}
                    for i, rec in enumerate(records):
                        by_part.setdefault(rec[0], []).append(i)
                    for part, idx in by_part.items():
                        for batch, held in _fill_batches(producer, records, idx):
                            fut = await producer.send_batch(batch, topic, partition=part)
                            pending.append((fut, part, len(held), now))
                    sent = due
                done = [p for p in pending if p[0].done()]
                pending = [p for p in pending if not p[0].done()]
                for fut, part, count, at in done:
                    if fut.exception() is None:
                        base = fut.result().offset
                        rows = np.empty((count, 3))
                        rows[:, 0], rows[:, 1], rows[:, 2] = part, base + np.arange(count), at
                        self.sends.append(rows)
                if now >= next_report and (reporting is None or reporting.done()):
                    # on a thread, while the clicks keep going out at the rate
                    reporting = loop.run_in_executor(None, self.report, worker, source, start)
                    reporting.add_done_callback(lambda f: print(self.line(f.result()), flush=True))
                    next_report += ns.report_s
                await asyncio.sleep(ns.tick_s)
            if pending:
                await asyncio.gather(*(p[0] for p in pending), return_exceptions=True)
            if reporting is not None:
                await reporting
        finally:
            await producer.stop()
        self.distinct = source.distinct
        self.sent = source.sent
        # lag alone may read 0 before the last clicks were fetched (its log end
        # comes with a fetch): every click sent is applied (or dropped as a duplicate)
        try:
            worker.wait_for(
                lambda s: s["lag"] == 0
                and s["events_applied"] + s["duplicates_dropped"] >= source.sent,
                300, "the worker to catch up",
            )  # fmt: skip
        except ClusterstreamError as exc:  # the figures of a failed run are wanted too
            print(f"the worker did not catch up: {exc}"[:300], flush=True)
            self.caught_up = False
        self.reports.append(self.report(worker, source, start, final=True))
        print(self.line(self.reports[-1]), flush=True)

    def report(self, worker: WorkerProcess, source: ClickSource, start: float, final=False):
        stats = worker.stats()
        now = time.time()
        p50 = p99 = None
        parts: dict[str, float | None] = {}
        invisible = 0
        taken, self.sends = self.sends, []  # one swap: the producer keeps appending
        if taken:
            sends = np.concatenate(taken)
            keep = sends[:, 2] > now - 3.0  # too recent to judge: next window
            judged = sends if final else sends[~keep]
            if not final:
                self.sends.insert(0, sends[keep])
            if len(judged):
                applied = self.trace_rows(worker, "cf-applied", "applied")
                fetched = self.trace_rows(worker, "clicks-fetched", "fetched")
                lat = visible_latencies(judged, applied)
                at_fetch = visible_latencies(judged, fetched)
                # a click becomes visible after it was sent: older rows serve no later one
                oldest = float(sends[keep, 2].min()) if keep.any() else now - 3.0
                for route, rows in (("cf-applied", applied), ("clicks-fetched", fetched)):
                    self.traces[route] = rows[rows[:, 2] >= oldest - 1.0]
                seen = lat[~np.isnan(lat)]
                invisible = int(np.isnan(lat).sum())
                if len(seen):
                    p50, p99 = _ms(seen, 50), _ms(seen, 99)
                both = ~np.isnan(lat) & ~np.isnan(at_fetch)
                if both.any():
                    # the click's way split where the batch loop's getmany handed it
                    # over: producer, broker and the consumer's read-ahead before,
                    # the worker's batch loop after
                    parts["fetch_p99_ms"] = _ms(at_fetch[both], 99)
                    parts["worker_p50_ms"] = _ms(lat[both] - at_fetch[both], 50)
                    parts["worker_p99_ms"] = _ms(lat[both] - at_fetch[both], 99)
        report = {
            "elapsed_s": round(now - start, 1),
            "clicks_sent": source.sent,
            "distinct_users_sent": source.distinct,
            "events_applied": stats["events_applied"],
            "users": stats["users"],
            "users_expired": stats.get("users_expired"),
            "rss_mb": proc_status_mb(worker.pid).get("VmRSS"),
            # the embedded broker keeps every record in memory (no compaction)
            "broker_rss_mb": proc_status_mb(self.broker_pid).get("VmRSS"),
            "rocksdb_mb": _disk_mb(self.settings.data_dir),
            # where the worker's memory goes (its own count; /stats "memory")
            "memory": stats.get("memory"),
            # the worker's RSS by kind of mapping (glibc's arenas, files, other)
            "rss_parts": rss_parts(worker.pid),
            "batches": stats.get("batches"),
            "stalls": stats.get("stalls"),
            "loop_lag_max_ms_1m": stats.get("loop_lag_max_ms_1m"),
            "cf_entries": stats["cf_entries"],
            "cf_cap": self.settings.cf_max_items * stats["clusters"],
            # a table compacts down to the cap once it doubled (stream/core/cf.py)
            "cf_bound": 2 * self.settings.cf_max_items * stats["clusters"],
            "lag": stats["lag"],
            "p50_ms": p50,
            "p99_ms": p99,
            "fetch_p99_ms": parts.get("fetch_p99_ms"),
            "worker_p50_ms": parts.get("worker_p50_ms"),
            "worker_p99_ms": parts.get("worker_p99_ms"),
            "clicks_not_visible": invisible,
        }
        if not final:
            self.reports.append(report)
        return report

    def trace_rows(self, worker: WorkerProcess, route: str, key: str) -> np.ndarray:
        """(m, 3) float64 rows (partition, offset, time) of one of the worker's
        latency traces (``route`` "cf-applied": the CF deltas it applied,
        "clicks-fetched": its fetches of clicks; ``key``: the rows' name in
        the answer): the rows kept from earlier reports and the new ones
        (``since`` the newest seen; the worker keeps up to a million, and
        encoding them all at every report held its event loop for seconds)."""
        url = f"{worker.url}/debug/{route}"
        if route in self.read_to:
            url += f"?since={self.read_to[route]!r}"
        new = np.asarray(_get(url)[key], dtype=np.float64).reshape(-1, 3)
        kept = self.traces[route]
        if not len(new):
            return kept
        self.read_to[route] = float(new[:, 2].max())
        return np.concatenate([kept, new])

    @staticmethod
    def line(r: dict) -> str:
        return (
            (
                f"{r['elapsed_s']:>7.0f}s sent {r['clicks_sent']:>9} users {r['distinct_users_sent']:>8}"
                f" applied {r['events_applied']:>9} held {r['users']:>8} expired {r['users_expired']}"
                f" rss {r['rss_mb']} MB (broker {r['broker_rss_mb']}) rocksdb {r['rocksdb_mb']} MB cf {r['cf_entries']}/{r['cf_cap']}"
                f" lag {r['lag']} p50/p99 {r['p50_ms']}/{r['p99_ms']} ms"
                f" (fetch p99 {r.get('fetch_p99_ms')}, worker p50/p99"
                f" {r.get('worker_p50_ms')}/{r.get('worker_p99_ms')} ms)"
            )
            + (Soak.memory_line(r["memory"]) if r.get("memory") else "")
            + (Soak.parts_line(r["rss_parts"]) if r.get("rss_parts") else "")
        )

    @staticmethod
    def parts_line(p: dict) -> str:
        return (
            f" [rss: files {p['files']}, malloc main {p['malloc_main']} threads"
            f" {p['malloc_threads']} ({p['malloc_thread_heaps']} heaps), other {p['other_anon']} MB]"
        )

    @staticmethod
    def memory_line(m: dict) -> str:
        return (
            f" [cache {m['user_cache_rows']} rows {m['user_cache_mb']} MB, memtables"
            f" {m['rocksdb_memtables_mb']}, readers {m['rocksdb_table_readers_mb']}, block cache"
            f" {m['rocksdb_block_cache_mb']} MB, py blocks {m['python_blocks']}"
            + (
                f", cf tables {m['cf_tables_mb']} memtables {m['cf_memtables_mb']} MB"
                if "cf_memtables_mb" in m
                else ""
            )
            + (
                f", malloc in use {m['malloc_in_use_mb']} free {m['malloc_free_mb']}"
                f" mmap {m['malloc_mmap_mb']} MB"
                if "malloc_in_use_mb" in m
                else ""
            )
            + (f", trims {m['malloc_trims']}" if m.get("malloc_trims") else "")
            + "]"
        )

    def result(self) -> dict:
        ns = self.ns
        # the last is the final report, once every click sent was applied
        after = [r for r in self.reports if r["elapsed_s"] >= ns.warmup_s] or self.reports
        pick = {"start": after[0], "middle": after[len(after) // 2], "end": after[-1]}
        return {
            "benchmark": "soak",
            "seconds": ns.seconds if ns.seconds else ns.minutes * 60,
            "rate": ns.rate,
            "users_target": ns.users,
            "distinct_users": self.distinct,
            "clicks_sent": self.sent,
            "partitions": ns.partitions,
            "clusters": ns.clusters,
            "user_ttl_s": self.ttl,
            "caught_up": self.caught_up,
            "warmup_s": ns.warmup_s,
            # the allocator settings the worker ran with (CLUSTERSTREAM_MALLOC_* reach it)
            "malloc": {
                name: getattr(self.settings, name)
                for name in ("malloc_arena_max", "malloc_trim_s", "malloc_mmap_threshold_kb")
            },
            "rss_mb": {k: r["rss_mb"] for k, r in pick.items()},
            "broker_rss_mb": {k: r["broker_rss_mb"] for k, r in pick.items()},
            "rss_mb_after_warmup": {
                "min": min(r["rss_mb"] for r in after),
                "max": max(r["rss_mb"] for r in after),
            },
            "lag": {k: r["lag"] for k, r in pick.items()},
            "lag_max": max(r["lag"] for r in self.reports),
            "users_expired": self.reports[-1]["users_expired"],
            "rocksdb_mb": {k: r["rocksdb_mb"] for k, r in pick.items()},
            "p99_ms": {k: r["p99_ms"] for k, r in pick.items()},
            "fetch_p99_ms": {k: r.get("fetch_p99_ms") for k, r in pick.items()},
            "worker_p99_ms": {k: r.get("worker_p99_ms") for k, r in pick.items()},
            "users_held": {k: r["users"] for k, r in pick.items()},
            "cf_entries_max": max(r["cf_entries"] for r in self.reports),
            "cf_cap": self.reports[-1]["cf_cap"],
            "cf_bound": self.reports[-1]["cf_bound"],
            "final": self.reports[-1],
            "reports": self.reports,
        }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m stream.bench.soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--seconds", type=float, default=None, help="overrides --minutes")
    parser.add_argument("--rate", type=float, default=3000.0, help="clicks per second")
    parser.add_argument("--users", type=int, default=5_000_000, help="distinct users over the run")
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--clusters", type=int, default=32)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--report-s", dest="report_s", type=float, default=60.0)
    # the user cache, memtables and block cache fill in the first minutes (bounded)
    parser.add_argument("--warmup-s", dest="warmup_s", type=float, default=300.0)
    parser.add_argument("--tick-s", dest="tick_s", type=float, default=0.05)
    parser.add_argument("--ttl-s", dest="ttl_s", type=float, default=300.0,
                        help="user_ttl_s of the worker (0: users never expire)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--loglevel", default="WARNING", help="of the worker (its worker.log)")
    parser.add_argument("--workdir", type=Path, default=None)
    ns = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    workdir = ns.workdir or Path(tempfile.mkdtemp(prefix="clusterstream-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    with EmbeddedBroker(silent=True) as broker:
        soak = Soak(ns, workdir, broker)
        worker = soak.prepare()
        try:
            asyncio.run(soak.produce(worker))
        finally:
            code = worker.stop()
        result = soak.result()
        result["worker_exit_code"] = code
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
