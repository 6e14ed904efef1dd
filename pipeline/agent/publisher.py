"""Publish conformed flow tables to flows.raw.v1 as Arrow IPC batch envelopes.

Rows are grouped per target partition (key = source workload,
``namespace/name_aggr``, partitioned as Kafka's murmur2 partitioner would),
so every flow of one workload lands on one partition and the worker's windows
need no repartition.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline import metrics, topics
from pipeline.agent.spool import DIRECT, Outbox
from pipeline.config import Settings
from pipeline.envelope import ARROW, Envelope, encode_arrow, new_batch_id
from pipeline.kafka import LagGuard, partition_for

log = logging.getLogger(__name__)


class PublishError(RuntimeError):
    """Kafka did not confirm some batches; nothing may be reported as delivered."""


class PublishStopped(Exception):
    """The agent was told to stop while it waited for the worker; the rest of the table was not published."""


def producer_config(settings: Settings, delivery_timeout: float = 300.0) -> dict[str, object]:
    """``delivery_timeout``: seconds before an unconfirmed message fails (and, with a spool, is spooled)."""
    return {
        **settings.kafka_client_config(),
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": settings.compression,
        "linger.ms": 20,
        "batch.size": 4 * 1024 * 1024,
        "message.max.bytes": 8 * 1024 * 1024,
        "queue.buffering.max.kbytes": 256 * 1024,
        "delivery.timeout.ms": int(delivery_timeout * 1000),
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


class DeliveryTracker:
    """Numbers every produced message and knows up to which number Kafka confirmed them all.

    Delivery reports arrive per partition, not in production order; a source position may
    only be checkpointed once every message produced before it is confirmed, which is what
    ``confirmed_through`` tells. A failed message stops the watermark for good.
    """

    def __init__(self) -> None:
        self.issued = 0
        self.confirmed_through = 0
        self.failed = 0
        self._done: set[int] = set()
        self._first_failure: int | None = None

    def issue(self) -> int:
        self.issued += 1
        return self.issued

    def callback(self, ticket: int):
        def on_delivery(err: KafkaError | None, msg: object) -> None:
            if err is not None:
                self.failed += 1
                if self._first_failure is None or ticket < self._first_failure:
                    self._first_failure = ticket
                return
            self._done.add(ticket)
            while self.confirmed_through + 1 in self._done and (
                    self._first_failure is None or self.confirmed_through + 1 < self._first_failure):
                self.confirmed_through += 1
                self._done.discard(self.confirmed_through)
        return on_delivery


def batch_ids(batch_key: str, partition: int, count: int) -> list[str]:
    """Deterministic batch ids for the chunks of one source range: a replay after a crash reuses them,
    so the worker drops what Kafka already had."""
    return [hashlib.blake2b(f"{batch_key}|{partition}|{k}".encode(), digest_size=16).hexdigest() for k in range(count)]


@dataclass
class PublishStats:
    batches: int = 0
    records: int = 0
    bytes: int = 0
    backpressure_waits: float = 0.0
    delivery_seconds: list[float] = field(default_factory=list)


class BatchPublisher:
    """Sends flow batches with delivery confirmation; ``flush`` raises if any batch failed.

    Messages go through ``outbox`` (by default straight to Kafka; FlowAgent gives it a spool)."""

    def __init__(self, settings: Settings, node: str = "", topic: str = topics.RAW,
                 backpressure: bool | None = None, tracker: DeliveryTracker | None = None,
                 track_batches: bool = True, delivery_timeout: float = 300.0) -> None:
        self.settings = settings
        self.tracker = tracker or DeliveryTracker()
        self.topic = topic
        self.node = node or settings.node
        self.delivery_timeout = delivery_timeout
        self.producer = Producer(producer_config(settings, delivery_timeout))
        self.outbox = Outbox({topic: self.producer}, self.tracker)
        self.stats = PublishStats()
        self._partitions = self._partition_count()
        # The embedded broker drops the oldest data beyond ~5 MiB per partition: wait for consumers.
        self._backpressure = settings.on_embedded_broker if backpressure is None else backpressure
        self._guard = LagGuard(settings, topic, settings.worker_group, settings.max_lag_bytes) \
            if self._backpressure else None
        # Bounded runs (ingest, demo, tests) account for every batch by id; long-running agents must not
        # keep an ever-growing list.
        self.track_batches = track_batches
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

    def _produce(self, partition: int, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> None:
        sent = time.monotonic()

        def on_success() -> None:
            took = time.monotonic() - sent
            metrics.AGENT_DELIVERY.observe(took)
            if len(self.stats.delivery_seconds) < 10_000:
                self.stats.delivery_seconds.append(took)

        self.outbox.send(self.topic, value, key, partition, headers, on_success)

    def publish(self, table: pa.Table, batch_key: str | None = None) -> int:
        """Publish a conformed flowlog table; returns the number of batches sent.

        ``batch_key`` names the source range the table came from (file, byte range): the batch
        ids are then derived from it, so republishing the same range yields the same ids."""
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
            ids = batch_ids(batch_key, partition, len(range(lo, hi, step))) if batch_key else None
            for k, s in enumerate(range(lo, hi, step)):
                chunk = table.slice(s, min(step, hi - s))
                keys = source_keys(chunk).unique()
                key = keys[0].as_py().encode() if len(keys) == 1 else None
                env = Envelope("flowlog", "1", ARROW, chunk.num_rows, self.node, ids[k] if ids else new_batch_id())
                if self.track_batches:
                    self.batch_ids.append(env.batch_id)
                value = encode_arrow(chunk, self.settings.body_compression)
                self._wait_for_room()
                self._produce(partition, value, key, env.headers())
                if self._guard is not None:
                    self._guard.record(len(value), partition)
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
        self.outbox.raise_failures(PublishError)

    def has_room(self) -> bool:
        """Whether the worker's lag leaves room for more (always, off the embedded broker); for spool replays."""
        if self._guard is None:
            return True
        try:
            return self._guard.worst_lag_bytes(pending_messages=len(self.producer)) <= self.settings.max_lag_bytes
        except KafkaException:
            return False

    def record_replayed(self, nbytes: int, partition: int | None = None) -> None:
        if self._guard is not None:
            self._guard.record(nbytes, partition)

    def _wait_for_room(self) -> None:
        if self._guard is None or self.outbox.state != DIRECT or not self._guard.due():
            return
        started = warned = time.monotonic()
        unreachable_since: float | None = None
        # A spooling outbox adds nothing to the broker's lag: stop waiting when Kafka goes away.
        while self.outbox.state == DIRECT:
            self.outbox.poll(0)
            try:
                lag = self._guard.worst_lag_bytes(pending_messages=len(self.producer))
                unreachable_since = None
            except KafkaException as exc:
                # Broker unreachable: the producer keeps its queue and retries (or spools); wait with it,
                # unless the agent is stopping.
                if self.outbox.giving_up():
                    raise PublishStopped("stopped while waiting for the worker to catch up") from exc
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since >= self.delivery_timeout and self.outbox.spool is not None:
                    # Away as long as an unconfirmed delivery may be: spool, as for a delivery that timed out
                    # (with nothing in flight, no delivery would ever time out to say so).
                    self.outbox.kafka_unreachable()
                    continue
                if now - warned > 30:
                    warned = now
                    log.warning("cannot read consumer lag of %s (%s); waiting", self.topic, exc)
                self.outbox.poll(0.5)
                continue
            if lag <= self.settings.max_lag_bytes:
                break
            if self.outbox.giving_up():
                # Nothing past this point was produced, so no checkpoint covers it: a restart reads it again.
                raise PublishStopped("stopped while waiting for the worker to catch up")
            if time.monotonic() - warned > 30:
                warned = time.monotonic()
                log.warning("waiting for the worker: %.1f MiB unconsumed on one partition of %s (limit %.1f MiB)",
                            lag / 2**20, self.topic, self.settings.max_lag_bytes / 2**20)
            self.outbox.poll(0.05)
            time.sleep(0.05)
        self.stats.backpressure_waits += time.monotonic() - started

    def close(self) -> None:
        if self._guard is not None:
            self._guard.close()
