"""The Parquet lake: file names from offsets, hour partitions, idempotent rewrites, resume position."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.sink.lake import FileRange, ParquetLakeWriter

TOPIC = "flows.enriched.v1"
# 2026-06-01 22:30:00 UTC: three consecutive hours cross a date boundary.
T0 = int(datetime(2026, 6, 1, 22, 30, tzinfo=UTC).timestamp())


def partition_dir(ts: int) -> str:
    d = datetime.fromtimestamp(ts, tz=UTC)
    return f"date={d.year:04d}-{d.month:02d}-{d.day:02d}/hour={d.hour:02d}"


def flows(times: list[int], first_id: int = 0) -> pa.Table:
    return pa.table({"end_time": pa.array(times, pa.int64()),
                     "id": pa.array(range(first_id, first_id + len(times)), pa.int64()),
                     "destination": pa.array([f"d{i % 3}" for i in range(len(times))])})


def read(path: str | Path) -> pa.Table:
    return pq.ParquetFile(str(path)).read()


def all_files(root: Path, table: str = "flows") -> list[Path]:
    return sorted(p for p in (root / table).rglob("*") if p.is_file())


@pytest.fixture
def lake(tmp_path: Path) -> ParquetLakeWriter:
    return ParquetLakeWriter(str(tmp_path / "lake"))


def test_file_is_named_after_topic_partition_and_offsets(lake, tmp_path):
    times = [T0 + 60, T0 + 120, T0 + 1000]
    table = flows(times)
    paths = lake.write("flows", TOPIC, 5, 1200, 1299, table)
    expected = tmp_path / "lake" / "flows" / partition_dir(times[0]) / f"{TOPIC}+5+1200+1299.parquet"
    assert [Path(p) for p in paths] == [expected]
    assert read(expected).equals(table)
    assert all_files(tmp_path / "lake") == [expected]


def test_table_spanning_three_hours_gives_three_files_with_one_name(lake, tmp_path):
    times = [T0 + 10, T0 + 1799, T0 + 1800, T0 + 3000, T0 + 5399, T0 + 5400, T0 + 20]
    table = flows(times)
    paths = [Path(p) for p in lake.write("flows", TOPIC, 0, 0, 6, table)]
    expected_dirs = {tmp_path / "lake" / "flows" / partition_dir(t) for t in times}
    assert len(expected_dirs) == 3
    assert {p.parent for p in paths} == expected_dirs
    assert {p.name for p in paths} == {f"{TOPIC}+0+0+6.parquet"}
    assert sorted(all_files(tmp_path / "lake")) == sorted(paths)
    seen = []
    for p in paths:
        part = read(p)
        for t in part.column("end_time").to_pylist():
            assert (tmp_path / "lake" / "flows" / partition_dir(t)) == p.parent
        seen += part.column("id").to_pylist()
    assert sorted(seen) == list(range(len(times)))


def test_rewriting_the_same_range_replaces_the_files(lake, tmp_path):
    times = [T0 + 10, T0 + 3700, T0 + 7300]
    first = lake.write("flows", TOPIC, 2, 40, 49, flows(times))
    files_before = all_files(tmp_path / "lake")
    # A replay after a crash brings the same offsets again.
    again = lake.write("flows", TOPIC, 2, 40, 49, flows(times))
    assert sorted(first) == sorted(again)
    assert all_files(tmp_path / "lake") == files_before
    ids = [i for p in files_before for i in read(p).column("id").to_pylist()]
    assert sorted(ids) == [0, 1, 2]


def test_rewrite_carries_the_new_content(lake, tmp_path):
    lake.write("flows", TOPIC, 0, 0, 1, flows([T0, T0 + 1]))
    lake.write("flows", TOPIC, 0, 0, 1, flows([T0, T0 + 1], first_id=100))
    (only,) = all_files(tmp_path / "lake")
    assert read(only).column("id").to_pylist() == [100, 101]


def test_no_temporary_files_are_left_behind(lake, tmp_path):
    lake.write("flows", TOPIC, 0, 0, 2, flows([T0, T0 + 3600, T0 + 7200]))
    assert not [p for p in all_files(tmp_path / "lake") if not p.name.endswith(".parquet") or p.name.startswith(".")]


def test_empty_table_writes_nothing(lake, tmp_path):
    assert lake.write("flows", TOPIC, 0, 0, 0, flows([])) == []
    assert all_files(tmp_path / "lake") == []


@pytest.mark.parametrize("table_name, column", [("flow_windows", "window_start"), ("dlq", "dlq_time")])
def test_other_tables_partition_by_their_own_time(lake, tmp_path, table_name, column):
    times = [T0 + 5, T0 + 4000]
    table = pa.table({column: pa.array(times, pa.int64()), "end_time": pa.array([0, 0], pa.int64())})
    paths = lake.write(table_name, "t", 0, 0, 1, table)
    assert {Path(p).parent for p in paths} == {tmp_path / "lake" / table_name / partition_dir(t) for t in times}


def test_last_range_picks_the_highest_last_offset_of_its_topic_partition(lake):
    assert lake.last_range("flows", TOPIC, 0) is None
    # Written out of order and in different hours; 100 > 99 > 9 compares as numbers, not text.
    lake.write("flows", TOPIC, 0, 10, 99, flows([T0 + 3600]))
    lake.write("flows", TOPIC, 0, 100, 100, flows([T0]))
    lake.write("flows", TOPIC, 0, 0, 9, flows([T0 + 7200]))
    lake.write("flows", TOPIC, 1, 0, 5000, flows([T0]))       # other partition
    lake.write("flows", TOPIC, 10, 0, 7000, flows([T0]))      # partition whose number starts with 1
    lake.write("flows", "flows.enriched.v2", 0, 0, 9000, flows([T0]))  # other topic
    lake.write("flows", "x" + TOPIC, 0, 0, 9500, flows([T0]))  # topic with our name as suffix
    assert lake.last_range("flows", TOPIC, 0) == FileRange(100, 100)
    assert lake.last_range("flows", TOPIC, 1) == FileRange(0, 5000)
    assert lake.last_range("flows", TOPIC, 10) == FileRange(0, 7000)
    assert lake.last_range("flows", TOPIC, 2) is None
    assert lake.last_range("flow_windows", TOPIC, 0) is None


def test_last_range_ignores_temporary_files(lake, tmp_path):
    lake.write("flows", TOPIC, 0, 0, 9, flows([T0]))
    hour = tmp_path / "lake" / "flows" / partition_dir(T0)
    (hour / f".{TOPIC}+0+10+5000.parquet.deadbeef.tmp").write_bytes(b"partial")
    assert lake.last_range("flows", TOPIC, 0) == FileRange(0, 9)


def test_remove_temporary_only_touches_its_topic_partition(lake, tmp_path):
    lake.write("flows", TOPIC, 0, 0, 9, flows([T0]))
    hour = tmp_path / "lake" / "flows" / partition_dir(T0)
    other_hour = tmp_path / "lake" / "flows" / partition_dir(T0 + 3600)
    other_hour.mkdir(parents=True)
    mine = [hour / f".{TOPIC}+0+10+19.parquet.0a1b2c3d.tmp", other_hour / f".{TOPIC}+0+20+29.parquet.ffffffff.tmp"]
    others = [
        hour / f".{TOPIC}+1+10+19.parquet.0a1b2c3d.tmp",
        hour / f".{TOPIC}+10+10+19.parquet.0a1b2c3d.tmp",
        hour / ".flows.enriched.v2+0+10+19.parquet.0a1b2c3d.tmp",
        hour / f".x{TOPIC}+0+10+19.parquet.0a1b2c3d.tmp",
        hour / f".{TOPIC}+0+30+39.parquet.notes",  # not a temporary file
    ]
    for p in mine + others:
        p.write_bytes(b"partial")
    assert lake.remove_temporary("flows", TOPIC, 0) == 2
    assert not any(p.exists() for p in mine)
    assert all(p.exists() for p in others)
    assert (hour / f"{TOPIC}+0+0+9.parquet").exists()
    assert lake.remove_temporary("flows", TOPIC, 0) == 0


def test_flat_columns_carry_statistics_for_pruning_nested_ones_do_not(lake, tmp_path):
    table = flows([T0, T0 + 60]).append_column("labels", pa.array([{"app": "a"}, {}], pa.map_(pa.string(), pa.string())))
    (path,) = lake.write("flows", TOPIC, 0, 0, 1, table)
    meta = pq.ParquetFile(path).metadata.row_group(0)
    stats = {meta.column(i).path_in_schema: meta.column(i).statistics for i in range(meta.num_columns)}
    assert (stats["end_time"].min, stats["end_time"].max) == (T0, T0 + 60)
    assert all(s is None or not s.has_min_max for name, s in stats.items() if name.startswith("labels"))
