"""`flowctl sql`: one query, or an interactive shell reading statements that end with ';'."""

from __future__ import annotations

import sys
from typing import TextIO

import duckdb
import pyarrow as pa

from pipeline.query.output import FILE_FORMATS, FORMATS, render, write_result
from pipeline.query.views import VIEWS, ReadOnlyQueryError, run_read_only

PROMPT = "flowctl> "
CONTINUE = "     ..> "
HELP = """Statements end with ';' and may span lines. Views: {views}.
  .tables            list the views and their row counts
  .format FORMAT     table, csv or json
  .help              this text
  .quit              leave (or Ctrl-D)
The query path is read-only: SELECT and EXPLAIN only, no files outside the lake."""


def run_query(con: duckdb.DuckDBPyConnection, sql: str, fmt: str, output: str | None) -> None:
    """Run ``sql`` (one or more statements) read-only and print or save the last result."""
    results = run_read_only(con, sql)
    if not results:
        raise ReadOnlyQueryError("no SQL statement given")
    if output or fmt in FILE_FORMATS:
        write_result(results[-1], fmt, output)
        return
    for result in results:
        write_result(result, fmt)


class Shell:
    """A small SQL shell over a read-only connection; errors print one line and the shell goes on."""

    def __init__(self, con: duckdb.DuckDBPyConnection, fmt: str = "table", stdin: TextIO | None = None,
                 out: TextIO | None = None, interactive: bool | None = None) -> None:
        self.con = con
        self.fmt = fmt
        self.stdin = stdin or sys.stdin
        self.out = out or sys.stdout
        self.interactive = self.stdin.isatty() if interactive is None else interactive
        self.failed = 0

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def _prompt(self, text: str) -> None:
        if self.interactive:
            self.out.write(text)
            self.out.flush()

    def run(self) -> int:
        """Read until EOF or .quit; returns how many statements failed."""
        if self.interactive:
            self._say(f"flowctl SQL shell over the lake ({', '.join(VIEWS)}). Statements end with ';'. .help for help.")
        buffer: list[str] = []
        while True:
            self._prompt(CONTINUE if buffer else PROMPT)
            line = self.stdin.readline()
            if not line:
                break
            stripped = line.strip()
            if not buffer and stripped.startswith("."):
                if not self._meta(stripped):
                    break
                continue
            if not buffer and not stripped:
                continue
            buffer.append(line)
            if stripped.endswith(";"):
                self._execute("".join(buffer))
                buffer = []
        if "".join(buffer).strip():
            self._execute("".join(buffer))
        if self.interactive:
            self._say("")
        return self.failed

    def _execute(self, sql: str) -> None:
        try:
            for result in run_read_only(self.con, sql):
                render(result, self.fmt, out=self.out)
        except (duckdb.Error, ValueError, pa.ArrowException) as exc:
            self.failed += 1
            lines = str(exc).strip().splitlines() or [type(exc).__name__]
            self._say(f"error: {lines[0]}")

    def _meta(self, command: str) -> bool:
        """Handle a dot command; False means leave the shell."""
        name, _, arg = command.partition(" ")
        if name in (".quit", ".exit", ".q"):
            return False
        if name == ".help":
            self._say(HELP.format(views=", ".join(VIEWS)))
        elif name == ".tables":
            self._execute(" UNION ALL ".join(
                f"SELECT '{v}' AS view, count(*) AS rows FROM {v}" for v in self._views()) + ";")
        elif name == ".format" and arg.strip() in FORMATS:
            self.fmt = arg.strip()
        elif name == ".format":
            self.failed += 1
            self._say(f"error: unknown format {arg.strip()!r}: choose one of {', '.join(FORMATS)}")
        else:
            self.failed += 1
            self._say(f"error: unknown command {name}: try .help")
        return True

    def _views(self) -> list[str]:
        present = {row[0] for row in self.con.execute(
            "SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
        return [v for v in VIEWS if v in present]
