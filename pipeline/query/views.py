"""DuckDB views over the Parquet lake. The lake is the contract; DuckDB is one reader of it.

Local lakes are read with ``read_parquet`` over a glob (``hive_partitioning``), so every
query sees the files committed up to then. Columns are matched by Parquet field id: the
writers give each column an id derived from its name (:func:`pipeline.sink.lake.field_id`)
and the view passes the contract's columns with their ids (``schema``), so a file written
before a nullable column was added reads it as null, as ``union_by_name`` would, without
DuckDB opening every file's footer when a query binds (about 130 KB of memory and 0.5 ms
per file). A lake with files written without field ids falls back to ``union_by_name``. Files that a
compacted file covers (compaction writes the merged file, then deletes its inputs) are
left out by the view itself, so a reader never sees a row twice during compaction.

Lakes on S3 are read through pyarrow datasets registered in DuckDB: DuckDB's own S3
reader lives in the httpfs extension, which DuckDB downloads at run time and which
cannot be installed offline. Such a view lists the lake's files when the connection is
made; reconnect to see newer files.
"""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.schema import arrow_schema, schema_dir
from pipeline.sink.lake import LakeFile, ParquetLakeWriter, field_id, has_field_ids, is_object_store

# View name → JSON Schema of its rows.
VIEWS = {
    "flows": "flow_enriched.v1",
    "flow_windows": "flow_window.v1",
    "dlq": "dlq_record.v1",
    "alerts": "alert.v1",
    "policy_recommendations": "policy_recommendation.v1",
}
PARTITION_COLUMNS = pa.schema([("date", pa.string()), ("hour", pa.int64())])
# Statement types the read-only query path runs; everything else (COPY, ATTACH, SET, INSTALL,
# CREATE, PRAGMA, CALL …) is refused before it reaches DuckDB.
READ_ONLY_STATEMENTS = ("SELECT", "EXPLAIN")
# Lake file name → its parts (mirrors pipeline.sink.lake's file naming, in DuckDB's regex dialect).
_FILE_PARTS = r"^(.*)/([^/]+)\+([0-9]+)\+([0-9]+)\+([0-9]+)\.parquet$"


class ReadOnlyQueryError(ValueError):
    """A statement the read-only query path refuses."""


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _duckdb_types(schema: pa.Schema) -> list[tuple[str, str]]:
    scratch = duckdb.connect()
    try:
        scratch.register("empty", schema.empty_table())
        return [(row[0], row[1]) for row in scratch.execute("DESCRIBE empty").fetchall()]
    finally:
        scratch.close()


def _empty_select(schema: pa.Schema) -> str:
    """A typed, empty relation in plain SQL, so views of tables with no files yet still bind (also in catalog files)."""
    columns = [f'CAST(NULL AS {kind}) AS "{name}"' for name, kind in _duckdb_types(schema)]
    return f"SELECT {', '.join(columns)}, CAST(NULL AS VARCHAR) AS date, CAST(NULL AS BIGINT) AS hour WHERE false"


def _covered_select(glob: str) -> str:
    """File paths under ``glob`` whose offsets a larger file of the same hour also holds."""
    return f"""
        WITH f AS (
            SELECT file, regexp_extract(file, {_quote(_FILE_PARTS)}, ['dir', 'topic', 'part', 'first', 'last']) AS m
            FROM glob({_quote(glob)}))
        SELECT a.file FROM f AS a JOIN f AS b
          ON a.m.dir = b.m.dir AND a.m.topic = b.m.topic AND a.m.part = b.m.part AND a.file <> b.file
        WHERE a.m.topic <> ''
          AND TRY_CAST(b.m.first AS BIGINT) <= TRY_CAST(a.m.first AS BIGINT)
          AND TRY_CAST(a.m.last AS BIGINT) <= TRY_CAST(b.m.last AS BIGINT)"""


def _by_id(schema: pa.Schema) -> str:
    """DuckDB's ``schema`` option for ``read_parquet``: the contract's columns by field id, null when absent."""
    entries = [f"{field_id(name)}: {{name: {_quote(name)}, type: {_quote(kind)}, default_value: NULL}}"
               for name, kind in _duckdb_types(schema)]
    return "MAP {" + ", ".join(entries) + "}"


def _local_view(glob: str, schema: pa.Schema | None) -> str:
    columns = f"schema = {_by_id(schema)}" if schema is not None else "union_by_name = true"
    return (f"SELECT * EXCLUDE (filename) FROM read_parquet({_quote(glob)}, hive_partitioning = true, "
            f"{columns}, filename = true, hive_types = {{'date': VARCHAR, 'hour': BIGINT}}) "
            f"WHERE filename NOT IN ({_covered_select(glob)})")


def _read_schema(writer: ParquetLakeWriter, path: str) -> pa.Schema | None:
    """A file's schema from its footer, or None when it cannot be read (a query of its hour reports that)."""
    try:
        with writer.fs.open_input_file(path) as src:
            return pq.read_schema(src)
    except (OSError, pa.ArrowException):
        return None


def _id_schema(writer: ParquetLakeWriter, files: list[LakeFile], contract: pa.Schema | None) -> pa.Schema | None:
    """The columns to read by field id: the contract's, then any more the newest file has (a newer writer's).

    None when the lake has files without field ids, judged by the first file of every day (one footer
    each): such files come from writers older than field ids, so they are the oldest of a day.
    """
    first_of_day: dict[str, str] = {}
    for f in files:
        day = f.path.split("/date=", 1)[-1].split("/", 1)[0]
        if day not in first_of_day or f.path < first_of_day[day]:
            first_of_day[day] = f.path
    for path in first_of_day.values():
        schema = _read_schema(writer, path)
        if schema is not None and not has_field_ids(schema):
            return None
    newest = _read_schema(writer, max(f.path for f in files))
    if newest is not None and not has_field_ids(newest):
        return None
    if contract is None:
        return newest
    extra = [f for f in newest if f.name not in contract.names] if newest is not None else []
    return pa.schema([*contract, *extra])


def _nullable(schema: pa.Schema) -> pa.Schema:
    return pa.schema([f.with_nullable(True) for f in schema], metadata=schema.metadata)


def _s3_dataset(writer: ParquetLakeWriter, view: str, schema: pa.Schema | None) -> ds.Dataset | None:
    files = writer.live_files(view)
    if not files:
        return None
    paths = [f.path for f in files]
    # Like union_by_name: every column of any file (footers only), the contract's columns first, all
    # nullable, so files written before a column was added read it as null.
    factory = ds.FileSystemDatasetFactory(writer.fs, paths, ds.ParquetFileFormat())
    found = _nullable(factory.inspect(promote_options="permissive"))
    parts = [_nullable(schema), found] if schema is not None else [found]
    full = pa.unify_schemas([*parts, PARTITION_COLUMNS], promote_options="permissive")
    return ds.dataset(paths, schema=full, filesystem=writer.fs, format="parquet",
                      partitioning=ds.partitioning(PARTITION_COLUMNS, flavor="hive"),
                      partition_base_dir=writer.table_dir(view))


def connect(lake: str, database: str = ":memory:", *, s3_endpoint: str = "", s3_region: str = "",
            read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per lake table.

    ``read_only`` locks the connection down for untrusted SQL: no file access outside the
    lake, no extensions, configuration locked (see :func:`lock_down`); run statements with
    :func:`run_read_only`, which refuses anything but SELECT and EXPLAIN.
    """
    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")  # timestamps print the same on every machine
    writer = ParquetLakeWriter(lake, s3_endpoint=s3_endpoint, s3_region=s3_region)
    remote = is_object_store(lake)
    for view, schema_name in VIEWS.items():
        schema = arrow_schema(schema_name) if (schema_dir() / f"{schema_name}.json").exists() else None
        if remote:
            dataset = _s3_dataset(writer, view, schema)
            if dataset is not None:
                con.register(f"lake_{view}", dataset)
                con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM lake_{view}")
                continue
        elif files := writer.lake_files(view):
            by_id = _id_schema(writer, files, schema)
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {_local_view(f'{writer.base}/{view}/**/*.parquet', by_id)}")
            continue
        if schema is not None:
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {_empty_select(schema)}")
    if read_only:
        lock_down(con, None if remote else writer.base)
    return con


def lock_down(con: duckdb.DuckDBPyConnection, lake_dir: str | None) -> None:
    """No file access outside ``lake_dir``, no extension loading, and no way to change that afterwards."""
    if lake_dir is not None:
        con.execute(f"SET allowed_directories = [{_quote(lake_dir.rstrip('/') + '/')}]")
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute("SET allow_community_extensions = false")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def statements(sql: str) -> list[str]:
    """Split SQL into statements and refuse any the read-only query path does not run."""
    try:
        parsed = duckdb.connect().extract_statements(sql)
    except duckdb.Error as exc:
        raise ReadOnlyQueryError(str(exc).splitlines()[0]) from None
    out = []
    for stmt in parsed:
        kind = stmt.type.name
        if kind not in READ_ONLY_STATEMENTS:
            raise ReadOnlyQueryError(f"the query path is read-only: {kind} statements are not allowed "
                                     "(only SELECT and EXPLAIN; save results with --format and --output)")
        out.append(stmt.query)
    return out


def run_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> list[pa.Table]:
    """Results of every statement in ``sql``; non-query statements are refused before any runs."""
    return [query_table(con, stmt) for stmt in statements(sql)]


def query_table(con: duckdb.DuckDBPyConnection, sql: str, params: list | dict | None = None) -> pa.Table:
    """Run ``sql`` and return the result as an Arrow table (works across DuckDB 1.x and 2.x)."""
    relation = con.sql(sql, params=params) if params else con.sql(sql)
    if relation is None:  # a statement without a result (SET, CREATE …)
        return pa.table({})
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    result = fetch()
    return result if isinstance(result, pa.Table) else result.read_all()
