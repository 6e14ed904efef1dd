"""Window-state snapshots: a restored aggregator continues exactly where the saved one was."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.stream.enrich import FlowEnricher
from pipeline.stream.state import WindowStateStore
from pipeline.stream.windows import WindowAggregator

T0 = 1_795_000_000 // 3600 * 3600


def _sums(tables: list[pa.Table]) -> dict[tuple, int]:
    out: dict[tuple, int] = {}
    for t in tables:
        for r in t.select(["window_start", "source_workload", "destination", "dest_port", "bytes_out"]).to_pylist():
            key = (r["window_start"], r["source_workload"], r["destination"], r["dest_port"])
            out[key] = out.get(key, 0) + r["bytes_out"]
    return out


def test_restored_state_emits_what_an_uninterrupted_run_emits(tmp_path: Path) -> None:
    enricher = FlowEnricher()
    batches = [enricher.enrich(t, f"b{i}") for i, t in
               enumerate(SyntheticCluster(seed=2).generate(T0, T0 + 900, rate=30, batch_rows=1500))]
    assert len(batches) > 4
    whole = WindowAggregator(60, 60)
    expected = [w for b in batches for w in whole.add(b)] + whole.flush()

    store = WindowStateStore(tmp_path, "source-a")
    first = WindowAggregator(60, 60)
    emitted = [w for b in batches[:3] for w in first.add(b)]
    assert first.open_windows > 0
    store.save(0, first, next_offset=3)
    snapshot = store.load(0, 60, 60)
    assert snapshot is not None and snapshot.next_offset == 3
    resumed = snapshot.state
    emitted += [w for b in batches[3:] for w in resumed.add(b)] + resumed.flush()
    assert _sums(emitted) == _sums(expected)
    assert sorted(resumed.emitted.items()) == sorted(whole.emitted.items())


def test_snapshot_of_another_source_or_window_size_is_ignored(tmp_path: Path) -> None:
    state = WindowAggregator(60, 60)
    WindowStateStore(tmp_path, "embedded-run-1").save(2, state, next_offset=10)
    assert WindowStateStore(tmp_path, "embedded-run-2").load(2, 60, 60) is None
    assert WindowStateStore(tmp_path, "embedded-run-1").load(2, 300, 60) is None
    assert WindowStateStore(tmp_path, "embedded-run-1").load(2, 60, 60).next_offset == 10


def test_corrupt_snapshot_starts_empty(tmp_path: Path) -> None:
    store = WindowStateStore(tmp_path, "s")
    store.path(1).write_bytes(b"garbage")
    assert store.load(1, 60, 60) is None
