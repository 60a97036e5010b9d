"""The demo's click stream is stationary, so its drift watch stays quiet; a stream
whose planted clusters change is caught by the same watch."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator

import numpy as np
import orjson
import pytest

from stream.app.demo import config_toml, demo_clicks, demo_data, export_line
from stream.core.drift import DriftWatch
from stream.core.items import unit_rows
from stream.core.merge import apply_merges, plan_merges
from stream.core.pipeline import EngineConfig, EngineState, process_batch
from stream.core.recompute import recompute
from stream.io.synth import SynthConfig, generate
from stream.settings import Settings
from stream.wire.clicks import decode_clicks

RATE, MINUTES, ROUNDS, BATCH, K = 100, 1.0, 4, 40, 8


@pytest.fixture(scope="module")
def data():
    return demo_data(RATE, K, 32, MINUTES)


def _demo_rounds(data) -> Iterator[bytes]:
    for r in range(ROUNDS):
        start = data.config.start_ms + int(r * MINUTES * 60_000)
        yield from (value for _, value in demo_clicks(data, r, start))


def _new_seed_each_round(data) -> Iterator[bytes]:
    """What the demo did before: ``generate(seed=round)``, which also draws new
    planted clusters, user groups and item homes (the items on the topic stay)."""
    for r in range(ROUNDS):
        cfg = SynthConfig(n_users=2000, n_clusters=K, n_items=1500, dim=32,
                          n_events=len(data.click_ts), seed=r, rate_per_s=RATE,
                          start_ms=data.config.start_ms + int(r * MINUTES * 60_000),
                          malformed=0.01)  # fmt: skip
        yield from generate(cfg).records()


def _distances(
    values: Iterable[bytes], data, merge_at: int | None = None, reset: bool = True
) -> tuple[list[int], np.ndarray]:
    """The worker's path in small: decode, process_batch, bootstrap centres from the
    first 300 users, each batch's mean distance into a DriftWatch; at batch
    ``merge_at`` the two smallest clusters are merged (the watch reset with the new
    centres, as the worker does, when ``reset``)."""
    state = EngineState.in_memory(EngineConfig(dim=32))
    for item in data.item_records():
        state.items.upsert_record(item)
    watch, seen, fired, distances = DriftWatch(), set(), [], []
    values = list(values)
    for n, lo in enumerate(range(0, len(values), BATCH)):
        batch, _ = decode_clicks(values[lo : lo + BATCH])
        out = process_batch(state, batch)
        seen.update(batch.user_ids)
        if state.centres is None and len(seen) >= 300:
            rows = state.users.read_many(sorted(seen)).rows
            centres, _ = recompute(unit_rows(rows["mean"]), None, k=K, seed=0, created_at_ms=0)
            state.centres = centres
        if n == merge_at:
            primary = state.users.read_many(sorted(seen)).rows["cluster_ids"][:, 0]
            sizes = {c: int(np.count_nonzero(primary == c)) for c in state.centres.ids.tolist()}
            plan = plan_merges(sizes, state.centres, sorted(sizes.values())[1] + 1)
            state.centres = apply_merges(state.centres, plan, created_at_ms=0)
            assert state.centres.k == K - 2
            if reset:
                watch.reset()
        if out.mean_distance is not None:
            distances.append(out.mean_distance)
            if watch.update(out.mean_distance):
                fired.append(len(distances))
    return fired, np.asarray(distances)


def test_the_demo_stream_does_not_set_off_the_drift_watch(data):
    fired, d = _distances(_demo_rounds(data), data)
    per_round = len(data.click_ts) // BATCH
    assert len(d) > (ROUNDS - 1) * per_round
    assert fired == []
    first, last = d[:per_round].mean(), d[-per_round:].mean()
    assert last <= first  # users' vectors settle: the distance does not climb


def test_a_new_seed_each_round_is_a_real_drift_and_is_caught(data):
    fired, d = _distances(_new_seed_each_round(data), data)
    per_round = len(data.click_ts) // BATCH
    assert fired and fired[0] > per_round  # not in the first round, which is stationary
    assert d[-per_round:].mean() > 3 * d[:per_round].mean()


def test_rounds_repeat_the_stream_with_new_event_ids_and_times(data):
    bad = set(data.malformed_index.tolist())  # sent as they are, some not even JSON
    first = [
        orjson.loads(v)
        for i, (_, v) in enumerate(demo_clicks(data, 0, data.config.start_ms))
        if i not in bad
    ]
    second = [
        orjson.loads(v)
        for i, (_, v) in enumerate(demo_clicks(data, 1, data.config.start_ms + 60_000))
        if i not in bad
    ]
    good = list(zip(first, second, strict=True))
    assert len(good) > 0.95 * len(data.click_ts)
    ids = {a.get("event_id") for a, _ in good} | {b.get("event_id") for _, b in good}
    assert len(ids) == 2 * len(good)  # no click of round 1 is a duplicate of round 0
    for a, b in good[:200]:
        assert (a["user_id"], a["item_id"]) == (b["user_id"], b["item_id"])
        assert b["ts"] - a["ts"] == 60_000


def test_config_file_and_export_line_reproduce_the_shared_settings(tmp_path, monkeypatch):
    settings = Settings(bootstrap_servers="127.0.0.1:5", app_id="demo", dim=32, k=8,
                        embedded_broker=True, min_cluster_size=5, data_dir=tmp_path / "d",
                        web_port=7001)  # fmt: skip
    path = tmp_path / "c.toml"
    path.write_text(config_toml(settings))
    for name in list(__import__("os").environ):
        if name.startswith("CLUSTERSTREAM_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("CLUSTERSTREAM_CONFIG", str(path))
    again = Settings()
    assert (again.bootstrap_servers, again.app_id, again.dim, again.k) == (
        "127.0.0.1:5",
        "demo",
        32,
        8,
    )
    assert again.embedded_broker and again.min_cluster_size == 5
    assert again.web_port != 7001 and again.data_dir != settings.data_dir  # the worker's own
    line = export_line(settings, path)
    assert line.startswith(f"export CLUSTERSTREAM_CONFIG={path} ")
    pairs = dict(p.split("=", 1) for p in line.split()[1:])
    assert pairs["CLUSTERSTREAM_DIM"] == "32" and pairs["CLUSTERSTREAM_APP_ID"] == "demo"
    assert "\n" not in line


@pytest.mark.parametrize("reset", [True, False])
def test_a_merge_on_stationary_data_is_not_a_drift_once_the_watch_resets(data, reset):
    """Merged users are farther from their new centre: the distance steps up once.
    Without the reset that comes with new centres, the watch took the step for a
    drift (and with recompute_on_drift would have undone the merge)."""
    fired, d = _distances(_demo_rounds(data), data, merge_at=300, reset=reset)
    assert d[-100:].mean() > 2 * d[200:290].mean()  # the step is real
    assert (fired == []) == reset


def test_the_worker_resets_its_drift_watch_when_new_centres_are_installed(tmp_path):
    from stream.app.hotpath import HotPath
    from stream.app.runtime import Runtime
    from stream.core.centres import CentreSet

    runtime = Runtime.create(Settings(dim=4, data_dir=tmp_path))
    hotpath = HotPath(runtime)
    for _ in range(100):
        hotpath.drift.update(0.1)
    assert hotpath.drift.as_dict()["window"] == 100
    assert runtime.install_centres(CentreSet.create(np.eye(4)[:2], created_at_ms=0))
    assert hotpath.drift.as_dict()["window"] == 0 and hotpath.drift.observed == 100


def test_a_producer_that_cannot_reach_the_broker_says_why(monkeypatch):
    """The status loop ends the demo on ``error`` instead of waiting for clicks."""
    from stream.app import demo
    from stream.io.broker import free_port

    monkeypatch.setattr(demo, "CONNECT_S", 0.5)
    settings = Settings(bootstrap_servers=f"127.0.0.1:{free_port()}", dim=8)
    producer = demo._Producer(settings, rate=10, clusters=2, stop=threading.Event())
    producer.start()
    producer.join(timeout=60)
    assert not producer.is_alive() and producer.sent == 0
    assert (
        producer.error
        and "KafkaTimeoutError" in producer.error
        or "NoBrokersAvailable" in producer.error
    )


def test_the_wait_for_the_first_batch_ends_on_a_dead_producer_or_worker(tmp_path):
    from stream.app import demo
    from stream.app.process import WorkerProcess

    settings = Settings(bootstrap_servers="127.0.0.1:1", dim=8)
    worker = WorkerProcess(settings, tmp_path / "worker.log")  # never started: not alive
    producer = demo._Producer(settings, rate=10, clusters=2, stop=threading.Event())
    for error, said in (("KafkaTimeoutError: x", "the click producer stopped"),
                        (None, "the worker exited")):  # fmt: skip
        producer.error, lines = error, []
        started = time.monotonic()
        assert not demo._wait_ready(worker, threading.Event(), producer, started, lines.append)
        assert lines and lines[-1].startswith(said), lines
        assert time.monotonic() - started < 10
