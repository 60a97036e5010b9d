"""``process_batch``: one batch of clicks through the whole core.

For every click, in arrival order:

0. a click whose ``event_id`` is in its user's window of recent event ids is
   dropped and counted in ``duplicates`` (:mod:`stream.core.dedupe`);
1. the item's vector (:mod:`stream.core.items`): given, or learnt from its
   clickers (:mod:`stream.core.itemlearn`, when the state has a learner, which
   also seeds items met without any); an item without a vector leaves the user
   vector as it is and is counted in ``unknown_items``;
2. the user's vector update (:mod:`stream.core.vectors`);
3. re-assignment to the fixed centres with hysteresis (:mod:`stream.core.assign`);
4. a CF increment for each of the user's clusters, weighted by membership
   share (also for clicks on items without a vector, as long as the user has
   clusters), summed per (cluster, item) into the batch's :class:`CFDelta`;
   a click whose user has no cluster counts whole in the global scope
   (:data:`GLOBAL`), so the tables together hold every click: everyone's
   popularity (:func:`stream.core.recall.popular`);
5. the item is pushed onto the user's recent items;
6. items without a given vector learn from the batch's CF increments.

A user's clicks inside a batch are applied one after another, so the state
after a stream of clicks is the same however it was cut into batches. The
worker, the offline replay, the evaluation and the benchmarks all call this
one function.

>>> from stream.core.centres import CentreSet
>>> state = EngineState.in_memory(EngineConfig(dim=2, top_m=1))
>>> state.items.upsert("sport-1", vector=[1, 0]); state.items.upsert("news-1", vector=[0, 1])
>>> state.centres = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
>>> out = process_batch(state, ClickBatch.from_columns(["ann", "bob"], ["sport-1", "news-1"], [0, 0]))
>>> out.changes.user_ids, out.changes.ids.tolist()
(['ann', 'bob'], [[0], [1]])
>>> recommend(state, "bob", n=3, exclude_seen=False, with_source=True)  # cluster CF + own vector
[('news-1', 0.25, 'cf')]
"""

from __future__ import annotations

import dataclasses
import logging
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import numba
import numpy as np

from stream.core.assign import (
    FirstClickCache,
    Memberships,
    _assign,
    membership_changed,
    resolve_memberships,
)
from stream.core.centres import CentreSet
from stream.core.cf import CFDelta, CFTable, make_delta
from stream.core.clicks import ClickBatch
from stream.core.coclick import CoClickTable
from stream.core.dedupe import drop_seen, event_hashes
from stream.core.digest import state_digest
from stream.core.hashmap import group_keys
from stream.core.itemlearn import ItemLearner
from stream.core.items import ItemCatalog, unit_rows
from stream.core.pairs import (
    GLOBAL,
    PairDelta,
    PairIncrements,
    make_pair_delta,
    pair_increments,
)
from stream.core.recall import RecallWeights, recall
from stream.core.shards import user_phase
from stream.core.state import InMemoryUserStore, UserStore, str_hashes, user_dtype
from stream.core.vectors import apply_clicks

logger = logging.getLogger(__name__)

DAY_S = 86_400.0


@dataclass(frozen=True)
class EngineConfig:
    """The core's knobs (names match :class:`stream.settings.Settings`)."""

    dim: int = 64
    half_life_s: float = 7 * DAY_S
    top_m: int = 2
    min_score: float = 0.0
    hysteresis_margin: float = 0.05
    recent_items: int = 16
    cf_half_life_s: float = DAY_S
    cf_max_items: int = 2000
    cf_prune_below: float = 0.01
    coclick_half_life_s: float = 30 * DAY_S
    coclick_window: int = 10  # a click co-counts with this many previous items; 0: no co-clicks
    coclick_max_neighbours: int = 200
    coclick_directed: bool = True  # an item's co-clicks are the items clicked after it
    threads: int = 1  # user shards run at once (stream.core.shards)
    dedupe_window: int = 16  # event ids remembered per user (stream.core.dedupe); 0: off
    item_learn_min_clicks: float = 3.0  # stream.core.itemlearn; 0: items learn no vector
    item_seed_vectors: bool = True  # seed items met without any vector (stream.core.itemlearn)
    item_learn_every_s: float = 60.0  # learnt vectors installed once per epoch this long

    def __post_init__(self):
        if self.dim < 1 or self.top_m < 1 or self.recent_items < 1 or self.threads < 1:
            raise ValueError("dim, top_m, recent_items and threads must be >= 1")
        if self.dedupe_window < 0 or self.coclick_window < 0:
            raise ValueError("dedupe_window and coclick_window must be >= 0")
        if self.half_life_s <= 0 or self.cf_half_life_s <= 0:
            raise ValueError("half-lives must be > 0")
        if self.hysteresis_margin < 0:
            raise ValueError("hysteresis_margin must be >= 0")
        if self.item_learn_min_clicks < 0 or self.item_learn_every_s <= 0:
            raise ValueError("item_learn_min_clicks must be >= 0 and item_learn_every_s > 0")

    @property
    def half_life_ms(self) -> float:
        return self.half_life_s * 1000.0

    @property
    def cf_half_life_ms(self) -> float:
        return self.cf_half_life_s * 1000.0

    def user_dtype(self) -> np.dtype:
        return user_dtype(self.dim, self.top_m, self.recent_items, self.dedupe_window)

    def cf_table(self) -> CFTable:
        return CFTable(self.cf_half_life_ms, self.cf_max_items, self.cf_prune_below)

    @property
    def coclick_half_life_ms(self) -> float:
        return self.coclick_half_life_s * 1000.0

    def coclick_table(self) -> CoClickTable:
        return CoClickTable(
            self.coclick_half_life_ms, self.coclick_max_neighbours, directed=self.coclick_directed
        )

    def item_learner(self) -> ItemLearner | None:
        """The learner of item vectors, or None when items learn none and get no seed."""
        if not self.item_learn_min_clicks and not self.item_seed_vectors:
            return None
        return ItemLearner(
            self.dim,
            self.item_learn_min_clicks or float("inf"),
            self.item_learn_every_s * 1000.0,
            self.item_seed_vectors,
        )


@dataclass
class EngineState:
    """What ``process_batch`` reads and writes. ``cf`` and ``coclick`` are None in
    the worker's hot path (CF tables live with the owner of the cf-deltas partition);
    ``learner`` None: items keep the vectors they are given."""

    config: EngineConfig
    users: UserStore
    items: ItemCatalog
    centres: CentreSet | None = None
    cf: CFTable | None = None
    first_clicks: FirstClickCache = field(default_factory=FirstClickCache, repr=False)
    coclick: CoClickTable | None = None
    learner: ItemLearner | None = None

    @classmethod
    def in_memory(
        cls,
        config: EngineConfig,
        centres: CentreSet | None = None,
        cf: bool = True,
        coclick: bool = False,
    ):
        """A state in memory; ``coclick`` also keeps the co-click table (the
        evaluation and the reference replays of the tests have it; a worker's
        co-click tables live with the CF owners)."""
        return cls(
            config=config,
            users=InMemoryUserStore(config.user_dtype()),
            items=ItemCatalog(config.dim),
            centres=centres,
            cf=config.cf_table() if cf else None,
            coclick=config.coclick_table() if coclick else None,
            learner=config.item_learner(),
        )

    def digest(self) -> str:
        return state_digest(
            self.users.iter_chunks(), [self.cf] if self.cf is not None else [],
            coclick_tables=[self.coclick] if self.coclick is not None else [],
        )  # fmt: skip


@dataclass(frozen=True)
class AssignmentChanges:
    """Users whose memberships changed in a batch (one entry per user).

    ``before_ids``/``ids``: (n, m) int64; ``before_scores``/``scores``: (n, m) float32;
    ``ts``: (n,) int64, the user's newest click time.
    """

    user_ids: list[str]
    before_ids: np.ndarray
    before_scores: np.ndarray
    ids: np.ndarray
    scores: np.ndarray
    ts: np.ndarray  # (n,) int64: the user's newest click time

    def __len__(self) -> int:
        return len(self.user_ids)


@dataclass(frozen=True)
class CFIncrements:
    """The CF increments of a batch before aggregation, one per (click, cluster):
    ``clicks`` (n,) int64 click index in the batch, ``clusters`` (n,) int64,
    ``item_keys`` (n,) int64, ``weights`` (n,) float64 (click weight x share)."""

    clicks: np.ndarray
    clusters: np.ndarray
    item_keys: np.ndarray
    weights: np.ndarray

    @classmethod
    def empty(cls) -> CFIncrements:
        z = np.zeros(0, dtype=np.int64)
        return cls(z, z, z, np.zeros(0))


@dataclass(frozen=True)
class BatchOutputs:
    """What one batch produced, and its counters."""

    events: int
    applied: int
    unknown_items: int
    unassigned: int
    changes: AssignmentChanges
    cf_delta: CFDelta
    mean_distance: float | None
    ts_max: int | None
    increments: CFIncrements
    duplicates: int = 0  # clicks dropped as duplicates (stream.core.dedupe)
    # co-clicks (stream.core.pairs), empty with coclick_window 0; click indexes of the batch
    pairs: PairIncrements = field(default_factory=PairIncrements.empty)
    pair_delta: PairDelta = field(default_factory=PairDelta.empty)

    def cluster_ts_max(self, ts: np.ndarray) -> dict[int, int]:
        """The newest click time per cluster of the batch's CF increments
        (``ts``: the batch's (n,) int64 click times). A cluster's cf-delta
        carries its own, not the batch's: a table's clock (the time its
        scores are served at) is then the newest click of its own clusters,
        whatever batches the clicks came in (a replay after a crash cuts them
        differently).

        >>> out = BatchOutputs(3, 3, 0, 0, None, None, None, 30, CFIncrements(
        ...     np.array([0, 1, 2, 2]), np.array([5, 6, 5, 6]), np.zeros(4, dtype=np.int64),
        ...     np.ones(4)))
        >>> out.cluster_ts_max(np.array([10, 30, 20]))
        {5: 20, 6: 30}
        """
        inc = self.increments
        return _newest_per(inc.clusters, np.asarray(ts, dtype=np.int64)[inc.clicks])

    def pair_ts_max(self, ts: np.ndarray) -> dict[int, int]:
        """The newest click time per scope of the batch's co-click pairs (the
        global scope's included): a co-click table's clock, as
        :meth:`cluster_ts_max` is a CF table's. A click has pairs in every
        scope it has a CF increment in, and in the global one."""
        pairs, inc = self.pairs, self.increments
        if not len(pairs):
            return {}
        ts = np.asarray(ts, dtype=np.int64)
        has = np.zeros(len(ts), dtype=bool)
        has[pairs.clicks] = True
        sel = has[inc.clicks] & (inc.weights > 0)
        out = _newest_per(inc.clusters[sel], ts[inc.clicks[sel]])
        out[GLOBAL] = int(ts[has].max())
        return out

    def pair_delta_per_click(self, ts: np.ndarray, half_life_ms: float) -> dict[int, PairDelta]:
        """The batch's co-clicks as one :class:`PairDelta` per click that has any
        (``ts``: the batch's click times), as :meth:`cf_delta_per_click`."""
        pairs = self.pairs
        order = np.argsort(pairs.clicks, kind="stable")
        clicks = pairs.clicks[order]
        cuts = np.flatnonzero(np.diff(clicks)) + 1
        return {
            int(pairs.clicks[part[0]]): make_pair_delta(pairs.select(part), ts, half_life_ms)
            for part in np.split(order, cuts)
            if len(part)
        }

    def cf_delta_per_click(self, ts: np.ndarray, half_life_ms: float) -> list[tuple[int, CFDelta]]:
        """The batch's CF increments as one delta per click, ``[(click index, delta)]``
        (``ts``: the batch's click times); for clicks whose batch delta may
        already have been sent before a crash."""
        inc = self.increments
        out = []
        for i in np.unique(inc.clicks).tolist():
            sel = inc.clicks == i
            when = np.full(int(sel.sum()), ts[i])
            out.append(
                (
                    i,
                    make_delta(
                        inc.clusters[sel], inc.item_keys[sel], when, inc.weights[sel], half_life_ms
                    ),
                )
            )
        return out


def _newest_per(groups: np.ndarray, t: np.ndarray) -> dict[int, int]:
    """``{group: newest t}`` of (n,) int64 ``groups`` and times ``t``."""
    if not len(groups):
        return {}
    order = np.lexsort((t, groups))
    groups, t = groups[order], t[order]
    last = np.flatnonzero(np.append(groups[1:] != groups[:-1], True))
    return dict(zip(groups[last].tolist(), t[last].tolist(), strict=True))


def _pick(seq: list, index: np.ndarray) -> list:
    """``[seq[i] for i in index]``, at C speed."""
    if len(index) == 0:
        return []
    if len(index) == len(seq) and index[-1] == len(seq) - 1:  # ascending, so all of seq
        return list(seq)
    got = operator.itemgetter(*index.tolist())(seq)
    return list(got) if len(index) > 1 else [got]


def _shares(ids: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(n, m) float64 split of one click over a user's clusters, by positive score."""
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    out = np.zeros(ids.shape, dtype=np.float64)
    _shares_into(ids, np.ascontiguousarray(scores, dtype=np.float64), out)
    return out


@numba.njit(cache=True)
def _share_row(ids, scores, out):
    """One click's split over the clusters ``ids`` (m,): each cluster's positive
    score over their sum; with no positive score, all to the primary (if any)."""
    total = 0.0
    for j in range(len(ids)):
        if ids[j] >= 0:
            total += max(np.float64(scores[j]), 0.0)
    for j in range(len(ids)):
        if ids[j] < 0:
            out[j] = 0.0
        elif total > 0:
            out[j] = max(np.float64(scores[j]), 0.0) / total
        else:
            out[j] = 1.0 if j == 0 else 0.0


@numba.njit(cache=True)
def _shares_into(ids, scores, out):
    for e in range(ids.shape[0]):
        _share_row(ids[e], scores[e], out[e])


@numba.njit(cache=True)
def _increments(ids, scores, click_weights, out_clicks, out_clusters, out_weights):
    """The CF increments of clicks whose memberships after the click are
    ``ids``/``scores`` (n, m): each click's weight split by :func:`_share_row`,
    zero shares left out; returns how many."""
    share = np.empty(ids.shape[1], dtype=np.float64)
    count = 0
    for e in range(ids.shape[0]):
        _share_row(ids[e], scores[e], share)
        for j in range(ids.shape[1]):
            if share[j] > 0:
                out_clicks[count] = e
                out_clusters[count] = ids[e, j]
                out_weights[count] = click_weights[e] * share[j]
                count += 1
    return count


def process_batch(state: EngineState, batch: ClickBatch) -> BatchOutputs:
    """Apply ``batch`` to ``state`` (users, and ``state.cf`` when present); see the module doc.

    Where the item learner installs learnt vectors inside the batch
    (:meth:`ItemLearner.cuts`), the batch is applied in pieces and their
    outputs merged, so the result does not depend on the batching.
    """
    learner = state.learner
    if learner is None or not learner.learning or not len(batch):
        return _process(state, batch)
    item_rows = state.items.rows_for(batch.item_ids)
    cuts = learner.cuts(batch.ts)
    if not len(learner.pending) and state.items.given_at(item_rows).all():
        return _process(state, batch, item_rows)  # nothing learnt, nothing to learn from
    bounds = [0, *[c for c in cuts if c > 0], len(batch)]
    pieces = []
    for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
        if start in cuts:
            learner.install(state.items)
        piece = batch if (start, stop) == (0, len(batch)) else batch.slice(start, stop)
        pieces.append((start, _process(state, piece, item_rows[start:stop])))
    return pieces[0][1] if len(pieces) == 1 else _merge(pieces, batch, state.config)


def _merge(pieces: list[tuple[int, BatchOutputs]], batch: ClickBatch, cfg) -> BatchOutputs:
    """One batch's outputs from its pieces' ``[(start, outputs)]``, in order: a
    user's membership change runs from its first piece's before to its last
    piece's after (no change if it came back)."""
    outs = [out for _, out in pieces]
    inc = CFIncrements(
        np.concatenate([start + out.increments.clicks for start, out in pieces]),
        np.concatenate([out.increments.clusters for out in outs]),
        np.concatenate([out.increments.item_keys for out in outs]),
        np.concatenate([out.increments.weights for out in outs]),
    )
    delta = make_delta(inc.clusters, inc.item_keys, batch.ts[inc.clicks], inc.weights,
                       cfg.cf_half_life_ms)  # fmt: skip
    pairs = PairIncrements.concat([(start, out.pairs) for start, out in pieces])
    first: dict[str, tuple] = {}
    last: dict[str, tuple] = {}
    for out in outs:
        ch = out.changes
        for i, user in enumerate(ch.user_ids):
            first.setdefault(user, (ch.before_ids[i], ch.before_scores[i]))
            last[user] = (ch.ids[i], ch.scores[i], ch.ts[i])
    users = [u for u in last if membership_changed(first[u][0][None], last[u][0][None])[0]]
    m = cfg.top_m
    changes = AssignmentChanges(
        users,
        np.array([first[u][0] for u in users], dtype=np.int64).reshape(-1, m),
        np.array([first[u][1] for u in users], dtype=np.float32).reshape(-1, m),
        np.array([last[u][0] for u in users], dtype=np.int64).reshape(-1, m),
        np.array([last[u][1] for u in users], dtype=np.float32).reshape(-1, m),
        np.array([last[u][2] for u in users], dtype=np.int64),
    )
    weighted = [(out.mean_distance, out.applied) for out in outs if out.mean_distance is not None]
    total = sum(w for _, w in weighted)
    return BatchOutputs(
        events=sum(out.events for out in outs),
        applied=sum(out.applied for out in outs),
        unknown_items=sum(out.unknown_items for out in outs),
        unassigned=sum(out.unassigned for out in outs),
        changes=changes,
        cf_delta=delta,
        mean_distance=sum(d * w for d, w in weighted) / total if total else None,
        ts_max=max(out.ts_max for out in outs if out.ts_max is not None),
        increments=inc,
        duplicates=sum(out.duplicates for out in outs),
        pairs=pairs,
        pair_delta=make_pair_delta(pairs, batch.ts, cfg.coclick_half_life_ms),
    )


def _process(
    state: EngineState, batch: ClickBatch, item_rows: np.ndarray | None = None
) -> BatchOutputs:
    """:func:`process_batch` of a batch with no learnt vector installed inside it
    (``item_rows``: its items' catalogue rows, when known)."""
    cfg = state.config
    n = len(batch)
    m = cfg.top_m
    if n == 0:
        empty = np.zeros((0, m), dtype=np.int64)
        changes = AssignmentChanges(
            [], empty, empty.astype(np.float32), empty, empty.astype(np.float32),
            np.zeros(0, dtype=np.int64),
        )  # fmt: skip
        return BatchOutputs(0, 0, 0, 0, changes, CFDelta.empty(), None, None, CFIncrements.empty())

    items = state.items
    events = n
    if item_rows is None:
        item_rows = items.rows_for(batch.item_ids)
    if state.learner is not None:
        state.learner.seed(items, item_rows)
    has_vec = items.has_vector[item_rows]
    item_keys = items.keys[item_rows]
    hashes = str_hashes(batch.user_ids)
    first, user_pos, _ = group_keys(hashes)
    uids = _pick(batch.user_ids, first)
    in_place = getattr(state.users, "read_in_place", None)  # the store's own records
    users = (in_place or state.users.read_many)(uids, hashes[first])
    rows, at = users.rows, users.positions()
    centres = state.centres
    # the users' recent items before this batch (newest first), for the co-clicks
    recent_before = rows["recent"][at].copy() if cfg.coclick_window > 0 else None

    # 0. duplicates: dropped before anything else sees them; ``kept`` maps the
    # remaining clicks back to their index in the batch (the increments carry it)
    kept = None
    if cfg.dedupe_window and batch.event_ids:
        dup = drop_seen(rows["events"], at[user_pos], event_hashes(batch.event_ids))
        if dup.any():
            kept = np.flatnonzero(~dup)
            if not len(kept):  # every window is as it was: nothing to write
                out = _process(state, ClickBatch.from_columns([], [], []))
                return dataclasses.replace(out, events=n, duplicates=n)
            batch = ClickBatch(
                _pick(batch.user_ids, kept), _pick(batch.item_ids, kept), batch.ts[kept],
                batch.weights[kept], [],
            )  # fmt: skip
            item_rows, has_vec, item_keys = item_rows[kept], has_vec[kept], item_keys[kept]
            user_pos = user_pos[kept]
            n = len(batch)

    if centres is None:  # 1. vectors only: memberships stay as they are
        before_ids, before_scores = rows["cluster_ids"][at], rows["scores"][at]
        apply_clicks(
            rows, at[user_pos], item_rows, has_vec, items.vectors, batch.ts, batch.weights,
            item_keys, cfg.half_life_ms, np.empty((n, cfg.dim), dtype=np.float32),
            np.zeros(n, dtype=bool),
        )  # fmt: skip
        ev_ids = rows["cluster_ids"][at[user_pos]]
        ev_scores = rows["scores"][at[user_pos]]
        primary = np.zeros(0, dtype=np.float32)
        after = Memberships(rows["cluster_ids"][at], rows["scores"][at])
        t_ms = rows["t_ms"][at]
    else:  # 1-2. vectors and memberships, click by click (a user's first click: its item's)
        tables = state.first_clicks.tables(items, item_rows[has_vec], centres, m, cfg.min_score)
        got = user_phase(
            rows, at, user_pos, item_rows, has_vec, items.vectors, batch.ts, batch.weights,
            item_keys, cfg.half_life_ms, tables.ids, tables.scores, centres, cfg.min_score,
            cfg.hysteresis_margin, cfg.threads,
        )  # fmt: skip
        ev_ids, ev_scores = got.clicks.ids, got.clicks.scores
        before_ids, before_scores = got.before.ids, got.before.scores
        after, t_ms = got.after, got.t_ms
        primary = got.primary[has_vec]
    state.users.write_many(users)

    # 3. one CF increment per (click, cluster), by membership share
    ev_rep = np.empty(n * m, dtype=np.int64)
    clusters = np.empty(n * m, dtype=np.int64)
    weights = np.empty(n * m, dtype=np.float64)
    count = _increments(ev_ids, ev_scores, batch.weights, ev_rep, clusters, weights)
    ev_rep, clusters, weights = ev_rep[:count], clusters[:count], weights[:count]
    if state.learner is not None and centres is not None and count:
        state.learner.learn(items, centres, item_rows[ev_rep], clusters, weights)
    cf_rep, cf_clusters, cf_weights = ev_rep, clusters, weights
    alone = np.flatnonzero(ev_ids[:, 0] < 0)  # clicks of users without a cluster
    if len(alone):
        cf_rep = np.concatenate([ev_rep, alone])
        cf_clusters = np.concatenate([clusters, np.full(len(alone), GLOBAL, dtype=np.int64)])
        cf_weights = np.concatenate([weights, batch.weights[alone]])
    keys = item_keys[cf_rep]
    delta = make_delta(cf_clusters, keys, batch.ts[cf_rep], cf_weights, cfg.cf_half_life_ms)
    if state.cf is not None:
        state.cf.add(delta)
    pairs, pair_delta = PairIncrements.empty(), PairDelta.empty()
    if recent_before is not None:
        # a user keeps recent_items between batches: a longer window would pair
        # differently as the clicks are batched differently
        window = min(cfg.coclick_window, cfg.recent_items)
        pairs = pair_increments(recent_before, user_pos, item_keys, batch.weights, ev_rep,
                                clusters, weights, window, cfg.coclick_directed)  # fmt: skip
        pair_delta = make_pair_delta(pairs, batch.ts, cfg.coclick_half_life_ms)
        if state.coclick is not None:
            state.coclick.add(pair_delta)
        if kept is not None:
            pairs = dataclasses.replace(pairs, clicks=kept[pairs.clicks])

    clicks_of = cf_rep if kept is None else kept[cf_rep]
    changed = np.flatnonzero(membership_changed(before_ids, after.ids))
    changes = AssignmentChanges(
        _pick(uids, changed),
        before_ids[changed],
        before_scores[changed],
        after.ids[changed],
        after.scores[changed],
        t_ms[changed],
    )
    applied = int(has_vec.sum())
    return BatchOutputs(
        events=events,
        applied=applied,
        unknown_items=n - applied,
        unassigned=int(np.count_nonzero(ev_ids[:, 0] < 0)),
        changes=changes,
        cf_delta=delta,
        mean_distance=1.0 - float(primary.mean(dtype=np.float64)) if len(primary) else None,
        ts_max=int(batch.ts.max()),
        increments=CFIncrements(clicks_of, cf_clusters, keys, cf_weights),
        duplicates=events - n,
        pairs=pairs,
        pair_delta=pair_delta,
    )


def warm_up(config: EngineConfig, seed: int = 0) -> int:
    """Run :func:`process_batch` on a throwaway in-memory state so that every
    compiled kernel is loaded (numba's cache) before the first real batch: a
    worker calls it once at start, so its first batch after a start or a
    rebalance does not pay for loading them. Returns the clicks applied.

    >>> warm_up(EngineConfig(dim=8))
    128
    """
    rng = np.random.default_rng(seed)
    state = EngineState.in_memory(
        config, CentreSet.create(rng.normal(size=(4, config.dim)), created_at_ms=0)
    )
    item_ids = [f"warm-item-{i}" for i in range(16)]
    state.items.upsert_many(item_ids, rng.normal(size=(16, config.dim)).astype(np.float32))
    applied = 0
    for start in (0, 64):  # the second batch has returning users too
        users = [f"warm-user-{u}" for u in rng.integers(0, 48, 64).tolist()]
        items = [item_ids[i] for i in rng.integers(0, 16, 64).tolist()]
        ts = np.arange(start, start + 64, dtype=np.int64) * 1000
        applied += process_batch(state, ClickBatch.from_columns(users, items, ts)).applied
    return applied


def reassign(state: EngineState, user_ids: Sequence[str]) -> AssignmentChanges:
    """Re-assign users to ``state.centres`` without a click (the eager sweep
    after a merge or a recompute).

    Vectors are unchanged; retired ids are followed through the aliases and
    the hysteresis applies to the memberships found that way. Every user's
    row is written back (scores move with the centres); the users whose
    memberships changed are returned. Users without a vector are skipped.
    """
    cfg, centres = state.config, state.centres
    if centres is None:
        raise ValueError("reassign needs a centre set")
    users = state.users.read_many(list(user_ids))
    rows = users.rows
    before_ids = rows["cluster_ids"].copy()
    before_scores = rows["scores"].copy()
    has = np.flatnonzero(rows["weight"] > 0)
    live, _ = resolve_memberships(centres, before_ids[has], before_scores[has])
    got = _assign(
        unit_rows(rows["mean"][has]),
        centres.rows_of(live),
        centres,
        cfg.top_m,
        cfg.min_score,
        cfg.hysteresis_margin,
    )
    rows["cluster_ids"][has] = got.ids
    rows["scores"][has] = got.scores
    state.users.write_many(users)
    changed = np.flatnonzero(membership_changed(before_ids, rows["cluster_ids"]))
    return AssignmentChanges(
        _pick(users.ids, changed),
        before_ids[changed],
        before_scores[changed],
        rows["cluster_ids"][changed].copy(),
        rows["scores"][changed].copy(),
        rows["t_ms"][changed].copy(),
    )


def recommend(
    state: EngineState,
    user_id: str,
    n: int = 10,
    exclude_seen: bool = True,
    weights: RecallWeights | None = None,
    with_source: bool = False,
) -> list[tuple]:
    """The user's recommendations as ``[(item_id, score)]`` (``with_source``:
    ``[(item_id, score, source)]``): the blend of cluster CF, in-cluster co-clicks
    and embedding recall (:func:`stream.core.recall.recall`), best first.

    Needs ``state.cf``; a user without clicks gets an empty list.
    """
    if state.cf is None:
        raise ValueError("this state has no CF table")
    row = state.users.read_many([user_id]).rows[0]
    got = recall(state, row, n, None if exclude_seen else set(), weights)
    out = []
    for key, value, source in got:
        item = state.items.id_of_key(key)
        entry = (item if item is not None else str(key), round(value, 6))
        out.append((*entry, source) if with_source else entry)
    return out


def replay(state: EngineState, clicks: ClickBatch, batch_size: int = 1024) -> dict:
    """Run ``clicks`` through :func:`process_batch` in slices; return summed counters."""
    totals = {"events": 0, "applied": 0, "unknown_items": 0, "unassigned": 0, "changes": 0}
    totals["duplicates"] = 0
    for start in range(0, len(clicks), batch_size):
        out = process_batch(state, clicks.slice(start, start + batch_size))
        totals["events"] += out.events
        totals["duplicates"] += out.duplicates
        totals["applied"] += out.applied
        totals["unknown_items"] += out.unknown_items
        totals["unassigned"] += out.unassigned
        totals["changes"] += len(out.changes)
    return totals
