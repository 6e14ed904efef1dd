"""Kafka plumbing shared by every role: partitioning, client configs, topic setup, offsets."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from pipeline.broker.embedded import EmbeddedBroker, TopicSpec
from pipeline.config import Settings

log = logging.getLogger(__name__)


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 hash (the Java client's default partitioner), as a signed 32-bit int."""
    m, r = 0x5BD1E995, 24
    length = len(data)
    h = (0x9747B28C ^ length) & 0xFFFFFFFF
    end = length - length % 4
    for i in range(0, end, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * m) & 0xFFFFFFFF
        k ^= k >> r
        k = (k * m) & 0xFFFFFFFF
        h = (h * m) & 0xFFFFFFFF
        h ^= k
    rest = length % 4
    if rest == 3:
        h ^= data[end + 2] << 16
    if rest >= 2:
        h ^= data[end + 1] << 8
    if rest >= 1:
        h ^= data[end]
        h = (h * m) & 0xFFFFFFFF
    h ^= h >> 13
    h = (h * m) & 0xFFFFFFFF
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def partition_for(key: bytes, partitions: int) -> int:
    """The partition the Java client and librdkafka's murmur2 partitioner choose for ``key``."""
    return (murmur2(key) & 0x7FFFFFFF) % partitions


def ensure_topics(settings: Settings, specs: list[TopicSpec], broker: EmbeddedBroker | None = None) -> None:
    """Create missing topics with their partition counts (embedded: mock API; Kafka: CreateTopics)."""
    if broker is not None:
        broker.create_topics(specs)
        return
    admin = AdminClient(settings.kafka_client_config())
    existing = admin.list_topics(timeout=15).topics
    missing = [NewTopic(s.name, num_partitions=s.partitions, replication_factor=s.replication)
               for s in specs if s.name not in existing]
    if not missing:
        return
    for name, fut in admin.create_topics(missing, operation_timeout=30).items():
        try:
            fut.result()
            log.info("created topic %s", name)
        except KafkaException as exc:
            if exc.args[0].code() != 36:  # TOPIC_ALREADY_EXISTS: another instance won the race
                raise


def partition_count(consumer: Consumer, topic: str) -> int:
    meta = consumer.list_topics(topic, timeout=10)
    t = meta.topics.get(topic)
    if t is None or t.error is not None or not t.partitions:
        raise KafkaException(f"topic {topic} not found")
    return len(t.partitions)


def end_offsets(consumer: Consumer, topic: str) -> dict[int, int]:
    n = partition_count(consumer, topic)
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(n)}


def committed_offsets(consumer: Consumer, topic: str, partitions: int) -> dict[int, int]:
    """Committed offsets of the consumer's group (0 where none yet)."""
    tps = consumer.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
    return {tp.partition: max(tp.offset, 0) for tp in tps}


def group_reader(settings: Settings, group: str) -> Consumer:
    """A consumer that never subscribes: used to read a group's committed offsets and watermarks."""
    return Consumer({**settings.kafka_client_config(), "group.id": group, "enable.auto.commit": False})


def wait_for_group(settings: Settings, group: str, targets: dict[str, dict[int, int]],
                   timeout: float, what: str = "") -> None:
    """Block until ``group`` has committed at least ``targets`` (topic → partition → offset)."""
    reader = group_reader(settings, group)
    deadline = time.monotonic() + timeout
    try:
        while True:
            behind = 0
            for topic, offsets in targets.items():
                done = committed_offsets(reader, topic, max(offsets, default=-1) + 1)
                behind += sum(max(0, off - done.get(p, 0)) for p, off in offsets.items())
            if behind == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what or group} still {behind} messages behind after {timeout:.0f}s")
            time.sleep(0.2)
    finally:
        reader.close()


class LagGuard:
    """Estimates the unconsumed bytes a consumer group has on a topic, for backpressure.

    The embedded broker keeps only ~5 MiB per partition and drops the oldest data beyond
    that, so on it every producing stage waits while its downstream consumer lags.
    """

    def __init__(self, settings: Settings, topic: str, group: str, limit_bytes: int,
                 check_bytes: int = 256 * 1024) -> None:
        self.topic = topic
        self.limit = limit_bytes
        # Check again once this much was produced: the limit can be overshot by at most this.
        self.check_bytes = check_bytes
        self._offsets = group_reader(settings, group)
        self._bytes = 0
        self._messages = 0
        # Per partition too: a partition of big batches next to many small ones would otherwise be
        # judged by the overall average and overrun the broker's retention.
        self._partition_bytes: dict[int, int] = {}
        self._partition_messages: dict[int, int] = {}
        self._since_check = check_bytes

    def record(self, nbytes: int, partition: int | None = None) -> None:
        """Count one produced message of ``nbytes`` (for the average message size per partition)."""
        self._bytes += nbytes
        self._messages += 1
        self._since_check += nbytes
        if partition is not None:
            self._partition_bytes[partition] = self._partition_bytes.get(partition, 0) + nbytes
            self._partition_messages[partition] = self._partition_messages.get(partition, 0) + 1

    def average_bytes(self, partition: int) -> float:
        """The larger of the partition's and the topic's average message size (0 before any message)."""
        overall = self._bytes / self._messages if self._messages else 0.0
        n = self._partition_messages.get(partition, 0)
        return max(overall, self._partition_bytes[partition] / n) if n else overall

    def due(self) -> bool:
        if self._since_check < self.check_bytes:
            return False
        self._since_check = 0
        return True

    def worst_lag_bytes(self, pending_messages: int = 0) -> int:
        """Largest per-partition estimate of bytes produced but not yet committed by the group."""
        if not self._messages:
            return 0
        ends = end_offsets(self._offsets, self.topic)
        done = committed_offsets(self._offsets, self.topic, len(ends))
        return max((int((end - done.get(p, 0) + pending_messages) * self.average_bytes(p)) for p, end in ends.items()),
                   default=0)

    def close(self) -> None:
        self._offsets.close()
