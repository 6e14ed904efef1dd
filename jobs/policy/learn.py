"""Evidence from the lake: per-edge flow counts, workload labels, and alerts to exclude.

An edge is (source endpoint, destination endpoint, port, protocol). A flow between two
pods is reported by both ends; the ``counted`` report (the source's, or the destination's
when the source is outside the cluster) gives the counts, so nothing is counted twice.
When only the destination reported a pod-to-pod flow (no agent at the source), its report
stands in. Aggregation runs in DuckDB, so the Python side sees one row per edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import orjson
import pyarrow as pa

from pipeline.query.views import query_table
from pipeline.stream.enrich import stable_workload


@dataclass(frozen=True)
class Alert:
    """The part of an alert that says which flows belong to it."""

    id: str
    detector: str
    source_namespace: str
    source_workload: str
    start_time: int
    end_time: int
    dest_ip: str | None = None
    dest_port: int | None = None
    destinations: tuple[str, ...] = ()  # 'destination' or 'destination:port', as alert.v1 and flow_windows name them


@dataclass
class Evidence:
    edges: pa.Table  # one row per (edge, alert id or null)
    labels: pa.Table  # distinct (workload, namespace, labels) of pods seen at either end
    genai: dict[str, str] = field(default_factory=dict)  # workload -> GenAI class
    alerts: list[Alert] = field(default_factory=list)


def _first(record: dict, *names: str):
    for name in names:
        value = record.get(name)
        if value not in (None, ""):
            return value
    return None


def normalise_alerts(records: list[dict]) -> list[Alert]:
    """Alerts from alert.v1 rows or JSONL records; records that name no source or time are skipped."""
    alerts = []
    for i, rec in enumerate(records):
        ns = _first(rec, "source_namespace", "namespace")
        aggr = _first(rec, "source_workload", "source_name_aggr", "name_aggr")
        start, end = _first(rec, "start_time", "start"), _first(rec, "end_time", "end")
        if ns is None or aggr is None or start is None or end is None:
            continue
        aggr = str(aggr).split("/", 1)[1] if str(aggr).startswith(f"{ns}/") else str(aggr)
        workload = stable_workload(pa.array([str(ns)]), pa.array([aggr]))[0].as_py()
        port = _first(rec, "dest_port")
        single = _first(rec, "destination", "dest_domain")
        destinations = tuple(str(d) for d in (rec.get("destinations") or [])) + ((str(single),) if single else ())
        alerts.append(Alert(
            id=str(_first(rec, "id", "alert_id") or f"alert-{i}"),
            detector=str(_first(rec, "detector", "kind") or "unknown"),
            source_namespace=str(ns), source_workload=workload,
            start_time=int(start), end_time=int(end),
            dest_ip=_first(rec, "dest_ip"), dest_port=int(port) if port is not None else None,
            destinations=destinations,
        ))
    return alerts


def read_alert_file(path: Path) -> list[Alert]:
    """Alerts from a JSONL file (one alert object per line)."""
    records = []
    for n, line in enumerate(path.read_bytes().splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{path}:{n}: invalid JSON in alerts file: {exc}") from None
        if not isinstance(rec, dict):
            raise ValueError(f"{path}:{n}: an alert must be a JSON object")
        records.append(rec)
    return normalise_alerts(records)


def read_lake_alerts(con: duckdb.DuckDBPyConnection, since: int, until: int) -> list[Alert]:
    """Alerts from the lake table ``alerts`` that overlap [since, until); none when the table is absent."""
    try:
        columns = {r[0] for r in con.execute("DESCRIBE alerts").fetchall()}
    except duckdb.Error:
        return []
    if not {"start_time", "end_time", "source_namespace"} <= columns:
        return []
    rows = query_table(con, "SELECT * FROM alerts WHERE end_time >= ? AND start_time < ?", [since, until]).to_pylist()
    return normalise_alerts(rows)


_ALERT_SCHEMA = pa.schema([("alert_id", pa.string()), ("a_ns", pa.string()), ("a_workload", pa.string()), ("a_start", pa.int64()),
                           ("a_end", pa.int64()), ("a_ip", pa.string()), ("a_port", pa.int64()), ("a_dests", pa.list_(pa.string()))])


def _register_alerts(con: duckdb.DuckDBPyConnection, alerts: list[Alert]) -> None:
    table = pa.Table.from_pylist([
        {"alert_id": a.id, "a_ns": a.source_namespace, "a_workload": a.source_workload, "a_start": a.start_time, "a_end": a.end_time,
         "a_ip": a.dest_ip, "a_port": a.dest_port, "a_dests": list(a.destinations)} for a in alerts], schema=_ALERT_SCHEMA)
    con.register("__policy_alerts", table)


def flows_relation(con: duckdb.DuckDBPyConnection, alerts: list[Alert]) -> str:
    """SQL for the flows of the period (parameters: since, until) with the id of the alert each belongs to, or null.

    A flow belongs to an alert when it comes from the alert's source workload within the alert's
    time range and matches every destination detail the alert gives (address, port, one of its destinations).
    """
    if not alerts:
        return "SELECT *, NULL::VARCHAR AS alert_id FROM flows WHERE end_time >= ? AND end_time < ?"
    _register_alerts(con, alerts)
    return """
        SELECT f.*, (SELECT min(a.alert_id) FROM __policy_alerts a
                     WHERE a.a_ns = f.source_namespace AND a.a_workload = f.source_workload
                       AND f.end_time >= a.a_start AND f.start_time <= a.a_end
                       AND (a.a_ip IS NULL OR a.a_ip = f.dest_ip)
                       AND (a.a_port IS NULL OR a.a_port = f.dest_port)
                       AND (len(a.a_dests) = 0 OR list_contains(a.a_dests, f.destination)
                            OR list_contains(a.a_dests, f.destination || ':' || CAST(f.dest_port AS VARCHAR))
                            OR list_has_any(a.a_dests, f.dest_domains))) AS alert_id
        FROM flows f WHERE f.end_time >= ? AND f.end_time < ?"""


# Addresses stand for endpoints outside the cluster (and host endpoints); pods are named by workload.
_EDGES_SQL = """
WITH f AS ({flows})
SELECT source_type, source_namespace, source_workload,
       CASE WHEN source_type = 'wep' THEN NULL ELSE source_ip END AS source_ip,
       dest_type, dest_namespace, dest_workload,
       CASE WHEN dest_type = 'wep' THEN NULL ELSE dest_ip END AS dest_ip,
       CASE WHEN dest_type = 'wep' THEN NULL ELSE dest_domains[1] END AS dest_domain,
       dest_kind, lower(proto) AS proto, dest_port, alert_id,
       coalesce(sum(num_flows) FILTER (WHERE counted), 0) AS counted_flows,
       coalesce(sum(num_flows) FILTER (WHERE reporter = 'dst'), 0) AS dst_flows,
       coalesce(sum(bytes_in + bytes_out) FILTER (WHERE counted), 0) AS counted_bytes,
       coalesce(sum(bytes_in + bytes_out) FILTER (WHERE reporter = 'dst'), 0) AS dst_bytes,
       count(*) FILTER (WHERE action = 'deny') AS denied_records,
       count(*) AS records,
       min(start_time) AS first_seen, max(end_time) AS last_seen
FROM f GROUP BY ALL
"""

_LABELS_SQL = """
WITH f AS (SELECT * FROM flows WHERE end_time >= ? AND end_time < ?)
SELECT DISTINCT source_workload AS workload, source_namespace AS namespace, source_labels AS labels, source_genai_class AS genai
FROM f WHERE source_type = 'wep'
UNION
SELECT DISTINCT dest_workload, dest_namespace, dest_labels, dest_genai_class FROM f WHERE dest_type = 'wep'
"""


def read_evidence(con: duckdb.DuckDBPyConnection, since: int, until: int, alerts: list[Alert]) -> Evidence:
    """Edges, pod labels and GenAI classes of the flows with ``since <= end_time < until``."""
    edges = query_table(con, _EDGES_SQL.format(flows=flows_relation(con, alerts)), [since, until])
    labels = query_table(con, _LABELS_SQL, [since, until])
    genai: dict[str, str] = {}
    for w, g in zip(labels["workload"].to_pylist(), labels["genai"].to_pylist(), strict=True):
        if g and g != "none":
            genai[w] = g
    return Evidence(edges=edges, labels=labels, genai=genai, alerts=alerts)
