"""Who owns what: every worker publishes a small record about itself on the
``<app>-workers`` topic (compacted, one partition; the format is
:mod:`stream.wire.workers`) and reads everybody's.

A record: ``{worker_id, url, leader, clicks_partitions, cf_partitions,
sizes: {clicks partition: {cluster id: members}}, users, ts}``. From the
latest record of each worker one gets

- the owner (its web URL) of a clicks partition or a cf-deltas partition, to
  forward a request to it;
- the leader's URL, for jobs asked of another worker;
- the live member count of every cluster: the newest report of each clicks
  partition, summed, retired ids folded onto their alias targets.

Records older than ``STALE_S`` are ignored (a worker that died).

>>> view = RegistryView()
>>> view.update({"worker_id": "a", "url": "http://a", "leader": True, "ts": 10.0,
...              "clicks_partitions": [0], "cf_partitions": [1],
...              "sizes": {"0": {"3": 5, "4": 2}}, "users": 7})
>>> view.owner_of_clicks(0, now=11.0), view.leader_url(now=11.0), view.sizes(now=11.0)
('http://a', 'http://a', {3: 5, 4: 2})
"""

from __future__ import annotations

import logging
import time
import uuid

logger = logging.getLogger(__name__)

STALE_S = 30.0


class RegistryView:
    """The latest record of every worker."""

    def __init__(self):
        self.records: dict[str, dict] = {}
        # while the broker is lost nobody can publish: records age from then on
        self.frozen_at: float | None = None

    def update(self, record: dict) -> None:
        old = self.records.get(record["worker_id"])
        if old is None or record["ts"] >= old["ts"]:
            self.records[record["worker_id"]] = record

    def live(self, now: float | None = None) -> list[dict]:
        now = time.time() if now is None else now
        if self.frozen_at is not None:
            now = min(now, self.frozen_at)
        return [r for r in self.records.values() if now - r["ts"] <= STALE_S]

    def _owner(self, field: str, partition: int, now: float | None) -> str | None:
        best = None
        for rec in self.live(now):
            if partition in rec[field] and (best is None or rec["ts"] > best["ts"]):
                best = rec
        return None if best is None else best["url"]

    def owner_of_clicks(self, partition: int, now: float | None = None) -> str | None:
        return self._owner("clicks_partitions", partition, now)

    def owner_of_cf(self, partition: int, now: float | None = None) -> str | None:
        return self._owner("cf_partitions", partition, now)

    def leader_url(self, now: float | None = None) -> str | None:
        leaders = [r for r in self.live(now) if r.get("leader")]
        return max(leaders, key=lambda r: r["ts"])["url"] if leaders else None

    def sizes(
        self, aliases: dict[int, int] | None = None, now: float | None = None
    ) -> dict[int, int]:
        """Members per cluster id, over the newest report of every clicks partition;
        ids in ``aliases`` count for their target."""
        newest: dict[int, tuple[float, dict]] = {}
        for rec in self.live(now):
            for part, sizes in rec.get("sizes", {}).items():
                p = int(part)
                if p not in newest or rec["ts"] > newest[p][0]:
                    newest[p] = (rec["ts"], sizes)
        total: dict[int, int] = {}
        aliases = aliases or {}
        for _, sizes in newest.values():
            for cid, count in sizes.items():
                live = aliases.get(int(cid), int(cid))
                total[live] = total.get(live, 0) + int(count)
        return {c: n for c, n in total.items() if n > 0}


def new_worker_id() -> str:
    return uuid.uuid4().hex[:12]
