"""Cluster recall: a user's recommendations as a blend of candidate sources.

- ``cf``: the decayed popularity of the user's clusters (:class:`stream.core.cf.CFTable`),
  blended by membership share: what the user's groups click now;
- ``coclick``: in-cluster item-to-item CF (:class:`stream.core.coclick.CoClickTable`):
  items the user's cluster co-clicks with the user's recent items, backed off to
  the global co-clicks;
- ``vector``: embedding recall, the items nearest (cosine) to the user's own vector.

A list the sources leave short is :func:`filled` from everyone's decayed
popularity (:func:`popular`, the sum of the clusters' CF tables), which is
also all a user with neither clusters nor recent items gets.

Each source's scores are divided by that source's best score (so each lies in
(0, 1]) and summed with the weights of :class:`RecallWeights`; every served
item says which source gave it most. The worker's ``recommend`` and the offline
evaluation call :func:`recall`, so what ``eval`` measures is what is served.

>>> import numpy as np
>>> from stream.core.centres import CentreSet
>>> from stream.core.clicks import ClickBatch
>>> from stream.core.pipeline import EngineConfig, EngineState, process_batch
>>> state = EngineState.in_memory(EngineConfig(dim=2, top_m=1), coclick=True)
>>> state.items.upsert_many(["a", "b", "c"], np.array([[1, 0], [1, 0.1], [0, 1]], np.float32))
>>> state.centres = CentreSet.create([[1, 0], [0, 1]], created_at_ms=0)
>>> _ = process_batch(state, ClickBatch.from_columns(["u", "u", "v"], ["a", "b", "c"], [0, 1, 2]))
>>> row = state.users.read_many(["u"]).rows[0]
>>> [(state.items.id_of_key(k), s) for k, _, s in recall(state, row, n=2)]  # nothing new near u
[]
>>> [(state.items.id_of_key(k), s) for k, _, s in recall(state, row, 2, None, RecallWeights(vector=1))]
[('c', 'vector')]
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

import numpy as np

from stream.core.assign import resolve_memberships
from stream.core.coclick import score_rows
from stream.core.items import unit_rows
from stream.core.pairs import GLOBAL

SOURCES = ("cf", "coclick", "vector")
#: Neighbours read from each co-click row.
COCLICK_PER_ITEM = 50


@dataclass(frozen=True)
class RecallWeights:
    """Weights of the candidate sources in the blend (0 turns a source off) and
    ``coclick_prior``, ``coclick_norm``, ``coclick_recency``: how co-click rows are
    scored (``prior``, ``norm``, ``recency`` of
    :meth:`stream.core.coclick.CoClickTable.scores`); ``coclick_history_prior``:
    how much of the co-click weight a user's clusters get (:func:`history_trust`)."""

    cf: float = 0.25
    coclick: float = 1.0
    vector: float = 0.0
    coclick_prior: float = 5.0
    coclick_norm: float = 0.0
    coclick_recency: float = 0.0
    coclick_history_prior: float = 0.0


def memberships(state, row) -> list[tuple[int, float]]:
    """The user's live clusters and their shares ``[(cluster id, share)]``."""
    from stream.core.pipeline import _shares  # pipeline imports this module's users

    if row["cluster_ids"][0] < 0:
        return []
    ids, scores = row["cluster_ids"][None, :], row["scores"][None, :]
    if state.centres is not None:
        ids, scores = resolve_memberships(state.centres, ids, scores)
    share = _shares(ids, scores)[0]
    return [
        (c, w) for c, w in zip(ids[0].tolist(), share.tolist(), strict=True) if c >= 0 and w > 0
    ]


def _cf_scores(state, scopes, exclude: set[int], depth: int) -> dict[int, float]:
    out: dict[int, float] = {}
    if state.cf is None:
        return out
    for cid, share in scopes:
        keys, values = state.cf.top(cid, depth)
        for key, value in zip(keys.tolist(), values.tolist(), strict=True):
            if key not in exclude:
                out[key] = out.get(key, 0.0) + share * value
    return out


def vector_scores(items, row, exclude: set[int], depth: int) -> dict[int, float]:
    """Embedding recall: ``{item key: cosine}`` of the ``depth`` items of the
    :class:`~stream.core.items.ItemCatalog` nearest the user's vector (positive
    ones, not in ``exclude``)."""
    if row["weight"] <= 0 or not items.n_with_vector:
        return {}
    u = unit_rows(row["mean"][None, :])[0]
    sims = items.vectors @ u
    sims[~items.rankable] = -np.inf
    depth = min(depth + len(exclude), len(sims))
    top = np.argpartition(-sims, depth - 1)[:depth]
    keys = items.keys[top].tolist()
    return {
        k: float(s)
        for k, s in zip(keys, sims[top].tolist(), strict=True)
        if k not in exclude and s > 0
    }


def coclick_recent(row, window: int) -> list[int]:
    """The user's ``window`` most recent item keys, oldest first: the items
    whose co-click rows give the user's candidates."""
    return [k for k in row["recent"].tolist() if k >= 0][:window][::-1]


def history_trust(clicks: int, prior: float) -> float:
    """The share of the co-click weight a user's clusters get, ``clicks / (clicks
    + prior)`` (1 with ``prior`` 0); the global rows get the rest. Clusters drawn
    from a few clicks are a noisy guess, so a new user leans on the global rows.

    >>> history_trust(5, 5.0), history_trust(0, 0.0)
    (0.5, 1.0)
    """
    return clicks / (clicks + prior) if prior > 0 else 1.0


def coclick_scores(
    row_of, scopes, recent: list[int], exclude: set[int], weights, clicks: int
) -> dict:
    """The co-click source's scores from ``row_of(scope, item)`` (a table's
    rows, or rows the worker gathered from their owners): :func:`score_rows`
    with the blend's co-click settings, the cluster shares ``scopes`` scaled by
    :func:`history_trust` of the user's ``clicks``."""
    trust = history_trust(clicks, weights.coclick_history_prior)
    return score_rows(
        row_of, [(c, share * trust) for c, share in scopes], recent, exclude,
        weights.coclick_prior, COCLICK_PER_ITEM, weights.coclick_norm, weights.coclick_recency,
    )  # fmt: skip


def candidates(
    state,
    row,
    n: int = 10,
    exclude: set[int] | None = None,
    weights: RecallWeights | None = None,
) -> dict[str, dict[int, float]]:
    """Each source's candidate scores ``{source: {item key: score}}`` for the user
    whose record is ``row`` (sources with weight 0 are left out).

    ``exclude``: item keys not to recommend (by default the user's recent items).
    """
    weights = weights or RecallWeights()
    if exclude is None:
        exclude = {k for k in row["recent"].tolist() if k >= 0}
    depth = n + 50 + len(exclude)
    scopes = memberships(state, row)
    parts: dict[str, dict[int, float]] = {}
    if weights.cf > 0 and scopes:
        parts["cf"] = _cf_scores(state, scopes, exclude, depth)
    coclick = getattr(state, "coclick", None)
    if weights.coclick > 0 and coclick is not None:
        recent = coclick_recent(row, state.config.coclick_window)
        parts["coclick"] = coclick_scores(
            lambda scope, item: coclick.row(scope, item, COCLICK_PER_ITEM),
            scopes, recent, exclude, weights, int(row["clicks"]),
        )  # fmt: skip
    if weights.vector > 0:
        parts["vector"] = vector_scores(state.items, row, exclude, n + 50)
    return trimmed(parts, n)


def trimmed(parts: dict[str, dict], n: int) -> dict[str, dict]:
    """Each source's ``n + 50`` best: the blend only reorders near the top."""
    keep = n + 50
    return {
        source: dict(heapq.nlargest(keep, scores.items(), key=lambda kv: kv[1]))
        if len(scores) > keep else scores
        for source, scores in parts.items()
    }  # fmt: skip


def blend(
    parts: dict[str, dict[int, float]], weights: RecallWeights, n: int
) -> list[tuple[int, float, str]]:
    """The best ``n`` of the sources' candidates: each source's scores over its best,
    times its weight, summed; ``[(item key, score, source that gave most)]``,
    best first (ties by key).

    >>> blend({"cf": {1: 4.0, 2: 2.0}, "vector": {2: 0.5, 3: 0.25}}, RecallWeights(cf=1, vector=1), 2)
    [(2, 1.5, 'vector'), (1, 1.0, 'cf')]
    """
    blended: dict[int, float] = {}
    best: dict[int, tuple[float, str]] = {}
    for source, scores in parts.items():
        w = getattr(weights, source)
        if not scores or w <= 0:
            continue
        top = max(scores.values())
        if top <= 0:
            continue
        w /= top
        for key, value in scores.items():
            if value <= 0:
                continue
            v = w * value
            blended[key] = blended.get(key, 0.0) + v
            if v > best.get(key, (0.0, ""))[0]:
                best[key] = (v, source)
    top_n = heapq.nsmallest(n, blended.items(), key=lambda kv: (-kv[1], kv[0]))
    return [(key, score, best[key][1]) for key, score in top_n]


#: Items read from each cluster's CF table to sum everyone's popularity: a sum of
#: short lists misses items that are good in many clusters and best in none.
POPULAR_DEPTH = 200


def popular(tops) -> dict:
    """Everyone's decayed popularity ``{item: score}`` from the top lists of
    every cluster's CF table (``tops``: iterables of ``(item, score)``): a click
    counts in its clicker's clusters by share, so the sum over the clusters is
    its weight. What fills a list the sources leave short, and all a user
    with neither clusters nor recent items gets.

    >>> popular([[("a", 2.0), ("b", 1.0)], [("b", 1.5)]])
    {'a': 2.0, 'b': 2.5}
    """
    out: dict = {}
    for top in tops:
        for item, score in top:
            out[item] = out.get(item, 0.0) + score
    return out


def popular_in(cf, cluster_ids, depth: int) -> dict[int, float]:
    """:func:`popular` of a CF table's ``cluster_ids``, ``depth`` items of each:
    ``{item key: score}``."""
    tops = (cf.top(c, depth) for c in cluster_ids)
    return popular(zip(keys.tolist(), values.tolist(), strict=True) for keys, values in tops)


def all_cluster_ids(centres) -> list[int]:
    """The ids whose CF tables hold every click: the live clusters, those merged
    away (their tables keep the clicks made before) and the global scope
    (clicks of users without a cluster, all of them before the first centre
    set, ``centres`` None)."""
    if centres is None:
        return [GLOBAL]
    return [*centres.ids.tolist(), *sorted(centres.aliases), GLOBAL]


def most_popular(popular_scores: dict, n: int, exclude=frozenset()) -> list:
    """The ``n`` items of ``popular_scores`` with the highest scores, not in
    ``exclude``, best first (ties by item).

    >>> most_popular({"a": 9.0, "b": 1.0, "c": 5.0, "d": 5.0}, 2, {"a"})
    ['c', 'd']
    """
    best = heapq.nsmallest(n + len(exclude), popular_scores.items(), key=lambda kv: (-kv[1], kv[0]))
    return [item for item, _ in best if item not in exclude][:n]


def filled(ranked: list, popular_scores: dict, n: int, exclude) -> list:
    """``ranked`` (:func:`blend`'s ``[(item, score, source)]``) topped up to ``n``
    with the :func:`most_popular` items not in it nor in ``exclude``: score 0
    (below every blended item), source ``"popular"``.

    >>> filled([("a", 1.0, "cf")], {"a": 9.0, "b": 1.0, "c": 5.0}, 3, {"c"})
    [('a', 1.0, 'cf'), ('b', 0.0, 'popular')]
    """
    if len(ranked) >= n:
        return ranked[:n]
    have = {item for item, _, _ in ranked} | set(exclude)
    more = most_popular(popular_scores, n - len(ranked), have)
    return ranked + [(item, 0.0, "popular") for item in more]


def recall(
    state,
    row,
    n: int = 10,
    exclude: set[int] | None = None,
    weights: RecallWeights | None = None,
) -> list[tuple[int, float, str]]:
    """The best ``n`` items for the user whose record is ``row``:
    :func:`blend` of :func:`candidates`."""
    weights = weights or RecallWeights()
    return blend(candidates(state, row, n, exclude, weights), weights, n)
