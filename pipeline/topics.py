"""Topic names and the partition counts the pipeline creates them with."""

from __future__ import annotations

from pipeline.broker.embedded import TopicSpec

RAW = "flows.raw.v1"
ENRICHED = "flows.enriched.v1"
WINDOWED = "flows.windowed.v1"
DLQ = "flows.dlq.v1"
ALERTS = "alerts.v1"

ALL = (RAW, ENRICHED, WINDOWED, DLQ, ALERTS)

# Lake table written from each topic.
TABLE_OF_TOPIC = {ENRICHED: "flows", WINDOWED: "flow_windows", DLQ: "dlq"}


def topic_specs(partitions: int, replication: int) -> list[TopicSpec]:
    """Every topic the pipeline uses; the DLQ and alerts need few partitions."""
    small = max(1, min(partitions, 3))
    return [
        TopicSpec(RAW, partitions, replication),
        TopicSpec(ENRICHED, partitions, replication),
        TopicSpec(WINDOWED, partitions, replication),
        TopicSpec(DLQ, small, replication),
        TopicSpec(ALERTS, small, replication),
    ]
