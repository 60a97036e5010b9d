"""A worker as a child process: used by ``clusterstream demo``, the e2e
benchmark and the integration tests (which need real restarts and kills)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from pydantic import SecretStr

from stream.errors import ClusterstreamError
from stream.settings import Settings

logger = logging.getLogger(__name__)


def settings_env(settings: Settings) -> dict[str, str]:
    """``CLUSTERSTREAM_*`` variables that reproduce ``settings`` in a child process."""
    env = {}
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        if isinstance(value, SecretStr):
            value = value.get_secret_value()
        if isinstance(value, bool):
            value = "true" if value else "false"
        env[f"CLUSTERSTREAM_{name.upper()}"] = str(value)
    return env


class WorkerProcess:
    """``clusterstream worker`` in a child process, with its log in a file."""

    def __init__(self, settings: Settings, log_path: Path, loglevel: str = "INFO"):
        self.settings = settings
        self.log_path = Path(log_path)
        self.loglevel = loglevel
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.settings.web_host}:{self.settings.web_port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def start(self) -> WorkerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERSTREAM_")}
        env.update(settings_env(self.settings))
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "worker", "--loglevel", self.loglevel],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stats(self, digest: bool = False, timeout: float = 30.0) -> dict:
        """The worker's /stats (raises OSError / URLError while it is not up)."""
        url = f"{self.url}/stats?digest={'1' if digest else '0'}"
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return json.loads(resp.read())

    def wait_for(
        self, predicate: Callable[[dict], bool], timeout: float = 60.0, what: str = ""
    ) -> dict:
        """Poll /stats until ``predicate(stats)``; raise with the log tail on timeout."""
        deadline = time.monotonic() + timeout
        last: dict = {}
        while time.monotonic() < deadline:
            if not self.alive():
                raise ClusterstreamError(
                    f"worker exited ({self.proc.returncode}):\n{self.log_tail()}"
                )
            try:
                last = self.stats()
                if predicate(last):
                    return last
            except (OSError, urllib.error.URLError, ValueError):
                pass
            time.sleep(0.1)
        raise ClusterstreamError(
            f"timed out waiting for {what or 'the worker'}: {last}\n{self.log_tail()}"
        )

    def wait_ready(self, timeout: float = 60.0) -> dict:
        return self.wait_for(lambda s: s.get("ready"), timeout, "the worker to be ready")

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait, SIGKILL after ``timeout``; returns the exit code."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                logger.warning(
                    "worker %d did not stop in %.0fs; killing it", self.proc.pid, timeout
                )
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: a crash, for the tests."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""
