"""A worker whose state is saved exits even when faust's own stop hangs."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

# runs a worker process until its grace time ends
pytestmark = pytest.mark.slow

SCRIPT = """
import logging, time
logging.basicConfig(level=logging.INFO)
from stream.app.app import _exit_if_still_running
_exit_if_still_running(0.3)
time.sleep(30)  # a stop that never ends
print("still running")
"""


def test_the_process_exits_after_the_grace_time_if_still_running():
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "still running" not in done.stdout
    assert "faust did not stop within 0s after the worker's state was saved" in done.stderr
    assert time.monotonic() - started < 25
