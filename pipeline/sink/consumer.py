"""The sink role: consume enriched flows, windows and dead letters and commit them to the lake.

Durability is decided in one place, :meth:`LakeSink.flush`: write the files,
rename them, then commit the offsets. On (re)assignment the position comes
from the lake itself: the newest file range of each partition is replayed to
exactly the same last offset, so a crash between renames heals itself.

A write that fails (disk full, permissions, object store errors) commits
nothing: the partition keeps its buffer, is paused, and the same offsets are
written again after a backoff, so nothing is lost once the fault clears.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    TopicPartition,
)

from pipeline import metrics, topics
from pipeline.broker.embedded import FETCH_WAIT_MS
from pipeline.config import Settings
from pipeline.conform import parse_ndjson
from pipeline.envelope import ARROW, Envelope, EnvelopeError, decode_arrow, split_ndjson
from pipeline.schema import arrow_schema
from pipeline.sink.lake import LakeWriteError, ParquetLakeWriter

log = logging.getLogger(__name__)

SINK_TOPICS = (topics.ENRICHED, topics.WINDOWED, topics.DLQ)
SCHEMA_OF_TABLE = {"flows": "flow_enriched.v1", "flow_windows": "flow_window.v1", "dlq": "dlq_record.v1"}
# Decoding and Parquet encoding release the GIL; a thread per core runs them side by side.
THREADS = max(2, min(4, os.cpu_count() or 2))
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 30.0


@dataclass
class PartitionBuffer:
    """One partition's messages since its last flush, kept as they came (decoded when written)."""
    # (offset, envelope, value, Kafka timestamp in seconds)
    bodies: list[tuple[int, Envelope, bytes, int]] = field(default_factory=list)
    first: int = -1
    last: int = -1
    rows: int = 0  # as the envelopes count them (the count header)
    since: float = 0.0
    replay_until: int = -1  # after a restart: flush exactly at this offset to rewrite the same file names
    replay_from: int = -1  # first offset of the replayed range
    failures: int = 0  # consecutive failed writes of this buffer
    retry_at: float = 0.0

    def add(self, offset: int, env: Envelope | None, value: bytes | None, timestamp: int = 0) -> None:
        """Buffer a message; ``env`` None (a duplicate batch) or an empty value only advances the offsets."""
        if self.first < 0:
            self.first = offset
            self.since = time.monotonic()
        self.last = offset
        if env is not None and value:
            self.bodies.append((offset, env, value, timestamp))
            self.rows += env.count


@dataclass
class SinkStats:
    messages: int = 0
    rows: int = 0
    files: int = 0
    flushes: int = 0
    duplicates: int = 0
    undecodable: int = 0
    offset_gaps: int = 0
    lost_messages: int = 0
    write_errors: int = 0


class LakeSink:
    def __init__(self, settings: Settings, consumer_overrides: dict | None = None,
                 writer: ParquetLakeWriter | None = None) -> None:
        self.settings = settings
        self.writer = writer or ParquetLakeWriter.from_settings(settings)
        self.stats = SinkStats()
        self.buffers: dict[tuple[str, int], PartitionBuffer] = {}
        self.next_offset: dict[tuple[str, int], int] = {}
        self._seen_batches: dict[str, None] = {}
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(THREADS, thread_name_prefix="sink")
        self._schemas = {table: arrow_schema(name) for table, name in SCHEMA_OF_TABLE.items()}
        self.consumer = Consumer({
            **settings.kafka_client_config(),
            "group.id": settings.sink_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
            "queued.max.messages.kbytes": 256 * 1024,
            **({"fetch.wait.max.ms": FETCH_WAIT_MS} if settings.on_embedded_broker else {}),
            **(consumer_overrides or {}),
        })

    # -- assignment ---------------------------------------------------------

    def file_topic(self, topic: str) -> str:
        """The topic as written in lake file names."""
        return f"{topic}@{self.settings.lake_source_id}" if self.settings.lake_source_id else topic

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        committed = {(tp.topic, tp.partition): tp.offset for tp in consumer.committed(partitions, timeout=30)}
        for tp in partitions:
            table = topics.TABLE_OF_TOPIC[tp.topic]
            removed = self.writer.remove_temporary(table, self.file_topic(tp.topic), tp.partition)
            if removed:
                log.warning("removed %d temporary files of %s[%d] left by an interrupted write",
                            removed, tp.topic, tp.partition)
            done = committed.get((tp.topic, tp.partition), -1001)
            last = self.writer.last_range(table, self.file_topic(tp.topic), tp.partition)
            buf = PartitionBuffer()
            if last is not None and done <= last.last:
                tp.offset = last.first
                buf.replay_until = last.last
                buf.replay_from = last.first
                log.info("%s[%d]: replaying offsets %d..%d from the lake's newest file", tp.topic, tp.partition,
                         last.first, last.last)
            elif done >= 0:
                tp.offset = done
            else:
                tp.offset = OFFSET_BEGINNING
            self.buffers[(tp.topic, tp.partition)] = buf
            # Where consumption must continue; a first message beyond it means the broker dropped data.
            start = tp.offset if tp.offset >= 0 else (0 if self.settings.on_embedded_broker else None)
            if start is None:
                self.next_offset.pop((tp.topic, tp.partition), None)
            else:
                self.next_offset[(tp.topic, tp.partition)] = start
        consumer.assign(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        keys = [(tp.topic, tp.partition) for tp in partitions if (tp.topic, tp.partition) in self.buffers]
        self.flush(keys, force=True)
        for key in keys:
            # Whatever is still unwritten (a failing write) is the next owner's: it starts from the commit.
            del self.buffers[key]

    # -- consuming ----------------------------------------------------------

    def _wanted(self, topic: str, headers) -> Envelope | None:
        """The message's envelope, or None for a batch already consumed (a producer retry)."""
        env = Envelope.from_headers(headers)
        if topic in (topics.ENRICHED, topics.WINDOWED) and env.batch_id:
            if env.batch_id in self._seen_batches:
                self.stats.duplicates += 1
                metrics.SINK_DUPLICATES.inc()
                return None
            self._seen_batches[env.batch_id] = None
            if len(self._seen_batches) > 200_000:
                for old in list(self._seen_batches)[:20_000]:
                    del self._seen_batches[old]
        return env

    def _decode(self, topic: str, value: bytes, env: Envelope) -> pa.Table:
        table_name = topics.TABLE_OF_TOPIC[topic]
        if env.content_type == ARROW:
            table = decode_arrow(value, use_threads=False)  # the pool already writes partitions side by side
            schema = self._schemas[table_name]
            return table if table.schema.equals(schema) else table.cast(schema)
        result = parse_ndjson(split_ndjson(value), SCHEMA_OF_TABLE[table_name])
        if result.rejects:
            raise EnvelopeError(f"{len(result.rejects)} records do not fit {SCHEMA_OF_TABLE[table_name]}: "
                                f"{result.rejects[0].reason}")
        return result.table

    def _decode_buffer(self, key: tuple[str, int], buf: PartitionBuffer) -> tuple[list[pa.Table], list[dict]]:
        """The buffer's messages as tables, and a dead-letter record for each message that cannot be decoded."""
        tables, dead = [], []
        for offset, env, value, timestamp in buf.bodies:
            try:
                table = self._decode(key[0], value, env)
            except (EnvelopeError, pa.ArrowException) as exc:
                # Our own worker wrote this; a message we cannot read is a bug to report, not to drop quietly.
                log.error("cannot decode %s[%d]@%d, skipped: %s", key[0], key[1], offset, exc)
                dead.append({
                    "reason": f"undecodable {topics.TABLE_OF_TOPIC[key[0]]} message: {exc}",
                    "source_topic": key[0], "source_partition": key[1], "source_offset": offset,
                    "batch_id": env.batch_id or None, "row": None, "record": None, "raw": None,
                    # The message's own time, so a replay writes the record to the same hour and file.
                    "dlq_time": timestamp or int(time.time()),
                })
                continue
            if table.num_rows:
                tables.append(table)
        return tables, dead

    def _check_gap(self, key: tuple[str, int], offset: int) -> None:
        expected = self.next_offset.get(key)
        self.next_offset[key] = offset + 1
        if expected is not None and offset > expected:
            lost = offset - expected
            self.stats.offset_gaps += 1
            self.stats.lost_messages += lost
            metrics.OFFSET_GAPS.labels("sink").inc()
            metrics.LOST_MESSAGES.labels("sink").inc(lost)
            log.error("OFFSET GAP on %s[%d]: expected offset %d, got %d: %d messages never reached the lake",
                      key[0], key[1], expected, offset, lost)

    def poll_once(self, timeout: float = 0.2) -> int:
        msgs = self.consumer.consume(num_messages=1000, timeout=timeout)
        rewound: set[tuple[str, int]] = set()
        for msg in msgs:
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    continue
                if err.fatal():
                    raise KafkaException(err)
                log.warning("consumer error: %s", err)
                continue
            key = (msg.topic(), msg.partition())
            if key not in self.buffers or key in rewound:
                continue
            self._check_gap(key, msg.offset())
            if self.buffers[key].replay_until >= 0 and msg.offset() > self.buffers[key].replay_until:
                if not self._finish_replay(key, msg.offset()):
                    rewound.add(key)
                    continue
            # Decoded when written: a buffered row then costs its compressed bytes, not ~1 KB of Arrow memory.
            kind, ts = msg.timestamp()
            self.buffers[key].add(msg.offset(), self._wanted(msg.topic(), msg.headers()), msg.value(),
                                  ts // 1000 if kind != TIMESTAMP_NOT_AVAILABLE and ts > 0 else 0)
            self.stats.messages += 1
        self.flush_due()
        return len(msgs)

    def _finish_replay(self, key: tuple[str, int], offset: int) -> bool:
        """Write a replayed range before buffering ``offset``, past its end; False if that write failed.

        A poll can bring offsets beyond the replayed range; buffered together they would be written
        under a larger name than the file being replaced. On failure the partition is read again from
        ``offset`` once the write succeeds.
        """
        buf = self.buffers[key]
        if buf.first < 0:
            log.error("%s[%d]: cannot replay offsets %d..%d, Kafka no longer has them; keeping the lake's files "
                      "of that range as they are", key[0], key[1], buf.replay_from, buf.replay_until)
            self.buffers[key] = PartitionBuffer()
            return True
        if 0 <= buf.last < buf.replay_until:
            buf.replay_until = buf.last  # offsets missing at the end (a gap): the shorter file is covered, never read twice
        self.flush([key])
        if self.buffers[key].replay_until < 0:
            return True
        self.consumer.seek(TopicPartition(key[0], key[1], offset))
        self.next_offset[key] = offset
        return False

    def _due(self, buf: PartitionBuffer, now: float) -> bool:
        if buf.first < 0 or (buf.failures and now < buf.retry_at):
            return False
        if buf.replay_until >= 0:
            return buf.last >= buf.replay_until
        return (buf.failures > 0 or buf.rows >= self.settings.sink_flush_rows
                or now - buf.since >= self.settings.sink_flush_seconds)

    def flush_due(self) -> None:
        now = time.monotonic()
        due = [key for key, buf in self.buffers.items() if self._due(buf, now)]
        if due:
            self.flush(due)

    # -- durability ----------------------------------------------------------

    def _write(self, key: tuple[str, int]) -> tuple[list[str], int, int] | LakeWriteError:
        """Decode and write one partition's buffer as lake files: (paths, rows, undecodable messages).

        Messages that cannot be decoded become ``dlq`` rows in a file named after the same offsets,
        written before the offsets are committed like the rest. Runs on the pool, so it only
        touches that buffer.
        """
        topic, partition = key
        buf = self.buffers[key]
        table_name = topics.TABLE_OF_TOPIC[topic]
        tables, dead = self._decode_buffer(key, buf)
        dead_table = pa.Table.from_pylist(dead, schema=self._schemas["dlq"]) if dead else None
        if dead_table is not None and table_name == "dlq":
            tables.append(dead_table)  # same table, same file name: one file
            dead_table = None
        paths: list[str] = []
        rows = 0
        try:
            if tables:
                table = pa.concat_tables(tables)
                paths += self.writer.write(table_name, self.file_topic(topic), partition, buf.first, buf.last, table)
                rows = table.num_rows
            if dead_table is not None:
                paths += self.writer.write("dlq", self.file_topic(topic), partition, buf.first, buf.last, dead_table)
                metrics.SINK_ROWS.labels("dlq").inc(len(dead))
        except LakeWriteError as exc:
            return exc
        return paths, rows, len(dead)

    def flush(self, keys: Sequence[tuple[str, int]], force: bool = False) -> None:
        """Write the partitions' buffers to the lake (renamed into place), then commit their offsets.

        A partition whose write fails is not committed: it keeps its buffer, is paused, and is
        written again after a backoff.
        """
        ready: list[tuple[str, int]] = []
        for key in keys:
            buf = self.buffers.get(key)
            if buf is None or buf.first < 0:
                continue
            if buf.replay_until >= 0 and buf.last < buf.replay_until:
                if force:
                    # A partial replay would name a file differently from the one it replaces: leave it
                    # to the next owner of the partition, which replays the whole range again.
                    self.buffers[key] = PartitionBuffer(replay_until=buf.replay_until)
                continue
            if buf.replay_until >= 0 and buf.first > buf.replay_from:
                # The start of the range is no longer in Kafka (retention): a partial rewrite would name a file
                # differently and double the rows of the one already there. Keep the lake's files as they are.
                log.error("%s[%d]: cannot replay offsets %d..%d, Kafka no longer has %d..%d; keeping the lake's "
                          "files of that range as they are (parts of it that were never renamed are lost)",
                          key[0], key[1], buf.replay_from, buf.replay_until, buf.replay_from, buf.first - 1)
                buf.bodies.clear()
            ready.append(key)
        commits: list[TopicPartition] = []
        for key, result in zip(ready, self._pool.map(self._write, ready), strict=True):
            topic, partition = key
            table_name = topics.TABLE_OF_TOPIC[topic]
            buf = self.buffers[key]
            if isinstance(result, LakeWriteError):
                self._write_failed(key, buf, result)
                continue
            paths, rows, undecodable = result
            self.stats.undecodable += undecodable
            self.stats.files += len(paths)
            self.stats.rows += rows
            metrics.SINK_FILES.labels(table_name).inc(len(paths))
            metrics.SINK_ROWS.labels(table_name).inc(rows)
            if buf.failures:
                log.warning("%s[%d]: lake write succeeded after %d failed attempts; resuming", topic, partition,
                            buf.failures)
                self.consumer.resume([TopicPartition(topic, partition)])
            commits.append(TopicPartition(topic, partition, buf.last + 1))
            self.buffers[key] = PartitionBuffer()
        if commits:
            try:
                self.consumer.commit(offsets=commits, asynchronous=False)
            except KafkaException as exc:
                # The files are in place; a later commit covers these offsets, a restart replays the same names.
                log.warning("commit of %d partitions failed, the next flush commits them: %s", len(commits), exc)
            self.stats.flushes += 1

    def _write_failed(self, key: tuple[str, int], buf: PartitionBuffer, exc: LakeWriteError) -> None:
        topic, partition = key
        if not buf.failures:
            # Stop fetching: the buffer waits for the lake instead of growing without bound.
            self.consumer.pause([TopicPartition(topic, partition)])
        buf.failures += 1
        delay = min(RETRY_MAX_SECONDS, RETRY_FIRST_SECONDS * 2 ** (buf.failures - 1))
        buf.retry_at = time.monotonic() + delay
        self.stats.write_errors += 1
        metrics.SINK_WRITE_ERRORS.labels(topics.TABLE_OF_TOPIC[topic]).inc()
        log.error("LAKE WRITE FAILED for %s[%d] offsets %d..%d (attempt %d), nothing committed; partition paused, "
                  "retrying in %.1fs: %s", topic, partition, buf.first, buf.last, buf.failures, delay, exc)

    def flush_all(self) -> None:
        self.flush(list(self.buffers), force=True)

    def run(self, stop: threading.Event | None = None, install_signals: bool = False) -> SinkStats:
        stop = stop or self._stop
        if install_signals:
            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, lambda *_: stop.set())
        self.consumer.subscribe(list(SINK_TOPICS), on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not stop.is_set():
                self.poll_once()
            self.flush_all()
        finally:
            self.consumer.close()
            self._pool.shutdown()
        return self.stats

    def stop(self) -> None:
        self._stop.set()
