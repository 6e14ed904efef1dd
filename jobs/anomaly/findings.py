"""What a detector reports, and the vocabulary every detector shares."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SEVERITIES = ("low", "medium", "high", "critical")

# Detectors whose findings are about one destination of a first-contact: one incident per
# (workload, destination) whatever variant fires, so an incident that escalates keeps its id.
NEW_DESTINATION_FAMILY = "new_destination"
# Volume and multivariate findings judge the workload as a whole: overlapping ones are one incident,
# named after the plainer volume reason, dated by whichever detector fired first.
BEHAVIOUR_FAMILY = "behaviour"
FAMILY = {
    "new_public_destination": NEW_DESTINATION_FAMILY,
    "new_llm_provider": NEW_DESTINATION_FAMILY,
    "large_transfer_new_destination": NEW_DESTINATION_FAMILY,
    "beaconing": NEW_DESTINATION_FAMILY,
    "cloud_metadata": "cloud_metadata",
    "port_scan": "port_scan",
    "volume_spike": BEHAVIOUR_FAMILY,
    "volume_sustained": BEHAVIOUR_FAMILY,
    "multivariate": BEHAVIOUR_FAMILY,
}
# Workload-level families: dropped in buckets that a destination-level finding already explains.
WORKLOAD_LEVEL = frozenset({BEHAVIOUR_FAMILY})
# Which detector names an incident when several fire (first wins at equal severity).
PRECEDENCE = ("cloud_metadata", "large_transfer_new_destination", "beaconing", "port_scan", "new_llm_provider",
              "volume_spike", "volume_sustained", "new_public_destination", "multivariate")

MITRE = {
    "cloud_metadata": "T1552.005 Cloud Instance Metadata API",
    "large_transfer_new_destination": "T1048 Exfiltration Over Alternative Protocol",
    "volume_spike": "T1030 Data Transfer Size Limits",
    "volume_sustained": "T1029 Scheduled Transfer",
    "beaconing": "T1071.001 Application Layer Protocol: Web Protocols",
    "port_scan": "T1046 Network Service Discovery",
}


def severity_rank(severity: str) -> int:
    return SEVERITIES.index(severity)


def lower(severity: str) -> str:
    return SEVERITIES[max(0, severity_rank(severity) - 1)]


@dataclass
class Finding:
    """One detector's verdict about one workload (and destination) over one or more time buckets."""

    detector: str
    workload: str
    dest_key: str  # destination the incident is about; "*" for workload-level findings
    buckets: list[int]  # bucket starts in which the detector fired, ascending
    score: float
    severity: str
    reason: str
    next_step: str
    evidence: dict[str, Any] = field(default_factory=dict)
    destinations: list[str] = field(default_factory=list)
    dest_port: int | None = None
    detected_bucket: int | None = None  # bucket at whose end the detector could first fire

    @property
    def family(self) -> str:
        return FAMILY[self.detector]

    @property
    def mitre(self) -> str | None:
        return MITRE.get(self.detector)


def human_bytes(n: float) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def workload_name(workload: str) -> tuple[str, str]:
    """('namespace', 'name') of a stable workload identity."""
    ns, _, name = workload.partition("/")
    return ns, name or workload
