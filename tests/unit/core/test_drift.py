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
