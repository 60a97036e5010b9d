"""The registry view: who owns what and cluster sizes, from the workers' records."""

from __future__ import annotations

from stream.app.registry import STALE_S, RegistryView


def _rec(worker, ts, clicks=(), cf=(), sizes=None, leader=False):
    return {"worker_id": worker, "url": f"http://{worker}", "leader": leader, "ts": ts,
            "clicks_partitions": list(clicks), "cf_partitions": list(cf), "sizes": sizes or {}}  # fmt: skip


def test_registry_takes_the_newest_report_of_each_partition():
    view = RegistryView()
    view.update(_rec("a", 100.0, clicks=[0, 1], sizes={"0": {"5": 3}, "1": {"6": 2}}))
    view.update(_rec("b", 101.0, clicks=[1], sizes={"1": {"6": 4, "7": 1}}, leader=True))
    assert view.owner_of_clicks(0, now=102) == "http://a"
    assert view.owner_of_clicks(1, now=102) == "http://b"  # b took partition 1 later
    assert view.sizes(now=102) == {5: 3, 6: 4, 7: 1}
    assert view.sizes({7: 5}, now=102) == {5: 4, 6: 4}  # retired 7 counts for 5
    assert view.leader_url(now=102) == "http://b"
    assert view.owner_of_clicks(0, now=100 + STALE_S + 1) is None  # a went silent
    view.update(_rec("a", 90.0, clicks=[2]))  # an older record never wins
    assert view.owner_of_clicks(2, now=102) is None
