"""The partitioner must agree with the Java client (murmur2), so every producer sends a workload to one partition."""

from __future__ import annotations

import orjson
import pytest

from pipeline.agent.publisher import partition_rows, source_keys
from pipeline.conform import parse_ndjson
from pipeline.kafka import murmur2, partition_for

# org.apache.kafka.common.utils.UtilsTest#testMurmur2
JAVA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize("data, expected", JAVA_MURMUR2)
def test_murmur2_matches_the_java_client(data, expected):
    assert murmur2(data) == expected


def test_murmur2_covers_every_tail_length_and_stays_in_int32():
    # Lengths 0..8 exercise every remainder branch; results are signed 32-bit.
    values = [murmur2(b"x" * n) for n in range(9)]
    assert len(set(values)) == 9
    assert all(-(2**31) <= v < 2**31 for v in values)


@pytest.mark.parametrize("data, expected", JAVA_MURMUR2)
@pytest.mark.parametrize("partitions", [1, 3, 8, 12, 100])
def test_partition_for_is_the_positive_hash_modulo_partitions(data, expected, partitions):
    # Java: Utils.toPositive(murmur2(key)) % numPartitions, toPositive = value & 0x7fffffff.
    assert partition_for(data, partitions) == (expected & 0x7FFFFFFF) % partitions


def _flows(pairs: list[tuple[str, str]]):
    records = [{
        "start_time": 1_780_315_200, "end_time": 1_780_315_260, "source_namespace": ns, "source_name_aggr": name,
        "source_type": "wep", "dest_namespace": "genai", "dest_name_aggr": "vllm-*", "dest_type": "wep",
        "proto": "tcp", "action": "allow", "reporter": "src", "bytes_in": i, "bytes_out": 0, "packets_in": 0,
        "packets_out": 0, "num_flows": 1, "cluster": "c1",
    } for i, (ns, name) in enumerate(pairs)]
    result = parse_ndjson([orjson.dumps(r) for r in records])
    assert not result.rejects
    return result.table


@pytest.mark.parametrize("partitions", [1, 6, 32])
def test_partition_rows_keeps_each_workload_on_its_key_partition(partitions):
    workloads = [("apps", f"svc-{i}-6c8d7f9b54-*") for i in range(40)] + [("-", "pub"), ("genai", "vllm-*")]
    pairs = [workloads[(i * 7) % len(workloads)] for i in range(500)]
    table = _flows(pairs)
    parts = partition_rows(table, partitions)
    assert len(parts) == table.num_rows
    by_workload: dict[tuple[str, str], set[int]] = {}
    for (ns, name), p in zip(pairs, parts.tolist(), strict=True):
        by_workload.setdefault((ns, name), set()).add(p)
    for (ns, name), seen in by_workload.items():
        assert seen == {partition_for(f"{ns}/{name}".encode(), partitions)}
    if partitions > 1:
        assert len({p for s in by_workload.values() for p in s}) > 1, "keys should spread over partitions"


def test_partition_key_is_namespace_slash_name():
    table = _flows([("apps", "chat-*"), ("-", "pub")])
    assert source_keys(table).to_pylist() == ["apps/chat-*", "-/pub"]


def test_partition_rows_of_an_empty_table():
    assert len(partition_rows(_flows([]), 8)) == 0


def test_partition_rows_on_a_multi_chunk_table():
    import pyarrow as pa

    a, b = _flows([("apps", "a-*")] * 3), _flows([("apps", "b-*"), ("apps", "a-*")])
    parts = partition_rows(pa.concat_tables([a, b]), 16).tolist()
    pa_, pb = partition_for(b"apps/a-*", 16), partition_for(b"apps/b-*", 16)
    assert parts == [pa_, pa_, pa_, pb, pa_]
