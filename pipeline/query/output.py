"""Render query results as a table, CSV or JSON, or save them as a file (also Parquet)."""

from __future__ import annotations

import io
import sys
from decimal import Decimal
from typing import TextIO

import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from rich.console import Console
from rich.table import Table

FORMATS = ("table", "csv", "json")
# Formats that need a file (--output) rather than a terminal.
FILE_FORMATS = ("parquet",)


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


def write_result(result: pa.Table, fmt: str, output: str | None = None, title: str | None = None) -> None:
    """Render to stdout, or save to ``output`` in ``fmt`` (parquet needs a file)."""
    if fmt in FILE_FORMATS:
        if not output:
            raise ValueError(f"--format {fmt} writes a file: add --output FILE")
        pq.write_table(result, output, compression="zstd", write_statistics=True)
    elif fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS + FILE_FORMATS)}")
    elif output:
        with open(output, "w", encoding="utf-8") as out:
            render(result, fmt, out=out, title=title)
    else:
        render(result, fmt, title=title)
