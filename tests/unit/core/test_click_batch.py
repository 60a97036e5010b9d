"""ClickBatch (stream/core/clicks.py).

Named test_click_batch.py, not test_clicks.py: tests/unit/io/test_clicks.py exists
and the test tree has no __init__.py files, so two test modules may not share a
basename.
"""

from __future__ import annotations

import numpy as np
import pytest

from stream.core.clicks import ClickBatch


def test_from_columns_defaults_and_dtypes():
    b = ClickBatch.from_columns(("u1", "u2"), ["i1", "i2"], [1000, 2000.0])
    assert len(b) == 2
    assert b.user_ids == ["u1", "u2"] and b.item_ids == ["i1", "i2"]
    assert b.ts.dtype == np.int64 and b.ts.tolist() == [1000, 2000]
    assert b.weights.dtype == np.float64 and b.weights.tolist() == [1.0, 1.0]
    assert b.event_ids == []


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(user_ids=["u"], item_ids=["i", "j"], ts=[1]),
        dict(user_ids=["u"], item_ids=["i"], ts=[1, 2]),
        dict(user_ids=["u"], item_ids=["i"], ts=[1], weights=[1.0, 2.0]),
        dict(user_ids=["u"], item_ids=["i"], ts=[1], weights=[0.0]),
        dict(user_ids=["u"], item_ids=["i"], ts=[1], weights=[-1.0]),
        dict(user_ids=["u"], item_ids=["i"], ts=[1], event_ids=["a", "b"]),
    ],
)
def test_from_columns_rejects_inconsistent_columns(kwargs):
    with pytest.raises(ValueError):
        ClickBatch.from_columns(**kwargs)


def test_from_records_uses_weight_one_when_absent():
    b = ClickBatch.from_records(
        [
            {"event_id": "e1", "user_id": "u1", "item_id": "i1", "ts": 5},
            {"event_id": "e2", "user_id": "u2", "item_id": "i2", "ts": 6, "weight": 2.5},
        ]
    )
    assert b.weights.tolist() == [1.0, 2.5]
    assert b.event_ids == ["e1", "e2"] and b.ts.tolist() == [5, 6]


def test_slice():
    b = ClickBatch.from_columns(
        ["a", "b", "c"], ["x", "y", "z"], [1, 2, 3], [1, 2, 3], ["e1", "e2", "e3"]
    )
    s = b.slice(1, 3)
    assert (s.user_ids, s.item_ids, s.ts.tolist(), s.weights.tolist(), s.event_ids) == (
        ["b", "c"],
        ["y", "z"],
        [2, 3],
        [2.0, 3.0],
        ["e2", "e3"],
    )
    assert len(b.slice(5, 9)) == 0
    no_events = ClickBatch.from_columns(["a", "b"], ["x", "y"], [1, 2])
    assert no_events.slice(0, 1).event_ids == []
    empty = ClickBatch.from_columns([], [], [])
    assert len(empty) == 0 and empty.ts.shape == (0,)
