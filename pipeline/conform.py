"""Validate and normalise flow batches against a JSON Schema, vectorised.

Used by the agent before publishing and by the worker on every batch it
consumes (producers are not trusted). Rows that break the schema are
returned with a one-line reason for the dead-letter queue.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import arrow_schema, json_schema


@dataclass
class Reject:
    reason: str
    row: int | None = None
    record: Any = None  # the record as JSON-able data, when it could be parsed
    raw: bytes | None = None  # original bytes, when it could not


@dataclass
class ConformResult:
    table: pa.Table
    rejects: list[Reject] = field(default_factory=list)


def _reject_all(table: pa.Table, reason: str) -> list[Reject]:
    rows = table.to_pylist() if table.num_rows <= 10_000 else [None] * table.num_rows
    return [Reject(reason=reason, row=i, record=r) for i, r in enumerate(rows)]


def conform_table(table: pa.Table, name: str = "flowlog.v1") -> ConformResult:
    """Cast ``table`` to the schema ``name`` and split off rows that break it."""
    target = arrow_schema(name)
    doc = json_schema(name)
    required = set(doc.get("required", []))
    n = table.num_rows
    columns: dict[str, pa.ChunkedArray] = {}
    for f in target:
        if f.name not in table.column_names:
            if f.name in required:
                return ConformResult(target.empty_table(), _reject_all(table, f"missing required field {f.name}"))
            columns[f.name] = pa.chunked_array([pa.nulls(n, f.type)])
            continue
        col = table.column(f.name)
        if not col.type.equals(f.type):
            try:
                col = col.cast(f.type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
                return ConformResult(
                    target.empty_table(),
                    _reject_all(table, f"field {f.name}: cannot read {col.type} as {f.type} ({exc})"),
                )
        columns[f.name] = col

    checks: list[tuple[pa.ChunkedArray | pa.Array, str]] = []
    for column, spec in doc["properties"].items():
        col = columns[column]
        if column in required and col.null_count:
            checks.append((pc.is_null(col), f"missing required field {column}"))
        if "minimum" in spec:
            checks.append((pc.less(col, spec["minimum"]), f"field {column} below minimum {spec['minimum']}"))
        if "maximum" in spec:
            checks.append((pc.greater(col, spec["maximum"]), f"field {column} above maximum {spec['maximum']}"))
        if "enum" in spec:
            allowed = pa.array([v for v in spec["enum"] if v is not None], type=col.type)
            checks.append((pc.invert(pc.is_in(col, value_set=allowed)), f"field {column} not one of {spec['enum']}"))
        if spec.get("minLength") and pa.types.is_string(col.type):
            checks.append((pc.less(pc.utf8_length(col), spec["minLength"]), f"field {column} is empty"))
    if "start_time" in columns and "end_time" in columns:
        checks.append((pc.less(columns["end_time"], columns["start_time"]), "end_time before start_time"))

    reasons = np.full(n, None, dtype=object)
    # The common case is a clean batch: one combined test, reasons only when something failed.
    failing = [(mask, reason) for mask, reason in checks if pc.any(mask).as_py()]
    for mask, reason in failing:
        hit = pc.fill_null(mask, False).to_numpy(zero_copy_only=False)
        reasons[np.logical_and(hit, reasons == None)] = reason  # noqa: E711 (element-wise)

    bad = reasons != None  # noqa: E711
    rejects: list[Reject] = []
    if bad.any():
        idx = np.nonzero(bad)[0]
        rows = table.take(pa.array(idx)).to_pylist()
        rejects = [Reject(reason=str(reasons[i]), row=int(i), record=_jsonable(r)) for i, r in zip(idx, rows, strict=True)]
        keep = pa.array(~bad)
        columns = {k: pc.filter(v, keep) for k, v in columns.items()}
    out = pa.Table.from_arrays([columns[f.name] for f in target], schema=target.remove_metadata())
    return ConformResult(out.cast(target), rejects)


def _jsonable(record: dict[str, Any]) -> dict[str, Any]:
    # Map columns come back as lists of (key, value) tuples.
    return {k: (dict(v) if isinstance(v, list) and v and isinstance(v[0], tuple) else v) for k, v in record.items()}


def table_from_records(records: list[Any], name: str = "flowlog.v1", raws: list[bytes] | None = None) -> ConformResult:
    """Build a conformed table from parsed JSON records; records that do not fit become rejects."""
    target = arrow_schema(name)
    rejects: list[Reject] = []
    good: list[dict[str, Any]] = []
    good_index: list[int] = []
    for i, rec in enumerate(records):
        if isinstance(rec, dict):
            good.append(rec)
            good_index.append(i)
        else:
            rejects.append(Reject("record is not a JSON object", row=i, record=rec, raw=raws[i] if raws else None))
    arrays: list[pa.Array] = []
    dropped: set[int] = set()
    for f in target:
        values = [r.get(f.name) for r in good]
        try:
            if not _all_fit(values, f.type):
                raise TypeError(f"field {f.name}: a value pyarrow would coerce")
            arrays.append(pa.array(values, type=f.type, from_pandas=False))
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            fixed = []
            for j, v in enumerate(values):
                try:
                    if not _fits(v, f.type):
                        raise TypeError(f"field {f.name}: not a JSON {_json_kind(f.type)}")
                    pa.array([v], type=f.type)
                    fixed.append(v)
                except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                    if j not in dropped:
                        dropped.add(j)
                        rejects.append(Reject(
                            f"field {f.name}: expected {_json_kind(f.type)}, got {type(v).__name__} {str(v)[:40]!r}",
                            row=good_index[j], record=good[j]))
                    fixed.append(None)
            arrays.append(pa.array(fixed, type=f.type))
    loose = pa.schema([pa.field(f.name, f.type, nullable=True) for f in target])
    table = pa.Table.from_arrays(arrays, schema=loose)
    if dropped:
        keep = np.ones(len(good), dtype=bool)
        keep[list(dropped)] = False
        table = table.filter(pa.array(keep))
        good_index = [g for j, g in enumerate(good_index) if keep[j]]
    result = conform_table(table, name)
    for r in result.rejects:
        if r.row is not None:
            r.row = good_index[r.row]
    result.rejects = sorted(rejects + result.rejects, key=lambda r: (r.row is None, r.row or 0))
    return result


def _fits(value: Any, t: pa.DataType) -> bool:
    """False for JSON values pyarrow would silently coerce instead of refusing: a fraction in an
    integer column (truncated), a string in an array column (split into characters), a null
    inside an array or object (JSON Schema requires strings there). Item types are left to pyarrow."""
    if value is None:
        return True
    if pa.types.is_integer(t):
        return not isinstance(value, float) or value.is_integer()
    if pa.types.is_list(t):
        return isinstance(value, list) and None not in value
    if pa.types.is_map(t):
        return isinstance(value, dict) and None not in value.values()
    return True


def _all_fit(values: list[Any], t: pa.DataType) -> bool:
    """``_fits`` for a whole column, without per-value type dispatch."""
    if pa.types.is_integer(t):
        return not any(isinstance(v, float) and not v.is_integer() for v in values)
    if pa.types.is_list(t):
        return all(v is None or (isinstance(v, list) and None not in v) for v in values)
    if pa.types.is_map(t):
        return all(v is None or (isinstance(v, dict) and None not in v.values()) for v in values)
    return True


def _json_kind(t: pa.DataType) -> str:
    if pa.types.is_integer(t):
        return "integer"
    if pa.types.is_floating(t):
        return "number"
    if pa.types.is_map(t):
        return "object of strings"
    if pa.types.is_list(t):
        return "array"
    return "string"


def parse_ndjson(lines: list[bytes], name: str = "flowlog.v1") -> ConformResult:
    """Parse NDJSON lines; undecodable lines become rejects carrying their original bytes."""
    records: list[Any] = []
    raws: list[bytes] = []
    rejects: list[Reject] = []
    index: list[int] = []
    for i, line in enumerate(lines):
        try:
            records.append(orjson.loads(line))
            raws.append(line)
            index.append(i)
        except orjson.JSONDecodeError as exc:
            rejects.append(Reject(f"invalid JSON: {exc}", row=i, raw=line))
    result = table_from_records(records, name, raws)
    for r in result.rejects:
        if r.row is not None:
            r.row = index[r.row]
    result.rejects = sorted(rejects + result.rejects, key=lambda r: (r.row is None, r.row or 0))
    return result
