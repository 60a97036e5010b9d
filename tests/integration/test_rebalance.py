"""A second worker joins while clicks flow and later dies by SIGKILL.

The first worker gets the dead one's partitions back (its own store, brought
forward from the changelog, then the clicks since replayed one by one); the
final state, users and every CF entry, must equal one process's offline
replay of the same clicks, and every recommendation request made meanwhile,
to either worker, is counted (answered or not).
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request

import pytest

from stream.wire.partition import user_partition
from tests.integration.helpers import centres_from_items, send_clicks, start_worker
from tests.integration.test_jobs import _second
from tests.integration.test_worker import DIM, _dataset, _replay_digest

pytestmark = pytest.mark.broker


def _status(url: str, timeout: float = 10.0) -> int:
    """The HTTP status of a GET of ``url`` (its body must be JSON); 0 for no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            json.loads(resp.read())
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, ValueError):
        return 0  # no answer (a killed worker's port)


class _Asker(threading.Thread):
    """Asks one worker for recommendations of ``users`` in turn, counting
    status codes (0: no answer within 10 s) and keeping the slowest answer."""

    def __init__(self, url: str, users: list[str]):
        super().__init__(daemon=True)
        self.url = url
        self.users = users
        self.codes: dict[int, int] = {}
        self.slowest_s = 0.0
        self.stop = threading.Event()

    def run(self) -> None:
        i = 0
        while not self.stop.is_set():
            started = time.monotonic()
            code = _status(
                f"{self.url}/users/{self.users[i % len(self.users)]}/recommendations?n=5"
            )
            self.slowest_s = max(self.slowest_s, time.monotonic() - started)
            self.codes[code] = self.codes.get(code, 0) + 1
            i += 1
            time.sleep(0.02)

    def answered(self) -> int:
        return self.codes.get(200, 0)

    def failed(self) -> int:
        return sum(n for code, n in self.codes.items() if code != 200)


def test_a_worker_joins_mid_stream_and_dies(settings_for, kafka, workers):
    settings = settings_for(dim=DIM, k=4, batch_size=200, flush_interval_s=1, worker_coclicks=True)
    data = _dataset(n_events=9000, n_users=400)
    centres = centres_from_items(settings, data)
    a = start_worker(settings, data, kafka, workers, centres)
    chunk = 300  # sent every 0.1 s: ~3k clicks/s while the group changes
    chunks = [(s, min(s + chunk, data.n_events)) for s in range(0, data.n_events, chunk)]
    users = sorted({r["user_id"] for r in data.click_records(0, chunk)})
    ask_a, ask_b = _Asker(a.url, users), None
    b = None
    for i, (start, stop) in enumerate(chunks):
        send_clicks(kafka, settings, data, start, stop)
        if i == 3:
            ask_a.start()
            b = workers(_second(settings), name="b")
        if i == 4:
            b.wait_for(lambda s: s["ready"] and len(s["partitions"]) == 1, 60, "b to own one")
            ask_b = _Asker(b.url, users)
            ask_b.start()
        if i == 2 * len(chunks) // 3:
            deadline = time.monotonic() + 30
            while ask_b.answered() < 20 and time.monotonic() < deadline:
                time.sleep(0.1)
            ask_b.stop.set()
            ask_b.join()
            b.kill()
        time.sleep(0.1)

    expected = _replay_digest(settings, data, centres)
    a.wait_for(
        lambda s: s["partitions"] == [0, 1] and s["lag"] == 0 and s["cf_lag"] == 0
        and a.stats(digest=True)["state_digest"] == expected,
        120, "a to hold every partition with the replay's state",
    )  # fmt: skip
    ask_a.stop.set()
    ask_a.join()
    print(
        f"\nrecommendation requests to a (throughout): {ask_a.codes}, slowest "
        f"{ask_a.slowest_s:.2f}s; to b (while alive): {ask_b.codes}, slowest {ask_b.slowest_s:.2f}s"
    )
    # b answers every request while alive; a answers its own users always and
    # b's through b, except in the seconds between b's death and a's takeover
    assert ask_b.answered() >= 20 and ask_b.failed() < 0.1 * sum(ask_b.codes.values())
    assert ask_a.answered() > 50
    assert ask_a.failed() < 0.1 * sum(ask_a.codes.values())
    assert {user_partition(u, 2) for u in users} == {0, 1}  # both owners were asked
    assert a.stop() == 0
