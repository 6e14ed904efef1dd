"""The node agent: conformed flow batches in, Arrow batch envelopes on flows.raw.v1 out.

Records a source cannot map into the canonical schema are dead-lettered by the
agent itself, with the reason and the original record, so nothing disappears
between the log file and the lake.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Producer

from pipeline import metrics, topics
from pipeline.agent.publisher import BatchPublisher, DeliveryTracker, PublishError, producer_config
from pipeline.config import Settings
from pipeline.conform import Reject
from pipeline.envelope import NDJSON, Envelope, encode_ndjson, new_batch_id
from pipeline.stream.processor import _json, _raw_text


@dataclass
class AgentStats:
    records: int = 0
    published: int = 0
    rejected: int = 0
    batches: int = 0


# A dead-letter message stays well below the producer's message.max.bytes.
_DLQ_MESSAGE_BYTES = 1 << 20


class FlowAgent:
    def __init__(self, settings: Settings, backpressure: bool | None = None, track_batches: bool = True) -> None:
        self.settings = settings
        # One numbering for flows and dead letters: a source position is confirmed when both are.
        self.tracker = DeliveryTracker()
        self.publisher = BatchPublisher(settings, backpressure=backpressure, tracker=self.tracker,
                                        track_batches=track_batches)
        self._dlq = Producer(producer_config(settings))
        self.stats = AgentStats()
        self._dlq_failures: list[str] = []

    def publish(self, table: pa.Table, batch_key: str | None = None) -> None:
        """Publish a conformed flowlog.v1 table; fills ``cluster`` where the source left it empty.

        ``batch_key`` (a source range) makes the batch ids deterministic; see BatchPublisher.publish."""
        if table.num_rows == 0:
            return
        if self.settings.cluster and "cluster" in table.column_names:
            cluster = pc.if_else(pc.equal(table["cluster"], ""), self.settings.cluster, table["cluster"])
            table = table.set_column(table.schema.get_field_index("cluster"), table.schema.field("cluster"),
                                     cluster)
        before = self.publisher.stats.batches
        self.publisher.publish(table, batch_key=batch_key)
        self.stats.records += table.num_rows
        self.stats.published += table.num_rows
        self.stats.batches += self.publisher.stats.batches - before
        metrics.AGENT_PUBLISHED.inc(table.num_rows)
        metrics.AGENT_BATCHES.inc(self.publisher.stats.batches - before)

    def dead_letter(self, rejects: list[Reject], origin: str) -> None:
        """Send records the source could not map to the DLQ topic."""
        if not rejects:
            return
        now = int(time.time())
        batch_id = new_batch_id()
        records = [{
            "reason": r.reason, "source_topic": origin, "source_partition": 0,
            "source_offset": r.row if r.row is not None else -1, "batch_id": batch_id, "row": r.row,
            "record": None if r.record is None else _json(r.record),
            "raw": _raw_text(r.raw) if r.record is None else None, "dlq_time": now,
        } for r in rejects]
        chunk: list[dict] = []
        size = 0
        for rec in records:
            encoded = len(rec["raw"] or "") + len(rec["record"] or "") + 256
            if chunk and size + encoded > _DLQ_MESSAGE_BYTES:
                self._send_dead_letters(chunk, batch_id)
                chunk, size = [], 0
            chunk.append(rec)
            size += encoded
        if chunk:
            self._send_dead_letters(chunk, batch_id)
        self.stats.records += len(rejects)
        self.stats.rejected += len(rejects)
        metrics.AGENT_REJECTED.inc(len(rejects))

    def _send_dead_letters(self, chunk: list[dict], batch_id: str) -> None:
        env = Envelope("dlq_record", "1", NDJSON, len(chunk), self.settings.node, batch_id)
        tracked = self.tracker.callback(self.tracker.issue())

        def on_delivery(err, msg) -> None:
            tracked(err, msg)
            if err is not None:
                self._dlq_failures.append(str(err))

        value = encode_ndjson(chunk)
        while True:
            try:
                self._dlq.produce(topics.DLQ, value=value, headers=env.headers(), on_delivery=on_delivery)
                break
            except BufferError:
                self._dlq.poll(0.1)
        self._dlq.poll(0)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports; returns the ticket up to which Kafka confirmed everything."""
        self.publisher.producer.poll(timeout)
        self._dlq.poll(0)
        if self._dlq_failures:
            raise PublishError(f"Kafka rejected {len(self._dlq_failures)} dead-letter batches: {self._dlq_failures[0]}")
        self.publisher._raise_failures()
        return self.tracker.confirmed_through

    def finish(self, flush_windows: bool = False) -> None:
        """Wait for Kafka to confirm everything; optionally tell the worker to close all windows."""
        if flush_windows:
            self.publisher.send_control("flush")
        self.publisher.flush()
        if self._dlq.flush(120):
            raise PublishError("dead letters not confirmed by Kafka")
        if self._dlq_failures:
            raise PublishError(f"Kafka rejected {len(self._dlq_failures)} dead-letter batches: {self._dlq_failures[0]}")

    def close(self) -> None:
        """Release the Kafka clients (their threads would otherwise outlive an embedded broker)."""
        self.publisher.close()
        self.publisher.producer = None  # type: ignore[assignment]
        self._dlq = None  # type: ignore[assignment]
