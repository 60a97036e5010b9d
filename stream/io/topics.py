"""The topics of one app, named ``<app_id>-<name>``, and how records are keyed.

| topic | key | partitions | notes |
|---|---|---|---|
| clicks | user_id | ``partitions`` | input (schemas/click) |
| clicks-dlq | source key | as clicks | rejected clicks, same partition as the click |
| items | item_id | ``partitions`` | compacted; every worker reads all of it |
| items-dlq | source key | 1 | rejected items (written by the leader) |
| centres | "centres" | 1 | compacted; versioned centre sets |
| assignments | user_id | as clicks | co-partitioned with clicks |
| cf-deltas | cluster_id | ``partitions`` | Kafka's default partitioner on the key |
| cluster-candidates | cluster_id | ``partitions`` | top items per cluster |
| users-changelog | user_id | as clicks | compacted; user records, float32 bytes |
| learnt-items | item_id | as clicks | compacted; each partition's learnt item sums, float64 bytes |
| workers | worker id | 1 | compacted; who owns what, cluster sizes (:mod:`stream.app.registry`) |

Assignments, dead letters, the users changelog and the learnt items go to the partition of the
click they come from, so everything about one user stays in one partition
number across topics. Keys and values are written and read by
:mod:`stream.wire`, partitions chosen by :mod:`stream.wire.partition`.

>>> from stream.settings import Settings
>>> names = Topics(Settings(app_id="news"))
>>> names.clicks, names.changelog
('news-clicks', 'news-users-changelog')
"""

from __future__ import annotations

from stream.io.kafka import TopicSpec
from stream.settings import Settings


class Topics:
    """Full topic names of one app."""

    def __init__(self, settings: Settings):
        t = settings.topic
        self.settings = settings
        self.clicks = t("clicks")
        self.clicks_dlq = t("clicks-dlq")
        self.items = t("items")
        self.items_dlq = t("items-dlq")
        self.centres = t("centres")
        self.assignments = t("assignments")
        self.cf_deltas = t("cf-deltas")
        self.candidates = t("cluster-candidates")
        self.changelog = t("users-changelog")
        self.learnt = t("learnt-items")
        self.workers = t("workers")

    def specs(self) -> list[TopicSpec]:
        """Every topic with its partition count and compaction."""
        p = self.settings.partitions
        return [
            TopicSpec(self.clicks, p),
            TopicSpec(self.clicks_dlq, p),
            TopicSpec(self.items, p, compacted=True),
            TopicSpec(self.items_dlq, 1),
            TopicSpec(self.centres, 1, compacted=True),
            TopicSpec(self.assignments, p),
            TopicSpec(self.cf_deltas, p),
            TopicSpec(self.candidates, p),
            TopicSpec(self.changelog, p, compacted=True),
            TopicSpec(self.learnt, p, compacted=True),
            TopicSpec(self.workers, 1, compacted=True),
        ]
