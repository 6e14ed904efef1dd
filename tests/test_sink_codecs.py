"""The Arrow body codec (``body_compression``): the sink reads every codec into the same lake rows."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from pipeline import topics
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.config import ConfigError, Settings, load_settings
from pipeline.conform import ConformResult
from pipeline.envelope import ARROW, Envelope, encode_arrow
from pipeline.pipeline_ops import account, push
from pipeline.query.views import connect
from pipeline.runner import LocalStack
from pipeline.schema import arrow_schema
from pipeline.sink.consumer import LakeSink
from pipeline.sink.lake import ParquetLakeWriter
from pipeline.stream.enrich import FlowEnricher
from tests.conftest import sink_in_thread, wait_until_sink_committed

T0 = 1_795_000_000 // 3600 * 3600 - 600  # the batches straddle an hour boundary
CODECS = ("zstd", "lz4", "none")
# Magic numbers that open each compressed buffer's frame (little-endian).
LZ4_FRAME, ZSTD_FRAME = b"\x04\x22\x4d\x18", b"\x28\xb5\x2f\xfd"


def enriched(batches: int, rows: int) -> list[pa.Table]:
    """Enriched tables as the worker writes them, ``bytes_in`` replaced by a unique id per row."""
    gen = SyntheticCluster(seed=11, cluster="codecs")
    enricher = FlowEnricher()
    out, next_id = [], 0
    for i, raw in enumerate(gen.generate(T0, T0 + 1200, rate=batches * rows / 1200 * 1.5, batch_rows=rows)):
        table = enricher.enrich(raw, batch_id=f"codecs-{i}")
        ids = pa.array(range(next_id, next_id + table.num_rows), pa.int64())
        out.append(table.set_column(table.schema.get_field_index("bytes_in"), "bytes_in", ids))
        next_id += table.num_rows
        if len(out) == batches:
            break
    return out


def lake_table(lake: str) -> pa.Table:
    """Every row of the lake's flows files, ordered by ``bytes_in``, in the contract's schema."""
    files = ParquetLakeWriter(lake).lake_files("flows")
    table = pa.concat_tables(pq.read_table(f.path).cast(arrow_schema("flow_enriched.v1")) for f in files)
    return table.take(pc.sort_indices(table, [("bytes_in", "ascending")]))


def test_body_compression_is_a_choice() -> None:
    assert Settings().body_compression == "zstd"
    assert load_settings(env={"FLOWCTL_BODY_COMPRESSION": "lz4"}).body_compression == "lz4"
    with pytest.raises(ConfigError, match="body_compression must be one of zstd, lz4, none, got 'gzip'"):
        load_settings(env={"FLOWCTL_BODY_COMPRESSION": "gzip"})


def test_bad_body_compression_stops_the_cli_with_one_line(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "pipeline.cli", "config"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "FLOWCTL_BODY_COMPRESSION": "brotli"}, timeout=60)
    assert done.returncode != 0
    assert "body_compression must be one of zstd, lz4, none" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def sink_until_committed(settings: Settings) -> LakeSink:
    """Run a sink in this process until its group has committed everything in flows.enriched.v1."""
    with sink_in_thread(settings) as (sink, _):
        wait_until_sink_committed(settings, timeout=60)
    return sink


def test_sink_writes_the_same_rows_whatever_codec_each_message_has(tmp_path: Path) -> None:
    tables = enriched(batches=12, rows=400)
    settings = Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), partitions=3,
                        sink_flush_seconds=0.2)
    with LocalStack(settings, worker=False, sink=False) as stack:
        producer = Producer(stack.settings.kafka_client_config())
        for i, table in enumerate(tables):
            # Every partition gets every codec: a consumer must read each message by its own codec.
            env = Envelope("flow_enriched", "1", ARROW, table.num_rows, "codecs", f"codecs-{i}")
            producer.produce(topics.ENRICHED, value=encode_arrow(table, CODECS[i // 3 % 3]), headers=env.headers(),
                             partition=i % 3)
        assert producer.flush(30) == 0
        sink = sink_until_committed(stack.settings)
    assert sink.stats.undecodable == 0
    assert lake_table(settings.lake).to_pylist() == pa.concat_tables(tables).to_pylist()


def test_an_undecodable_body_is_dead_lettered_and_the_rest_of_its_flush_is_written(tmp_path: Path, caplog) -> None:
    tables = enriched(batches=4, rows=300)
    settings = Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), partitions=1,
                        sink_flush_seconds=0.2)
    with LocalStack(settings, worker=False, sink=False) as stack:
        producer = Producer(stack.settings.kafka_client_config())
        values = [encode_arrow(t, "lz4") for t in tables]
        values.insert(2, values[1][: len(values[1]) // 2])  # a truncated body between good ones
        for i, value in enumerate(values):
            env = Envelope("flow_enriched", "1", ARROW, 300, "codecs", f"codecs-{i}")
            producer.produce(topics.ENRICHED, value=value, headers=env.headers(), partition=0)
        assert producer.flush(30) == 0
        sink = sink_until_committed(stack.settings)
    assert sink.stats.undecodable == 1
    assert "cannot decode flows.enriched.v1[0]@2, skipped" in caplog.text
    # named after the flush's offsets, like its flows files: a replay of the flush rewrites the same names
    [dlq_file] = ParquetLakeWriter(settings.lake).lake_files("dlq")
    flows_names = {(f.topic, f.first, f.last) for f in ParquetLakeWriter(settings.lake).lake_files("flows")}
    assert flows_names == {(dlq_file.topic, dlq_file.first, dlq_file.last)}
    assert lake_table(settings.lake).to_pylist() == pa.concat_tables(tables).to_pylist()
    dead = connect(settings.lake).execute(
        "SELECT source_topic, source_partition, source_offset, batch_id, reason FROM dlq").fetchall()
    assert [d[:4] for d in dead] == [(topics.ENRICHED, 0, 2, "codecs-2")]
    assert dead[0][4].startswith("undecodable flows message: not a valid Arrow IPC stream")


def topic_values(settings: Settings, topic: str) -> list[bytes]:
    """The values of the messages of ``topic`` (every partition, from the start)."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "codecs-reader", "enable.partition.eof": True})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(settings.partitions)])
    values: list[bytes] = []
    at_end: set[int] = set()
    try:
        for _ in range(100):
            for msg in consumer.consume(num_messages=100, timeout=0.5):
                if msg.error() is None:
                    values += [msg.value()] if msg.value() else []
                elif msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
            if len(at_end) == settings.partitions:
                break
    finally:
        consumer.close()
    return values


@pytest.mark.integration
def test_lz4_bodies_through_agent_worker_and_sink(tmp_path: Path) -> None:
    rows = 1500
    flows = pa.Table.from_pylist([
        {"start_time": T0 + i, "end_time": T0 + i + 5, "source_namespace": "genai", "source_name_aggr": "vllm-*",
         "source_type": "wep", "source_labels": [("app", "vllm"), ("n", str(i))], "dest_namespace": "-",
         "dest_name_aggr": "pub", "dest_type": "net", "dest_ip": "8.8.8.8", "dest_port": 443, "proto": "tcp",
         "action": "allow", "reporter": "src", "bytes_in": i, "bytes_out": 2 * i, "packets_in": 1, "packets_out": 1,
         "num_flows": 1, "cluster": "codecs"} for i in range(rows)], schema=arrow_schema("flowlog.v1"))
    settings = Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), partitions=2,
                        idle_flush_seconds=1.0, sink_flush_seconds=0.5, body_compression="lz4", batch_rows=400)
    with LocalStack(settings) as stack:
        agent = push(stack, [ConformResult(flows, [])], origin="test")
        in_lake, _, _ = account(stack, agent)
        raw, enriched_ = topic_values(stack.settings, topics.RAW), topic_values(stack.settings, topics.ENRICHED)
    assert in_lake == rows
    # Agent and worker both wrote LZ4 frames, no zstd frames.
    assert raw and enriched_
    assert all(LZ4_FRAME in b and ZSTD_FRAME not in b for b in raw + enriched_)
    lake = lake_table(settings.lake)
    assert lake["bytes_in"].to_pylist() == list(range(rows))
    assert lake["bytes_out"].to_pylist() == [2 * i for i in range(rows)]
    assert [dict(m)["n"] for m in lake["source_labels"].to_pylist()] == [str(i) for i in range(rows)]
