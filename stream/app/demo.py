"""``clusterstream demo``: the whole system on one machine, no configuration.

Starts the embedded broker, one worker (a child process) and a synthetic
click producer (planted clusters, Zipf popularity, 1% malformed records), and
prints one status line every few seconds. No centre set is published: the
worker bootstraps version 1 itself once enough users have vectors. Ctrl-C or
SIGTERM stops the producer, the worker and the broker, and removes the
demo's temporary data.
"""

from __future__ import annotations

import logging
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import orjson
from kafka import KafkaProducer

from stream.app.process import WorkerProcess
from stream.app.topics import Topics
from stream.io.broker import EmbeddedBroker, free_port
from stream.io.broker_quirks import EMBEDDED_HEARTBEAT_MS, EMBEDDED_SESSION_TIMEOUT_MS
from stream.io.kafka import ensure_topics
from stream.io.synth import SynthConfig, generate
from stream.settings import Settings

logger = logging.getLogger(__name__)


def _produce(
    settings: Settings, rate: float, clusters: int, stop: threading.Event, sent: list[int]
) -> None:
    """Send synthetic clicks at ``rate`` per second until ``stop`` (a thread)."""
    producer = KafkaProducer(bootstrap_servers=settings.bootstrap_servers, linger_ms=20)
    topics = Topics(settings)
    seed = 0
    try:
        while not stop.is_set():
            data = generate(
                SynthConfig(
                    n_users=2000, n_clusters=clusters, n_items=1500, dim=settings.dim,
                    n_events=max(int(rate * 60), 100), seed=seed, rate_per_s=rate,
                    start_ms=int(time.time() * 1000), malformed=0.01,
                )
            )  # fmt: skip
            if seed == 0:
                for item in data.item_records():
                    producer.send(topics.items, orjson.dumps(item), key=item["item_id"].encode())
                producer.flush()
            started = time.monotonic()
            keys = [data.user_ids[u].encode() for u in data.click_user.tolist()]
            for i, value in enumerate(data.records()):
                due = started + i / rate
                wait = due - time.monotonic()
                if wait > 0 and stop.wait(wait):
                    return
                producer.send(topics.clicks, value, key=keys[i])
                sent[0] += 1
            seed += 1  # same items and users (seeded apart from clicks), new clicks
    finally:
        producer.close(timeout=5)


def run_demo(rate: float = 300.0, clusters: int = 8, web_port: int = 6066, duration: float | None = None,
             echo=print) -> int:  # fmt: skip
    """Run the demo until Ctrl-C / SIGTERM (or ``duration`` seconds); returns an exit code."""
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    workdir = Path(tempfile.mkdtemp(prefix="clusterstream-demo-"))
    try:
        with EmbeddedBroker() as broker:
            echo(f"broker     {broker.bootstrap} (pid {broker.pid})")
            settings = Settings(
                bootstrap_servers=broker.bootstrap,
                embedded_broker=True,
                app_id="demo",
                data_dir=workdir / "data",
                dim=32,
                k=clusters,
                partitions=2,
                bootstrap_users=300,
                min_cluster_size=5,
                session_timeout_ms=EMBEDDED_SESSION_TIMEOUT_MS,
                heartbeat_interval_ms=EMBEDDED_HEARTBEAT_MS,
                web_port=web_port or free_port(),
            )
            ensure_topics(settings, Topics(settings).specs())
            worker = WorkerProcess(settings, workdir / "worker.log").start()
            producer = None
            try:
                echo(f"worker     pid {worker.pid}, log {worker.log_path}")
                echo(f"stats      {worker.url}/stats")
                sent = [0]
                producer = threading.Thread(
                    target=_produce, args=(settings, rate, clusters, stop, sent), daemon=True
                )
                producer.start()
                echo(
                    f"producing  ~{rate:g} synthetic clicks/s ({clusters} planted clusters); Ctrl-C stops"
                )
                return _report(worker, stop, sent, duration, echo)
            finally:
                stop.set()
                if producer is not None:
                    producer.join(timeout=10)
                worker.stop(timeout=20)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        echo("stopped: producer, worker and broker")


def _report(worker: WorkerProcess, stop: threading.Event, sent: list[int], duration, echo) -> int:
    """One status line every 3 s until ``stop`` or ``duration``."""
    started = time.monotonic()
    last_applied, last_t = 0, started
    while not stop.wait(3.0):
        if not worker.alive():
            echo(f"the worker exited:\n{worker.log_tail()}")
            return 1
        try:
            s = worker.stats()
        except OSError:
            echo("waiting for the worker to start ...")
            continue
        now = time.monotonic()
        rate_now = (s["events_applied"] - last_applied) / (now - last_t)
        last_applied, last_t = s["events_applied"], now
        version = s["centres_version"] if s["centres_version"] is not None else "-"
        echo(
            f"{now - started:6.0f}s  {rate_now:7.0f} events/s  sent {sent[0]}  "
            f"applied {s['events_applied']}  clusters {s['clusters']}  "
            f"centres v{version}  dlq {s['events_rejected']}  lag {s['lag']}"
        )
        if duration is not None and now - started >= duration:
            break
    return 0
