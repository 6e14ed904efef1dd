"""LagGuard's size estimate: a partition of big batches is judged by its own messages, not the topic's average."""

from __future__ import annotations

from pipeline.config import Settings
from pipeline.kafka import LagGuard


def test_a_partition_of_big_messages_is_not_underestimated() -> None:
    guard = LagGuard(Settings(bootstrap_servers="127.0.0.1:9"), "flows.raw.v1", "g", 2 * 2**20)
    try:
        for _ in range(10):
            guard.record(400_000, partition=3)  # one busy workload: full batches
        for _ in range(90):
            guard.record(4_000, partition=5)  # many quiet ones
        overall = (10 * 400_000 + 90 * 4_000) / 100
        assert guard.average_bytes(3) == 400_000
        assert guard.average_bytes(5) == overall, "small partitions keep the safer overall average"
        assert guard.average_bytes(7) == overall, "a partition without messages yet uses the overall average"
    finally:
        guard.close()
