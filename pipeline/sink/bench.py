"""`flowctl bench sink`: rows/s from flows.enriched.v1 to committed Parquet, through a real `flowctl sink` process."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from pipeline.config import Settings

Figures = list[tuple[str, str, float, str]]
# Per partition the embedded broker keeps ~5 MiB; 3 MiB of messages each leaves room.
BYTES_PER_PARTITION = 3 * 1024 * 1024


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds a process has used so far; None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(stat[11]) + int(stat[12])) / os.sysconf("SC_CLK_TCK")


def bench_sink(settings: Settings, flows: int, console: Console) -> Figures:
    """Arrow batches of 2,000 enriched rows as the worker writes them (``body_compression``) → sink → committed Parquet.

    The sink process is started first and waits, joined to its group, on empty topics (its
    start-up is reported apart); the clock then runs from the first message produced until the
    sink has committed every offset, so it covers fetching, decoding, writing, renaming and
    committing, including the last time-based flush. The sink's CPU time per row over the same
    span is reported too: unlike rows/s it hardly depends on other work on the machine.
    """
    import pyarrow.parquet as pq
    from confluent_kafka import Producer

    from pipeline import topics
    from pipeline.envelope import ARROW, Envelope, encode_arrow
    from pipeline.kafka import end_offsets, group_reader, wait_for_group
    from pipeline.query.benchmark import _enriched_batches
    from pipeline.runner import LocalStack
    from pipeline.sink.lake import ParquetLakeWriter

    console.print(f"bench sink: enriching {flows:,} synthetic flows …")
    messages = []
    rows = 0
    for i, table in enumerate(_enriched_batches(flows)):
        env = Envelope("flow_enriched", "1", ARROW, table.num_rows, "bench", f"bench-{i}")
        messages.append((encode_arrow(table, settings.body_compression), env.headers()))
        rows += table.num_rows
    wire = sum(len(m[0]) for m in messages)
    partitions = max(settings.partitions, -(-wire // BYTES_PER_PARTITION))
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as tmp:
        run = settings.with_overrides(lake=str(Path(tmp) / "lake"), state_dir=str(Path(tmp) / "state"),
                                      partitions=partitions)
        with LocalStack(run, worker=False, sink=False) as stack:
            producer = Producer({**stack.settings.kafka_client_config(), "linger.ms": 5, "compression.type": "none"})
            reader = group_reader(stack.settings, "bench-probe")
            # An empty DLQ message: the sink commits it once it has joined and runs.
            producer.produce(topics.DLQ, value=b"", partition=0)
            producer.flush(30)
            started = time.perf_counter()
            sink = stack.start_role("sink")
            wait_for_group(stack.settings, stack.settings.sink_group, {topics.DLQ: end_offsets(reader, topics.DLQ)},
                           timeout=120, what="sink")
            startup = time.perf_counter() - started
            cpu_before = cpu_seconds(sink.pid)
            console.print(f"bench sink: sink up after {startup:.1f}s; producing {rows:,} rows in {len(messages):,} "
                          f"messages ({settings.body_compression} bodies) on {partitions} partitions")
            t0 = time.perf_counter()
            for i, (value, headers) in enumerate(messages):
                producer.produce(topics.ENRICHED, value=value, headers=headers, partition=i % partitions)
                producer.poll(0)
            producer.flush(60)
            produced = time.perf_counter() - t0
            del producer  # release the client before the broker stops
            targets = {topics.ENRICHED: end_offsets(reader, topics.ENRICHED)}
            reader.close()
            wait_for_group(stack.settings, stack.settings.sink_group, targets, timeout=600, what="sink")
            seconds = time.perf_counter() - t0
            cpu_after = cpu_seconds(sink.pid)
        files = ParquetLakeWriter(run.lake).lake_files("flows")
        in_lake = sum(pq.ParquetFile(f.path).metadata.num_rows for f in files)
    if in_lake != rows:
        raise RuntimeError(f"bench sink lost data: {rows} rows produced, {in_lake} in the lake")
    cpu = [] if cpu_before is None or cpu_after is None else \
        [("sink", "cpu_per_row", (cpu_after - cpu_before) / rows * 1e6, "µs")]
    return [
        ("sink", "rows", float(rows), "rows"),
        ("sink", "throughput", rows / seconds, "rows/s"),
        ("sink", "seconds", seconds, "s"),
        *cpu,
        ("sink", "produce_seconds", produced, "s"),
        ("sink", "startup_seconds", startup, "s"),
        ("sink", "wire_bytes_per_row", wire / rows, "B"),
        ("sink", "partitions", float(partitions), "partitions"),
        ("sink", "files", float(len(files)), "files"),
        ("sink", "rows_per_file", rows / max(1, len(files)), "rows"),
        ("sink", "lake_bytes_per_row", sum(f.size for f in files) / rows, "B"),
    ]


FRESHNESS_RATE = 50_000  # flows/s the issue asks the stack to keep fresh
FRESHNESS_TICK = 0.1  # the agent publishes one batch per tick


def bench_freshness(settings: Settings, flows: int, console: Console) -> Figures:
    """Seconds from a flow's publication by the agent to its visibility in a DuckDB query of the lake.

    The full stack (agent → broker → worker → sink → lake) runs at a steady FRESHNESS_RATE
    flows/s for ``flows / FRESHNESS_RATE`` seconds. Each batch carries its publication time
    (ms, in ``bytes_in``); a reader re-queries the lake every 0.25 s and records, per batch,
    when its rows first became visible.
    """
    import threading

    import numpy as np
    import pyarrow as pa

    from pipeline.agent.agent import FlowAgent
    from pipeline.agent.sources.synthetic import SyntheticCluster
    from pipeline.query.views import connect
    from pipeline.runner import LocalStack

    per_tick = int(FRESHNESS_RATE * FRESHNESS_TICK)
    seconds = max(5.0, flows / FRESHNESS_RATE)
    end = 1_790_000_000
    gen = SyntheticCluster(seed=17, cluster="bench")
    tables = list(gen.generate(end - int(seconds), end, rate=FRESHNESS_RATE, batch_rows=per_tick))
    visible: dict[int, float] = {}  # publication ms → first time seen
    published: list[int] = []
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as tmp:
        run = settings.with_overrides(lake=str(Path(tmp) / "lake"), state_dir=str(Path(tmp) / "state"))
        with LocalStack(run) as stack:
            done = threading.Event()

            def read() -> None:
                while not done.wait(0.25):
                    try:
                        rows = connect(run.lake).execute("SELECT DISTINCT bytes_in FROM flows").fetchall()
                    except Exception:  # noqa: BLE001 - an empty lake has no flows view to scan yet
                        continue
                    now = time.time()
                    for (ms,) in rows:
                        visible.setdefault(ms, now)

            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            agent = FlowAgent(stack.settings)
            console.print(f"bench freshness: {FRESHNESS_RATE:,} flows/s for {seconds:.0f}s through the whole stack")
            t0 = time.perf_counter()
            for i, table in enumerate(tables):
                wait = t0 + i * FRESHNESS_TICK - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
                ms = int(time.time() * 1000)
                published.append(ms)
                table = table.set_column(table.schema.get_field_index("bytes_in"), "bytes_in",
                                         pa.array(np.full(table.num_rows, ms, dtype=np.int64)))
                agent.publish(table)
                stack.check_alive()
            agent.finish()
            publish_seconds = time.perf_counter() - t0
            backpressure = agent.publisher.stats.backpressure_waits
            total = sum(t.num_rows for t in tables)
            deadline = time.time() + 120
            while len(visible) < len(published) and time.time() < deadline:
                time.sleep(0.25)
            done.set()
            reader.join(10)
            agent.close()
    lags = np.array([visible[ms] - ms / 1000 for ms in published if ms in visible])
    if len(lags) < len(published):
        raise RuntimeError(f"bench freshness: {len(published) - len(lags)} batches never became visible")
    return [
        ("freshness", "target_rate", float(FRESHNESS_RATE), "flows/s"),
        ("freshness", "published_rate", total / publish_seconds, "flows/s"),
        ("freshness", "backpressure_wait", backpressure, "s"),
        ("freshness", "p50", float(np.percentile(lags, 50)), "s"),
        ("freshness", "p99", float(np.percentile(lags, 99)), "s"),
        ("freshness", "max", float(lags.max()), "s"),
    ]
