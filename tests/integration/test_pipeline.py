"""End to end on the embedded broker: agent → Kafka → Faust worker → sink → Parquet → DuckDB."""

from __future__ import annotations

import collections
import signal
import threading
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import topics
from pipeline.agent.agent import FlowAgent
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.config import Settings
from pipeline.conform import ConformResult
from pipeline.pipeline_ops import account, ingest_files, push
from pipeline.query.views import connect, query_table
from pipeline.runner import LocalStack

pytestmark = pytest.mark.integration

WINDOW = 60
T0 = 1_795_000_000 // 3600 * 3600  # an hour boundary, so flows span several hour partitions


def _settings(tmp_path: Path, **kw) -> Settings:
    base = {"lake": str(tmp_path / "lake"), "state_dir": str(tmp_path / "state"), "partitions": 4,
            "idle_flush_seconds": 1.0, "sink_flush_seconds": 0.5}
    return Settings(**{**base, **kw})


def _flow(i: int, src: str, dst_ip: str, reporter: str = "src", **over) -> dict:
    ns, name = src.split("/")
    rec = {
        "start_time": T0 + i * 7 - 30, "end_time": T0 + i * 7,
        "source_namespace": ns, "source_name_aggr": f"{name}-6b7c9d8f5b-*", "source_type": "wep",
        "source_name": f"{name}-6b7c9d8f5b-x{i % 5}", "source_labels": {"app": name, "hostile\"key": "v=1,2"},
        "dest_namespace": "-", "dest_name_aggr": "pub", "dest_type": "net", "dest_ip": dst_ip,
        "dest_port": 443, "proto": "tcp", "action": "allow", "reporter": reporter,
        "bytes_in": 1000 + i, "bytes_out": 5000 + 3 * i, "packets_in": 2, "packets_out": 3,
        "num_flows": 1 + i % 3, "cluster": "it",
    }
    rec.update(over)
    return rec


def _known_flows(n: int) -> list[dict]:
    sources = ["genai/vllm", "genai/rag-api", "shop/frontend", "shop/cart"]
    ips = ["8.8.8.8", "169.254.169.254", "10.1.2.3", "1.1.1.1"]
    flows = [_flow(i, sources[i % 4], ips[(i // 4) % 4]) for i in range(n)]
    # pod-to-pod flow reported by both ends: must be counted once in windows
    for i in range(0, n, 50):
        base = _flow(i, "shop/frontend", "10.244.1.9", dest_type="wep", dest_namespace="shop",
                     dest_name_aggr="cart-5d8f7c6b9d-*", dest_ip="10.244.1.9", dest_port=8080)
        flows.append(base)
        flows.append({**base, "reporter": "dst", "bytes_in": base["bytes_out"], "bytes_out": base["bytes_in"]})
    return flows


def _expected_windows(flows: list[dict]) -> dict[tuple, list[int]]:
    """Window sums computed straight from the input, independently of the worker's code."""
    sums: dict[tuple, list[int]] = collections.defaultdict(lambda: [0, 0, 0])
    for f in flows:
        if f["reporter"] == "dst" and f["source_type"] in ("wep", "hep"):
            continue
        name = f["source_name_aggr"].rsplit("-", 2)[0]
        key = (f["end_time"] // WINDOW * WINDOW, f"{f['source_namespace']}/{name}", f["dest_port"])
        s = sums[key]
        s[0] += f["bytes_out"]
        s[1] += f["bytes_in"]
        s[2] += f["num_flows"]
    return dict(sums)


def test_ingest_counts_windows_and_dead_letters(tmp_path: Path) -> None:
    flows = _known_flows(3000)
    path = tmp_path / "flows.ndjson"
    bad = [b'{"start_time": 1, "end_', b"[1, 2, 3]",
           orjson.dumps({**_flow(1, "genai/vllm", "8.8.8.8"), "action": "maybe"}),
           orjson.dumps({**_flow(2, "genai/vllm", "8.8.8.8"), "bytes_out": -5})]
    lines = [orjson.dumps(f) for f in flows]
    for k, b in enumerate(bad):
        lines.insert(100 * (k + 1), b)
    path.write_bytes(b"\n".join(lines) + b"\n")

    report = ingest_files(_settings(tmp_path), [path], timeout=240)

    assert report.published == len(flows)
    assert report.in_lake == len(flows), "every valid flow lands in the lake exactly once"
    assert report.rejected_by_agent == len(bad)
    assert report.lost == 0
    con = connect(str(tmp_path / "lake"))
    assert query_table(con, "SELECT count(*) AS n FROM flows")["n"][0].as_py() == len(flows)
    reasons = [r["reason"] for r in query_table(con, "SELECT reason FROM dlq ORDER BY row").to_pylist()]
    assert len(reasons) == len(bad)
    assert any("invalid JSON" in r for r in reasons)
    assert any("not a JSON object" in r for r in reasons)
    assert any("action" in r for r in reasons)
    assert any("bytes_out" in r for r in reasons)
    # hostile labels survive the trip
    labels = query_table(con, "SELECT source_labels['hostile\"key'] AS v FROM flows LIMIT 1")["v"][0].as_py()
    assert labels == "v=1,2"

    got = query_table(con, """
        SELECT window_start, source_workload, dest_port,
               sum(bytes_out) AS bo, sum(bytes_in) AS bi, sum(num_flows) AS nf
        FROM flow_windows GROUP BY ALL""").to_pylist()
    actual = {(r["window_start"], r["source_workload"], r["dest_port"]): [r["bo"], r["bi"], r["nf"]] for r in got}
    assert actual == _expected_windows(flows)
    # files follow the exactly-once naming and hour partitioning
    names = [p.name for p in (tmp_path / "lake" / "flows").rglob("*.parquet")]
    assert names and all(n.startswith(topics.ENRICHED) for n in names)
    hours = {p.parent.name for p in (tmp_path / "lake" / "flows").rglob("*.parquet")}
    assert len(hours) >= 2


def test_sink_killed_mid_stream_loses_and_doubles_nothing(tmp_path: Path, short_sessions: None) -> None:
    gen = SyntheticCluster(seed=3, cluster="it")
    tables = list(gen.generate(T0, T0 + 1800, rate=60, batch_rows=5000))
    # make every flow identifiable: a unique byte count per row
    total = 0
    unique = []
    for t in tables:
        ids = pa.array(range(total, total + t.num_rows), pa.int64())
        unique.append(t.set_column(t.schema.get_field_index("bytes_out"), t.schema.field("bytes_out"), ids))
        total += t.num_rows
    half = len(unique) // 2
    settings = _settings(tmp_path, sink_flush_seconds=0.2)
    with LocalStack(settings) as stack:
        agent = FlowAgent(stack.settings)
        for t in unique[:half]:
            agent.publish(t)
        agent.finish()
        # wait until the sink has committed some but not necessarily all files, then kill it hard
        flows_dir = tmp_path / "lake" / "flows"
        deadline = time.monotonic() + 60
        while not list(flows_dir.rglob("*.parquet")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert list(flows_dir.rglob("*.parquet")), "sink wrote nothing"
        stack.kill_role("sink", signal.SIGKILL)

        def publish_rest() -> None:
            for t in unique[half:]:
                agent.publish(t)  # backpressure holds the agent while the sink is down
            agent.finish(flush_windows=True)

        publisher = threading.Thread(target=publish_rest, daemon=True)
        publisher.start()
        time.sleep(1.0)
        stack.start_role("sink")
        publisher.join(timeout=240)
        assert not publisher.is_alive()
        stack.wait_until_processed(timeout=240)
        in_lake, _, _ = account(stack, agent)
        agent.close()
    con = connect(str(tmp_path / "lake"))
    row = query_table(con, "SELECT count(*) AS n, count(DISTINCT bytes_out) AS d, min(bytes_out) AS lo, "
                           "max(bytes_out) AS hi FROM flows").to_pylist()[0]
    assert row == {"n": total, "d": total, "lo": 0, "hi": total - 1}
    assert in_lake == total


def test_crash_between_rename_and_commit_is_replayed_to_the_same_files(tmp_path: Path) -> None:
    """A sink that died after renaming some files of a flush but before committing rewrites them on restart."""
    gen = SyntheticCluster(seed=5, cluster="it")
    settings = _settings(tmp_path)
    with LocalStack(settings) as stack:
        # small enough that the embedded broker keeps every message (~5 MiB per partition): the replay needs them
        agent = push(stack, (ConformResult(t) for t in gen.generate(T0, T0 + 900, rate=15)), origin="test")
        expected = agent.stats.published
        stack.kill_role("sink", signal.SIGTERM)
        lake = tmp_path / "lake" / "flows"
        files = sorted(lake.rglob("*.parquet"), key=lambda p: int(p.stem.split("+")[-1]))
        victim = files[-1]
        same_range = [p for p in lake.rglob(victim.name)]
        removed_rows = sum(pa.parquet.read_metadata(p).num_rows for p in same_range[:1])
        same_range[0].unlink()  # the rename that never happened
        # ... and the commit that never happened: a sink group with no commits at all, so the
        # position must come from the lake's files alone
        stack.settings = stack.settings.with_overrides(sink_group=stack.settings.sink_group + "-recovered")
        assert removed_rows > 0
        stack.start_role("sink")
        stack.wait_until_processed(timeout=120)
        assert sorted(p.name for p in lake.rglob(victim.name)) == sorted(p.name for p in same_range)
        in_lake, _, _ = account(stack, agent)
        agent.close()
    assert in_lake == expected


def test_offset_gap_is_reported_as_dead_letter(tmp_path: Path) -> None:
    """Data the embedded broker dropped before the worker read it is reported, never skipped silently."""
    settings = _settings(tmp_path, max_lag_bytes=10**12)  # no backpressure: force the broker to drop data
    gen = SyntheticCluster(seed=9, cluster="it")
    with LocalStack(settings, worker=False) as stack:
        agent = FlowAgent(stack.settings)
        for t in gen.generate(T0, T0 + 3600, rate=400):
            agent.publish(t)
        agent.finish(flush_windows=True)
        reader = Consumer({**stack.settings.kafka_client_config(), "group.id": "probe"})
        lows = [reader.get_watermark_offsets(TopicPartition(topics.RAW, p))[0] for p in range(4)]
        reader.close()
        assert max(lows) > 0, "the broker should have dropped old messages for this test to mean anything"
        stack.start_role("worker")
        stack.wait_until_processed(timeout=240)
        agent.close()
    con = connect(str(tmp_path / "lake"))
    gaps = query_table(con, "SELECT reason FROM dlq WHERE reason LIKE 'offset gap%'").to_pylist()
    assert gaps, "offset gaps must land in the DLQ"
    lost = sum(int(g["reason"].split()[2]) for g in gaps)
    assert lost == sum(lows)
