"""Detection on small hand-built lakes: each detector, ids, incident merging, bad input, models."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pytest

from jobs.anomaly.delivery import LakeAlertSink
from jobs.anomaly.detect import DetectOptions, NothingToScore, detect_lake
from jobs.anomaly.model import ModelStore
from pipeline.query.views import connect, query_table
from pipeline.schema import arrow_schema
from pipeline.sink.lake import ParquetLakeWriter

DAY = 86_400
T0 = 1_780_272_000  # UTC midnight
SINCE = T0 + 2 * DAY
UNTIL = SINCE + 6 * 3600
SCHEMA = arrow_schema("flow_window.v1")
WORKLOADS = {"genai-prod/vllm": "inference", "genai-prod/rag-api": "agent/app", "shop/cart": "none"}
KNOWN = {"genai-prod/vllm": ("huggingface.co", "model_hub"), "genai-prod/rag-api": ("api.openai.com", "llm_api"),
         "shop/cart": ("api.stripe.com", "unknown")}


def windows(workload: str, times, destination: str, bytes_out, kind: str = "public", port: int | None = 443,
            flows=1, category: str | None = None, genai_class: str | None = None) -> pa.Table:
    times = np.asarray(times, dtype=np.int64)
    n = len(times)
    ws = times // 60 * 60
    out = np.broadcast_to(np.asarray(bytes_out, dtype=np.int64), (n,))
    nf = np.broadcast_to(np.asarray(flows, dtype=np.int64), (n,))
    category = category or ("in_cluster" if kind == "in_cluster" else "unknown")
    cols = {
        "window_start": ws, "window_end": ws + 60, "revision": np.zeros(n, np.int64), "cluster": ["t"] * n,
        "source_namespace": [workload.split("/")[0]] * n, "source_workload": [workload] * n,
        "source_genai_class": [genai_class or WORKLOADS.get(workload, "none")] * n,
        "dest_namespace": ["-" if kind != "in_cluster" else "x"] * n, "destination": [destination] * n,
        "dest_kind": [kind] * n, "dest_category": [category] * n, "dest_genai_class": ["none"] * n,
        "dest_port": [port] * n, "proto": ["tcp"] * n, "action": ["allow"] * n, "bytes_in": out * 2, "bytes_out": out,
        "packets_in": nf * 2, "packets_out": nf * 2, "num_flows": nf, "flow_records": nf, "first_seen": times - 1,
        "last_seen": times, "emitted_at": ws + 180,
    }
    return pa.Table.from_arrays([pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(n, f.type)
                                 for f in SCHEMA], schema=SCHEMA)


def benign(start: int, end: int, seed: int = 1) -> list[pa.Table]:
    rng = np.random.default_rng(seed)
    minutes = np.arange(start, end, 60) + 30
    tables = []
    for w in WORKLOADS:
        n = len(minutes)
        tables.append(windows(w, minutes, "x/db", rng.lognormal(10, 0.5, n), kind="in_cluster", port=5432, flows=5))
        dest, cat = KNOWN[w]
        pick = minutes[rng.random(n) < 0.5]
        tables.append(windows(w, pick, dest, rng.lognormal(8, 0.5, len(pick)), category=cat, flows=2))
    return tables


def build(lake: Path, *incidents: pa.Table, start: int = T0, end: int = UNTIL) -> str:
    writer = ParquetLakeWriter(str(lake))
    table = pa.concat_tables([*benign(start, end), *incidents])
    writer.write("flow_windows", "test", 0, 0, table.num_rows - 1, table)
    return str(lake)


def run(lake: str, state: Path | None = None, since: int = SINCE, until: int = UNTIL, **kw) -> list[dict]:
    options = DetectOptions(since=since, until=until, lookback=2 * DAY, min_history=200, **kw)
    return detect_lake(lake, options, str(state) if state else None).alerts


@pytest.fixture(scope="module")
def quiet_lake(tmp_path_factory) -> str:
    return build(tmp_path_factory.mktemp("quiet") / "lake")


def test_benign_traffic_raises_no_alert(quiet_lake: str) -> None:
    assert run(quiet_lake) == []


def test_large_transfer_to_new_destination_is_critical_with_a_readable_reason(tmp_path: Path) -> None:
    t = SINCE + 3600 + np.arange(0, 1200, 60)
    lake = build(tmp_path / "lake", windows("genai-prod/vllm", t, "185.220.101.77", 300_000_000, flows=3))
    alerts = run(lake)
    assert len(alerts) == 1, [a["reason"] for a in alerts]
    a = alerts[0]
    assert (a["detector"], a["severity"], a["source_workload"]) == ("large_transfer_new_destination", "critical", "genai-prod/vllm")
    assert a["destinations"] == ["185.220.101.77:443"] and a["dest_port"] == 443
    assert "6.0 GB to 185.220.101.77:443, never contacted before" in a["reason"]
    assert a["start_time"] <= t[0] and a["end_time"] >= t[-1]
    evidence = orjson.loads(a["evidence"])
    assert evidence["detectors"]["large_transfer_new_destination"]["bytes_out"] == 20 * 300_000_000
    assert a["mitre_technique"].startswith("T1048")


def test_metadata_endpoint_access_maps_to_mitre(tmp_path: Path) -> None:
    t = SINCE + 7200 + np.arange(0, 180, 15)
    lake = build(tmp_path / "lake", windows("genai-prod/vllm", t, "169.254.169.254", 400, kind="cloud_metadata", port=80))
    (a,) = run(lake)
    assert a["detector"] == "cloud_metadata" and a["severity"] == "critical"
    assert a["mitre_technique"].startswith("T1552.005")
    assert "metadata endpoint 169.254.169.254:80" in a["reason"]


def test_regular_small_contacts_to_a_new_domain_are_beaconing(tmp_path: Path) -> None:
    t = SINCE + 600 + np.arange(0, 3 * 3600, 60) + np.random.default_rng(3).integers(-1, 2, 180)
    lake = build(tmp_path / "lake", windows("genai-prod/rag-api", t, "sync.telemetry-cdn.top", 900))
    (a,) = run(lake)
    assert a["detector"] == "beaconing"
    assert "regular 60 s interval" in a["reason"]


def test_irregular_contacts_to_a_new_domain_are_only_a_new_destination(tmp_path: Path) -> None:
    t = np.sort(SINCE + np.random.default_rng(4).integers(0, 3 * 3600, 40))
    lake = build(tmp_path / "lake", windows("genai-prod/rag-api", t, "docs.example.org", 900))
    (a,) = run(lake)
    assert a["detector"] == "new_public_destination" and a["severity"] == "medium"


def test_new_llm_provider_comes_from_dest_category(tmp_path: Path) -> None:
    t = np.sort(SINCE + np.random.default_rng(5).integers(0, 3600, 30))
    lake = build(tmp_path / "lake", windows("genai-prod/rag-api", t, "llm.internal-gateway.net", 5000, category="llm_api"))
    (a,) = run(lake)
    assert a["detector"] == "new_llm_provider"
    assert "internal-gateway.net" in a["reason"]


def test_port_scan(tmp_path: Path) -> None:
    scan = [windows("genai-prod/rag-api", [SINCE + 1800 + p % 240], f"10.244.1.{p % 5}", 60, kind="private", port=p)
            for p in range(1, 200)]
    lake = build(tmp_path / "lake", *scan)
    (a,) = run(lake)
    assert a["detector"] == "port_scan" and a["mitre_technique"].startswith("T1046")
    assert "port scan" in a["reason"]


def test_non_genai_workloads_are_one_severity_lower(tmp_path: Path) -> None:
    t = np.sort(SINCE + np.random.default_rng(6).integers(0, 3600, 20))
    lake = build(tmp_path / "lake", windows("shop/cart", t, "docs.example.org", 900),
                 windows("genai-prod/vllm", t, "docs.example.org", 900))
    severities = {a["source_workload"]: a["severity"] for a in run(lake)}
    assert severities == {"genai-prod/vllm": "medium", "shop/cart": "low"}


def test_same_period_gives_same_ids_and_the_lake_keeps_one_copy(tmp_path: Path) -> None:
    t = SINCE + 3600 + np.arange(0, 600, 60)
    lake = build(tmp_path / "lake", windows("genai-prod/vllm", t, "185.220.101.77", 300_000_000),
                 windows("genai-prod/vllm", t, "169.254.169.254", 400, kind="cloud_metadata", port=80))
    first, second = run(lake, tmp_path / "state"), run(lake, tmp_path / "state")
    assert [a["id"] for a in first] == [a["id"] for a in second] and len(first) == 2
    assert first == second
    sink = LakeAlertSink(lake)
    sink.send(first, SINCE, UNTIL)
    sink.send(second, SINCE, UNTIL)
    rows = query_table(connect(lake), "SELECT id FROM alerts").column("id").to_pylist()
    assert sorted(rows) == sorted(a["id"] for a in first)


def test_an_ongoing_incident_is_updated_not_repeated(tmp_path: Path) -> None:
    t = SINCE + np.arange(3 * 3600 - 1800, 3 * 3600 + 1800, 60)  # crosses the boundary of two periods
    lake = build(tmp_path / "lake", windows("genai-prod/vllm", t, "185.220.101.77", 50_000_000))
    mid = SINCE + 3 * 3600
    (a,) = run(lake, since=SINCE, until=mid)
    LakeAlertSink(lake).send([a], SINCE, mid)
    (b,) = run(lake, since=mid, until=UNTIL)
    assert b["id"] == a["id"] and b["start_time"] == a["start_time"]
    assert b["end_time"] > a["end_time"] and b["detected_at"] == UNTIL
    assert b["buckets"] == 12


def test_empty_lake_and_quiet_period_give_clear_results(tmp_path: Path, quiet_lake: str) -> None:
    with pytest.raises(NothingToScore, match="no flow_windows"):
        run(str(tmp_path / "empty"))
    options = DetectOptions(since=UNTIL + DAY, until=UNTIL + DAY + 3600)
    result = detect_lake(quiet_lake, options, None)
    assert result.alerts == [] and result.message.startswith("no traffic between")
    with pytest.raises(ValueError, match="no whole"):
        detect_lake(quiet_lake, DetectOptions(since=SINCE, until=SINCE + 60), None)


def test_a_workload_with_little_history_says_so(tmp_path: Path) -> None:
    t = np.sort(SINCE + np.random.default_rng(7).integers(0, 3600, 20))
    lake = build(tmp_path / "lake", windows("genai-dev/newbot", t, "api.example.net", 900, genai_class="agent/app"))
    (a,) = run(lake)
    assert a["history_buckets"] == 0 and "too little history" in a["context"]
    assert a["severity"] == "low"


def test_models_are_saved_reused_and_a_corrupt_file_is_retrained(tmp_path: Path, quiet_lake: str, caplog) -> None:
    state = tmp_path / "state"
    run(quiet_lake, state)
    store = ModelStore(str(state))
    model = store.load("inference")
    assert model is not None and model.trained_until == SINCE and "log_bytes_per_flow" in model.features
    stamp = store.path("inference").stat().st_mtime_ns
    run(quiet_lake, state)
    assert store.path("inference").stat().st_mtime_ns == stamp, "a usable model is reused, not retrained"
    store.path("inference").write_bytes(b"not a model")
    with caplog.at_level(logging.WARNING):
        assert run(quiet_lake, state) == []
    assert "unreadable" in caplog.text
    assert store.load("inference") is not None
