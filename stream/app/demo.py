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
from collections.abc import Iterator
from pathlib import Path

from kafka import KafkaProducer
from kafka.errors import KafkaError

from stream.app.process import WorkerProcess
from stream.io.broker import EmbeddedBroker, free_port
from stream.io.embedded_broker_workarounds import EMBEDDED_HEARTBEAT_MS, EMBEDDED_SESSION_TIMEOUT_MS
from stream.io.kafka import bootstrap_wait, ensure_topics, kafka_python_config
from stream.io.synth import SynthConfig, SynthData, generate
from stream.io.topics import Topics
from stream.settings import Settings
from stream.wire.clicks import encode_click
from stream.wire.items import item_message

logger = logging.getLogger(__name__)


#: minutes of synthetic clicks generated once and sent again round after round
ROUND_MINUTES = 10
#: seconds the producer keeps trying to reach the broker (and to flush the items)
CONNECT_S = 60
#: seconds the demo waits for the worker's first applied batch before it gives up
FIRST_BATCH_S = 300


def demo_data(rate: float, clusters: int, dim: int, minutes: float = ROUND_MINUTES) -> SynthData:
    """The demo's world: items, users and their planted clusters, and one round of clicks."""
    return generate(
        SynthConfig(
            n_users=2000, n_clusters=clusters, n_items=1500, dim=dim,
            n_events=max(int(rate * 60 * minutes), 100), seed=0, rate_per_s=rate,
            start_ms=int(time.time() * 1000), malformed=0.01,
        )
    )  # fmt: skip


def demo_clicks(data: SynthData, round_no: int, start_ms: int) -> Iterator[tuple[bytes, bytes]]:
    """``(key, value)`` of round ``round_no`` of ``data``'s clicks, timed from ``start_ms``.

    Every round sends the same stationary stream: a new seed would draw new
    planted clusters and new item homes, a real drift each round (the drift
    watch fired on the demo for that). Event ids get the round as a prefix, so
    a round is not taken for duplicates of the one before.

    >>> data = demo_data(rate=50, clusters=2, dim=4, minutes=0.05)
    >>> k, v = next(demo_clicks(data, 3, start_ms=data.config.start_ms + 1000))
    >>> import orjson; rec = orjson.loads(v)
    >>> rec["event_id"], k.decode() == rec["user_id"], rec["ts"] - int(data.click_ts[0])
    ('r3-e000000000', True, 1000)
    """
    shift = start_ms - data.config.start_ms
    bad = set(data.malformed_index.tolist())
    dumps = encode_click
    users = data.click_user.tolist()
    for i, (rec, raw) in enumerate(zip(data.click_records(), data.records(), strict=True)):
        key = data.user_ids[users[i]].encode()
        if i in bad:
            yield key, raw  # malformed on purpose: the dead-letter topic gets it
            continue
        rec["event_id"] = f"r{round_no}-{rec['event_id']}"
        rec["ts"] += shift
        yield key, dumps(rec)


class _Producer(threading.Thread):
    """Sends synthetic clicks at ``rate`` per second until ``stop``; ``sent`` counts
    them and ``error`` says why it stopped early (the status loop reports it)."""

    def __init__(self, settings: Settings, rate: float, clusters: int, stop: threading.Event):
        super().__init__(name="demo-producer", daemon=True)
        self.settings, self.rate, self.clusters, self.stop = settings, rate, clusters, stop
        self.sent = 0
        self.error: str | None = None

    def run(self) -> None:
        try:
            producer = self._connect()
            if producer is not None:
                try:
                    self._send(producer)
                finally:
                    producer.close(timeout=5)
        except Exception as exc:  # the demo must say so, not wait for clicks forever
            logger.exception("demo producer failed")
            self.error = f"{type(exc).__name__}: {exc}"

    def _connect(self) -> KafkaProducer | None:
        """A producer, retried for up to ``CONNECT_S``: a broker that has just started
        may leave a client's first version probe unanswered."""
        deadline = time.monotonic() + CONNECT_S
        config = {
            **kafka_python_config(self.settings),
            **bootstrap_wait(KafkaProducer, min(10.0, CONNECT_S)),
        }
        while True:
            try:
                return KafkaProducer(**config, linger_ms=20)
            except KafkaError:
                if time.monotonic() > deadline:
                    raise
                logger.warning("demo producer: broker not answering yet, retrying")
                if self.stop.wait(1.0):
                    return None

    def _send(self, producer: KafkaProducer) -> None:
        topics = Topics(self.settings)
        data = demo_data(self.rate, self.clusters, self.settings.dim)
        for item in data.item_records():
            key, value = item_message(item)
            producer.send(topics.items, value, key=key)
        producer.flush(timeout=CONNECT_S)
        round_no = 0
        while not self.stop.is_set():
            started = time.monotonic()
            start_ms = int(time.time() * 1000)
            for i, (key, value) in enumerate(demo_clicks(data, round_no, start_ms)):
                wait = started + i / self.rate - time.monotonic()
                if wait > 0 and self.stop.wait(wait):
                    return
                producer.send(topics.clicks, value, key=key)
                self.sent += 1
            round_no += 1


#: settings a second terminal needs besides the TOML file (which holds them all)
_SHARED = ("bootstrap_servers", "app_id", "dim", "embedded_broker", "min_cluster_size")
#: settings of the demo's own worker that a second process must not copy
_PRIVATE = {"data_dir", "web_host", "web_port", "advertised_url"}


def config_toml(settings: Settings) -> str:
    """The demo's settings that differ from the defaults, as a TOML file for
    ``CLUSTERSTREAM_CONFIG`` (its worker's data dir and web port left out).

    >>> print(config_toml(Settings(app_id="demo", dim=32, embedded_broker=True)))
    # clusterstream demo: CLUSTERSTREAM_CONFIG=this file
    embedded_broker = true
    app_id = "demo"
    dim = 32
    <BLANKLINE>
    """
    lines = ["# clusterstream demo: CLUSTERSTREAM_CONFIG=this file"]
    for name, field in Settings.model_fields.items():
        value = getattr(settings, name)
        if name in _PRIVATE or value is None or value == field.default:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{name} = {text}")
    return "\n".join(lines) + "\n"


def export_line(settings: Settings, config_path: Path) -> str:
    """One line to paste into a second terminal: the shared settings and the file."""
    pairs = [f"CLUSTERSTREAM_CONFIG={config_path}"]
    for name in _SHARED:
        value = getattr(settings, name)
        value = ("true" if value else "false") if isinstance(value, bool) else value
        pairs.append(f"CLUSTERSTREAM_{name.upper()}={value}")
    return "export " + " ".join(pairs)


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
            config_path = workdir / "clusterstream.toml"
            config_path.write_text(config_toml(settings))
            worker = WorkerProcess(settings, workdir / "worker.log").start()
            producer = None
            try:
                echo(f"worker     pid {worker.pid}, log {worker.log_path}")
                echo(f"stats      {worker.url}/stats")
                echo(f"dashboard  {worker.url}/dashboard")
                echo(f"config     {config_path} (every setting, for CLUSTERSTREAM_CONFIG)")
                echo(
                    "second terminal, paste this line, then e.g. clusterstream recompute --dry-run:"
                )
                echo(f"  {export_line(settings, config_path)}")
                producer = _Producer(settings, rate, clusters, stop)
                producer.start()
                echo(
                    f"producing  ~{rate:g} synthetic clicks/s ({clusters} planted clusters); Ctrl-C stops"
                )
                return _report(worker, stop, producer, duration, echo)
            finally:
                stop.set()
                if producer is not None:
                    producer.join(timeout=10)
                worker.stop(timeout=20)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
        echo("stopped: producer, worker and broker")


def _report(worker: WorkerProcess, stop: threading.Event, producer: _Producer, duration,
            echo) -> int:  # fmt: skip
    """One status line every 3 s until ``stop`` or ``duration``; 1 when the worker
    exits, the producer fails or no click is applied within ``FIRST_BATCH_S``."""
    started = time.monotonic()
    last_applied, last_t = 0, started
    echo("starting   the worker loads (on a first run, compiles) its kernels: ~20-30 s")
    if not _wait_ready(worker, stop, producer, started, echo):
        return 1
    while not stop.wait(3.0):
        if not worker.alive():
            echo(f"the worker exited:\n{worker.log_tail()}")
            return 1
        if producer.error:
            echo(f"the click producer stopped: {producer.error}")
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
            f"{now - started:6.0f}s  {rate_now:7.0f} events/s  sent {producer.sent}  "
            f"applied {s['events_applied']}  clusters {s['clusters']}  "
            f"centres v{version}  dlq {s['events_rejected']}  lag {s['lag']}"
        )
        if duration is not None and now - started >= duration:
            break
    return 0


def _wait_ready(worker, stop, producer: _Producer, started: float, echo) -> bool:
    """Wait for the worker's first applied batch (a spinner on a terminal, a plain
    line every 15 s otherwise); False, said in a line, when it will not come."""
    ready, said = None, started
    with _Spinner() as spinner:
        while not stop.wait(0.2 if spinner.live else 3.0):
            waited = time.monotonic() - started
            if not worker.alive() or producer.error or waited > FIRST_BATCH_S:
                break
            try:
                s = worker.stats()
                state = "worker up, waiting for its first batch"
            except OSError:
                s, state = None, "worker starting"
            if s and (s["events_applied"] or s["centres_version"] is not None):
                ready = waited
                break
            spinner.update(f"{state}, {waited:.0f} s")
            if not spinner.live and time.monotonic() - said >= 15:
                said = time.monotonic()
                echo(f"waiting    {state}, {waited:.0f} s, {producer.sent} clicks sent")
    if ready is not None:  # after the spinner is gone: the line stays readable
        echo(f"ready      after {ready:.0f} s, clicks are being applied")
    elif producer.error:
        echo(f"the click producer stopped: {producer.error}")
    elif not worker.alive():
        echo(f"the worker exited:\n{worker.log_tail()}")
    elif not stop.is_set():
        echo(f"no click applied after {FIRST_BATCH_S} s; the worker's log:\n{worker.log_tail()}")
    return ready is not None or stop.is_set()


class _Spinner:
    """A rich spinner on stderr while the worker starts; on a terminal only (a
    captured or piped run gets the plain lines instead)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)
        self.live = self.console.is_terminal
        self._status = None

    def __enter__(self) -> _Spinner:
        if self.live:
            self._status = self.console.status("worker starting")
            self._status.start()
        return self

    def update(self, text: str) -> None:
        if self._status is not None:
            self._status.update(text)

    def __exit__(self, *exc) -> None:
        if self._status is not None:
            self._status.stop()
