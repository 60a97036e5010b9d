"""The command line: errors are one line on stderr and a non-zero exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(*args, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERSTREAM_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("clusterstream: error: ")
    assert "Traceback" not in stderr
    return lines[0]


def test_broker_without_binary_says_which_extra_to_install(tmp_path):
    not_a_binary = tmp_path / "tansu"
    not_a_binary.write_text("")
    result = _run("broker", env={"CALF_TANSU_BIN": str(not_a_binary)})
    assert result.returncode == 2
    assert "clusterstream[embedded]" in _one_error_line(result.stderr)


def test_invalid_settings_fail_in_one_line():
    result = _run("worker", env={"CLUSTERSTREAM_TOP_M": "lots"})
    assert result.returncode == 1
    assert "top_m" in _one_error_line(result.stderr)


def test_stats_of_an_absent_worker():
    result = _run("stats", "--url", "http://127.0.0.1:9", "--json")
    assert result.returncode == 1
    assert "cannot read" in _one_error_line(result.stderr)


def test_bench_recompute_refuses_fewer_users_than_k():
    result = _run("bench", "recompute", "--users", "5", "--k", "10", "--json")
    assert result.returncode == 2
    assert "--users" in _one_error_line(result.stderr)


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"]])
def test_help(args):
    result = _run(*args)
    assert result.returncode == 0 and "Usage" in result.stdout
