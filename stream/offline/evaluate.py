"""Offline evaluation: does cluster recall recommend better than the alternatives?

A click log is replayed in time order through the same core the worker runs
(:func:`stream.core.pipeline.process_batch`). The first ``warmup`` fraction of
the clicks only trains: user vectors, then centres fitted on them (k-means,
k given or by the elbow method), then the warm-up clicks again with the
centres, so the CF tables are warm. After that, for every click, each method
recommends ``n`` items the user has not clicked yet, *before* the click is
applied, and the clicked item is the target. Methods:

- ``engine``: the user's clusters' real-time CF tables, blended by membership;
- ``popularity``: global time-decayed popularity (same half-life as the CF);
- ``centroid_item``: the items nearest (cosine) to the user's primary cluster
  centre, the same centres as the engine's (the offline alternative to
  real-time CF: item lists that change only when the centres do);
- ``user_item``: the items nearest to the user's own vector;
- ``covisit``: item-to-item co-visitation over the user's recent items;
- ``covisit_decayed``: the same with the engine's time scales, window and
  scoring: the engine's co-click table without clusters, undirected;
- ``covisit_next``: ``covisit_decayed`` directed, the items clicked *after*
  the user's recent items (sequential co-visitation, strong on news).

Every method falls back to global popularity to fill its list (cold users),
so the comparison is about personalisation: the baselines to ``popularity``,
the engine's methods to the sum of its clusters' CF tables
(:func:`stream.core.recall.popular`, what the worker serves), which counts the
same clicks but those of users without a cluster. During the evaluation the engine
runs the worker's centre jobs in event time (:class:`_Jobs`): the
dynamic-rule merge every 10 minutes of log time and a recompute (with id
matching) every 24 hours, each followed by re-assigning every user. Methods see the state before the
mini-batch a click belongs to (``batch`` clicks, 64 by default), which keeps
the replay fast and is the same for all of them.

Metrics: HitRate@n, NDCG@n, MRR@n and catalogue coverage (share of the
log's items ever recommended), overall and by the user's history (clicks the
user made before the scored one, :data:`HISTORY_BUCKETS`): a cold user gets
everyone's fallback, so the overall figures mix personalisation with it. With ground truth (planted clusters) also ARI
and NMI of the users' primary clusters, and the id churn of a recompute with
and without the Hungarian matching. The engine's ratio to the best baseline
comes with a 95% interval (:func:`ratio_interval`, a bootstrap over users):
a ratio whose interval holds 1 is a tie on this log.
"""

from __future__ import annotations

import dataclasses
import heapq
import logging
import math
import time
from array import array
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from stream.core.centres import CentreSet
from stream.core.cf import CFTable
from stream.core.clicks import ClickBatch
from stream.core.items import ItemCatalog, unit_rows
from stream.core.merge import apply_merges, merge_threshold, plan_merges
from stream.core.pairs import make_pair_delta, pair_increments
from stream.core.pipeline import (
    EngineConfig,
    EngineState,
    process_batch,
    reassign,
    resolve_memberships,
)
from stream.core.recall import (
    POPULAR_DEPTH,
    SOURCES,
    RecallWeights,
    all_cluster_ids,
    blend,
    candidates,
    most_popular,
    popular_in,
)
from stream.core.recompute import nearest, publish_verdict, recompute

logger = logging.getLogger(__name__)

#: The engine's blend, each of its candidate sources alone, then the baselines.
ENGINE_METHODS = ("engine", "engine_cf", "engine_coclick", "engine_vector")
BASELINES = (
    "popularity", "centroid_item", "user_item", "covisit", "covisit_decayed", "covisit_next",
)  # fmt: skip
METHODS = ENGINE_METHODS + BASELINES
#: Lower bounds of the history buckets: clicks the user made before the scored one.
HISTORY_BUCKETS = (0, 1, 5, 20)
#: Their names in the report, in that order.
HISTORY_NAMES = tuple(
    f"{low}+" if high is None else (f"{low}" if high == low + 1 else f"{low}-{high - 1}")
    for low, high in zip(HISTORY_BUCKETS, (*HISTORY_BUCKETS[1:], None), strict=True)
)


@dataclass(frozen=True)
class EvalConfig:
    n: int = 10
    warmup: float = 0.3
    k: int | None = None
    k_range: tuple[int, int] | None = (4, 64)
    batch: int = 64
    recent: int = 10  # items of a user's history the co-visitation method uses
    seed: int = 0
    # the worker's jobs, run in event time during the evaluation (None = off)
    min_cluster_size: int = 5  # merge rule's floor (settings.min_cluster_size)
    min_cluster_share: float = 0.002  # merge rule's share of the users (settings)
    merge_every_ms: float | None = 600_000.0  # settings.merge_interval_s
    recompute_every_ms: float | None = 86_400_000.0  # a daily off-peak recompute
    recompute_max_churn: float = 0.05  # settings.recompute_max_churn
    recompute_min_gain: float = 0.02  # settings.recompute_min_gain
    match_threshold: float = 0.5  # settings.match_threshold
    sample: int = 1  # score every sample-th click only (all are learnt from)
    blends: tuple[RecallWeights, ...] = ()  # more blend weights scored on the same candidates
    engine: EngineConfig = field(default_factory=EngineConfig)
    recall: RecallWeights = field(default_factory=RecallWeights)


#: EvalConfig fields that are worker settings of the same name (the jobs' knobs).
JOB_SETTINGS = (
    "min_cluster_size", "min_cluster_share", "recompute_max_churn", "recompute_min_gain",
    "match_threshold",
)  # fmt: skip


def eval_config(settings, **fields) -> EvalConfig:
    """An :class:`EvalConfig` from the worker's settings (any object with the
    attributes of :class:`stream.settings.Settings`): the engine's knobs, the blend
    weights, the jobs' thresholds and their periods (``merge_interval_s``; the
    recompute daily unless its cron is ``off``); ``fields`` override the rest."""
    base: dict = {name: getattr(settings, name) for name in JOB_SETTINGS}
    base.update(
        engine=settings.engine_config(),
        recall=settings.recall_weights(),
        merge_every_ms=settings.merge_interval_s * 1000.0,
        recompute_every_ms=None if settings.recompute_cron == "off" else 86_400_000.0,
        seed=settings.seed,
    )
    base.update(fields)
    return EvalConfig(**base)


@dataclass
class _Scores:
    hits: int = 0
    ndcg: float = 0.0
    rr: float = 0.0
    recommended: set = field(default_factory=set)
    evaluated: int = 0
    coverage: bool = True  # keep the items recommended
    gains: array | None = None  # each scored click's NDCG gain (0: a miss), if kept

    def add(self, items: list[str], target: str) -> None:
        self.evaluated += 1
        if self.coverage:
            self.recommended.update(items)
        gain = 0.0
        if target in items:
            rank = items.index(target) + 1
            gain = 1.0 / math.log2(rank + 1)
            self.hits += 1
            self.ndcg += gain
            self.rr += 1.0 / rank
        if self.gains is not None:
            self.gains.append(gain)


def ratio_interval(
    engine: np.ndarray, best: np.ndarray, users: np.ndarray, rounds: int = 1000, seed: int = 0
) -> dict[str, list[float] | None]:
    """95% interval of engine / best baseline, HitRate and NDCG: ``engine``,
    ``best`` (n,) float64 each scored click's NDCG gain (0: a miss), ``users``
    (n,) int64 its clicker (0..u-1). A Poisson bootstrap over users (each
    round weighs every user by a Poisson(1) draw): one user's clicks are not
    independent of each other, so they are drawn together. The best baseline
    is the one chosen on all the clicks, in every round. None where a bound is
    not finite (the baseline scores nothing in over 2.5% of the rounds) or
    over 5% of the rounds draw no hit at all.

    >>> rng = np.random.default_rng(1)
    >>> users = rng.integers(0, 300, 3000)
    >>> same = (rng.random(3000) < 0.3).astype(float)
    >>> lo, hi = ratio_interval(same, same, users)["hit_rate"]
    >>> lo == hi == 1.0
    True
    >>> lo, hi = ratio_interval(same * (rng.random(3000) < 0.9), same, users)["hit_rate"]
    >>> bool(0.85 < lo < 0.9 < hi < 0.95)
    True
    """
    if rounds < 1:
        raise ValueError("rounds must be >= 1")
    users = np.asarray(users, dtype=np.int64)
    n_users = int(users.max()) + 1 if len(users) else 0
    sums = np.stack([
        np.bincount(users, weights=column, minlength=n_users)
        for column in (engine > 0, best > 0, engine, best)
    ])  # fmt: skip
    rng = np.random.default_rng(seed)
    block = max(1, 4_000_000 // max(n_users, 1))  # rounds drawn at once: bounds their memory
    ratios = []
    for start in range(0, rounds, block):
        draws = rng.poisson(1.0, size=(min(block, rounds - start), n_users)).astype(np.float32)
        totals = draws @ sums.T  # (rounds, 4): engine hits, best hits, engine and best NDCG
        with np.errstate(divide="ignore", invalid="ignore"):
            ratios.append(totals[:, [0, 2]] / totals[:, [1, 3]])
    ratios = np.concatenate(ratios)
    out: dict[str, list[float] | None] = {}
    for i, metric in enumerate(("hit_rate", "ndcg")):
        r = ratios[:, i][~np.isnan(ratios[:, i])]  # 0 / 0: a round with no hit says nothing
        if len(r) < 0.95 * rounds:
            out[metric] = None
            continue
        bounds = np.quantile(r, [0.025, 0.975], method="inverted_cdf")
        out[metric] = [round(float(b), 3) for b in bounds] if np.isfinite(bounds).all() else None
    return out


def interval_text(bounds: list[float] | None) -> str:
    """A ratio's interval as text.

    >>> interval_text([1.03, 1.095]), interval_text(None)
    ('1.030-1.095', 'n/a')
    """
    return f"{bounds[0]:.3f}-{bounds[1]:.3f}" if bounds else "n/a"


class _Popularity:
    """Global time-decayed popularity: a CF table with one cluster."""

    def __init__(self, half_life_ms: float):
        self.table = CFTable(half_life_ms, max_items=100_000, prune_below=0.0)

    def learn(self, keys: np.ndarray, ts: np.ndarray, weights: np.ndarray) -> None:
        self.table.learn_many(np.zeros(len(keys), dtype=np.int64), keys, ts, weights)

    def top(self, n: int) -> list[int]:
        return self.table.top(0, n)[0].tolist()


class _CoVisit:
    """Item co-visitation kNN: items clicked within ``recent`` clicks of each other
    by one user are counted as a pair; a user's candidates are the ``neighbours``
    most co-visited items of each of their recent items, scores summed.

    An item's neighbour list is recomputed when its co-visit total has grown by
    10 % since the last time (so a list is at most 10 % behind the counts): a
    popular item co-occurs with thousands of items, and summing whole rows per
    click made the replay of a real log take hours.

    >>> cv = _CoVisit(recent=3, neighbours=1)
    >>> for item in (1, 2, 1, 2, 3):
    ...     cv.learn("u", item)
    >>> cv.recommend("v", 5, set()), cv.recommend("u", 5, {2})
    ([], [1])
    """

    def __init__(self, recent: int, neighbours: int = 100):
        self.recent = recent
        self.neighbours = neighbours
        self.history: dict[str, list[int]] = defaultdict(list)
        self.counts: dict[int, dict[int, float]] = defaultdict(lambda: defaultdict(float))
        self.total: dict[int, float] = defaultdict(float)
        self._top: dict[int, tuple[float, list[tuple[int, float]]]] = {}

    def learn(self, user: str, item: int) -> None:
        hist = self.history[user]
        for other in hist:
            if other != item:
                self.counts[other][item] += 1.0
                self.counts[item][other] += 1.0
                self.total[other] += 1.0
                self.total[item] += 1.0
        hist.append(item)
        if len(hist) > self.recent:
            del hist[0]

    def _neighbours(self, item: int) -> list[tuple[int, float]]:
        total = self.total.get(item, 0.0)
        cached = self._top.get(item)
        if cached is not None and total <= cached[0] * 1.1:
            return cached[1]
        row = self.counts.get(item, {})
        top = heapq.nlargest(self.neighbours, row.items(), key=lambda kv: (kv[1], -kv[0]))
        self._top[item] = (total, top)
        return top

    def recommend(self, user: str, n: int, seen: set[int]) -> list[int]:
        scores: dict[int, float] = defaultdict(float)
        for item in self.history.get(user, ()):
            for other, c in self._neighbours(item):
                if other not in seen:
                    scores[other] += c
        return [k for k, _ in heapq.nlargest(n, scores.items(), key=lambda kv: (kv[1], -kv[0]))]


class _DecayedCoVisit:
    """Global co-visitation with the engine's time scales: the co-click table
    without cluster scopes, fed and scored as the engine's co-click source is,
    in two tables, undirected and directed, whatever the engine's table is."""

    def __init__(self, config: EngineConfig, weights: RecallWeights):
        self.weights = weights
        self.tables = {
            directed: dataclasses.replace(config, coclick_directed=directed).coclick_table()
            for directed in (False, True)
        }
        self.window = config.coclick_window
        self.history: dict[str, list[int]] = {}  # user -> previous items, oldest first

    def learn(self, users: list[str], keys: np.ndarray, ts: np.ndarray, weights) -> None:
        """A batch of clicks, in order (``keys``, ``ts``, ``weights``: (n,) per click)."""
        if self.window < 1 or not users:
            return
        at: dict[str, int] = {}
        user_pos = np.fromiter((at.setdefault(u, len(at)) for u in users), np.int64, len(users))
        recent = np.full((len(at), self.window), -1, dtype=np.int64)
        for i, user in enumerate(at):
            hist = self.history.get(user, [])[::-1]  # newest first, as a user record keeps them
            recent[i, : len(hist)] = hist
        none = np.zeros(0, dtype=np.int64)
        for directed, table in self.tables.items():
            inc = pair_increments(
                recent, user_pos, keys, weights, none, none, np.zeros(0), self.window, directed
            )
            table.add(make_pair_delta(inc, ts, table.half_life_ms))
        for user, key in zip(users, keys.tolist(), strict=True):
            hist = self.history.setdefault(user, [])
            hist.append(key)
            del hist[: -self.window]

    def recommend(self, user: str, n: int, seen: set[int], directed: bool) -> list[int]:
        w = self.weights
        scores = self.tables[directed].scores(
            [], self.history.get(user, []), seen, norm=w.coclick_norm, recency=w.coclick_recency
        )
        return [k for k, _ in heapq.nlargest(n, scores.items(), key=lambda kv: (kv[1], -kv[0]))]


def _fill(items: list[int], fallback: list[int], n: int, seen: set[int]) -> list[int]:
    out = list(items[:n])
    have = set(out)
    for item in fallback:
        if len(out) >= n:
            break
        if item not in have and item not in seen:
            out.append(item)
            have.add(item)
    return out


def clustering_agreement(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """ARI and NMI of two labelings of the same users (pure numpy)."""
    pred = np.unique(pred, return_inverse=True)[1]
    truth = np.unique(truth, return_inverse=True)[1]
    n = len(pred)
    table = np.zeros((pred.max() + 1, truth.max() + 1))
    np.add.at(table, (pred, truth), 1)

    def comb2(x):
        return x * (x - 1) / 2.0

    sum_ij = comb2(table).sum()
    sum_a = comb2(table.sum(axis=1)).sum()
    sum_b = comb2(table.sum(axis=0)).sum()
    expected = sum_a * sum_b / comb2(n) if n > 1 else 0.0
    maximum = (sum_a + sum_b) / 2.0
    ari = 1.0 if maximum == expected else (sum_ij - expected) / (maximum - expected)
    p = table / n
    pa, pb = p.sum(axis=1), p.sum(axis=0)
    nz = p > 0
    mi = float((p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum())
    ha = -float((pa[pa > 0] * np.log(pa[pa > 0])).sum())
    hb = -float((pb[pb > 0] * np.log(pb[pb > 0])).sum())
    nmi = 1.0 if ha == hb == 0 else (2 * mi / (ha + hb) if ha + hb > 0 else 0.0)
    return {"ari": round(float(ari), 4), "nmi": round(float(nmi), 4)}


def _primary(state: EngineState) -> tuple[list[str], np.ndarray]:
    ids, primary = [], []
    for chunk_ids, rows in state.users.iter_chunks():
        live = (
            state.centres.resolve(rows["cluster_ids"][:, 0])
            if state.centres
            else rows["cluster_ids"][:, 0]
        )
        ids.extend(chunk_ids)
        primary.append(live)
    return ids, np.concatenate(primary) if primary else np.zeros(0, dtype=np.int64)


def evaluate(
    clicks: ClickBatch,
    item_records: list[dict] | None,
    config: EvalConfig,
    truth: dict[str, int] | None = None,
    item_vectors: tuple[list[str], np.ndarray] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
) -> dict:
    """Replay ``clicks`` (time-ordered) and score every method; see the module doc.

    Item vectors come from ``item_records`` (explicit or metadata) or from
    ``item_vectors`` = (ids, (n, d) float32), e.g. learnt on the warm-up only.
    """
    started = time.perf_counter()
    progress = progress or (lambda phase, n, total: None)
    n_total = len(clicks)
    n_warm = int(n_total * config.warmup)
    if n_warm < 1 or n_warm >= n_total:
        raise ValueError("warmup must leave clicks on both sides")
    catalog_dim = item_vectors[1].shape[1] if item_vectors is not None else config.engine.dim
    engine_cfg = EngineConfig(**{**config.engine.__dict__, "dim": catalog_dim})

    def new_state() -> EngineState:
        state = EngineState.in_memory(engine_cfg, coclick=True)
        if item_vectors is not None:
            state.items.upsert_many(item_vectors[0], item_vectors[1])
        for rec in item_records or ():
            try:
                state.items.upsert_record(rec)
            except ValueError:
                continue
        return state

    # 1. warm-up: user vectors, centres, then the warm-up again with centres
    warm = clicks.slice(0, n_warm)
    state = new_state()
    for s in range(0, n_warm, 4096):
        process_batch(state, warm.slice(s, s + 4096))
    progress("warm-up", n_warm, n_total)
    chunks = [rows for _, rows in state.users.iter_chunks()]
    rows = np.concatenate(chunks) if chunks else None
    if rows is None or not (rows["weight"] > 0).sum():
        raise ValueError("no user has a vector after the warm-up (no item vectors?)")
    vectors = unit_rows(rows["mean"][rows["weight"] > 0])
    centres, fit = recompute(
        vectors, None, k=config.k, k_range=None if config.k else config.k_range, seed=config.seed,
        reason="bootstrap", created_at_ms=0,
    )  # fmt: skip
    churn = _recompute_churn(vectors, centres, config.seed)
    state = new_state()
    state.centres = centres
    popularity = _Popularity(engine_cfg.cf_half_life_ms)
    covisit = _CoVisit(config.recent)
    covisit_decayed = _DecayedCoVisit(engine_cfg, config.recall)  # and covisit_next
    seen: dict[str, set[int]] = defaultdict(set)
    history: dict[str, int] = defaultdict(int)  # user -> clicks so far
    catalog = state.items

    def learn_baselines(batch: ClickBatch) -> None:
        rows = catalog.rows_for(batch.item_ids)
        keys = catalog.keys[rows]  # rows first: rows_for may grow the catalog
        popularity.learn(keys, batch.ts, batch.weights)
        for user, key in zip(batch.user_ids, keys.tolist(), strict=True):
            covisit.learn(user, key)
            seen[user].add(key)
            history[user] += 1
        covisit_decayed.learn(batch.user_ids, keys, batch.ts, batch.weights)

    for s in range(0, n_warm, 4096):
        b = warm.slice(s, s + 4096)
        process_batch(state, b)
        learn_baselines(b)

    # 2. evaluation: recommend before each mini-batch, then apply it
    centre_items = _centre_items(catalog, centres, config.n * 20)
    kept = {"engine", *BASELINES}  # the interval of engine / best baseline needs their gains
    scores = {m: _Scores(gains=array("d") if m in kept else None) for m in METHODS}
    scored_users: dict[str, int] = {}
    scored_by = array("q")  # each scored click's user, as an index
    by_history = [{m: _Scores(coverage=False) for m in METHODS} for _ in HISTORY_BUCKETS]
    blend_scores = [_Scores() for _ in config.blends]
    # every source's candidates once per click; each blend weighs the same ones
    every_source = dataclasses.replace(config.recall, cf=1.0, coclick=1.0, vector=1.0)
    n = config.n
    evaluated = 0
    jobs = _Jobs(state, config, int(clicks.ts[n_warm]))
    for s in range(n_warm, n_total, config.batch):
        b = clicks.slice(s, s + config.batch)
        if jobs.run_due(int(b.ts[0])):
            centre_items = _centre_items(catalog, state.centres, config.n * 20)
        rows = catalog.rows_for(b.item_ids)
        keys = catalog.keys[rows]  # rows first: rows_for may grow the catalog
        fallback = popularity.top(n + 50)
        # the engine's own fill, as the worker serves it: the sum of the clusters' CF tables
        engine_fill = most_popular(
            popular_in(state.cf, all_cluster_ids(state.centres), max(POPULAR_DEPTH, n + 50)),
            n + 50,
        )
        user_rows = state.users.read_many(list(dict.fromkeys(b.user_ids))).rows
        row_of = {u: i for i, u in enumerate(dict.fromkeys(b.user_ids))}
        earlier: dict[str, int] = defaultdict(int)  # the user's clicks in this mini-batch so far
        for i, (user, target) in enumerate(zip(b.user_ids, keys.tolist(), strict=True)):
            before = history[user] + earlier[user]
            earlier[user] += 1
            if (s + i) % config.sample:
                continue
            excl = seen[user]
            row = user_rows[row_of[user]]
            lists = _recommend_all(state, catalog, row, excl, n, centre_items, covisit, user)
            lists["covisit_decayed"] = covisit_decayed.recommend(user, n, excl, directed=False)
            lists["covisit_next"] = covisit_decayed.recommend(user, n, excl, directed=True)
            parts = candidates(state, row, n, excl, every_source)
            lists["engine"] = [k for k, _, _ in blend(parts, config.recall, n)]
            for source in SOURCES:
                only = {source: parts[source]} if source in parts else {}
                lists["engine_" + source] = [k for k, _, _ in blend(only, every_source, n)]
            bucket = by_history[_bucket(before)]
            scored_by.append(scored_users.setdefault(user, len(scored_users)))
            for method in METHODS:
                fill = engine_fill if method in ENGINE_METHODS else fallback
                items = _fill(lists.get(method, []), fill, n, excl)
                scores[method].add(items, target)
                bucket[method].add(items, target)
            for weights, sc in zip(config.blends, blend_scores, strict=True):
                items = [k for k, _, _ in blend(parts, weights, n)]
                sc.add(_fill(items, engine_fill, n, excl), target)
            evaluated += 1
        process_batch(state, b)
        learn_baselines(b)
        progress("evaluate", len(b), n_total - n_warm)

    # 3. clusters: agreement with the truth, and after a recompute at the end
    report: dict = {
        "clicks": n_total,
        "warmup_clicks": n_warm,
        "evaluated": evaluated,
        "users": len(state.users),
        "items": len(catalog),
        "items_with_vector": int(catalog.given.sum()),
        "k": centres.k,
        "k_curve": fit.k_curve and {str(k): round(v, 5) for k, v in fit.k_curve.items()},
        "k_at_end": state.centres.k,
        "jobs": jobs.report(),
        "n": n,
        "methods": {},
        "recompute_id_churn": churn,
    }
    log_items = len(set(clicks.item_ids))
    rows_all = catalog.rows_for(clicks.item_ids)
    # given: items and clicks with a given vector; learnt: with a given or learnt
    # one at the end (seeds not counted)
    given, learnt = catalog.given, catalog.informative
    report["item_vector_coverage"] = {
        "items": round(float(given[np.unique(rows_all)].mean()), 4),
        "clicks": round(float(given[rows_all].mean()), 4),
        "items_learnt": round(float(learnt[np.unique(rows_all)].mean()), 4),
        "clicks_learnt": round(float(learnt[rows_all].mean()), 4),
    }
    for method, sc in scores.items():
        report["methods"][method] = {
            "hit_rate": round(sc.hits / evaluated, 4),
            "ndcg": round(sc.ndcg / evaluated, 4),
            "mrr": round(sc.rr / evaluated, 4),
            "coverage": round(len(sc.recommended) / log_items, 4),
        }
    report["blends"] = [
        {
            "weights": {"cf": w.cf, "coclick": w.coclick, "vector": w.vector},
            "hit_rate": round(sc.hits / evaluated, 4),
            "ndcg": round(sc.ndcg / evaluated, 4),
        }
        for w, sc in zip(config.blends, blend_scores, strict=True)
    ]
    report.update(_versus(report["methods"]))
    report["vs_best_baseline_interval"] = ratio_interval(
        np.asarray(scores["engine"].gains), np.asarray(scores[report["best_baseline"]].gains),
        np.asarray(scored_by), seed=config.seed or 0,
    )  # fmt: skip
    report["by_history"] = {}
    for name, bucket in zip(HISTORY_NAMES, by_history, strict=True):
        count = bucket["engine"].evaluated
        if not count:
            continue
        methods = {
            m: {"hit_rate": round(sc.hits / count, 4), "ndcg": round(sc.ndcg / count, 4)}
            for m, sc in bucket.items()
        }
        versus = _versus(methods)
        report["by_history"][name] = {
            "evaluated": count,
            "methods": methods,
            "best_baseline": versus["best_baseline"],
            "engine_vs_best_baseline": versus["vs_best_baseline"]["engine"],
            "engine_vs_popularity": versus["engine_vs_popularity"],
        }
    hr = {m: report["methods"][m]["hit_rate"] for m in METHODS}
    report["engine_vs_centroid_item"] = (
        round(hr["engine"] / hr["centroid_item"], 3) if hr["centroid_item"] else None
    )
    if truth is not None:
        report["clusters"] = _agreement(state, truth, config.seed)
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report


def _bucket(clicks_before: int) -> int:
    """The index in :data:`HISTORY_BUCKETS` of a user with ``clicks_before`` clicks.

    >>> [_bucket(c) for c in (0, 1, 4, 5, 19, 20, 500)]
    [0, 1, 1, 2, 2, 3, 3]
    """
    return sum(clicks_before >= low for low in HISTORY_BUCKETS) - 1


def _versus(methods: dict[str, dict]) -> dict:
    """The best baseline (HitRate, then NDCG), every method's HitRate and NDCG
    over it, and the engine's HitRate over popularity's."""
    best = max(BASELINES, key=lambda m: (methods[m]["hit_rate"], methods[m]["ndcg"]))
    pop = methods["popularity"]["hit_rate"]
    return {
        "best_baseline": best,
        "vs_best_baseline": {
            m: {
                metric: round(v[metric] / b, 3) if (b := methods[best][metric]) else None
                for metric in ("hit_rate", "ndcg")
            }
            for m, v in methods.items()
        },
        "engine_vs_popularity": round(methods["engine"]["hit_rate"] / pop, 3) if pop else None,
    }


class _Jobs:
    """The worker's centre jobs in event time: the dynamic-rule merge every
    ``merge_every_ms`` and the off-peak recompute every ``recompute_every_ms``
    of log time, each followed by the eager sweep (every user re-assigned).
    CF tables stay keyed by cluster id, as on the CF owners: a fresh id starts
    with an empty table, a retired id's table is no longer read."""

    def __init__(self, state: EngineState, config: EvalConfig, start_ms: int):
        self.state = state
        self.config = config
        self.next_merge = start_ms + config.merge_every_ms if config.merge_every_ms else None
        self.next_recompute = (
            start_ms + config.recompute_every_ms if config.recompute_every_ms else None
        )
        self.merges = self.merged_ids = self.recomputes = self.withheld = 0
        self.matched = self.new = self.retired = 0

    def run_due(self, now_ms: int) -> bool:
        """Run the jobs that are due at ``now_ms``; True when the centres changed."""
        changed = False
        if self.next_recompute is not None and now_ms >= self.next_recompute:
            while self.next_recompute <= now_ms:
                self.next_recompute += self.config.recompute_every_ms
            changed |= self._recompute(now_ms)
        if self.next_merge is not None and now_ms >= self.next_merge:
            while self.next_merge <= now_ms:
                self.next_merge += self.config.merge_every_ms
            changed |= self._merge(now_ms)
        if changed:
            ids = [u for chunk, _ in self.state.users.iter_chunks() for u in chunk]
            reassign(self.state, ids)
        return changed

    def _vectors(self) -> tuple[np.ndarray, np.ndarray]:
        rows = np.concatenate([r for _, r in self.state.users.iter_chunks()])
        return rows, rows["weight"] > 0

    def _merge(self, now_ms: int) -> bool:
        centres = self.state.centres
        _, primary = _primary(self.state)
        ids, counts = np.unique(primary[primary >= 0], return_counts=True)
        sizes = dict(zip(ids.tolist(), counts.tolist(), strict=True))  # absent ids count 0
        users = int(np.count_nonzero(primary >= 0))
        cfg = self.config
        threshold = merge_threshold(users, cfg.min_cluster_size, cfg.min_cluster_share)
        plan = plan_merges(sizes, centres, threshold)
        if not plan.steps:
            return False
        self.state.centres = apply_merges(centres, plan, now_ms)
        self.merges += 1
        self.merged_ids += len(plan.steps)
        return True

    def _recompute(self, now_ms: int) -> bool:
        rows, has = self._vectors()
        vectors = unit_rows(rows["mean"][has])
        cfg = self.config
        # as the worker's scheduled job: the live set's k (merges may have lowered
        # it), unless k is chosen by the elbow over a range
        k = min(self.state.centres.k, len(vectors)) if cfg.k else None
        if len(vectors) < 2 or (k is None and cfg.k_range and len(vectors) < cfg.k_range[1]):
            return False
        centres, stats = recompute(
            vectors, self.state.centres, k=k, k_range=None if k else cfg.k_range,
            seed=cfg.seed, created_at_ms=now_ms, match_threshold=cfg.match_threshold,
        )  # fmt: skip
        self.recomputes += 1
        if publish_verdict(stats, cfg.recompute_max_churn, cfg.recompute_min_gain) is not None:
            self.withheld += 1
            return False
        self.state.centres = centres
        self.matched += stats.matched
        self.new += stats.new
        self.retired += stats.retired
        return True

    def report(self) -> dict:
        return {
            "merges": self.merges,
            "ids_merged": self.merged_ids,
            "recomputes": self.recomputes,
            "recomputes_withheld": self.withheld,
            "ids_matched": self.matched,
            "ids_new": self.new,
            "ids_retired": self.retired,
        }


def _centre_items(catalog: ItemCatalog, centres: CentreSet, depth: int) -> dict[int, list[int]]:
    """Per centre id, the keys of the ``depth`` items most similar to it."""
    has = np.flatnonzero(catalog.rankable)
    sims = centres.vectors @ catalog.vectors[has].T  # (k, n_items)
    depth = min(depth, len(has))
    out = {}
    for row, cid in enumerate(centres.ids.tolist()):
        top = np.argpartition(-sims[row], depth - 1)[:depth]
        top = top[np.argsort(-sims[row][top], kind="stable")]
        out[cid] = catalog.keys[has[top]].tolist()
    return out


def _recommend_all(
    state, catalog, row, seen, n, centre_items, covisit, user
) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    depth = n + len(seen)
    if row["cluster_ids"][0] >= 0:
        ids, scores = resolve_memberships(
            state.centres, row["cluster_ids"][None, :], row["scores"][None, :]
        )
        primary = int(ids[0][0])
        out["centroid_item"] = [k for k in centre_items.get(primary, []) if k not in seen][:n]
    if row["weight"] > 0:
        u = unit_rows(row["mean"][None, :])[0]
        has = catalog.rankable
        sims = catalog.vectors @ u
        sims[~has] = -np.inf
        top = np.argpartition(-sims, min(depth, len(sims) - 1))[: depth + 1]
        top = top[np.argsort(-sims[top], kind="stable")]
        out["user_item"] = [k for k in catalog.keys[top].tolist() if k not in seen][:n]
    out["covisit"] = covisit.recommend(user, n, seen)
    return out


def _recompute_churn(vectors: np.ndarray, centres: CentreSet, seed: int) -> dict:
    """Recompute on the same vectors with another seed: the share of users whose
    cluster id changes as the recompute job runs it (k-means started from the
    current centres, ids matched), from a fresh k-means++ start with the matching,
    and from a fresh start without it (ids in k-means order)."""
    before = centres.ids[nearest(vectors, centres.vectors)[0]]
    warm, stats = recompute(vectors, centres, k=centres.k, seed=seed + 1, created_at_ms=0)
    cold, cold_stats = recompute(
        vectors, centres, k=centres.k, seed=seed + 1, created_at_ms=0, warm_start=False
    )
    cold_rows = nearest(vectors, cold.vectors)[0]
    return {
        "user_churn_with_matching": round(
            float(np.mean(before != warm.ids[nearest(vectors, warm.vectors)[0]])), 4
        ),
        "user_churn_cold_start_with_matching": round(
            float(np.mean(before != cold.ids[cold_rows])), 4
        ),
        "user_churn_without_matching": round(float(np.mean(before != cold_rows)), 4),
        "ids_retired_with_matching": stats.retired,
        "ids_retired_cold_start": cold_stats.retired,
        "k": centres.k,
    }


def _agreement(state: EngineState, truth: dict[str, int], seed: int) -> dict:
    ids, primary = _primary(state)
    keep = [i for i, u in enumerate(ids) if u in truth and primary[i] >= 0]
    labels = np.array([truth[ids[i]] for i in keep])
    out = {"at_end": clustering_agreement(primary[keep], labels)}
    # a recompute over the final user vectors (after any drift), users re-assigned
    rows = np.concatenate([r for _, r in state.users.iter_chunks()])
    has = rows["weight"] > 0
    vectors = unit_rows(rows["mean"][has])
    k = len(set(truth.values()))
    after, stats = recompute(vectors, state.centres, k=k, seed=seed, created_at_ms=0)
    users = [u for u, h in zip(ids, has.tolist(), strict=True) if h]
    pred = after.ids[nearest(vectors, after.vectors)[0]]
    sel = [i for i, u in enumerate(users) if u in truth]
    out["after_recompute"] = clustering_agreement(
        pred[sel], np.array([truth[users[i]] for i in sel])
    )
    out["recompute"] = {
        "k": stats.k,
        "matched": stats.matched,
        "new": stats.new,
        "retired": stats.retired,
        "user_churn": round(stats.user_churn or 0.0, 4),
    }
    return out
