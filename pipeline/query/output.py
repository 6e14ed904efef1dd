"""Render query results as a table, CSV or JSON."""

from __future__ import annotations

import io
import sys
from decimal import Decimal
from typing import TextIO

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "csv", "json")


def _cell(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def _json_default(value: object) -> object:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    return str(value)


def render(result: pa.Table, fmt: str = "table", out: TextIO | None = None, title: str | None = None) -> None:
    out = out or sys.stdout
    if fmt == "csv":
        buf = io.BytesIO()
        pacsv.write_csv(result, buf)
        out.write(buf.getvalue().decode())
    elif fmt == "json":
        for row in result.to_pylist():
            out.write(orjson.dumps(row, default=_json_default).decode() + "\n")
    elif fmt == "table":
        table = Table(title=title, show_lines=False, header_style="bold")
        for name in result.column_names:
            numeric = pa.types.is_integer(result.schema.field(name).type) or pa.types.is_floating(
                result.schema.field(name).type)
            table.add_column(name, justify="right" if numeric else "left", overflow="fold")
        for row in result.to_pylist():
            table.add_row(*[_cell(row[c]) for c in result.column_names])
        Console(file=out, width=max(100, Console().width)).print(table)
    else:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
