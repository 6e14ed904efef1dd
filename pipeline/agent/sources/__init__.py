"""Flow-log sources the agent can read from: one adapter per real format, behind one interface."""

from __future__ import annotations

from pipeline.agent.sources.base import LineAdapter, SourceBatch
from pipeline.agent.sources.calico import CalicoAdapter
from pipeline.agent.sources.goldmane import GoldmaneAdapter
from pipeline.agent.sources.hubble import HubbleAdapter
from pipeline.agent.sources.ndjson import NdjsonAdapter

ADAPTERS: dict[str, type[LineAdapter]] = {
    "calico": CalicoAdapter,
    "hubble": HubbleAdapter,
    "goldmane": GoldmaneAdapter,
    "ndjson": NdjsonAdapter,
}


def adapter_for(fmt: str, cluster: str = "default", host: str | None = None) -> LineAdapter:
    """The adapter of a format name; ValueError names the known formats."""
    try:
        return ADAPTERS[fmt](cluster=cluster, host=host)
    except KeyError:
        raise ValueError(f"unknown format {fmt!r}: use one of {', '.join(ADAPTERS)}") from None


__all__ = ["ADAPTERS", "LineAdapter", "SourceBatch", "adapter_for"]
