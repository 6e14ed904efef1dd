"""Saved analyst queries, runnable by name (`flowctl query NAME`).

Each query is a ``.sql`` file in ``pipeline/query/sql/`` whose header declares it::

    -- summary: one line for `flowctl query --list` and docs/queries.md
    -- param limit int 20: rows to show
    -- param namespace str : only workloads of this namespace   (no default: NULL, i.e. no filter)
    -- pivot: ROW_COLUMN COLUMN_COLUMN VALUE_COLUMN              (optional: reshape into a matrix)

Every value reaches DuckDB as a bound parameter (``$name``), never as SQL text. The time
range comes as ``$since``/``$until`` (epoch seconds, half-open) and as
``$since_date``/``$until_date`` (``YYYY-MM-DD``, for partition pruning);
``$history_date`` is the date ``$days`` before ``$since``.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import resources

import duckdb
import pyarrow as pa

from pipeline.query.views import query_table

_PARAM = re.compile(r"^--\s*param\s+(?P<name>[a-z_]+)\s+(?P<type>int|str)\s*(?P<default>[^:]*?)\s*:\s*(?P<help>.*)$")
_REFERENCE = re.compile(r"\$([a-z_]+)")
_TYPES = {"int": int, "str": str}


class SavedQueryError(ValueError):
    pass


@dataclass(frozen=True)
class Param:
    name: str
    kind: type
    default: object
    help: str


@dataclass(frozen=True)
class SavedQuery:
    name: str
    summary: str
    sql: str
    params: dict[str, Param] = field(default_factory=dict)
    pivot: tuple[str, str, str] | None = None

    def bind(self, since: int, until: int, values: dict[str, object]) -> dict[str, object]:
        """Named parameters for this query's SQL: the time range plus its own params (defaults filled in)."""
        unknown = set(values) - set(self.params)
        if unknown:
            accepted = ", ".join(f"--{p.replace('_', '-')}" for p in self.params) or "no parameters"
            raise SavedQueryError(f"query {self.name} does not take {', '.join('--' + u for u in sorted(unknown))} "
                                  f"(it takes {accepted})")
        if until <= since:
            raise SavedQueryError("--until must be after --since")
        bound: dict[str, object] = {"since": since, "until": until, "since_date": _date(since), "until_date": _date(until)}
        for name, param in self.params.items():
            value = values.get(name, param.default)
            if value is not None and not isinstance(value, param.kind):
                raise SavedQueryError(f"--{name} must be {'a number' if param.kind is int else 'text'}")
            if param.kind is int and value is not None and value < 0:  # type: ignore[operator]
                raise SavedQueryError(f"--{name} must not be negative")
            bound[name] = value
        if "days" in bound:
            bound["history_date"] = _date(since - int(bound["days"]) * 86400)  # type: ignore[arg-type]
        used = set(_REFERENCE.findall(self.sql))
        return {k: v for k, v in bound.items() if k in used}


def _date(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%d")


def parse(name: str, text: str) -> SavedQuery:
    summary = ""
    params: dict[str, Param] = {}
    pivot = None
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        if m := _PARAM.match(line):
            kind = _TYPES[m.group("type")]
            raw = m.group("default")
            default = kind(raw) if raw else None
            params[m.group("name")] = Param(m.group("name"), kind, default, m.group("help").strip())
        elif line.startswith("-- summary:"):
            summary = line.split(":", 1)[1].strip()
        elif line.startswith("-- pivot:"):
            parts = line.split(":", 1)[1].split()
            if len(parts) != 3:
                raise SavedQueryError(f"{name}: pivot needs three columns")
            pivot = (parts[0], parts[1], parts[2])
    return SavedQuery(name, summary, text, params, pivot)


@functools.cache
def saved_queries() -> dict[str, SavedQuery]:
    """Every saved query, by name (the file name without .sql)."""
    folder = resources.files("pipeline.query") / "sql"
    found = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            name = entry.name.removesuffix(".sql")
            found[name] = parse(name, entry.read_text())
    return found


def get(name: str) -> SavedQuery:
    queries = saved_queries()
    if name not in queries:
        raise SavedQueryError(f"no saved query {name!r}: choose one of {', '.join(queries)}")
    return queries[name]


def view_columns(con: duckdb.DuckDBPyConnection, view: str) -> set[str]:
    return {row[0] for row in con.execute(f"DESCRIBE {view}").fetchall()}


def _specialise(query: SavedQuery, con: duckdb.DuckDBPyConnection) -> str:
    """Fill the query's column placeholders from what the lake's views have (fixed text, never user input)."""
    sql = query.sql
    if "@destination_columns@" in sql:
        has_category = "dest_category" in view_columns(con, "flow_windows")
        sql = sql.replace("@destination_columns@", "dest_category AS category, destination" if has_category else "destination")
    return sql


def run_saved(con: duckdb.DuckDBPyConnection, name: str, since: int, until: int,
              values: dict[str, object] | None = None) -> pa.Table:
    """Run the saved query ``name`` over [since, until) with its parameters bound."""
    query = get(name)
    params = query.bind(since, until, values or {})
    result = query_table(con, _specialise(query, con), params=params)
    return pivot(result, *query.pivot) if query.pivot else result


def pivot(table: pa.Table, row: str, column: str, value: str) -> pa.Table:
    """Long (row, column, value) → one row per ``row`` value, one column per ``column`` value (0 where absent)."""
    cells: dict[str, dict[str, object]] = {}
    columns: dict[str, None] = {}
    for r in table.to_pylist():
        cells.setdefault(r[row], {})[r[column]] = r[value]
        columns[r[column]] = None
    names = sorted(c for c in columns if c is not None)
    value_type = table.schema.field(value).type if table.num_rows else pa.int64()
    arrays = {row: pa.array(list(cells), table.schema.field(row).type)}
    for c in names:
        arrays[str(c)] = pa.array([cells[k].get(c, 0) for k in cells], value_type)
    return pa.table(arrays)
