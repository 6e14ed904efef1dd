"""Agent fault tests on the embedded broker: every Calico line reaches the lake exactly once
when the broker goes away for a while and when the agent is killed mid-file and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import orjson
import pyarrow as pa
import pytest

from pipeline.agent.agent import FlowAgent
from pipeline.agent.shipper import ship_file
from pipeline.agent.sources.calico import CalicoAdapter, to_calico_lines
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.agent.tail import Checkpoint, FileTailer
from pipeline.config import Settings
from pipeline.query.views import connect, query_table
from pipeline.runner import LocalStack, settings_env

pytestmark = pytest.mark.integration

T0 = 1_795_000_000 // 3600 * 3600


def _settings(tmp_path: Path) -> Settings:
    return Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), partitions=4,
                    idle_flush_seconds=1.0, sink_flush_seconds=0.5)


def _calico_lines(n_seconds: int, rate: float, seed: int) -> tuple[list[bytes], int]:
    """Calico lines whose bytes_out is the line's ordinal: count, distinct count and sum identify every line."""
    tables = list(SyntheticCluster(seed=seed, cluster="it").generate(T0, T0 + n_seconds, rate=rate))
    table = pa.concat_tables(tables)
    table = table.set_column(table.schema.get_field_index("bytes_out"), "bytes_out", pa.array(range(table.num_rows), pa.int64()))
    return to_calico_lines(table), table.num_rows


def _lake_identity(tmp_path: Path) -> dict:
    con = connect(str(tmp_path / "lake"))
    return query_table(con, "SELECT count(*) AS n, count(DISTINCT bytes_out) AS d, sum(bytes_out) AS s FROM flows").to_pylist()[0]


def _expected(n: int) -> dict:
    return {"n": n, "d": n, "s": n * (n - 1) // 2}


def _confirmed(ck: Path) -> int:
    try:
        return sum(f["offset"] for f in orjson.loads(ck.read_bytes())["files"].values())
    except (FileNotFoundError, orjson.JSONDecodeError, KeyError):
        return 0


def test_agent_killed_mid_file_resumes_from_its_checkpoint(tmp_path: Path) -> None:
    lines, n = _calico_lines(1800, 25, seed=21)
    logdir = tmp_path / "calico"
    logdir.mkdir()
    (logdir / "flows.log").write_bytes(b"\n".join(lines) + b"\n")
    size = (logdir / "flows.log").stat().st_size
    ck = tmp_path / "agent-checkpoint.json"
    with LocalStack(_settings(tmp_path)) as stack:
        env = {**os.environ, **settings_env(stack.settings)}
        cmd = [sys.executable, "-m", "pipeline.cli", "agent", "--source", f"calico:{logdir}", "--checkpoint", str(ck)]
        first = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while _confirmed(ck) == 0 and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert first.poll() is None, "the agent finished before it could be killed; make the file bigger"
        first.send_signal(signal.SIGKILL)
        first.wait(30)
        assert 0 < _confirmed(ck) < size, "killed mid-file"
        second = subprocess.run([*cmd, "--no-follow"], env=env, stdin=subprocess.DEVNULL, timeout=240)
        assert second.returncode == 0
        assert _confirmed(ck) == size
        stack.wait_until_processed(timeout=240)
    assert _lake_identity(tmp_path) == _expected(n)


def test_broker_down_while_publishing_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """The agent rides out the outage; worker and sink start once the broker is back (the Faust
    worker stops when it cannot reach its broker, which is a matter of the stream stage)."""
    lines, n = _calico_lines(1200, 25, seed=22)
    log = tmp_path / "flows.log"
    third = len(lines) // 3
    log.write_bytes(b"\n".join(lines[:third]) + b"\n")
    with LocalStack(_settings(tmp_path), worker=False, sink=False) as stack:
        agent = FlowAgent(stack.settings)
        tailer = FileTailer(log, Checkpoint(tmp_path / "ck.json"), chunk_bytes=256 << 10)
        stop = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                ship_file(agent, tailer, CalicoAdapter(cluster="it"), follow=True, stop=stop, idle_seconds=0.1)
            except BaseException as exc:  # surfaced by the assertion below
                errors.append(exc)

        shipper = threading.Thread(target=run)
        shipper.start()
        try:
            while _confirmed(tmp_path / "ck.json") == 0 and shipper.is_alive():
                time.sleep(0.05)
            stack.broker.set_broker_down()
            with log.open("ab") as fh:  # the source keeps writing while Kafka is away
                fh.write(b"\n".join(lines[third:2 * third]) + b"\n")
            time.sleep(8)
            stack.broker.set_broker_up()
            stack.start_role("worker")
            stack.start_role("sink")
            with log.open("ab") as fh:
                fh.write(b"\n".join(lines[2 * third:]) + b"\n")
            size = log.stat().st_size
            deadline = time.monotonic() + 240
            while _confirmed(tmp_path / "ck.json") < size and shipper.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
        finally:
            stop.set()
            shipper.join(120)
        assert not errors, errors
        assert _confirmed(tmp_path / "ck.json") == size
        stack.wait_until_processed(timeout=240)
        tailer.close()
        agent.close()
    assert _lake_identity(tmp_path) == _expected(n)
