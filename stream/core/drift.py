"""Drift watch: do the fixed centres still fit the users?

The hot path feeds the mean assignment distance of every batch
(``1 - cosine`` of the users to their primary centre) to ``river``'s ADWIN. A
detected change in the mean, upwards, means the centres went stale: users
moved away from them. A drop (users fitting better) is counted separately and
does not call for a recompute.

ADWIN sees the logarithm of the distance, so a change is judged relative to
its level: its cut bound has a term for values spread over [0, 1] that dwarfs
a rise of a few hundredths, and assignment distances often sit near 0.01-0.05
(a fifth of a synthetic stream's users moving to another cluster tripled the
distance from ~0.014 and raw ADWIN never cut). The worker resets the watch
when it installs new centres: their distances are a new level, not a drift.

>>> watch = DriftWatch()
>>> any(watch.update(0.10) for _ in range(500))
False
>>> any(watch.update(0.40) for _ in range(200))
True
>>> watch.detections, watch.as_dict()["mean_distance"] > 0.1
(1, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from river.drift import ADWIN


@dataclass
class DriftWatch:
    """ADWIN over per-batch mean assignment distances.

    ``delta`` is ADWIN's confidence; ``grace`` batches are ignored after a
    detection or :meth:`reset` (new centres), while the window refills.
    """

    delta: float = 0.002
    grace: int = 30
    floor: float = 1e-4  # distances below it count as it (log of 0)
    detections: int = 0
    improvements: int = 0
    observed: int = 0
    last_value: float | None = None
    _adwin: ADWIN = field(init=False, repr=False)
    _quiet: int = field(init=False, default=0, repr=False)

    def __post_init__(self):
        self._adwin = ADWIN(delta=self.delta)

    def update(self, mean_distance: float) -> bool:
        """Add one batch's mean distance; True when the centres just went stale."""
        before = self._adwin.estimation
        self._adwin.update(math.log(max(float(mean_distance), self.floor)))
        self.observed += 1
        self.last_value = float(mean_distance)
        if self._quiet > 0:
            self._quiet -= 1
            return False
        if not self._adwin.drift_detected:
            return False
        self._quiet = self.grace
        if self._adwin.estimation >= before:
            self.detections += 1
            return True
        self.improvements += 1
        return False

    def reset(self) -> None:
        """Forget the window (call after new centres are installed)."""
        self._adwin = ADWIN(delta=self.delta)
        self._quiet = self.grace

    def as_dict(self) -> dict:
        return {
            "detections": self.detections,
            "improvements": self.improvements,
            "observed": self.observed,
            # geometric mean over ADWIN's window; 0 while the window is empty
            "mean_distance": math.exp(self._adwin.estimation) if self._adwin.width else 0.0,
            "window": self._adwin.width,
            "last": self.last_value,
        }
