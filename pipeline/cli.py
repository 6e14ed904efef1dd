"""flowctl: one console script for every role. See `flowctl --help`."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

import duckdb
import typer
from confluent_kafka import KafkaException
from rich.console import Console

from pipeline.config import ConfigError, Settings, load_settings
from pipeline.logs import configure_logging, mask_secrets
from pipeline.timeparse import TimeParseError, parse_duration, parse_time

app = typer.Typer(
    help="Kubernetes flow analytics for clusters that run GenAI workloads: "
         "agent → Kafka → Faust workers → Parquet lake → DuckDB.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


class CliError(Exception):
    """A one-line reason for a non-zero exit."""


def _settings(ctx: typer.Context) -> Settings:
    return ctx.obj


@app.callback()
def main(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, "--config", "-c", help="Configuration file (default: ./flowctl.toml if present)."),
    bootstrap_servers: str | None = typer.Option(None, help="Kafka bootstrap servers; empty means the embedded broker. Env: FLOWCTL_BOOTSTRAP_SERVERS."),
    lake: str | None = typer.Option(None, help="Lake root directory or s3://bucket/prefix. Env: FLOWCTL_LAKE."),
    partitions: int | None = typer.Option(None, help="Partitions per topic when flowctl creates topics. Env: FLOWCTL_PARTITIONS."),
    cluster: str | None = typer.Option(None, help="Cluster name the agent stamps on flows. Env: FLOWCTL_CLUSTER."),
    state_dir: str | None = typer.Option(None, help="Directory for local state (embedded broker address, checkpoints). Env: FLOWCTL_STATE_DIR."),
    log_level: str | None = typer.Option(None, help="debug, info, warning or error. Env: FLOWCTL_LOG_LEVEL."),
    log_format: str | None = typer.Option(None, help="text, or json for one JSON object per line. Env: FLOWCTL_LOG_FORMAT."),
) -> None:
    settings = load_settings(config)
    settings = settings.with_overrides(bootstrap_servers=bootstrap_servers, lake=lake, partitions=partitions,
                                       cluster=cluster, state_dir=state_dir, log_level=log_level,
                                       log_format=log_format)
    configure_logging(settings, role=ctx.invoked_subcommand or "")
    ctx.obj = settings


def _need_kafka(settings: Settings) -> Settings:
    """Settings pointing at Kafka: the configured servers, or a running `flowctl broker`."""
    if not settings.embedded:
        return settings
    from pipeline.runner import running_broker

    address = running_broker(settings)
    if address is None:
        raise CliError("no Kafka to talk to: pass --bootstrap-servers, or start the embedded broker with "
                       "`flowctl broker` in this directory")
    return settings.with_overrides(bootstrap_servers=address, broker_kind="embedded")


@app.command()
def broker(ctx: typer.Context) -> None:
    """Run the embedded Kafka broker (librdkafka's mock cluster) until Ctrl-C.

    Creates the pipeline's topics and writes its address to STATE_DIR/broker.json,
    where the agent, worker and sink verbs find it.
    """
    from pipeline import topics
    from pipeline.broker.embedded import EmbeddedBroker
    from pipeline.runner import broker_file, write_broker_file

    settings = _settings(ctx)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with EmbeddedBroker() as b:
        b.create_topics(topics.topic_specs(settings.partitions, 1))
        path = write_broker_file(settings, b.bootstrap_servers)
        err.print(f"embedded broker listening on [bold]{b.bootstrap_servers}[/] (address in {path}); Ctrl-C stops it")
        print(b.bootstrap_servers, flush=True)
        stop.wait()
    broker_file(settings).unlink(missing_ok=True)


@app.command()
def worker(ctx: typer.Context) -> None:
    """Run a Faust stream worker: validate, enrich and window flows.raw.v1."""
    from pipeline.stream.app import run_worker

    run_worker(_need_kafka(_settings(ctx)))


@app.command()
def sink(ctx: typer.Context) -> None:
    """Run the Parquet sink: enriched flows, windows and dead letters into the lake, exactly once."""
    from pipeline import metrics
    from pipeline.sink.consumer import LakeSink

    settings = _need_kafka(_settings(ctx))
    metrics.serve(settings.metrics_port)
    stats = LakeSink(settings).run(install_signals=True)
    err.print(f"sink stopped: {stats.rows:,} rows in {stats.files:,} files, {stats.offset_gaps} offset gaps")


@app.command()
def agent(
    ctx: typer.Context,
    source: str = typer.Option("synthetic", help="synthetic, calico:DIR|FILE (DIR/flows.log), hubble:PATH, goldmane:PATH, "
                                                 "goldmane:http://HOST:PORT (NDJSON push receiver) or ndjson:PATH."),
    follow: bool = typer.Option(True, help="File sources: keep following the file (appends, rotation) until stopped; "
                                           "--no-follow stops at its end."),
    checkpoint: Path | None = typer.Option(None, help="File sources: checkpoint file (default: STATE_DIR/agent-<source>.json)."),
    rate: float = typer.Option(2000.0, help="synthetic: flow records per second of event time."),
    since: str = typer.Option("-1h", help="synthetic: start of the event time range (ISO 8601, epoch or -2h)."),
    until: str = typer.Option("now", help="synthetic: end of the event time range."),
    seed: int = typer.Option(7, help="synthetic: random seed."),
    live: bool = typer.Option(False, help="synthetic: publish traffic for the current time, second by second, until stopped "
                                          "(--since/--until are ignored)."),
) -> None:
    """Publish flows from a source to flows.raw.v1 as Arrow batch envelopes.

    File sources are tailed like a log shipper: the byte position per file is checkpointed once
    Kafka confirmed the records before it, so a restarted agent resumes without loss or duplicates.
    Batches Kafka does not confirm within agent_spool_after_seconds wait in an on-disk spool
    (AGENT_SPOOL_DIR, else STATE_DIR/spool) and are replayed in order when Kafka is back.
    """
    from pipeline.agent.agent import FlowAgent
    from pipeline.agent.publisher import PublishStopped

    kind, _, target = source.partition(":")
    if source == "synthetic":
        parse_time(since), parse_time(until)  # bad times fail before anything connects
    elif kind in ("calico", "hubble", "goldmane", "ndjson") and target:
        if not target.startswith("http://"):
            path = _source_path(kind, target)
            if not path.parent.is_dir():
                raise CliError(f"no such directory: {path.parent}")
        elif kind != "goldmane":
            raise CliError(f"{kind} has no HTTP receiver; only goldmane:http://HOST:PORT")
    else:
        raise CliError(f"unknown source {source!r}: use synthetic, calico:DIR, hubble:PATH, goldmane:PATH, "
                       "goldmane:http://HOST:PORT or ndjson:PATH")
    settings = _need_kafka(_settings(ctx))
    from pipeline import metrics

    metrics.serve(settings.metrics_port)
    flow_agent = FlowAgent(settings, track_batches=False, spool_dir=_spool_dir(settings, source, live))
    stop = threading.Event()
    flow_agent.outbox.give_up = stop  # a stopping agent leaves its spool for the next run
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        if source == "synthetic" and live:
            from pipeline.agent.live import publish_live
            from pipeline.agent.sources.synthetic import SyntheticCluster

            cluster = SyntheticCluster(seed=seed, cluster=settings.cluster if settings.cluster != "default" else "demo")
            err.print(f"publishing live synthetic traffic (~{rate:g} flows/s); Ctrl-C stops")
            published = publish_live(flow_agent, cluster, rate, stop)
            err.print(f"published {published:,} flows")
        elif source == "synthetic":
            for result in _source_batches(source, settings, rate, since, until, seed):
                if stop.is_set():
                    err.print("stopping: the rest of the time range is not published")
                    break
                flow_agent.dead_letter(result.rejects, origin=source)
                flow_agent.publish(result.table)
            flow_agent.finish()
            s = flow_agent.stats
            err.print(f"published {s.published:,} flows in {s.batches:,} batches; {s.rejected:,} records dead-lettered")
        elif target.startswith("http://"):
            from pipeline.agent.receiver import serve_ndjson
            from pipeline.agent.sources import adapter_for

            stats = serve_ndjson(flow_agent, adapter_for(kind, settings.cluster, settings.node or None), target, stop,
                                 on_ready=lambda url: err.print(f"receiving {kind} NDJSON on {url}; Ctrl-C stops"))
            err.print(f"received {stats.lines:,} records: {stats.published:,} published, {stats.rejected:,} dead-lettered")
        else:
            from pipeline.agent.shipper import ship_file
            from pipeline.agent.sources import adapter_for
            from pipeline.agent.tail import Checkpoint, FileTailer

            path = _source_path(kind, target)
            ckpt = checkpoint or Path(settings.state_dir) / f"agent-{kind}-{_slug(path)}.json"
            tailer = FileTailer(path, Checkpoint(ckpt))
            try:
                stats = ship_file(flow_agent, tailer, adapter_for(kind, settings.cluster, settings.node or None),
                                  follow=follow, stop=stop)
            finally:
                tailer.close()
            err.print(f"{stats.lines:,} records read from {path}: {stats.published:,} published, "
                      f"{stats.rejected:,} dead-lettered, {stats.skipped:,} skipped (replies); checkpoint {ckpt}")
    except PublishStopped as exc:
        err.print(f"{exc}; what was not published is read again by the next run")
    finally:
        flow_agent.close()


def _source_path(kind: str, target: str) -> Path:
    path = Path(target)
    return path / "flows.log" if kind == "calico" and path.is_dir() else path


def _spool_dir(settings: Settings, source: str, live: bool) -> Path | None:
    """One spool per source (a bounded synthetic run has none): AGENT_SPOOL_DIR (else STATE_DIR/spool)/<source>."""
    kind, _, target = source.partition(":")
    if source == "synthetic" and not live:
        return None
    if source == "synthetic":
        name = "synthetic-live"
    elif target.startswith("http://"):
        name = f"{kind}-http-{target.rsplit(':', 1)[-1].strip('/')}"
    else:
        name = f"{kind}-{_slug(_source_path(kind, target))}"
    return Path(settings.agent_spool_dir or Path(settings.state_dir) / "spool") / name


def _slug(path: Path) -> str:
    import hashlib

    return hashlib.blake2b(str(path.resolve()).encode(), digest_size=6).hexdigest()


def _source_batches(source: str, settings: Settings, rate: float, since: str, until: str, seed: int):
    from pipeline.conform import ConformResult

    if source == "synthetic":
        from pipeline.agent.sources.synthetic import SyntheticCluster

        start, end = parse_time(since), parse_time(until)
        if end <= start:
            raise CliError(f"--until ({until}) must be after --since ({since})")
        gen = SyntheticCluster(seed=seed, cluster=settings.cluster if settings.cluster != "default" else "demo")
        for table in gen.generate(start, end, rate=rate):
            yield ConformResult(table)
    else:
        raise CliError(f"unknown source {source!r}")


@app.command()
def ingest(
    ctx: typer.Context,
    files: list[Path] = typer.Argument(..., help="Flow log files in the format given by --format."),
    fmt: str = typer.Option("ndjson", "--format", help="Input format: calico (flows.log), hubble (hubble observe -o json), "
                                                       "goldmane (emitter or Whisker JSON) or ndjson (flowlog.v1 records)."),
    timeout: float = typer.Option(600.0, help="Seconds to wait for the pipeline to finish."),
) -> None:
    """Push flow log files through broker → worker → sink and wait until every record is in the lake or the DLQ."""
    from pipeline.agent.sources import ADAPTERS
    from pipeline.pipeline_ops import ingest_files

    if fmt not in ADAPTERS:
        raise CliError(f"unknown --format {fmt!r}: use one of {', '.join(ADAPTERS)}")
    for f in files:
        if not f.is_file():
            raise CliError(f"no such file: {f}")
    report = ingest_files(_settings(ctx), files, timeout=timeout, console=err, fmt=fmt)
    print(report.summary())
    if report.lost:
        raise CliError(f"{report.lost} records are neither in the lake nor in the DLQ")


@app.command()
def sql(
    ctx: typer.Context,
    query: str | None = typer.Argument(None, help="SQL over the views flows, flow_windows, dlq, alerts, policy_recommendations. "
                                                  "Omit it for an interactive shell (statements end with ';')."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json (one object per line) or parquet (needs --output)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the result to this file instead of stdout."),
) -> None:
    """Query the lake with DuckDB, read-only: SELECT and EXPLAIN only, no files outside the lake."""
    from pipeline.query.commands import run_sql

    run_sql(_settings(ctx), query, fmt, output)


@app.command("config")
def show_config(ctx: typer.Context) -> None:
    """Print the effective settings (defaults < flowctl.toml < FLOWCTL_* < flags) as TOML; secrets are masked.

    Every setting, its environment variable and its default: docs/configuration.md.
    """
    from pipeline.config import render_settings

    print(render_settings(_settings(ctx)), end="")


@app.command()
def demo(
    ctx: typer.Context,
    hours: float = typer.Option(1.0, help="Hours of synthetic traffic to generate."),
    rate: float = typer.Option(30.0, help="Mean flow records per second of event time."),
    seed: int = typer.Option(7, help="Random seed of the synthetic cluster."),
    keep: bool = typer.Option(False, help="Keep the previous demo lake instead of starting from an empty one."),
) -> None:
    """End-to-end run on the embedded broker with synthetic cluster traffic; prints what an analyst looks at."""
    from pipeline.pipeline_ops import run_demo

    settings = _settings(ctx)
    if not settings.embedded:
        raise CliError("demo runs on the embedded broker only; unset --bootstrap-servers")
    if settings.lake == "lake":
        settings = settings.with_overrides(lake=str(Path(settings.state_dir) / "demo-lake"))
    run_demo(settings, hours=hours, rate=rate, seed=seed, keep=keep, console=Console())


@app.command()
def bench(
    ctx: typer.Context,
    name: str = typer.Argument("e2e", help="Benchmark: e2e, stream, agent, sink, freshness, query, detect or recommend."),
    flows: int = typer.Option(1_000_000, help="Flow records to push through."),
    json_out: bool = typer.Option(False, "--json", help="One JSON object per figure."),
) -> None:
    """Run a named benchmark and print its figures."""
    from pipeline.bench import run_benchmark

    run_benchmark(_settings(ctx), name, flows=flows, as_json=json_out, console=err)


from pipeline.query import commands as _query_commands  # noqa: E402

app.command("query")(_query_commands.query)
app.add_typer(_query_commands.lake_app, name="lake")
@app.command()
def up(
    ctx: typer.Context,
    source: str = typer.Option("synthetic", help="synthetic (real-time traffic of a synthetic cluster) or any `flowctl agent --source`."),
    rate: float = typer.Option(2000.0, help="synthetic: mean flow records per second."),
    seed: int = typer.Option(7, help="synthetic: random seed."),
    detect_interval: str = typer.Option("5m", help="Run anomaly detection this often, a whole number of detection "
                                       "buckets (detect_bucket_seconds, 5 min); empty: never."),
    recommend_interval: str = typer.Option("1h", help="Run policy recommendation this often (empty: never)."),
    compact_interval: str = typer.Option("5m", help="Compact the lake this often: finished hours, and the current hour's files "
                                         "older than 2 minutes (empty: never)."),
    output: Path = typer.Option(Path("policies"), help="Where recommend writes its YAML and reports."),
    duration: str | None = typer.Option(None, help="Stop after this long (e.g. 10m); default: until Ctrl-C."),
    view: bool = typer.Option(True, help="Live terminal view; --no-view prints one JSON stats line per --stats-every."),
    stats_every: float = typer.Option(10.0, help="--no-view: seconds between stats lines."),
) -> None:
    """Run broker, agent, worker, sink and periodic jobs on this machine until Ctrl-C, with a live view."""
    from pipeline.up import Stack

    settings = _settings(ctx)
    if detect_interval:
        from jobs.anomaly.cli import parse_interval

        parse_interval(detect_interval, settings.detect_bucket_seconds, "--detect-interval")  # or detect would exit
    stack = Stack(settings, source, rate, seed, detect_interval,
                  parse_duration(recommend_interval) if recommend_interval else 0.0, output,
                  parse_duration(compact_interval) if compact_interval else 0.0)
    stack.start()
    stack.run(parse_duration(duration) if duration else None, Console(), view, stats_every)


# Verbs that live with their role's package register themselves here, one line each.
from jobs.anomaly.cli import register as register_detect  # noqa: E402

register_detect(app)
from jobs.policy.cli import register as register_recommend  # noqa: E402

register_recommend(app)
# (register-verbs-end)


def run() -> None:
    """Console entry point: known failures become one line on stderr and exit code 1."""
    from pipeline.agent.publisher import PublishError
    from pipeline.runner import StackError, stop_with_parent
    from pipeline.sink.lake import LakeWriteError

    stop_with_parent()
    try:
        app(standalone_mode=False)
    except (CliError, ConfigError, TimeParseError, PublishError, StackError, LakeWriteError, TimeoutError,
            duckdb.Error, KafkaException, OSError, ValueError) as exc:
        lines = mask_secrets(str(exc)).strip().splitlines() or [type(exc).__name__]
        err.print(f"flowctl: error: {lines[0]}", markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except (typer.Abort, KeyboardInterrupt):
        err.print("flowctl: interrupted")
        sys.exit(130)
    except Exception as exc:
        # Usage errors (typer ships its own copy of click, so match the interface, not the class).
        if hasattr(exc, "show") and isinstance(getattr(exc, "exit_code", None), int):
            exc.show()
            sys.exit(exc.exit_code)
        raise


if __name__ == "__main__":
    run()
