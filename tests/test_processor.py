"""The worker's message handling without Kafka: decode, validate, enrich, window, dead-letter."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator

from pipeline import topics
from pipeline.envelope import ARROW, NDJSON, Envelope, encode_arrow, encode_ndjson
from pipeline.schema import arrow_schema
from pipeline.stream.processor import FlowProcessor

DLQ_VALIDATOR = Draft202012Validator(
    json.loads((Path(__file__).resolve().parent.parent / "schemas" / "dlq_record.v1.json").read_text()))
T0 = 1_780_315_200


def flow(i: int = 0, **overrides) -> dict:
    record = {
        "start_time": T0 + i, "end_time": T0 + i + 10,
        "source_namespace": "apps", "source_name_aggr": "chat-6c8d7f9b54-*", "source_type": "wep",
        "dest_namespace": "genai", "dest_name_aggr": "vllm-7d9f8c6b5-*", "dest_type": "wep",
        "dest_port": 8000, "proto": "tcp", "action": "allow", "reporter": "src",
        "bytes_in": 1000 + i, "bytes_out": 10, "packets_in": 2, "packets_out": 1, "num_flows": 1, "cluster": "c1",
    }
    record.update(overrides)
    return record


def arrow_value(records: list[dict]) -> bytes:
    loose = pa.schema([f.with_nullable(True) for f in arrow_schema("flowlog.v1")])
    return encode_arrow(pa.Table.from_pylist(records, schema=loose))


def headers(batch_id: str, content_type: str = ARROW, count: int = 0, control: str = "") -> list[tuple[str, bytes]]:
    return Envelope("flowlog", "1", content_type, count, "node-a", batch_id, control=control).headers()


def assert_valid_dlq(records: list[dict]) -> None:
    for r in records:
        errors = [e.message for e in DLQ_VALIDATOR.iter_errors(r)]
        assert not errors, errors


def test_arrow_batch_with_bad_rows():
    records = [flow(0), flow(1, bytes_in=-5), flow(2), flow(3, action="drop"), flow(4, dest_port=70000), flow(5)]
    proc = FlowProcessor()
    out = proc.process(arrow_value(records), headers("b-1", count=6), partition=3, offset=42)
    assert out.batch_id == "b-1"
    assert out.enriched.column("bytes_in").to_pylist() == [records[i]["bytes_in"] for i in (0, 2, 5)]
    assert out.enriched.column("batch_id").to_pylist() == ["b-1"] * 3
    assert out.enriched.schema.equals(arrow_schema("flow_enriched.v1"))
    assert [d["row"] for d in out.dlq] == [1, 3, 4]
    for d, field in zip(out.dlq, ["bytes_in", "action", "dest_port"], strict=True):
        assert field in d["reason"]
        assert (d["source_topic"], d["source_partition"], d["source_offset"], d["batch_id"]) == (
            topics.RAW, 3, 42, "b-1")
        assert d["raw"] is None
        sent = records[d["row"]]
        assert {k: v for k, v in orjson.loads(d["record"]).items() if k in sent} == sent
    assert_valid_dlq(out.dlq)
    assert (proc.stats.records_in, proc.stats.records_out, proc.stats.dead_letters) == (6, 3, 3)


def test_undecodable_arrow_value_is_dead_lettered_whole_with_its_bytes():
    garbage = b"\xff\xfe\x00not arrow at all\x80"
    proc = FlowProcessor()
    out = proc.process(garbage, headers("b-2"), partition=0, offset=7)
    assert out.enriched is None and out.windows == []
    (d,) = out.dlq
    assert "Arrow" in d["reason"]
    assert d["raw"].startswith("base64:")
    assert base64.b64decode(d["raw"].removeprefix("base64:")) == garbage
    assert (d["source_offset"], d["batch_id"], d["record"]) == (7, "b-2", None)
    assert_valid_dlq(out.dlq)


def test_utf8_garbage_is_kept_as_text():
    out = FlowProcessor().process("schön kaputt".encode(), headers("b-3"), partition=0, offset=0)
    (d,) = out.dlq
    assert d["raw"] == "schön kaputt"


def test_same_batch_id_twice_is_dropped_the_second_time():
    proc = FlowProcessor()
    value = arrow_value([flow(0), flow(1)])
    first = proc.process(value, headers("dup"), partition=0, offset=0)
    second = proc.process(value, headers("dup"), partition=0, offset=1)
    assert first.enriched.num_rows == 2
    assert second.enriched is None and second.dlq == [] and second.windows == []
    assert proc.stats.duplicates == 1
    assert proc.stats.records_out == 2
    third = proc.process(value, headers("other"), partition=0, offset=2)
    assert third.enriched.num_rows == 2


def test_offset_jump_is_reported():
    proc = FlowProcessor()
    assert proc.process(arrow_value([flow(0)]), headers("a"), partition=1, offset=10).dlq == []
    out = proc.process(arrow_value([flow(1)]), headers("b"), partition=1, offset=15)
    gaps = [d for d in out.dlq if d["reason"].startswith("offset gap")]
    assert len(gaps) == 1
    assert "4 messages" in gaps[0]["reason"] and "11..14" in gaps[0]["reason"]
    assert (gaps[0]["source_partition"], gaps[0]["source_offset"]) == (1, 11)
    assert_valid_dlq(gaps)
    assert (proc.stats.offset_gaps, proc.stats.lost_messages) == (1, 4)
    assert out.enriched.num_rows == 1, "the message after the gap is still processed"


def test_offsets_are_tracked_per_partition_and_replays_are_not_gaps():
    proc = FlowProcessor()
    value = arrow_value([flow(0)])
    for partition, offset, batch in [(0, 0, "x0"), (1, 100, "x1"), (0, 1, "x2"), (1, 101, "x3"), (0, 0, "x4")]:
        assert proc.process(value, headers(batch), partition, offset).dlq == []
    assert proc.stats.offset_gaps == 0


def test_gap_from_the_committed_position_is_reported_on_the_first_message():
    proc = FlowProcessor()
    proc.expect_offset(4, 100)
    assert proc.knows(4) and not proc.knows(5)
    out = proc.process(arrow_value([flow()]), headers("g"), partition=4, offset=103)
    (gap,) = out.dlq
    assert gap["reason"].startswith("offset gap") and gap["source_offset"] == 100
    assert proc.stats.lost_messages == 3
    assert proc.process(arrow_value([flow()]), headers("g2"), partition=4, offset=104).dlq == []


def test_flush_control_closes_windows_of_its_partition():
    proc = FlowProcessor(window_seconds=60, grace_seconds=3600)
    records = [flow(0, bytes_in=5), flow(1, bytes_in=6), flow(2, reporter="dst", bytes_in=999)]
    p0 = proc.process(arrow_value(records), headers("w0"), partition=0, offset=0)
    p1 = proc.process(arrow_value([flow(0)]), headers("w1"), partition=1, offset=0)
    assert p0.windows == [] and p1.windows == []
    out = proc.process(b"", headers("ctl", control="flush"), partition=0, offset=1)
    rows = [r for t in out.windows for r in t.to_pylist()]
    assert len(rows) == 1
    assert rows[0]["bytes_in"] == 11 and rows[0]["flow_records"] == 2  # the dst report is not counted
    assert rows[0]["source_workload"] == "apps/chat" and rows[0]["destination"] == "genai/vllm"
    assert proc.window_state(1).open_windows == 1
    assert out.dlq == []


def test_windows_close_as_event_time_moves_on():
    proc = FlowProcessor(window_seconds=60, grace_seconds=0)
    first = proc.process(arrow_value([flow(0, bytes_in=1), flow(5, bytes_in=2)]), headers("e0"), 0, 0)
    assert first.windows == []
    second = proc.process(arrow_value([flow(200, bytes_in=4)]), headers("e1"), 0, 1)
    closed = [r for t in second.windows for r in t.to_pylist()]
    assert [(r["window_start"], r["bytes_in"]) for r in closed] == [(T0, 3)]


def test_ndjson_batch():
    records = [flow(0), flow(1)]
    value = encode_ndjson(records) + b"{broken\n"
    proc = FlowProcessor()
    out = proc.process(value, headers("n-1", content_type=NDJSON), partition=2, offset=0)
    assert out.enriched.column("bytes_in").to_pylist() == [1000, 1001]
    (d,) = out.dlq
    assert "invalid JSON" in d["reason"] and d["raw"] == "{broken" and d["row"] == 2
    assert_valid_dlq(out.dlq)


def test_message_without_headers_is_read_as_ndjson():
    out = FlowProcessor().process(orjson.dumps(flow(3)), None, partition=0, offset=0)
    assert out.enriched.num_rows == 1
    assert out.enriched.column("batch_id").to_pylist() == [f"{topics.RAW}+0+0"]


def test_unknown_content_type_goes_to_the_dlq():
    value = b"<flows/>"
    out = FlowProcessor().process(value, headers("x", content_type="application/xml"), partition=0, offset=3)
    (d,) = out.dlq
    assert "application/xml" in d["reason"] and d["raw"] == "<flows/>"
    assert out.enriched is None
    assert_valid_dlq(out.dlq)


def test_unknown_schema_goes_to_the_dlq():
    hdrs = Envelope("alerts", "1", NDJSON, 1, "n", "s-1").headers()
    out = FlowProcessor().process(orjson.dumps(flow()), hdrs, partition=0, offset=0)
    (d,) = out.dlq
    assert "alerts" in d["reason"]


def test_an_internal_error_dead_letters_the_message_instead_of_raising(monkeypatch):
    proc = FlowProcessor()

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(proc.enricher, "enrich", broken)
    value = arrow_value([flow()])
    out = proc.process(value, headers("err"), partition=0, offset=0)
    (d,) = out.dlq
    assert "boom" in d["reason"] and d["batch_id"] == "err"
    assert base64.b64decode(d["raw"].removeprefix("base64:")) == value


@pytest.mark.parametrize("content_type", [ARROW, NDJSON])
def test_empty_batch_is_harmless(content_type):
    value = b"" if content_type == NDJSON else encode_arrow(arrow_schema("flowlog.v1").empty_table())
    out = FlowProcessor().process(value, headers("empty", content_type=content_type), partition=0, offset=0)
    assert out.enriched is None and out.dlq == []
