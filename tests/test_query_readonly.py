"""The query path: `flowctl sql` formats, the interactive shell, read-only enforcement, the catalog file."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline.query.samplelake import build_sample_lake
from pipeline.query.shell import Shell
from pipeline.query.views import ReadOnlyQueryError, connect, run_read_only

T0 = 1_795_730_400  # an hour boundary


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ro") / "lake"
    built = build_sample_lake(str(root), T0, T0 + 1800, rate=4, seed=3)
    assert built.flows > 1000
    return root


def flowctl(*args: str, cwd: Path, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True, cwd=cwd,
                          input=stdin, timeout=120)


def one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode == 1, out.stdout
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("flowctl: error:") and needle in lines[0], lines[0]


@pytest.fixture
def ro(lake: Path) -> duckdb.DuckDBPyConnection:
    return connect(str(lake), read_only=True)


def count(con: duckdb.DuckDBPyConnection, view: str = "flows") -> int:
    return run_read_only(con, f"SELECT count(*) AS n FROM {view}")[0]["n"][0].as_py()


def test_lake_queries_work_on_a_locked_connection(ro, lake) -> None:
    expected = sum(pq.read_metadata(p).num_rows for p in (lake / "flows").rglob("*.parquet"))
    assert count(ro) == expected
    assert count(ro, "flow_windows") > 0
    assert count(ro, "dlq") == 0  # no files yet: a typed empty view
    # reading lake files directly stays allowed: they are inside the lake
    direct = run_read_only(ro, f"SELECT count(*) AS n FROM read_parquet('{lake}/flows/**/*.parquet')")[0]
    assert direct["n"][0].as_py() == expected


@pytest.mark.parametrize("statement, kind", [
    ("COPY (SELECT 1) TO '{tmp}/out.csv'", "COPY"),
    ("COPY flows TO '{lake}/flows/evil.parquet'", "COPY"),
    ("EXPORT DATABASE '{tmp}/export'", "EXPORT"),
    ("ATTACH '{tmp}/other.duckdb' AS other", "ATTACH"),
    ("INSTALL httpfs", "LOAD"),
    ("LOAD httpfs", "LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("SET allowed_directories = ['/']", "SET"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("DROP VIEW flows", "DROP"),
    ("PRAGMA disable_checkpoint_on_shutdown", "PRAGMA"),
    ("CALL pragma_version()", "CALL"),
    ("SELECT 1; COPY (SELECT 1) TO '{tmp}/out.csv'", "COPY"),
])
def test_statements_that_write_or_escape_are_refused(ro, lake, tmp_path, statement, kind) -> None:
    sql = statement.format(tmp=tmp_path, lake=lake)
    with pytest.raises(ReadOnlyQueryError, match=f"read-only: {kind} statements are not allowed"):
        run_read_only(ro, sql)
    assert not any(tmp_path.iterdir())
    assert not (lake / "flows" / "evil.parquet").exists()
    assert count(ro) > 0  # the views are intact


@pytest.mark.parametrize("query", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
    "SELECT * FROM read_parquet('{tmp}/outside.parquet')",
])
def test_reading_outside_the_lake_fails(ro, tmp_path, query) -> None:
    pq.write_table(run_read_only(ro, "SELECT 1 AS a")[0], tmp_path / "outside.parquet")
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        run_read_only(ro, query.format(tmp=tmp_path))


def test_configuration_is_locked_even_when_set_reaches_duckdb(ro) -> None:
    # Defence in depth: the statement filter refuses SET, and DuckDB refuses it too.
    with pytest.raises(duckdb.Error, match="locked"):
        ro.execute("SET enable_external_access = true")
    with pytest.raises(duckdb.Error):
        ro.execute("INSTALL httpfs")


def test_sql_cli_refuses_copy_with_one_line(lake, tmp_path) -> None:
    out = flowctl("--lake", str(lake), "sql", f"COPY (SELECT 1) TO '{tmp_path}/x.csv'", cwd=tmp_path)
    one_line_error(out, "read-only: COPY statements are not allowed")
    assert not (tmp_path / "x.csv").exists()
    out = flowctl("--lake", str(lake), "sql", "SELECT * FROM read_csv('/etc/passwd')", cwd=tmp_path)
    one_line_error(out, "Permission Error")


def test_sql_parquet_output(lake, tmp_path) -> None:
    target = tmp_path / "top.parquet"
    out = flowctl("--lake", str(lake), "sql", "SELECT source_workload, sum(bytes_out)::BIGINT AS b FROM flows GROUP BY ALL",
                  "--format", "parquet", "--output", str(target), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    table = pq.read_table(target)
    assert table.column_names == ["source_workload", "b"]
    expected = count(connect(str(lake), read_only=True), "(SELECT DISTINCT source_workload FROM flows)")
    assert table.num_rows == expected


def test_sql_parquet_without_output_is_refused(lake, tmp_path) -> None:
    one_line_error(flowctl("--lake", str(lake), "sql", "SELECT 1", "--format", "parquet", cwd=tmp_path), "--output")


def test_sql_csv_to_file(lake, tmp_path) -> None:
    target = tmp_path / "n.csv"
    out = flowctl("--lake", str(lake), "sql", "SELECT 41 + 1 AS n", "-f", "csv", "-o", str(target), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert target.read_text().splitlines() == ['"n"', "42"]


def test_shell_runs_statements_until_semicolon_and_survives_errors(ro) -> None:
    script = io.StringIO(
        "SELECT 1 AS one;\n"
        "SELECT count(*) AS n\n"
        "  FROM flows;\n"
        "COPY flows TO 'x.csv';\n"
        "SELECT * FROM no_such_view;\n"
        ".format csv\n"
        "SELECT 'after errors' AS status;\n"
        ".quit\n"
        "SELECT 'never runs' AS status;\n")
    out = io.StringIO()
    failed = Shell(ro, stdin=script, out=out, interactive=False).run()
    text = out.getvalue()
    assert failed == 2
    assert f"{count(ro):,}" in text
    errors = [line for line in text.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "read-only: COPY" in errors[0] and "no_such_view" in errors[1]
    assert '"after errors"' in text and "never runs" not in text


def test_shell_runs_a_final_statement_without_semicolon(ro) -> None:
    out = io.StringIO()
    assert Shell(ro, fmt="json", stdin=io.StringIO("SELECT 7 AS seven"), out=out, interactive=False).run() == 0
    assert out.getvalue().strip() == '{"seven":7}'


def test_sql_without_query_reads_stdin(lake, tmp_path) -> None:
    out = flowctl("--lake", str(lake), "sql", "-f", "csv", cwd=tmp_path, stdin="SELECT 2 AS two;\n.tables\n")
    assert out.returncode == 0, out.stderr
    assert '"two"' in out.stdout and '"flows"' in out.stdout
    out = flowctl("--lake", str(lake), "sql", cwd=tmp_path, stdin="ATTACH 'x.duckdb';\n")
    one_line_error(out, "1 statement(s) failed")
    assert "read-only: ATTACH" in out.stdout


def test_catalog_file_has_the_views_with_absolute_paths(lake, tmp_path) -> None:
    target = tmp_path / "sub" / "lake.duckdb"
    out = flowctl("--lake", str(lake), "lake", "catalog", str(target), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    reader = subprocess.run([sys.executable, "-c", (
        "import duckdb; c = duckdb.connect('" + str(target) + "', read_only=True);"
        "print(c.execute('SELECT count(*) FROM flows').fetchone()[0], c.execute('SELECT count(*) FROM dlq').fetchone()[0])")],
        capture_output=True, text=True, cwd=elsewhere, timeout=60)
    assert reader.returncode == 0, reader.stderr
    assert reader.stdout.split() == [str(count(connect(str(lake), read_only=True))), "0"]
