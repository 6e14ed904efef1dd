"""`flowctl bench sink` and `flowctl bench query`: the lake's write and read speed."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

from rich.console import Console

from pipeline.config import Settings

Figures = list[tuple[str, str, float, str]]
T0 = 1_790_000_000 // 86400 * 86400  # a day boundary, so the generated lake spans whole hours


def _enriched_batches(flows: int, batch_rows: int = 2000):
    """Enriched tables as the worker publishes them (one per raw batch), from the real enricher."""
    from pipeline.agent.sources.synthetic import SyntheticCluster
    from pipeline.stream.enrich import FlowEnricher

    rate = 2000.0
    gen = SyntheticCluster(seed=13, cluster="bench")
    enricher = FlowEnricher()
    for i, table in enumerate(gen.generate(T0, T0 + int(flows / rate), rate=rate, batch_rows=batch_rows)):
        yield enricher.enrich(table, batch_id=f"bench-{i}")


def bench_query(settings: Settings, flows: int, console: Console) -> Figures:
    """Each saved query over a lake of ``flows`` synthetic flows (built with the real enricher and writer)."""
    from pipeline.query.samplelake import build_sample_lake
    from pipeline.query.saved import run_saved, saved_queries
    from pipeline.query.views import connect

    rate = 2000.0
    end = T0 + int(flows / rate)
    figures: Figures = []
    with tempfile.TemporaryDirectory(prefix="flowctl-bench-") as tmp:
        lake = str(Path(tmp) / "lake")
        console.print(f"bench query: building a lake of {flows:,} flows …")
        t0 = time.perf_counter()
        built = build_sample_lake(lake, T0, end, rate=rate, seed=21, batch_rows=250_000)
        figures.append(("query", "lake_flows", float(built.flows), "rows"))
        figures.append(("query", "lake_window_rows", float(built.windows), "rows"))
        figures.append(("query", "lake_build_seconds", time.perf_counter() - t0, "s"))
        con = connect(lake, read_only=True)
        for name in saved_queries():
            run_saved(con, name, T0, end)  # warm the OS page cache and DuckDB's metadata cache
            t1 = time.perf_counter()
            run_saved(con, name, T0, end)
            figures.append(("query", name, (time.perf_counter() - t1) * 1000, "ms"))
        t1 = time.perf_counter()
        con.execute("SELECT source_workload, sum(bytes_out) FROM flows GROUP BY ALL ORDER BY 2 DESC LIMIT 10").fetchall()
        figures.append(("query", "top-talkers-over-raw-flows", (time.perf_counter() - t1) * 1000, "ms"))
    return figures
