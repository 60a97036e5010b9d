"""``make soak`` at smoke size: the driver runs end to end (its own embedded
broker and worker) and its JSON carries every documented field. The figures
are not judged here (a 20 s soak says nothing about drift over 30 minutes);
what must hold at any size: the worker exits cleanly, every click sent is
applied, the CF tables stay under their cap and latency was measured."""

from __future__ import annotations

import pytest

from stream.bench import soak
from stream.bench.report import render

pytestmark = pytest.mark.broker


def test_soak_smoke(tmp_path, capsys, monkeypatch):
    # the worker reads its settings from the soak's (its environment's) own
    monkeypatch.setenv("CLUSTERSTREAM_MALLOC_TRIM_S", "2")
    monkeypatch.setenv("CLUSTERSTREAM_MALLOC_ARENA_MAX", "2")
    result = soak.main(
        ["--seconds", "20", "--rate", "500", "--users", "5000", "--report-s", "5",
         "--warmup-s", "5", "--items", "500", "--clusters", "8", "--dim", "16",
         "--ttl-s", "3600", "--workdir", str(tmp_path)]
    )  # fmt: skip
    out = capsys.readouterr().out.splitlines()
    assert out[-1].startswith("{") and '"benchmark": "soak"' in out[-1]
    assert result["worker_exit_code"] == 0 and result["caught_up"] is True
    assert len(result["reports"]) >= 3
    final = result["final"]
    assert final["events_applied"] == result["clicks_sent"] >= 0.8 * 20 * 500
    assert 1000 < result["distinct_users"] <= 5000
    assert 0 < final["users"] <= result["distinct_users"]
    for key in ("rss_mb", "broker_rss_mb", "rocksdb_mb", "p99_ms", "users_held"):
        assert set(result[key]) == {"start", "middle", "end"}, key
        assert all(v is not None and v > 0 for v in result[key].values()), (key, result[key])
    assert 0 < result["cf_entries_max"] <= result["cf_cap"] < result["cf_bound"]
    assert result["malloc"] == {
        "malloc_arena_max": 2, "malloc_trim_s": 2.0, "malloc_mmap_threshold_kb": 0
    }  # fmt: skip
    # the latency split at the fetch: the worker's fetch trace reached the
    # soak in every report (None when no click could be matched to a fetch)
    for r in result["reports"][1:]:
        assert r["fetch_p99_ms"] is not None and r["fetch_p99_ms"] > 0, r
        assert r["worker_p50_ms"] is not None and r["worker_p50_ms"] <= r["worker_p99_ms"], r
    assert final["clicks_not_visible"] == 0
    assert result["rss_mb_after_warmup"]["min"] <= result["rss_mb_after_warmup"]["max"]
    assert result["lag_max"] >= 0 and set(result["lag"]) == {"start", "middle", "end"}
    # the worker's own count of its memory, and a stall watch that never had to act
    assert final["memory"]["user_cache_rows"] > 0 and final["memory"]["rss_mb"] > 0
    assert final["stalls"] == {"seek": 0, "restart": 0, "exit": 0, "fetch_wait_ms": None}
    # the allocator's figures, the periodic trim, the CF part and the RSS by mapping
    memory = final["memory"]
    assert memory["malloc_in_use_mb"] > 0 and memory["malloc_heap_mb"] > 0
    assert memory["malloc_trims"] >= 5 and memory["malloc_trim_ms_max"] > 0
    assert memory["cf_tables_mb"] > 0 and memory["cf_memtables_mb"] > 0
    parts = final["rss_parts"]
    kinds = parts["files"] + parts["malloc_main"] + parts["malloc_threads"] + parts["other_anon"]
    assert parts["files"] > 50 and abs(kinds - final["rss_mb"]) < 0.1 * final["rss_mb"]
    assert (
        parts["malloc_thread_heaps"] <= 2
    )  # malloc_arena_max=2: main + one (a heap may map as two)
    result["_command"] = "python -m stream.bench.soak --seconds 20"
    text = render({"soak": result})
    assert "## Soak" in text and "`python -m stream.bench.soak --seconds 20`" in text
    assert " / ".join(str(result["rss_mb"][k]) for k in ("start", "middle", "end")) in text
