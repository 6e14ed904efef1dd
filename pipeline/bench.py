"""Benchmarks: `flowctl bench NAME` prints figures; `--json` prints one JSON object per figure."""

from __future__ import annotations

import time
from collections.abc import Callable

import orjson
import pyarrow as pa
from rich.console import Console

from pipeline.config import Settings


def _emit(figures: list[tuple[str, str, float, str]], as_json: bool, console: Console) -> None:
    for benchmark, metric, value, unit in figures:
        if as_json:
            print(orjson.dumps({"benchmark": benchmark, "metric": metric, "value": value, "unit": unit}).decode())
        else:
            print(f"{benchmark:<10} {metric:<28} {value:>16,.1f} {unit}")


def bench_workload(flows: int) -> list[pa.Table]:
    """The fixed synthetic workload every benchmark runs: ~``flows`` records at 2,000 flows/s of event time."""
    from pipeline.agent.sources.synthetic import SyntheticCluster

    rate, end = 2000.0, 1_790_000_000
    return list(SyntheticCluster(seed=11, cluster="bench").generate(end - int(flows / rate), end, rate=rate))


def bench_e2e(settings: Settings, flows: int, console: Console) -> list[tuple[str, str, float, str]]:
    """Synthetic generator → agent → embedded broker → Faust worker → sink → committed Parquet."""
    import tempfile
    from pathlib import Path

    from pipeline.conform import ConformResult
    from pipeline.pipeline_ops import account, push
    from pipeline.runner import LocalStack

    t0 = time.perf_counter()
    tables = bench_workload(flows)
    gen_seconds = time.perf_counter() - t0
    total = sum(t.num_rows for t in tables)
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as tmp:
        run = settings.with_overrides(lake=str(Path(tmp) / "lake"), state_dir=str(Path(tmp) / "state"))
        with LocalStack(run) as stack:
            t1 = time.perf_counter()
            agent = push(stack, (ConformResult(t) for t in tables), origin="bench")
            seconds = time.perf_counter() - t1
            in_lake, _, _ = account(stack, agent)
    if in_lake != total:
        raise RuntimeError(f"bench e2e lost data: {total} flows published, {in_lake} in the lake")
    return [
        ("e2e", "flows", float(total), "flows"),
        ("e2e", "throughput", total / seconds, "flows/s"),
        ("e2e", "seconds", seconds, "s"),
        ("e2e", "generator_throughput", total / gen_seconds, "flows/s"),
        ("e2e", "backpressure_wait", agent.publisher.stats.backpressure_waits, "s"),
    ]


def bench_sink(settings: Settings, flows: int, console: Console) -> list[tuple[str, str, float, str]]:
    """flows.enriched.v1 → sink process → committed Parquet (rows/s)."""
    from pipeline.sink.bench import bench_sink as run

    return run(settings, flows, console)


def bench_freshness(settings: Settings, flows: int, console: Console) -> list[tuple[str, str, float, str]]:
    """Seconds from a flow's publication to its visibility in a DuckDB query, p50/p99, at 50,000 flows/s."""
    from pipeline.sink.bench import bench_freshness as run

    return run(settings, flows, console)


def bench_query(settings: Settings, flows: int, console: Console) -> list[tuple[str, str, float, str]]:
    """The saved queries over a lake of --flows synthetic flows (seconds each)."""
    from pipeline.query.benchmark import bench_query as run

    return run(settings, flows, console)


def bench_recommend(settings: Settings, flows: int, console: Console) -> list[tuple[str, str, float, str]]:
    """`flowctl recommend` over a generated lake of ``flows`` enriched flows from 1,000 workloads (lake build not timed)."""
    from jobs.policy.bench import bench_recommend as run

    return run(flows, workloads=1000)


def bench_detect(settings: Settings, flows: int, console: Console) -> list[tuple[str, str, float, str]]:
    """Anomaly detection: score a day of ``flows`` flow_windows rows against the day before."""
    from jobs.anomaly.bench import bench_detect as run

    return run(flows)


def bench_agent(settings: Settings, flows: int, console: Console) -> list[tuple[str, str, float, str]]:
    """The agent alone, into an embedded broker (no worker, so no backpressure): synthetic tables → Kafka,
    and a Calico flows.log tailed, parsed, mapped and published with checkpointing."""
    import tempfile
    from pathlib import Path

    from pipeline import topics
    from pipeline.agent.agent import FlowAgent
    from pipeline.agent.shipper import ship_file
    from pipeline.agent.sources.calico import CalicoAdapter, to_calico_lines
    from pipeline.agent.tail import Checkpoint, FileTailer
    from pipeline.broker.embedded import EmbeddedBroker

    tables = bench_workload(flows)
    total = sum(t.num_rows for t in tables)
    calico_rows = min(total, 300_000)
    lines = to_calico_lines(pa.concat_tables(tables).slice(0, calico_rows))
    figures: list[tuple[str, str, float, str]] = []
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as tmp, EmbeddedBroker() as broker:
        broker.create_topics(topics.topic_specs(settings.partitions, 1))
        run = settings.with_overrides(bootstrap_servers=broker.bootstrap_servers, broker_kind="embedded")
        agent = FlowAgent(run, backpressure=False)
        t0 = time.perf_counter()
        for t in tables:
            agent.publish(t)
        agent.finish()
        seconds = time.perf_counter() - t0
        agent.close()
        figures += [("agent", "synthetic_flows", float(total), "flows"),
                    ("agent", "synthetic_throughput", total / seconds, "flows/s")]
        log = Path(tmp) / "flows.log"
        log.write_bytes(b"\n".join(lines) + b"\n")
        agent = FlowAgent(run, backpressure=False)
        tailer = FileTailer(log, Checkpoint(Path(tmp) / "checkpoint.json"))
        t0 = time.perf_counter()
        stats = ship_file(agent, tailer, CalicoAdapter(cluster="bench"), follow=False)
        seconds = time.perf_counter() - t0
        tailer.close()
        agent.close()
        if stats.published != len(lines):
            raise RuntimeError(f"bench agent: {len(lines)} Calico lines, {stats.published} published")
        figures += [("agent", "calico_lines", float(len(lines)), "lines"),
                    ("agent", "calico_throughput", len(lines) / seconds, "lines/s"),
                    ("agent", "calico_mb_per_s", log.stat().st_size / seconds / 1e6, "MB/s")]
    return figures


def bench_stream(settings: Settings, flows: int, console: Console) -> list[tuple[str, str, float, str]]:
    """Worker hot path, one worker on the embedded broker, a naive per-event baseline, open-window memory."""
    from pipeline.stream import bench

    return bench.bench_stream(settings, flows, console)


BENCHMARKS: dict[str, Callable[[Settings, int, Console], list[tuple[str, str, float, str]]]] = {
    "e2e": bench_e2e,
    "agent": bench_agent,
    "detect": bench_detect,
    "recommend": bench_recommend,
    "sink": bench_sink,
    "freshness": bench_freshness,
    "query": bench_query,
    "stream": bench_stream,
}


def run_benchmark(settings: Settings, name: str, flows: int, as_json: bool, console: Console) -> None:
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}: choose one of {', '.join(BENCHMARKS)}")
    if not settings.embedded:
        raise ValueError("benchmarks run on the embedded broker; unset --bootstrap-servers")
    _emit(BENCHMARKS[name](settings, flows, console), as_json, console)
