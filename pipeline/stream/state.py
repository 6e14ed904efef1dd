"""Durable window state: one snapshot file per partition, written before offsets are committed.

The worker acknowledges a raw message to Faust (which commits contiguous
acknowledged offsets) only after a snapshot that includes the message's
contribution to open windows is on disk. After a crash, a restarted worker
loads the snapshot and skips the messages it already covers, so the windows it
emits equal those of an uninterrupted run. Snapshots are tied to the Kafka
source they were taken from: an embedded broker starts offsets at 0 on every
run, so a snapshot of another run is ignored.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from pipeline.stream.windows import WindowAggregator

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    state: WindowAggregator
    next_offset: int


class WindowStateStore:
    def __init__(self, directory: str | Path, source_id: str) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.source_id = source_id

    def path(self, partition: int) -> Path:
        return self.directory / f"partition-{partition}.arrow"

    def save(self, partition: int, state: WindowAggregator, next_offset: int) -> None:
        parts = [t for tables in state.pending.values() for t in tables]
        meta = {
            "source_id": self.source_id, "next_offset": next_offset, "event_time": state.event_time,
            "window": state.window, "grace": state.grace,
            "emitted": {str(k): v for k, v in state.emitted.items()},
        }
        table = pa.concat_tables(parts) if parts else None
        schema = (table.schema if table is not None else pa.schema([])).with_metadata(
            {"flowctl-window-state": json.dumps(meta)})
        tmp = self.path(partition).with_suffix(".tmp")
        with pa.OSFile(str(tmp), "wb") as sink, ipc.new_file(sink, schema) as writer:
            if table is not None:
                writer.write_table(table.replace_schema_metadata(schema.metadata))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, self.path(partition))

    def load(self, partition: int, window_seconds: int, grace_seconds: int) -> Snapshot | None:
        path = self.path(partition)
        if not path.exists():
            return None
        try:
            reader = ipc.open_file(pa.memory_map(str(path)))
            table = reader.read_all()
            meta = json.loads(reader.schema.metadata[b"flowctl-window-state"])
        except (pa.ArrowInvalid, OSError, KeyError, ValueError, TypeError) as exc:
            log.error("window state %s is unreadable (%s); open windows of partition %d start empty",
                      path, exc, partition)
            return None
        if meta.get("source_id") != self.source_id:
            log.info("ignoring window state %s: taken from another Kafka source", path)
            return None
        if meta.get("window") != window_seconds:
            log.warning("ignoring window state %s: taken with %ss windows, now %ss", path, meta.get("window"),
                        window_seconds)
            return None
        state = WindowAggregator(window_seconds, grace_seconds)
        state.event_time = int(meta["event_time"])
        state.emitted = {int(k): int(v) for k, v in meta["emitted"].items()}
        if table.num_rows:
            table = table.replace_schema_metadata(None)
            starts = table["window_start"].to_numpy()
            for ws in np.unique(starts):
                state.pending[int(ws)] = [table.filter(pa.array(starts == ws))]
        return Snapshot(state, int(meta["next_offset"]))

    def drop(self, partition: int) -> None:
        self.path(partition).unlink(missing_ok=True)
