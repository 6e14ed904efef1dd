"""Arrow schemas derived from the JSON Schema documents in ``schemas/``.

The JSON Schemas are the single source of truth; every Arrow schema and
Parquet column set in the code comes from :func:`arrow_schema`.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

_REPO_SCHEMAS = Path(__file__).resolve().parent.parent / "schemas"


def schema_dir() -> Path:
    """Directory holding the JSON Schema documents (source tree or installed copy)."""
    if _REPO_SCHEMAS.is_dir():
        return _REPO_SCHEMAS
    return Path(str(resources.files("pipeline") / "schemas"))


@functools.cache
def json_schema(name: str) -> dict[str, Any]:
    """Load ``schemas/<name>.json`` with local ``$ref``/``allOf`` merged in."""
    doc = json.loads((schema_dir() / f"{name}.json").read_text())
    return _flatten(doc)


def _resolve(ref: str, doc: dict[str, Any]) -> dict[str, Any]:
    """A local (``#/$defs/x``) or sibling-file (``other.json#/$defs/x``) reference."""
    location, _, pointer = ref.partition("#")
    target = doc if not location else json.loads((schema_dir() / location).read_text())
    for part in [p for p in pointer.split("/") if p]:
        target = target[part]
    return _flatten(target, target if location else doc)


def _flatten(doc: dict[str, Any], root: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge ``$ref`` and ``allOf`` parts into one flat ``properties``/``required``."""
    root = root if root is not None else doc
    parts = ([{"$ref": doc["$ref"]}] if "$ref" in doc else []) + list(doc.get("allOf", []))
    if not parts:
        return doc
    merged: dict[str, Any] = {k: v for k, v in doc.items() if k not in ("allOf", "$ref")}
    properties: dict[str, Any] = {}
    required: list[str] = []
    for part in parts:
        if "$ref" in part:
            part = _resolve(part["$ref"], root)
        properties.update(part.get("properties", {}))
        required.extend(part.get("required", []))
    properties.update(doc.get("properties", {}))
    required.extend(doc.get("required", []))
    merged["properties"] = properties
    merged["required"] = list(dict.fromkeys(required))
    return merged


def _types(spec: dict[str, Any]) -> tuple[str, bool]:
    """The JSON type of a property and whether null is allowed."""
    if "enum" in spec:
        values = spec["enum"]
        nullable = None in values
        kinds = {type(v) for v in values if v is not None}
        kind = "integer" if kinds == {int} else "string"
        return kind, nullable
    declared = spec.get("type")
    if isinstance(declared, list):
        non_null = [t for t in declared if t != "null"]
        if len(non_null) != 1:
            raise ValueError(f"unsupported union type {declared!r}")
        return non_null[0], "null" in declared
    if declared is None:
        raise ValueError(f"property without a type: {spec!r}")
    return declared, False


def arrow_type(spec: dict[str, Any]) -> pa.DataType:
    """Arrow type for one JSON Schema property."""
    kind, _ = _types(spec)
    if kind == "integer":
        return pa.int64()
    if kind == "number":
        return pa.float64()
    if kind == "string":
        return pa.string()
    if kind == "boolean":
        return pa.bool_()
    if kind == "array":
        return pa.list_(arrow_type(spec["items"]))
    if kind == "object":
        values = spec.get("additionalProperties")
        if isinstance(values, dict):
            return pa.map_(pa.string(), arrow_type(values))
        raise ValueError("objects must declare additionalProperties with a type")
    raise ValueError(f"unsupported JSON type {kind!r}")


@functools.cache
def arrow_schema(name: str) -> pa.Schema:
    """Arrow schema for ``schemas/<name>.json``, columns in declaration order."""
    doc = json_schema(name)
    required = set(doc.get("required", []))
    fields = []
    for column, spec in doc["properties"].items():
        _, nullable = _types(spec)
        fields.append(pa.field(column, arrow_type(spec), nullable=nullable or column not in required))
    return pa.schema(fields, metadata={"schema": name})


def required_columns(name: str) -> list[str]:
    """Columns that must be present and non-null."""
    return list(json_schema(name).get("required", []))


def enum_values(name: str, column: str) -> list[Any] | None:
    """Allowed values of an enum column, or None."""
    return json_schema(name)["properties"][column].get("enum")


FLOWLOG = "flowlog.v1"
FLOW_ENRICHED = "flow_enriched.v1"
FLOW_WINDOW = "flow_window.v1"
DLQ_RECORD = "dlq_record.v1"
