"""The applied-deltas trace keeps exactly what a bounded deque of its rows keeps."""

from __future__ import annotations

from collections import deque

import numpy as np

from stream.app.trace import LatencyTrace


def test_trace_equals_a_bounded_deque_through_growth_and_wrap():
    rng = np.random.default_rng(0)
    trace, expected = LatencyTrace(maxlen=10_000), deque(maxlen=10_000)
    t = 0.0
    for _ in range(300):
        n = int(rng.integers(0, 200))
        rows = [(int(rng.integers(4)), int(rng.integers(1 << 40)), t + i) for i in range(n)]
        t += n
        if n == 1:
            trace.append(rows[0])
        else:
            trace.extend(iter(rows))  # a generator, as the CF owner passes
        expected.extend(rows)
        assert len(trace) == len(expected)
    assert list(trace) == list(expected)
    cut = expected[len(expected) // 2][2]
    assert trace.since(cut).tolist() == [list(map(float, r)) for r in expected if r[2] > cut]


def test_a_batch_larger_than_the_bound_keeps_its_newest_rows():
    trace = LatencyTrace(maxlen=5)
    trace.extend((0, i, float(i)) for i in range(12))
    assert [o for _, o, _ in trace] == [7, 8, 9, 10, 11]
    assert trace.rows().nbytes == 5 * 3 * 8
