"""CLI verbs of the query side: `flowctl sql`'s work, `flowctl query NAME` and `flowctl lake …`.

Registered in ``pipeline.cli``. Bad input raises ValueError, which the console entry point
turns into one ``flowctl: error: …`` line and exit code 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console

from pipeline.config import Settings

err = Console(stderr=True)
lake_app = typer.Typer(help="Lake maintenance: catalog file for DuckDB tools, compaction, retention.", no_args_is_help=True)


def _lake_connect(settings: Settings, database: str = ":memory:", read_only: bool = True):
    from pipeline.query.views import connect
    from pipeline.sink.lake import is_object_store

    if not is_object_store(settings.lake) and not Path(settings.lake).is_dir():
        # A mistyped --lake would otherwise answer every query with zero rows.
        raise FileNotFoundError(f"no lake at {settings.lake}: pass --lake DIR (or run `flowctl demo` / `flowctl sink`)")
    return connect(settings.lake, database, s3_endpoint=settings.s3_endpoint, s3_region=settings.s3_region,
                   read_only=read_only)


def _writer(settings: Settings):
    from pipeline.sink.lake import ParquetLakeWriter

    return ParquetLakeWriter.from_settings(settings)


def run_sql(settings: Settings, query: str | None, fmt: str, output: Path | None) -> None:
    """`flowctl sql`: one query, or the interactive shell when none is given."""
    from pipeline.query.output import FILE_FORMATS, FORMATS
    from pipeline.query.shell import Shell, run_query

    if fmt not in FORMATS + FILE_FORMATS:
        raise ValueError(f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS + FILE_FORMATS)}")
    if fmt in FILE_FORMATS and output is None:
        raise ValueError(f"--format {fmt} writes a file: add --output FILE")
    con = _lake_connect(settings)
    if query is not None:
        run_query(con, query, fmt, str(output) if output else None)
        return
    if output is not None:
        raise ValueError("--output needs a query; the interactive shell prints to the terminal")
    failed = Shell(con, fmt=fmt).run()
    if failed and not sys.stdin.isatty():
        raise ValueError(f"{failed} statement(s) failed")


def _time_range(since: str | None, until: str) -> tuple[int, int]:
    from pipeline.timeparse import TimeParseError, parse_duration, parse_time

    end = parse_time(until)
    if since is None:
        return end - 86400, end
    try:  # `--since 1h` reads as "the last hour", like `-1h`
        return end - int(parse_duration(since)), end
    except TimeParseError:
        return parse_time(since), end


def query(
    ctx: typer.Context,
    name: str = typer.Argument(None, help="Saved query: top-talkers, internet-egress, genai-destinations, new-destinations, "
                                          "denied-by-policy, namespace-matrix. Omit it with --list."),
    since: str = typer.Option(None, help="Start of the time range: ISO 8601, epoch seconds, -2h, or a duration (1h = the last hour "
                                         "before --until). Default: 24 hours before --until."),
    until: str = typer.Option("now", help="End of the time range (exclusive)."),
    fmt: str = typer.Option("table", "--format", "-f", help="table, csv, json (one object per line) or parquet (needs --output)."),
    output: Path | None = typer.Option(None, "--output", "-o", help="Write the result to this file instead of stdout."),
    limit: int | None = typer.Option(None, help="Rows to show (each query has its own default)."),
    namespace: str | None = typer.Option(None, help="Only workloads (traffic sources) of this namespace."),
    days: int | None = typer.Option(None, help="new-destinations: days of history before --since that count as seen (default 7)."),
    list_queries: bool = typer.Option(False, "--list", help="List the saved queries and their parameters."),
) -> None:
    """Run a saved analyst query by name over a time range (see docs/queries.md)."""
    from pipeline.query.output import write_result
    from pipeline.query.saved import get, run_saved, saved_queries

    if list_queries:
        for q in saved_queries().values():
            params = " ".join(f"[--{p.name} {p.default if p.default is not None else p.name.upper()}]" for p in q.params.values())
            print(f"{q.name:<20} {q.summary}  {params}")
        return
    if not name:
        raise ValueError("name a saved query, or list them with --list")
    saved = get(name)
    start, end = _time_range(since, until)
    values = {k: v for k, v in {"limit": limit, "namespace": namespace, "days": days}.items() if v is not None}
    saved.bind(start, end, values)  # bad parameters fail before the lake is opened
    from pipeline.query.output import FILE_FORMATS, FORMATS

    if fmt not in FORMATS + FILE_FORMATS:
        raise ValueError(f"unknown --format {fmt!r}: choose one of {', '.join(FORMATS + FILE_FORMATS)}")
    con = _lake_connect(ctx.obj)
    result = run_saved(con, name, start, end, values)
    write_result(result, fmt, str(output) if output else None, title=f"{name}: {_iso(start)} → {_iso(end)}")


def _iso(epoch: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@lake_app.command("catalog")
def catalog(
    ctx: typer.Context,
    out: Path = typer.Argument(..., help="DuckDB database file to write (created, or its views replaced)."),
) -> None:
    """Write a DuckDB file holding the lake's views (absolute paths), for notebooks and BI tools."""
    from pipeline.sink.lake import is_object_store

    settings: Settings = ctx.obj
    if is_object_store(settings.lake):
        raise ValueError("a catalog file needs a local lake: DuckDB reads S3 through its httpfs extension, "
                         "which this installation cannot load offline")
    if out.exists() and out.is_dir():
        raise ValueError(f"{out} is a directory")
    out.parent.mkdir(parents=True, exist_ok=True)
    con = _lake_connect(settings, database=str(out), read_only=False)
    views = [row[0] for row in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal ORDER BY 1").fetchall()]
    con.close()
    err.print(f"wrote {out} with views {', '.join(views)} over the lake {Path(settings.lake).resolve()}")


@lake_app.command("compact")
def compact(
    ctx: typer.Context,
    target_rows: int = typer.Option(1_000_000, help="Rows per compacted file at most."),
    min_age: str = typer.Option("1h", help="Hours that ended at least this long ago merge up to --target-rows (0s for all)."),
    settled: str = typer.Option("", help="Also merge the small files (under a tenth of --target-rows) of younger hours, "
                                "the current one included, once written this long ago (e.g. 2m; empty: never)."),
    table: list[str] = typer.Option(["flows", "flow_windows", "dlq"], help="Tables to compact (repeat the option)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be merged; change nothing."),
) -> None:
    """Merge the small files of each hour partition into larger ones, without readers ever seeing a row twice or missing."""
    from jobs.lake.maintenance import compact as run_compaction
    from jobs.lake.maintenance import remove_stale_temporaries
    from pipeline.sink.lake import TABLES
    from pipeline.timeparse import parse_duration

    if target_rows < 1:
        raise ValueError("--target-rows must be at least 1")
    unknown = set(table) - set(TABLES)
    if unknown:
        raise ValueError(f"unknown table {sorted(unknown)[0]!r}: choose from {', '.join(TABLES)}")
    writer = _writer(ctx.obj)
    report = run_compaction(writer, table, target_rows=target_rows, min_age_seconds=parse_duration(min_age),
                            dry_run=dry_run, settled_seconds=parse_duration(settled) if settled.strip() else None)
    if dry_run:
        for final, inputs in report.plan:
            print(f"{final} ← {len(inputs)} files")
    else:
        for t in table:
            remove_stale_temporaries(writer, t)
    print(("would merge: " if dry_run else "") + report.summary())


@lake_app.command("retain")
def retain(
    ctx: typer.Context,
    days: int = typer.Option(..., help="Keep this many days before today (UTC); older date= partitions are deleted."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print what would be deleted; change nothing."),
) -> None:
    """Delete date partitions older than --days from every lake table."""
    from jobs.lake.maintenance import retain as run_retention

    deleted = run_retention(_writer(ctx.obj), days, dry_run=dry_run)
    for path in deleted:
        print(("would delete " if dry_run else "deleted ") + path)
    print(f"{len(deleted)} date partitions {'would be ' if dry_run else ''}deleted")
