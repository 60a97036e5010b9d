"""Serving: recommendations for a user, and what a cluster is.

Any worker answers. A user's record lives with the owner of the user's
clicks partition (Kafka's murmur2 partitioning of the user id, as the click
producers use it); a request for a user owned elsewhere is forwarded to that
worker (its URL comes from the registry). The owner blends the top items of
the user's clusters by membership share, the co-click neighbours of the
user's recent items (in the user's clusters, backed off to the global
scope) and the items nearest the user's own vector
(:func:`stream.core.recall.blend`; each item says which source gave it); a
list the sources leave short, or a user with neither clusters nor recent
items, gets everyone's popular items, the sum of every cluster's CF table
(source ``popular``).
A cluster's tables (CF and co-clicks; the global scope's as cluster -1) live
with the owner of its cf-deltas partition, which is asked over HTTP when that
is another worker. Items the user clicked recently are left out on request.
"""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import numpy as np

from stream.app.cfowner import CFOwner
from stream.app.hotpath import HotPath
from stream.app.registry import RegistryView
from stream.app.runtime import Runtime
from stream.core.coclick import Row
from stream.core.pairs import GLOBAL
from stream.core.pipeline import _shares, resolve_memberships
from stream.core.recall import (
    COCLICK_PER_ITEM,
    POPULAR_DEPTH,
    all_cluster_ids,
    blend,
    coclick_recent,
    coclick_scores,
    filled,
    popular,
    trimmed,
    vector_scores,
)
from stream.errors import ClusterstreamError
from stream.wire.partition import cluster_partition, user_partition

logger = logging.getLogger(__name__)

FORWARDED = "X-Clusterstream-Forwarded"


class NotHere(ClusterstreamError):
    """The owner of what was asked is unknown (no live worker claims it)."""


class _SharedSum:
    """One popular sum of ``depth`` (a task), shared while it is read and for a
    while after it ended well."""

    def __init__(self, depth: int, sum_coro):
        self.depth = depth
        self.task = asyncio.ensure_future(sum_coro)
        self.ended = float("-inf")  # a failed or cancelled sum serves no one after
        self.task.add_done_callback(self._end)

    def _end(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is None:
            self.ended = time.monotonic()

    def serves(self, depth: int, keep_s: float) -> bool:
        if depth != self.depth:
            return False
        if not self.task.done():
            return True
        return time.monotonic() - self.ended < keep_s


class Server:
    """The logic behind the serving views of one worker."""

    def __init__(self, runtime: Runtime, hotpath: HotPath, cf: CFOwner, registry: RegistryView):
        self.runtime = runtime
        self.hotpath = hotpath
        self.cf = cf
        self.registry = registry
        self._session: aiohttp.ClientSession | None = None
        self._popular: _SharedSum | None = None

    async def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def get_json(self, url: str, params: dict) -> tuple[int, dict]:
        session = await self.session()
        async with session.get(url, params=params, headers={FORWARDED: "1"}) as resp:
            return resp.status, await resp.json()

    async def post_json(self, url: str, params: dict, timeout_s: float = 600) -> tuple[int, dict]:
        """POST to another worker (its admin endpoints: with this worker's token)."""
        session = await self.session()
        headers = {FORWARDED: "1"}
        token = self.runtime.settings.admin_token
        if token is not None:
            headers["Authorization"] = f"Bearer {token.get_secret_value()}"
        async with session.post(
            url, params=params, headers=headers,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as resp:  # fmt: skip
            return resp.status, await resp.json()

    # -- clusters ------------------------------------------------------------------
    async def cf_partitions(self) -> int:
        return await self.runtime.producer.partitions(self.runtime.topics.cf_deltas)

    async def top_items(self, cluster_id: int, n: int) -> list[tuple[str, float]]:
        """The cluster's best ``n`` items with decayed scores, from its owner."""
        partition = cluster_partition(cluster_id, await self.cf_partitions())
        part = self.cf.owned.get(partition)
        if part is not None:
            keys, scores = part.table.top(cluster_id, n)
            items = self.runtime.items
            return [
                (items.id_of_key(k) or str(k), round(s, 6))
                for k, s in zip(keys.tolist(), scores.tolist(), strict=True)
            ]
        url = self.registry.owner_of_cf(partition)
        if url is None:
            raise NotHere(f"no live worker owns cf-deltas partition {partition}")
        status, body = await self.get_json(f"{url}/clusters/{cluster_id}/top", {"n": n})
        if status != 200:
            raise NotHere(f"{url} answered {status}: {body}")
        return [(i["item_id"], i["score"]) for i in body["items"]]

    async def coclick_rows(
        self, scope: int, keys: list[int], n: int, now_ms: int | None = None
    ) -> tuple[list[tuple[int, float, list[tuple[int, float]]]], dict[int, str]]:
        """The co-click rows of item ``keys`` in ``scope`` (a cluster id, or -1:
        global) from the scope's owner, decayed to ``now_ms`` (default: the
        table's newest co-click): ``[(item key, mass, [(neighbour key, score)]
        best n)]`` (mass 0: no row) and the ids of the keys the owner knows."""
        partition = cluster_partition(scope, await self.cf_partitions())
        part = self.cf.owned.get(partition)
        if part is not None:
            rows = [(k, *part.coclick.row(scope, k, n, now_ms)) for k in keys]
            catalog = self.runtime.items
            found = {o: catalog.id_of_key(o) for _, _, top in rows for o, _ in top}
            return rows, {k: i for k, i in found.items() if i is not None}
        url = self.registry.owner_of_cf(partition)
        if url is None:
            raise NotHere(f"no live worker owns cf-deltas partition {partition}")
        params = [("n", str(n)), *(("key", str(k)) for k in keys)]
        if now_ms is not None:
            params.append(("at", str(now_ms)))
        status, body = await self.get_json(f"{url}/clusters/{scope}/coclicks", params)
        if status != 200:
            raise NotHere(f"{url} answered {status}: {body}")
        rows = [(r["key"], r["mass"], [(o, v) for _, o, v in r["top"]]) for r in body["rows"]]
        names = {o: i for r in body["rows"] for i, o, _ in r["top"] if i is not None}
        return rows, names

    async def _coclick_part(self, row, scopes, exclude_keys: set[int], weights) -> dict:
        """The co-click source for a user: :func:`stream.core.recall.coclick_scores`
        over rows gathered from their owners (all read at this worker's newest
        co-click, as eval reads its one table at its newest), by item id."""
        recent = coclick_recent(row, self.runtime.engine.coclick_window)
        if not recent:
            return {}
        clocks = [p.coclick.clock_ms for p in self.cf.owned.values() if p.coclick.clock_ms]
        now = max(clocks) if clocks else None
        wanted = [*(c for c, _ in scopes), GLOBAL]
        got = await asyncio.gather(
            *(self.coclick_rows(s, recent, COCLICK_PER_ITEM, now) for s in wanted)
        )
        rows: dict[tuple[int, int], Row] = {}
        names: dict[int, str] = {}
        for scope, (scope_rows, scope_names) in zip(wanted, got, strict=True):
            names.update(scope_names)
            rows.update({(scope, k): (mass, top) for k, mass, top in scope_rows})
        scores = coclick_scores(
            lambda scope, item: rows.get((scope, item), (0.0, [])), scopes, recent,
            exclude_keys, weights, int(row["clicks"]),
        )  # fmt: skip
        catalog = self.runtime.items
        return {names.get(k) or catalog.id_of_key(k) or str(k): v for k, v in scores.items()}

    async def cluster(self, cluster_id: int, n: int = 10) -> dict:
        centres = self.runtime.centres
        if centres is None:
            raise NotHere("no centre set yet")
        live = int(centres.resolve(np.array([cluster_id]))[0])
        out = {
            "cluster_id": cluster_id,
            "centres_version": centres.version,
            "retired": cluster_id in centres.aliases,
            "alias": centres.aliases.get(cluster_id),
            "known": live >= 0,
        }
        if live < 0:
            return out
        out["size"] = self.registry.sizes(dict(centres.aliases)).get(live, 0)
        out["size_at_version"] = int(centres.sizes[centres.rows_of(np.array([live]))[0]])
        out["top_items"] = [{"item_id": i, "score": s} for i, s in await self.top_items(live, n)]
        return out

    # -- users ------------------------------------------------------------------------
    async def owner_of_user(self, user_id: str) -> str | None:
        """None when this worker owns the user's partition, else the owner's URL."""
        partitions = await self.runtime.producer.partitions(self.runtime.topics.clicks)
        p = user_partition(user_id, partitions)
        if p in self.hotpath.owned:
            return None
        url = self.registry.owner_of_clicks(p)
        if url is None:
            raise NotHere(f"no live worker owns clicks partition {p}")
        return url

    async def recommendations(self, user_id: str, n: int = 10, exclude_seen: bool = True) -> dict:
        """Recommendations of a user this worker owns."""
        runtime = self.runtime
        partitions = await runtime.producer.partitions(runtime.topics.clicks)
        owned = self.hotpath.owned.get(user_partition(user_id, partitions))
        if owned is None:
            raise NotHere("this worker does not own the user's partition")
        async with self.hotpath.lock:
            if self.hotpath.owned.get(owned.partition) is not owned:
                raise NotHere("the user's partition moved while the request waited")
            batch = owned.store.read_many([user_id])
        row = batch.rows[0]
        centres = runtime.centres
        known = row["clicks"] > 0 or row["recent"][0] >= 0
        out = {
            "user_id": user_id,
            "known": bool(known),
            "centres_version": None,
            "memberships": [],
            "items": [],
        }
        scopes: list[tuple[int, float]] = []
        if centres is not None and row["cluster_ids"][0] >= 0:
            ids, scores = resolve_memberships(
                centres, row["cluster_ids"][None, :], row["scores"][None, :]
            )
            shares = _shares(ids, scores)[0]
            out["centres_version"] = centres.version
            cids, weights = ids[0].tolist(), shares.tolist()
            out["memberships"] = [
                {"cluster_id": c, "score": round(float(s), 6), "share": round(float(w), 6)}
                for c, s, w in zip(cids, scores[0].tolist(), weights, strict=True)
                if c >= 0
            ]
            scopes = [(c, w) for c, w in zip(cids, weights, strict=True) if c >= 0 and w > 0]
        exclude_keys = {k for k in row["recent"].tolist() if k >= 0} if exclude_seen else set()
        weights = runtime.settings.recall_weights()
        ranked = []
        if scopes or known:
            parts = await self._sources(row, scopes, exclude_keys, n, weights)
            ranked = blend(parts, weights, n)
        if len(ranked) < n:
            catalog = runtime.items
            exclude = {catalog.id_of_key(k) or str(k) for k in exclude_keys}
            depth = max(POPULAR_DEPTH, n + 50 + len(exclude))
            ranked = filled(ranked, await self.popular(depth), n, exclude)
        out["items"] = [
            {"item_id": item, "score": round(v, 6), "source": source} for item, v, source in ranked
        ]
        return out

    async def popular(self, depth: int) -> dict[str, float]:
        """Everyone's decayed popularity by item id (:func:`stream.core.recall.popular`):
        the best ``depth`` items of every cluster's CF table, from their owners
        (an owner that cannot answer is left out of the sum and logged).

        One sum of a depth serves every request of that depth while it is read
        and for ``popular_cache_s`` after: each new user's request would
        otherwise read every cluster's table, most of them over HTTP. The dict
        is shared: callers must not change it."""
        held = self._popular
        if held is None or not held.serves(depth, self.runtime.settings.popular_cache_s):
            held = self._popular = _SharedSum(depth, self._sum_popular(depth))
        return await asyncio.shield(held.task)

    async def _sum_popular(self, depth: int) -> dict[str, float]:
        ids = all_cluster_ids(self.runtime.centres)
        tops = await asyncio.gather(
            *(self.top_items(c, depth) for c in ids), return_exceptions=True
        )
        for cid, top in zip(ids, tops, strict=True):
            if isinstance(top, Exception):
                logger.warning("popular items: cluster %d left out: %s", cid, top)
        return popular(top for top in tops if not isinstance(top, Exception))

    async def _sources(self, row, scopes, exclude_keys: set[int], n: int, weights) -> dict:
        """The sources of :mod:`stream.core.recall` for a user, by item id:
        cluster CF and co-clicks from the tables' owners (here or over HTTP),
        and the user's own vector against the item catalogue."""
        catalog = self.runtime.items
        exclude = {catalog.id_of_key(k) or str(k) for k in exclude_keys}
        parts: dict[str, dict[str, float]] = {}
        if weights.cf > 0 and scopes:
            cf: dict[str, float] = {}
            for cid, share in scopes:
                for item, value in await self.top_items(cid, n + 50 + len(exclude)):
                    if item not in exclude:
                        cf[item] = cf.get(item, 0.0) + share * value
            parts["cf"] = cf
        if weights.coclick > 0 and self.runtime.engine.coclick_window > 0:
            parts["coclick"] = await self._coclick_part(row, scopes, exclude_keys, weights)
        if weights.vector > 0:
            near = vector_scores(catalog, row, exclude_keys, n + 50)
            parts["vector"] = {catalog.id_of_key(k) or str(k): v for k, v in near.items()}
        return trimmed(parts, n)
