"""The sink under faults: SIGKILL while it writes, a full disk; the lake ends up with exactly the input rows.

Both tests publish enriched batches straight to flows.enriched.v1 (no worker) whose ``bytes_in``
column is a unique id per flow, so a count, a distinct count and a sum tell missing from doubled rows.
"""

from __future__ import annotations

import errno
import random
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pytest
from confluent_kafka import Producer
from prometheus_client import REGISTRY

from pipeline import topics
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.config import Settings
from pipeline.envelope import ARROW, Envelope, encode_arrow
from pipeline.kafka import committed_offsets, end_offsets, group_reader, wait_for_group
from pipeline.query.views import connect
from pipeline.runner import LocalStack
from pipeline.sink.lake import ParquetLakeWriter, parse_file_name
from pipeline.stream.enrich import FlowEnricher
from tests.conftest import sink_in_thread, wait_until_sink_committed

pytestmark = pytest.mark.integration

T0 = 1_795_000_000 // 3600 * 3600 - 900  # batches straddle an hour boundary, so flushes write several hours
SEED = 20261127


def enriched_batches(rows: int, batch_rows: int, seed: int = 5) -> list[pa.Table]:
    """Enriched tables as the worker publishes them, ``bytes_in`` replaced by a unique flow id (1..rows)."""
    enricher = FlowEnricher()
    gen = SyntheticCluster(seed=seed, cluster="faults")
    out: list[pa.Table] = []
    next_id = 1
    for i, raw in enumerate(gen.generate(T0, T0 + 3600, rate=rows / 3600 * 1.5, batch_rows=batch_rows)):
        table = enricher.enrich(raw, batch_id=f"faults-{i}")
        table = table.slice(0, min(table.num_rows, rows - next_id + 1))
        ids = pa.array(range(next_id, next_id + table.num_rows), pa.int64())
        out.append(table.set_column(table.schema.get_field_index("bytes_in"), "bytes_in", ids))
        next_id += table.num_rows
        if next_id > rows:
            break
    assert next_id == rows + 1, "the generator made fewer flows than asked"
    return out


def truth(tables: list[pa.Table]) -> tuple[int, int, int]:
    n = sum(t.num_rows for t in tables)
    return n, n, n * (n + 1) // 2


def lake_rows(lake: str, **kw) -> tuple[int, int, int]:
    """(rows, distinct flow ids, sum of flow ids) in the lake's flows view."""
    row = connect(lake, **kw).execute(
        "SELECT count(*), count(DISTINCT bytes_in), coalesce(sum(bytes_in), 0) FROM flows").fetchone()
    return int(row[0]), int(row[1]), int(row[2])


def publish(settings: Settings, tables: list[pa.Table], pace: float = 0.0, first: int = 0) -> None:
    """Publish ``tables`` round-robin over the partitions; batch ids go on from ``first``."""
    producer = Producer({**settings.kafka_client_config(), "linger.ms": 5, "enable.idempotence": True})
    for i, table in enumerate(tables, start=first):
        env = Envelope("flow_enriched", "1", ARROW, table.num_rows, "faults", f"faults-{i}")
        producer.produce(topics.ENRICHED, value=encode_arrow(table), headers=env.headers(),
                         partition=i % settings.partitions)
        producer.poll(0)
        if pace:
            time.sleep(pace)
    assert producer.flush(30) == 0


def overlapping_ranges(paths: list[str]) -> list[tuple[str, str]]:
    """Pairs of files of one topic partition and hour whose offset ranges overlap (a doubled range)."""
    groups: dict[tuple, list] = {}
    for p in paths:
        f = parse_file_name(p)
        if f is not None:
            groups.setdefault((f.directory, f.topic, f.partition), []).append(f)
    bad = []
    for files in groups.values():
        files.sort(key=lambda f: f.first)
        bad += [(a.path, b.path) for a, b in zip(files, files[1:], strict=False) if b.first <= a.last]
    return bad


class LakeReader(threading.Thread):
    """Queries the lake over and over while the sink is being killed, and keeps what it saw go wrong."""

    def __init__(self, lake: str) -> None:
        super().__init__(daemon=True)
        self.lake = lake
        self.done = threading.Event()
        self.problems: list[str] = []
        self.queries = 0
        self.max_rows = 0

    def run(self) -> None:
        while not self.done.wait(1.0):
            paths = [str(p) for p in Path(self.lake, "flows").rglob("*")]
            partial = [p for p in paths if p.endswith(".parquet") and Path(p).name.startswith(".")]
            if partial:
                self.problems.append(f"temporary files visible to readers: {partial}")
            if bad := overlapping_ranges(paths):
                self.problems.append(f"doubled offset ranges: {bad}")
            try:
                rows, distinct, _ = lake_rows(self.lake)
            except Exception as exc:  # a partial file would fail the scan
                self.problems.append(f"query failed: {exc}")
                continue
            self.queries += 1
            if rows != distinct:
                self.problems.append(f"{rows} rows but {distinct} distinct flows: rows doubled")
            if rows < self.max_rows:
                self.problems.append(f"rows went down from {self.max_rows} to {rows}")
            self.max_rows = max(self.max_rows, rows)


def test_sigkill_at_20_random_points_loses_and_doubles_nothing(tmp_path: Path) -> None:
    """Each restarted sink joins under a new group name: it has no committed offsets, so its position
    comes from the lake's files alone, and it does not wait for the killed member's session to expire."""
    rng = random.Random(SEED)
    # 4 partitions x ~2.5 MiB stays under the embedded broker's ~5 MiB per partition, so replays find their data.
    tables = enriched_batches(rows=40_000, batch_rows=200)
    settings = Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), partitions=4,
                        sink_flush_seconds=0.3)
    kills: list[float] = []
    with LocalStack(settings, worker=False) as stack:
        publisher = threading.Thread(target=publish, args=(stack.settings, tables, 0.2), daemon=True)
        publisher.start()
        reader = LakeReader(settings.lake)
        reader.start()
        try:
            for k in range(20):
                probe = group_reader(stack.settings, stack.settings.sink_group)
                since = time.monotonic()
                # Kill while it works: once it has committed something since its (re)start, at a random moment.
                while (sum(committed_offsets(probe, topics.ENRICHED, settings.partitions).values()) == 0
                       and time.monotonic() - since < 15):
                    time.sleep(0.05)
                probe.close()
                time.sleep(rng.uniform(0.0, 0.5))
                kills.append(round(time.monotonic() - since, 2))
                stack.kill_role("sink", signal.SIGKILL)
                stack.settings = stack.settings.with_overrides(sink_group=f"{settings.sink_group}-restart-{k}")
                stack.start_role("sink")
            publisher.join(60)
            assert not publisher.is_alive()
            probe = group_reader(stack.settings, stack.settings.sink_group)
            targets = {topics.ENRICHED: end_offsets(probe, topics.ENRICHED)}
            probe.close()
            wait_for_group(stack.settings, stack.settings.sink_group, targets, timeout=60, what="sink")
        finally:
            reader.done.set()
            reader.join(10)
    context = f"seed {SEED}, kills at {kills} s after each restart"
    assert reader.problems == [], f"{context}: {reader.problems[:5]}"
    assert reader.queries > 0, context
    assert lake_rows(settings.lake) == truth(tables), context
    leftovers = [p for p in (tmp_path / "lake").rglob("*") if p.name.endswith(".tmp")]
    assert len(leftovers) <= 4, f"{context}: temporary files beyond one per partition: {leftovers}"


class FaultyLocalFileSystem(pafs.FileSystemHandler):
    """The local filesystem, failing writes with an OSError (ENOSPC by default) while ``fault`` is set.

    A write fails after its first bytes, as a filling disk does, so half-written files are left behind.
    """

    def __init__(self) -> None:
        self.local = pafs.LocalFileSystem()
        self.fault: OSError | None = None
        self.failed = 0

    def _check(self) -> None:
        if self.fault is not None:
            self.failed += 1
            raise self.fault

    def get_type_name(self) -> str:
        return "faulty-local"

    def equals(self, other) -> bool:
        return self is other

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError(errno.EPERM, "not on a lake")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self._check()
        self.local.move(src, dest)

    def copy_file(self, src, dest):
        self._check()
        self.local.copy_file(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        handler = self

        class FillingFile:
            def __init__(self) -> None:
                self.out = open(path, "wb")  # noqa: SIM115 - closed by close()
                self.closed = False

            def write(self, data) -> int:
                if handler.fault is not None and self.out.tell() > 0:
                    handler._check()
                return self.out.write(data)

            def flush(self) -> None:
                self.out.flush()

            def close(self) -> None:
                self.closed = True
                self.out.close()

        return pa.PythonFile(FillingFile(), mode="w")

    def open_append_stream(self, path, metadata):
        raise OSError(errno.EPERM, "the lake never appends")

    def normalize_path(self, path):
        return self.local.normalize_path(path)


def write_errors(table: str = "flows") -> float:
    return REGISTRY.get_sample_value("flowctl_sink_write_errors_total", {"table": table}) or 0.0


def run_through_fault(settings: Settings, writer: ParquetLakeWriter, fault_on: Callable[[], None],
                      fault_off: Callable[[], None], lake_files: Callable[[], list[str]],
                      tables: list[pa.Table]) -> Iterator[str]:
    """Run a sink (in this process, on ``writer``) through a write fault; yields what went wrong.

    Half the input is committed, the fault starts, the rest is published; while it lasts no offset
    may be committed past the newest durable file of its partition. Then the fault clears and
    everything must be committed.
    """
    with sink_in_thread(settings, writer) as (sink, runner):
        probe = group_reader(settings, settings.sink_group)
        errors_before = write_errors()
        try:
            half = len(tables) // 2
            publish(settings, tables[:half])
            wait_until_sink_committed(settings, timeout=60)
            fault_on()
            publish(settings, tables[half:], first=half)
            deadline = time.monotonic() + 20
            while sink.stats.write_errors < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            if sink.stats.write_errors < 3:
                yield "the sink did not retry the failing write"
            if write_errors() <= errors_before:
                yield "flowctl_sink_write_errors_total did not count the failures"
            for _ in range(10):  # the fault goes on: commits must stay behind the durable files
                committed = committed_offsets(probe, topics.ENRICHED, settings.partitions)  # read before the files
                durable: dict[int, int] = {}
                for path in lake_files():
                    f = parse_file_name(path)
                    if f is not None and f.topic.startswith(topics.ENRICHED):
                        durable[f.partition] = max(durable.get(f.partition, -1), f.last)
                for partition, offset in committed.items():
                    if offset > durable.get(partition, -1) + 1:
                        yield f"partition {partition} committed at {offset}, past its newest file ({durable.get(partition)})"
                time.sleep(0.2)
            if not runner.is_alive():
                yield "the sink died during the fault"
            fault_off()
            wait_until_sink_committed(settings, timeout=90)
        finally:
            probe.close()


def test_disk_full_stops_commits_and_loses_nothing_once_space_returns(tmp_path: Path, caplog) -> None:
    tables = enriched_batches(rows=20_000, batch_rows=500, seed=6)
    settings = Settings(lake=str(tmp_path / "lake"), state_dir=str(tmp_path / "state"), partitions=3,
                        sink_flush_seconds=0.2)
    with LocalStack(settings, worker=False, sink=False) as stack:
        writer = ParquetLakeWriter(stack.settings.lake)
        disk = FaultyLocalFileSystem()
        writer.fs = pafs.PyFileSystem(disk)

        def fault_on() -> None:
            disk.fault = OSError(errno.ENOSPC, "No space left on device")

        def fault_off() -> None:
            disk.fault = None

        def files() -> list[str]:
            return [str(p) for p in (tmp_path / "lake" / "flows").rglob("*.parquet")]

        problems = list(run_through_fault(stack.settings, writer, fault_on, fault_off, files, tables))
    assert problems == []
    assert disk.failed > 0
    assert "LAKE WRITE FAILED" in caplog.text and "No space left on device" in caplog.text
    assert lake_rows(settings.lake) == truth(tables)
    assert not [p for p in (tmp_path / "lake").rglob("*") if p.name.endswith(".tmp")], "half-written files left"
