"""`tune`: coordinate ascent on the warm-up part only, and its TOML."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np

from stream.core.clicks import ClickBatch
from stream.core.pipeline import EngineConfig
from stream.offline.evaluate import BASELINES, EvalConfig
from stream.offline.tune import (
    BLENDS,
    SPACE,
    TIME_KNOBS,
    TIME_SCALES,
    fit_to_log,
    full_pass,
    settings_of,
    to_toml,
    tune,
    with_setting,
)
from stream.settings import Settings


def test_with_setting_reaches_every_knob_and_settings_of_reads_it_back():
    base = EvalConfig(k=8, engine=EngineConfig(dim=4))
    for name, values in SPACE.items():
        changed = with_setting(base, name, values[-1])
        assert settings_of(changed)[name] == values[-1], name
        assert name in Settings.model_fields, f"{name} is not a worker setting"


def test_tune_reads_only_the_warm_up_and_keeps_the_best():
    clicks = ClickBatch.from_columns(
        [f"u{i % 7}" for i in range(1000)], [f"i{i % 13}" for i in range(1000)],
        np.arange(1000, dtype=np.int64) * 1000,
    )  # fmt: skip
    seen: list[tuple[int, float]] = []

    def run(part, config):
        seen.append((len(part), config.warmup))
        # a made-up objective that prefers a small co-click window
        hr = 0.5 - 0.01 * config.engine.coclick_window
        return {"methods": {"engine": {"hit_rate": hr, "ndcg": hr / 2}}}

    base = EvalConfig(warmup=0.3, k=8, engine=EngineConfig(dim=4))
    result = tune(clicks, base, run, budget=50, inner_warmup=0.5)
    assert {n for n, _ in seen} == {300}  # the warm-up only: no peeking at the rest
    assert {w for _, w in seen} == {0.5}
    assert result.best["coclick_window"] == min(SPACE["coclick_window"])
    assert result.best_trial.score >= result.baseline_trial.score
    assert len(result.trials) == len({tuple(sorted(t.settings.items())) for t in result.trials})
    small = tune(clicks, base, run, budget=3)
    assert len(small.trials) == 3
    # the default budget reaches the last knob of the space
    whole = tune(clicks, base, run)
    last = next(reversed(SPACE))
    assert {t.settings[last] for t in whole.trials} == set(SPACE[last])
    assert len(whole.trials) == full_pass(SPACE, settings_of(dataclasses.replace(base, warmup=0.5)))


def test_toml_is_read_back_as_worker_settings(tmp_path):
    settings = settings_of(EvalConfig(k=8, engine=EngineConfig(dim=4)))
    path = tmp_path / "tuned.toml"
    path.write_text(to_toml(settings, "tuned on a test log"))
    assert tomllib.loads(path.read_text()) == settings
    loaded = Settings(_env_file=None, **tomllib.loads(path.read_text()))
    assert loaded.k == 8 and loaded.coclick_window == settings["coclick_window"]


def test_fit_to_log_reads_the_warm_up_and_keeps_the_engines_best():
    clicks = ClickBatch.from_columns(
        [f"u{i % 7}" for i in range(1000)], [f"i{i % 13}" for i in range(1000)],
        np.arange(1000, dtype=np.int64) * 1000,
    )  # fmt: skip
    seen: list[tuple] = []
    day = 86_400.0

    def run(part, config):
        cf, co = config.engine.cf_half_life_s, config.engine.coclick_half_life_s
        seen.append((len(part), config.warmup, cf, co, config.blends))
        # made up: the engine likes a week (30 days ties it) and much CF, the baselines a day
        good = cf in (7 * day, 30 * day)
        blends = [{"hit_rate": (0.3 if good else 0.1) + 0.01 * w.cf, "ndcg": 0.0}
                  for w in config.blends]  # fmt: skip
        methods = {m: {"hit_rate": 0.05, "ndcg": 0.0} for m in BASELINES}
        methods["covisit_next"] = {"hit_rate": 0.2 if cf == day else 0.1, "ndcg": 0.0}
        engine = {"hit_rate": 0.01, "ndcg": 0.0}
        return {"methods": {"engine": engine, **methods}, "blends": blends}

    base = EvalConfig(warmup=0.3, k=None, engine=EngineConfig(dim=4))
    fit = fit_to_log(clicks, base, run)
    assert {n for n, *_ in seen} == {300}  # the warm-up only
    assert {w for _, w, *_ in seen} == {0.5}
    assert [cf for _, _, cf, _, _ in seen] == list(TIME_SCALES)
    assert all(cf == co for _, _, cf, co, _ in seen)  # one half-life for both tables
    assert all([(w.coclick, w.cf) for w in b] == list(BLENDS) for *_, b in seen)
    assert fit.settings == {**{name: 7 * day for name in TIME_KNOBS},
                            "recall_coclick": 1.0, "recall_cf": 2.0}  # fmt: skip
    assert fit.baselines_best_at == day
    assert [t["best_baseline"] for t in fit.trials] == ["covisit_next"] * len(TIME_SCALES)
    # the half-lives given: one run at the base's, the blend alone fitted
    seen.clear()
    only = fit_to_log(clicks, base, run, half_lives=())
    assert len(seen) == 1 and seen[0][2] == base.engine.cf_half_life_s
    assert only.settings == {"recall_coclick": 1.0, "recall_cf": 2.0}
    assert only.baselines_best_at is None
    # the blend given: the engine's own score decides the half-life
    seen.clear()
    scales = fit_to_log(clicks, base, run, blends=())
    assert scales.settings == {name: TIME_SCALES[0] for name in TIME_KNOBS}  # all tie: shortest
    assert all(b == () for *_, b in seen)
