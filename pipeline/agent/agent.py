"""The node agent: conformed flow batches in, Arrow batch envelopes on flows.raw.v1 out.

Records a source cannot map into the canonical schema are dead-lettered by the
agent itself, with the reason and the original record, so nothing disappears
between the log file and the lake.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import Producer

from pipeline import metrics, topics
from pipeline.agent.publisher import BatchPublisher, DeliveryTracker, PublishError, producer_config
from pipeline.agent.spool import Outbox, Spool
from pipeline.config import Settings
from pipeline.conform import Reject
from pipeline.envelope import NDJSON, Envelope, encode_ndjson, new_batch_id
from pipeline.stream.processor import _json, _raw_text

log = logging.getLogger(__name__)


@dataclass
class AgentStats:
    records: int = 0
    published: int = 0
    rejected: int = 0
    batches: int = 0


# A dead-letter message stays well below the producer's message.max.bytes.
_DLQ_MESSAGE_BYTES = 1 << 20


class FlowAgent:
    """Publishes flows and dead letters; with ``spool_dir`` (and ``agent_spool_max_bytes`` > 0) batches that
    Kafka does not confirm within ``agent_spool_after_seconds`` wait in an on-disk spool (pipeline/agent/spool.py)."""

    def __init__(self, settings: Settings, backpressure: bool | None = None, track_batches: bool = True,
                 spool_dir: str | Path | None = None) -> None:
        self.settings = settings
        spooling = spool_dir is not None and settings.agent_spool_max_bytes > 0
        delivery_timeout = settings.agent_spool_after_seconds if spooling else 300.0
        # One numbering for flows and dead letters: a source position is confirmed when both are.
        self.tracker = DeliveryTracker()
        self.publisher = BatchPublisher(settings, backpressure=backpressure, tracker=self.tracker,
                                        track_batches=track_batches, delivery_timeout=delivery_timeout)
        self._dlq = Producer(producer_config(settings, delivery_timeout))
        self.spool = Spool(spool_dir, settings.agent_spool_max_bytes) if spooling else None
        self.outbox = Outbox({self.publisher.topic: self.publisher.producer, topics.DLQ: self._dlq}, self.tracker,
                             self.spool, has_room=self.publisher.has_room, on_replay=self.publisher.record_replayed)
        self.publisher.outbox = self.outbox
        self.stats = AgentStats()

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
        self.outbox.send(topics.DLQ, encode_ndjson(chunk), headers=env.headers())

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports (spooling and replaying as needed); returns the ticket up to which every
        message is confirmed by Kafka or durably spooled."""
        confirmed = self.outbox.poll(timeout)
        self.outbox.raise_failures(PublishError)
        return confirmed

    def finish(self, flush_windows: bool = False, timeout: float = 120.0) -> None:
        """Wait for Kafka to confirm everything; optionally tell the worker to close all windows.

        With a spool, what Kafka has not taken by ``timeout`` stays spooled (durable) for the next run."""
        if flush_windows:
            self.publisher.send_control("flush")
        if self.spool is not None:
            if not self.outbox.drain(timeout):
                log.warning("Kafka did not take the backlog within %.0fs: %.1f MiB stay in the spool %s and are "
                            "sent when the agent runs again", timeout, self.spool.bytes / 2**20, self.spool.directory)
            return
        self.publisher.flush(timeout)
        if self._dlq.flush(timeout):
            raise PublishError("dead letters not confirmed by Kafka")
        self.outbox.raise_failures(PublishError)

    def close(self) -> None:
        """Release the Kafka clients (their threads would otherwise outlive an embedded broker) and the spool."""
        self.publisher.close()
        self.publisher.producer = None  # type: ignore[assignment]
        self._dlq = None  # type: ignore[assignment]
        self.outbox.producers = {}
        if self.spool is not None:
            self.spool.close()
