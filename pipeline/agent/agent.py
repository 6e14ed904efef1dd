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

from pipeline import topics
from pipeline.agent.publisher import BatchPublisher, PublishError, producer_config
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


class FlowAgent:
    def __init__(self, settings: Settings, backpressure: bool | None = None) -> None:
        self.settings = settings
        self.publisher = BatchPublisher(settings, backpressure=backpressure)
        self._dlq = Producer(producer_config(settings))
        self.stats = AgentStats()
        self._dlq_failures: list[str] = []

    def publish(self, table: pa.Table) -> None:
        """Publish a conformed flowlog.v1 table; fills ``cluster`` where the source left it empty."""
        if table.num_rows == 0:
            return
        if self.settings.cluster and "cluster" in table.column_names:
            cluster = pc.if_else(pc.equal(table["cluster"], ""), self.settings.cluster, table["cluster"])
            table = table.set_column(table.schema.get_field_index("cluster"), table.schema.field("cluster"),
                                     cluster)
        before = self.publisher.stats.batches
        self.publisher.publish(table)
        self.stats.records += table.num_rows
        self.stats.published += table.num_rows
        self.stats.batches += self.publisher.stats.batches - before

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
        env = Envelope("dlq_record", "1", NDJSON, len(records), self.settings.node, batch_id)
        for start in range(0, len(records), 1000):
            chunk = records[start:start + 1000]
            self._dlq.produce(topics.DLQ, value=encode_ndjson(chunk), headers=env.headers(),
                              on_delivery=self._on_dlq_delivery)
            self._dlq.poll(0)
        self.stats.records += len(rejects)
        self.stats.rejected += len(rejects)

    def _on_dlq_delivery(self, err, msg) -> None:
        if err is not None:
            self._dlq_failures.append(str(err))

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
