"""The dynamic rule: merge clusters that became too small.

While some cluster has fewer than ``min_size`` members (and more than one
cluster is left), the smallest one (lowest id on ties) is merged into its most
similar surviving cluster. The target keeps its id; its centre becomes the
size-weighted mean of both (normalised); the small id is retired with an alias
to the target. Members are never lost: sizes are added.

>>> from stream.core.centres import CentreSet
>>> cs = CentreSet.create([[1, 0], [0.9, 0.1], [0, 1]], created_at_ms=0)
>>> plan = plan_merges({0: 50, 1: 3, 2: 40}, cs, min_size=10)
>>> [(s.source, s.target) for s in plan.steps], plan.sizes_after
([(1, 0)], {0: 53, 2: 40})
>>> merged = apply_merges(cs, plan, created_at_ms=1)
>>> merged.version, merged.ids.tolist(), merged.aliases
(2, [0, 2], {1: 0})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from stream.core.centres import CentreSet


@dataclass(frozen=True)
class MergeStep:
    """One merge: ``source`` retired into ``target`` (sizes before/after, cosine)."""

    source: int
    target: int
    source_size: int
    target_size_before: int
    target_size_after: int
    similarity: float


@dataclass(frozen=True)
class MergePlan:
    """The ordered merges, the sizes before and after, and the merged centres."""

    min_size: int
    steps: tuple[MergeStep, ...]
    sizes_before: dict[int, int]
    sizes_after: dict[int, int]
    vectors_after: dict[int, np.ndarray] = field(repr=False)

    def __bool__(self) -> bool:
        return bool(self.steps)

    def as_dict(self) -> dict:
        """JSON-ready summary (for --dry-run, /stats and the dashboard)."""
        return {
            "min_size": self.min_size,
            "steps": [s.__dict__ for s in self.steps],
            "retired": [s.source for s in self.steps],
            "clusters_before": len(self.sizes_before),
            "clusters_after": len(self.sizes_after),
        }


def merge_threshold(users: int, min_size: int, min_share: float = 0.0) -> int:
    """The member count below which a cluster is merged: a share of the population
    with an absolute floor, so a small log keeps its clusters and a large one
    does not keep crumbs.

    >>> merge_threshold(600, 5, 0.002), merge_threshold(1_000_000, 5, 0.002)
    (5, 2000)
    """
    if min_size < 0 or not 0.0 <= min_share <= 1.0:
        raise ValueError("min_size must be >= 0 and min_share in [0, 1]")
    return max(min_size, math.ceil(min_share * max(users, 0)))


def plan_merges(sizes: Mapping[int, int], centres: CentreSet, min_size: int) -> MergePlan:
    """Plan merges until no cluster is below ``min_size`` or one cluster is left.

    ``sizes``: live cluster id -> member count (ids missing here count as 0).
    """
    if min_size < 0:
        raise ValueError("min_size must be >= 0")
    ids = centres.ids.tolist()
    size = {cid: int(sizes.get(cid, 0)) for cid in ids}
    vec = {cid: centres.vectors[row].astype(np.float64) for row, cid in enumerate(ids)}
    before = dict(size)
    steps: list[MergeStep] = []
    while len(size) > 1:
        small = min(size, key=lambda c: (size[c], c))
        if size[small] >= min_size:
            break
        others = [c for c in size if c != small]
        sims = np.array([vec[c] @ vec[small] for c in others])
        target = others[int(np.argmax(sims))]
        ws, wt = size[small], size[target]
        merged = (wt * vec[target] + ws * vec[small]) if ws + wt > 0 else vec[target] + vec[small]
        norm = np.linalg.norm(merged)
        vec[target] = merged / norm if norm > 0 else vec[target]
        steps.append(MergeStep(small, target, ws, wt, wt + ws, float(sims.max())))
        size[target] = wt + ws
        del size[small], vec[small]
    return MergePlan(min_size, tuple(steps), before, size, vec)


def apply_merges(
    centres: CentreSet, plan: MergePlan, created_at_ms: int | None = None
) -> CentreSet:
    """The next :class:`CentreSet` version (reason "merge"); the same set if the plan is empty."""
    if not plan.steps:
        return centres
    ids = sorted(plan.sizes_after)
    return centres.successor(
        ids=ids,
        vectors=np.stack([plan.vectors_after[c] for c in ids]),
        sizes=[plan.sizes_after[c] for c in ids],
        aliases={s.source: s.target for s in plan.steps},
        reason="merge",
        created_at_ms=created_at_ms,
        stats=plan.as_dict(),
    )
