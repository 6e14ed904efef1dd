"""Prometheus metrics shared by the long-running roles (served on ``metrics_port`` when set)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger(__name__)

WORKER_MESSAGES = Counter("flowctl_worker_messages", "Raw Kafka messages processed by the worker")
WORKER_RECORDS_IN = Counter("flowctl_worker_records_in", "Flow records read from raw batches")
WORKER_RECORDS_OUT = Counter("flowctl_worker_records_out", "Enriched flow records published")
WORKER_DEAD_LETTERS = Counter("flowctl_worker_dead_letters", "Records sent to the dead-letter topic")
WORKER_DUPLICATES = Counter("flowctl_worker_duplicate_batches", "Redelivered raw batches dropped by batch-id")
OFFSET_GAPS = Counter("flowctl_offset_gaps", "Offset gaps detected (data dropped before it was consumed)", ["role"])
LOST_MESSAGES = Counter("flowctl_lost_messages", "Messages lost in offset gaps", ["role"])
OPEN_WINDOWS = Gauge("flowctl_worker_open_windows", "Open event-time windows held by the worker")
WINDOW_ROWS = Counter("flowctl_worker_window_rows", "Window rows emitted", ["kind"])


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 disables)."""
    if port:
        start_http_server(port)
        log.info("metrics on :%d/metrics", port)

SINK_ROWS = Counter("flowctl_sink_rows", "Rows committed to the lake", ["table"])
SINK_FILES = Counter("flowctl_sink_files", "Parquet files committed to the lake", ["table"])
SINK_DUPLICATES = Counter("flowctl_sink_duplicate_batches", "Redelivered batches the sink dropped by batch-id")
SINK_WRITE_ERRORS = Counter("flowctl_sink_write_errors", "Lake writes that failed and will be retried", ["table"])
AGENT_READ = Counter("flowctl_agent_records_read", "Records the agent read from a file or HTTP source", ["source"])
AGENT_SOURCE_LAG = Gauge("flowctl_agent_source_lag_bytes", "Bytes of the followed flow-log files not yet confirmed by Kafka")
AGENT_DELIVERY = Histogram("flowctl_agent_delivery_seconds", "Time from producing a batch to Kafka's confirmation",
                           buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))
AGENT_PUBLISHED = Counter("flowctl_agent_records_published", "Flow records the agent published")
AGENT_REJECTED = Counter("flowctl_agent_records_rejected", "Records the agent dead-lettered")
AGENT_BATCHES = Counter("flowctl_agent_batches", "Batches the agent published")
AGENT_SPOOLED = Counter("flowctl_agent_records_spooled", "Records the agent wrote to its on-disk spool")
AGENT_REPLAYED = Counter("flowctl_agent_records_replayed", "Spooled records Kafka confirmed after a replay")
AGENT_SPOOL_BYTES = Gauge("flowctl_agent_spool_bytes", "Bytes waiting in the agent's on-disk spool")
AGENT_SPOOL_CORRUPT = Counter("flowctl_agent_spool_corrupt_segments", "Damaged spool segments moved aside, not replayed")
DETECT_RUNS = Counter("flowctl_detect_runs", "Detection periods scored", ["outcome"])
DETECT_ALERTS = Counter("flowctl_detect_alerts", "Alerts published (new or updated)", ["severity"])
DETECT_UNDELIVERED = Counter("flowctl_detect_undelivered_alerts", "Alerts a delivery target gave up on", ["target"])
DETECT_LAST_PERIOD_END = Gauge("flowctl_detect_last_period_end_seconds", "End of the last period scored (Unix time)")
