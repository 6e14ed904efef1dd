"""Findings → incidents → alert.v1 documents.

Findings of one incident family about the same (workload, destination) whose buckets are
no more than ``merge_gap`` apart form one incident, and one incident is one alert. Its id is
a hash of family, workload, destination and the incident's first bucket, so scoring the same
period again gives the same ids, and an incident that continues into the next period (found
in the lake's ``alerts`` table) keeps its id and is written again with a later end.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from jobs.anomaly.findings import PRECEDENCE, WORKLOAD_LEVEL, Finding, severity_rank, workload_name
from pipeline.schema import arrow_schema

ALERT_SCHEMA = "alert.v1"
MAX_DESTINATIONS = 20


def alert_id(family: str, workload: str, dest_key: str, start_bucket: int) -> str:
    digest = hashlib.sha256(f"{family}\x00{workload}\x00{dest_key}\x00{int(start_bucket)}".encode()).hexdigest()
    return "a-" + digest[:16]


@dataclass
class Previous:
    """An alert from an earlier detection period that an incident may continue."""

    id: str
    start_time: int
    end_time: int
    severity: str
    buckets: int
    headline: dict = field(default_factory=dict)  # detector, score, reason, dest_port, mitre_technique, next_step

    HEADLINE = ("detector", "score", "reason", "dest_port", "mitre_technique", "next_step")

    @classmethod
    def of(cls, alert: dict) -> Previous:
        return cls(alert["id"], alert["start_time"], alert["end_time"], alert["severity"], alert["buckets"],
                   {k: alert.get(k) for k in cls.HEADLINE})


def explained_buckets(findings: list[Finding]) -> dict[str, set[int]]:
    """Buckets of each workload already covered by a destination-level finding or a scan."""
    covered: dict[str, set[int]] = {}
    for f in findings:
        if f.family not in WORKLOAD_LEVEL:
            covered.setdefault(f.workload, set()).update(f.buckets)
    return covered


def suppress_explained(findings: list[Finding]) -> list[Finding]:
    """Drop workload-level buckets (volume, multivariate) that a more specific finding explains."""
    covered = explained_buckets(findings)
    out = []
    for f in findings:
        if f.family in WORKLOAD_LEVEL and f.workload in covered:
            keep = [b for b in f.buckets if b not in covered[f.workload]]
            if not keep:
                continue
            f.buckets = keep
        out.append(f)
    return out


def build_alerts(findings: list[Finding], *, bucket: int, merge_gap: int, until: int, classes: dict[str, str],
                 history: dict[str, int], min_history: int, cluster: dict[str, str],
                 previous: dict[tuple[str, str, str], Previous] | None = None) -> list[dict]:
    """Merge findings into incidents and render one alert.v1 document per incident."""
    previous = previous or {}
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for f in suppress_explained(findings):
        groups.setdefault((f.family, f.workload, f.dest_key), []).append(f)
    alerts = []
    for key, members in groups.items():
        for incident in _split(members, bucket, merge_gap):
            alerts.append(_render(key, incident, bucket=bucket, merge_gap=merge_gap, until=until, classes=classes,
                                  history=history, min_history=min_history, cluster=cluster, previous=previous))
    alerts.sort(key=lambda a: (a["source_genai_class"] == "none", -severity_rank(a["severity"]), a["start_time"], a["id"]))
    return alerts


def _split(members: list[Finding], bucket: int, merge_gap: int) -> list[list[tuple[int, Finding]]]:
    """Incidents: runs of (bucket, finding) whose consecutive buckets are at most merge_gap apart."""
    cells = sorted(((b, f) for f in members for b in f.buckets), key=lambda x: (x[0], PRECEDENCE.index(x[1].detector)))
    incidents: list[list[tuple[int, Finding]]] = []
    for b, f in cells:
        if incidents and b - incidents[-1][-1][0] <= merge_gap + bucket:
            incidents[-1].append((b, f))
        else:
            incidents.append([(b, f)])
    return incidents


def _render(key, incident, *, bucket, merge_gap, until, classes, history, min_history, cluster, previous) -> dict:
    family, workload, dest_key = key
    findings = list({id(f): f for _, f in incident}.values())
    lead = min(findings, key=lambda f: (-severity_rank(f.severity), PRECEDENCE.index(f.detector)))
    buckets = sorted({b for b, _ in incident})
    start, end = buckets[0], buckets[-1] + bucket
    prev = previous.get(key)
    severity = lead.severity
    count = len(buckets)
    headline = {"detector": lead.detector, "score": round(float(lead.score), 4), "reason": lead.reason,
                "dest_port": lead.dest_port, "mitre_technique": lead.mitre, "next_step": lead.next_step}
    if prev is not None and prev.end_time >= start - merge_gap:
        start = min(start, prev.start_time)
        count += prev.buckets
        if severity_rank(prev.severity) > severity_rank(severity):
            # an incident keeps the headline of its worst moment (this period's baseline may have learned some of it)
            severity = prev.severity
            headline = {**headline, **{k: v for k, v in prev.headline.items() if k in headline and k != "score"}}
    ns, name = workload_name(workload)
    destinations = []
    for f in sorted(findings, key=lambda f: -f.score):
        destinations.extend(d for d in f.destinations if d not in destinations)
    n_hist = int(history.get(workload, 0))
    context = None
    if n_hist < min_history:
        context = (f"too little history: {n_hist} baseline buckets (minimum {min_history}); volume and multivariate "
                   "detectors did not judge this workload, and every destination counts as new")
    detected = [(f.detected_bucket, PRECEDENCE.index(f.detector), f.detector) for f in findings
                if f.detected_bucket is not None]
    evidence = {
        "incident_key": {"family": family, "workload": workload, "destination": dest_key},
        "detectors": {f.detector: f.evidence for f in findings},
        "first_detection_bucket_end": (min(detected)[0] + bucket) if detected else end,
        "first_detected_by": min(detected)[2] if detected else lead.detector,
    }
    return {
        "id": alert_id(family, workload, dest_key, start),
        "detector": headline["detector"],
        "severity": severity,
        "score": headline["score"],
        "cluster": cluster.get(workload, ""),
        "source_namespace": ns,
        "source_name_aggr": name,
        "source_workload": workload,
        "source_genai_class": classes.get(workload, "none"),
        "start_time": int(start),
        "end_time": int(end),
        "detected_at": int(until),
        "destinations": destinations[:MAX_DESTINATIONS],
        "dest_port": headline["dest_port"],
        "reason": headline["reason"],
        "evidence": orjson.dumps(evidence, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY).decode(),
        "mitre_technique": headline["mitre_technique"],
        "next_step": headline["next_step"],
        "buckets": int(count),
        "history_buckets": n_hist,
        "context": context,
    }


def previous_key(alert: dict) -> tuple[str, str, str] | None:
    try:
        key = orjson.loads(alert["evidence"])["incident_key"]
        return key["family"], key["workload"], key["destination"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        return None


def to_table(alerts: list[dict]) -> pa.Table:
    schema = arrow_schema(ALERT_SCHEMA)
    return pa.Table.from_pylist(alerts, schema=schema)
