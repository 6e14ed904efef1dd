"""flowctl: Kubernetes flow analytics for clusters that run GenAI workloads."""

__version__ = "0.1.0"
