"""Duplicate clicks (issue 23): dropped in the core, exactly, whatever the batching."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from stream.core.clicks import ClickBatch
from stream.core.dedupe import drop_seen, event_hashes
from stream.core.pipeline import EngineConfig, EngineState, process_batch, replay
from stream.core.recompute import recompute
from stream.io.synth import SynthConfig, generate

DIM = 16


def _data(**overrides):
    config = dict(n_users=200, n_clusters=4, n_items=150, dim=DIM, n_events=3000, seed=11)
    config.update(overrides)
    return generate(SynthConfig(**config))


def _state(data, window: int = 64) -> EngineState:
    state = EngineState.in_memory(EngineConfig(dim=DIM, top_m=2, dedupe_window=window))
    for record in data.item_records():
        state.items.upsert_record(record)
    state.centres, _ = recompute(
        state.items.vectors, None, k=4, seed=0, reason="bootstrap", created_at_ms=1
    )
    return state


def _clicks(data) -> list[dict]:
    bad = set(data.malformed_kinds)
    return [r for i, r in enumerate(data.click_records()) if i not in bad]


def test_event_hashes_are_the_same_in_another_process():
    """The windows are stored and read back by other processes: Python's salted
    ``hash`` would not do."""
    ids = ["e-0001", "3f1c9a4e-6b7d-4e0a-9d2b-8f6e5c4a3b21", "ünï-cödé", ""]
    code = f"from stream.core.dedupe import event_hashes; print(event_hashes({ids!r}).tolist())"
    other = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert other.strip() == str(event_hashes(ids).tolist())
    assert len(set(event_hashes(ids).tolist())) == len(ids)


def test_a_window_holds_the_last_distinct_events_newest_first():
    windows = np.zeros((1, 2), dtype=np.int64)
    h = event_hashes(["a", "b", "b", "c", "a"])
    assert drop_seen(windows, np.zeros(5, dtype=np.int64), h).tolist() == [
        False, False, True, False, False,
    ]  # fmt: skip
    assert windows[0].tolist() == h[[4, 3]].tolist()


def test_the_log_twice_leaves_the_state_of_the_log_once():
    data = _data()
    once, twice = _state(data), _state(data)
    clicks = ClickBatch.from_records(_clicks(data))
    totals = replay(once, clicks, batch_size=256)
    assert totals["duplicates"] == 0
    replay(twice, clicks, batch_size=256)
    again = replay(twice, clicks, batch_size=97)
    assert again["duplicates"] == len(clicks) and again["applied"] == 0
    assert twice.digest() == once.digest()


@pytest.mark.parametrize("batch_size", [1, 50, 1000])
def test_exact_duplicates_are_dropped_and_counted_whatever_the_batching(batch_size):
    """1,000 exact copies of valid clicks, each a little after its original:
    the state equals the log without them, events applied do not move."""
    data = _data()
    records = _clicks(data)
    rng = np.random.default_rng(3)
    picked = set(rng.choice(len(records), 1000, replace=False).tolist())
    with_dups: list[dict] = []
    pending: list[tuple[int, dict]] = []
    for i, rec in enumerate(records):
        with_dups.append(rec)
        if i in picked:
            pending.append((i + int(rng.integers(0, 20)), rec))
        with_dups.extend(r for due, r in pending if due == i)
        pending = [(due, r) for due, r in pending if due != i]
    with_dups.extend(r for _, r in pending)
    assert len(with_dups) == len(records) + 1000

    clean, dirty = _state(data), _state(data)
    base = replay(clean, ClickBatch.from_records(records), batch_size=batch_size)
    got = replay(dirty, ClickBatch.from_records(with_dups), batch_size=batch_size)
    assert got["duplicates"] == 1000
    assert got["events"] - got["duplicates"] == base["events"]
    assert got["applied"] == base["applied"]
    assert dirty.digest() == clean.digest()


def test_increments_point_at_the_clicks_of_the_batch_and_a_batch_of_duplicates_is_empty():
    data = _data(n_events=400)
    state = _state(data)
    records = _clicks(data)[:100]
    process_batch(state, ClickBatch.from_records(records))
    mixed = [records[0], {**records[1], "event_id": "fresh"}, records[2]]
    out = process_batch(state, ClickBatch.from_records(mixed))
    assert out.events == 3 and out.duplicates == 2 and out.applied <= 1
    assert set(out.increments.clicks.tolist()) <= {1}  # the index in the batch sent
    again = process_batch(state, ClickBatch.from_records(records[:10]))
    assert (again.events, again.duplicates, again.applied, len(again.cf_delta)) == (10, 10, 0, 0)


def test_without_event_ids_or_with_the_window_off_nothing_is_dropped():
    data = _data(n_events=400)
    records = _clicks(data)[:50]
    no_ids = ClickBatch.from_columns(
        [r["user_id"] for r in records], [r["item_id"] for r in records],
        [r["ts"] for r in records],
    )  # fmt: skip
    state = _state(data)
    replay(state, no_ids)
    assert replay(state, no_ids)["duplicates"] == 0
    off = _state(data, window=0)
    assert "events" not in off.users.dtype.names
    clicks = ClickBatch.from_records(records)
    replay(off, clicks)
    assert replay(off, clicks)["duplicates"] == 0
