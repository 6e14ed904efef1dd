"""Validation of flow batches: every kind of bad record is rejected with a reason, good rows pass intact."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from pipeline.conform import conform_table, parse_ndjson, table_from_records
from pipeline.schema import arrow_schema

FLOWLOG = "flowlog.v1"
SCHEMA_DOC = json.loads((Path(__file__).resolve().parent.parent / "schemas" / "flowlog.v1.json").read_text())
VALIDATOR = Draft202012Validator(SCHEMA_DOC)
T0 = 1_780_315_200


def good(i: int = 0, **overrides) -> dict:
    record = {
        "start_time": T0 + i, "end_time": T0 + i + 60,
        "source_namespace": "apps", "source_name_aggr": f"chat-{i}-6c8d7f9b54-*", "source_type": "wep",
        "source_labels": {"app": f"chat-{i}"},
        "dest_namespace": "genai", "dest_name_aggr": "vllm-7d9f8c6b5-*", "dest_type": "wep",
        "dest_port": 8000, "dest_domains": None,
        "proto": "tcp", "action": "allow", "reporter": "src",
        "bytes_in": 1000 + i, "bytes_out": 200, "packets_in": 10, "packets_out": 4, "num_flows": 1,
        "cluster": "prod",
    }
    record.update(overrides)
    return record


def without(field: str, i: int = 0) -> dict:
    record = good(i)
    del record[field]
    return record


def lines(records) -> list[bytes]:
    return [r if isinstance(r, bytes) else orjson.dumps(r) for r in records]


def as_json(row: dict) -> dict:
    """A conformed row as JSON data: maps back to objects, absent optional fields dropped."""
    maps = {f.name for f in arrow_schema(FLOWLOG) if pa.types.is_map(f.type)}
    return {k: (dict(v) if k in maps and v is not None else v) for k, v in row.items()}


def same_record(row: dict, record: dict) -> bool:
    row = as_json(row)
    return all(row[k] == record.get(k) for k in row) and set(record) <= set(row)


# (description, the bad record or line, text that must appear in the reason)
BAD = [
    ("bad JSON", b'{"start_time": 1780315200, "end_time": ', "invalid JSON"),
    ("not an object: array", b'[1, 2, 3]', "not a JSON object"),
    ("not an object: string", b'"flow"', "not a JSON object"),
    ("not an object: null", b"null", "not a JSON object"),
    ("string counter", good(bytes_in="many"), "bytes_in"),
    ("bool counter", good(packets_out=True), "packets_out"),
    ("fractional counter", good(bytes_out=1.5), "bytes_out"),
    ("number as string", good(proto=6), "proto"),
    ("string as labels", good(source_labels="app=chat"), "source_labels"),
    ("non-string label value", good(dest_labels={"replicas": 3}), "dest_labels"),
    ("null label value", good(dest_labels={"app": None}), "dest_labels"),
    ("string as list", good(dest_domains="api.openai.com"), "dest_domains"),
    ("number in list", good(policies=["0|default|allow-all|allow|0", 7]), "policies"),
    ("missing start_time", without("start_time"), "start_time"),
    ("missing cluster", without("cluster"), "cluster"),
    ("missing reporter", without("reporter"), "reporter"),
    ("null required", good(source_namespace=None), "source_namespace"),
    ("enum action", good(action="drop"), "action"),
    ("enum reporter", good(reporter="both"), "reporter"),
    ("enum dest_type", good(dest_type="pod"), "dest_type"),
    ("negative bytes", good(bytes_in=-1), "bytes_in"),
    ("negative flows", good(num_flows=-3), "num_flows"),
    ("negative time", good(start_time=-5, end_time=10), "start_time"),
    ("port above 65535", good(dest_port=65536), "dest_port"),
    ("source port above 65535", good(source_port=70000), "source_port"),
    ("negative port", good(dest_service_port_num=-1), "dest_service_port_num"),
    ("end before start", good(start_time=T0 + 100, end_time=T0 + 99), "end_time"),
    ("empty name", good(source_name_aggr=""), "source_name_aggr"),
    ("empty cluster", good(cluster=""), "cluster"),
    ("empty proto", good(proto=""), "proto"),
]


@pytest.mark.parametrize("bad, needle", [(b, n) for _, b, n in BAD], ids=[d for d, _, _ in BAD])
def test_each_kind_of_bad_record_is_rejected_with_a_reason(bad, needle):
    before, after = good(1), good(2, dest_port=None, proto="icmp")
    batch = [before, bad, after]
    result = parse_ndjson(lines(batch))
    assert len(result.rejects) == 1
    reject = result.rejects[0]
    assert reject.row == 1
    assert needle in reject.reason
    if isinstance(bad, bytes) and needle == "invalid JSON":
        assert reject.raw == bad and reject.record is None
    elif isinstance(bad, dict):
        # The DLQ gets the record as sent (conform may add the absent optional fields as nulls).
        assert {k: reject.record.get(k) for k in bad} == bad
    # The good rows around it are kept, in order, unchanged.
    rows = result.table.to_pylist()
    assert len(rows) == 2
    assert same_record(rows[0], before) and same_record(rows[1], after)
    assert result.table.schema.equals(arrow_schema(FLOWLOG))


def test_bad_records_agree_with_the_json_schema_where_it_can_tell():
    for description, bad, _ in BAD:
        if isinstance(bad, dict) and description != "end before start":
            assert list(VALIDATOR.iter_errors(bad)), description
    assert not list(VALIDATOR.iter_errors(good()))


def test_whole_numbers_written_as_floats_are_integers():
    # JSON Schema counts 1780315200.0 as an integer; conform must too, and keep the value.
    line = orjson.dumps(good(start_time=float(T0), end_time=float(T0 + 60), bytes_in=2e3))
    assert b"1780315200.0" in line
    result = parse_ndjson([line])
    assert not result.rejects, result.rejects
    row = result.table.to_pylist()[0]
    assert (row["start_time"], row["end_time"], row["bytes_in"]) == (T0, T0 + 60, 2000)


def test_empty_input_gives_an_empty_table():
    result = parse_ndjson([])
    assert result.table.num_rows == 0 and result.rejects == []
    assert result.table.schema.equals(arrow_schema(FLOWLOG))


def test_unknown_calico_fields_are_dropped_not_rejected():
    record = good(process_name="python3", nat_outgoing_ports=[31000], tcp_mean_send_congestion_window=10)
    result = parse_ndjson(lines([record]))
    assert result.rejects == []
    assert "process_name" not in result.table.column_names


def test_optional_fields_may_be_absent_or_null():
    minimal = {k: good()[k] for k in SCHEMA_DOC["required"]}
    result = parse_ndjson(lines([minimal, good(dest_port=None, source_labels=None)]))
    assert result.rejects == []
    rows = result.table.to_pylist()
    assert rows[0]["dest_port"] is None and rows[0]["source_labels"] is None
    assert same_record(rows[0], minimal)


HOSTILE_LABELS = {
    "a=b": "c=d",
    'quote"key': "it's \"quoted\"",
    "back\\slash": "tab\tnew\nline",
    "ключ": "значение",
    "emoji-🚀": "日本語 ✓ 🧠",
    "": "empty key",
    "long": "x" * 10_000,
    "app.kubernetes.io/name": "=,;{}[]|",
}


def test_hostile_labels_pass_through_ndjson_intact():
    record = good(source_labels=HOSTILE_LABELS, dest_labels={"k": "v" * 10_000})
    result = parse_ndjson(lines([record]))
    assert result.rejects == []
    row = as_json(result.table.to_pylist()[0])
    assert row["source_labels"] == HOSTILE_LABELS
    assert row["dest_labels"] == {"k": "v" * 10_000}


def test_hostile_labels_pass_through_arrow_intact():
    records = [good(0, source_labels=HOSTILE_LABELS), good(1)]
    table = parse_ndjson(lines(records)).table
    again = conform_table(table)
    assert again.rejects == []
    assert again.table.equals(table)
    assert as_json(again.table.to_pylist()[0])["source_labels"] == HOSTILE_LABELS


# ---- Arrow batches -----------------------------------------------------------

def _arrow(records: list[dict], **types) -> pa.Table:
    return pa.Table.from_pylist(records, schema=pa.schema(
        [pa.field(k, types.get(k, arrow_schema(FLOWLOG).field(k).type)) for k in records[0]]))


def test_arrow_batch_rows_are_checked_one_by_one():
    records = [good(0), good(1, packets_in=-2), good(2, action="drop"), good(3)]
    result = conform_table(_arrow(records))
    assert [r.row for r in result.rejects] == [1, 2]
    assert "packets_in" in result.rejects[0].reason and "action" in result.rejects[1].reason
    assert result.rejects[1].record["action"] == "drop"
    assert result.table.column("bytes_in").to_pylist() == [records[0]["bytes_in"], records[3]["bytes_in"]]


def test_arrow_batch_with_narrower_integer_types_is_widened():
    records = [good(0), good(1)]
    result = conform_table(_arrow(records, dest_port=pa.int32(), bytes_in=pa.uint32()))
    assert result.rejects == []
    assert result.table.schema.equals(arrow_schema(FLOWLOG))
    assert result.table.column("bytes_in").to_pylist() == [r["bytes_in"] for r in records]


def test_arrow_batch_missing_a_required_column_is_rejected_whole():
    records = [without("cluster", 0), without("cluster", 1)]
    result = conform_table(_arrow(records))
    assert result.table.num_rows == 0
    assert [r.row for r in result.rejects] == [0, 1]
    assert all("cluster" in r.reason for r in result.rejects)


def test_arrow_batch_with_an_unreadable_column_is_rejected_whole():
    records = [good(0, bytes_in="lots"), good(1, bytes_in="7x")]
    result = conform_table(_arrow(records, bytes_in=pa.string()))
    assert result.table.num_rows == 0
    assert len(result.rejects) == 2
    assert all("bytes_in" in r.reason for r in result.rejects)


def test_table_from_records_counts_every_input():
    records = [good(0), 5, None, good(1, reporter="x"), good(2)]
    result = table_from_records(records)
    assert result.table.num_rows == 2
    assert sorted(r.row for r in result.rejects) == [1, 2, 3]


# ---- property tests ----------------------------------------------------------

MUTATIONS = [m for _, m, _ in BAD]


@st.composite
def mixed_batches(draw):
    """A batch of lines with the indices that must be rejected."""
    n = draw(st.integers(min_value=0, max_value=25))
    out, bad = [], set()
    for i in range(n):
        if draw(st.booleans()):
            out.append(orjson.dumps(good(i, bytes_in=draw(st.integers(0, 2**40)),
                                         dest_port=draw(st.one_of(st.none(), st.integers(0, 65535))))))
        else:
            choice = draw(st.integers(0, len(MUTATIONS) + 1))
            if choice < len(MUTATIONS):
                out.append(lines([MUTATIONS[choice]])[0])
            else:
                out.append(draw(st.binary(min_size=1, max_size=40).filter(lambda b: b.strip() and b[:1] != b"{")))
                # Random bytes may happen to be valid JSON (a number, say); never an object.
            bad.add(i)
    return out, bad


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mixed_batches())
def test_random_mixes_account_for_every_record(batch):
    data, bad = batch
    result = parse_ndjson(data)
    assert result.table.num_rows + len(result.rejects) == len(data)
    assert {r.row for r in result.rejects} == bad
    kept = [orjson.loads(d) for i, d in enumerate(data) if i not in bad]
    assert all(same_record(row, rec) for row, rec in zip(result.table.to_pylist(), kept, strict=True))


ANY_VALUE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.integers(-2, 70_000),
    st.floats(-(2.0**53), 2.0**53), st.sampled_from([0.0, 2.0, 65536.0, 1.5]),
    st.sampled_from(["", "allow", "deny", "src", "dst", "wep", "net", "tcp", "x"]), st.text(max_size=5),
    st.lists(st.one_of(st.text(max_size=3), st.none(), st.integers()), max_size=3),
    st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), st.none(), st.integers()), max_size=3),
)


@st.composite
def mutated_records(draw):
    record = copy.deepcopy(good(draw(st.integers(0, 1000))))
    names = list(SCHEMA_DOC["properties"])
    for name in draw(st.lists(st.sampled_from(names), max_size=3, unique=True)):
        if draw(st.integers(0, 4)) == 0:
            record.pop(name, None)
        else:
            record[name] = draw(ANY_VALUE)
    return record


def _has_huge_int(value) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return not -(2**63) <= value < 2**63
    if isinstance(value, dict):
        return any(_has_huge_int(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_huge_int(v) for v in value)
    return False


@settings(max_examples=300, deadline=None)
@given(mutated_records())
def test_conform_agrees_with_the_json_schema(record):
    """A record is accepted exactly when JSON Schema accepts it and it does not end before it starts."""
    # Integers beyond 64 bits are valid JSON Schema integers, but no flow counter or time is that large:
    # flowctl refuses them.
    schema_ok = not list(VALIDATOR.iter_errors(record)) and not _has_huge_int(record)
    # JSON Schema counts whole floats (0.0) as integers, so compare any number that is not a bool.
    def number(v) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    times_ok = not (number(record.get("start_time")) and number(record.get("end_time"))
                    and record["end_time"] < record["start_time"])
    result = parse_ndjson([json.dumps(record).encode()])
    assert result.table.num_rows + len(result.rejects) == 1
    assert (result.table.num_rows == 1) == (schema_ok and times_ok), (result.rejects, record)
    if result.table.num_rows:
        assert same_record(result.table.to_pylist()[0], record) or _only_whole_floats_differ(
            result.table.to_pylist()[0], record)


def _only_whole_floats_differ(row: dict, record: dict) -> bool:
    row = as_json(row)
    return all(row[k] == record.get(k) or (isinstance(record.get(k), float) and row[k] == int(record[k]))
               for k in row)
