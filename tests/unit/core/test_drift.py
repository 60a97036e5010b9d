"""Drift watch over per-batch mean assignment distances."""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.drift import DriftWatch


def _noisy(rng, mean, n, sd=0.03):
    return np.clip(rng.normal(mean, sd, n), 0.0, 2.0)


@pytest.mark.parametrize("seed", range(5))
def test_no_detection_on_a_long_stationary_noisy_sequence(seed):
    rng = np.random.default_rng(seed)
    watch = DriftWatch()
    fired = [watch.update(v) for v in _noisy(rng, 0.15, 3000)]
    assert not any(fired)
    assert watch.detections == 0
    assert watch.observed == 3000
    assert watch.as_dict()["mean_distance"] == pytest.approx(0.15, abs=0.01)


@pytest.mark.parametrize("seed", range(5))
def test_detects_an_abrupt_upward_change_soon(seed):
    rng = np.random.default_rng(seed)
    watch = DriftWatch()
    for v in _noisy(rng, 0.15, 500):
        assert not watch.update(v)
    after = [watch.update(v) for v in _noisy(rng, 0.30, 300)]
    assert any(after)
    # ADWIN checks every 32 updates; a jump of 5 standard deviations is seen
    # within a few checks.
    assert after.index(True) < 100
    assert watch.detections == 1  # the grace period stops repeated alarms for one change
    assert watch.improvements == 0
    assert watch.as_dict()["mean_distance"] == pytest.approx(0.30, abs=0.03)


@pytest.mark.parametrize("seed", range(3))
def test_a_downward_change_is_an_improvement_not_a_detection(seed):
    rng = np.random.default_rng(seed)
    watch = DriftWatch()
    fired = [watch.update(v) for v in np.r_[_noisy(rng, 0.30, 500), _noisy(rng, 0.15, 300)]]
    assert not any(fired)
    assert watch.detections == 0
    assert watch.improvements >= 1


def test_reset_forgets_the_window_and_starts_a_grace_period():
    watch = DriftWatch(grace=10)
    for _ in range(200):
        watch.update(0.4)
    assert watch.as_dict()["window"] > 0
    watch.reset()
    d = watch.as_dict()
    assert d["window"] == 0 and d["mean_distance"] == 0
    assert d["observed"] == 200 and d["last"] == 0.4  # counters survive a reset
    # A new level right after the reset is the new normal, not a drift.
    fired = [watch.update(0.1) for _ in range(300)]
    assert not any(fired)
    assert watch.as_dict()["mean_distance"] == pytest.approx(0.1)
    # ... and a real change after that is still detected.
    assert any(watch.update(0.5) for _ in range(200))


def test_grace_period_suppresses_alarms_right_after_a_reset():
    watch = DriftWatch(grace=1000)
    watch.reset()
    fired = [watch.update(v) for v in [0.1] * 300 + [0.6] * 300]
    assert not any(fired)
    assert watch.detections == 0


def test_as_dict_fields():
    watch = DriftWatch()
    assert watch.as_dict()["last"] is None
    watch.update(0.25)
    d = watch.as_dict()
    assert set(d) == {"detections", "improvements", "observed", "mean_distance", "window", "last"}
    assert d["last"] == 0.25 and d["observed"] == 1 and d["window"] == 1


@pytest.mark.parametrize(("level", "sd"), [(0.01, 0.003), (0.05, 0.02), (0.3, 0.1)])
def test_no_detection_on_stationary_sequences_at_any_level(level, sd):
    rng = np.random.default_rng(7)
    for _ in range(5):
        watch = DriftWatch()
        assert not any(watch.update(v) for v in np.clip(rng.normal(level, sd, 3000), 0, 2))


@pytest.mark.parametrize("seed", range(3))
def test_a_rise_of_a_few_hundredths_from_a_low_level_is_seen(seed):
    """Raw ADWIN (values taken as spread over [0, 1]) needed ~350 batches for this."""
    rng = np.random.default_rng(seed)
    watch = DriftWatch()
    for v in _noisy(rng, 0.014, 500, sd=0.002):
        assert not watch.update(v)
    after = [watch.update(v) for v in _noisy(rng, 0.04, 300, sd=0.004)]
    assert any(after) and after.index(True) < 100


def _synth_run(drift_at):
    """Mean distance of each batch of a synthetic stream through process_batch
    (centres from the first 300 users) into a DriftWatch; the batches it fired at."""
    from stream.core.items import unit_rows
    from stream.core.pipeline import EngineConfig, EngineState, process_batch
    from stream.core.recompute import recompute
    from stream.io.synth import SynthConfig, generate

    data = generate(SynthConfig(n_users=2000, n_clusters=8, n_items=1500, dim=32,
                                n_events=48_000, seed=3, rate_per_s=300, drift_at=drift_at,
                                drift_users=0.2))  # fmt: skip
    state = EngineState.in_memory(EngineConfig(dim=32))
    for item in data.item_records():
        state.items.upsert_record(item)
    watch, seen, fired = DriftWatch(), set(), []
    for lo in range(0, data.n_events, 40):
        batch = data.click_batch(lo, lo + 40)
        out = process_batch(state, batch)
        seen.update(batch.user_ids)
        if state.centres is None and len(seen) >= 300:
            rows = state.users.read_many(sorted(seen)).rows
            state.centres, _ = recompute(unit_rows(rows["mean"]), None, k=8, created_at_ms=0)
        if out.mean_distance is not None and watch.update(out.mean_distance):
            fired.append(lo)
    return fired, watch, data


def test_a_fifth_of_users_moving_is_detected_after_the_drift_only():
    fired, watch, data = _synth_run(drift_at=0.5)
    assert fired, watch.as_dict()
    assert min(fired) > data.drift_index  # nothing before the users move
    assert watch.improvements >= 1  # the warm-up: vectors settle, the distance falls


def test_the_same_stream_without_drift_is_quiet():
    fired, watch, _ = _synth_run(drift_at=None)
    assert fired == [] and watch.detections == 0
