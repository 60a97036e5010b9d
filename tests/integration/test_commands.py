"""`clusterstream broker` and `clusterstream demo` as a user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

pytestmark = pytest.mark.broker


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not running: read its state
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except OSError:
        return False


def test_broker_command_prints_its_address_and_stops_on_sigterm():
    from stream.io.broker import free_port

    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "stream.cli", "broker", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = proc.stdout.readline().strip()
        assert line == f"127.0.0.1:{port}"
        from stream.io.embedded_broker_workarounds import high_watermarks

        assert high_watermarks(line, "nothing-here", embedded=True) == {}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        stderr = proc.stderr.read()
        broker_pid = int(re.search(r"pid (\d+)", stderr).group(1))
        assert not _alive(broker_pid)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_demo_runs_everything_and_leaves_nothing_behind():
    proc = subprocess.run(
        [sys.executable, "-m", "stream.cli", "demo", "--duration", "20", "--web-port", "0"],
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert re.search(r"^stats\s+http://127\.0\.0\.1:\d+/stats$", out, re.M)
    status = [line for line in out.splitlines() if "events/s" in line]
    assert status, out
    assert "centres v1" in status[-1] and "clusters 8" in status[-1]
    applied = int(re.search(r"applied (\d+)", status[-1]).group(1))
    assert applied > 1000
    broker_pid = int(re.search(r"^broker .*\(pid (\d+)\)", out, re.M).group(1))
    worker_pid = int(re.search(r"^worker\s+pid (\d+)", out, re.M).group(1))
    assert not _alive(broker_pid) and not _alive(worker_pid)
    assert "stopped: producer, worker and broker" in out


def test_demo_stops_cleanly_on_ctrl_c_to_its_process_group(tmp_path):
    """A terminal's Ctrl-C reaches every process of the foreground group: the
    broker must still be there while the worker flushes and stops."""
    with open(tmp_path / "stderr", "w") as err:  # a file: an unread pipe could fill and block it
        proc = subprocess.Popen(
            [sys.executable, "-m", "stream.cli", "demo", "--web-port", "0"],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            start_new_session=True,  # its own group, as a shell gives a foreground job
        )
    try:
        out = _lines_until(proc, "centres v1", timeout=240)
        assert any("centres v1" in line for line in out), "".join(out)
        _second_terminal_commands("".join(out))
        os.killpg(proc.pid, signal.SIGINT)
        stdout, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = "".join(out) + stdout
    stderr = (tmp_path / "stderr").read_text()
    assert proc.returncode == 0, text + stderr
    assert "did not stop" not in stderr  # the worker stopped by itself, not killed
    assert "stopped: producer, worker and broker" in text
    broker_pid = int(re.search(r"^broker .*\(pid (\d+)\)", text, re.M).group(1))
    worker_pid = int(re.search(r"^worker\s+pid (\d+)", text, re.M).group(1))
    assert not _alive(broker_pid) and not _alive(worker_pid)


def _lines_until(proc: subprocess.Popen, text: str, timeout: float) -> list[str]:
    """``proc``'s stdout lines up to the first that holds ``text``, or those printed
    within ``timeout`` s: read in a thread, so a demo that never prints it fails the
    test instead of hanging it."""
    lines: list[str] = []

    def read() -> None:
        for line in proc.stdout:
            lines.append(line)
            if text in line:
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(timeout)
    return list(lines)


def _cli(*args, env, timeout=120):
    full = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERSTREAM_")}
    full.update(env)
    return subprocess.run([sys.executable, "-m", "stream.cli", *args], capture_output=True,
                          text=True, env=full, timeout=timeout)  # fmt: skip


def _second_terminal_commands(text: str) -> None:
    """What the demo prints is enough to run the jobs against it, with no guessing:
    its TOML file alone, or the pasted export line alone."""
    assert re.search(r"^dashboard\s+http://127\.0\.0\.1:\d+/dashboard$", text, re.M), text
    config = re.search(r"^config\s+(\S+\.toml) ", text, re.M).group(1)
    export = re.search(r"^\s+export (.+)$", text, re.M).group(1)
    pasted = dict(pair.split("=", 1) for pair in export.split())
    assert pasted["CLUSTERSTREAM_CONFIG"] == config
    assert pasted["CLUSTERSTREAM_DIM"] == "32" and pasted["CLUSTERSTREAM_APP_ID"] == "demo"

    only_file = {"CLUSTERSTREAM_CONFIG": config}
    # the users changelog gets the worker's first flush a few seconds after bootstrap
    for _ in range(10):
        result = _cli("recompute", "--dry-run", env=only_file)
        if result.returncode == 0 or "holds no user" not in result.stderr:
            break
        time.sleep(2)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3 and "(dim 32)" in lines[0], result.stdout
    assert lines[-1] == "dry run: would publish version 2"

    without_file = {k: v for k, v in pasted.items() if k != "CLUSTERSTREAM_CONFIG"}
    merged = _cli("merge", "--dry-run", env=without_file)
    assert merged.returncode == 0, merged.stderr
    assert "Traceback" not in merged.stderr
    assert "no cluster below 5 members" in merged.stdout or "would publish" in merged.stdout
