"""Window state survives a worker crash and a hand-over between workers (embedded broker)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline import topics
from pipeline.agent.agent import FlowAgent
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.config import Settings
from pipeline.kafka import committed_offsets, group_reader
from pipeline.query.views import connect, query_table
from pipeline.runner import LocalStack
from pipeline.stream.enrich import stable_workload

pytestmark = pytest.mark.integration

T0 = 1_795_000_000 // 3600 * 3600


def _truth(tables: list[pa.Table], window: int) -> dict[tuple, tuple[int, int]]:
    """(window_start, source workload) → (bytes_out, flows) straight from the input's counted reports."""
    table = pa.concat_tables(tables)
    counted = pc.or_(pc.equal(table["reporter"], "src"),
                     pc.invert(pc.is_in(table["source_type"], value_set=pa.array(["wep", "hep"]))))
    table = table.filter(counted)
    keys = pa.table({
        "ws": pc.multiply(pc.divide(table["end_time"], window), window),
        "w": stable_workload(table["source_namespace"], table["source_name_aggr"]),
        "b": table["bytes_out"], "n": table["num_flows"],
    }).group_by(["ws", "w"]).aggregate([("b", "sum"), ("n", "sum")])
    return {(r["ws"], r["w"]): (r["b_sum"], r["n_sum"]) for r in keys.to_pylist()}


def _windows(lake: Path) -> dict[tuple, tuple[int, int]]:
    rows = query_table(connect(str(lake)), """
        SELECT window_start AS ws, source_workload AS w, sum(bytes_out) AS b, sum(num_flows) AS n
        FROM flow_windows GROUP BY ALL""").to_pylist()
    return {(r["ws"], r["w"]): (r["b"], r["n"]) for r in rows}


def _wait_for_worker_commit(stack: LocalStack, timeout: float = 60) -> None:
    reader = group_reader(stack.settings, stack.settings.worker_group)
    try:
        deadline = time.monotonic() + timeout
        while not sum(committed_offsets(reader, topics.RAW, stack.settings.partitions).values()):
            assert time.monotonic() < deadline, "the worker committed nothing"
            time.sleep(0.05)
    finally:
        reader.close()


def _run_with_interruption(tmp_path: Path, interrupt) -> tuple[dict, dict, int]:
    settings = Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), partitions=3,
                        window_seconds=60, grace_seconds=60, idle_flush_seconds=2.0, sink_flush_seconds=0.5)
    tables = list(SyntheticCluster(seed=21, cluster="it").generate(T0, T0 + 2400, rate=50, batch_rows=4000))
    half = len(tables) // 2
    with LocalStack(settings) as stack:
        agent = FlowAgent(stack.settings)
        for t in tables[:half]:
            agent.publish(t)
        agent.finish()
        _wait_for_worker_commit(stack)  # the interruption comes after the worker processed part of it
        interrupt(stack)

        def rest() -> None:
            for t in tables[half:]:
                agent.publish(t)
            agent.finish(flush_windows=True)

        publisher = threading.Thread(target=rest, daemon=True)
        publisher.start()
        time.sleep(0.5)
        stack.start_role("worker")
        publisher.join(timeout=240)
        assert not publisher.is_alive()
        stack.wait_until_processed(timeout=240)
        agent.close()
    total = sum(t.num_rows for t in tables)
    return _truth(tables, 60), _windows(tmp_path / "lake"), total


def test_windows_equal_ground_truth_after_worker_sigkill(tmp_path: Path, short_sessions: None) -> None:
    truth, windows, total = _run_with_interruption(tmp_path, lambda stack: stack.kill_role("worker", signal.SIGKILL))
    assert windows == truth
    flows = query_table(connect(str(tmp_path / "lake")), "SELECT count(*) AS n FROM flows")["n"][0].as_py()
    assert flows == total


def test_hand_over_to_a_new_worker_loses_and_doubles_nothing(tmp_path: Path, short_sessions: None) -> None:
    """Worker A stops (partitions revoked, state checkpointed); worker B joins the group and resumes."""
    def hand_over(stack: LocalStack) -> None:
        assert stack.kill_role("worker", signal.SIGTERM) == 0, "worker A stops cleanly on SIGTERM, not killed"

    truth, windows, total = _run_with_interruption(tmp_path, hand_over)
    assert windows == truth
    flows = query_table(connect(str(tmp_path / "lake")), "SELECT count(*) AS n FROM flows")["n"][0].as_py()
    assert flows == total
