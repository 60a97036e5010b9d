"""``make bench``: run every benchmark at full size and rewrite BENCHMARKS.md.

Each benchmark runs as its own ``clusterstream`` process (so one cannot warm
the caches of another) and its JSON line is kept verbatim in
``bench-results/<name>.json``; BENCHMARKS.md is generated from those files
only, so every figure in it comes from a command written next to it.

    python -m stream.bench.report            # run all, then write BENCHMARKS.md
    python -m stream.bench.report --write    # only rewrite BENCHMARKS.md from the JSON
    python -m stream.bench.report e2e        # run one benchmark again, then rewrite
    python -m stream.bench.report --smoke --results DIR --out FILE   # CI sizes
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from stream.bench.machine import cpu_model

RESULTS = Path("bench-results")


@dataclass(frozen=True)
class Benchmark:
    """One ``clusterstream`` command at full size and at CI's smoke size."""

    full: list[str]
    smoke: list[str]
    about: str
    data: str | None = None  # the synthetic log ({data} in the commands): a key of DATASETS


BENCHMARKS: dict[str, Benchmark] = {
    "core": Benchmark(
        ["bench", "core", "--users", "1000000", "--dim", "64", "--k", "500", "--events", "1000000",
         "--batch", "1024", "--json", "--no-progress"],
        ["bench", "core", "--users", "2000", "--k", "16", "--events", "5000", "--items", "500",
         "--river-events", "50", "--json", "--no-progress"],
        "process_batch (vector update + assignment + CF) against scikit-learn and river",
    ),
    "recompute": Benchmark(
        ["bench", "recompute", "--users", "1000000", "--dim", "64", "--k", "500", "--json"],
        ["bench", "recompute", "--users", "3000", "--k", "16", "--json"],
        "the off-peak recompute (k-means + assignment + Hungarian matching) in memory",
    ),
    "recompute-kafka": Benchmark(
        ["bench", "recompute", "--from-kafka", "--users", "1000000", "--dim", "64", "--k", "500",
         "--json"],
        ["bench", "recompute", "--from-kafka", "--users", "3000", "--k", "16", "--json"],
        "the same, reading every user from the users changelog on the embedded broker",
    ),
    "e2e": Benchmark(
        ["bench", "e2e", "--events", "200000", "--json", "--no-progress"],
        ["bench", "e2e", "--events", "3000", "--users", "500", "--items", "300", "--k", "8",
         "--latency-events", "500", "--repeat", "2", "--latency-repeat", "2", "--json",
         "--no-progress"],
        "one worker end to end on the embedded broker, against a raw consumer and faust",
    ),
    "e2e-cf-via-broker": Benchmark(
        ["bench", "e2e", "--events", "200000", "--faust-events", "20000", "--no-cf-apply-local",
         "--json", "--no-progress"],
        ["bench", "e2e", "--events", "3000", "--users", "500", "--items", "300", "--k", "8",
         "--faust-events", "500", "--latency-events", "300", "--no-cf-apply-local",
         "--repeat", "1", "--latency-repeat", "1", "--json", "--no-progress"],
        "the same with every CF delta taking the broker hop (clusters owned by other workers)",
    ),
    "e2e-1m-users": Benchmark(
        ["bench", "e2e", "--events", "1000000", "--users", "1000000", "--faust-events", "100000",
         "--repeat", "1", "--latency-repeat", "1", "--json", "--no-progress"],
        ["bench", "e2e", "--events", "3000", "--users", "3000", "--items", "300", "--k", "8",
         "--faust-events", "500", "--latency-events", "300", "--repeat", "1",
         "--latency-repeat", "1", "--json", "--no-progress"],
        "the worker's memory with one million distinct users in its state",
    ),
    "e2e-2-workers": Benchmark(
        ["bench", "e2e", "--events", "600000", "--workers", "2", "--faust-events", "100000",
         "--repeat", "1", "--latency-repeat", "1", "--json", "--no-progress"],
        ["bench", "e2e", "--events", "3000", "--users", "500", "--items", "300", "--k", "8",
         "--workers", "2", "--faust-events", "500", "--latency-events", "300", "--repeat", "1",
         "--latency-repeat", "1", "--json", "--no-progress"],
        "scale-out: two worker processes (one per core) in one consumer group",
    ),
    "eval": Benchmark(
        ["eval", "{data}/clicks.jsonl", "--items", "{data}/items.jsonl", "--k", "8", "--sample",
         "4", "--json"],
        ["eval", "{data}/clicks.jsonl", "--items", "{data}/items.jsonl", "--k", "3", "--json"],
        "cluster recall against baselines on a synthetic log with drift (planted truth)",
        "planted",
    ),
    "eval-embed": Benchmark(
        ["eval", "{data}/clicks.jsonl", "--embed", "svd:32", "--k", "8", "--sample", "4",
         "--json"],
        ["eval", "{data}/clicks.jsonl", "--embed", "svd:8", "--k", "3", "--json"],
        "the same without item vectors: vectors learnt from the warm-up clicks",
        "planted",
    ),
    "eval-sparse": Benchmark(
        ["eval", "{data}/clicks.jsonl", "--embed", "svd:32", "--sample", "4", "--json"],
        ["eval", "{data}/clicks.jsonl", "--embed", "svd:8", "--json"],
        "a sparse, long-tailed log without item vectors (closer to public click logs)",
        "sparse",
    ),
}  # fmt: skip

#: the synthetic logs of the eval benchmarks (full and smoke sizes)
DATASETS: dict[str, Benchmark] = {
    "planted": Benchmark(
        ["synth", "{data}", "--users", "5000", "--clusters", "8", "--items", "3000", "--dim", "32",
         "--events", "100000", "--days", "30", "--drift-at", "0.5", "--seed", "1"],
        ["synth", "{data}", "--users", "300", "--clusters", "3", "--items", "300", "--dim", "16",
         "--events", "4000", "--days", "5", "--drift-at", "0.5", "--seed", "1"],
        "planted clusters, Zipf popularity, 20% of users drifting half-way",
    ),
    "sparse": Benchmark(
        ["synth", "{data}", "--users", "40000", "--clusters", "20", "--items", "20000", "--dim",
         "32", "--events", "150000", "--days", "14", "--drift-at", "0.5", "--zipf", "0.9",
         "--user-activity", "1.1", "--noise", "0.3", "--seed", "3"],
        ["synth", "{data}", "--users", "2000", "--clusters", "5", "--items", "1500", "--dim",
         "16", "--events", "6000", "--days", "5", "--drift-at", "0.5", "--zipf", "0.9",
         "--user-activity", "1.1", "--noise", "0.3", "--seed", "3"],
        "Zipf user activity (most users click a few times), flatter item popularity, 30% noise",
    ),
}  # fmt: skip


def _run(args: list[str]) -> dict:
    started = time.time()
    out = subprocess.run(
        [sys.executable, "-m", "stream.cli", *args], capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise SystemExit(f"clusterstream {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["_wall_seconds"] = round(time.time() - started, 1)
    return result


def run_all(names: list[str], results: Path = RESULTS, smoke: bool = False) -> None:
    """Run the named benchmarks one process each; write ``results/<name>.json``."""
    results.mkdir(parents=True, exist_ok=True)

    def args_of(b: Benchmark, data: str) -> list[str]:
        return [a.format(data=data) for a in (b.smoke if smoke else b.full)]

    with tempfile.TemporaryDirectory() as tmp:
        folders = {}
        for key in dict.fromkeys(BENCHMARKS[n].data for n in names if BENCHMARKS[n].data):
            folders[key] = str(Path(tmp) / key)
            subprocess.run([sys.executable, "-m", "stream.cli", *args_of(DATASETS[key], folders[key])],
                           check=True, capture_output=True)  # fmt: skip
        for name in names:
            bench = BENCHMARKS[name]
            args = args_of(bench, folders.get(bench.data, ""))
            print(f"running {name}: clusterstream {' '.join(args)}", flush=True)
            result = _run(args)
            result["_command"] = "clusterstream " + " ".join(args_of(bench, "DATA"))
            if bench.data:
                result["_data_command"] = "clusterstream " + " ".join(
                    args_of(DATASETS[bench.data], "DATA")
                )
            (results / f"{name}.json").write_text(json.dumps(result, indent=1) + "\n")


def _table(rows: list[tuple[str, object]]) -> str:
    lines = ["| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines)


def _get(d: dict, *path, default="-"):
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _passes(n: int) -> str:
    return f"{n} pass" if n == 1 else f"{n} passes"


def _e2e_rows(r: dict) -> list[tuple[str, object]]:
    return [
        ("worker catch-up from its partition assignment, events/s", r["events_per_s"]),
        (
            f"catch-up per pass ({_passes(r.get('repeat', 1))}, fresh app each; the median above)",
            ", ".join(str(x) for x in r.get("passes_events_per_s", [r["events_per_s"]])),
        ),
        (
            "worker start to ready (process, kernels, items, group join), s",
            _get(r, "seconds", "start_to_ready"),
        ),
        ("raw aiokafka getmany + JSON decode, events/s", r["raw_consumer_events_per_s"]),
        ("faust per-event agent, events/s", r["faust_per_event_events_per_s"]),
        ("ratio vs raw (goal >= 0.5)", r["ratio_vs_raw"]),
        ("ratio vs faust (goal >= 15)", r["ratio_vs_faust"]),
        (
            "click-to-CF latency p50 / p99 at half the max rate, ms (goal p99 <= 250)",
            f"{r['p50_latency_ms']} / {r['p99_latency_ms']}",
        ),
        (
            f"latency p99 per pass ({_passes(r.get('latency_repeat', 1))}, fresh app each; "
            "the median above), ms",
            ", ".join(str(x) for x in r.get("latency_passes_p99_ms", [r["p99_latency_ms"]])),
        ),
        (
            "latency run: CF deltas added in-process / read from the topic",
            f"{_get(r, 'latency_worker_stats', 'cf_deltas_local', default=0)} / "
            f"{_get(r, 'latency_worker_stats', 'cf_deltas_applied')}",
        ),
        (
            "latency run: clicks/s asked / sent",
            f"{_get(r, 'latency_rate_target')} / {_get(r, 'latency_rate_actual')}",
        ),
        (
            "of the latency, before the broker's ack (load generator, broker): p50 / p99, ms",
            f"{_get(r, 'latency_send_to_ack_p50_ms')} / {_get(r, 'latency_send_to_ack_p99_ms')}",
        ),
        ("distinct users in the worker's state", _get(r, "worker_stats", "users")),
        ("worker peak RSS, MB (goal <= 1500 with 1M users)", r["peak_rss_mb"]),
    ]


def _eval_rows(r: dict) -> list[tuple[str, object]]:
    rows = [
        ("engine / popularity HitRate (goal >= 1.5)", r["engine_vs_popularity"]),
        ("engine / centroid->item HitRate (goal > 1)", r["engine_vs_centroid_item"]),
    ]
    if "best_baseline" in r:
        vs = r["vs_best_baseline"]["engine"]
        cov = r["item_vector_coverage"]
        rows += [
            (
                f"engine / best baseline ({r['best_baseline']}): HitRate, NDCG (goal >= 1)",
                f"{vs['hit_rate']}, {vs['ndcg']}",
            ),
        ]
        if "vs_best_baseline_interval" in r:
            from stream.offline.evaluate import interval_text

            ci = r["vs_best_baseline_interval"]
            rows.append(
                (
                    "the same: 95% interval, bootstrap over users (holds 1: a tie)",
                    f"{interval_text(ci['hit_rate'])}; {interval_text(ci['ndcg'])}",
                )
            )
        rows += [
            (
                "item vectors given: share of the log's items, of its clicks",
                f"{cov['items']}, {cov['clicks']}",
            ),
        ]
        if "items_learnt" in cov:
            rows.append(
                (
                    "item vectors given or learnt by the end: share of items, of clicks",
                    f"{cov['items_learnt']}, {cov['clicks_learnt']}",
                )
            )
    if "clusters" in r:
        c = r["clusters"]
        rows += [
            (
                "ARI / NMI of the engine's live clusters at the end",
                f"{c['at_end']['ari']} / {c['at_end']['nmi']}",
            ),
            (
                "ARI / NMI after drift and a recompute (goal ARI >= 0.9)",
                f"{c['after_recompute']['ari']} / {c['after_recompute']['nmi']}",
            ),
            (
                "recompute after drift: ids matched / new / retired, user churn",
                f"{c['recompute']['matched']} / {c['recompute']['new']} / "
                f"{c['recompute']['retired']}, {c['recompute']['user_churn']}",
            ),
        ]
    if "fit" in r:
        fit, got = r["fit"], r["fit"]["settings"]
        how = "fitted on the warm-up" if fit["fitted"] else "from the settings"
        if fit["fitted"] and len(fit["fitted"]) < len(got):
            how += f" ({', '.join(fit['fitted'])})"
        rows.append((
            "half-lives CF / co-click (s); blend recall_coclick / recall_cf",
            f"{got['cf_half_life_s']:g} / {got['coclick_half_life_s']:g}; "
            f"{got['recall_coclick']} / {got['recall_cf']} ({how}, {fit['seconds']} s)",
        ))  # fmt: skip
    churn = r["recompute_id_churn"]
    rows += [
        (
            "user id churn of a recompute on unchanged data, with matching (goal <= 0.05)",
            churn["user_churn_with_matching"],
        ),
        ("... the same without matching (ids in k-means order)", churn["user_churn_without_matching"]),
        (
            "engine jobs in log time: recomputes (new ids) / merges (ids merged) / k at the end",
            f"{_get(r, 'jobs', 'recomputes')} ({_get(r, 'jobs', 'ids_new')}) / "
            f"{_get(r, 'jobs', 'merges')} ({_get(r, 'jobs', 'ids_merged')}) / {_get(r, 'k_at_end')}",
        ),
        ("clicks evaluated / warm-up clicks", f"{r['evaluated']} / {r['warmup_clicks']}"),
        ("users / items / items with a vector", f"{r['users']} / {r['items']} / {r['items_with_vector']}"),
        ("seconds", r["seconds"]),
    ]  # fmt: skip
    return rows


def _eval_methods(r: dict) -> str:
    n = r["n"]
    lines = [f"| method | HitRate@{n} | NDCG@{n} | MRR@{n} | coverage |", "|---|---|---|---|---|"]
    for m, v in r["methods"].items():
        lines.append(f"| {m} | {v['hit_rate']} | {v['ndcg']} | {v['mrr']} | {v['coverage']} |")
    return "\n".join(lines)


def _eval_by_history(r: dict) -> list[str]:
    """The engine against the best baseline and popularity per user history (older
    results have none)."""
    if not r.get("by_history"):
        return []
    n = r["n"]
    lines = [
        "By the user's history (clicks before the scored one; a user with none gets "
        "every method's popularity fill):",
        "",
        f"| clicks before | clicks scored | engine HitRate@{n} | best baseline | "
        "engine / best: HitRate, NDCG | engine / popularity |",
        "|---|---|---|---|---|---|",
    ]
    from stream.offline.evaluate import HISTORY_NAMES

    # in HISTORY_NAMES order: JSON written with sorted keys puts "20+" before "5-19"
    for name in (n for n in HISTORY_NAMES if n in r["by_history"]):
        b = r["by_history"][name]
        vs = {k: "-" if v is None else v for k, v in b["engine_vs_best_baseline"].items()}
        pop = "-" if b["engine_vs_popularity"] is None else b["engine_vs_popularity"]
        lines.append(
            f"| {name} | {b['evaluated']} | {b['methods']['engine']['hit_rate']} | "
            f"{b['best_baseline']} | {vs['hit_rate']}, {vs['ndcg']} | {pop} |"
        )
    return [*lines, ""]


def render(results: dict[str, dict]) -> str:
    """BENCHMARKS.md from ``{name: result JSON}``; sections of absent results are left out."""
    any_result = next(iter(results.values()), {})
    parts = [
        "# Benchmarks",
        "",
        "Generated by `make bench` (`python -m stream.bench.report`) from the JSON in",
        "`bench-results/`; every figure below is in those files, with the command that",
        "printed it. Baselines ran in the same process or the same run, on the same data.",
        "",
        f"Machine: {any_result.get('cores', '?')} cores, {any_result.get('cpu') or cpu_model()}, "
        f"Python {any_result.get('python', sys.version.split()[0])}.",
        "",
    ]

    def section(title: str, r: dict, rows: list, *extra: str) -> None:
        parts.extend([f"## {title}", "", f"`{r['_command']}`", "", *extra, _table(rows), ""])

    if "core" in results:
        r = results["core"]
        section("Core hot path (`process_batch`)", r, [
            (f"ours: events/s (user phase on {r.get('threads', 1)} threads, BLAS on 1)",
             r["events_per_s"]),
            ("scikit-learn MiniBatchKMeans partial_fit + predict: events/s",
             r["sklearn_events_per_s"]),
            ("river KMeans learn_one + predict_one: events/s",
             f"{r['river_events_per_s']} (first {r['river_events']} events)"),
            ("ratio vs scikit-learn (goal >= 2)", r["ratio_vs_sklearn"]),
            (f"ratio per pass ({r['repeat']} interleaved passes; figures above are medians)",
             ", ".join(str(x) for x in r["passes_ratio_vs_sklearn"])),
            ("ratio vs river (goal >= 1000)", r["ratio_vs_river"]),
            ("peak RSS, MB", r["peak_rss_mb"]),
        ], "Each pass of ours starts from an empty state. The first pass of a process "
           "touches ~0.5 GB of memory the process never had; on our VMs that costs "
           "~1 ms/MB of CPU, which shows in the wall time when both cores are busy.",
           "")  # fmt: skip
    for name, title, goal in (
        ("recompute", "Recompute in memory", 30),
        ("recompute-kafka", "Recompute reading the users from Kafka", 60),
    ):
        if name in results:
            r = results[name]
            rows = [(f"seconds (goal <= {goal})", r["seconds"])]
            if "seconds_read" in r:
                rows.append(("reading the changelog, seconds", r["seconds_read"]))
            rows += [
                ("k-means seconds", r["seconds_kmeans"]),
                ("assignment seconds", r["seconds_assign"]),
                ("matching seconds", r["seconds_match"]),
                ("ids matched / new / retired", f"{r['matched']} / {r['new']} / {r['retired']}"),
                ("user churn", r["user_churn"]),
                ("peak RSS, MB", r["peak_rss_mb"]),
            ]
            section(title, r, rows)
    if "e2e" in results:
        section("One worker end to end (embedded broker)", results["e2e"],
                _e2e_rows(results["e2e"]))  # fmt: skip
    if "e2e-cf-via-broker" in results:
        section("The same, every CF delta through the broker", results["e2e-cf-via-broker"],
                _e2e_rows(results["e2e-cf-via-broker"]))  # fmt: skip
    if "e2e-1m-users" in results:
        section("One worker holding one million users", results["e2e-1m-users"],
                _e2e_rows(results["e2e-1m-users"]))  # fmt: skip
    if "e2e-2-workers" in results:
        r = results["e2e-2-workers"]
        section("Scale-out: two worker processes, one per core", r, [
            ("workers (one consumer group, clicks partitions split between them)", r["workers"]),
            ("catch-up of both, events/s", r["events_per_s"]),
            ("clicks applied before the last worker had its partitions (not in the rate)",
             r["events_applied_before_clock"]),
            ("raw aiokafka getmany + JSON decode (one consumer), events/s",
             r["raw_consumer_events_per_s"]),
            ("ratio vs raw (scale-out; the goal is about one worker)", r["ratio_vs_raw"]),
            ("distinct users held by the two", r["users_held"]),
            ("largest worker's peak RSS, MB", r["peak_rss_mb"]),
        ])  # fmt: skip
    sparse_note = (
        "A stress test closer to public click logs, not the issue's target data: most users "
        "click a few times (Zipf activity), popularity is flatter, 30% of clicks are noise, and "
        "items get vectors only from the warm-up clicks (most do not). The goals quoted are "
        "those of the planted log above, shown for comparison."
    )
    for name, title, intro in (
        ("eval", "Recommendation quality: synthetic log with drift, item vectors given", ""),
        ("eval-embed", "Recommendation quality: same log, item vectors learnt from clicks", ""),
        ("eval-sparse", "Recommendation quality: sparse long-tailed log", sparse_note),
    ):
        if name in results:
            r = results[name]
            extra = [intro, ""] if intro else []
            section(title, r, _eval_rows(r), *extra, f"data: `{r['_data_command']}`", "",
                    _eval_methods(r), "", *_eval_by_history(r))  # fmt: skip
    for name, r in results.items():
        if name.startswith("real-") and "methods" in r:
            section(f"Recommendation quality on a real log: {r['_title']}", r, _eval_rows(r),
                    REAL_NOTE, "", _eval_methods(r), "", *_eval_by_history(r))  # fmt: skip
    if "soak" in results:
        section("Soak: one worker at a steady rate, users arriving and expiring", results["soak"],
                _soak_rows(results["soak"]), SOAK_NOTE, "")  # fmt: skip
    return "\n".join(parts)


SOAK_NOTE = (
    "`make soak` (not in `make bench`), the JSON saved as bench-results/soak.json with its "
    "`_command`. Start / middle / end are reports after the warm-up; the broker is the "
    "embedded one, which keeps every record in memory (its RSS grows with the log)."
)


def _soak_rows(r: dict) -> list:
    def sme(key: str) -> str:
        return " / ".join(str(r[key][k]) for k in ("start", "middle", "end"))

    final = r["final"]
    return [
        ("seconds, clicks/s asked, clicks sent", f"{r['seconds']}, {r['rate']}, {r['clicks_sent']}"),
        ("distinct users sent / held at the end / expired", f"{r['distinct_users']} / "
         f"{final['users']} / {r.get('users_expired')}"),
        ("user_ttl_s", r["user_ttl_s"]),
        ("worker RSS start / middle / end, MB", sme("rss_mb")),
        ("worker RSS min / max after the warm-up, MB",
         f"{r['rss_mb_after_warmup']['min']} / {r['rss_mb_after_warmup']['max']}"),
        ("broker RSS start / middle / end, MB", sme("broker_rss_mb")),
        ("RocksDB on disk start / middle / end, MB", sme("rocksdb_mb")),
        ("users held start / middle / end", sme("users_held")),
        ("CF entries at most / cap / bound", f"{r['cf_entries_max']} / {r['cf_cap']} / "
         f"{r['cf_bound']}"),
        ("click-to-CF p99 start / middle / end, ms", sme("p99_ms")),
    ] + ([
        ("  of it to the fetch (producer, broker) p99, ms", sme("fetch_p99_ms")),
        ("  of it in the worker (fetch to CF) p99, ms", sme("worker_p99_ms")),
    ] if "worker_p99_ms" in r else []) + [
        ("lag start / middle / end (largest)", f"{sme('lag')} ({r['lag_max']})"),
        ("clicks applied / never visible in CF", f"{final['events_applied']} / "
         f"{final['clicks_not_visible']}"),
        ("stall watch steps (seek, restart, exit)", final.get("stalls")),
        ("worker exit code", r["worker_exit_code"]),
    ] + ([("every click applied in the end (caught up)", r["caught_up"])]
         if "caught_up" in r else [])  # fmt: skip


REAL_NOTE = (
    "A public log fetched for tuning and measuring, kept out of the repository (its licence "
    "forbids redistribution): get it as README's 'Real click logs' says, then run the command."
)


def load_results(results: Path = RESULTS) -> dict[str, dict]:
    """``{name: JSON}`` of the benchmarks that have a file in ``results``, in report order,
    then the real logs' evaluations (``real-*.json``, :func:`run_real`)."""
    out = {
        n: json.loads((results / f"{n}.json").read_text())
        for n in BENCHMARKS
        if (results / f"{n}.json").exists()
    }
    if (results / "soak.json").exists():  # make soak, not make bench: 30 minutes
        out["soak"] = json.loads((results / "soak.json").read_text())
    for path in sorted(results.glob("real-*.json")):
        out[path.stem] = json.loads(path.read_text())
    return out


def run_real(name: str, title: str, args: list[str], results: Path = RESULTS) -> None:
    """``clusterstream eval|tune ARGS --json`` on a real log the repository cannot hold
    (its licence forbids): the JSON goes to ``results/real-<name>.json`` with the
    command, so the report shows the figures next to the command that printed them."""
    results.mkdir(parents=True, exist_ok=True)
    args = [*args, "--json"] if "--json" not in args else args
    print(f"running real-{name}: clusterstream {' '.join(args)}", flush=True)
    result = _run(args)
    result["_command"] = "clusterstream " + " ".join(args)
    result["_title"] = title
    (results / f"real-{name}.json").write_text(json.dumps(result, indent=1, sort_keys=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="only rewrite the report")
    parser.add_argument("--smoke", action="store_true", help="CI sizes (figures mean nothing)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="JSON directory")
    parser.add_argument("--out", type=Path, default=Path("BENCHMARKS.md"))
    parser.add_argument("--real", metavar="NAME", help="evaluate a real log: ARGS after --")
    parser.add_argument("--title", default="", help="with --real: the section's title")
    parser.add_argument("names", nargs="*", default=list(BENCHMARKS))
    args, rest = parser.parse_known_args()
    if args.real:
        run_real(args.real, args.title or args.real, [*args.names, *rest], args.results)
        args.out.write_text(render(load_results(args.results)))
        print(f"wrote {args.out}", flush=True)
        return
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    if not args.write:
        run_all(args.names, args.results, smoke=args.smoke)
    args.out.write_text(render(load_results(args.results)))
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
