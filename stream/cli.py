"""``clusterstream``: one command with sub-commands.

Errors the user can fix (bad arguments, bad settings, bad input files, a
broker that is not there) print one line on stderr and exit non-zero; they
never print a traceback.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from stream.errors import ClusterstreamError

app = typer.Typer(
    name="clusterstream",
    help="Streaming incremental clustering for cluster-recall recommendation.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks: print figures and one JSON object on the last line.")
app.add_typer(bench_app, name="bench")

err = Console(stderr=True)


def fail(message: str, code: int = 1) -> None:
    """Print one line on stderr and exit with ``code``."""
    err.print(f"clusterstream: error: {message}", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def emit_json(obj: dict, pretty: bool = False) -> None:
    """The result object on stdout's last line."""
    if pretty:
        Console().print_json(data=obj)
    print(json.dumps(obj, sort_keys=False), flush=True)


@contextmanager
def progress_bars(enabled: bool = True):
    """A rich progress display on stderr; yields ``advance(phase, n, total=None)``."""
    if not enabled:
        yield lambda phase, n, total=None: None
        return
    tasks: dict[str, int] = {}
    with Progress(
        TextColumn("{task.description:>10}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bars:

        def advance(phase: str, n: int, total: int | None = None) -> None:
            if phase not in tasks:
                tasks[phase] = bars.add_task(phase, total=total)
            bars.update(tasks[phase], advance=n, total=total if total is not None else None)

        yield advance


#: sub-commands whose Kafka client libraries' own log lines are hidden without --verbose
#: (the worker keeps them: its log is where an operator looks)
_QUIET_CLIENT_LOGS = ("merge", "recompute", "replay", "subscribe")


@app.callback()
def _root(
    ctx: typer.Context,
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log at INFO level on stderr"),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not verbose and ctx.invoked_subcommand in _QUIET_CLIENT_LOGS:
        # their retries and warnings would bury the one line that says what failed
        for name in ("kafka", "aiokafka"):
            logging.getLogger(name).setLevel(logging.CRITICAL)


@bench_app.command("core")
def bench_core(
    users: int = typer.Option(1_000_000, min=1),
    dim: int = typer.Option(64, min=2),
    k: int = typer.Option(500, min=1),
    events: int = typer.Option(1_000_000, min=1),
    batch: int = typer.Option(1024, min=1),
    items: int = typer.Option(20_000, min=1),
    river_events: int = typer.Option(2000, min=1, help="prefix of the stream fed to river"),
    seed: int = typer.Option(0, min=0),
    repeat: int = typer.Option(3, min=1, help="interleaved passes of ours and scikit-learn"),
    threads: int = typer.Option(2, min=1, help="threads of our user phase (EngineConfig.threads)"),
    as_json: bool = typer.Option(False, "--json", help="only the JSON line on stdout"),
    progress: bool = typer.Option(True, help="progress bars on stderr"),
) -> None:
    """process_batch vs scikit-learn MiniBatchKMeans vs river KMeans on one stream
    (medians of ``repeat`` interleaved passes)."""
    from stream.bench import core

    totals = {
        "ours": events * repeat, "sklearn": events * repeat, "river": min(river_events, events)
    }  # fmt: skip
    with progress_bars(progress) as advance:
        result = core.run(
            users,
            dim,
            k,
            events,
            batch,
            items,
            river_events,
            seed,
            repeat,
            progress=lambda phase, n: advance(phase, n, totals[phase]),
            threads=threads,
        )
    emit_json(result, pretty=not as_json)


@bench_app.command("e2e")
def bench_e2e(
    events: int = typer.Option(200_000, min=1, help="clicks pre-loaded for the catch-up run"),
    users: int = typer.Option(20_000, min=1),
    items: int = typer.Option(5000, min=1),
    dim: int = typer.Option(64, min=2),
    clusters: int = typer.Option(64, min=1, help="planted clusters of the synthetic stream"),
    k: int = typer.Option(64, min=1, help="centres published first (k-means on the item vectors)"),
    partitions: int = typer.Option(2, min=1),
    batch_size: int = typer.Option(None, min=1, help="worker batch_size (default: settings)"),
    latency_events: int = typer.Option(
        None, min=1, help="clicks of the latency run (default: --latency-seconds' worth)"
    ),
    latency_seconds: float = typer.Option(15.0, min=0.1, help="length of the latency run"),
    latency_fraction: float = typer.Option(
        0.5, min=0.01, max=2.0, help="latency-run rate as a fraction of the catch-up rate"
    ),
    faust_events: int = typer.Option(
        None, min=2, help="events the faust baseline reads (default: --events)"
    ),
    latency_producer: str = typer.Option(
        "aiokafka-batch",
        help="load generator of the latency run: aiokafka-batch (5 ms ticks) | kafka-python",
    ),
    seed: int = typer.Option(0, min=0),
    workers: int = typer.Option(
        1, min=1, help="worker processes in the catch-up run (<= --partitions)"
    ),
    cf_apply_local: bool = typer.Option(
        True, help="workers add the CF deltas of clusters they own at once (settings)"
    ),
    repeat: int = typer.Option(
        3, min=1, help="catch-up passes (a fresh app each); the figures are the median pass's"
    ),
    latency_repeat: int = typer.Option(
        3, min=1, help="latency passes (a fresh app each); the figures are the median p99 pass's"
    ),
    as_json: bool = typer.Option(False, "--json", help="only the JSON line on stdout"),
    progress: bool = typer.Option(True, help="progress lines on stderr"),
    poll_hz: float = typer.Option(
        0.0, min=0, help="GET /stats, /metrics and /dashboard of the workers this often (ops load)"
    ),
) -> None:
    """One worker on the embedded broker: catch-up rate vs a raw consumer and a
    per-event faust agent, click-to-CF latency at half that rate, peak RSS."""
    from stream.bench import e2e

    if items < max(k, clusters):
        fail(f"--items ({items}) must be at least --k ({k}) and --clusters ({clusters})", 2)
    if events < 2:
        fail("--events must be at least 2", 2)
    if latency_producer not in e2e.LATENCY_PRODUCERS:
        fail(f"--latency-producer must be one of {', '.join(e2e.LATENCY_PRODUCERS)}", 2)
    if workers > partitions:
        fail(f"--workers ({workers}) must be at most --partitions ({partitions})", 2)

    def echo(line: str) -> None:
        if progress:
            err.print(line, highlight=False, markup=False, soft_wrap=True)

    result = e2e.run(
        events=events,
        users=users,
        items=items,
        dim=dim,
        clusters=clusters,
        k=k,
        partitions=partitions,
        batch_size=batch_size,
        latency_events=latency_events,
        latency_seconds=latency_seconds,
        faust_events=faust_events,
        latency_fraction=latency_fraction,
        latency_producer=latency_producer,
        seed=seed,
        workers=workers,
        cf_apply_local=cf_apply_local,
        repeat=repeat,
        latency_repeat=latency_repeat,
        echo=echo,
        poll_hz=poll_hz,
    )
    emit_json(result, pretty=not as_json)


@bench_app.command("recompute")
def bench_recompute(
    users: int = typer.Option(1_000_000, min=1),
    dim: int = typer.Option(64, min=2),
    k: int = typer.Option(500, min=1),
    seed: int = typer.Option(0, min=0),
    sample: int = typer.Option(200_000, min=1, help="k-means runs on at most this many vectors"),
    from_kafka: bool = typer.Option(
        False, "--from-kafka", help="read the users from a changelog topic on the embedded broker"
    ),
    as_json: bool = typer.Option(False, "--json", help="only the JSON line on stdout"),
) -> None:
    """One recompute (k-means + assignment + Hungarian matching) over synthetic users."""
    from stream.bench import recompute

    if users < k:
        fail(f"--users ({users}) must be at least --k ({k})", 2)
    if from_kafka:
        result = recompute.run_from_kafka(users, dim, k, seed, sample)
    else:
        result = recompute.run(users, dim, k, seed, sample)
    emit_json(result, pretty=not as_json)


def _settings(**overrides):
    from stream.settings import load_settings

    return load_settings(**{k: v for k, v in overrides.items() if v is not None})


#: how long a command waits for the first answer of the brokers before giving up
BROKER_WAIT_S = 5.0


def _kafka_settings(**overrides):
    """Settings of a command that talks to Kafka, once a broker has answered.

    Without this check kafka-python retries for 30 s and then fails deep in a
    call; here the command stops with one line instead.
    """
    settings = _settings(**overrides)
    check_broker(settings, BROKER_WAIT_S)
    return settings


def check_broker(settings, wait_s: float) -> None:
    """Raise :class:`BrokerUnavailable` unless a bootstrap server answers within ``wait_s``."""
    from kafka.admin import KafkaAdminClient
    from kafka.errors import KafkaError

    from stream.errors import BrokerUnavailable
    from stream.io.kafka import bootstrap_wait, kafka_python_config

    where = f"no Kafka broker at {settings.bootstrap_servers} (set CLUSTERSTREAM_BOOTSTRAP_SERVERS)"
    if not any(_port_open(server, wait_s) for server in settings.bootstrap_servers.split(",")):
        raise BrokerUnavailable(f"{where}: nothing listens there")
    config = {**kafka_python_config(settings), **bootstrap_wait(KafkaAdminClient, wait_s)}
    client_log = logging.getLogger("kafka")
    level = client_log.level
    client_log.setLevel(logging.CRITICAL)  # its retries are this one failure
    try:
        KafkaAdminClient(client_id=f"{settings.app_id}-cli", **config).close()
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(
            f"{where}: no Kafka answer within {wait_s:g} s ({type(exc).__name__})"
        ) from None
    finally:
        client_log.setLevel(level)


def _port_open(server: str, wait_s: float) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``wait_s``."""
    import socket

    host, _, port = server.strip().rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "localhost", int(port)), wait_s):
            return True
    except (OSError, ValueError):
        return False


@app.command()
def worker(
    bootstrap_servers: str = typer.Option(None, help="overrides CLUSTERSTREAM_BOOTSTRAP_SERVERS"),
    app_id: str = typer.Option(None, help="overrides CLUSTERSTREAM_APP_ID"),
    web_port: int = typer.Option(None, help="overrides CLUSTERSTREAM_WEB_PORT"),
    loglevel: str = typer.Option("INFO", help="log level of the worker"),
) -> None:
    """Run a stream worker (settings from CLUSTERSTREAM_* variables and the TOML file)."""
    settings = _kafka_settings(
        bootstrap_servers=bootstrap_servers, app_id=app_id, web_port=web_port
    )
    from stream.app.app import run_worker  # faust and the core: seconds to import

    run_worker(settings, loglevel=loglevel)


@app.command()
def broker(
    port: int = typer.Option(0, min=0, max=65535, help="port on 127.0.0.1 (0: a free one)"),
) -> None:
    """Run the embedded Kafka-protocol broker (tansu) on 127.0.0.1 until Ctrl-C / SIGTERM."""
    import signal
    import threading

    from stream.errors import BrokerUnavailable
    from stream.io.broker import EmbeddedBroker

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        b = EmbeddedBroker(port or None).start()
    except BrokerUnavailable as exc:
        fail(str(exc).splitlines()[0], 2)
    with b:
        print(b.bootstrap, flush=True)
        err.print(
            f"embedded broker on {b.bootstrap} (pid {b.pid}); Ctrl-C stops it", highlight=False
        )
        while not stop.wait(0.5):
            if not b.running:
                fail("the embedded broker exited")


@app.command()
def stats(
    url: str = typer.Option("http://127.0.0.1:6066", help="a worker's web address"),
    as_json: bool = typer.Option(False, "--json", help="print the raw JSON"),
    digest: bool = typer.Option(
        True, help="include the state digest (costs a pass over the state)"
    ),
) -> None:
    """Print a worker's /stats."""
    import http.client
    import urllib.error
    import urllib.parse
    import urllib.request

    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        fail(f"--url must look like http://HOST:PORT, got {url!r}", 2)
    target = f"{url.strip().rstrip('/')}/stats?digest={'1' if digest else '0'}"
    try:
        with urllib.request.urlopen(target, timeout=30) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as exc:
        fail(f"cannot read {target}: {exc}")
    if as_json:
        print(json.dumps(data))
    else:
        Console().print_json(data=data)


@app.command()
def demo(
    rate: float = typer.Option(300.0, min=1, help="synthetic clicks per second"),
    clusters: int = typer.Option(8, min=2, help="planted interest clusters (and k)"),
    web_port: int = typer.Option(6066, min=0, max=65535, help="worker web port (0: a free one)"),
    duration: float = typer.Option(None, min=1, help="stop after this many seconds"),
) -> None:
    """Embedded broker + worker + synthetic clicks, with a status line every few seconds."""
    from stream.app.demo import run_demo

    code = run_demo(rate, clusters, web_port, duration, echo=lambda line: print(line, flush=True))
    raise typer.Exit(code)


@app.command()
def merge(
    min_size: int = typer.Option(None, min=0, help="overrides min_cluster_size"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the plan, publish nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON line"),
) -> None:
    """Merge clusters below the minimum size into their most similar cluster (dynamic rule)."""
    settings = _kafka_settings()
    from stream.app import admin

    report = admin.merge(settings, min_size, dry_run)
    if as_json:
        emit_json(report)
        return
    for step in report["steps"]:
        print(
            f"merge {step['source']} ({step['source_size']} members) into {step['target']} "
            f"({step['target_size_before']} -> {step['target_size_after']}), cosine {step['similarity']:.3f}"
        )
    if not report["steps"]:
        print(f"no cluster below {report['min_size']} members")
    verb = "would publish" if dry_run else "published"
    if report["steps"]:
        print(f"{verb} version {report['published_version'] or report['from_version'] + 1}: "
              f"{report['clusters_before']} -> {report['clusters_after']} clusters")  # fmt: skip


@app.command()
def recompute(
    k: int = typer.Option(None, min=1, help="number of centres (default: the current k)"),
    k_range: str = typer.Option(None, help="A:B, choose k by the elbow method"),
    sample: int = typer.Option(None, min=1, help="cluster at most this many users"),
    dry_run: bool = typer.Option(False, "--dry-run", help="print the figures, publish nothing"),
    as_json: bool = typer.Option(False, "--json", help="print the report as one JSON line"),
) -> None:
    """Recompute the centres from all user vectors (the users changelog); ids stay stable."""
    from stream.settings import parse_k_range

    if k is not None and k_range is not None:
        fail("give --k or --k-range, not both", 2)
    try:
        bounds = parse_k_range(k_range) if k_range else None
    except ValueError as exc:
        fail(str(exc), 2)
    settings = _kafka_settings()
    from stream.app import admin

    with progress_bars(not as_json) as advance:
        report = admin.run_recompute(settings, k, bounds, sample, dry_run, progress=advance)
    if as_json:
        emit_json(report)
    else:
        for line in recompute_summary(report):
            print(line, flush=True)


def recompute_summary(report: dict) -> list[str]:
    """The report of ``recompute`` for a person: a few lines, not the JSON.

    >>> lines = recompute_summary({"dry_run": True, "from_version": 3, "k": 8, "n_vectors": 900,
    ...     "n_sampled": 900, "users_read": 950, "inertia_before": 0.21, "inertia_after": 0.12,
    ...     "matched": 7, "new": 1, "retired": 1, "user_churn": 0.05, "seconds_total": 1.5,
    ...     "published_version": None, "dim": 32})
    >>> print("\\n".join(lines))
    recompute from version 3: k=8 over 900 of 950 users (dim 32), 1.5 s
    inertia 0.21 -> 0.12; ids: 7 kept, 1 new, 1 retired; user churn 0.05
    dry run: would publish version 4
    """
    before = report.get("inertia_before")
    source = report.get("from_version")
    lines = [
        f"recompute from version {source if source is not None else '- (bootstrap)'}: "
        f"k={report['k']} over {report['n_sampled']} of {report['users_read']} users"
        f"{' (dim ' + str(report['dim']) + ')' if report.get('dim') else ''}, "
        f"{report.get('seconds_total', 0):g} s",
        f"inertia {before if before is not None else '-'} -> {report['inertia_after']}; ids: "
        f"{report['matched']} kept, {report['new']} new, {report['retired']} retired; "
        f"user churn {report['user_churn'] if report.get('user_churn') is not None else '-'}",
    ]
    if report.get("dry_run"):
        lines.append(f"dry run: would publish version {(source or 0) + 1}")
    else:
        lines.append(f"published version {report['published_version']}")
    return lines


@app.command()
def subscribe(
    topic: str = typer.Argument(
        ..., help="e.g. assignments, cluster-candidates, centres, clicks-dlq"
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    from_beginning: bool = typer.Option(False, help="start at the oldest record"),
) -> None:
    """Print the records of an output topic as they arrive (Ctrl-C stops)."""
    settings = _kafka_settings()
    from stream.app import admin

    try:
        for record in admin.subscribe(settings, topic, from_beginning):
            if as_json:
                print(json.dumps(record), flush=True)
            else:
                print(f"{record['topic']}[{record['partition']}]@{record['offset']} "
                      f"{record['key']}: {json.dumps(record['value'])}", flush=True)  # fmt: skip
    except KeyboardInterrupt:
        pass


@app.command()
def synth(
    out: str = typer.Argument(
        ..., help="directory to write clicks.jsonl, items.jsonl, items_meta.jsonl, truth.json"
    ),
    users: int = typer.Option(5000, min=1),
    clusters: int = typer.Option(8, min=1),
    items: int = typer.Option(3000, min=1),
    dim: int = typer.Option(32, min=2),
    events: int = typer.Option(100_000, min=1),
    days: float = typer.Option(30.0, min=0.001, help="days the clicks span"),
    drift_at: float = typer.Option(
        None, min=0, max=1, help="fraction of the stream where users move"
    ),
    drift_users: float = typer.Option(0.2, min=0, max=1),
    zipf: float = typer.Option(1.2, min=0, help="item popularity exponent inside a cluster"),
    user_activity: float = typer.Option(
        0.0, min=0, help="Zipf exponent of user activity (0 = uniform; ~1 = sparse, long-tailed)"
    ),
    noise: float = typer.Option(0.1, min=0, max=1, help="share of clicks on random popular items"),
    seed: int = typer.Option(0, min=0),
) -> None:
    """Write a synthetic click log with planted clusters (and drift) and its ground truth."""
    from pathlib import Path

    from stream.io.synth import SynthConfig, write_dataset

    if Path(out).exists() and not Path(out).is_dir():
        fail(f"{out} is a file, not a directory: give a directory for the dataset", 2)
    config = SynthConfig(
        n_users=users, n_clusters=clusters, n_items=items, dim=dim, n_events=events, seed=seed,
        rate_per_s=events / (days * 86_400), drift_at=drift_at, drift_users=drift_users,
        zipf_a=zipf, user_activity_a=user_activity, noise=noise,
    )  # fmt: skip
    try:
        paths = write_dataset(Path(out), config)
    except OSError as exc:
        fail(f"cannot write the dataset to {out}: {exc.strerror or exc}")
    for name, path in paths.items():
        print(f"{name:10s} {path}")


#: ``--set name=value`` (repeatable): any worker setting, over the environment and the TOML.
SET_OPTION = typer.Option(None, "--set", help="name=value: any worker setting (repeatable)")


def _eval_config(sets, dim: int, *, min_size, merge_every, recompute_every, k, seed, **fields):
    """The evaluation's config: the worker's settings (env, TOML, ``--set``) and
    the eval options given (which win over them)."""
    import dataclasses

    from stream.offline.evaluate import eval_config
    from stream.settings import parse_assignments

    try:
        settings = _settings(**parse_assignments(sets))
    except ClusterstreamError as exc:
        fail(str(exc), 2)
    chosen = settings.model_fields_set
    if k is None and settings.k_range is None and "k" in chosen:
        k = settings.k
    fields.update(engine=dataclasses.replace(settings.engine_config(), dim=dim), k=k)
    if settings.k_range is not None:
        fields["k_range"] = settings.k_bounds()
    if seed is not None:
        fields["seed"] = seed
    if min_size is not None:
        fields["min_cluster_size"] = min_size
    if merge_every is not None:
        fields["merge_every_ms"] = merge_every * 1000 or None
    if recompute_every is not None:
        fields["recompute_every_ms"] = recompute_every * 3_600_000 or None
    return eval_config(settings, **fields)


def _settings_chosen(sets) -> set[str]:
    """The settings given by the environment, the TOML or ``--set`` (not defaults)."""
    from stream.settings import parse_assignments

    try:
        return set(_settings(**parse_assignments(sets)).model_fields_set)
    except ClusterstreamError as exc:
        fail(str(exc), 2)


def _eval_inputs(clicks: str, fmt: str, items, embed, train_share: float, seed, max_clicks=None):
    """(log, item records or None, learnt item vectors or None, dim) for eval and tune;
    ``--embed`` learns on the first ``train_share`` of the clicks only; ``max_clicks``
    keeps the log's first clicks (in time order)."""
    import dataclasses

    from stream.io.loaders import FORMATS, load

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}", 2)
    if embed and items:
        fail("give --items or --embed, not both", 2)
    if embed and not (embed.startswith("svd:") and embed[4:].isdigit() and int(embed[4:]) >= 2):
        fail("--embed must look like svd:32 (dimension >= 2)", 2)
    log = load(clicks, fmt, items)
    if max_clicks is not None:
        log = dataclasses.replace(log, clicks=log.clicks.slice(0, max_clicks))
    if len(log.clicks) < 2:
        fail(f"{clicks}: fewer than 2 usable clicks", 1)
    if embed:
        try:
            vectors = _learn_vectors(log.clicks, embed, train_share, seed)
        except ValueError as exc:
            fail(f"--embed on the warm-up clicks: {exc}", 1)
        return log, None, vectors, int(embed[4:])
    records = log.items
    dims = {len(r["vector"]) for r in records if "vector" in r}
    if len(dims) > 1:
        fail(f"item vectors of different lengths: {sorted(dims)}", 1)
    if not records:
        fail("no item has a vector or metadata: give --items FILE or --embed svd:D", 2)
    return log, records, None, dims.pop() if dims else 64


def _learn_vectors(clicks, embed: str, train_share: float, seed) -> tuple[list[str], object]:
    """``--embed svd:D`` item vectors (ids, (n, D) float32) learnt on the first
    ``train_share`` of ``clicks`` only: no peeking at the clicks being predicted.
    Raises ``ValueError`` when that part cannot give them."""
    from stream.core.embed import learn_item_vectors

    warm = clicks.slice(0, int(len(clicks) * train_share))
    emb = learn_item_vectors(
        warm.user_ids, warm.item_ids, warm.ts, dim=int(embed[4:]), seed=seed or 0
    )
    return emb.item_ids, emb.vectors


def _fit(clicks, records, embed, config, seed, given: set[str], progress):
    """eval's fit to the log (:func:`stream.offline.tune.fit_to_log`) of the
    half-lives and blend weights no setting gives (None if every one is given);
    with ``--embed``, on vectors learnt from the part the trials train on."""
    import dataclasses

    from stream.offline.evaluate import evaluate
    from stream.offline.tune import BLEND_KNOBS, BLENDS, TIME_KNOBS, TIME_SCALES, fit_to_log

    half_lives = () if given & set(TIME_KNOBS) else TIME_SCALES
    blends = () if given & set(BLEND_KNOBS) else BLENDS
    if not half_lives and not blends:
        return None
    inner = 0.5  # of the warm-up: trains; the rest of the warm-up is scored
    vectors = _learn_vectors(clicks, embed, config.warmup * inner, seed) if embed else None
    # every second click is scored at most: the choice needs a ranking, not a figure
    trial = dataclasses.replace(config, sample=max(config.sample, 2))
    return fit_to_log(
        clicks, trial, lambda part, cfg: evaluate(part, records, cfg, None, vectors),
        half_lives, blends, inner_warmup=inner, progress=progress,
    )  # fmt: skip


def _time_scale_text(seconds: float) -> str:
    """A half-life in minutes, hours or (from one day on) days.

    >>> _time_scale_text(900.0), _time_scale_text(3600.0), _time_scale_text(86400 * 365)
    ('15 min', '1 h', '365 d')
    """
    if seconds < 3600:
        return f"{seconds / 60:g} min"
    return f"{seconds / 86400:g} d" if seconds >= 86400 else f"{seconds / 3600:g} h"


def _fit_text(fit: dict) -> str:
    """eval's line on the half-lives and blend weights it ran with."""
    got = fit["settings"]
    text = (f"half-lives CF {_time_scale_text(got['cf_half_life_s'])}, co-click "
            f"{_time_scale_text(got['coclick_half_life_s'])}; blend recall_coclick "
            f"{got['recall_coclick']}, recall_cf {got['recall_cf']}")  # fmt: skip
    if fit.get("not_fitted"):
        return text + f" (from the settings: no fit, {fit['not_fitted']})"
    if not fit["fitted"]:
        return text + " (from the settings)"
    text += f" (fitted on the warm-up: {', '.join(fit['fitted'])}"
    if fit["trials"][0]["half_life_s"] is not None:
        tried = ", ".join(f"{_time_scale_text(t['half_life_s'])} {t['engine']}"
                          for t in fit["trials"])  # fmt: skip
        text += (f"; engine HitRate + NDCG per half-life: {tried}; the best baseline "
                 f"scored best at {_time_scale_text(fit['baselines_best_at'])}")  # fmt: skip
    return text + ")"


@app.command("eval")
def eval_(
    clicks: str = typer.Argument(..., help="click log (file or directory)"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | mind | movielens | globo"),
    items: str = typer.Option(
        None, help="item records (jsonl), news.tsv (mind) or u.item (movielens)"
    ),
    embed: str = typer.Option(None, help="svd:D: learn D-dim item vectors from the warm-up clicks"),
    truth: str = typer.Option(None, help="truth.json of a synthetic log (default: next to CLICKS)"),
    k: int = typer.Option(None, min=1, help="number of clusters (default: elbow over 4:64)"),
    warmup: float = typer.Option(0.3, min=0.01, max=0.99),
    n: int = typer.Option(10, min=1, max=1000),
    batch: int = typer.Option(64, min=1, help="clicks per replay step"),
    min_size: int = typer.Option(
        None, min=0, help="merge rule: smallest cluster kept (setting min_cluster_size)"
    ),
    merge_every: float = typer.Option(
        None, min=0, help="merge job period in seconds of log time (0 = never; merge_interval_s)"
    ),
    recompute_every: float = typer.Option(
        None, min=0, help="recompute job period in hours of log time (0 = never; default daily)"
    ),
    sample: int = typer.Option(1, min=1, help="score every N-th click only (all are learnt)"),
    max_clicks: int = typer.Option(None, min=2, help="the log's first N clicks only"),
    fit: bool = typer.Option(
        True, help="fit the half-lives and blend weights no setting gives to the log's warm-up"
    ),
    set_: list[str] = SET_OPTION,
    seed: int = typer.Option(None, min=0),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on the last line"),
) -> None:
    """Replay a click log through the core and compare cluster recall with baselines.

    Every engine, blend and job setting the worker reads is taken the same way
    (environment, CLUSTERSTREAM_CONFIG, or --set name=value)."""
    import time
    from pathlib import Path

    from stream.offline.evaluate import evaluate, interval_text
    from stream.offline.tune import BLEND_KNOBS, TIME_KNOBS, settings_of, with_setting

    log, records, item_vectors, dim = _eval_inputs(
        clicks, fmt, items, embed, warmup, seed, max_clicks
    )
    truth_map = None
    truth_path = Path(truth) if truth else Path(clicks).parent / "truth.json"
    if truth or (fmt == "jsonl" and truth_path.exists()):
        import orjson

        try:
            raw = orjson.loads(truth_path.read_bytes())
            truth_map = raw.get("after", raw)
        except (OSError, orjson.JSONDecodeError, AttributeError) as exc:
            fail(f"{truth_path}: not a truth file: {exc}", 1)
    config = _eval_config(set_, dim, n=n, warmup=warmup, k=k, batch=batch, sample=sample,
                          seed=seed, min_size=min_size, merge_every=merge_every,
                          recompute_every=recompute_every)  # fmt: skip
    knobs = (*TIME_KNOBS, *BLEND_KNOBS)
    given = set(knobs) & _settings_chosen(set_)
    fitted, fit_seconds, unfit = None, 0.0, None
    try:
        with progress_bars(not as_json) as advance:
            if fit:
                started = time.perf_counter()
                try:
                    fitted = _fit(log.clicks, records, embed, config, seed, given, advance)
                except ValueError as exc:  # a warm-up too small to split: the settings, said
                    unfit = str(exc)
                fit_seconds = round(time.perf_counter() - started, 2)
            for name, value in (fitted.settings if fitted else {}).items():
                config = with_setting(config, name, value)
            report = evaluate(log.clicks, records, config, truth_map, item_vectors, advance)
    except ValueError as exc:
        fail(f"{clicks}: {exc}", 1)
    report["source"] = {"path": clicks, "format": fmt, "embed": embed, "skipped": log.skipped}
    chosen = settings_of(config)
    report["fit"] = {
        "settings": {name: chosen[name] for name in knobs},
        "fitted": sorted(fitted.settings) if fitted else [],
        "given": sorted(given),
        "trials": fitted.trials if fitted else [],
        "baselines_best_at": fitted.baselines_best_at if fitted else None,
        "seconds": fit_seconds,
        "not_fitted": unfit,
    }
    if as_json:
        emit_json(report)
        return
    print(f"{report['evaluated']} clicks evaluated after {report['warmup_clicks']} warm-up clicks, "
          f"{report['users']} users, {report['items']} items, k={report['k']}")  # fmt: skip
    print(_fit_text(report["fit"]))
    print(
        f"{'method':16s} {'HitRate@' + str(n):>10} {'NDCG@' + str(n):>10} {'MRR':>10} "
        f"{'coverage':>10} {'HR / best':>10} {'NDCG / best':>12}"
    )
    for method, m in report["methods"].items():
        vs = report["vs_best_baseline"][method]
        print(
            f"{method:16s} {m['hit_rate']:>10} {m['ndcg']:>10} {m['mrr']:>10} {m['coverage']:>10} "
            f"{vs['hit_rate']!s:>10} {vs['ndcg']!s:>12}"
        )
    best = report["best_baseline"]
    vs, ci = report["vs_best_baseline"]["engine"], report["vs_best_baseline_interval"]
    print(f"engine / best baseline ({best}): HitRate {vs['hit_rate']} "
          f"(95% {interval_text(ci['hit_rate'])}), NDCG {vs['ndcg']} "
          f"(95% {interval_text(ci['ndcg'])}); "
          f"engine / popularity {report['engine_vs_popularity']}")  # fmt: skip
    for name, b in report["by_history"].items():
        vs = b["engine_vs_best_baseline"]
        print(f"  users with {name} clicks before ({b['evaluated']} clicks): engine / "
              f"{b['best_baseline']} HitRate {vs['hit_rate']}, NDCG {vs['ndcg']}; "
              f"engine / popularity {b['engine_vs_popularity']}")  # fmt: skip
    cov = report["item_vector_coverage"]
    print(f"item vectors given: {cov['items']:.1%} of the log's items, {cov['clicks']:.1%} of "
          f"its clicks; given or learnt by the end: {cov['items_learnt']:.1%}, "
          f"{cov['clicks_learnt']:.1%}")  # fmt: skip
    jobs = report["jobs"]
    print(f"jobs in log time: {jobs['recomputes']} recomputes ({jobs['ids_new']} new ids), "
          f"{jobs['merges']} merges ({jobs['ids_merged']} ids merged); k at the end "
          f"{report['k_at_end']}")  # fmt: skip
    churn = report["recompute_id_churn"]
    print(f"id churn of a recompute on unchanged data: {churn['user_churn_with_matching']} with "
          f"matching, {churn['user_churn_without_matching']} without")  # fmt: skip
    if "clusters" in report:
        c = report["clusters"]
        print(f"ARI / NMI vs truth: {c['at_end']['ari']} / {c['at_end']['nmi']} at the end, "
              f"{c['after_recompute']['ari']} / {c['after_recompute']['nmi']} after a recompute")  # fmt: skip


@app.command()
def tune(
    clicks: str = typer.Argument(..., help="click log (file or directory)"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | mind | movielens | globo"),
    items: str = typer.Option(None, help="item records, news.tsv (mind) or u.item / movies.csv"),
    embed: str = typer.Option(None, help="svd:D: learn D-dim item vectors from the training part"),
    warmup: float = typer.Option(0.3, min=0.01, max=0.99, help="eval's warm-up: all tune reads"),
    n: int = typer.Option(10, min=1, max=1000),
    budget: int = typer.Option(
        None, min=1, help="configurations evaluated at most (default: enough for every knob)"
    ),
    sample: int = typer.Option(2, min=1, help="score every N-th click of the tuning part"),
    max_clicks: int = typer.Option(None, min=2, help="the log's first N clicks only"),
    out: str = typer.Option("clusterstream.tuned.toml", help="TOML the worker reads"),
    set_: list[str] = SET_OPTION,
    seed: int = typer.Option(None, min=0),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on the last line"),
) -> None:
    """Search the main knobs on the warm-up part of a log (what eval never scores) and
    write the best as a TOML for CLUSTERSTREAM_CONFIG."""
    from pathlib import Path

    from stream.offline.evaluate import evaluate
    from stream.offline.tune import to_toml
    from stream.offline.tune import tune as run_tune

    inner = 0.5  # of the warm-up: trains; the rest of the warm-up is scored
    log, records, vectors, dim = _eval_inputs(
        clicks, fmt, items, embed, warmup * inner, seed, max_clicks
    )
    config = _eval_config(set_, dim, n=n, warmup=warmup, k=None, batch=64, sample=sample,
                          seed=seed, min_size=None, merge_every=None,
                          recompute_every=None)  # fmt: skip
    try:
        with progress_bars(not as_json) as advance:
            result = run_tune(
                log.clicks, config, lambda part, cfg: evaluate(part, records, cfg, None, vectors),
                budget=budget, inner_warmup=inner, progress=advance,
            )  # fmt: skip
    except ValueError as exc:
        fail(f"{clicks}: {exc}", 1)
    first, best = result.baseline_trial, result.best_trial
    note = (f"clusterstream tune {clicks} ({len(result.trials)} configurations on the first "
            f"{warmup:.0%} of the log)\nengine HitRate@{n} {first.hit_rate} -> {best.hit_rate}, "
            f"NDCG@{n} {first.ndcg} -> {best.ndcg}")  # fmt: skip
    try:
        Path(out).write_text(to_toml(result.best, note))
    except OSError as exc:
        fail(f"{out}: cannot write: {exc.strerror or exc}", 1)
    report = {
        "out": out,
        "best": result.best,
        "start": {"hit_rate": first.hit_rate, "ndcg": first.ndcg},
        "tuned": {"hit_rate": best.hit_rate, "ndcg": best.ndcg},
        "trials": [{"settings": t.settings, "hit_rate": t.hit_rate, "ndcg": t.ndcg}
                   for t in result.trials],
    }  # fmt: skip
    if as_json:
        emit_json(report)
        return
    print(note.replace("\n", "; "))
    print(f"wrote {out}: CLUSTERSTREAM_CONFIG={out} clusterstream worker|eval ...")


@app.command()
def embed(
    clicks: str = typer.Argument(..., help="click log (file, or directory for mind / movielens)"),
    fmt: str = typer.Option("jsonl", "--format", help="jsonl | mind | movielens | globo"),
    out: str = typer.Option(..., "--out", help="where to write the item records (JSONL)"),
    dim: int = typer.Option(32, min=2, max=4096, help="vector dimension"),
    window: int = typer.Option(10, min=1, help="clicks of a user's history that co-occur"),
    min_count: int = typer.Option(5, min=1, help="items with fewer clicks get no vector"),
    seed: int = typer.Option(0, min=0),
    as_json: bool = typer.Option(False, "--json", help="one JSON object on the last line"),
) -> None:
    """Learn item vectors from a click log (PPMI co-occurrence + truncated SVD) and
    write them as item records."""
    from pathlib import Path

    from stream.core.embed import item_records, learn_item_vectors
    from stream.io.loaders import FORMATS, load
    from stream.io.synth import write_jsonl

    if fmt not in FORMATS:
        fail(f"--format must be one of {', '.join(FORMATS)}", 2)
    log = load(clicks, fmt)
    if not len(log.clicks):
        fail(f"{clicks}: no usable click", 1)
    try:
        emb = learn_item_vectors(
            log.clicks.user_ids, log.clicks.item_ids, log.clicks.ts,
            dim=dim, window=window, min_count=min_count, seed=seed,
        )  # fmt: skip
    except ValueError as exc:
        fail(f"{clicks}: {exc}", 1)
    # version time of the vectors: the last click they were learnt from
    n = write_jsonl(Path(out), item_records(emb, int(log.clicks.ts.max())))
    stats = {**emb.stats(), "out": out, "records": n, "skipped": log.skipped}
    if as_json:
        emit_json(stats)
    else:
        print(
            f"wrote {n} item vectors (dim {dim}) to {out}, learnt from {emb.n_clicks} clicks "
            f"of {emb.n_users} users in {emb.seconds:.1f} s; no vector: {len(emb.dropped)} items "
            f"with < {min_count} clicks, {len(emb.isolated)} never co-clicked",
            flush=True,
        )


@app.command()
def replay(
    file: str = typer.Argument(
        ..., metavar="FILE", help="clicks file; for mind / movielens also the dataset directory"
    ),
    format: str = typer.Option(
        None, "--format", help="jsonl | mind | movielens (default: told by FILE's name)"
    ),
    items: str = typer.Option(
        None,
        "--items",
        help="item records (jsonl), news.tsv (mind) or u.item (movielens); "
        "default for mind / movielens: next to FILE",
    ),
    rate: float = typer.Option(None, help="clicks per second (default: as fast as possible)"),
    limit: int = typer.Option(None, help="send only the first N clicks (in time order)"),
    keep_time: bool = typer.Option(False, "--keep-time", help="keep the timestamps (default)"),
    now: bool = typer.Option(False, "--now", help="shift the timestamps so the log ends now"),
    history: bool = typer.Option(
        False, "--history", help="mind: also the history lists, once per user, 1 s before"
    ),
    progress: bool = typer.Option(True, help="progress bar on stderr"),
) -> None:
    """Replay a click log into the app: its items to <app>-items, then its clicks, in
    time order and keyed by user, to <app>-clicks."""
    import time

    from stream.io import loaders
    from stream.io import replay as replaying

    told = ""
    if format is None:
        try:
            format = replaying.infer_format(file)
        except ClusterstreamError as exc:
            fail(str(exc), 2)
        told = " (told by the name; --format overrides)"
    if format not in loaders.FORMATS:
        fail(f"--format must be one of {', '.join(loaders.FORMATS)}", 2)
    if keep_time and now:
        fail("give --keep-time or --now, not both", 2)
    if rate is not None and not rate > 0:
        fail("--rate must be > 0", 2)
    if limit is not None and limit < 0:
        fail("--limit must be >= 0", 2)
    if history and format != "mind":
        fail("--history applies to --format mind only", 2)
    try:
        started = time.monotonic()
        log = loaders.load(file, format, items, history=history)
        settings = _kafka_settings()  # after the file: its errors come first
        if progress:
            err.print(
                f"loaded {len(log.clicks)} clicks and {len(log.items)} items from "
                f"{log.source}, format {format}{told}, in {time.monotonic() - started:.1f} s",
                highlight=False, markup=False, soft_wrap=True,
            )  # fmt: skip
        with progress_bars(progress) as advance:
            result = replaying.replay(settings, log, rate=rate, limit=limit, to_now=now,
                                      progress=advance)  # fmt: skip
    except ClusterstreamError as exc:
        fail(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
    print(result.summary(), flush=True)


def main() -> None:
    """Console-script entry point: maps :class:`ClusterstreamError` to one line + exit 1;
    any other exception is one line too (the traceback with ``--verbose``)."""
    try:
        app()
    except ClusterstreamError as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        err.print(f"clusterstream: error: {message}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if "-v" in sys.argv[1:] or "--verbose" in sys.argv[1:]:
            raise
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(
            f"clusterstream: error: unexpected {type(exc).__name__}: {first} "
            "(run with --verbose for the traceback)",
            highlight=False, markup=False, soft_wrap=True,
        )  # fmt: skip
        sys.exit(1)


if __name__ == "__main__":
    main()
