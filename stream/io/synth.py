"""Deterministic synthetic click streams with planted interest clusters and drift.

Tests, benchmarks, the demo and the offline evaluation all draw their data
from here, so the ground truth (which user belongs to which planted cluster,
before and after a drift) travels with the clicks.

The model, in order:

- ``C`` planted cluster centres: unit vectors, mutually orthogonal when
  ``C <= dim`` (random unit vectors pushed apart otherwise);
- items: each planted cluster owns about ``n_items / C`` of them; an item's
  vector is its home centre plus Gaussian noise of expected norm
  ``item_spread``, normalised; inside a cluster, item popularity follows
  ``rank ** -zipf_a`` over a random per-cluster ranking;
- users: spread evenly over the planted clusters (``truth_before``);
- clicks: a user (uniform, or Zipf-skewed with ``user_activity_a``) clicks,
  with probability ``1 - noise``, an item of their current cluster by Zipf
  rank, otherwise an item drawn from the global popularity (a Zipf law over a
  random global ranking);
- drift (``drift_at``): from ``drift_index`` on, ``drift_users`` of the users
  (never those of ``shrink_cluster``) move to another planted cluster; all but
  ``shrink_keep`` of the ``shrink_cluster`` users move too; with
  ``new_cluster`` a brand-new cluster (centre, ``n_items // n_clusters`` new
  items) appears and receives about half of the movers; the others go to a
  random other base cluster (never the shrinking one; a mover with no such
  cluster stays). Before the drift nobody clicks the new cluster's items.
  ``truth_after`` holds the clusters after drift.

Generation is vectorised numpy on independent ``SeedSequence`` streams, so the
same config gives identical arrays in any process, and e.g. changing
``n_events`` leaves centres, items and users unchanged.

>>> data = generate(SynthConfig(n_users=100, n_clusters=4, n_items=80, n_events=1000, seed=1))
>>> data.centres.shape, data.item_vectors.shape, data.click_item.dtype
((4, 32), (80, 32), dtype('int32'))
>>> first = next(data.click_records())
>>> first["event_id"], first["user_id"] in data.user_ids, type(first["ts"]).__name__
('e000000000', True, 'int')
>>> bool((data.truth(after_drift=True) == data.truth_before).all())
True
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import orjson

from stream.core.clicks import ClickBatch
from stream.errors import ConfigError
from stream.wire.clicks import encode_click

log = logging.getLogger(__name__)

#: Kinds of malformed raw click records produced by :meth:`SynthData.records`.
MALFORMED_KINDS: tuple[str, ...] = (
    "invalid_json",  # truncated JSON text
    "missing_user_id",  # an object without user_id
    "ts_string",  # ts encoded as a string
    "negative_weight",  # weight < 0
    "json_array",  # a JSON array instead of an object
)

_LATE_MAX_MS = 5000  # out-of-order events are moved back by 1..5000 ms
_WEIGHTED_SHARE = 0.10  # share of clicks with a weight other than 1.0
_TAGS_PER_CLUSTER = 8
_GLOBAL_TAGS = 4
_ENTITIES_PER_CLUSTER = 6
_SUBCATEGORIES = 4
_CHUNK = 65_536
_CENTRE_STEPS = 50
_CENTRE_WORK = 20_000_000  # fewer steps for thousands of centres
# independent random streams, one per concern (appending a new one is safe)
_STREAMS = (
    "centres",
    "items",
    "meta",
    "users",
    "drift",
    "clicks",
    "times",
    "weights",
    "malformed",
)


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of a synthetic stream; see the module docstring for the model."""

    n_users: int = 2000
    n_clusters: int = 8  # planted interest clusters
    n_items: int = 2000
    dim: int = 32
    n_events: int = 50_000
    seed: int = 0
    zipf_a: float = 1.2  # item popularity inside a cluster ~ rank**-zipf_a
    user_activity_a: float = 0.0  # 0 = uniform users; >0 = Zipf-skewed user activity
    noise: float = 0.1  # probability a click goes to a random item from the global popularity
    item_spread: float = 0.35  # noise added to an item's home-cluster centre before normalising
    start_ms: int = 1_700_000_000_000
    rate_per_s: float = 200.0  # mean event rate, sets timestamps (exponential gaps, deterministic)
    out_of_order: float = 0.0  # fraction of events whose ts is moved back by up to 5 s
    drift_at: float | None = None  # fraction of the stream after which drift happens
    drift_users: float = 0.2  # fraction of users that move to another planted cluster
    shrink_cluster: int | None = None  # this planted cluster loses most members at drift_at
    shrink_keep: float = 0.05  # fraction of the shrinking cluster's users that stay
    new_cluster: bool = False  # at drift_at a brand-new planted cluster appears
    malformed: float = 0.0  # fraction of records() output replaced by malformed raw records

    def __post_init__(self) -> None:
        def need(ok: bool, msg: str) -> None:
            if not ok:
                raise ConfigError(f"SynthConfig: {msg}")

        need(self.n_users >= 1, "n_users must be >= 1")
        need(self.n_clusters >= 1, "n_clusters must be >= 1")
        need(self.n_items >= self.n_clusters, "n_items must be >= n_clusters")
        need(self.dim >= 2, "dim must be >= 2")
        need(self.n_events >= 0, "n_events must be >= 0")
        need(self.seed >= 0, "seed must be >= 0")
        need(self.zipf_a >= 0, "zipf_a must be >= 0")
        need(self.user_activity_a >= 0, "user_activity_a must be >= 0")
        need(self.item_spread >= 0, "item_spread must be >= 0")
        need(self.rate_per_s > 0, "rate_per_s must be > 0")
        need(self.start_ms >= _LATE_MAX_MS, f"start_ms must be >= {_LATE_MAX_MS}")
        for name in ("noise", "out_of_order", "drift_users", "shrink_keep", "malformed"):
            need(0.0 <= getattr(self, name) <= 1.0, f"{name} must be in [0, 1]")
        need(self.drift_at is None or 0.0 <= self.drift_at <= 1.0, "drift_at must be in [0, 1]")
        if self.shrink_cluster is not None:
            need(self.drift_at is not None, "shrink_cluster needs drift_at")
            need(
                0 <= self.shrink_cluster < self.n_clusters,
                "shrink_cluster must be a planted cluster index",
            )
        if self.new_cluster:
            need(self.drift_at is not None, "new_cluster needs drift_at")


@dataclass(frozen=True, eq=False)
class SynthData:
    """A generated stream and its ground truth. Arrays are never copied on access.

    - ``centres``: (C, dim) float32 unit rows (C = n_clusters, +1 with new_cluster,
      the new cluster being the last row)
    - ``item_ids``: list[str]; ``item_vectors``: (n_items_total, dim) float32 unit rows;
      ``item_cluster``: (n_items_total,) int32 home cluster;
      ``item_subcategory`` / ``item_tags`` / ``item_entities``: per-item metadata
    - ``user_ids``: list[str]; ``truth_before`` / ``truth_after``: (n_users,) int32
    - ``click_user`` / ``click_item``: (n_events,) int32 indices into user_ids / item_ids;
      ``click_ts``: (n_events,) int64 ms; ``click_weight``: (n_events,) float64 > 0;
      all in arrival order
    - ``drift_index``: first event index after the drift (None without drift)
    - ``late_index``: sorted int64 indices of the out-of-order events
    - ``malformed_index`` / ``malformed_kind``: sorted int64 indices of the records
      :meth:`records` replaces, and int8 codes into :data:`MALFORMED_KINDS`
    """

    config: SynthConfig
    centres: np.ndarray
    item_ids: list[str]
    item_vectors: np.ndarray
    item_cluster: np.ndarray
    item_subcategory: list[str]
    item_tags: list[list[str]]
    item_entities: list[list[str]]
    user_ids: list[str]
    truth_before: np.ndarray
    truth_after: np.ndarray
    click_user: np.ndarray
    click_item: np.ndarray
    click_ts: np.ndarray
    click_weight: np.ndarray
    drift_index: int | None
    late_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    malformed_index: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    malformed_kind: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))

    @property
    def n_events(self) -> int:
        return int(self.click_user.shape[0])

    @property
    def n_planted(self) -> int:
        """Number of planted clusters, the new one included."""
        return int(self.centres.shape[0])

    @property
    def malformed_kinds(self) -> dict[int, str]:
        """``{event index: kind}`` of every record :meth:`records` replaces."""
        return {
            int(i): MALFORMED_KINDS[k]
            for i, k in zip(
                self.malformed_index.tolist(), self.malformed_kind.tolist(), strict=True
            )
        }

    def truth(self, after_drift: bool = False) -> np.ndarray:
        """(n_users,) int32 planted cluster of each user, before or after the drift."""
        return self.truth_after if after_drift else self.truth_before

    def _range(self, start: int, stop: int | None) -> range:
        return range(self.n_events)[start:stop]

    def click_records(self, start: int = 0, stop: int | None = None) -> Iterator[dict]:
        """Click dicts ``start:stop`` in arrival order, per schemas/click.

        ``{"event_id", "user_id", "item_id", "ts", "weight"}``; weight is left
        out when it is 1.0. Every event is here, also those :meth:`records`
        replaces with a malformed record.
        """
        r = self._range(start, stop)
        uids, iids = self.user_ids, self.item_ids
        for lo in range(r.start, r.stop, _CHUNK):
            hi = min(lo + _CHUNK, r.stop)
            users = self.click_user[lo:hi].tolist()
            items = self.click_item[lo:hi].tolist()
            ts = self.click_ts[lo:hi].tolist()
            weights = self.click_weight[lo:hi].tolist()
            for k in range(hi - lo):
                rec = {
                    "event_id": f"e{lo + k:09d}",
                    "user_id": uids[users[k]],
                    "item_id": iids[items[k]],
                    "ts": ts[k],
                }
                if weights[k] != 1.0:
                    rec["weight"] = weights[k]
                yield rec

    def records(self, start: int = 0, stop: int | None = None) -> Iterator[bytes]:
        """Raw Kafka values (orjson bytes) ``start:stop``, malformed ones included.

        The event at each index of :attr:`malformed_kinds` is replaced by a
        malformed record of that kind (it keeps the event_id where the record
        is still a JSON object).
        """
        r = self._range(start, stop)
        bad = self.malformed_index
        lo_bad, hi_bad = np.searchsorted(bad, [r.start, max(r.start, r.stop)])
        bad_at = dict(
            zip(
                bad[lo_bad:hi_bad].tolist(),
                self.malformed_kind[lo_bad:hi_bad].tolist(),
                strict=True,
            )
        )
        dumps = encode_click
        for i, rec in enumerate(self.click_records(r.start, r.stop), start=r.start):
            kind = bad_at.get(i)
            yield dumps(rec) if kind is None else _malform(rec, MALFORMED_KINDS[kind])

    def item_records(self, with_vectors: bool = True) -> Iterator[dict]:
        """Item dicts for the items topic, ``ts = start_ms - 1`` (before any click).

        ``{"item_id", "ts", "vector"}`` with vectors, else
        ``{"item_id", "ts", "category", "subcategory", "tags", "entities"}``.
        """
        ts = self.config.start_ms - 1
        if with_vectors:
            for item_id, vec in zip(self.item_ids, self.item_vectors.tolist(), strict=True):
                yield {"item_id": item_id, "ts": ts, "vector": vec}
            return
        homes = self.item_cluster.tolist()
        for i, item_id in enumerate(self.item_ids):
            yield {
                "item_id": item_id,
                "ts": ts,
                "category": f"topic-{homes[i]}",
                "subcategory": self.item_subcategory[i],
                "tags": list(self.item_tags[i]),
                "entities": list(self.item_entities[i]),
            }

    def click_batch(self, start: int = 0, stop: int | None = None) -> ClickBatch:
        """The clicks ``start:stop`` as a :class:`~stream.core.clicks.ClickBatch`."""
        r = self._range(start, stop)
        sl = slice(r.start, max(r.start, r.stop))
        uids, iids = self.user_ids, self.item_ids
        return ClickBatch.from_columns(
            [uids[u] for u in self.click_user[sl].tolist()],
            [iids[i] for i in self.click_item[sl].tolist()],
            self.click_ts[sl],
            self.click_weight[sl],
            [f"e{i:09d}" for i in range(sl.start, sl.stop)],
        )


def _malform(rec: dict, kind: str) -> bytes:
    """One malformed raw record of ``kind`` derived from the valid click ``rec``."""
    if kind == "invalid_json":
        text = orjson.dumps(rec)
        return text[: len(text) // 2]  # a strict prefix of an object is never valid JSON
    if kind == "json_array":
        return orjson.dumps(list(rec.values()))
    bad = dict(rec)
    if kind == "missing_user_id":
        del bad["user_id"]
    elif kind == "ts_string":
        bad["ts"] = str(bad["ts"])
    elif kind == "negative_weight":
        bad["weight"] = -float(bad.get("weight", 1.0))
    else:  # pragma: no cover - MALFORMED_KINDS is closed
        raise ValueError(kind)
    return orjson.dumps(bad)


# --------------------------------------------------------------------------- generation


def generate(config: SynthConfig | None = None) -> SynthData:
    """Generate the stream described by ``config`` (defaults when None)."""
    cfg = config or SynthConfig()
    rngs = dict(
        zip(
            _STREAMS,
            (
                np.random.default_rng(s)
                for s in np.random.SeedSequence(cfg.seed).spawn(len(_STREAMS))
            ),
            strict=True,
        )
    )
    n_base = cfg.n_clusters
    n_total = n_base + (1 if cfg.new_cluster else 0)

    centres = _centres(rngs["centres"], n_total, cfg.dim)
    n_new_items = max(1, cfg.n_items // n_base) if cfg.new_cluster else 0
    item_cluster = _item_homes(rngs["items"], cfg.n_items, n_base, n_new_items)
    item_vectors = _item_vectors(rngs["items"], centres, item_cluster, cfg.item_spread)
    subcats, tags, entities = _item_meta(rngs["meta"], item_cluster)

    truth_before = _balanced(rngs["users"], cfg.n_users, n_base)
    drift_index = None
    truth_after = truth_before
    if cfg.drift_at is not None:
        drift_index = int(round(cfg.drift_at * cfg.n_events))
        truth_after = _drift(rngs["drift"], truth_before, cfg)

    sampler = _ItemSampler(rngs["items"], item_cluster, n_total, n_base, cfg.zipf_a)
    click_user, click_item = _clicks(
        rngs["clicks"], cfg, truth_before, truth_after, drift_index, sampler
    )
    click_ts, late_index = _timestamps(rngs["times"], cfg)
    click_weight = _weights(rngs["weights"], cfg.n_events)
    malformed_index, malformed_kind = _malformed(rngs["malformed"], cfg)

    n_items_total = item_cluster.shape[0]
    return SynthData(
        config=cfg,
        centres=centres,
        item_ids=["i%05d" % i for i in range(n_items_total)],  # noqa: UP031
        item_vectors=item_vectors,
        item_cluster=item_cluster,
        item_subcategory=subcats,
        item_tags=tags,
        item_entities=entities,
        user_ids=["u%06d" % u for u in range(cfg.n_users)],  # noqa: UP031 (%-format is the cheaper here)
        truth_before=truth_before,
        truth_after=truth_after,
        click_user=click_user,
        click_item=click_item,
        click_ts=click_ts,
        click_weight=click_weight,
        drift_index=drift_index,
        late_index=late_index,
        malformed_index=malformed_index,
        malformed_kind=malformed_kind,
    )


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(np.float32)


def _centres(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    """(n, dim) float32 unit rows; orthonormal when n <= dim, else spread apart.

    With more centres than dimensions, random unit vectors are pushed apart by
    a few projected-gradient steps on ``sum cos**8`` (a soft max of the pairwise
    cosines), which roughly halves the worst pairwise cosine.
    """
    g = rng.standard_normal((dim, n))
    if n <= dim:
        q, r = np.linalg.qr(g)
        return np.ascontiguousarray((q * np.sign(np.diag(r))).T, dtype=np.float32)
    x = g.T / np.linalg.norm(g.T, axis=1, keepdims=True)
    for _ in range(min(_CENTRE_STEPS, max(10, _CENTRE_WORK // (n * n)))):
        cos = x @ x.T
        np.fill_diagonal(cos, 0.0)
        cos3 = cos * cos * cos
        grad = (cos3 * cos3 * cos) @ x  # d/dx of sum cos**8 / 8
        grad -= (grad * x).sum(axis=1, keepdims=True) * x  # tangent to the sphere
        x = x - 0.05 * grad / max(float(np.abs(grad).max()), 1e-12)
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return _normalise(x)


def _balanced(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """(n,) int32 labels 0..k-1, sizes differing by at most one, in random order."""
    return rng.permutation(np.arange(n, dtype=np.int32) % k).astype(np.int32)


def _item_homes(rng: np.random.Generator, n_items: int, n_base: int, n_new: int) -> np.ndarray:
    base = _balanced(rng, n_items, n_base)
    return np.concatenate([base, np.full(n_new, n_base, dtype=np.int32)])


def _item_vectors(
    rng: np.random.Generator, centres: np.ndarray, homes: np.ndarray, spread: float
) -> np.ndarray:
    dim = centres.shape[1]
    noise = rng.standard_normal((homes.shape[0], dim)) * (spread / np.sqrt(dim))
    return _normalise(centres[homes].astype(np.float64) + noise)


def _item_meta(
    rng: np.random.Generator, homes: np.ndarray
) -> tuple[list[str], list[list[str]], list[list[str]]]:
    """Subcategory, 2-4 tags (cluster pool + a few global) and 0-2 entities per item."""
    n = homes.shape[0]
    sub = rng.integers(0, _SUBCATEGORIES, n).tolist()
    # weighted sampling without replacement (Gumbel top-k): cluster tags twice as likely
    slot_w = np.r_[np.ones(_TAGS_PER_CLUSTER), np.full(_GLOBAL_TAGS, 0.5)]
    keys = np.log(slot_w) + rng.gumbel(size=(n, slot_w.size))
    tag_slots = np.argsort(-keys, axis=1)[:, :4].tolist()
    n_tags = rng.integers(2, 5, n).tolist()
    ent_slots = np.argsort(rng.random((n, _ENTITIES_PER_CLUSTER)), axis=1)[:, :2].tolist()
    n_ents = rng.integers(0, 3, n).tolist()
    subcats, tags, entities = [], [], []
    for i, h in enumerate(homes.tolist()):
        subcats.append(f"topic-{h}-sub{sub[i]}")
        tags.append(
            [
                f"c{h}-tag{s}" if s < _TAGS_PER_CLUSTER else f"tag-g{s - _TAGS_PER_CLUSTER}"
                for s in tag_slots[i][: n_tags[i]]
            ]
        )
        entities.append([f"c{h}-ent{e}" for e in ent_slots[i][: n_ents[i]]])
    return subcats, tags, entities


def _drift(rng: np.random.Generator, before: np.ndarray, cfg: SynthConfig) -> np.ndarray:
    """(n_users,) int32 clusters after the drift (see the module docstring)."""
    n_base = cfg.n_clusters
    after = before.copy()
    shrink = cfg.shrink_cluster
    in_shrink = before == shrink if shrink is not None else np.zeros(before.shape, bool)

    candidates = np.flatnonzero(~in_shrink)
    k = min(int(round(cfg.drift_users * cfg.n_users)), candidates.size)
    movers = rng.choice(candidates, size=k, replace=False) if k else candidates[:0]
    if shrink is not None:
        members = np.flatnonzero(in_shrink)
        n_keep = int(round(cfg.shrink_keep * members.size))
        leavers = rng.permutation(members)[n_keep:]
        movers = np.concatenate([movers, leavers])
    movers = np.sort(movers)
    if movers.size == 0:
        return after

    # destination table: for each origin, the other base clusters (never the shrinking one)
    table = np.full((n_base, max(n_base - 1, 1)), -1, dtype=np.int32)
    n_allowed = np.zeros(n_base, dtype=np.int64)
    for c in range(n_base):
        allowed = [d for d in range(n_base) if d != c and d != shrink]
        table[c, : len(allowed)] = allowed
        n_allowed[c] = len(allowed)
    origin = before[movers]
    pick = np.floor(rng.random(movers.size) * np.maximum(n_allowed[origin], 1)).astype(np.int64)
    dest = np.where(n_allowed[origin] > 0, table[origin, pick], origin)
    if cfg.new_cluster:
        to_new = rng.random(movers.size) < 0.5
        dest = np.where(to_new | (n_allowed[origin] == 0), n_base, dest)
    after[movers] = dest.astype(np.int32)
    return after


class _ItemSampler:
    """Zipf item sampling for many groups in one ``searchsorted`` call.

    Groups ``0..C-1`` are the planted clusters (their own items, ranked by a
    random per-cluster permutation); group ``C`` is the global popularity over
    the base items (before drift) and ``C + 1`` over all items (after drift,
    the new cluster's items inserted at random ranks). Group ``g``'s CDF is
    stored shifted by ``g``, so ``searchsorted(cdf, g + u)`` picks inside it.
    """

    def __init__(
        self, rng: np.random.Generator, homes: np.ndarray, n_total: int, n_base: int, a: float
    ):
        n_items = homes.shape[0]
        base_items = np.flatnonzero(homes < n_base)
        groups: list[np.ndarray] = []
        for c in range(n_total):
            groups.append(rng.permutation(np.flatnonzero(homes == c)))
        pre = rng.permutation(base_items)
        keys = np.empty(n_items)
        keys[pre] = np.arange(pre.size)
        new_items = np.flatnonzero(homes >= n_base)
        keys[new_items] = rng.random(new_items.size) * pre.size
        post = np.argsort(keys, kind="stable")
        groups += [pre, post]
        self.global_pre = n_total
        self.global_post = n_total + 1

        sizes = np.array([g.size for g in groups], dtype=np.int64)
        self.offsets = np.r_[0, np.cumsum(sizes)]
        self.items = np.concatenate(groups).astype(np.int32)
        cdfs = []
        for g, size in enumerate(sizes.tolist()):
            w = np.arange(1, size + 1, dtype=np.float64) ** -a
            cdf = np.cumsum(w) / w.sum()
            cdf[-1] = 1.0
            cdfs.append(cdf + g)
        self.cdf = np.concatenate(cdfs)

    def sample(self, rng: np.random.Generator, group: np.ndarray) -> np.ndarray:
        """(n,) int32 item indices, one Zipf draw inside each click's ``group``."""
        u = rng.random(group.shape[0])
        idx = np.searchsorted(self.cdf, group + u, side="right")
        idx = np.clip(idx, self.offsets[group], self.offsets[group + 1] - 1)
        return self.items[idx]


def _clicks(
    rng: np.random.Generator,
    cfg: SynthConfig,
    before: np.ndarray,
    after: np.ndarray,
    drift_index: int | None,
    sampler: _ItemSampler,
) -> tuple[np.ndarray, np.ndarray]:
    n = cfg.n_events
    if cfg.user_activity_a > 0:
        order = rng.permutation(cfg.n_users)
        w = np.arange(1, cfg.n_users + 1, dtype=np.float64) ** -cfg.user_activity_a
        cdf = np.cumsum(w)
        cdf /= cdf[-1]
        u = rng.random(n)
        order_u = np.argsort(u)  # sorted queries: cache-friendly on a large cdf, same result
        rank = np.empty(n, dtype=np.int64)
        rank[order_u] = np.searchsorted(cdf, u[order_u], side="right")
        np.minimum(rank, cfg.n_users - 1, out=rank)
        users = order[rank].astype(np.int32)
    else:
        users = rng.integers(0, cfg.n_users, n, dtype=np.int32)
    cut = n if drift_index is None else drift_index
    group = np.empty(n, dtype=np.int64)
    group[:cut] = before[users[:cut]]
    group[cut:] = after[users[cut:]]
    noisy = rng.random(n) < cfg.noise
    global_group = np.full(n, sampler.global_pre, dtype=np.int64)
    global_group[cut:] = sampler.global_post
    group = np.where(noisy, global_group, group)
    return users, sampler.sample(rng, group)


def _timestamps(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    n = cfg.n_events
    gaps = rng.exponential(1000.0 / cfg.rate_per_s, n)
    ts = cfg.start_ms + np.floor(np.cumsum(gaps)).astype(np.int64)
    k = int(round(cfg.out_of_order * n))
    late = (
        np.sort(rng.choice(n, size=k, replace=False)).astype(np.int64)
        if k
        else np.zeros(0, np.int64)
    )
    ts[late] -= rng.integers(1, _LATE_MAX_MS + 1, late.size)
    return ts, late


def _weights(rng: np.random.Generator, n: int) -> np.ndarray:
    w = np.ones(n)
    weighted = rng.random(n) < _WEIGHTED_SHARE
    w[weighted] = np.round(rng.uniform(0.5, 3.0, int(weighted.sum())), 2)
    return w


def _malformed(rng: np.random.Generator, cfg: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    k = int(round(cfg.malformed * cfg.n_events))
    if k == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int8)
    index = np.sort(rng.choice(cfg.n_events, size=k, replace=False)).astype(np.int64)
    kinds = rng.permutation(np.arange(k) % len(MALFORMED_KINDS)).astype(np.int8)
    return index, kinds


# --------------------------------------------------------------------------- files


def write_jsonl(path: str | Path, records: Iterable[dict | bytes]) -> int:
    """Write one JSON document per line (dicts are orjson-encoded, bytes written as is).

    Creates parent directories; returns the number of lines written.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with path.open("wb") as f:
        for rec in records:
            f.write(rec if isinstance(rec, bytes) else orjson.dumps(rec))
            f.write(b"\n")
            n += 1
    return n


def write_dataset(directory: str | Path, config: SynthConfig | SynthData) -> dict[str, Path]:
    """Write a generated dataset as files and return their paths.

    - ``clicks.jsonl``: :meth:`SynthData.records` (malformed lines included)
    - ``items.jsonl``: items with vectors; ``items_meta.jsonl``: metadata only
    - ``truth.json``: ``{"before": {user_id: cluster}, "after": {...}, "drift_index": int|None}``
    """
    data = config if isinstance(config, SynthData) else generate(config)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = {
        "clicks": directory / "clicks.jsonl",
        "items": directory / "items.jsonl",
        "items_meta": directory / "items_meta.jsonl",
        "truth": directory / "truth.json",
    }
    write_jsonl(paths["clicks"], data.records())
    write_jsonl(paths["items"], data.item_records(with_vectors=True))
    write_jsonl(paths["items_meta"], data.item_records(with_vectors=False))
    truth = {
        "before": dict(zip(data.user_ids, data.truth_before.tolist(), strict=True)),
        "after": dict(zip(data.user_ids, data.truth_after.tolist(), strict=True)),
        "drift_index": data.drift_index,
    }
    paths["truth"].write_bytes(orjson.dumps(truth))
    log.info("wrote synthetic dataset to %s (%d events)", directory, data.n_events)
    return paths
