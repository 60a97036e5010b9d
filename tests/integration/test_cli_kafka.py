"""Commands against an app on the real broker, told only its address and app id."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from stream.core.centres import CentreSet
from stream.core.pipeline import EngineConfig
from stream.core.state import blank_rows, user_dtype
from stream.io.topics import Topics

pytestmark = pytest.mark.broker

DIM = 16


def _cli(*args, env):
    full = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERSTREAM_")}
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        env=full,
        timeout=120,
    )


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("clusterstream: error: ") and "Traceback" not in stderr
    return lines[0]


def _user_records(n: int, dim: int, seed: int = 0) -> list[bytes]:
    """Changelog values of ``n`` users with a vector near one of 3 directions."""
    rng = np.random.default_rng(seed)
    rows = blank_rows(user_dtype(dim, 2, 16, EngineConfig().dedupe_window), n)
    base = rng.standard_normal((3, dim))
    rows["mean"] = base[np.arange(n) % 3] + 0.05 * rng.standard_normal((n, dim))
    rows["weight"] = 1.0
    rows["clicks"] = 1
    return [rows[i : i + 1].tobytes() for i in range(n)]


def _app(settings_for, kafka, dim: int, centres: bool = True):
    settings = settings_for(dim=dim)
    values = _user_records(60, dim)
    keys = [f"u:user{i}".encode() for i in range(len(values))]
    kafka.send(Topics(settings).changelog, values, keys)
    if centres:
        rng = np.random.default_rng(1)
        kafka.send_centres(
            settings, CentreSet.create(rng.standard_normal((3, dim)), created_at_ms=0)
        )
    env = {"CLUSTERSTREAM_BOOTSTRAP_SERVERS": settings.bootstrap_servers,
           "CLUSTERSTREAM_APP_ID": settings.app_id,
           "CLUSTERSTREAM_EMBEDDED_BROKER": "true"}  # fmt: skip
    return settings, env


def test_recompute_dry_run_takes_the_dimension_from_the_centres(settings_for, kafka):
    """No CLUSTERSTREAM_DIM (the default is 64): the centre set says 16."""
    _, env = _app(settings_for, kafka, DIM)
    result = _cli("recompute", "--dry-run", "--k", "3", env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 3, result.stdout  # the report once, not twice
    assert lines[0].startswith("recompute from version 1: k=3 over 60 of 60 users (dim 16)")
    assert lines[-1] == "dry run: would publish version 2"
    assert "Traceback" not in result.stderr

    as_json = _cli("recompute", "--dry-run", "--k", "3", "--json", env=env)
    assert as_json.returncode == 0, as_json.stderr
    import json

    out = as_json.stdout.strip().splitlines()
    assert len(out) == 1
    report = json.loads(out[0])
    assert report["dim"] == DIM and report["users_read"] == 60 and report["dry_run"] is True


def test_recompute_refuses_a_dimension_that_contradicts_the_centres(settings_for, kafka):
    _, env = _app(settings_for, kafka, DIM)
    result = _cli("recompute", "--dry-run", env={**env, "CLUSTERSTREAM_DIM": "32"})
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert "dim is set to 32" in line and "has dim 16" in line


def test_recompute_without_centres_names_the_dimension_that_fits(settings_for, kafka):
    """No centre set to read the dimension from: the record length gives it away."""
    _, env = _app(settings_for, kafka, DIM, centres=False)
    result = _cli("recompute", "--dry-run", env=env)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert "dim 16 would fit" in line, line
    ok = _cli("recompute", "--dry-run", "--k", "3", env={**env, "CLUSTERSTREAM_DIM": "16"})
    assert ok.returncode == 0, ok.stderr
    assert "bootstrap" in ok.stdout


def test_merge_dry_run_without_the_dimension(settings_for, kafka):
    """merge reads the centre set (which carries its dim) and the workers' sizes."""
    _, env = _app(settings_for, kafka, DIM)
    result = _cli("merge", "--dry-run", env=env)
    # no worker runs for this app: the one line says so
    assert result.returncode == 1
    assert "no live worker" in _one_error_line(result.stderr)
