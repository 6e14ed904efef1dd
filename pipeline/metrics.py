"""Prometheus metrics shared by the long-running roles (served on ``metrics_port`` when set)."""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, start_http_server

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
