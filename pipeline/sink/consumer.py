"""The sink role: consume enriched flows, windows and dead letters and commit them to the lake.

Durability is decided in one place, :meth:`LakeSink.flush`: write the files,
rename them, then commit the offsets. On (re)assignment the position comes
from the lake itself: the newest file range of each partition is replayed to
exactly the same last offset, so a crash between renames heals itself.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from dataclasses import dataclass, field

import pyarrow as pa
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from pipeline import metrics, topics
from pipeline.config import Settings
from pipeline.conform import parse_ndjson
from pipeline.envelope import ARROW, Envelope, EnvelopeError, decode_arrow, split_ndjson
from pipeline.schema import arrow_schema
from pipeline.sink.lake import ParquetLakeWriter

log = logging.getLogger(__name__)

SINK_TOPICS = (topics.ENRICHED, topics.WINDOWED, topics.DLQ)
SCHEMA_OF_TABLE = {"flows": "flow_enriched.v1", "flow_windows": "flow_window.v1", "dlq": "dlq_record.v1"}


@dataclass
class PartitionBuffer:
    tables: list[pa.Table] = field(default_factory=list)
    first: int = -1
    last: int = -1
    rows: int = 0
    since: float = 0.0
    replay_until: int = -1  # after a restart: flush exactly at this offset to rewrite the same file names
    replay_from: int = -1  # first offset of the replayed range

    def add(self, offset: int, table: pa.Table | None) -> None:
        if self.first < 0:
            self.first = offset
            self.since = time.monotonic()
        self.last = offset
        if table is not None and table.num_rows:
            self.tables.append(table)
            self.rows += table.num_rows


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


class LakeSink:
    def __init__(self, settings: Settings, consumer_overrides: dict | None = None) -> None:
        self.settings = settings
        self.writer = ParquetLakeWriter.from_settings(settings)
        self.stats = SinkStats()
        self.buffers: dict[tuple[str, int], PartitionBuffer] = {}
        self.next_offset: dict[tuple[str, int], int] = {}
        self._seen_batches: dict[str, None] = {}
        self._stop = threading.Event()
        self.consumer = Consumer({
            **settings.kafka_client_config(),
            "group.id": settings.sink_group,
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.max.bytes": 64 * 1024 * 1024,
            "max.partition.fetch.bytes": 16 * 1024 * 1024,
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
        for tp in partitions:
            key = (tp.topic, tp.partition)
            if key in self.buffers:
                self.flush(key, force=True)
                del self.buffers[key]

    # -- consuming ----------------------------------------------------------

    def _decode(self, topic: str, value: bytes, headers) -> pa.Table | None:
        env = Envelope.from_headers(headers)
        table_name = topics.TABLE_OF_TOPIC[topic]
        if topic in (topics.ENRICHED, topics.WINDOWED) and env.batch_id:
            if env.batch_id in self._seen_batches:
                self.stats.duplicates += 1
                metrics.SINK_DUPLICATES.inc()
                return None
            self._seen_batches[env.batch_id] = None
            if len(self._seen_batches) > 200_000:
                for old in list(self._seen_batches)[:20_000]:
                    del self._seen_batches[old]
        if not value:
            return None
        if env.content_type == ARROW:
            table = decode_arrow(value)
            return table.cast(arrow_schema(SCHEMA_OF_TABLE[table_name]))
        result = parse_ndjson(split_ndjson(value), SCHEMA_OF_TABLE[table_name])
        if result.rejects:
            raise EnvelopeError(f"{len(result.rejects)} records do not fit {SCHEMA_OF_TABLE[table_name]}: "
                                f"{result.rejects[0].reason}")
        return result.table

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
            buf = self.buffers.get(key)
            if buf is None:
                continue
            self._check_gap(key, msg.offset())
            try:
                table = self._decode(msg.topic(), msg.value(), msg.headers())
            except (EnvelopeError, pa.ArrowException) as exc:
                # Our own worker wrote this; a message we cannot read is a bug to report, not to drop quietly.
                self.stats.undecodable += 1
                log.error("cannot decode %s[%d]@%d, skipped: %s", key[0], key[1], msg.offset(), exc)
                table = None
            buf.add(msg.offset(), table)
            self.stats.messages += 1
        self.flush_due()
        return len(msgs)

    def flush_due(self) -> None:
        now = time.monotonic()
        for key, buf in list(self.buffers.items()):
            if buf.first < 0:
                continue
            if buf.replay_until >= 0:
                if buf.last >= buf.replay_until:
                    self.flush(key)
                continue
            if buf.rows >= self.settings.sink_flush_rows or now - buf.since >= self.settings.sink_flush_seconds:
                self.flush(key)

    def flush(self, key: tuple[str, int], force: bool = False) -> None:
        """Write the partition's buffer to the lake, rename, then commit its offsets."""
        buf = self.buffers.get(key)
        if buf is None or buf.first < 0:
            return
        if buf.replay_until >= 0 and buf.last < buf.replay_until:
            if force:
                # A partial replay would name a file differently from the one it replaces: leave it
                # to the next owner of the partition, which replays the whole range again.
                self.buffers[key] = PartitionBuffer(replay_until=buf.replay_until)
            return
        topic, partition = key
        if buf.replay_until >= 0 and buf.first > buf.replay_from:
            # The start of the range is no longer in Kafka (retention): a partial rewrite would name a file
            # differently and double the rows of the one already there. Keep the lake's files as they are.
            log.error("%s[%d]: cannot replay offsets %d..%d, Kafka no longer has %d..%d; keeping the lake's files "
                      "of that range as they are (parts of it that were never renamed are lost)",
                      topic, partition, buf.replay_from, buf.replay_until, buf.replay_from, buf.first - 1)
            buf.tables.clear()
        if buf.tables:
            table = pa.concat_tables(buf.tables)
            paths = self.writer.write(topics.TABLE_OF_TOPIC[topic], self.file_topic(topic), partition,
                                      buf.first, buf.last, table)
            self.stats.files += len(paths)
            self.stats.rows += table.num_rows
            metrics.SINK_FILES.labels(topics.TABLE_OF_TOPIC[topic]).inc(len(paths))
            metrics.SINK_ROWS.labels(topics.TABLE_OF_TOPIC[topic]).inc(table.num_rows)
        self.consumer.commit(offsets=[TopicPartition(topic, partition, buf.last + 1)], asynchronous=False)
        self.stats.flushes += 1
        self.buffers[key] = PartitionBuffer()

    def flush_all(self) -> None:
        for key in list(self.buffers):
            self.flush(key, force=True)

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
        return self.stats

    def stop(self) -> None:
        self._stop.set()
