"""deploy/ run for real where it can be, on the embedded broker: the image's build
steps (wheel, fresh virtualenv, worker from that install) and a scale-out
rehearsal of compose.yaml (its two workers' settings, a replay, every user
answered by both). What needs a Docker engine or Apache Kafka is not run here
(README, "Running on a Kafka cluster").
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
import venv
from pathlib import Path

import pytest
import yaml

from stream.app.process import settings_env
from stream.io.broker import free_port
from stream.io.kafka import TopicSpec, ensure_topics
from stream.settings import Settings

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _child_env(settings: Settings | None = None) -> dict[str, str]:
    """The environment of a child process: none of this checkout's code or settings."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("CLUSTERSTREAM_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")
    }
    if settings is not None:
        env.update(settings_env(settings))
    return env


def _dockerfile_runs() -> tuple[str, str]:
    """The build stage's ``pip wheel`` command and the runtime stage's ``pip install``."""
    text = (DEPLOY / "Dockerfile").read_text().replace("\\\n", " ")
    runs = re.findall(r"^RUN (.*)$", text, re.M)
    (build,) = [r for r in runs if r.startswith("pip wheel ")]
    (install,) = [r.split("&&")[0].strip() for r in runs if r.startswith("pip install ")]
    return build, install


def _stats(url: str) -> dict:
    with urllib.request.urlopen(f"{url}/stats?digest=0", timeout=10) as resp:
        return json.loads(resp.read())


@pytest.mark.slow
def test_the_images_build_steps_give_a_working_install(settings_for, tmp_path):
    """Build the wheels exactly as the Dockerfile's build stage does, install them as
    its runtime stage does into a new virtualenv (no system site-packages, no access
    to an index), then ``clusterstream --help`` and a worker from that install."""
    build, install = _dockerfile_runs()
    src = tmp_path / "src"
    src.mkdir()
    for line in re.findall(r"^COPY (?!--from)(.+)$", (DEPLOY / "Dockerfile").read_text(), re.M):
        *sources, dest = line.split()
        for name in sources:
            target = src / dest / name if dest.endswith("/") or len(sources) > 1 else src / dest
            if (ROOT / name).is_dir():
                shutil.copytree(ROOT / name, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy(ROOT / name, target)
    assert {p.name for p in src.iterdir()} == {"pyproject.toml", "README.md", "schemas", "stream"}

    wheels = tmp_path / "wheels"
    args = shlex.split(build.replace("/wheels", str(wheels)))
    started = time.monotonic()
    built = subprocess.run(
        [sys.executable, "-m", *args], cwd=src, env=_child_env(), capture_output=True, text=True
    )
    assert built.returncode == 0, built.stderr[-3000:]
    assert any(p.name.startswith("clusterstream-") for p in wheels.glob("*.whl"))

    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    python = env_dir / "bin" / "python"
    args = shlex.split(install.replace("/wheels", str(wheels)))
    installed = subprocess.run(
        [python, "-m", *args], cwd=tmp_path, env=_child_env(), capture_output=True, text=True
    )
    assert installed.returncode == 0, installed.stderr[-3000:]
    seconds = time.monotonic() - started
    print(f"wheels built and installed into a fresh virtualenv in {seconds:.0f} s")

    where = subprocess.run(
        [python, "-c", "import stream, sys; print(stream.__file__, sys.flags.no_site)"],
        cwd=tmp_path,
        env=_child_env(),
        capture_output=True,
        text=True,
    )
    assert where.stdout.startswith(str(env_dir)), where.stdout + where.stderr
    cli = env_dir / "bin" / "clusterstream"
    helped = subprocess.run([cli, "--help"], env=_child_env(), capture_output=True, text=True)
    assert helped.returncode == 0 and "worker" in helped.stdout, helped.stderr

    settings = settings_for(web_host="127.0.0.1", data_dir=tmp_path / "data")
    log = tmp_path / "worker.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [cli, "worker"], cwd=tmp_path, env=_child_env(settings), stdout=out, stderr=out
        )
    try:
        url = f"http://127.0.0.1:{settings.web_port}"
        deadline = time.monotonic() + 180
        stats: dict = {}
        while not stats.get("ready"):
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                stats = _stats(url)
            except OSError:
                time.sleep(0.5)
        assert stats["partitions"] == list(range(settings.partitions))
        proc.terminate()
        assert proc.wait(60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _compose_settings(service: str, **here) -> Settings:
    """A compose worker's settings: its environment, changed only where this machine
    differs (``here``)."""
    env = _compose()["services"][service]["environment"]
    values = {k.removeprefix("CLUSTERSTREAM_").lower(): v for k, v in env.items()}
    values.update(here)
    return Settings(**values)


def _init_specs(app_id: str) -> tuple[list[TopicSpec], int]:
    """The topics of compose's init container (renamed for ``app_id``), and their replication."""
    script = "\n".join(_compose()["services"]["kafka-init"]["command"])
    replication = int(re.search(r"--replication-factor (\d+)", script).group(1))
    specs = []
    for line in script.splitlines():
        if line.strip().startswith("$$t "):
            name = re.search(r"--topic clusterstream-(\S+)", line).group(1)
            partitions = int(re.search(r"--partitions (\d+)", line).group(1))
            specs.append(
                TopicSpec(f"{app_id}-{name}", partitions, "cleanup.policy=compact" in line)
            )
    return specs, replication


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read().decode(errors="replace")}


@pytest.mark.slow
def test_scale_out_rehearsal_of_compose(bootstrap, unique_name, tmp_path, workers):
    """compose.yaml's two workers on the embedded broker: its topics (init container),
    its settings (only the broker address, this machine's loopback ports and paths
    differ), the demo profile's replay of synthetic clicks (smaller), and the first
    centre set bootstrapped by the leader; then every user's recommendations, asked
    of both workers, are answered alike with memberships."""
    app_id = unique_name("compose")
    urls = {}
    settings = {}
    for name in ("worker-1", "worker-2"):
        port = free_port()
        urls[name] = f"http://127.0.0.1:{port}"
        settings[name] = _compose_settings(
            name,
            bootstrap_servers=bootstrap,
            app_id=app_id,
            data_dir=tmp_path / name,
            web_host="127.0.0.1",
            web_port=port,
            advertised_url=urls[name],
            # the embedded broker's workarounds (DESIGN.md)
            embedded_broker=True,
            # a 04:00 run falling inside the test would publish a centre set it does not expect
            recompute_cron="off",
        )
    specs, replication = _init_specs(app_id)
    first = settings["worker-1"]
    assert replication == first.replication_factor
    ensure_topics(first, specs)

    a = workers(settings["worker-1"], name="worker-1")
    b = workers(settings["worker-2"], name="worker-2")
    for w in (a, b):
        w.wait_for(
            lambda s: s["ready"] and len(s["workers"]) == 2 and len(s["partitions"]) == 2,
            90,
            "two partitions each, both workers known",
        )

    # the demo profile's commands and rate, with a smaller log: the leader bootstraps
    # the first centre set a second or so in, and the clicks after it feed the CF tables
    script = "\n".join(_compose()["services"]["demo-clicks"]["command"])
    synth, replay = [shlex.split(line)[1:] for line in script.splitlines() if line.strip()]
    log_dir = tmp_path / "log"
    for flag, value in (("--users", "1500"), ("--events", "12000"), ("--items", "1000")):
        synth[synth.index(flag) + 1] = value
    synth[1] = str(log_dir)
    replay = [str(log_dir / Path(a).name) if a.startswith("/tmp/log/") else a for a in replay]
    demo_env = _compose_settings(
        "demo-clicks", bootstrap_servers=bootstrap, app_id=app_id, data_dir=tmp_path / "demo"
    )
    for args in (synth, replay):
        done = subprocess.run(
            [sys.executable, "-m", "stream.cli", *args],
            env={**_child_env(demo_env), "PYTHONPATH": str(ROOT)},
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
    users = sorted(
        {json.loads(line)["user_id"] for line in (log_dir / "clicks.jsonl").open() if "{" in line}
    )

    deadline = time.monotonic() + 180
    while True:
        stats = [w.stats() for w in (a, b)]
        if all(s["lag"] == 0 and s["cf_lag"] == 0 and s["centres_version"] for s in stats):
            break
        assert time.monotonic() < deadline, stats
        time.sleep(0.5)
    assert sum(s["users"] for s in stats) == len(users)

    # users clicking before the first centre set get memberships from the sweep
    waiting, answers = users, {}
    while waiting:
        for user in waiting:
            pair = [_get(f"{urls[n]}/users/{user}/recommendations?n=5") for n in urls]
            if pair[0][0] == pair[1][0] == 200:
                assert pair[0] == pair[1], (user, pair)
            # a non-200 answer (a rebalance moving the user's partition) is asked again
            answers[user] = pair[0] if pair[1][0] == 200 else pair[1]
        waiting = [
            u
            for u in waiting
            if answers[u][0] != 200
            or not answers[u][1]["known"]
            or not answers[u][1]["memberships"]
        ]
        assert time.monotonic() < deadline + 60, [answers[u] for u in waiting[:5]]
        time.sleep(0.5 if waiting else 0)
    with_items = sum(bool(body["items"]) for _, body in answers.values())
    assert with_items >= 0.95 * len(users), (with_items, len(users))
    for w in (a, b):
        assert w.stop() == 0


@pytest.mark.slow
def test_restore_measurement_rebuilds_every_user(tmp_path):
    """``python -m stream.bench.restore`` (the README's restore figure) at a small size."""
    from stream.bench.restore import run

    result = run(users=3000, partitions=4, dim=16, k=8, workdir=tmp_path)
    assert result["users"] == 3000  # the restoring worker held every user when ready
    assert result["start_to_ready_restoring_s"] > 0 and result["start_to_ready_empty_s"] > 0
    assert result["restore_s_per_million_users"] == pytest.approx(
        result["restore_s"] * 1e6 / 3000, abs=0.01 * 1e6 / 3000
    )
