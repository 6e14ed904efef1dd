"""Egress anomaly detection for GenAI workloads: lake features → detectors → alerts (see docs/detection.md)."""
