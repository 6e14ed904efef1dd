"""`flowctl bench stream`: the worker's hot path, the worker on the embedded broker, a naive baseline."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pyarrow as pa

from pipeline.config import Settings

Figure = tuple[str, str, float, str]


def _messages(flows: int, batch_rows: int) -> tuple[list[bytes], int]:
    from pipeline.bench import bench_workload
    from pipeline.envelope import encode_arrow

    table = pa.concat_tables(bench_workload(flows))
    return [encode_arrow(table.slice(i, batch_rows)) for i in range(0, table.num_rows, batch_rows)], table.num_rows


def hot_path(flows: int, batch_rows: int = 2000) -> list[Figure]:
    """decode + validate + enrich + window on pre-encoded Arrow messages, one core, no Kafka."""
    from pipeline.envelope import ARROW, Envelope
    from pipeline.stream.processor import FlowProcessor

    messages, total = _messages(flows, batch_rows)
    processor = FlowProcessor()
    headers = Envelope("flowlog", "1", ARROW, batch_rows, "bench", "").headers()
    started = time.perf_counter()
    for offset, value in enumerate(messages):
        processor.process(value, headers, 0, offset)
    processor.window_state(0).flush()
    seconds = time.perf_counter() - started
    return [("stream", "hot_path_throughput", total / seconds, "flows/s"),
            ("stream", "hot_path_flows", float(total), "flows")]


def open_window_memory(keys: int = 200_000) -> list[Figure]:
    """Peak RSS of a worker process holding ``keys`` open window keys (measured in a child process)."""
    code = f"""
import resource, numpy as np, pyarrow as pa
from pipeline.schema import arrow_schema
from pipeline.stream.windows import WindowAggregator
n = {keys}
schema = arrow_schema("flow_enriched.v1")
cols = {{}}
for f in schema:
    if f.name == "source_workload":
        cols[f.name] = pa.array([f"ns/w{{i % 5000}}" for i in range(n)])
    elif f.name == "destination":
        cols[f.name] = pa.array([f"10.{{i // 65536 % 256}}.{{i // 256 % 256}}.{{i % 256}}" for i in range(n)])
    elif pa.types.is_integer(f.type):
        cols[f.name] = pa.array(np.full(n, 1_790_000_000 if "time" in f.name else 1, dtype=np.int64))
    elif pa.types.is_boolean(f.type):
        cols[f.name] = pa.array(np.ones(n, dtype=bool))
    elif pa.types.is_string(f.type):
        cols[f.name] = pa.array(["allow" if f.name == "action" else "x"] * n)
    else:
        cols[f.name] = pa.nulls(n, f.type)
agg = WindowAggregator(60, 120)
for i in range(0, n, 20_000):
    agg.add(pa.table({{k: v.slice(i, 20_000) for k, v in cols.items()}}))
assert sum(t.num_rows for parts in agg.pending.values() for t in parts) >= n
# VmHWM, not ru_maxrss: the latter carries the parent's peak across fork and exec.
print([int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [("stream", f"peak_rss_{keys}_open_keys", int(out.stdout.strip()) / 1024, "MiB")]


def worker_on_broker(settings: Settings, flows: int) -> list[Figure]:
    """One `flowctl worker` process consuming flows.raw.v1 on the embedded broker, with no sink.

    The agent publishes from this process with its usual backpressure (the embedded broker keeps
    ~5 MiB per partition); the worker's own backpressure on the sink is lifted, since no sink runs.
    The figure is the worker's: consume, decode, validate, enrich, window, publish, checkpoint,
    timed from its first commit to its last.
    """
    from pipeline import topics
    from pipeline.agent.agent import FlowAgent
    from pipeline.bench import bench_workload
    from pipeline.kafka import committed_offsets, end_offsets, group_reader
    from pipeline.runner import LocalStack

    tables = bench_workload(flows)
    total = sum(t.num_rows for t in tables)
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as tmp:
        run = settings.with_overrides(lake=str(Path(tmp) / "lake"), state_dir=str(Path(tmp) / "state"),
                                      max_lag_bytes=1 << 40)
        with LocalStack(run, worker=True, sink=False) as stack:
            reader = group_reader(stack.settings, stack.settings.worker_group)
            agent = FlowAgent(stack.settings.with_overrides(max_lag_bytes=settings.max_lag_bytes), backpressure=True)
            first: float | None = None
            published = 0
            for t in tables:
                agent.publish(t)
                published += 1
                if first is None and sum(committed_offsets(reader, topics.RAW, stack.settings.partitions).values()):
                    first = time.perf_counter()
            agent.finish()
            agent.close()
            ends = end_offsets(reader, topics.RAW)
            deadline = time.monotonic() + 600
            while sum(committed_offsets(reader, topics.RAW, len(ends)).values()) < sum(ends.values()):
                if time.monotonic() > deadline:
                    raise RuntimeError("the worker did not consume everything within 600 s")
                stack.check_alive()
                time.sleep(0.05)
            finished = time.perf_counter()
            reader.close()
    seconds = finished - (first or finished)
    return [("stream", "worker_on_broker_throughput", total / seconds if seconds > 0 else float("nan"), "flows/s"),
            ("stream", "worker_on_broker_flows", float(total), "flows")]


def naive_baseline(settings: Settings, flows: int = 20_000) -> list[Figure]:
    """A per-event Faust agent (one JSON flow per Kafka message) updating a windowed table."""
    from confluent_kafka import Producer

    from pipeline.broker.embedded import EmbeddedBroker

    with EmbeddedBroker() as broker, tempfile.TemporaryDirectory(prefix="flowctl-naive-") as tmp:
        app_id = "flowctl-naive"
        broker.create_topic("naive.flows", 4)
        broker.create_topic(f"{app_id}-naive_windows-changelog", 4)
        producer = Producer({"bootstrap.servers": broker.bootstrap_servers, "linger.ms": 20})
        keys = [f"ns/w{i % 50}" for i in range(flows)]
        for i in range(flows):
            producer.produce("naive.flows", key=keys[i], value=orjson.dumps(
                {"w": keys[i], "end_time": 1_790_000_000 + i // 100, "bytes_out": i}))
            if i % 10_000 == 0:
                producer.poll(0)
        producer.flush(60)
        script = Path(tmp) / "naive.py"
        script.write_text(_NAIVE_APP)
        result = Path(tmp) / "result"
        env = {**os.environ, "BOOTSTRAP": broker.bootstrap_servers, "FLOWS": str(flows), "DATADIR": tmp,
               "RESULT": str(result)}
        proc = subprocess.run([sys.executable, str(script), "worker", "-l", "error"], env=env, capture_output=True,
                              text=True, timeout=600, cwd=tmp)
        if not result.exists():
            raise RuntimeError(f"naive baseline did not finish: {proc.stderr[-500:]}")
        seconds = float(result.read_text())
    return [("stream", "naive_per_event_throughput", flows / seconds, "flows/s")]


_NAIVE_APP = '''
import os, sys, time, faust
from datetime import timedelta
app = faust.App("flowctl-naive", broker="kafka://" + os.environ["BOOTSTRAP"], topic_allow_declare=False,
                topic_disable_leader=True, datadir=os.environ["DATADIR"],
                consumer_auto_offset_reset="earliest", store="memory://", web_enabled=False)
flows = app.topic("naive.flows", value_serializer="json", partitions=4)
windows = app.Table("naive_windows", default=int, partitions=4).tumbling(timedelta(minutes=1), expires=timedelta(hours=1))
target = int(os.environ["FLOWS"])
state = {"n": 0, "t0": None}

@app.agent(flows)
async def count(stream):
    async for flow in stream:
        if state["t0"] is None:
            state["t0"] = time.perf_counter()
        windows[flow["w"]] += flow["bytes_out"]
        state["n"] += 1
        if state["n"] >= target:
            with open(os.environ["RESULT"], "w") as out:  # Faust redirects stdout into its log
                out.write(str(time.perf_counter() - state["t0"]))
            os._exit(0)

if __name__ == "__main__":
    app.main()
'''


def bench_stream(settings: Settings, flows: int, console) -> list[Figure]:
    figures = hot_path(min(flows, 1_000_000))
    worker = worker_on_broker(settings, flows)
    naive = naive_baseline(settings)
    figures += worker + naive
    figures.append(("stream", "worker_vs_naive", worker[0][2] / naive[0][2], "x"))
    figures.append(("stream", "hot_path_vs_naive", figures[0][2] / naive[0][2], "x"))
    figures += open_window_memory()
    return figures
