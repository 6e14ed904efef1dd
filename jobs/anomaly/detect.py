"""One detection run: score [since, until) against the baseline before it and publish alerts."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import duckdb
import pyarrow as pa

from jobs.anomaly.alerts import Previous, build_alerts, previous_key
from jobs.anomaly.delivery import AlertSink
from jobs.anomaly.detectors import Context, Detector, FirstContactDetector, ScanDetector, Thresholds, VolumeDetector
from jobs.anomaly.features import LakeReader, as_numpy
from jobs.anomaly.findings import NEW_DESTINATION_FAMILY
from jobs.anomaly.frames import dense
from jobs.anomaly.model import ModelStore, MultivariateDetector
from pipeline.config import Settings
from pipeline.query.views import connect, query_table

log = logging.getLogger(__name__)


class NothingToScore(ValueError):
    """The lake has no flow windows at all."""


@dataclass
class DetectOptions:
    since: int
    until: int
    bucket: int = 300
    lookback: int = 7 * 86_400
    min_history: int = 288
    merge_gap: int = 1800
    retrain: bool = False
    thresholds: Thresholds = field(default_factory=Thresholds)

    @classmethod
    def from_settings(cls, settings: Settings, since: int, until: int, retrain: bool = False) -> DetectOptions:
        return cls(since=since, until=until, bucket=settings.detect_bucket_seconds,
                   lookback=int(settings.detect_lookback_hours * 3600), min_history=settings.detect_min_history_buckets,
                   merge_gap=settings.detect_merge_gap_seconds, retrain=retrain)

    def aligned(self) -> DetectOptions:
        if self.bucket < 60 or self.bucket % 60:
            raise ValueError(f"the detection bucket must be a whole number of minutes, got {self.bucket} s")
        since = self.since // self.bucket * self.bucket
        until = self.until // self.bucket * self.bucket
        if until <= since:
            raise ValueError(f"the period {_iso(self.since)} .. {_iso(self.until)} holds no whole "
                             f"{self.bucket // 60}-minute bucket")
        if self.lookback < self.bucket:
            raise ValueError("the lookback must be at least one bucket")
        return DetectOptions(since, until, self.bucket, self.lookback, self.min_history, self.merge_gap, self.retrain,
                             self.thresholds)


@dataclass
class DetectionResult:
    since: int
    until: int
    alerts: list[dict]
    message: str
    workloads: int = 0
    feature_rows: int = 0
    baseline_buckets: int = 0
    little_history: list[str] = field(default_factory=list)
    models_trained: list[str] = field(default_factory=list)
    findings: dict[str, int] = field(default_factory=dict)  # detector -> findings before merging and folding
    seconds: float = 0.0


def _iso(ts: int) -> str:
    return datetime.fromtimestamp(int(ts), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def run_detection(con: duckdb.DuckDBPyConnection, options: DetectOptions, store: ModelStore | None = None,
                  detectors: list[Detector] | None = None) -> DetectionResult:
    """Score ``options.since .. options.until`` of the lake behind ``con``; returns the alerts (not yet delivered)."""
    began = time.perf_counter()
    o = options.aligned()
    reader = LakeReader(con, o.bucket)
    if reader.time_range() is None:
        raise NothingToScore("the lake has no flow_windows rows: nothing to score (run the pipeline or `flowctl ingest` first)")
    k = o.thresholds.sustain_buckets
    score_lo = o.since - (k - 1) * o.bucket
    base_lo = o.since - o.lookback
    scored = reader.bucket_features(o.since, o.until)
    if scored.num_rows == 0:
        return DetectionResult(o.since, o.until, [], f"no traffic between {_iso(o.since)} and {_iso(o.until)}: 0 alerts",
                               seconds=time.perf_counter() - began)
    extended = reader.bucket_features(score_lo, o.until)
    base = reader.bucket_features(base_lo, o.since)
    workloads = sorted(set(extended["workload"].to_pylist()) | set(base["workload"].to_pylist()))
    classes, cluster = _labels(base, extended)
    base_frame = dense(base, reader.source_pods(base_lo, o.since), workloads, base_lo, o.since, o.bucket)
    score_frame = dense(extended, reader.source_pods(score_lo, o.until), workloads, score_lo, o.until, o.bucket)
    history = dict(zip(workloads, base_frame.active.sum(axis=1).tolist(), strict=True))
    previous, forget = _previous_alerts(con, o)
    new_rows = as_numpy(reader.new_external_rows(o.since, o.until, base_lo, forget))
    known = reader.known_destinations(base_lo, o.since)
    providers = set(zip(known["workload"].to_pylist(), known["provider"].to_pylist(), strict=True))
    ctx = Context(o.since, o.until, o.bucket, classes, history, o.min_history, base_frame, score_frame, new_rows,
                  providers, o.thresholds)
    multivariate = MultivariateDetector(store, o.lookback, retrain=o.retrain)
    findings = []
    for detector in detectors or [FirstContactDetector(), ScanDetector(), VolumeDetector(), multivariate]:
        findings.extend(detector.detect(ctx))
    alerts = build_alerts(findings, bucket=o.bucket, merge_gap=o.merge_gap, until=o.until, classes=classes,
                          history=history, min_history=o.min_history, cluster=cluster, previous=previous)
    scored_workloads = sorted(set(scored["workload"].to_pylist()))
    little = [w for w in scored_workloads if history.get(w, 0) < o.min_history]
    message = (f"scored {len(scored_workloads)} workloads in {scored.num_rows:,} buckets between {_iso(o.since)} and "
               f"{_iso(o.until)}: {len(alerts)} alerts")
    if little:
        message += f"; {len(little)} workloads with too little history (< {o.min_history} baseline buckets): {', '.join(little[:5])}"
    return DetectionResult(o.since, o.until, alerts, message, workloads=len(scored_workloads), feature_rows=scored.num_rows,
                           baseline_buckets=base.num_rows, little_history=little, models_trained=multivariate.trained,
                           findings=summarize([{"detector": f.detector} for f in findings]), seconds=time.perf_counter() - began)


def _labels(*tables: pa.Table) -> tuple[dict[str, str], dict[str, str]]:
    classes: dict[str, str] = {}
    cluster: dict[str, str] = {}
    for table in tables:  # later tables (the scored period) win
        cols = as_numpy(table.select(["workload", "genai_class", "cluster"]))
        classes.update(zip(cols["workload"].tolist(), cols["genai_class"].tolist(), strict=True))
        cluster.update(zip(cols["workload"].tolist(), cols["cluster"].tolist(), strict=True))
    return classes, cluster


def _previous_alerts(con: duckdb.DuckDBPyConnection, o: DetectOptions) -> tuple[dict, pa.Table]:
    """Alerts of earlier periods: incidents this run may continue, and destinations not to learn as normal."""
    rows = query_table(con, f"""
        SELECT * FROM alerts WHERE detected_at <= {o.since} AND end_time >= {o.since - o.lookback}
        QUALIFY row_number() OVER (PARTITION BY id ORDER BY detected_at DESC) = 1""").to_pylist()
    previous: dict[tuple[str, str, str], Previous] = {}
    pairs: list[tuple[str, str]] = []
    for a in rows:
        key = previous_key(a)
        if key is None:
            continue
        if key[0] in (NEW_DESTINATION_FAMILY, "cloud_metadata"):
            pairs.append((key[1], key[2]))
        if a["end_time"] >= o.since - o.merge_gap:
            prev = previous.get(key)
            if prev is None or a["end_time"] > prev.end_time:
                previous[key] = Previous.of(a)
    forget = pa.table({"workload": pa.array([p[0] for p in pairs], pa.string()),
                       "destination": pa.array([p[1] for p in pairs], pa.string())})
    return previous, forget


def deliver(result: DetectionResult, sinks: list[AlertSink]) -> list[str]:
    """Send the run's alerts to every sink; returns one line per sink that failed (the others still get them)."""
    failures = []
    for sink in sinks:
        try:
            sink.send(result.alerts, result.since, result.until)
        except Exception as exc:  # one broken destination must not stop the others
            log.error("alert delivery to %s failed: %s", sink.name, exc)
            failures.append(f"{sink.name}: {exc}")
    return failures


def detect_lake(lake: str, options: DetectOptions, state_dir: str | None) -> DetectionResult:
    """Open the lake and score one period (models under ``state_dir``; None keeps them in memory)."""
    con = connect(lake)
    try:
        return run_detection(con, options, ModelStore(state_dir) if state_dir else None)
    finally:
        con.close()


def summarize(alerts: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in alerts:
        counts[a["detector"]] = counts.get(a["detector"], 0) + 1
    return dict(sorted(counts.items()))

