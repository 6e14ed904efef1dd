"""Lake maintenance: compaction keeps every row exactly once for readers and the sink; retention drops old days."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.lake.maintenance import _merge, compact, plan_compaction, retain
from pipeline.query.views import connect
from pipeline.sink.lake import FileRange, ParquetLakeWriter

TOPIC = "flows.enriched.v1"
T0 = int(datetime(2026, 11, 20, 10, tzinfo=UTC).timestamp())  # an hour boundary
NOW = T0 + 10 * 86400


def rows(first_id: int, n: int, hour_start: int = T0) -> pa.Table:
    return pa.table({"end_time": pa.array([hour_start + (i % 3600) for i in range(n)], pa.int64()),
                     "id": pa.array(range(first_id, first_id + n), pa.int64())})


@pytest.fixture
def writer(tmp_path: Path) -> ParquetLakeWriter:
    return ParquetLakeWriter(str(tmp_path / "lake"))


def fill(writer: ParquetLakeWriter, batches: int, per_batch: int = 100, partition: int = 0, hour_start: int = T0) -> int:
    """Sink-like files: one per batch, offsets = batch number; returns rows written."""
    for b in range(batches):
        writer.write("flows", TOPIC, partition, b * 10, b * 10 + 9, rows(partition * 1_000_000 + b * per_batch, per_batch, hour_start))
    return batches * per_batch


def ids(lake: Path) -> list[int]:
    con = connect(str(lake), read_only=True)
    return sorted(r[0] for r in con.execute("SELECT id FROM flows").fetchall())


def names(lake: Path) -> list[str]:
    return sorted(p.name for p in (lake / "flows").rglob("*") if p.is_file())


def test_compaction_merges_a_closed_hour_and_keeps_the_newest_range(writer, tmp_path) -> None:
    lake = tmp_path / "lake"
    total = fill(writer, 6)
    before = writer.last_range("flows", TOPIC, 0)
    report = compact(writer, ["flows"], now=NOW)
    assert report.merged_files == 5 and report.written_files == 1 and report.rows == 500
    assert names(lake) == [f"{TOPIC}+0+0+49.parquet", f"{TOPIC}+0+50+59.parquet"]
    assert ids(lake) == list(range(total))
    assert writer.last_range("flows", TOPIC, 0) == before == FileRange(50, 59)
    merged = pq.ParquetFile(str(next((lake / "flows").rglob(f"{TOPIC}+0+0+49.parquet"))))
    assert merged.metadata.row_group(0).column(0).compression == "ZSTD"
    assert merged.metadata.row_group(0).column(0).statistics.has_min_max
    # a second run has nothing left to do
    assert compact(writer, ["flows"], now=NOW).merged_files == 0


def test_open_hours_and_other_partitions_are_left_alone(writer, tmp_path) -> None:
    lake = tmp_path / "lake"
    fill(writer, 4, partition=0)
    fill(writer, 1, partition=1)
    assert compact(writer, ["flows"], now=T0 + 3600 + 1800, min_age_seconds=3600).merged_files == 0
    compact(writer, ["flows"], now=NOW)
    assert names(lake) == [f"{TOPIC}+0+0+29.parquet", f"{TOPIC}+0+30+39.parquet", f"{TOPIC}+1+0+9.parquet"]


def age(lake: Path, seconds_before: float, *, now: float, only: tuple[str, ...] = ()) -> None:
    """Set the files' modification time, as if the sink had written them ``seconds_before`` ``now``."""
    for f in (lake / "flows").rglob("*.parquet"):
        if not only or f.name in only:
            os.utime(f, (now - seconds_before, now - seconds_before))


def test_settled_small_files_of_the_open_hour_merge_and_young_ones_wait(writer, tmp_path) -> None:
    lake = tmp_path / "lake"
    now = T0 + 1800  # half way through the hour the files belong to
    total = fill(writer, 8)
    age(lake, 600, now=now)
    age(lake, 10, now=now, only=(f"{TOPIC}+0+60+69.parquet",))  # written 10 s ago: not settled yet
    report = compact(writer, ["flows"], target_rows=3_000, now=now, settled_seconds=120)
    assert report.merged_files == 6
    assert names(lake) == [f"{TOPIC}+0+0+59.parquet", f"{TOPIC}+0+60+69.parquet", f"{TOPIC}+0+70+79.parquet"]
    assert ids(lake) == list(range(total))
    # the merged file (600 rows) is no longer small (a tenth of 3,000): while the hour is open, only
    # newer small files merge, beside it, and it is not rewritten again
    total += fill_more(writer, first_batch=8, batches=4)
    age(lake, 600, now=now)
    compact(writer, ["flows"], target_rows=3_000, now=now, settled_seconds=120)
    assert names(lake) == sorted([f"{TOPIC}+0+0+59.parquet", f"{TOPIC}+0+60+109.parquet", f"{TOPIC}+0+110+119.parquet"])
    assert ids(lake) == list(range(total))
    # once the hour has closed, everything but the newest range merges up to the target
    compact(writer, ["flows"], target_rows=3_000, now=NOW)
    assert names(lake) == sorted([f"{TOPIC}+0+0+109.parquet", f"{TOPIC}+0+110+119.parquet"])
    assert ids(lake) == list(range(total))


def fill_more(writer: ParquetLakeWriter, first_batch: int, batches: int, per_batch: int = 100) -> int:
    for b in range(first_batch, first_batch + batches):
        writer.write("flows", TOPIC, 0, b * 10, b * 10 + 9, rows(b * per_batch, per_batch))
    return batches * per_batch


def test_compaction_respects_the_target_size(writer, tmp_path) -> None:
    fill(writer, 9, per_batch=100)
    compact(writer, ["flows"], target_rows=300, now=NOW)
    assert names(tmp_path / "lake") == [f"{TOPIC}+0+0+29.parquet", f"{TOPIC}+0+30+59.parquet",
                                        f"{TOPIC}+0+60+79.parquet", f"{TOPIC}+0+80+89.parquet"]
    assert ids(tmp_path / "lake") == list(range(900))


def test_reader_between_rename_and_delete_sees_each_row_once(writer, tmp_path) -> None:
    """The state a crash (or a slow delete) leaves: merged file and its inputs side by side."""
    lake = tmp_path / "lake"
    total = fill(writer, 5)
    (chunk,), _ = plan_compaction(writer, "flows", 1_000_000, 0, now=NOW)
    _merge(writer, chunk)
    assert len(names(lake)) == 6  # 4 inputs + merged + newest
    assert ids(lake) == list(range(total))
    report = compact(writer, ["flows"], now=NOW)  # the next run removes the leftovers
    assert report.leftovers_removed == 4 and report.merged_files == 0
    assert names(lake) == [f"{TOPIC}+0+0+39.parquet", f"{TOPIC}+0+40+49.parquet"]
    assert ids(lake) == list(range(total))


def test_sink_replay_of_the_newest_range_after_compaction_doubles_nothing(writer, tmp_path) -> None:
    lake = tmp_path / "lake"
    total = fill(writer, 5)
    # the newest flush spans two hours, as a sink flush may
    spanning = pa.concat_tables([rows(total, 50), rows(total + 50, 50, T0 + 3600)])
    writer.write("flows", TOPIC, 0, 50, 59, spanning)
    compact(writer, ["flows"], now=NOW)
    newest = writer.last_range("flows", TOPIC, 0)
    assert newest == FileRange(50, 59)
    writer.write("flows", TOPIC, 0, newest.first, newest.last, spanning)  # what a restarted sink does
    assert ids(lake) == list(range(total + 100))


def test_concurrent_reader_never_sees_missing_or_doubled_rows(writer, tmp_path) -> None:
    lake = tmp_path / "lake"
    total = 0
    for p in range(4):
        total += fill(writer, 12, per_batch=50, partition=p)
    expected = total
    done = threading.Event()

    def compactor() -> None:
        try:
            compact(writer, ["flows"], target_rows=150, now=NOW)
        finally:
            done.set()

    thread = threading.Thread(target=compactor, daemon=True)
    con = connect(str(lake), read_only=True)
    thread.start()
    answers = []
    while not done.is_set() or not answers:
        try:
            answers.append(con.execute("SELECT count(*), count(DISTINCT id) FROM flows").fetchone())
        except duckdb.IOException:
            continue  # a file deleted between listing and opening: the query fails, it never miscounts
    thread.join()
    answers.append(con.execute("SELECT count(*), count(DISTINCT id) FROM flows").fetchone())
    assert set(answers) == {(expected, expected)}
    assert len(names(lake)) < 48


def test_compaction_merges_files_from_before_and_after_a_column_was_added(writer, tmp_path) -> None:
    lake = tmp_path / "lake"
    writer.write("flows", TOPIC, 0, 0, 9, rows(0, 10))
    newer = rows(10, 10).append_column("dest_category", pa.array(["llm_api"] * 10))
    writer.write("flows", TOPIC, 0, 10, 19, newer)
    writer.write("flows", TOPIC, 0, 20, 29, rows(20, 10))
    compact(writer, ["flows"], now=NOW)
    assert names(lake) == [f"{TOPIC}+0+0+19.parquet", f"{TOPIC}+0+20+29.parquet"]
    got = connect(str(lake), read_only=True).execute(
        "SELECT count(*), count(dest_category), count(DISTINCT id) FROM flows").fetchone()
    assert got == (30, 10, 30)


def test_retention_deletes_whole_old_days_from_every_table(writer, tmp_path) -> None:
    lake = tmp_path / "lake"
    day = 86400
    for d in range(5):
        writer.write("flows", TOPIC, 0, d, d, rows(d * 10, 10, T0 + d * day))
        writer.write("flow_windows", "flows.windowed.v1", 0, d, d,
                     pa.table({"window_start": pa.array([T0 + d * day], pa.int64())}))
    now = T0 + 4 * day
    planned = retain(writer, days=2, now=now, dry_run=True)
    assert len(planned) == 4 and len(list((lake / "flows").iterdir())) == 5
    deleted = retain(writer, days=2, now=now)
    assert deleted == planned
    assert sorted(p.name for p in (lake / "flows").iterdir()) == ["date=2026-11-22", "date=2026-11-23", "date=2026-11-24"]
    assert sorted(p.name for p in (lake / "flow_windows").iterdir()) == ["date=2026-11-22", "date=2026-11-23", "date=2026-11-24"]
    assert ids(lake) == list(range(20, 50))
    with pytest.raises(ValueError, match="negative"):
        retain(writer, days=-1)


def test_lake_cli_compact_and_retain(writer, tmp_path) -> None:
    fill(writer, 3)

    def flowctl(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pipeline.cli", "--lake", str(tmp_path / "lake"), "lake", *args],
                              capture_output=True, text=True, cwd=tmp_path, timeout=120)

    out = flowctl("compact", "--dry-run")
    assert out.returncode == 0, out.stderr
    assert "would merge: 2 files merged into 1" in out.stdout and len(names(tmp_path / "lake")) == 3
    out = flowctl("compact", "--min-age", "0s")
    assert out.returncode == 0, out.stderr
    assert names(tmp_path / "lake") == [f"{TOPIC}+0+0+19.parquet", f"{TOPIC}+0+20+29.parquet"]
    out = flowctl("retain", "--days", "1")
    assert out.returncode == 0 and "1 date partitions deleted" in out.stdout
    assert names(tmp_path / "lake") == []
    # the current hour: left alone by default, its settled small files merged with --settled
    now = time.time()
    fill(writer, 4, hour_start=int(now) // 3600 * 3600)
    age(tmp_path / "lake", 600, now=now)
    out = flowctl("compact")
    assert out.returncode == 0 and "0 files merged" in out.stdout, out.stderr
    out = flowctl("compact", "--settled", "5m")
    assert out.returncode == 0 and "3 files merged into 1" in out.stdout, out.stderr
    assert names(tmp_path / "lake") == [f"{TOPIC}+0+0+29.parquet", f"{TOPIC}+0+30+39.parquet"]
    out = flowctl("compact", "--table", "nope")
    assert out.returncode == 1 and out.stderr.startswith("flowctl: error: unknown table 'nope'")
    out = flowctl("compact", "--settled", "soon")
    assert out.returncode == 1 and out.stderr.startswith("flowctl: error:") and len(out.stderr.splitlines()) == 1
