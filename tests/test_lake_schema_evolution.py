"""Schema evolution: a nullable column added to a schema version keeps the older files readable."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline import topics
from pipeline.query.saved import run_saved
from pipeline.query.views import connect
from pipeline.schema import arrow_schema
from pipeline.sink.lake import ParquetLakeWriter

T0 = 1_795_737_600


def windows(n: int, start: int, with_category: bool) -> pa.Table:
    schema = arrow_schema("flow_window.v1")
    keep = [f for f in schema if f.name != "dest_category" or with_category]
    data = {}
    for f in keep:
        if pa.types.is_integer(f.type):
            data[f.name] = pa.array([start + i for i in range(n)], f.type)
        else:
            data[f.name] = pa.array([f"{f.name}-{i % 2}" for i in range(n)], f.type)
    data["window_start"] = pa.array([T0 + 60 * i for i in range(n)], pa.int64())
    data["source_genai_class"] = pa.array(["inference"] * n)
    data["dest_kind"] = pa.array(["public"] * n)
    return pa.table(data)


def test_old_files_without_a_new_nullable_column_stay_readable(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    writer = ParquetLakeWriter(str(lake))
    writer.write("flow_windows", topics.WINDOWED, 0, 0, 0, windows(5, 0, with_category=False))   # before the column
    writer.write("flow_windows", topics.WINDOWED, 0, 1, 1, windows(7, 100, with_category=True))  # after
    con = connect(str(lake), read_only=True)
    got = con.execute("SELECT count(*), count(dest_category), count(*) FILTER (dest_category IS NULL) FROM flow_windows").fetchone()
    assert got == (12, 7, 5)
    # saved queries over the mixed lake see the new column and every row
    rows = run_saved(con, "genai-destinations", T0, T0 + 3600).to_pylist()
    assert "category" in rows[0]
    assert sum(r["flows"] for r in rows) == sum(range(5)) + sum(range(100, 107))


def test_view_of_a_table_without_files_has_the_schema_columns(tmp_path: Path) -> None:
    con = connect(str(tmp_path / "lake"), read_only=True)
    columns = [r[0] for r in con.execute("DESCRIBE flow_windows").fetchall()]
    assert columns == [f.name for f in arrow_schema("flow_window.v1")] + ["date", "hour"]
    assert con.execute("SELECT count(*) FROM flow_windows").fetchone() == (0,)
