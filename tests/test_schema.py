"""Drift tests: the Arrow schemas must follow the JSON Schemas, and the examples must satisfy both."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from pipeline.conform import parse_ndjson
from pipeline.schema import arrow_schema, enum_values, json_schema, required_columns

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas"
EXAMPLE_DIR = SCHEMA_DIR / "examples"
SCHEMA_FILES = sorted(SCHEMA_DIR.glob("*.json"))
SCHEMA_NAMES = [p.name.removesuffix(".json") for p in SCHEMA_FILES]


def _raw(name: str) -> dict:
    return json.loads((SCHEMA_DIR / f"{name}.json").read_text())


def _declared_properties(name: str) -> tuple[dict, set[str]]:
    """Properties and required names as a reader of the JSON files sees them: $refs in allOf first."""
    doc = _raw(name)
    props: dict = {}
    required: set[str] = set()
    for part in doc.get("allOf", []):
        if "$ref" in part:
            sub_props, sub_required = _declared_properties(part["$ref"].removesuffix(".json"))
        else:
            sub_props, sub_required = part.get("properties", {}), set(part.get("required", []))
        props.update(sub_props)
        required |= sub_required
    props.update(doc.get("properties", {}))
    required |= set(doc.get("required", []))
    return props, required


_SCALARS = {"integer": pa.int64(), "number": pa.float64(), "string": pa.string(), "boolean": pa.bool_()}


def _expected(spec: dict) -> tuple[pa.DataType, bool]:
    """Arrow type and whether JSON null is allowed, read straight off the property."""
    if "enum" in spec:
        values = spec["enum"]
        non_null = [v for v in values if v is not None]
        all_ints = all(isinstance(v, int) and not isinstance(v, bool) for v in non_null)
        return (pa.int64() if all_ints else pa.string()), None in values
    kinds = spec["type"] if isinstance(spec["type"], list) else [spec["type"]]
    nullable = "null" in kinds
    (kind,) = [k for k in kinds if k != "null"]
    if kind == "array":
        item, _ = _expected(spec["items"])
        return pa.list_(item), nullable
    if kind == "object":
        value, _ = _expected(spec["additionalProperties"])
        return pa.map_(pa.string(), value), nullable
    return _SCALARS[kind], nullable


def _registry() -> Registry:
    resources = [(p.name, Resource.from_contents(json.loads(p.read_text()), default_specification=DRAFT202012))
                 for p in SCHEMA_FILES]
    return Registry().with_resources(resources)


def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(_raw(name), registry=_registry())


def test_every_schema_file_is_a_valid_draft_2020_12_schema():
    assert SCHEMA_NAMES, "no schemas found"
    for path in SCHEMA_FILES:
        doc = json.loads(path.read_text())
        assert doc["$schema"] == "https://json-schema.org/draft/2020-12/schema", path.name
        assert doc["$id"] == path.name
        Draft202012Validator.check_schema(doc)


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_property_has_an_arrow_field_of_the_right_type_in_order(name):
    props, required = _declared_properties(name)
    schema = arrow_schema(name)
    assert schema.names == list(props), "Arrow columns must follow the JSON property order"
    for column, spec in props.items():
        field = schema.field(column)
        expected_type, null_allowed = _expected(spec)
        assert field.type.equals(expected_type), f"{name}.{column}: {field.type} != {expected_type}"
        expected_nullable = null_allowed or column not in required
        assert field.nullable == expected_nullable, f"{name}.{column}: nullable {field.nullable}"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_no_property_is_ignored_by_the_arrow_derivation(name):
    props, required = _declared_properties(name)
    assert len(arrow_schema(name)) == len(props)
    assert set(required_columns(name)) == required
    assert set(required) <= set(props), "a required name that is not a property"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_required_and_non_null_columns_match(name):
    props, required = _declared_properties(name)
    non_nullable = {f.name for f in arrow_schema(name) if not f.nullable}
    assert non_nullable == {c for c in required if not _expected(props[c])[1]}


def test_enum_values_come_from_the_json_schema():
    props, _ = _declared_properties("flowlog.v1")
    for column, spec in props.items():
        assert enum_values("flowlog.v1", column) == spec.get("enum")
    assert set(enum_values("flowlog.v1", "reporter")) == {"src", "dst"}


def test_enriched_schema_extends_flowlog_without_redefining_it():
    base = arrow_schema("flowlog.v1")
    enriched = arrow_schema("flow_enriched.v1")
    assert enriched.names[: len(base)] == base.names
    for field in base:
        assert enriched.field(field.name).equals(field)
    assert json_schema("flow_enriched.v1")["properties"]["dest_kind"]["enum"]


def test_a_new_property_would_be_noticed(tmp_path, monkeypatch):
    """The count check catches a derivation that skips a property."""
    import pipeline.schema as schema_module

    doc = _raw("flow_window.v1")
    doc["properties"]["gpu_seconds"] = {"type": ["number", "null"]}
    (tmp_path / "flow_window.v1.json").write_text(json.dumps(doc))
    monkeypatch.setattr(schema_module, "schema_dir", lambda: tmp_path)
    schema_module.json_schema.cache_clear()
    schema_module.arrow_schema.cache_clear()
    try:
        derived = schema_module.arrow_schema("flow_window.v1")
        assert len(derived) == len(doc["properties"])
        assert derived.field("gpu_seconds").type == pa.float64()
        assert derived.field("gpu_seconds").nullable
    finally:
        schema_module.json_schema.cache_clear()
        schema_module.arrow_schema.cache_clear()


# ---- examples --------------------------------------------------------------

def _flowlog_examples() -> list[bytes]:
    return [line for line in (EXAMPLE_DIR / "flowlog.v1.ndjson").read_bytes().splitlines() if line.strip()]


def test_flowlog_examples_validate_with_jsonschema():
    validator = _validator("flowlog.v1")
    lines = _flowlog_examples()
    assert 5 <= len(lines) <= 10
    for line in lines:
        errors = [e.message for e in validator.iter_errors(json.loads(line))]
        assert not errors, errors


def test_flowlog_examples_pass_conform_unchanged():
    lines = _flowlog_examples()
    result = parse_ndjson(lines)
    assert result.rejects == []
    assert result.table.num_rows == len(lines)
    assert result.table.schema.equals(arrow_schema("flowlog.v1"))
    for line, row in zip(lines, result.table.to_pylist(), strict=True):
        record = json.loads(line)
        for column, value in row.items():
            if isinstance(value, list) and value and isinstance(value[0], tuple):
                value = dict(value)
            assert value == record.get(column), column


def test_flowlog_examples_cover_the_documented_cases():
    records = [json.loads(line) for line in _flowlog_examples()]
    pod_to_pod = {}
    for r in records:
        if r["source_type"] == "wep" and r["dest_type"] == "wep":
            key = (r["source_namespace"], r["source_name_aggr"], r["dest_namespace"], r["dest_name_aggr"],
                   r["dest_port"])
            pod_to_pod.setdefault(key, set()).add(r["reporter"])
    assert {"src", "dst"} in pod_to_pod.values(), "a pod-to-pod flow reported by both ends"
    assert any(r["dest_name_aggr"] == "pub" and r["dest_domains"] for r in records), "pod to a public API by name"
    assert any(r["source_name_aggr"] == "pub" and r["reporter"] == "dst" for r in records), "ingress from pub"
    assert any(r["action"] == "deny" and r["policies"] for r in records), "a deny with its policy"
    assert any(r["proto"] == "icmp" and r["dest_port"] is None for r in records), "ICMP without ports"


@pytest.mark.parametrize("name", ["flow_window.v1", "dlq_record.v1"])
def test_single_document_examples_validate_and_conform(name):
    doc = json.loads((EXAMPLE_DIR / f"{name}.json").read_text())
    errors = [e.message for e in _validator(name).iter_errors(doc)]
    assert not errors, errors
    assert set(doc) == set(arrow_schema(name).names), "the example should show every field"
    result = parse_ndjson([orjson.dumps(doc)], name)
    assert result.rejects == []
    assert result.table.to_pylist() == [doc]


def test_jsonschema_rejects_what_conform_rejects_in_the_examples():
    """Sanity check of the validators used above: a broken example fails both."""
    record = json.loads(_flowlog_examples()[0])
    record["dest_port"] = 70000
    assert list(_validator("flowlog.v1").iter_errors(record))
    assert len(parse_ndjson([orjson.dumps(record)]).rejects) == 1


def test_enriched_example_flows_validate_against_flow_enriched():
    from pipeline.stream.enrich import FlowEnricher

    table = FlowEnricher().enrich(parse_ndjson(_flowlog_examples()).table, "batch-1", now=1780315600)
    maps = {f.name for f in table.schema if pa.types.is_map(f.type)}
    validator = _validator("flow_enriched.v1")
    for row in table.to_pylist():
        doc = {k: (dict(v) if k in maps and v is not None else v) for k, v in row.items()}
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors, errors
