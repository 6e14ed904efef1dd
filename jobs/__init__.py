"""Batch jobs over the lake: anomaly detection, policy recommendation, lake maintenance."""
