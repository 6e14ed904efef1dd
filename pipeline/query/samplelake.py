"""Build a lake from synthetic cluster traffic without Kafka, for benchmarks, notebooks and tests.

It runs the same code as the pipeline (synthetic source → FlowEnricher → WindowAggregator →
ParquetLakeWriter), one pretend topic partition, with the batch number as the offset, so the
lake has the layout and file names the sink would give it.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from pipeline import topics
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.sink.lake import ParquetLakeWriter


@dataclass
class SampleLake:
    flows: int = 0
    windows: int = 0
    files: int = 0


def build_sample_lake(lake: str, start: int, end: int, rate: float = 150.0, seed: int = 7,
                      batch_rows: int = 50_000, cluster: str = "demo") -> SampleLake:
    """Write ``flows`` and ``flow_windows`` for synthetic traffic with ``start <= end_time < end``."""
    from pipeline.stream.enrich import FlowEnricher
    from pipeline.stream.windows import WindowAggregator

    writer = ParquetLakeWriter(lake)
    enricher = FlowEnricher()
    windows = WindowAggregator()
    out = SampleLake()
    gen = SyntheticCluster(seed=seed, cluster=cluster)

    def write_windows(offset: int, parts: list[pa.Table]) -> None:
        parts = [p for p in parts if p.num_rows]
        if parts:
            table = pa.concat_tables(parts)
            out.files += len(writer.write("flow_windows", topics.WINDOWED, 0, offset, offset, table))
            out.windows += table.num_rows

    offset = -1
    for offset, batch in enumerate(gen.generate(start, end, rate=rate, batch_rows=batch_rows)):
        enriched = enricher.enrich(batch, batch_id=f"sample-{seed}-{offset}")
        out.files += len(writer.write("flows", topics.ENRICHED, 0, offset, offset, enriched))
        out.flows += enriched.num_rows
        write_windows(offset, windows.add(enriched))
    write_windows(offset + 1, windows.flush())
    return out
