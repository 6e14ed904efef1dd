"""Publish conformed flow tables to flows.raw.v1 as Arrow IPC batch envelopes.

Rows are grouped per target partition (key = source workload,
``namespace/name_aggr``, partitioned as Kafka's murmur2 partitioner would),
so every flow of one workload lands on one partition and the worker's windows
need no repartition.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaError, Producer

from pipeline import topics
from pipeline.config import Settings
from pipeline.envelope import ARROW, Envelope, encode_arrow, new_batch_id
from pipeline.kafka import LagGuard, partition_for

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """Kafka did not confirm some batches; nothing may be reported as delivered."""


def producer_config(settings: Settings) -> dict[str, object]:
    return {
        **settings.kafka_client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.compression,
        "linger.ms": 20,
        "batch.size": 4 * 1024 * 1024,
        "message.max.bytes": 8 * 1024 * 1024,
        "queue.buffering.max.kbytes": 256 * 1024,
        "delivery.timeout.ms": 300_000,
    }


def source_keys(table: pa.Table) -> pa.ChunkedArray:
    """The partition key of every row: ``source_namespace/source_name_aggr``."""
    return pc.binary_join_element_wise(table["source_namespace"], table["source_name_aggr"], "/")


def partition_rows(table: pa.Table, partitions: int) -> np.ndarray:
    """Target partition of every row; the hash runs once per distinct workload, not per row."""
    encoded = source_keys(table).combine_chunks().dictionary_encode()
    per_key = np.array([partition_for(k.encode(), partitions) for k in encoded.dictionary.to_pylist()],
                       dtype=np.int32)
    return per_key[encoded.indices.to_numpy(zero_copy_only=False)] if len(per_key) else np.zeros(0, np.int32)


@dataclass
class PublishStats:
    batches: int = 0
    records: int = 0
    bytes: int = 0
    backpressure_waits: float = 0.0


class BatchPublisher:
    """Sends flow batches with delivery confirmation; ``flush`` raises if any batch failed."""

    def __init__(self, settings: Settings, node: str = "", topic: str = topics.RAW,
                 backpressure: bool | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.node = node or settings.node
        self.producer = Producer(producer_config(settings))
        self.stats = PublishStats()
        self._failed: list[str] = []
        self._partitions = self._partition_count()
        # The embedded broker drops the oldest data beyond ~5 MiB per partition: wait for consumers.
        self._backpressure = settings.on_embedded_broker if backpressure is None else backpressure
        self._guard = LagGuard(settings, topic, settings.worker_group, settings.max_lag_bytes) \
            if self._backpressure else None
        self.batch_ids: list[str] = []

    def _partition_count(self) -> int:
        meta = self.producer.list_topics(self.topic, timeout=15)
        t = meta.topics.get(self.topic)
        if t is None or t.error is not None or not t.partitions:
            raise PublishError(f"topic {self.topic} does not exist; create it first (flowctl broker / ensure_topics)")
        return len(t.partitions)

    @property
    def partitions(self) -> int:
        return self._partitions

    def _on_delivery(self, err: KafkaError | None, msg: object) -> None:
        if err is not None:
            self._failed.append(str(err))

    def _produce(self, partition: int, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        while True:
            try:
                self.producer.produce(self.topic, value=value, key=key, partition=partition,
                                      headers=headers, on_delivery=self._on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room, never drop.
                self.producer.poll(0.1)
        self.producer.poll(0)

    def publish(self, table: pa.Table) -> int:
        """Publish a conformed flowlog table; returns the number of batches sent."""
        if table.num_rows == 0:
            return 0
        parts = partition_rows(table, self._partitions)
        order = np.argsort(parts, kind="stable")
        sorted_parts = parts[order]
        bounds = np.flatnonzero(np.diff(sorted_parts)) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(order)]))
        table = table.take(pa.array(order))
        sent = 0
        step = max(1, self.settings.batch_rows)
        for lo, hi in zip(starts, ends, strict=True):
            partition = int(sorted_parts[lo])
            for s in range(lo, hi, step):
                chunk = table.slice(s, min(step, hi - s))
                keys = source_keys(chunk).unique()
                key = keys[0].as_py().encode() if len(keys) == 1 else None
                env = Envelope("flowlog", "1", ARROW, chunk.num_rows, self.node, new_batch_id())
                self.batch_ids.append(env.batch_id)
                value = encode_arrow(chunk)
                self._wait_for_room()
                self._produce(partition, value, key, env.headers())
                if self._guard is not None:
                    self._guard.record(len(value))
                self.stats.batches += 1
                self.stats.records += chunk.num_rows
                self.stats.bytes += len(value)
                sent += 1
        self._raise_failures()
        return sent

    def send_control(self, control: str) -> None:
        """A control message (e.g. ``flush``: close every open window) to every partition."""
        for p in range(self._partitions):
            env = Envelope("flowlog", "1", ARROW, 0, self.node, new_batch_id(), control=control)
            self._produce(p, b"", None, env.headers())

    def flush(self, timeout: float = 120.0) -> None:
        """Wait until Kafka confirmed every batch; raise PublishError otherwise."""
        remaining = self.producer.flush(timeout)
        if remaining:
            raise PublishError(f"{remaining} batches not confirmed by Kafka after {timeout:.0f}s")
        self._raise_failures()

    def _raise_failures(self) -> None:
        if self._failed:
            first, count = self._failed[0], len(self._failed)
            self._failed.clear()
            raise PublishError(f"Kafka rejected {count} batches: {first}")

    def _wait_for_room(self) -> None:
        if self._guard is None or not self._guard.due():
            return
        started = warned = time.monotonic()
        while True:
            self.producer.poll(0)
            lag = self._guard.worst_lag_bytes(pending_messages=len(self.producer))
            if lag <= self.settings.max_lag_bytes:
                break
            if time.monotonic() - warned > 30:
                warned = time.monotonic()
                log.warning("waiting for the worker: %.1f MiB unconsumed on one partition of %s (limit %.1f MiB)",
                            lag / 2**20, self.topic, self.settings.max_lag_bytes / 2**20)
            self.producer.poll(0.05)
            time.sleep(0.05)
        self.stats.backpressure_waits += time.monotonic() - started

    def close(self) -> None:
        if self._guard is not None:
            self._guard.close()
