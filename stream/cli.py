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


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="log at INFO level on stderr"),
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


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
    as_json: bool = typer.Option(False, "--json", help="only the JSON line on stdout"),
    progress: bool = typer.Option(True, help="progress bars on stderr"),
) -> None:
    """process_batch vs scikit-learn MiniBatchKMeans vs river KMeans on one stream."""
    from stream.bench import core

    totals = {"ours": events, "sklearn": events, "river": min(river_events, events)}
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
            progress=lambda phase, n: advance(phase, n, totals[phase]),
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
        "kafka-python", help="load generator of the latency run: kafka-python | aiokafka-batch"
    ),
    seed: int = typer.Option(0, min=0),
    as_json: bool = typer.Option(False, "--json", help="only the JSON line on stdout"),
    progress: bool = typer.Option(True, help="progress lines on stderr"),
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
        echo=echo,
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


@app.command()
def worker(
    bootstrap_servers: str = typer.Option(None, help="overrides CLUSTERSTREAM_BOOTSTRAP_SERVERS"),
    app_id: str = typer.Option(None, help="overrides CLUSTERSTREAM_APP_ID"),
    web_port: int = typer.Option(None, help="overrides CLUSTERSTREAM_WEB_PORT"),
    loglevel: str = typer.Option("INFO", help="log level of the worker"),
) -> None:
    """Run a stream worker (settings from CLUSTERSTREAM_* variables and the TOML file)."""
    from stream.app.app import run_worker

    settings = _settings(bootstrap_servers=bootstrap_servers, app_id=app_id, web_port=web_port)
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
    import urllib.error
    import urllib.request

    target = f"{url.rstrip('/')}/stats?digest={'1' if digest else '0'}"
    try:
        with urllib.request.urlopen(target, timeout=30) as resp:
            data = json.loads(resp.read())
    except (urllib.error.URLError, OSError) as exc:
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
    from stream.app import admin

    report = admin.merge(_settings(), min_size, dry_run)
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
    from stream.app import admin
    from stream.settings import parse_k_range

    if k is not None and k_range is not None:
        fail("give --k or --k-range, not both", 2)
    try:
        bounds = parse_k_range(k_range) if k_range else None
    except ValueError as exc:
        fail(str(exc), 2)
    with progress_bars(not as_json) as advance:
        report = admin.run_recompute(_settings(), k, bounds, sample, dry_run, progress=advance)
    emit_json(report, pretty=not as_json)


@app.command()
def subscribe(
    topic: str = typer.Argument(
        ..., help="e.g. assignments, cluster-candidates, centres, clicks-dlq"
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object per line"),
    from_beginning: bool = typer.Option(False, help="start at the oldest record"),
) -> None:
    """Print the records of an output topic as they arrive (Ctrl-C stops)."""
    from stream.app import admin

    try:
        for record in admin.subscribe(_settings(), topic, from_beginning):
            if as_json:
                print(json.dumps(record), flush=True)
            else:
                print(f"{record['topic']}[{record['partition']}]@{record['offset']} "
                      f"{record['key']}: {json.dumps(record['value'])}", flush=True)  # fmt: skip
    except KeyboardInterrupt:
        pass


def main() -> None:
    """Console-script entry point: maps :class:`ClusterstreamError` to one line + exit 1."""
    try:
        app()
    except ClusterstreamError as exc:
        err.print(f"clusterstream: error: {exc}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
