"""The command line: errors are one line on stderr and a non-zero exit code."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# every test here starts the CLI as its own process
pytestmark = pytest.mark.slow


def _run(*args, env=None, timeout=120):
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CLUSTERSTREAM_")}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "stream.cli", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
    )


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("clusterstream: error: ")
    assert "Traceback" not in stderr
    return lines[0]


def test_broker_without_binary_says_which_extra_to_install(tmp_path):
    not_a_binary = tmp_path / "tansu"
    not_a_binary.write_text("")
    result = _run("broker", env={"CALF_TANSU_BIN": str(not_a_binary)})
    assert result.returncode == 2
    assert "clusterstream[embedded]" in _one_error_line(result.stderr)


def test_invalid_settings_fail_in_one_line():
    result = _run("worker", env={"CLUSTERSTREAM_TOP_M": "lots"})
    assert result.returncode == 1
    assert "top_m" in _one_error_line(result.stderr)


def test_stats_of_an_absent_worker():
    result = _run("stats", "--url", "http://127.0.0.1:9", "--json")
    assert result.returncode == 1
    assert "cannot read" in _one_error_line(result.stderr)


def test_bench_recompute_refuses_fewer_users_than_k():
    result = _run("bench", "recompute", "--users", "5", "--k", "10", "--json")
    assert result.returncode == 2
    assert "--users" in _one_error_line(result.stderr)


@pytest.mark.parametrize("args", [["--help"], ["bench", "--help"]])
def test_help(args):
    result = _run(*args)
    assert result.returncode == 0 and "Usage" in result.stdout


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    result = _run(
        "synth", str(out), "--users", "300", "--clusters", "3", "--items", "300", "--dim", "16",
        "--events", "4000", "--days", "5", "--drift-at", "0.5", "--seed", "2",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("clicks.jsonl", "items.jsonl", "items_meta.jsonl", "truth.json"):
        assert (out / name).stat().st_size > 0
    return out


def _last_json(stdout: str) -> dict:
    import json

    return json.loads(stdout.strip().splitlines()[-1])


def test_synth_spans_the_days_asked(small_log):
    import json

    ts = [json.loads(line)["ts"] for line in (small_log / "clicks.jsonl").read_text().splitlines()]
    days = (max(ts) - min(ts)) / 86_400_000
    assert 4 < days < 6
    truth = json.loads((small_log / "truth.json").read_text())
    assert truth["drift_index"] == 2000 and len(truth["after"]) == 300


def test_eval_json_reports_every_method_and_the_truth(small_log):
    result = _run(
        "eval", str(small_log / "clicks.jsonl"), "--items", str(small_log / "items.jsonl"),
        "--k", "3", "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = _last_json(result.stdout)
    assert set(report["methods"]) == {
        "engine", "engine_cf", "engine_coclick", "engine_vector",
        "popularity", "centroid_item", "user_item", "covisit", "covisit_decayed", "covisit_next",
    }  # fmt: skip
    best = report["best_baseline"]
    assert best in report["methods"] and not best.startswith("engine")
    assert report["vs_best_baseline"][best] == {"hit_rate": 1.0, "ndcg": 1.0}
    assert 0 < report["item_vector_coverage"]["clicks"] <= 1
    assert report["clicks"] == 4000 and report["k"] == 3
    assert "ari" in report["clusters"]["after_recompute"]  # truth.json found next to the log
    assert report["source"]["skipped"] == {}


def test_eval_table_without_json(small_log):
    result = _run("eval", str(small_log / "clicks.jsonl"), "--items",
                  str(small_log / "items_meta.jsonl"), "--k", "3", "--warmup", "0.5")  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("engine ") for line in lines)
    assert any(line.startswith("ARI / NMI vs truth") for line in lines)
    assert any(line.startswith("  users with 5-19 clicks before (") for line in lines)
    versus = next(line for line in lines if line.startswith("engine / best baseline ("))
    assert versus.count("(95% ") == 2, versus
    assert not result.stdout.strip().startswith("{")


def test_eval_with_learnt_item_vectors(small_log):
    result = _run("eval", str(small_log / "clicks.jsonl"), "--embed", "svd:8", "--k", "3",
                  "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = _last_json(result.stdout)
    assert report["source"]["embed"] == "svd:8"
    assert 0 < report["items_with_vector"] <= report["items"]


def test_embed_writes_valid_item_records(small_log, tmp_path):
    import json

    from stream.wire.schemas import validate

    out = tmp_path / "vectors.jsonl"
    result = _run("embed", str(small_log / "clicks.jsonl"), "--dim", "8", "--out", str(out),
                  "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    stats = _last_json(result.stdout)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == stats["records"] == stats["items_embedded"] > 0
    lines = (small_log / "clicks.jsonl").read_text().splitlines()
    clicked = {json.loads(line)["item_id"] for line in lines}
    no_vector = stats["items_dropped"] + stats["items_isolated"]
    assert stats["items_embedded"] + no_vector == len(clicked)
    for rec in records[:20]:
        validate("item", rec)
        assert len(rec["vector"]) == 8


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["eval", "{log}/clicks.jsonl", "--format", "csv"], 2, "--format"),
        (["eval", "{log}/clicks.jsonl", "--embed", "pca:8"], 2, "--embed"),
        (["eval", "{log}/clicks.jsonl"], 2, "--items"),
        (["eval", "{log}/missing.jsonl", "--items", "{log}/items.jsonl"], 1, "cannot read"),
        (["embed", "{log}/clicks.jsonl", "--dim", "4000", "--out", "{log}/x.jsonl"], 1, "dim"),
        (["embed", "{log}/truth.json", "--out", "{log}/x.jsonl"], 1, "lines are bad"),
    ],
)
def test_eval_and_embed_errors_are_one_line(small_log, args, code, says):
    result = _run(*[a.format(log=small_log) for a in args])
    assert result.returncode == code, result.stderr
    # skipped input lines are logged as warnings before the one error line
    errors = [line for line in result.stderr.splitlines() if " WARNING " not in line]
    assert says in _one_error_line("\n".join(errors))


def test_eval_on_a_movielens_directory(tmp_path):
    """A public format end to end: ml-100k files written from planted clusters,
    item vectors derived from the genre flags (feature hashing), jobs on."""
    from stream.io.loaders import ML_GENRES
    from stream.io.synth import SynthConfig, generate

    data = generate(
        SynthConfig(n_users=300, n_clusters=3, n_items=150, dim=16, n_events=5000, seed=5,
                    rate_per_s=5000 / (5 * 86_400))
    )  # fmt: skip
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    lines = [
        f"{u + 1}\t{i + 1}\t{1 + (u + i) % 5}\t{ts // 1000}"
        for u, i, ts in zip(
            data.click_user.tolist(), data.click_item.tolist(), data.click_ts.tolist(), strict=True
        )
    ]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    movies = []
    for i, home in enumerate(data.item_cluster.tolist()):
        flags = ["0"] * len(ML_GENRES)
        flags[1 + home * 3] = flags[2 + home * 3] = "1"  # two genres per planted cluster
        movies.append(f"{i + 1}|Movie {i + 1} (1990)|01-Jan-1990||http://x|{'|'.join(flags)}")
    (folder / "u.item").write_bytes(("\n".join(movies) + "\n").encode("latin-1"))

    result = _run("eval", str(folder), "--format", "movielens", "--k", "3", "--json")
    assert result.returncode == 0, result.stderr
    report = _last_json(result.stdout)
    assert report["clicks"] == 5000 and report["items_with_vector"] == 150
    assert "clusters" not in report  # no truth file for a public format
    assert report["jobs"]["recomputes"] >= 2
    hr = {m: v["hit_rate"] for m, v in report["methods"].items()}
    assert hr["engine"] > hr["popularity"]


def test_eval_takes_worker_settings_by_set_and_env(small_log, tmp_path):
    base = ["eval", str(small_log / "clicks.jsonl"), "--items", str(small_log / "items.jsonl"),
            "--k", "3", "--warmup", "0.5", "--sample", "4", "--json"]  # fmt: skip
    plain = _last_json(_run(*base).stdout)
    cf_only = _run(*base, "--set", "recall_coclick=0", "--set", "recall_vector=0")
    assert cf_only.returncode == 0, cf_only.stderr
    got = _last_json(cf_only.stdout)["methods"]
    assert got["engine"] == got["engine_cf"]  # the blend is the CF source alone
    assert got["engine"] != plain["methods"]["engine"]
    bad = _run(*base, "--set", "halflife=3")
    assert bad.returncode == 2 and "no setting named 'halflife'" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_eval_fits_half_lives_and_blend_unless_a_setting_gives_them(small_log):
    from stream.offline.tune import BLENDS, TIME_SCALES

    base = ["eval", str(small_log / "clicks.jsonl"), "--items", str(small_log / "items.jsonl"),
            "--k", "3", "--warmup", "0.5", "--sample", "4", "--json"]  # fmt: skip
    knobs = ["cf_half_life_s", "coclick_half_life_s", "recall_cf", "recall_coclick"]
    fit = _last_json(_run(*base).stdout)["fit"]
    assert fit["fitted"] == sorted(knobs) and fit["given"] == []
    trials = fit["trials"]
    assert [t["half_life_s"] for t in trials] == list(TIME_SCALES)
    best = max(trials, key=lambda t: t["engine"])
    got = fit["settings"]
    assert got["cf_half_life_s"] == got["coclick_half_life_s"] == best["half_life_s"]
    assert [got["recall_coclick"], got["recall_cf"]] == best["blend"]
    assert tuple(best["blend"]) in BLENDS
    assert fit["baselines_best_at"] == max(trials, key=lambda t: t["baseline"])["half_life_s"]

    # a half-life given keeps both half-lives; the blend is still fitted, in one trial
    given = _run(*base, "--set", "cf_half_life_s=7200")
    assert given.returncode == 0, given.stderr
    fit = _last_json(given.stdout)["fit"]
    assert fit["given"] == ["cf_half_life_s"] and fit["fitted"] == ["recall_cf", "recall_coclick"]
    assert fit["settings"]["cf_half_life_s"] == 7200
    assert fit["settings"]["coclick_half_life_s"] == 30 * 86_400
    assert len(fit["trials"]) == 1 and fit["trials"][0]["half_life_s"] is None
    # every knob given: nothing to fit
    all_given = [a for k, v in [("cf_half_life_s", 60), ("coclick_half_life_s", 60),
                                ("recall_cf", 0.5), ("recall_coclick", 2)]
                 for a in ("--set", f"{k}={v}")]  # fmt: skip
    fit = _last_json(_run(*base, *all_given).stdout)["fit"]
    assert fit["fitted"] == [] and fit["trials"] == []
    assert fit["settings"] == {"cf_half_life_s": 60, "coclick_half_life_s": 60,
                               "recall_cf": 0.5, "recall_coclick": 2}  # fmt: skip
    kept = _last_json(_run(*base, "--no-fit").stdout)["fit"]
    assert kept["fitted"] == [] and kept["settings"]["cf_half_life_s"] == 86_400
    table = _run(*base[:-1])
    line = next(x for x in table.stdout.splitlines() if x.startswith("half-lives CF "))
    assert "(fitted on the warm-up: cf_half_life_s, coclick_half_life_s, recall_cf" in line
    # a warm-up too small to split for the fit: the settings' values, and why
    tiny = _run(*base[:2], "--items", str(small_log / "items.jsonl"), "--k", "2",
                "--max-clicks", "60", "--json")  # fmt: skip
    assert tiny.returncode == 0, tiny.stderr
    fit = _last_json(tiny.stdout)["fit"]
    assert fit["fitted"] == [] and "too few warm-up clicks" in fit["not_fitted"]
    assert fit["settings"]["cf_half_life_s"] == 86_400


def test_tune_writes_a_toml_the_worker_reads(small_log, tmp_path):
    out = tmp_path / "tuned.toml"
    result = _run("tune", str(small_log / "clicks.jsonl"), "--items",
                  str(small_log / "items.jsonl"), "--budget", "3", "--sample", "4",
                  "--out", str(out), "--json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = _last_json(result.stdout)
    assert len(report["trials"]) == 3
    assert report["tuned"]["hit_rate"] >= report["start"]["hit_rate"]
    import tomllib

    from stream.settings import Settings

    tuned = tomllib.loads(out.read_text())
    assert tuned == report["best"]
    assert Settings(**tuned).coclick_window == tuned["coclick_window"]


# -- bad input (issue 23): one line, non-zero exit, no traceback, no hang ------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_worker_refuses_a_missing_config_file(tmp_path):
    missing = tmp_path / "nowhere.toml"
    result = _run("worker", env={"CLUSTERSTREAM_CONFIG": str(missing)}, timeout=60)
    assert result.returncode == 1
    line = _one_error_line(result.stderr)
    assert str(missing) in line and "no such file" in line


def test_worker_refuses_a_config_file_that_is_not_toml(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("dim = \n")
    result = _run("worker", env={"CLUSTERSTREAM_CONFIG": str(bad)}, timeout=60)
    assert result.returncode == 1
    assert "not a TOML file" in _one_error_line(result.stderr)


def test_a_config_file_is_read(tmp_path):
    from stream.settings import load_settings

    good = tmp_path / "app.toml"
    good.write_text('app_id = "from-toml"\ndim = 12\n')
    old = os.environ.get("CLUSTERSTREAM_CONFIG")
    os.environ["CLUSTERSTREAM_CONFIG"] = str(good)
    try:
        s = load_settings()
    finally:
        if old is None:
            del os.environ["CLUSTERSTREAM_CONFIG"]
        else:
            os.environ["CLUSTERSTREAM_CONFIG"] = old
    assert (s.app_id, s.dim) == ("from-toml", 12)


@pytest.mark.parametrize("url", ["not a url", "127.0.0.1:6066", "ftp://127.0.0.1/", "http://"])
def test_stats_with_a_malformed_url(url):
    result = _run("stats", "--url", url)
    assert result.returncode == 2
    assert "--url must look like http://HOST:PORT" in _one_error_line(result.stderr)


def test_synth_into_a_path_that_is_a_file(tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    result = _run("synth", str(target), "--users", "10", "--events", "10", "--items", "10")
    assert result.returncode == 2
    assert "is a file, not a directory" in _one_error_line(result.stderr)
    assert target.read_text() == "x"


@pytest.fixture(scope="module")
def one_click_log(tmp_path_factory):
    path = tmp_path_factory.mktemp("log") / "clicks.jsonl"
    path.write_text('{"event_id":"e1","user_id":"u1","item_id":"i1","ts":1000}\n')
    return path


#: every sub-command that talks to Kafka (demo and bench e2e start their own broker)
KAFKA_COMMANDS = {
    "worker": ["worker"],
    "merge": ["merge", "--dry-run"],
    "recompute": ["recompute", "--dry-run"],
    "subscribe": ["subscribe", "assignments"],
    "replay": ["replay", "{log}"],
}


def test_every_kafka_command_is_in_the_unreachable_broker_test():
    from typer.main import get_command

    from stream.cli import app

    commands = set(get_command(app).commands)
    no_kafka = {"broker", "demo", "stats", "synth", "eval", "tune", "embed", "bench"}
    assert commands - no_kafka == set(KAFKA_COMMANDS)


@pytest.mark.parametrize("command", sorted(KAFKA_COMMANDS))
def test_every_kafka_command_against_an_unreachable_broker(command, one_click_log):
    """Nothing listens on the port: one line within 15 s, not 30 s of retries."""
    import time

    args = [a.format(log=one_click_log) for a in KAFKA_COMMANDS[command]]
    port = _free_port()
    started = time.monotonic()
    result = _run(*args, env={"CLUSTERSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}, timeout=60)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    line = _one_error_line(result.stderr)
    assert f"no Kafka broker at 127.0.0.1:{port}" in line
    assert elapsed < 15, elapsed


def test_a_port_that_accepts_but_never_answers_like_kafka():
    """A listener that is not a Kafka broker: the wait is bounded too."""
    import socket
    import time

    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        port = server.getsockname()[1]
        started = time.monotonic()
        result = _run("subscribe", "assignments",
                      env={"CLUSTERSTREAM_BOOTSTRAP_SERVERS": f"127.0.0.1:{port}"}, timeout=60)  # fmt: skip
        elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert "no Kafka answer within" in _one_error_line(result.stderr)
    assert elapsed < 15, elapsed


def test_replay_says_which_format_it_inferred_and_refuses_an_unknown_name(tmp_path):
    log = tmp_path / "clicks.parquet"
    log.write_text("x")
    result = _run("replay", str(log))
    assert result.returncode == 2
    assert "give --format" in _one_error_line(result.stderr)


def test_format_inference_from_names(tmp_path):
    from stream.errors import ConfigError
    from stream.io.replay import infer_format

    mind = tmp_path / "MINDsmall"
    mind.mkdir()
    (mind / "behaviors.tsv").write_text("")
    ml = tmp_path / "ml-latest"
    ml.mkdir()
    (ml / "ratings.csv").write_text("")
    assert infer_format(mind) == "mind"
    assert infer_format(mind / "behaviors.tsv") == "mind"
    assert infer_format(ml) == "movielens"
    assert infer_format(tmp_path / "x" / "u.data") == "movielens"
    assert infer_format(tmp_path / "Clicks.JSONL") == "jsonl"
    with pytest.raises(ConfigError, match="give --format"):
        infer_format(tmp_path)  # a directory with neither file


def test_client_library_logs_are_quiet_for_commands_but_not_for_the_worker(tmp_path):
    """kafka-python's and aiokafka's own warnings do not leak into replay's (and the
    other job commands') output; the worker's log keeps them; --verbose shows them."""
    import logging

    from typer.testing import CliRunner

    from stream.cli import app

    loggers = [logging.getLogger(name) for name in ("kafka", "aiokafka")]
    saved = [log.level for log in loggers]
    unknown = tmp_path / "clicks.parquet"
    try:
        for args, quiet in [
            (["replay", str(unknown)], True),
            (["subscribe", "--help"], True),
            (["worker", "--help"], False),
            (["--verbose", "replay", str(unknown)], False),
        ]:
            for log in loggers:
                log.setLevel(logging.NOTSET)
            CliRunner().invoke(app, args)
            assert all((log.level == logging.CRITICAL) == quiet for log in loggers), args
    finally:
        for log, level in zip(loggers, saved, strict=True):
            log.setLevel(level)
