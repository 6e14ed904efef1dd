"""DuckDB views over the Parquet lake. The lake is the contract; DuckDB is one reader of it."""

from __future__ import annotations

import duckdb
import pyarrow as pa

from pipeline.schema import arrow_schema, schema_dir
from pipeline.sink.lake import ParquetLakeWriter

# View name → JSON Schema of its rows.
VIEWS = {
    "flows": "flow_enriched.v1",
    "flow_windows": "flow_window.v1",
    "dlq": "dlq_record.v1",
    "alerts": "alert.v1",
    "policy_recommendations": "policy_recommendation.v1",
}


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _empty_select(schema: pa.Schema, con: duckdb.DuckDBPyConnection, name: str) -> str:
    """A typed, empty relation, so queries on a table with no files yet still bind."""
    con.register(f"__empty_{name}", schema.empty_table())
    return f"SELECT *, NULL::VARCHAR AS date, NULL::BIGINT AS hour FROM __empty_{name}"


def connect(lake: str, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with one view per lake table."""
    con = duckdb.connect(database)
    writer = ParquetLakeWriter(lake)
    if "://" in lake:
        con.execute("INSTALL httpfs; LOAD httpfs;")
    for view, schema_name in VIEWS.items():
        has_schema = (schema_dir() / f"{schema_name}.json").exists()
        has_files = any(f.base_name.endswith(".parquet") for f in writer.files(view))
        if has_files:
            root = lake.rstrip("/") if "://" in lake else writer.base
            glob = f"{root}/{view}/**/*.parquet"
            con.execute(
                f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet({_quote(glob)}, "
                "hive_partitioning = true, union_by_name = true, hive_types = {'date': VARCHAR, 'hour': BIGINT})"
            )
        elif has_schema:
            con.execute(f"CREATE OR REPLACE VIEW {view} AS {_empty_select(arrow_schema(schema_name), con, view)}")
    return con


def query_table(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None) -> pa.Table:
    """Run ``sql`` and return the result as an Arrow table (works across DuckDB 1.x and 2.x)."""
    relation = con.sql(sql, params=params) if params else con.sql(sql)
    if relation is None:  # a statement without a result (SET, CREATE …)
        return pa.table({})
    fetch = getattr(relation, "to_arrow_table", None) or relation.arrow
    result = fetch()
    return result if isinstance(result, pa.Table) else result.read_all()
