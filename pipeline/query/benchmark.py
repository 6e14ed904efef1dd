"""`flowctl bench sink` and `flowctl bench query`: the lake's write and read speed."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console

from pipeline.config import Settings

Figures = list[tuple[str, str, float, str]]
T0 = 1_790_000_000 // 86400 * 86400  # a day boundary, so the generated lake spans whole hours


def _enriched_batches(flows: int, batch_rows: int = 2000):
    """Enriched tables as the worker publishes them (one per raw batch), from the real enricher."""
    from pipeline.agent.sources.synthetic import SyntheticCluster
    from pipeline.stream.enrich import FlowEnricher

    rate = 2000.0
    gen = SyntheticCluster(seed=13, cluster="bench")
    enricher = FlowEnricher()
    for i, table in enumerate(gen.generate(T0, T0 + int(flows / rate), rate=rate, batch_rows=batch_rows)):
        yield enricher.enrich(table, batch_id=f"bench-{i}")


def bench_sink(settings: Settings, flows: int, console: Console) -> Figures:
    """Rows/s from flows.enriched.v1 (Arrow batches of 2,000 rows, as the worker writes them) to committed Parquet.

    The topic is filled first (with enough partitions that the embedded broker, which keeps
    ~5 MiB per partition, drops nothing), then a `flowctl sink` process is started; the clock
    runs from its start (process start-up and group join included) until it has committed
    every offset. Backpressure between stages is left out on purpose: it measures the broker's
    retention, not the sink.
    """
    from confluent_kafka import Producer

    from pipeline import topics
    from pipeline.envelope import ARROW, Envelope, encode_arrow
    from pipeline.kafka import end_offsets, group_reader, wait_for_group
    from pipeline.query.views import connect
    from pipeline.runner import LocalStack

    console.print(f"bench sink: enriching {flows:,} synthetic flows …")
    messages = []
    rows = 0
    for i, table in enumerate(_enriched_batches(flows)):
        env = Envelope("flow_enriched", "1", ARROW, table.num_rows, "bench", f"bench-{i}")
        messages.append((encode_arrow(table), env.headers()))
        rows += table.num_rows
    wire = sum(len(m[0]) for m in messages)
    partitions = max(settings.partitions, -(-wire // (3 * 1024 * 1024)))
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as tmp:
        run = settings.with_overrides(lake=str(Path(tmp) / "lake"), state_dir=str(Path(tmp) / "state"), partitions=partitions)
        with LocalStack(run, worker=False, sink=False) as stack:
            producer = Producer({**stack.settings.kafka_client_config(), "linger.ms": 5, "compression.type": "none"})
            for i, (value, headers) in enumerate(messages):
                producer.produce(topics.ENRICHED, value=value, headers=headers, partition=i % partitions)
                producer.poll(0)
            producer.flush(60)
            del producer  # release the client before the broker stops
            reader = group_reader(stack.settings, "bench-probe")
            targets = {topics.ENRICHED: end_offsets(reader, topics.ENRICHED)}
            reader.close()
            console.print(f"bench sink: {rows:,} rows in {len(messages):,} messages on {partitions} partitions; starting the sink")
            started = time.perf_counter()
            stack.start_role("sink")
            wait_for_group(stack.settings, stack.settings.sink_group, targets, timeout=600, what="sink")
            seconds = time.perf_counter() - started
        in_lake = connect(run.lake).execute("SELECT count(*) FROM flows").fetchall()[0][0]
        files = len(list((Path(tmp) / "lake" / "flows").rglob("*.parquet")))
    if in_lake != rows:
        raise RuntimeError(f"bench sink lost data: {rows} rows produced, {in_lake} in the lake")
    return [
        ("sink", "rows", float(rows), "rows"),
        ("sink", "throughput", rows / seconds, "rows/s"),
        ("sink", "seconds", seconds, "s"),
        ("sink", "wire_bytes_per_row", wire / rows, "B"),
        ("sink", "partitions", float(partitions), "partitions"),
        ("sink", "files", float(files), "files"),
    ]


def bench_query(settings: Settings, flows: int, console: Console) -> Figures:
    """Each saved query over a lake of ``flows`` synthetic flows (built with the real enricher and writer)."""
    from pipeline.query.samplelake import build_sample_lake
    from pipeline.query.saved import run_saved, saved_queries
    from pipeline.query.views import connect

    rate = 2000.0
    end = T0 + int(flows / rate)
    figures: Figures = []
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as tmp:
        lake = str(Path(tmp) / "lake")
        console.print(f"bench query: building a lake of {flows:,} flows …")
        t0 = time.perf_counter()
        built = build_sample_lake(lake, T0, end, rate=rate, seed=21, batch_rows=250_000)
        figures.append(("query", "lake_flows", float(built.flows), "rows"))
        figures.append(("query", "lake_window_rows", float(built.windows), "rows"))
        figures.append(("query", "lake_build_seconds", time.perf_counter() - t0, "s"))
        con = connect(lake, read_only=True)
        for name in saved_queries():
            run_saved(con, name, T0, end)  # warm the OS page cache and DuckDB's metadata cache
            t1 = time.perf_counter()
            run_saved(con, name, T0, end)
            figures.append(("query", name, (time.perf_counter() - t1) * 1000, "ms"))
        t1 = time.perf_counter()
        con.execute("SELECT source_workload, sum(bytes_out) FROM flows GROUP BY ALL ORDER BY 2 DESC LIMIT 10").fetchall()
        figures.append(("query", "top-talkers-over-raw-flows", (time.perf_counter() - t1) * 1000, "ms"))
    return figures
