"""The batch envelope: values (Arrow IPC, NDJSON) and headers."""

from __future__ import annotations

import orjson
import pyarrow as pa
import pytest

from pipeline.envelope import (
    ARROW,
    NDJSON,
    Envelope,
    EnvelopeError,
    decode_arrow,
    encode_arrow,
    encode_ndjson,
    new_batch_id,
    split_ndjson,
)
from pipeline.schema import arrow_schema


def flows_table() -> pa.Table:
    schema = arrow_schema("flowlog.v1")
    row = {f.name: None for f in schema}
    row.update({
        "start_time": 1, "end_time": 2, "source_namespace": "apps", "source_name_aggr": "chat-*",
        "source_type": "wep", "source_labels": [("a=b", 'q"uote'), ("ключ", "x" * 10_000)],
        "dest_namespace": "-", "dest_name_aggr": "pub", "dest_type": "net", "dest_domains": ["api.openai.com"],
        "proto": "tcp", "action": "allow", "reporter": "src", "bytes_in": 2**40, "bytes_out": 0, "packets_in": 1,
        "packets_out": 1, "num_flows": 1, "cluster": "c",
    })
    return pa.Table.from_pylist([row, {**row, "dest_port": 443, "source_labels": []}], schema=schema)


@pytest.mark.parametrize("compression", ["zstd", "lz4", "none", None])
@pytest.mark.parametrize("use_threads", [True, False])
def test_arrow_round_trip(compression, use_threads):
    table = flows_table()
    back = decode_arrow(encode_arrow(table, compression=compression), use_threads=use_threads)
    assert back.equals(table)
    assert back.schema.equals(table.schema)


def test_body_codecs_trade_bytes_for_decoding_speed():
    table = pa.concat_tables([flows_table()] * 50)
    sizes = {codec: len(encode_arrow(table, compression=codec)) for codec in ("zstd", "lz4", "none")}
    assert sizes["zstd"] < sizes["lz4"] < sizes["none"]
    assert encode_arrow(table, compression="none") == encode_arrow(table, compression=None)


def test_arrow_round_trip_of_an_empty_table():
    empty = arrow_schema("flowlog.v1").empty_table()
    assert decode_arrow(encode_arrow(empty)).equals(empty)


def test_arrow_bodies_are_compressed():
    table = pa.concat_tables([flows_table()] * 50)
    assert len(encode_arrow(table)) < len(encode_arrow(table, compression=None)) / 2


@pytest.mark.parametrize("garbage", [b"", b"\x00", b"not arrow", b'{"start_time": 1}', b"\xff" * 64])
def test_garbage_is_an_envelope_error(garbage):
    with pytest.raises(EnvelopeError):
        decode_arrow(garbage)


def test_truncated_arrow_stream_is_an_envelope_error():
    value = encode_arrow(flows_table())
    with pytest.raises(EnvelopeError):
        decode_arrow(value[: len(value) // 2])


def test_headers_round_trip():
    env = Envelope("flowlog", "1", ARROW, 2000, "ip-10-0-1-2", new_batch_id())
    assert Envelope.from_headers(env.headers()) == env
    assert Envelope.from_headers(dict(env.headers())) == env
    with_control = Envelope("flowlog", "1", ARROW, 0, "node é", "b", control="flush")
    assert Envelope.from_headers(with_control.headers()) == with_control
    assert ("control", b"flush") in with_control.headers()
    assert all(k != "control" for k, _ in env.headers())


def test_header_values_are_bytes_kafka_can_carry():
    for key, value in Envelope("flowlog", "1", NDJSON, 3, "n", "b").headers():
        assert isinstance(key, str) and isinstance(value, bytes)


@pytest.mark.parametrize("headers", [None, [], {}])
def test_missing_headers_mean_an_ndjson_flowlog_batch(headers):
    env = Envelope.from_headers(headers)
    assert (env.schema, env.schema_version, env.content_type) == ("flowlog", "1", NDJSON)
    assert (env.count, env.node, env.batch_id, env.control) == (0, "", "", "")


def test_partial_and_odd_headers():
    env = Envelope.from_headers([("batch-id", b"abc"), ("count", b"many"), ("node", None), ("x-other", b"1"),
                                 ("content-type", b"\xffbad")])
    assert env.batch_id == "abc"
    assert env.count == 0
    assert env.node == ""
    assert env.schema == "flowlog" and env.content_type.endswith("bad")


def test_batch_ids_are_unique():
    assert len({new_batch_id() for _ in range(1000)}) == 1000


def test_ndjson_round_trip_and_blank_lines():
    records = [{"a": 1, "s": "x\ny"}, {"b": [1, 2]}, {}]
    value = encode_ndjson(records)
    assert value.endswith(b"\n")
    assert [orjson.loads(line) for line in split_ndjson(value)] == records
    assert split_ndjson(b"\n\n  \n{}\r\n\n{\"a\":1}") == [b"{}\r", b'{"a":1}']
    assert split_ndjson(b"") == []
