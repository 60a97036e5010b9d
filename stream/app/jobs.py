"""Jobs of the leader worker. The bodies are core functions; faust schedules them.

Bootstrap
    While no centre set exists, the leader checks once a second how many of
    its users have a vector; at ``bootstrap_users`` it runs the core recompute
    on them (k = ``k``, or fewer when there are fewer users) and publishes
    version 1 (reason "bootstrap"). Until then clicks move user vectors but
    nobody has a cluster and no CF is learnt.

Merge (dynamic rule, every ``merge_interval_s`` and on demand)
    Live member counts come from the workers' registry records; clusters
    below ``min_cluster_size`` are merged (:func:`stream.core.merge.plan_merges`)
    and the next version (reason "merge") is published.

Recompute (``recompute_cron`` on the leader, on demand, on drift)
    All user vectors are read from the users changelog; the core recompute
    (faiss k-means, elbow over ``k_range`` when set, Hungarian id matching)
    gives the next version (reason "recompute") with its figures.

After a new version every worker re-assigns its users: lazily at their next
click, and eagerly by the sweep of :mod:`stream.app.hotpath`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from stream.app.hotpath import HotPath
from stream.app.registry import RegistryView
from stream.app.runtime import Runtime
from stream.core.centres import CentreSet
from stream.core.items import unit_rows
from stream.core.merge import MergePlan, apply_merges, merge_threshold, plan_merges
from stream.core.recompute import publish_verdict, recompute
from stream.errors import ClusterstreamError
from stream.io.changelog import ChangelogRead, read_user_vectors
from stream.settings import Settings
from stream.wire.centres import CENTRES_KEY, encode_centres

logger = logging.getLogger(__name__)


class JobError(ClusterstreamError):
    """A job that cannot run now (no centres yet, another job running, ...)."""


def owned_user_vectors(hotpath: HotPath, limit: int | None = None) -> np.ndarray:
    """(n, d) float32 unit vectors of the users in this worker's stores."""
    parts = []
    total = 0
    for owned in list(hotpath.owned.values()):
        for _, rows in owned.store.iter_chunks():
            has = rows["weight"] > 0
            parts.append(unit_rows(rows["mean"][has]))
            total += int(has.sum())
            if limit is not None and total >= limit:
                break
    if not parts:
        return np.zeros((0, hotpath.runtime.engine.dim), dtype=np.float32)
    return np.concatenate(parts)


async def publish_centres(runtime: Runtime, centres: CentreSet) -> None:
    """Publish a centre set on the centres topic (the feeds install it everywhere)."""
    await runtime.producer.send_one(
        runtime.topics.centres, CENTRES_KEY, encode_centres(centres), partition=0
    )
    logger.info(
        "published centres version %d (%s, k=%d)", centres.version, centres.reason, centres.k
    )


def merge_plan(centres: CentreSet, sizes: dict[int, int], min_size: int) -> MergePlan:
    """The merge plan for live ``sizes`` (ids missing there have no members)."""
    return plan_merges({cid: sizes.get(cid, 0) for cid in centres.ids.tolist()}, centres, min_size)


def merge_min_size(settings: Settings, sizes: dict[int, int]) -> int:
    """The merge threshold for a population of ``sum(sizes)`` members (settings'
    floor and share, :func:`stream.core.merge.merge_threshold`)."""
    members = sum(sizes.values())
    return merge_threshold(members, settings.min_cluster_size, settings.min_cluster_share)


def merge_report(plan: MergePlan, published: CentreSet | None) -> dict:
    report = plan.as_dict()
    report["sizes_before"] = {str(k): v for k, v in plan.sizes_before.items()}
    report["sizes_after"] = {str(k): v for k, v in plan.sizes_after.items()}
    report["published_version"] = published.version if published is not None else None
    return report


def recompute_report(
    read: ChangelogRead,
    previous: CentreSet | None,
    settings: Settings,
    k: int | None = None,
    k_range: tuple[int, int] | None = None,
    sample: int | None = None,
) -> tuple[CentreSet, dict]:
    """The recompute of the leader's job and of ``clusterstream recompute`` over the
    vectors of ``read``: ``k`` as given, else by the elbow over ``k_range`` or the
    settings' range, else the previous set's k (``settings.k`` without one), never
    more than there are users; ids matched to ``previous``. Returns the new set and
    its report: the recompute's figures, what was read, and ``withheld`` (why it
    must not be published, :func:`stream.core.recompute.publish_verdict`, or None;
    ``published_version`` None until the caller publishes)."""
    k_range = k_range or settings.k_bounds()
    if k is None and k_range is None:
        k = previous.k if previous is not None else settings.k
    k = None if k is None else min(k, len(read.vectors))
    centres, stats = recompute(
        read.vectors, previous, k=k, k_range=k_range, seed=settings.seed,
        sample=sample or settings.recompute_sample, match_threshold=settings.match_threshold,
        reason="recompute" if previous is not None else "bootstrap",
        created_at_ms=int(time.time() * 1000),
    )  # fmt: skip
    report = stats.as_dict()
    report.update(
        withheld=publish_verdict(stats, settings.recompute_max_churn, settings.recompute_min_gain),
        users_read=read.users,
        changelog_records=read.records,
        seconds_read=round(read.seconds, 3),
        published_version=None,
    )
    return centres, report


class Jobs:
    """The leader's jobs, one at a time, off the hot path's thread."""

    def __init__(self, runtime: Runtime, hotpath: HotPath, registry: RegistryView):
        self.runtime = runtime
        self.hotpath = hotpath
        self.registry = registry
        self.lock = asyncio.Lock()
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="jobs")
        self.runs: dict[str, int] = {"bootstrap": 0, "merge": 0, "recompute": 0}
        self.last: dict[str, dict] = {}
        self.last_recompute_at = 0.0
        self.first_user_at: float | None = None
        self.next_bootstrap_try = 0.0
        self.bootstrap_waiting: str | None = None
        # (job, "published" | "skipped" | "failed") -> runs, for /metrics
        self.outcomes: dict[tuple[str, str], int] = {}

    def _ended(self, job: str, result: str, started: float) -> None:
        key = (job, result)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        self.runtime.metrics.job_duration.labels(job).observe(time.perf_counter() - started)

    async def _counted(self, job: str, run) -> dict:
        """Await the job ``run`` and count its outcome: published when its report
        has a published version, skipped on a dry run, an empty plan or a
        :class:`JobError`, failed on any other error."""
        started = time.perf_counter()
        try:
            report = await run
        except JobError:
            self._ended(job, "skipped", started)
            raise
        except Exception:
            self._ended(job, "failed", started)
            raise
        published = report.get("published_version") is not None
        self._ended(job, "published" if published else "skipped", started)
        return report

    async def _off_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    def _bootstrap_wait(self, users: int, with_vector: int | None = None) -> str | None:
        """What the first centre set waits for, or None when it can be made now:
        ``bootstrap_users`` users with a vector, or after ``bootstrap_after_s``
        since the first user, ``bootstrap_min_users``."""
        settings = self.runtime.settings
        now = time.monotonic()
        if users and self.first_user_at is None:
            self.first_user_at = now
        have = users if with_vector is None else with_vector
        if have >= settings.bootstrap_users:
            return None
        waited = now - self.first_user_at if self.first_user_at is not None else 0.0
        if waited >= settings.bootstrap_after_s and have >= settings.bootstrap_min_users:
            return None
        counted = "users" if with_vector is None else "users with a vector"
        return (
            f"{settings.bootstrap_users} users with a vector (have {have} {counted}), or "
            f"{settings.bootstrap_min_users} once {settings.bootstrap_after_s:g} s have passed "
            f"since the first user ({waited:.0f} s so far)"
        )

    def _note_wait(self, why: str | None) -> None:
        if why is not None and self.bootstrap_waiting is None:
            logger.info("first centre set: waiting for %s", why)
        self.bootstrap_waiting = why

    async def bootstrap_if_needed(self) -> CentreSet | None:
        runtime, hotpath = self.runtime, self.hotpath
        if runtime.centres is not None or not runtime.is_leader():
            self.bootstrap_waiting = None
            return None
        why = self._bootstrap_wait(hotpath.users())
        self._note_wait(why)
        if why is not None or self.lock.locked() or time.monotonic() < self.next_bootstrap_try:
            return None
        started = time.perf_counter()
        try:
            return await self._bootstrap(started)
        except Exception:
            self._ended("bootstrap", "failed", started)
            raise

    async def _bootstrap(self, started: float) -> CentreSet | None:
        runtime, hotpath = self.runtime, self.hotpath
        settings = runtime.settings
        async with self.lock:
            async with hotpath.lock:
                await hotpath.flush_all()
                vectors = await hotpath.off_loop(owned_user_vectors, hotpath)
            why = self._bootstrap_wait(hotpath.users(), len(vectors))
            self._note_wait(why)
            if why is not None or runtime.centres is not None:
                # each try flushes: not every second
                self.next_bootstrap_try = time.monotonic() + 5.0
                return None
            # a small population gets fewer clusters: ~5 users each at least
            k = min(settings.k, max(1, len(vectors) // 5))
            centres, stats = await self._off_thread(
                lambda: recompute(
                    vectors, None, k=k, seed=settings.seed, reason="bootstrap",
                    created_at_ms=int(time.time() * 1000),
                )
            )  # fmt: skip
            await publish_centres(runtime, centres)
            runtime.install_centres(centres)
            self.runs["bootstrap"] += 1
            self.last["bootstrap"] = stats.as_dict()
            self._ended("bootstrap", "published", started)
            logger.info(
                "bootstrap: k=%d from %d users in %.2fs", stats.k, stats.n_vectors, stats.seconds
            )
            return centres

    async def merge(self, min_size: int | None = None, dry_run: bool = False) -> dict:
        """Plan (and unless ``dry_run`` publish) the merges of under-sized clusters."""
        return await self._counted("merge", self._merge(min_size, dry_run))

    async def _merge(self, min_size: int | None, dry_run: bool) -> dict:
        runtime = self.runtime
        centres = runtime.centres
        if centres is None:
            raise JobError("no centre set yet: nothing to merge")
        async with self.lock:
            sizes = self.registry.sizes(dict(centres.aliases))
            if min_size is None:
                min_size = merge_min_size(runtime.settings, sizes)
            plan = merge_plan(centres, sizes, min_size)
            published = None
            if plan and not dry_run:
                published = apply_merges(centres, plan, int(time.time() * 1000))
                await publish_centres(runtime, published)
                runtime.install_centres(published)
            self.runs["merge"] += 1
            report = merge_report(plan, published)
            report["dry_run"] = dry_run
            self.last["merge"] = report
            return report

    async def recompute(
        self,
        k: int | None = None,
        k_range: tuple[int, int] | None = None,
        sample: int | None = None,
        dry_run: bool = False,
        why: str = "request",
    ) -> dict:
        """Recompute the centres from every user vector in the users changelog."""
        return await self._counted("recompute", self._recompute(k, k_range, sample, dry_run, why))

    async def _recompute(
        self,
        k: int | None,
        k_range: tuple[int, int] | None,
        sample: int | None,
        dry_run: bool,
        why: str,
    ) -> dict:
        runtime = self.runtime
        settings = runtime.settings
        async with self.lock:
            started = time.perf_counter()
            # this worker's newest vectors into the changelog first; other workers
            # flush theirs at least every flush_interval_s
            async with self.hotpath.lock:
                await self.hotpath.flush_all()
            read = await read_user_vectors(
                settings,
                runtime.topics.changelog,
                runtime.engine.user_dtype(),
                sample,
                settings.seed,
            )
            if len(read.vectors) == 0:
                raise JobError("no user has a vector yet")
            previous = runtime.centres
            centres, report = await self._off_thread(
                recompute_report, read, previous, settings, k, k_range, sample
            )
            report.update(
                why=why,
                dry_run=dry_run,
                seconds_total=round(time.perf_counter() - started, 3),
            )
            if report["withheld"]:
                logger.warning("recompute (%s) not published: %s", why, report["withheld"])
            elif not dry_run:
                await publish_centres(runtime, centres)
                runtime.install_centres(centres)
                report["published_version"] = centres.version
                self.last_recompute_at = time.time()
            self.runs["recompute"] += 1
            self.last["recompute"] = report
            logger.info("recompute (%s): %s", why, report)
            return report

    async def recompute_on_drift(self) -> None:
        """Called when the drift watch fires: recompute, at most once per
        ``min_recompute_interval_s``, if ``recompute_on_drift`` is on."""
        settings = self.runtime.settings
        if not settings.recompute_on_drift or not self.runtime.is_leader():
            return
        if time.time() - self.last_recompute_at < settings.min_recompute_interval_s:
            logger.info(
                "drift: a recompute ran less than %ss ago", settings.min_recompute_interval_s
            )
            return
        before, self.last_recompute_at = self.last_recompute_at, time.time()
        try:
            await self.recompute(why="drift")
        except JobError as exc:
            self.last_recompute_at = before  # nothing ran: the next drift may try again
            logger.warning("drift recompute skipped: %s", exc)

    def as_dict(self) -> dict:
        return {
            "runs": dict(self.runs),
            "last": self.last,
            "running": self.lock.locked(),
            "bootstrap_waiting": self.bootstrap_waiting,
        }
