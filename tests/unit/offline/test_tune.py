"""`tune`: coordinate ascent on the warm-up part only, and its TOML."""

from __future__ import annotations

import dataclasses
import tomllib

import numpy as np

from stream.core.clicks import ClickBatch
from stream.core.pipeline import EngineConfig
from stream.offline.evaluate import EvalConfig
from stream.offline.tune import SPACE, full_pass, settings_of, to_toml, tune, with_setting
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
