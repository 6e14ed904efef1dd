"""`flowctl bench detect`: time one detection run over a lake holding N flow_windows rows in the scored day."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from jobs.anomaly.detect import DetectOptions, detect_lake
from pipeline.schema import arrow_schema
from pipeline.sink.lake import ParquetLakeWriter

DAY = 86_400
CLASSES = ("inference", "training", "notebook", "agent/app", "none")


def synthetic_windows(n: int, start: int, seed: int, workloads: int = 500) -> pa.Table:
    """``n`` flow_windows rows over one day from ``start``: each workload talks to a fixed set of destinations."""
    rng = np.random.default_rng(seed)
    schema = arrow_schema("flow_window.v1")
    w = rng.integers(0, workloads, n)
    dest = (w * 7 + rng.integers(0, 12, n)) % 4000
    minute = np.sort(rng.integers(0, DAY // 60, n))
    ws = start + minute * 60
    external = dest % 5 == 0
    bytes_out = np.exp(rng.normal(8 + (w % 7), 1.0, n)).astype(np.int64)
    flows = rng.integers(1, 20, n)
    names = np.array([f"ns{i % 20}/app-{i}" for i in range(workloads)], dtype=object)
    dests = np.where(external, np.char.add("host-", (dest.astype(str))) + ".example.com",
                     np.char.add("svc/", dest.astype(str)))
    cols = {
        "window_start": ws, "window_end": ws + 60, "revision": np.zeros(n, np.int64),
        "cluster": np.full(n, "bench", object), "source_namespace": np.array([x.split("/")[0] for x in names])[w],
        "source_workload": names[w], "source_genai_class": np.array(CLASSES, object)[w % len(CLASSES)],
        "dest_namespace": np.where(external, "-", "svc"), "destination": dests,
        "dest_kind": np.where(external, "public", "in_cluster"), "dest_category": np.where(external, "unknown", "in_cluster"),
        "dest_genai_class": np.full(n, "none", object),
        "dest_port": 443 + dest % 3, "proto": np.full(n, "tcp", object), "action": np.full(n, "allow", object),
        "bytes_in": bytes_out * 3, "bytes_out": bytes_out, "packets_in": flows * 3, "packets_out": flows * 2,
        "num_flows": flows, "flow_records": flows, "first_seen": ws, "last_seen": ws + 59, "emitted_at": ws + 180,
    }
    arrays = [pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def bench_detect(windows: int) -> list[tuple[str, str, float, str]]:
    """A baseline day and a scored day of ``windows`` rows each; times the scoring run."""
    start = 1_790_000_000 // DAY * DAY
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-detect-") as tmp:
        lake = str(Path(tmp) / "lake")
        writer = ParquetLakeWriter(lake)
        writer.write("flow_windows", "bench", 0, 0, windows - 1, synthetic_windows(windows, start, 1))
        writer.write("flow_windows", "bench", 0, windows, 2 * windows - 1, synthetic_windows(windows, start + DAY, 2))
        options = DetectOptions(since=start + DAY, until=start + 2 * DAY, lookback=DAY, min_history=100)
        t0 = time.perf_counter()
        result = detect_lake(lake, options, str(Path(tmp) / "state"))
        seconds = time.perf_counter() - t0
    return [
        ("detect", "windows", float(windows), "rows"),
        ("detect", "feature_rows", float(result.feature_rows), "rows"),
        ("detect", "seconds", seconds, "s"),
        ("detect", "throughput", windows / seconds, "windows/s"),
        ("detect", "alerts", float(len(result.alerts)), "alerts"),
    ]
