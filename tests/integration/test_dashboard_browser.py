"""The dashboard in a real browser: headless Chromium, driven over its DevTools
protocol (a websocket, with aiohttp), against a worker with clicks flowing.

``CLUSTERSTREAM_SCREENSHOT_TO=docs/dashboard.png`` also writes the screenshot
there (the README's image comes from this test).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import os
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import aiohttp
import orjson
import pytest

from stream.core.items import ItemCatalog
from stream.core.merge import apply_merges, plan_merges
from stream.core.recompute import recompute
from stream.io.synth import SynthConfig, generate
from stream.io.topics import Topics

pytestmark = pytest.mark.broker

DIM = 16
RATE = 250.0
# the README's screenshot waits for this many refreshes, so the lines span a while
SCREENSHOT_REFRESHES = 20
CHARTS = ["throughput", "latency", "churn", "versions", "sizes", "dlq", "top"]


class Browser:
    """One headless Chromium page, spoken to over the DevTools protocol."""

    def __init__(self, profile: Path):
        self.profile = profile
        self.proc: subprocess.Popen | None = None
        self.ws = None
        self.session: aiohttp.ClientSession | None = None
        self.ids = itertools.count(1)
        self.waiting: dict[int, asyncio.Future] = {}
        self.console_errors: list[str] = []
        self.reader: asyncio.Task | None = None

    async def start(self, width: int = 1400, height: int = 960) -> None:
        self.proc = subprocess.Popen(
            [
                shutil.which("chromium"), "--headless=new", "--no-sandbox", "--disable-gpu",
                "--no-first-run", "--hide-scrollbars", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
                f"--user-data-dir={self.profile}", f"--window-size={width},{height}", "about:blank",
            ],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        port = await asyncio.get_running_loop().run_in_executor(None, self._devtools_port)
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as resp:
            pages = [t for t in await resp.json() if t["type"] == "page"]
        self.ws = await self.session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self.reader = asyncio.create_task(self._read())
        for domain in ("Page", "Runtime", "Log"):
            await self.call(f"{domain}.enable")
        await self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width, height=height, deviceScaleFactor=1, mobile=False,
        )  # fmt: skip

    def _devtools_port(self) -> int:
        deadline = time.monotonic() + 60
        for line in self.proc.stderr:
            found = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
            if found:
                threading.Thread(target=self.proc.stderr.read, daemon=True).start()  # drain
                return int(found.group(1))
            if time.monotonic() > deadline:
                break
        raise RuntimeError("chromium did not say where its DevTools listen")

    async def _read(self) -> None:
        async for msg in self.ws:
            data = orjson.loads(msg.data)
            if "id" in data and data["id"] in self.waiting:
                self.waiting.pop(data["id"]).set_result(data)
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                self.console_errors.append(
                    details.get("exception", {}).get("description", details.get("text", ""))
                )
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
                self.console_errors.append(" ".join(str(a.get("value")) for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
                self.console_errors.append(params["entry"]["text"])

    async def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        future = asyncio.get_running_loop().create_future()
        self.waiting[msg_id] = future
        await self.ws.send_str(
            orjson.dumps({"id": msg_id, "method": method, "params": params}).decode()
        )
        answer = await asyncio.wait_for(future, 30)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return answer["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_until(self, expression: str, timeout_s: float, what: str):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = await self.evaluate(expression)
            if value:
                return value
            await asyncio.sleep(0.25)
        raise AssertionError(f"timed out waiting for {what}")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
        if self.ws is not None:
            await self.ws.close()
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class Clicks(threading.Thread):
    """Synthetic clicks (a few malformed), each sent when the clock reaches its
    timestamp: the dashboard's click-to-CF freshness is then the real delay."""

    def __init__(self, kafka, settings, data):
        super().__init__(daemon=True)
        self.kafka, self.topic = kafka, Topics(settings).clicks
        self.data = data
        self.stop = threading.Event()

    def run(self) -> None:
        records = list(self.data.records())
        clicks = list(self.data.click_records())
        users = [c["user_id"].encode() for c in clicks]
        step = 25
        for i in range(0, len(records), step):
            # when the last click of the chunk is due: no click is sent before its time
            wait = clicks[min(i + step, len(clicks)) - 1]["ts"] / 1000 - time.time()
            if self.stop.wait(max(wait, 0)):
                return
            self.kafka.send(self.topic, records[i : i + step], users[i : i + step])


def _clicks(start_ms: int):
    """The same users, items and clicks whatever ``start_ms`` (it only sets timestamps)."""
    config = SynthConfig(
        n_users=6000, n_clusters=8, n_items=300, dim=DIM, n_events=30_000, seed=5,
        start_ms=start_ms, rate_per_s=RATE, malformed=0.02,
    )  # fmt: skip
    return generate(config)


def _charts_js() -> str:
    """Per chart: how many data elements it drew, and its SVG markup."""
    return (
        "Object.fromEntries([...document.querySelectorAll('svg[data-chart]')].map("
        "s => [s.dataset.chart, {data: s.querySelectorAll('.data').length, svg: s.innerHTML}]))"
    )


async def _look(url: str, tmp_path: Path, new_versions, ghost) -> dict:
    browser = Browser(tmp_path / "chromium-profile")
    try:
        await browser.start()
        await browser.call("Page.navigate", url=f"{url}/dashboard")
        await browser.wait_until(
            "document.body && Number(document.body.dataset.refreshes) >= 1", 30, "the first refresh"
        )
        drawn = (
            f"(() => {{ const c = {_charts_js()}; "
            f"return {CHARTS!r}.every(n => c[n] && c[n].data > 0) ? c : null; }})()"
        )
        await browser.wait_until(drawn, 60, "every chart to draw data")
        new_versions()
        await browser.wait_until(
            "document.querySelector('#centres').innerText.includes('v3 (recompute')",
            30, "the merge and recompute versions to be installed",
        )  # fmt: skip
        markers = "document.querySelectorAll('[data-chart=versions] .marker').length >= 2"
        await browser.wait_until(markers, 30, "the merge and recompute marks")
        first = await browser.evaluate(_charts_js())
        refreshes = int(await browser.evaluate("document.body.dataset.refreshes"))
        await browser.wait_until(
            f"Number(document.body.dataset.refreshes) >= {refreshes + 2}", 30, "two more refreshes"
        )
        second = await browser.evaluate(_charts_js())
        if os.environ.get("CLUSTERSTREAM_SCREENSHOT_TO"):
            await browser.wait_until(
                f"Number(document.body.dataset.refreshes) >= {SCREENSHOT_REFRESHES}",
                3 * SCREENSHOT_REFRESHES, "refreshes for the README's screenshot",
            )  # fmt: skip
        workers_text = await browser.evaluate("document.querySelector('#workers').innerText")
        status = await browser.evaluate("document.querySelector('#status').innerText")
        await browser.screenshot(tmp_path / "dashboard.png")
        ghost()  # a registered worker that does not answer
        await browser.wait_until(
            "document.querySelector('#status').innerText.includes('not answering')",
            30,
            "the page to mark the worker that does not answer",
        )
        ghost_row = await browser.evaluate("document.querySelector('#workers').innerText")
        await browser.screenshot(tmp_path / "dashboard-ghost.png")
        return dict(
            first=first, second=second, workers=workers_text, status=status,
            ghost_row=ghost_row, errors=list(browser.console_errors),
        )  # fmt: skip
    finally:
        await browser.close()


def test_dashboard_draws_every_chart_and_follows_the_stream(settings_for, kafka, workers, tmp_path):
    assert shutil.which("chromium"), "needs chromium: `make test` installs it (apt-get)"
    settings = settings_for(dim=DIM, k=8, registry_interval_s=1.0)
    now_ms = int(time.time() * 1000)
    data = _clicks(now_ms)
    topics = Topics(settings)
    kafka.send_json(topics.items, list(data.item_records()), "item_id")
    catalog = ItemCatalog(DIM)
    for record in data.item_records():
        catalog.upsert_record(record)
    centres, _ = recompute(
        catalog.vectors, None, k=8, seed=0, reason="bootstrap", created_at_ms=now_ms
    )
    kafka.send_centres(settings, centres)
    worker = workers(settings)
    worker.wait_for(lambda s: s["ready"] and s["centres_version"] == 1, 90, "the worker")
    # timestamps from now on: the click-to-CF freshness is then the real delay
    stream = _clicks(int(time.time() * 1000) + 3000)  # generating takes a moment
    vectors = [r["vector"] for r in data.item_records()]
    assert [r["vector"] for r in stream.item_records()] == vectors
    clicks = Clicks(kafka, settings, stream)
    clicks.start()
    try:

        def ghost():
            record = {
                "worker_id": "ghost0000000", "url": "http://127.0.0.1:9", "leader": False,
                "clicks_partitions": [], "cf_partitions": [], "sizes": {}, "users": 0,
                "ts": time.time() + 60,  # newer than any beat of the live worker for a while
            }  # fmt: skip
            kafka.send(topics.workers, [orjson.dumps(record)], [b"ghost0000000"], partition=0)

        def new_versions():
            """A merge (v2, one cluster retired) and a recompute (v3), as the leader's
            jobs would publish them."""
            sizes = {cid: 100 for cid in centres.ids.tolist()}
            sizes[int(centres.ids[0])] = 1
            merged = apply_merges(centres, plan_merges(sizes, centres, 10), int(time.time() * 1000))
            kafka.send_centres(settings, merged)
            time.sleep(4)
            again, _ = recompute(
                catalog.vectors, merged, k=7, seed=1, reason="recompute",
                created_at_ms=int(time.time() * 1000),
            )  # fmt: skip
            kafka.send_centres(settings, again)

        seen = asyncio.run(_look(worker.url, tmp_path, new_versions, ghost))
    finally:
        clicks.stop.set()
        clicks.join(10)

    assert (tmp_path / "dashboard.png").stat().st_size > 20_000
    target = os.environ.get("CLUSTERSTREAM_SCREENSHOT_TO")
    if target:
        shutil.copyfile(tmp_path / "dashboard.png", target)
    assert seen["errors"] == []
    for name in CHARTS:
        assert seen["first"][name]["data"] > 0, name
        assert seen["second"][name]["data"] > 0, name
        assert seen["first"][name]["svg"] != seen["second"][name]["svg"], f"{name} did not change"
    stats = worker.stats()
    assert stats["worker_id"] in seen["workers"] and "ready" in seen["workers"]
    assert "1 worker(s)" in seen["status"]
    assert stats["centres_version"] == 3
    assert "ghost0000000" in seen["ghost_row"] and "did not answer" in seen["ghost_row"]
    assert stats["events_rejected"] > 0 and stats["events_applied"] > 0
