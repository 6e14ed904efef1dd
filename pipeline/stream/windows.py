"""Event-time tumbling windows over enriched flows, aggregated with pyarrow.

A window closes when the partition's event time (largest ``end_time`` seen)
passes its end plus the grace period, or when the partition has been idle or
was told to flush. Flows that arrive after their window closed are emitted
as a correction row with the next revision number; rows are additive, so the
sum over revisions is the window's total.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.schema import arrow_schema

KEYS = (
    "cluster", "source_namespace", "source_workload", "source_genai_class",
    "dest_namespace", "destination", "dest_kind", "dest_category", "dest_genai_class",
    "dest_port", "proto", "action",
)
SUMS = ("bytes_in", "bytes_out", "packets_in", "packets_out", "num_flows")
# How long to remember emitted windows, to number late corrections.
EMITTED_RETENTION_SECONDS = 2 * 86400
# An open window's partial aggregates are merged into one when it has this many: every checkpoint
# snapshots the open windows, and at 33,000 flows/s a minute's ~300 small parts per partition made
# each snapshot ~1 MB and 25 ms (the worker's event loop waits for it), for a few thousand rows.
MERGE_PARTS = 16


def _aggregate(table: pa.Table, keys: list[str]) -> pa.Table:
    """Group ``table`` by ``keys``; sums stay sums, counts become sums when re-aggregating."""
    aggs = [(c, "sum") for c in SUMS] + [("flow_records", "sum"), ("first_seen", "min"), ("last_seen", "max")]
    out = table.group_by(keys, use_threads=False).aggregate(aggs)
    mapping = {f"{c}_{fn}": c for c, fn in aggs}
    return out.rename_columns([mapping.get(n, n) for n in out.column_names])


class WindowAggregator:
    """Window state of one Kafka partition."""

    def __init__(self, window_seconds: int = 60, grace_seconds: int = 120) -> None:
        self.window = int(window_seconds)
        self.grace = int(grace_seconds)
        self.schema = arrow_schema("flow_window.v1")
        self.pending: dict[int, list[pa.Table]] = {}
        self.emitted: dict[int, int] = {}
        self.event_time = -1
        self.last_activity = time.monotonic()

    def add(self, enriched: pa.Table) -> list[pa.Table]:
        """Add a batch; returns window rows ready to publish (closed windows and late corrections)."""
        self.last_activity = time.monotonic()
        if enriched.num_rows == 0:
            return []
        counted = enriched.filter(enriched["counted"])
        out: list[pa.Table] = []
        if counted.num_rows:
            end = counted["end_time"]
            start = pc.multiply(pc.divide(end, self.window), self.window)  # integer division: floor for >= 0
            prepared = pa.table({
                "window_start": start,
                **{k: counted[k] for k in KEYS},
                **{c: counted[c] for c in SUMS},
                "flow_records": pa.array(np.ones(counted.num_rows, dtype=np.int64)),
                "first_seen": counted["start_time"],
                "last_seen": end,
            })
            partial = _aggregate(prepared, ["window_start", *KEYS])
            starts = partial["window_start"].to_numpy()
            for ws in np.unique(starts):
                part = partial.filter(pa.array(starts == ws))
                ws = int(ws)
                if ws in self.emitted:
                    self.emitted[ws] += 1
                    out.append(self._finish(ws, [part], self.emitted[ws]))
                else:
                    parts = self.pending.setdefault(ws, [])
                    parts.append(part)
                    if len(parts) >= MERGE_PARTS:
                        self.pending[ws] = [_aggregate(pa.concat_tables(parts), ["window_start", *KEYS])]
            self.event_time = max(self.event_time, int(pc.max(end).as_py()))
        out.extend(self._close(lambda ws: ws + self.window + self.grace <= self.event_time))
        return out

    def flush(self) -> list[pa.Table]:
        """Close every open window (end of input, or the partition went idle)."""
        return self._close(lambda ws: True)

    def idle_for(self) -> float:
        return time.monotonic() - self.last_activity

    @property
    def open_windows(self) -> int:
        return len(self.pending)

    def _close(self, ready) -> list[pa.Table]:
        out = []
        for ws in sorted(w for w in self.pending if ready(w)):
            out.append(self._finish(ws, self.pending.pop(ws), 0))
            self.emitted[ws] = 0
        horizon = self.event_time - EMITTED_RETENTION_SECONDS
        for ws in [w for w in self.emitted if w < horizon]:
            del self.emitted[ws]
        return out

    def _finish(self, ws: int, parts: list[pa.Table], revision: int) -> pa.Table:
        merged = pa.concat_tables(parts) if len(parts) > 1 else parts[0]
        if len(parts) > 1:
            merged = _aggregate(merged, ["window_start", *KEYS])
        n = merged.num_rows
        columns = {
            **{c: merged[c] for c in merged.column_names},
            "window_end": pa.array(np.full(n, ws + self.window, dtype=np.int64)),
            "revision": pa.array(np.full(n, revision, dtype=np.int64)),
            "emitted_at": pa.array(np.full(n, int(time.time()), dtype=np.int64)),
        }
        return pa.Table.from_arrays([columns[f.name] for f in self.schema], schema=self.schema)
