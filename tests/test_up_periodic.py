"""`flowctl up` runs its periodic jobs (compaction, recommendation) as flowctl verbs and reports their failures."""

from __future__ import annotations

import io
import logging
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from pipeline.config import Settings
from pipeline.runner import StackError
from pipeline.sink.lake import ParquetLakeWriter
from pipeline.up import Stack
from tests.test_lake_maintenance import fill, ids


def _stack(tmp_path: Path) -> Stack:
    settings = Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), bootstrap_servers="unused:9092")
    return Stack(settings, "synthetic", 1.0, 7, "", 0.0, tmp_path / "policies")


def _run_every(stack: Stack, args: list[str], until) -> None:
    runner = threading.Thread(target=stack._every, args=(0.2, args), daemon=True)
    runner.start()
    deadline = time.monotonic() + 60
    while not until() and time.monotonic() < deadline:
        time.sleep(0.2)
    stack.stop_event.set()
    runner.join(30)


def test_periodic_compaction_merges_the_sinks_small_files(tmp_path: Path) -> None:
    writer = ParquetLakeWriter(str(tmp_path / "lake"))
    written = fill(writer, batches=12)
    files = lambda: sorted((tmp_path / "lake" / "flows").rglob("*.parquet"))  # noqa: E731
    assert len(files()) == 12
    # Compaction keeps the newest range as its own file: the sink recovers its position from it.
    _run_every(_stack(tmp_path), ["lake", "compact", "--min-age", "0s"], until=lambda: len(files()) == 2)
    assert len(files()) == 2
    assert ids(tmp_path / "lake") == list(range(written)), "every row once after compaction"


def test_a_failing_periodic_job_is_logged_and_retried(tmp_path: Path, caplog) -> None:
    (tmp_path / "lake").mkdir()
    with caplog.at_level(logging.ERROR, logger="pipeline.up"):
        _run_every(_stack(tmp_path), ["sql", "SELECT * FROM no_such_table"],
                   until=lambda: sum("failed" in r.message for r in caplog.records) >= 2)
    failures = [r.message for r in caplog.records if "flowctl sql failed (exit 1)" in r.message]
    assert len(failures) >= 2 and "no_such_table" in failures[0]


def test_a_role_that_keeps_exiting_ends_up_with_a_stack_error(tmp_path: Path) -> None:
    """Restarted five times, then reported as a StackError (one line at the CLI), not a traceback."""
    stack = _stack(tmp_path)
    stack.local.start_role("detect", ["detect", "--interval", "1s"])  # exits 1 at once: not whole buckets
    deadline = time.monotonic() + 120
    with pytest.raises(StackError, match=r"detect exited 6 times \(last exit code 1\); giving up"):
        while time.monotonic() < deadline:
            stack._restart_dead_roles(Console(file=io.StringIO()))
            time.sleep(0.2)
    assert stack.restarts["detect"] == 6
