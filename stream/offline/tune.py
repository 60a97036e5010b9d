"""``clusterstream tune``: search the main knobs on the warm-up part of a log.

The evaluation's warm-up (the first ``warmup`` share of the clicks, the part
``eval`` never scores) is split again: its first ``inner_warmup`` share trains,
the rest is scored prequentially exactly as ``eval`` scores (predict, then
learn). Nothing after the warm-up is read, so the tuned settings can then be
evaluated on the rest without peeking.

The search is coordinate ascent: for each knob in :data:`SPACE`, in order,
every candidate value is tried with the others at their best so far; the
objective is HitRate@n + NDCG@n. ``budget`` bounds the evaluations (by
default one pass over every knob: :func:`full_pass`). The result
is a set of worker settings (same names) written as TOML for
``CLUSTERSTREAM_CONFIG``.

:func:`fit_to_log` is the small search ``eval`` runs by itself on the same
part: the tables' half-life and the blend weights, the knobs no default can
fit for both a news feed and a decade of ratings.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from stream.core.clicks import ClickBatch
from stream.core.pipeline import DAY_S
from stream.offline.evaluate import BASELINES, EvalConfig, evaluate

logger = logging.getLogger(__name__)

HOUR_S = 3600.0

#: Knob -> candidate values, searched in this order. Engine knobs are
#: EngineConfig fields, ``recall_*`` (:data:`RECALL_KNOBS`) and
#: :data:`SCORING_KNOBS` the blend's, the rest EvalConfig fields (the jobs'
#: settings).
SPACE: dict[str, tuple] = {
    "recall_coclick": (0.0, 0.5, 1.0, 2.0, 4.0),
    "recall_cf": (0.0, 0.25, 0.5, 1.0, 2.0),
    "recall_vector": (0.0, 0.25, 0.5, 1.0, 2.0),
    "coclick_half_life_s": (HOUR_S, 6 * HOUR_S, DAY_S, 7 * DAY_S, 30 * DAY_S, 365 * DAY_S),
    "cf_half_life_s": (HOUR_S, 6 * HOUR_S, DAY_S, 7 * DAY_S, 30 * DAY_S, 365 * DAY_S),
    "half_life_s": (HOUR_S, DAY_S, 7 * DAY_S, 30 * DAY_S, 365 * DAY_S),
    "coclick_window": (2, 4, 8, 16),
    "coclick_directed": (False, True),
    "coclick_prior": (0.0, 1.0, 5.0, 25.0, 100.0, 1000.0),
    "coclick_history_prior": (0.0, 2.0, 5.0, 20.0),
    "k": (4, 8, 16, 32, 64),
    "top_m": (1, 2, 3),
    "hysteresis_margin": (0.0, 0.05, 0.1),
    "min_cluster_size": (2, 5, 20),
}

RECALL_KNOBS = {"recall_cf": "cf", "recall_coclick": "coclick", "recall_vector": "vector"}
#: Knobs that are RecallWeights fields of the same name.
SCORING_KNOBS = ("coclick_prior", "coclick_history_prior")


def full_pass(space: dict[str, tuple] | None = None, start: dict | None = None) -> int:
    """Evaluations that reach every knob of ``space`` (default :data:`SPACE`):
    the start and each candidate value, but the one equal to the knob's
    setting in ``start`` (each knob is visited once, so it is still the
    start's when its turn comes).

    >>> full_pass({"k": (4, 8), "top_m": (1, 2, 3)}), full_pass({"k": (4, 8)}, {"k": 8})
    (6, 2)
    """
    start = start or {}
    space = space or SPACE
    return 1 + sum(len(values) - (start.get(name) in values) for name, values in space.items())


@dataclass
class Trial:
    """One evaluated configuration: its settings and scores."""

    settings: dict
    hit_rate: float
    ndcg: float

    @property
    def score(self) -> float:
        return self.hit_rate + self.ndcg


@dataclass
class TuneResult:
    best: dict  # worker settings (names of stream.settings.Settings)
    best_trial: Trial
    baseline_trial: Trial  # the settings it started from
    trials: list[Trial]


def settings_of(config: EvalConfig) -> dict:
    """The worker settings a config stands for (the knobs of :data:`SPACE`)."""
    out = {}
    for name in SPACE:
        if name in RECALL_KNOBS:
            out[name] = getattr(config.recall, RECALL_KNOBS[name])
        elif name in SCORING_KNOBS:
            out[name] = getattr(config.recall, name)
        elif name == "k":
            out[name] = config.k
        elif hasattr(config.engine, name):
            out[name] = getattr(config.engine, name)
        else:
            out[name] = getattr(config, name)
    return out


def with_setting(config: EvalConfig, name: str, value) -> EvalConfig:
    """``config`` with one knob of :data:`SPACE` changed."""
    if name in RECALL_KNOBS:
        recall = dataclasses.replace(config.recall, **{RECALL_KNOBS[name]: value})
        return dataclasses.replace(config, recall=recall)
    if name in SCORING_KNOBS:
        return dataclasses.replace(
            config, recall=dataclasses.replace(config.recall, **{name: value})
        )
    if name == "k":
        return dataclasses.replace(config, k=value, k_range=None)
    if hasattr(config.engine, name):
        return dataclasses.replace(
            config, engine=dataclasses.replace(config.engine, **{name: value})
        )
    return dataclasses.replace(config, **{name: value})


def _tuning_part(clicks: ClickBatch, base: EvalConfig, inner_warmup: float):
    """The warm-up part of ``clicks`` and the config that scores its last
    ``1 - inner_warmup`` share (k 16 where ``base`` would run the elbow)."""
    warm = clicks.slice(0, int(len(clicks) * base.warmup))
    if len(warm) < 20:
        raise ValueError("too few warm-up clicks to tune on")
    config = dataclasses.replace(base, warmup=inner_warmup)
    if config.k is None:
        config = dataclasses.replace(config, k=16, k_range=None)
    return warm, config


#: Half-lives :func:`fit_to_log` tries for every :data:`TIME_KNOBS`.
TIME_SCALES = (HOUR_S / 4, HOUR_S, 6 * HOUR_S, DAY_S, 7 * DAY_S, 30 * DAY_S, 365 * DAY_S)
#: The CF and co-click tables' half-lives (popularity and the decayed
#: co-visitation baselines follow them).
TIME_KNOBS = ("cf_half_life_s", "coclick_half_life_s")
#: Blends :func:`fit_to_log` scores at each half-life, as (recall_coclick,
#: recall_cf): the defaults first (so a tie keeps them), more CF, CF alone.
BLENDS = ((1.0, 0.25), (1.0, 0.0), (1.0, 0.5), (1.0, 1.0), (1.0, 2.0), (0.0, 1.0))
#: The settings a fitted blend sets.
BLEND_KNOBS = ("recall_coclick", "recall_cf")


@dataclass
class Fit:
    """What :func:`fit_to_log` chose: ``settings`` (worker settings: the
    :data:`TIME_KNOBS` and :data:`BLEND_KNOBS` it fitted), and per half-life
    tried the best blend's score and the best baseline's (``trials``; score:
    HitRate + NDCG on the tuning part)."""

    settings: dict
    trials: list[dict]

    @property
    def baselines_best_at(self) -> float | None:
        """The half-life the best baseline scored highest at (None if only one was tried)."""
        if len(self.trials) < 2:
            return None
        return max(self.trials, key=lambda t: t["baseline"])["half_life_s"]


def fit_to_log(
    clicks: ClickBatch,
    base: EvalConfig,
    run: Callable[[ClickBatch, EvalConfig], dict] | None = None,
    half_lives: tuple[float, ...] = TIME_SCALES,
    blends: tuple[tuple[float, float], ...] = BLENDS,
    inner_warmup: float = 0.5,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> Fit:
    """The half-life of the CF and co-click tables and the blend weights that fit
    the log: each of ``half_lives`` (none: the base's) is evaluated as
    :func:`tune` evaluates (the warm-up part only, prequential), with every
    one of ``blends`` scored on the same candidates (a blend weight changes no
    state, so they cost one run); the highest HitRate + NDCG of the engine
    decides, the shorter half-life and the earlier blend win a tie. News fits
    hours, a decade of movie ratings a year: one default fits neither. Each
    trial also records the best baseline's score, which shares the
    half-life, so a report can say whether the baselines prefer another."""
    progress = progress or (lambda phase, n, total: None)
    warm, config = _tuning_part(clicks, base, inner_warmup)
    run = run or (lambda part, cfg: evaluate(part, None, cfg))
    weights = tuple(
        dataclasses.replace(config.recall, coclick=coclick, cf=cf) for coclick, cf in blends
    )
    trials: list[dict] = []
    for value in half_lives or (None,):
        cfg = dataclasses.replace(config, blends=weights)
        if value is not None:
            for name in TIME_KNOBS:
                cfg = with_setting(cfg, name, value)
        report = run(warm, cfg)
        methods = report["methods"]
        scored = [(methods["engine"]["hit_rate"] + methods["engine"]["ndcg"], None)]
        if blends:
            scored = [(b["hit_rate"] + b["ndcg"], pair)
                      for b, pair in zip(report["blends"], blends, strict=True)]  # fmt: skip
        engine, pair = max(scored, key=lambda sp: sp[0])  # max keeps the first of a tie
        name, baseline = max(
            ((m, methods[m]["hit_rate"] + methods[m]["ndcg"]) for m in BASELINES),
            key=lambda kv: kv[1],
        )
        trials.append({"half_life_s": value, "engine": round(engine, 4), "blend": pair,
                       "best_baseline": name, "baseline": round(baseline, 4)})  # fmt: skip
        progress("fit", 1, len(half_lives) or 1)
        logger.info("fit: half-life %s, blend %s: engine %.4f, %s %.4f",
                    value, pair, engine, name, baseline)  # fmt: skip
    best = max(trials, key=lambda t: t["engine"])
    settings = {}
    if half_lives:
        settings.update({name: best["half_life_s"] for name in TIME_KNOBS})
    if blends:
        settings.update(zip(BLEND_KNOBS, best["blend"], strict=True))
    return Fit(settings, trials)


def tune(
    clicks: ClickBatch,
    base: EvalConfig,
    run: Callable[[ClickBatch, EvalConfig], dict] | None = None,
    budget: int | None = None,
    inner_warmup: float = 0.5,
    space: dict[str, tuple] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> TuneResult:
    """Coordinate ascent over ``space`` on the warm-up part of ``clicks`` (see the
    module doc). ``run(clicks, config)`` evaluates (default :func:`evaluate` with
    no items); it gets the warm-up part and a config whose ``warmup`` is
    ``inner_warmup``. ``budget`` None: :func:`full_pass`."""
    space = space or SPACE
    progress = progress or (lambda phase, n, total: None)
    warm, config = _tuning_part(clicks, base, inner_warmup)
    run = run or (lambda part, config: evaluate(part, None, config))
    budget = full_pass(space, settings_of(config)) if budget is None else budget
    trials: list[Trial] = []
    cache: dict[tuple, Trial] = {}

    def score(cfg: EvalConfig) -> Trial:
        key = tuple(sorted(settings_of(cfg).items()))
        if key in cache:
            return cache[key]
        report = run(warm, cfg)["methods"]["engine"]
        trial = Trial(settings_of(cfg), report["hit_rate"], report["ndcg"])
        cache[key] = trial
        trials.append(trial)
        progress("tune", 1, budget)
        logger.info(
            "tune: %s -> HitRate %.4f NDCG %.4f", trial.settings, trial.hit_rate, trial.ndcg
        )
        return trial

    start = best = score(config)
    for name, values in space.items():
        for value in values:
            if len(trials) >= budget:
                break
            candidate = with_setting(config, name, value)
            if candidate == config:
                continue
            trial = score(candidate)
            if trial.score > best.score:
                best, config = trial, candidate
    return TuneResult(best.settings, best, start, trials)


def to_toml(settings: dict, comment: str = "") -> str:
    """Settings as TOML lines (numbers and strings only).

    >>> print(to_toml({"k": 8, "half_life_s": 3600.0}, "from tune"), end="")
    # from tune
    k = 8
    half_life_s = 3600.0
    """
    lines = [f"# {line}" for line in comment.splitlines()] if comment else []
    for name, value in settings.items():
        if isinstance(value, bool):
            lines.append(f"{name} = {'true' if value else 'false'}")
        elif isinstance(value, int | float):
            lines.append(f"{name} = {value!r}")
        else:
            lines.append(f'{name} = "{value}"')
    return "\n".join(lines) + "\n"
