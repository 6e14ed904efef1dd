"""Benchmark of `flowctl recommend`: a lake of N enriched flows from W workloads, then one full run."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from pipeline.schema import arrow_schema
from pipeline.sink.lake import ParquetLakeWriter

T0 = 1_790_000_000 // 3600 * 3600


def _templates(workloads: int, rng: np.random.Generator) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """One or two template rows per edge (src report, and dst report for pod-to-pod), edge weights, rows per edge."""
    schema = arrow_schema("flow_enriched.v1")
    namespaces = max(1, workloads // 20)
    names = [(f"team-{i % namespaces}", f"svc-{i}") for i in range(workloads)]
    ips = {i: f"10.{100 + i // 250}.{i % 250}.{10}" for i in range(workloads)}
    rows: list[dict] = []
    first_row, n_rows, weights = [], [], []

    def pod(i: int, side: str) -> dict:
        ns, name = names[i]
        return {f"{side}_namespace": ns, f"{side}_name_aggr": f"{name}-7d9f8b6c5d-*", f"{side}_type": "wep", f"{side}_ip": ips[i],
                f"{side}_labels": [("app.kubernetes.io/name", name), ("pod-template-hash", "7d9f8b6c5d")], f"{side}_workload": f"{ns}/{name}"}

    def add(edge: list[dict], weight: float) -> None:
        first_row.append(len(rows))
        n_rows.append(len(edge))
        weights.append(weight)
        rows.extend(edge)

    base = {"proto": "tcp", "action": "allow", "cluster": "bench", "dest_kind": "in_cluster", "source_genai_class": "none", "dest_genai_class": "none",
            "batch_id": "bench", "ingest_time": T0, "bytes_in": 0, "bytes_out": 0, "packets_in": 0, "packets_out": 0, "num_flows": 1,
            "start_time": T0, "end_time": T0}
    dns = {"dest_namespace": "kube-system", "dest_name_aggr": "coredns-5d78c9869d-*", "dest_type": "wep", "dest_ip": "10.244.0.5",
           "dest_labels": [("k8s-app", "kube-dns")], "dest_workload": "kube-system/coredns"}
    for i in range(workloads):
        src = pod(i, "source")
        for j in rng.choice(workloads, size=5, replace=False):
            if j == i:
                continue
            dst = pod(int(j), "dest")
            port = int(8000 + j % 50)
            common = {**base, **src, **dst, "dest_port": port, "destination": dst["dest_workload"]}
            add([{**common, "reporter": "src", "counted": True}, {**common, "reporter": "dst", "counted": False}], float(rng.uniform(0.5, 2)))
        for k in range(2):
            ip = f"52.{i % 200}.{k}.{int(rng.integers(1, 250))}"
            add([{**base, **src, "dest_namespace": "-", "dest_name_aggr": "pub", "dest_type": "net", "dest_ip": ip, "dest_port": 443,
                  "dest_domains": [f"api{k}.svc-{i}.example.com"], "dest_workload": "-/pub", "destination": f"api{k}.svc-{i}.example.com",
                  "dest_kind": "public", "reporter": "src", "counted": True}], 0.3)
        common = {**base, **src, **dns, "proto": "udp", "dest_port": 53, "destination": "kube-system/coredns"}
        add([{**common, "reporter": "src", "counted": True}, {**common, "reporter": "dst", "counted": False}], 1.0)
    defaults = {pa.string(): "", pa.int64(): 0, pa.bool_(): False}
    required = {f.name: defaults[f.type] for f in schema if not f.nullable and f.type in defaults}
    table = pa.Table.from_pylist([{**required, **r} for r in rows], schema=schema)
    w = np.asarray(weights)
    return table, np.asarray(first_row), np.asarray(n_rows), w / w.sum()


def build_lake(root: str, workloads: int, flows: int, seed: int = 1) -> int:
    """Write about ``flows`` enriched flow records from ``workloads`` workloads over one day; returns the row count."""
    rng = np.random.default_rng(seed)
    templates, first, count, p = _templates(workloads, rng)
    writer = ParquetLakeWriter(root)
    written, chunk, offset = 0, 1_000_000, 0
    while written < flows:
        events = rng.choice(len(p), size=min(chunk, flows - written) // 2 + 1, p=p)
        idx = np.concatenate([first[events], (first[events] + 1)[count[events] > 1]])
        times = np.sort(rng.integers(T0, T0 + 86_400, size=idx.size))
        part = templates.take(pa.array(idx))
        nbytes = rng.integers(200, 50_000, size=idx.size)
        for name, values in (("end_time", times), ("start_time", times - 30), ("bytes_out", nbytes), ("bytes_in", nbytes // 3),
                             ("packets_out", nbytes // 1200 + 1), ("packets_in", nbytes // 3600 + 1), ("num_flows", rng.integers(1, 5, idx.size))):
            part = part.set_column(part.schema.get_field_index(name), name, pa.array(values))
        writer.write("flows", "bench", 0, offset, offset + part.num_rows - 1, part)
        offset += part.num_rows
        written += part.num_rows
    return written


def bench_recommend(flows: int, workloads: int = 1000) -> list[tuple[str, str, float, str]]:
    from jobs.policy.model import Options
    from jobs.policy.run import recommend
    from pipeline.query.views import connect

    with tempfile.TemporaryDirectory(prefix="flowctl-bench-policy-") as tmp:
        root = str(Path(tmp) / "lake")
        t0 = time.perf_counter()
        rows = build_lake(root, workloads, flows)
        lake_seconds = time.perf_counter() - t0
        t1 = time.perf_counter()
        result = recommend(connect(root), root, T0, T0 + 86_400, Path(tmp) / "out", Path(tmp) / "state", Options())
        seconds = time.perf_counter() - t1
    rec = result.summary.rec
    return [
        ("recommend", "flows", float(rows), "flows"),
        ("recommend", "workloads", float(len(rec.policies)), "workloads"),
        ("recommend", "rules", float(sum(len(p.rules) for p in rec.policies)), "rules"),
        ("recommend", "objects_validated", float(result.objects), "objects"),
        ("recommend", "seconds", seconds, "s"),
        ("recommend", "throughput", rows / seconds, "flows/s"),
        ("recommend", "lake_build_seconds", lake_seconds, "s"),
    ]
