"""Latency traces (``trace_latency``), in fixed memory.

The CF owner notes ``(source partition, last source offset, wall time)`` of
every delta it applies, the hot path ``(partition, last offset, wall time)``
of every fetch of clicks; the e2e benchmark and the soak read them through
``GET /debug/cf-applied`` and ``GET /debug/clicks-fetched`` to time click ->
CF, and the soak its part before the fetch. A deque of tuples of Python
numbers costs ~150 bytes an entry (~150 MB at its million-entry bound, which
the soak reaches within its run: worker RSS that grows with the run); here
each entry is one row of a float64 ring buffer, 24 bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np


def note_fetch(trace: LatencyTrace, got: dict, at: float) -> None:
    """Note ``(partition, last offset, at)`` in ``trace`` for each partition
    of a fetch ``got`` ({TopicPartition: records with an ``offsets`` (n,)
    int64 array}) that holds records.

    >>> from aiokafka import TopicPartition as TP
    >>> from stream.io.fetched import FetchedRecords as F
    >>> trace = LatencyTrace()
    >>> got = {TP("clicks", 0): F.from_records([(7, None, b"{}"), (8, None, b"{}")]),
    ...        TP("clicks", 1): F.from_records([])}
    >>> note_fetch(trace, got, 5.0); list(trace)
    [(0, 8, 5.0)]
    """
    trace.extend((tp.partition, int(f.offsets[-1]), at) for tp, f in got.items() if len(f))


class LatencyTrace:
    """The newest ``maxlen`` rows ``(partition, offset, unix time)``, oldest first.

    >>> trace = LatencyTrace(maxlen=3)
    >>> trace.extend([(0, 5, 1.0), (1, 3, 2.0)])
    >>> trace.append((0, 9, 3.0)); trace.append((1, 7, 4.0))
    >>> len(trace), list(trace)
    (3, [(1, 3, 2.0), (0, 9, 3.0), (1, 7, 4.0)])
    >>> trace.since(2.5).tolist()
    [[0.0, 9.0, 3.0], [1.0, 7.0, 4.0]]
    """

    def __init__(self, maxlen: int = 1_000_000):
        self.maxlen = maxlen
        self._rows = np.empty((min(maxlen, 4096), 3), dtype=np.float64)
        self._count = 0  # rows ever appended

    def __len__(self) -> int:
        return min(self._count, self.maxlen)

    def append(self, row: tuple[int, int, float]) -> None:
        self.extend((row,))

    def extend(self, rows: Iterable[tuple[int, int, float]]) -> None:
        new = np.asarray(list(rows), dtype=np.float64).reshape(-1, 3)[-self.maxlen :]
        n = len(new)
        if not n:
            return
        if self._count + n > len(self._rows) and len(self._rows) < self.maxlen:
            grown = np.empty((min(max(self._count + n, 2 * len(self._rows)), self.maxlen), 3))
            grown[: len(self)] = self.rows()
            self._rows, self._count = grown, len(self)
        at = (self._count + np.arange(n)) % len(self._rows)
        self._rows[at] = new
        self._count += n

    def rows(self) -> np.ndarray:
        """(len, 3) float64 copy, oldest first."""
        size = len(self._rows)
        if self._count <= size:
            return self._rows[: self._count].copy()
        start = self._count % size
        return np.concatenate([self._rows[start:], self._rows[:start]])

    def since(self, t: float) -> np.ndarray:
        """Rows applied after unix time ``t`` (times never go down: wall time at append)."""
        rows = self.rows()
        return rows[np.searchsorted(rows[:, 2], t, side="right") :]

    def __iter__(self) -> Iterator[tuple[int, int, float]]:
        for p, o, t in self.rows().tolist():
            yield int(p), int(o), t
