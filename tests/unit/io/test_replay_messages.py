"""The click records `replay` sends: ids invented for logs without event ids."""

from __future__ import annotations

import numpy as np
import orjson

from stream.core.clicks import ClickBatch
from stream.io.replay import click_messages


def _ids(clicks: ClickBatch) -> list[str]:
    return [orjson.loads(value)["event_id"] for _, _, value in click_messages(clicks, 4)]


def test_invented_event_ids_follow_the_click_not_its_position():
    first = ClickBatch.from_columns(["u1", "u1"], ["a", "b"], np.array([10, 20]))
    other = ClickBatch.from_columns(["u1", "u1"], ["c", "a"], np.array([30, 10]))
    ids = _ids(first)
    assert len(set(ids)) == 2
    assert _ids(first) == ids  # a second replay of the log: the same ids, dropped as duplicates
    assert not set(_ids(other)[:1]) & set(ids)  # another log's first click is not the first's
    assert _ids(other)[1] == ids[0]  # the very same click (user, item, time) is


def test_given_event_ids_are_kept():
    clicks = ClickBatch.from_columns(["u1"], ["a"], np.array([10]), event_ids=["e-7"])
    assert _ids(clicks) == ["e-7"]
