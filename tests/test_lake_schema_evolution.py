"""Schema evolution: a nullable column added to a schema version keeps the older files readable."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import topics
from pipeline.query.saved import run_saved
from pipeline.query.views import connect
from pipeline.schema import arrow_schema
from pipeline.sink.lake import ParquetLakeWriter, field_id, has_field_ids

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


def test_every_contract_column_has_its_own_field_id() -> None:
    for name in ("flow_enriched.v1", "flow_window.v1", "dlq_record.v1", "alert.v1", "policy_recommendation.v1"):
        columns = arrow_schema(name).names
        assert len({field_id(c) for c in columns}) == len(columns), name


def test_lake_files_carry_field_ids_and_a_newer_writers_column_is_shown(tmp_path: Path) -> None:
    lake = tmp_path / "lake"
    writer = ParquetLakeWriter(str(lake))
    old = windows(3, 0, with_category=True)
    newer = windows(2, 10, with_category=True).append_column("dest_asn", pa.array([64500, 64501], pa.int64()))
    writer.write("flow_windows", topics.WINDOWED, 0, 0, 0, old)
    [path] = writer.write("flow_windows", topics.WINDOWED, 0, 1, 1, newer)
    assert has_field_ids(pq.read_schema(path))
    con = connect(str(lake), read_only=True)
    assert con.execute("SELECT count(*), count(dest_asn), sum(dest_asn) FROM flow_windows").fetchone() == (5, 2, 129001)


def test_files_without_field_ids_are_read_by_name(tmp_path: Path) -> None:
    """A lake written before field ids (plain Parquet files) still reads every column by name."""
    lake = tmp_path / "lake"
    hour = lake / "flow_windows" / "date=2026-11-28" / "hour=00"
    hour.mkdir(parents=True)
    pq.write_table(windows(4, 0, with_category=False), hour / f"{topics.WINDOWED}+0+0+0.parquet")
    ParquetLakeWriter(str(lake)).write("flow_windows", topics.WINDOWED, 0, 1, 1, windows(3, 50, with_category=True))
    con = connect(str(lake), read_only=True)
    assert con.execute("SELECT count(*), count(dest_category), sum(flow_records) FROM flow_windows").fetchone() == (
        7, 3, sum(range(4)) + sum(range(50, 53)))


def test_a_query_of_one_hour_does_not_open_the_other_hours_files(tmp_path: Path) -> None:
    """Columns come from field ids, not from every file's footer: an unreadable file elsewhere in
    the lake does not break a query that the hour partitions keep away from it."""
    lake = tmp_path / "lake"
    writer = ParquetLakeWriter(str(lake))
    writer.write("flow_windows", topics.WINDOWED, 0, 0, 0, windows(4, 0, with_category=True))
    other = lake / "flow_windows" / "date=2026-11-28" / "hour=05"
    other.mkdir(parents=True)
    (other / f"{topics.WINDOWED}+0+9+9.parquet").write_bytes(b"not parquet at all")
    con = connect(str(lake), read_only=True)
    day = datetime.fromtimestamp(T0, UTC)
    got = con.execute("SELECT count(*) FROM flow_windows WHERE date = ? AND hour = ?", [f"{day:%Y-%m-%d}", day.hour]).fetchone()
    assert got == (4,)
