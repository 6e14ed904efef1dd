"""The Parquet lake: Hive-partitioned tables with exactly-once file names.

A file is named after what it holds, ``<topic>+<partition>+<firstOffset>+<lastOffset>.parquet``
under ``<table>/date=YYYY-MM-DD/hour=HH/``; it is written under a temporary name
and renamed, so readers never see half a file and a replay of the same offsets
rewrites the same names instead of adding duplicates.
"""

from __future__ import annotations

import os
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

# Column giving each table's event time, used for the date=/hour= partitions.
TIME_COLUMN = {"flows": "end_time", "flow_windows": "window_start", "dlq": "dlq_time", "alerts": "start_time"}
TABLES = ("flows", "flow_windows", "dlq", "alerts", "policy_recommendations")
_NAME = re.compile(r"^(?P<topic>.+)\+(?P<partition>\d+)\+(?P<first>\d+)\+(?P<last>\d+)\.parquet$")
TMP_SUFFIX = ".tmp"


class LakeWriteError(RuntimeError):
    pass


@dataclass(frozen=True)
class FileRange:
    first: int
    last: int


def open_lake(root: str) -> tuple[pafs.FileSystem, str]:
    """Filesystem and base path for a lake root: a local directory or s3://bucket/prefix."""
    if "://" in root:
        fs, path = pafs.FileSystem.from_uri(root)
        return fs, path.rstrip("/")
    path = os.path.abspath(root)
    os.makedirs(path, exist_ok=True)
    return pafs.LocalFileSystem(), path


class ParquetLakeWriter:
    def __init__(self, root: str, row_group_size: int = 500_000, compression: str = "zstd") -> None:
        self.root = root
        self.fs, self.base = open_lake(root)
        self.row_group_size = row_group_size
        self.compression = compression

    def table_dir(self, table: str) -> str:
        return f"{self.base}/{table}"

    def write(self, table_name: str, topic: str, partition: int, first: int, last: int, table: pa.Table) -> list[str]:
        """Write ``table`` (offsets first..last of topic/partition) into hour partitions; returns final paths.

        Every part is written under a temporary name first and all are renamed at the end;
        if the process dies in between, the replay of the same offsets rewrites the same names.
        """
        if table.num_rows == 0:
            return []
        hours = pc.divide(table[TIME_COLUMN[table_name]], 3600).to_numpy()
        name = f"{topic}+{partition}+{first}+{last}.parquet"
        staged: list[tuple[str, str]] = []
        try:
            for hour in np.unique(hours):
                part = table.filter(pa.array(hours == hour)) if len(np.unique(hours)) > 1 else table
                ts = datetime.fromtimestamp(int(hour) * 3600, tz=UTC)
                directory = f"{self.table_dir(table_name)}/date={ts:%Y-%m-%d}/hour={ts:%H}"
                self.fs.create_dir(directory, recursive=True)
                final = f"{directory}/{name}"
                tmp = f"{directory}/.{name}.{uuid.uuid4().hex[:8]}{TMP_SUFFIX}"
                with self.fs.open_output_stream(tmp) as out:
                    pq.write_table(part, out, row_group_size=self.row_group_size, compression=self.compression,
                                   write_statistics=True)
                staged.append((tmp, final))
            for tmp, final in staged:
                self.fs.move(tmp, final)
        except (OSError, pa.ArrowException) as exc:
            for tmp, _ in staged:
                try:
                    self.fs.delete_file(tmp)
                except OSError:
                    pass
            raise LakeWriteError(f"cannot write {table_name} file {name}: {exc}") from exc
        return [final for _, final in staged]

    def files(self, table_name: str) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.table_dir(table_name), recursive=True, allow_not_found=True)
        return [f for f in self.fs.get_file_info(selector) if f.type == pafs.FileType.File]

    def last_range(self, table_name: str, topic: str, partition: int) -> FileRange | None:
        """The newest offset range of topic/partition in the lake (the position to resume from)."""
        best: FileRange | None = None
        for info in self.files(table_name):
            m = _NAME.match(info.base_name)
            if m and m.group("topic") == topic and int(m.group("partition")) == partition:
                r = FileRange(int(m.group("first")), int(m.group("last")))
                if best is None or r.last > best.last:
                    best = r
        return best

    def remove_temporary(self, table_name: str, topic: str, partition: int) -> int:
        """Delete temporary files a dead writer left for topic/partition; returns how many."""
        removed = 0
        prefix = f".{topic}+{partition}+"
        for info in self.files(table_name):
            if info.base_name.startswith(prefix) and info.base_name.endswith(TMP_SUFFIX):
                self.fs.delete_file(info.path)
                removed += 1
        return removed
