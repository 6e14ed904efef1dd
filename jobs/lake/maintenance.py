"""Lake maintenance: compact small files of an hour partition, delete partitions past retention.

Compaction keeps the exactly-once file naming. The merged file of consecutive files of one
topic partition in one hour is named after the whole offset range it holds
(``<topic>+<p>+<firstOfFirst>+<lastOfLast>.parquet``), written under a temporary name and
renamed; only then are its inputs deleted. A reader that lists the hour between the rename
and the deletes sees both, and the lake's readers (``pipeline.query.views``) leave out any
file whose range a larger file of the same hour covers, so rows are never doubled or
missing. The newest range of each topic partition is never merged: it is where a restarted
sink resumes (:meth:`ParquetLakeWriter.last_range`) and may replay to.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from pipeline.sink.lake import TABLES, TMP_SUFFIX, LakeFile, ParquetLakeWriter, covered_files, write_parquet

_HOUR_DIR = re.compile(r"/date=(?P<date>\d{4}-\d{2}-\d{2})/hour=(?P<hour>\d{2})$")
COMPACT_TMP_PREFIX = ".compact-"


@dataclass
class CompactionReport:
    merged_files: int = 0        # input files merged away
    written_files: int = 0       # compacted files written
    rows: int = 0                # rows in the compacted files
    leftovers_removed: int = 0   # inputs of an earlier, interrupted compaction
    plan: list[tuple[str, list[str]]] = field(default_factory=list)  # (compacted file, its inputs)

    def summary(self) -> str:
        return (f"{self.merged_files:,} files merged into {self.written_files:,} ({self.rows:,} rows); "
                f"{self.leftovers_removed:,} leftovers of an interrupted compaction removed")


def _hour_start(directory: str) -> int | None:
    m = _HOUR_DIR.search(directory)
    if m is None:
        return None
    return int(datetime.strptime(f"{m.group('date')} {m.group('hour')}", "%Y-%m-%d %H").replace(tzinfo=UTC).timestamp())


def _rows(writer: ParquetLakeWriter, path: str) -> int:
    with writer.fs.open_input_file(path) as f:
        return pq.ParquetFile(f).metadata.num_rows


def plan_compaction(writer: ParquetLakeWriter, table: str, target_rows: int, min_age_seconds: float,
                    now: float | None = None, settled_seconds: float | None = None,
                    ) -> tuple[list[list[LakeFile]], list[LakeFile]]:
    """(chunks of files to merge, covered leftovers to delete) for one table.

    Hours that ended ``min_age_seconds`` ago merge into files of up to ``target_rows``. With
    ``settled_seconds``, younger hours (the one the sink writes now included) merge too, but only
    their small files (under a tenth of ``target_rows``) written at least that long ago: that bounds
    the file count a reader of the open hour pays for, and a merged file is rewritten only until it
    is no longer small, so each row is rewritten a few times at most before its hour closes.
    """
    now = time.time() if now is None else now
    files = writer.lake_files(table)
    covered = covered_files(files)
    leftovers = [f for f in files if f.path in covered]
    live = [f for f in files if f.path not in covered]
    newest: dict[tuple[str, int], int] = {}
    for f in live:
        newest[(f.topic, f.partition)] = max(newest.get((f.topic, f.partition), -1), f.last)
    groups: dict[tuple[str, str, int], list[LakeFile]] = {}
    for f in live:
        groups.setdefault((f.directory, f.topic, f.partition), []).append(f)
    chunks: list[list[LakeFile]] = []
    for (directory, topic, partition), group in sorted(groups.items()):
        start = _hour_start(directory)
        if start is None or len(group) < 2:
            continue
        closed = start + 3600 + min_age_seconds <= now
        if not closed and settled_seconds is None:
            continue
        small = target_rows if closed else max(1, target_rows // 10)
        chunk: list[LakeFile] = []
        rows = 0
        for f in sorted(group, key=lambda f: f.first):
            # The newest range stays as the sink wrote it; a large file (or, in a young hour, one not yet
            # settled) is left alone. Either ends a run, so a merged range never spans a file it does not hold.
            eligible = f.last != newest[(topic, partition)] and (closed or f.mtime <= now - (settled_seconds or 0.0))
            n = _rows(writer, f.path) if eligible else -1
            if n < 0 or n >= small or rows + n > target_rows:
                if len(chunk) > 1:
                    chunks.append(chunk)
                chunk, rows = ([], 0) if n < 0 or n >= small else ([f], n)
                continue
            chunk.append(f)
            rows += n
        if len(chunk) > 1:
            chunks.append(chunk)
    return chunks, leftovers


def _merge(writer: ParquetLakeWriter, chunk: list[LakeFile]) -> tuple[str, int]:
    first = chunk[0]
    directory = first.directory
    final = f"{directory}/{first.topic}+{first.partition}+{chunk[0].first}+{chunk[-1].last}.parquet"
    tables = []
    for f in chunk:
        with writer.fs.open_input_file(f.path) as src:
            tables.append(pq.read_table(src))
    # Files written before a nullable column was added lack it: fill it with nulls.
    merged = pa.concat_tables(tables, promote_options="default")
    tmp = f"{directory}/{COMPACT_TMP_PREFIX}{uuid.uuid4().hex[:12]}.parquet{TMP_SUFFIX}"
    try:
        with writer.fs.open_output_stream(tmp) as out:
            write_parquet(merged, out, row_group_size=writer.row_group_size, compression=writer.compression)
        writer.fs.move(tmp, final)
    except BaseException:
        try:
            writer.fs.delete_file(tmp)
        except OSError:
            pass
        raise
    return final, merged.num_rows


def compact(writer: ParquetLakeWriter, tables: Iterable[str] = ("flows", "flow_windows", "dlq"),
            target_rows: int = 1_000_000, min_age_seconds: float = 3600.0, now: float | None = None,
            dry_run: bool = False, settled_seconds: float | None = None) -> CompactionReport:
    """Merge the small files of each closed hour partition (and with ``settled_seconds`` the settled small
    files of younger hours, see :func:`plan_compaction`); the module docstring says why readers are safe."""
    report = CompactionReport()
    for table in tables:
        chunks, leftovers = plan_compaction(writer, table, target_rows, min_age_seconds, now, settled_seconds)
        for f in leftovers:
            if not dry_run:
                writer.fs.delete_file(f.path)
            report.leftovers_removed += 1
        for chunk in chunks:
            name = f"{chunk[0].directory}/{chunk[0].topic}+{chunk[0].partition}+{chunk[0].first}+{chunk[-1].last}.parquet"
            report.plan.append((name, [f.path for f in chunk]))
            report.merged_files += len(chunk)
            report.written_files += 1
            if dry_run:
                continue
            _, rows = _merge(writer, chunk)
            report.rows += rows
            for f in chunk:
                writer.fs.delete_file(f.path)
    return report


def remove_stale_temporaries(writer: ParquetLakeWriter, table: str, older_than_seconds: float = 3600.0,
                             now: float | None = None) -> int:
    """Delete compaction temporaries that a dead compaction left behind."""
    now = time.time() if now is None else now
    removed = 0
    for info in writer.files(table):
        if info.base_name.startswith(COMPACT_TMP_PREFIX) and info.base_name.endswith(TMP_SUFFIX):
            if info.mtime is None or info.mtime.timestamp() + older_than_seconds < now:
                writer.fs.delete_file(info.path)
                removed += 1
    return removed


def retain(writer: ParquetLakeWriter, days: int, tables: Iterable[str] = TABLES, now: float | None = None,
           dry_run: bool = False) -> list[str]:
    """Delete ``date=`` partitions older than ``days`` days before today (UTC); returns the deleted directories.

    Partitions are whole days: with ``days=7`` on 2026-11-27, 2026-11-20 and later are kept.
    """
    if days < 0:
        raise ValueError("--days must not be negative")
    now = time.time() if now is None else now
    cutoff = datetime.fromtimestamp(now - days * 86400, tz=UTC).strftime("%Y-%m-%d")
    deleted = []
    for table in tables:
        selector = pafs.FileSelector(writer.table_dir(table), recursive=False, allow_not_found=True)
        for info in writer.fs.get_file_info(selector):
            name = info.base_name
            if info.type != pafs.FileType.Directory or not re.fullmatch(r"date=\d{4}-\d{2}-\d{2}", name):
                continue
            if name.removeprefix("date=") < cutoff:
                if not dry_run:
                    writer.fs.delete_dir(info.path)
                deleted.append(info.path)
    return sorted(deleted)
