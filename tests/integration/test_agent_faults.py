"""Agent fault tests on the embedded broker: every Calico line reaches the lake exactly once
when the broker goes away for a while (ridden out in the producer's queue, or spooled to disk)
and when the agent is killed mid-file and restarted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import orjson
import pyarrow as pa
import pytest
from confluent_kafka import Consumer, TopicPartition
from prometheus_client import REGISTRY

from pipeline import topics
from pipeline.agent.agent import FlowAgent
from pipeline.agent.shipper import ship_file
from pipeline.agent.sources.calico import CalicoAdapter, to_calico_lines
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.agent.spool import Spool, SpooledMessage
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
    read_before, delivered_before = _metric("flowctl_agent_records_read_total", source="calico"), \
        _metric("flowctl_agent_delivery_seconds_count")
    with LocalStack(_settings(tmp_path), worker=False, sink=False) as stack:
        agent = FlowAgent(stack.settings)
        tailer = FileTailer(log, Checkpoint(tmp_path / "ck.json"), chunk_bytes=256 << 10)
        with _shipping(agent, tailer) as shipper:
            while _confirmed(tmp_path / "ck.json") == 0 and shipper.is_alive():
                time.sleep(0.05)
            stack.broker.set_broker_down()
            with log.open("ab") as fh:  # the source keeps writing while Kafka is away
                fh.write(b"\n".join(lines[third:2 * third]) + b"\n")
            time.sleep(8)
            assert _metric("flowctl_agent_source_lag_bytes") > 0, "unconfirmed bytes show as source lag"
            stack.broker.set_broker_up()
            stack.start_role("worker")
            stack.start_role("sink")
            with log.open("ab") as fh:
                fh.write(b"\n".join(lines[2 * third:]) + b"\n")
            size = log.stat().st_size
            deadline = time.monotonic() + 240
            while _confirmed(tmp_path / "ck.json") < size and shipper.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            while _metric("flowctl_agent_source_lag_bytes") > 0 and time.monotonic() < deadline:
                time.sleep(0.1)
        assert _confirmed(tmp_path / "ck.json") == size
        assert _metric("flowctl_agent_source_lag_bytes") == 0
        assert _metric("flowctl_agent_records_read_total", source="calico") - read_before == len(lines)
        assert _metric("flowctl_agent_delivery_seconds_count") > delivered_before
        stack.wait_until_processed(timeout=240)
        tailer.close()
        agent.close()
    assert _lake_identity(tmp_path) == _expected(n)


@contextmanager
def _shipping(agent: FlowAgent, tailer: FileTailer) -> Iterator[threading.Thread]:
    """Follow the Calico file in a background thread for the block; its exception fails the test."""
    stop = threading.Event()
    agent.outbox.give_up = stop  # as the agent verb does: a stopping agent ends its waits for Kafka and the worker
    errors: list[BaseException] = []

    def run() -> None:
        try:
            ship_file(agent, tailer, CalicoAdapter(cluster="it"), follow=True, stop=stop, idle_seconds=0.1)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    shipper = threading.Thread(target=run, daemon=True)
    shipper.start()
    try:
        yield shipper
    finally:
        stop.set()
        shipper.join(120)
    assert not errors, errors


def _metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def _raw_messages(settings: Settings, limit: int) -> list[SpooledMessage]:
    """Up to ``limit`` messages already on flows.raw.v1, with their partitions, keys and headers."""
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "spool-dup-reader", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topics.RAW, p, 0) for p in range(settings.partitions)])
    out: list[SpooledMessage] = []
    while len(out) < limit:
        msg = consumer.poll(2.0)
        if msg is None:
            break
        if msg.error() is None and msg.value():
            out.append(SpooledMessage(msg.topic(), msg.partition(), msg.key(), msg.value(), tuple(msg.headers() or ())))
    consumer.close()
    return out


def test_long_outage_spools_to_disk_then_replays_exactly_once(tmp_path: Path) -> None:
    """Kafka away longer than the spool trigger: batches go to a small on-disk spool, the agent stops
    reading when it is full, and the replay brings every line to the lake once; replaying batches
    Kafka already had changes nothing (the worker drops them by batch-id)."""
    lines, n = _calico_lines(1200, 25, seed=23)
    log = tmp_path / "flows.log"
    third = len(lines) // 3
    log.write_bytes(b"\n".join(lines[:third]) + b"\n")
    spool_dir = tmp_path / "spool"
    with LocalStack(_settings(tmp_path), worker=False, sink=False) as stack:
        settings = stack.settings.with_overrides(agent_spool_after_seconds=2.0, agent_spool_max_bytes=256 << 10)
        agent = FlowAgent(settings, spool_dir=spool_dir)
        tailer = FileTailer(log, Checkpoint(tmp_path / "ck.json"), chunk_bytes=256 << 10)
        with _shipping(agent, tailer) as shipper:
            while _confirmed(tmp_path / "ck.json") == 0 and shipper.is_alive():
                time.sleep(0.05)
            stack.broker.set_broker_down()
            with log.open("ab") as fh:  # the source keeps writing while Kafka is away
                fh.write(b"\n".join(lines[third:2 * third]) + b"\n")
            deadline = time.monotonic() + 60
            while not agent.spool.full and shipper.is_alive() and time.monotonic() < deadline:
                time.sleep(0.1)
            assert agent.spool.full, "the outage filled the spool"
            held = _confirmed(tmp_path / "ck.json")
            assert held < log.stat().st_size, "a full spool stops the agent reading its source"
            time.sleep(2)
            assert _confirmed(tmp_path / "ck.json") == held
            stack.broker.set_broker_up()
            stack.start_role("worker")
            stack.start_role("sink")
            with log.open("ab") as fh:
                fh.write(b"\n".join(lines[2 * third:]) + b"\n")
            size = log.stat().st_size
            deadline = time.monotonic() + 240
            while (_confirmed(tmp_path / "ck.json") < size or len(agent.spool)) and shipper.is_alive() \
                    and time.monotonic() < deadline:
                time.sleep(0.1)
        assert _confirmed(tmp_path / "ck.json") == size
        assert agent.outbox.stats.spooled_messages > 0 and agent.outbox.stats.replayed_messages > 0
        assert len(agent.spool) == 0 and not list(spool_dir.glob("*.spool*")), "the spool is empty afterwards"
        stack.wait_until_processed(timeout=240)
        assert _lake_identity(tmp_path) == _expected(n)
        tailer.close()
        agent.close()

        # A replay of batches Kafka already had (a crash after delivery, before the spool file was removed).
        duplicates = _raw_messages(settings, 40)
        assert duplicates
        spool = Spool(spool_dir, 1 << 30)
        spool.append(duplicates)
        spool.close()
        again = FlowAgent(settings, spool_dir=spool_dir)
        again.finish()
        assert again.outbox.stats.replayed_messages == len(duplicates) and len(again.spool) == 0
        again.close()
        stack.wait_until_processed(timeout=240)
    assert _lake_identity(tmp_path) == _expected(n)


def test_agent_stops_on_sigterm_while_waiting_for_a_stopped_worker(tmp_path: Path) -> None:
    """On the embedded broker the agent waits for its consumer; SIGTERM must end that wait, not hang."""
    from pipeline.broker.embedded import EmbeddedBroker
    from pipeline.kafka import end_offsets, group_reader

    with EmbeddedBroker() as broker:
        broker.create_topics(topics.topic_specs(2, 1))
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, broker_kind="embedded", partitions=2,
                            state_dir=str(tmp_path / "state"), max_lag_bytes=512 * 1024)
        cmd = [sys.executable, "-m", "pipeline.cli", "agent", "--rate", "20000", "--since", "-2h"]
        proc = subprocess.Popen(cmd, env={**os.environ, **settings_env(settings)}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        reader = group_reader(settings, "probe")
        try:
            deadline, published = time.monotonic() + 60, -1
            while time.monotonic() < deadline:  # no worker consumes: the raw topic stops growing at the lag limit
                time.sleep(2)
                now = sum(end_offsets(reader, topics.RAW).values())
                if now == published and now > 0:
                    break
                published = now
            assert proc.poll() is None, proc.stderr.read()
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
            assert time.monotonic() - started < 15, "the wait for the worker ends on SIGTERM"
        finally:
            reader.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err
    assert "stopped while waiting for the worker" in err
