"""Labelled evaluation scenarios for the detector (`flowctl eval detect`).

Days of benign synthetic traffic (diurnal curve) with benign changes — a nightly
checkpoint upload from the fine-tuning job, a daily model download by vLLM, and rag-api
scaled from 3 to 9 pods on the scored day — then one injected incident per scenario.
The lake is written directly (enrichment → windows → Parquet), the same transforms the
stream worker runs, so the evaluation takes seconds instead of a pipeline run.
"""

from __future__ import annotations

import os
import shutil
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from jobs.anomaly.detect import DetectOptions, detect_lake
from jobs.anomaly.findings import PRECEDENCE
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.schema import FLOWLOG, arrow_schema
from pipeline.sink.lake import ParquetLakeWriter, write_parquet
from pipeline.stream.enrich import FlowEnricher
from pipeline.stream.windows import WindowAggregator

DAY = 86_400
T0 = 1_780_272_000  # a UTC midnight
SCHEMA = arrow_schema(FLOWLOG)


@dataclass
class Incident:
    """Ground truth: who did it, to which destination ("*": many), when."""

    scenario: str
    workload: str
    dest: str
    start: int
    end: int


@dataclass
class Diversion:
    """An incident made of existing traffic sent elsewhere: ``workload``'s flows to the in-cluster
    ``from_workload`` during [start, end) are removed from the lake and sent to ``to_ip:port`` instead."""

    workload: str
    from_workload: str
    to_ip: str
    port: int
    domain: str
    start: int
    end: int

    def flows_filter(self) -> pc.Expression:
        return ((pc.field("source_workload") == self.workload) & (pc.field("dest_workload") == self.from_workload)
                & (pc.field("end_time") >= self.start) & (pc.field("end_time") < self.end))

    def windows_filter(self) -> pc.Expression:
        return ((pc.field("source_workload") == self.workload) & (pc.field("destination") == self.from_workload)
                & (pc.field("window_start") >= self.start // 60 * 60) & (pc.field("window_start") < self.end))

    def rows(self, flows: pa.Table | None) -> pa.Table:
        """The diverted flow records (source-reported only: nobody in the cluster reports the far end)."""
        if flows is None:
            return pa.Table.from_arrays([pa.nulls(0, f.type) for f in SCHEMA], schema=SCHEMA)
        flows = flows.filter(self.flows_filter() & (pc.field("reporter") == "src"))
        n = flows.num_rows
        new = {"dest_ip": pa.array([self.to_ip] * n), "dest_name": pa.array(["-"] * n),
               "dest_name_aggr": pa.array(["pub"] * n), "dest_namespace": pa.array(["-"] * n),
               "dest_type": pa.array(["net"] * n), "dest_port": pa.array([self.port] * n),
               "dest_domains": pa.array([[self.domain]] * n)}
        columns = [new[f.name].cast(f.type) if f.name in new else
                   (flows[f.name].cast(f.type) if f.name in flows.column_names and not f.name.startswith("dest_")
                    else pa.nulls(n, f.type)) for f in SCHEMA]
        return pa.Table.from_arrays(columns, schema=SCHEMA)


@dataclass
class _Pod:
    namespace: str
    name: str
    aggr: str
    ip: str
    labels: list[tuple[str, str]]
    node: str


class LakeBuilder:
    """Writes flowlog.v1 tables into a lake as the worker and sink would: flows + flow_windows."""

    def __init__(self, lake: str | Path, source: str) -> None:
        self.writer = ParquetLakeWriter(str(lake))
        self.enricher = FlowEnricher()
        self.windows = WindowAggregator(60, 120)
        self.source = source
        self.offset = 0
        self.pending: list[pa.Table] = []  # window rows, written in large files as the sink would

    def add(self, table: pa.Table) -> None:
        if table.num_rows == 0:
            return
        order = pc.sort_indices(table, [("end_time", "ascending")])
        table = table.take(order)
        enriched = self.enricher.enrich(table, f"{self.source}-{self.offset}", now=int(table["end_time"][-1].as_py()))
        self._write("flows", enriched)
        self.pending.extend(self.windows.add(enriched))
        if sum(t.num_rows for t in self.pending) >= 200_000:
            self._write("flow_windows", pa.concat_tables(self.pending))
            self.pending = []

    def close(self) -> None:
        self.pending.extend(self.windows.flush())
        if self.pending:
            self._write("flow_windows", pa.concat_tables(self.pending))
            self.pending = []

    def _write(self, name: str, table: pa.Table) -> None:
        self.writer.write(name, self.source, 0, self.offset, self.offset + table.num_rows - 1, table)
        self.offset += table.num_rows


class ScenarioCluster:
    """The synthetic cluster plus the rows of benign changes and incidents."""

    def __init__(self, seed: int = 21, name: str = "eval") -> None:
        self.cluster = SyntheticCluster(seed=seed, cluster=name)
        self.name = name
        self.rng = np.random.default_rng(seed + 1000)
        self.pods: dict[str, list[_Pod]] = {}
        for item in self.cluster.inventory()["items"]:
            meta = item["metadata"]
            owner = meta["ownerReferences"][0]
            base = owner["name"].rsplit("-", 1)[0] if owner["kind"] == "ReplicaSet" else owner["name"]
            aggr = meta.get("generateName", "")
            aggr = aggr + "*" if aggr else meta["name"].rsplit("-", 1)[0] + "-*"
            pod = _Pod(meta["namespace"], meta["name"], aggr, item["status"]["podIP"],
                       sorted(meta["labels"].items()), item["spec"]["nodeName"])
            self.pods.setdefault(f"{meta['namespace']}/{base}", []).append(pod)

    def rows(self, workload: str, times, dest_ip: str, port: int, bytes_out, bytes_in, domain: str | None = None,
             dest_aggr: str = "pub", flows: int = 1, pod: int = 0, action: str = "allow") -> pa.Table:
        """Flow records from one pod of ``workload`` to an address outside the cluster."""
        p = self.pods[workload][pod]
        times = np.asarray(times, dtype=np.int64)
        n = len(times)
        out = np.broadcast_to(np.asarray(bytes_out, dtype=np.int64), (n,))
        inn = np.broadcast_to(np.asarray(bytes_in, dtype=np.int64), (n,))
        data = {
            "start_time": np.maximum(times - 1, times // 60 * 60), "end_time": times,
            "source_ip": [p.ip] * n, "source_name": [p.name] * n, "source_name_aggr": [p.aggr] * n,
            "source_namespace": [p.namespace] * n, "source_type": ["wep"] * n, "source_labels": [p.labels] * n,
            "dest_ip": [dest_ip] * n, "dest_name_aggr": [dest_aggr] * n, "dest_namespace": ["-"] * n,
            "dest_type": ["net"] * n, "dest_port": [port] * n, "dest_domains": [[domain] if domain else None] * n,
            "proto": ["tcp"] * n, "action": [action] * n, "reporter": ["src"] * n,
            "policies": [[f"0|__PROFILE__|__PROFILE__.kns.{p.namespace}|{action}|0"]] * n,
            "bytes_out": out, "bytes_in": inn,
            "packets_out": np.maximum(flows, -(-out // 1200)), "packets_in": np.maximum(np.where(inn > 0, flows, 0), -(-inn // 1200)),
            "num_flows": [flows] * n, "num_flows_started": [flows] * n, "num_flows_completed": [flows] * n,
            "host": [p.node] * n, "cluster": [self.name] * n,
        }
        columns = [pa.array(data[f.name], type=f.type) if f.name in data else pa.nulls(n, f.type) for f in SCHEMA]
        return pa.Table.from_arrays(columns, schema=SCHEMA)

    # ---- benign traffic ------------------------------------------------------------------------

    def benign(self, start: int, end: int, rate: float, scale_up_from: int) -> Iterator[pa.Table]:
        for table in self.cluster.generate(start, end, rate=rate, batch_rows=200_000):
            yield self._scaled(table, scale_up_from)
        for day in range(start // DAY, (end - 1) // DAY + 1):
            midnight = day * DAY
            # nightly checkpoint upload, 02:00-02:40, known S3 bucket
            t = midnight + 2 * 3600 + np.arange(0, 2400, 60) + self.rng.integers(0, 30)
            yield self.rows("ml-train/finetune-llama3", t[(t >= start) & (t < end)], "52.216.184.13", 443,
                            self.rng.integers(40e6, 60e6, len(t))[(t >= start) & (t < end)], 20_000,
                            domain="acme-ml-artifacts.s3.us-east-1.amazonaws.com", flows=2)
            # daily model download by vLLM at 06:10: large bytes in, small requests out
            t = midnight + 6 * 3600 + 600 + np.arange(0, 900, 60)
            keep = (t >= start) & (t < end)
            yield self.rows("genai-prod/vllm", t[keep], "18.239.50.16", 443, 30_000, 500_000_000,
                            domain="cdn-lfs.huggingface.co", flows=1)

    def _scaled(self, table: pa.Table, scale_up_from: int) -> pa.Table:
        """rag-api at 3x: from ``scale_up_from`` its source rows appear again from two new pods."""
        mask = pc.and_(pc.equal(table["source_namespace"], "genai-prod"),
                       pc.and_(pc.starts_with(table["source_name_aggr"], "rag-api-"),
                               pc.greater_equal(table["end_time"], scale_up_from)))
        extra = table.filter(mask)
        if extra.num_rows == 0:
            return table
        parts = [table]
        for k, suffix in enumerate(("xs7k2", "xs9m4")):
            names = pc.binary_join_element_wise(pc.utf8_slice_codeunits(extra["source_name"], 0, -5), suffix, "")
            copy = extra.set_column(extra.schema.get_field_index("source_name"), "source_name", names)
            ips = pa.array([f"10.244.9.{200 + k}"] * copy.num_rows)
            copy = copy.set_column(copy.schema.get_field_index("source_ip"), "source_ip", ips)
            parts.append(copy)
        return pa.concat_tables(parts)

    # ---- incidents -----------------------------------------------------------------------------

    def diversion(self, kind: str, day: int) -> Diversion | None:
        """Incidents that move existing traffic (see :class:`Diversion`); None for the others."""
        if kind == "diverted_inference":
            # rag-api's prompts to the self-hosted vLLM go to an LLM provider it already uses, for 3 hours:
            # no new destination, no scan, and only a few MB a bucket more leaving the cluster.
            at = day * DAY + 12 * 3600
            return Diversion("genai-prod/rag-api", "genai-prod/vllm", "160.79.104.10", 443, "api.anthropic.com",
                             at, at + 3 * 3600)
        return None

    def incident(self, kind: str, day: int) -> tuple[pa.Table, Incident]:
        rng = np.random.default_rng(zlib.crc32(kind.encode()))  # str hash() changes per process
        at = day * DAY
        diverted = self.diversion(kind, day)
        if diverted is not None:
            empty = pa.Table.from_arrays([pa.nulls(0, f.type) for f in SCHEMA], schema=SCHEMA)
            return empty, Incident(kind, diverted.workload, diverted.domain, diverted.start, diverted.end)
        if kind == "exfil_burst":
            t = at + 14 * 3600 + np.arange(0, 1200, 60)
            table = self.rows("genai-prod/tgi", t, "185.220.101.77", 443, rng.integers(250e6, 350e6, len(t)), 200_000, flows=3)
            return table, Incident(kind, "genai-prod/tgi", "185.220.101.77", int(t[0]), int(t[-1]))
        if kind == "slow_exfil":
            t = at + 11 * 3600 + np.arange(0, 4 * 3600, 60)
            table = self.rows("genai-dev/jupyter", t, "140.82.112.3", 443, rng.integers(700e3, 900e3, len(t)), 4_000,
                              domain="github.com")
            return table, Incident(kind, "genai-dev/jupyter", "github.com", int(t[0]), int(t[-1]))
        if kind == "metadata_access":
            t = at + 16 * 3600 + np.arange(0, 180, 15)
            table = self.rows("genai-prod/vllm", t, "169.254.169.254", 80, 380, 1500, dest_aggr="pvt", pod=1)
            return table, Incident(kind, "genai-prod/vllm", "169.254.169.254", int(t[0]), int(t[-1]))
        if kind == "new_llm_api":
            t = np.sort(at + 13 * 3600 + rng.integers(0, 2 * 3600, 90))
            table = self.rows("genai-prod/rag-api", t, "51.159.6.54", 443, rng.integers(3_000, 12_000, len(t)),
                              rng.integers(5_000, 30_000, len(t)), domain="api.mistral.ai", flows=2)
            return table, Incident(kind, "genai-prod/rag-api", "api.mistral.ai", int(t[0]), int(t[-1]))
        if kind == "beaconing":
            t = at + 8 * 3600 + np.arange(0, 12 * 3600, 60) + rng.integers(-1, 2, 720)
            table = self.rows("genai-dev/ollama", t, "91.219.236.23", 443, rng.integers(880, 920, len(t)),
                              rng.integers(330, 360, len(t)), domain="sync.llm-telemetry.top")
            return table, Incident(kind, "genai-dev/ollama", "sync.llm-telemetry.top", int(t[0]), int(t[-1]))
        if kind == "port_scan":
            parts = []
            t0 = at + 17 * 3600
            ports = rng.choice(np.arange(1, 10_000), 180, replace=False)
            for host in range(5):
                t = t0 + rng.integers(0, 240, len(ports))
                for port, when in zip(ports, t, strict=True):
                    parts.append((int(when), f"10.244.{host}.{220 + host}", int(port)))
            parts.sort()
            tables = [self.rows("genai-dev/jupyter", [w], ip, port, 60, 0, dest_aggr="pvt") for w, ip, port in parts]
            table = pa.concat_tables(tables)
            return table, Incident(kind, "genai-dev/jupyter", "*", int(parts[0][0]), int(parts[-1][0]))
        raise ValueError(f"unknown incident kind {kind!r}")


INCIDENTS = ("exfil_burst", "slow_exfil", "metadata_access", "new_llm_api", "beaconing", "port_scan",
             "diverted_inference")


@dataclass
class ScenarioResult:
    scenario: str
    incident: Incident | None
    alerts: list[dict]
    matched: list[dict] = field(default_factory=list)
    findings: dict[str, int] = field(default_factory=dict)  # detector -> findings before merging and folding

    @property
    def detected(self) -> bool:
        return bool(self.matched)

    def contributors(self) -> set[str]:
        """Detectors with a finding in a matching alert."""
        return {d for a in self.matched for d in orjson.loads(a["evidence"])["detectors"]}

    def first_detector(self) -> str | None:
        """The detector whose finding made the matching alerts fire first."""
        if not self.matched:
            return None
        evidence = [orjson.loads(a["evidence"]) for a in self.matched]
        return min(evidence, key=lambda e: e["first_detection_bucket_end"])["first_detected_by"]

    @property
    def false_positives(self) -> list[dict]:
        ids = {a["id"] for a in self.matched}
        return [a for a in self.alerts if a["id"] not in ids]

    @property
    def time_to_detect(self) -> int | None:
        if not self.matched or self.incident is None:
            return None
        first = min(orjson.loads(a["evidence"])["first_detection_bucket_end"] for a in self.matched)
        return int(first - self.incident.start)


def matches(alert: dict, incident: Incident, bucket: int) -> bool:
    if alert["source_workload"] != incident.workload:
        return False
    if alert["end_time"] < incident.start or alert["start_time"] > incident.end + bucket:
        return False
    if incident.dest == "*" or not alert["destinations"]:
        return True
    return any(d.split(":")[0] == incident.dest or d == incident.dest for d in alert["destinations"])


@dataclass
class Evaluation:
    results: list[ScenarioResult]
    seconds_build: float
    seconds_detect: float

    @property
    def recall(self) -> float:
        incidents = [r for r in self.results if r.incident is not None]
        return sum(r.detected for r in incidents) / max(len(incidents), 1)

    @property
    def precision(self) -> float:
        alerts = sum(len(r.alerts) for r in self.results)
        true = sum(len(r.matched) for r in self.results)
        return true / alerts if alerts else 1.0

    @property
    def benign_alerts(self) -> int:
        return sum(len(r.alerts) for r in self.results if r.incident is None)

    def contribution(self) -> list[dict]:
        """Per detector: raw findings, alerts it named, and incidents it named, helped with, caught first or alone."""
        out = []
        for name in PRECEDENCE:
            hits = [r for r in self.results if r.incident is not None and r.detected]
            row = {
                "detector": name,
                "findings": sum(r.findings.get(name, 0) for r in self.results),
                "alerts": sum(a["detector"] == name for r in self.results for a in r.alerts),
                "incidents_named": sum(any(a["detector"] == name for a in r.matched) for r in hits),
                "incidents_contributed": sum(name in r.contributors() for r in hits),
                "incidents_first": sum(r.first_detector() == name for r in hits),
                "incidents_only": sum(r.contributors() == {name} for r in hits),
                "false_positives": sum(a["detector"] == name for r in self.results for a in r.false_positives),
            }
            if row["findings"] or row["alerts"]:
                out.append(row)
        return out

    def as_dict(self) -> dict:
        return {
            "recall": round(self.recall, 4), "precision": round(self.precision, 4), "benign_alerts": self.benign_alerts,
            "detectors": self.contribution(),
            "seconds_build": round(self.seconds_build, 1), "seconds_detect": round(self.seconds_detect, 1),
            "scenarios": [{"scenario": r.scenario, "detected": r.detected if r.incident else None,
                           "alerts": len(r.alerts), "false_positives": len(r.false_positives),
                           "detectors": sorted({a["detector"] for a in r.matched}),
                           "contributors": sorted(r.contributors()), "first_detector": r.first_detector(),
                           "time_to_detect_s": r.time_to_detect,
                           "false_positive_reasons": [a["reason"] for a in r.false_positives]} for r in self.results],
        }


def evaluate(workdir: str | Path, days: int = 3, rate: float = 8.0, seed: int = 21, kinds: tuple[str, ...] = INCIDENTS,
             bucket: int = 300) -> Evaluation:
    """Build the benign lake once, then one lake per incident (hard links + the incident's rows), and score each."""
    work = Path(workdir)
    if work.exists():
        shutil.rmtree(work)
    began = time.perf_counter()
    sc = ScenarioCluster(seed=seed)
    score_day = T0 // DAY + days
    since, until = score_day * DAY, (score_day + 1) * DAY
    base = work / "benign"
    builder = LakeBuilder(base / "lake", "eval.benign")
    for table in sc.benign(T0, until, rate, scale_up_from=since + 9 * 3600):
        builder.add(table)
    builder.close()
    lakes: list[tuple[str, Path, Incident | None]] = [("benign_changes", base, None)]
    for kind in kinds:
        table, truth = sc.incident(kind, score_day)
        root = work / kind
        diverted = sc.diversion(kind, score_day)
        removed = _link_tree(base / "lake", root / "lake", diverted)
        extra = LakeBuilder(root / "lake", f"eval.{kind}")
        extra.add(diverted.rows(removed) if diverted is not None else table)
        extra.close()
        lakes.append((kind, root, truth))
    built = time.perf_counter()
    options = DetectOptions(since=since, until=until, bucket=bucket, lookback=days * DAY, min_history=288)
    results = []
    for name, root, truth in lakes:
        result = detect_lake(str(root / "lake"), options, str(work / "state"))
        matched = [a for a in result.alerts if truth is not None and matches(a, truth, bucket)]
        results.append(ScenarioResult(name, truth, result.alerts, matched, result.findings))
    return Evaluation(results, built - began, time.perf_counter() - built)


def _link_tree(src: Path, dst: Path, divert: Diversion | None = None) -> pa.Table | None:
    """Hard-link the lake ``src`` to ``dst``; with ``divert``, copy the affected files without the diverted
    rows instead and return the removed ``flows`` rows."""
    removed = []
    for path in src.rglob("*.parquet"):
        target = dst / path.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        table_name = path.relative_to(src).parts[0]
        if divert is not None and table_name in ("flows", "flow_windows") and _hour_overlaps(path, divert):
            table = pq.ParquetFile(path).read()
            hit = divert.flows_filter() if table_name == "flows" else divert.windows_filter()
            gone = table.filter(hit)
            if gone.num_rows:
                write_parquet(table.filter(~hit), str(target))
                if table_name == "flows":
                    removed.append(gone)
                continue
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)
    return pa.concat_tables(removed) if removed else None


def _hour_overlaps(path: Path, divert: Diversion) -> bool:
    """Whether the hour partition of a lake file can hold rows of [divert.start, divert.end)."""
    keys = dict(part.split("=", 1) for part in path.parts if "=" in part)
    if "date" not in keys or "hour" not in keys:
        return True
    day = datetime.strptime(keys["date"], "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
    hour = int(day) + int(keys["hour"]) * 3600
    return hour < divert.end and hour + 3600 > divert.start - 120
