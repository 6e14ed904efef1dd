"""`flowctl recommend` on a lake of synthetic cluster traffic: learning, anomaly exclusion, impact replay, outputs, stability."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import jsonschema
import orjson
import pytest
import yaml

from jobs.policy.learn import normalise_alerts, read_evidence
from jobs.policy.model import Options, build
from jobs.policy.replay import replay
from jobs.policy.validate import validate_object
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.query.views import connect, query_table
from pipeline.schema import json_schema, schema_dir
from pipeline.sink.lake import ParquetLakeWriter
from pipeline.stream.enrich import FlowEnricher

T0 = 1_717_200_000 // 3600 * 3600
SPAN = 3600


def _alerts(truth: list[dict]) -> list[dict]:
    """Alert records as a detector would publish them for the injected incidents."""
    return [{"id": f"alert-{i}", "detector": a["kind"], "source_namespace": a["namespace"], "source_name_aggr": a["name_aggr"],
             "start_time": a["start"], "end_time": a["end"], "dest_ip": a.get("dest_ip"), "dest_port": a.get("dest_port")}
            for i, a in enumerate(truth)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> tuple[str, list[dict]]:
    root = str(tmp_path_factory.mktemp("policy") / "lake")
    cluster = SyntheticCluster(seed=5)
    writer, enricher = ParquetLakeWriter(root), FlowEnricher()
    offset = 0
    for table in cluster.generate(T0, T0 + SPAN, rate=120, anomalies=True):
        writer.write("flows", "flows.enriched.v1", 0, offset, offset + table.num_rows - 1, enricher.enrich(table, "b", now=T0))
        offset += table.num_rows
    return root, cluster.ground_truth_anomalies(T0, T0 + SPAN)


def test_replay_allows_all_benign_learned_flows_and_denies_incidents(lake) -> None:
    root, truth = lake
    con = connect(root)
    alerts = normalise_alerts(_alerts(truth))
    rec = build(read_evidence(con, T0, T0 + SPAN, alerts), T0, T0 + SPAN, Options())
    result = replay(con, rec, T0, T0 + SPAN, alerts)
    benign = [c for c in result.conversations if c["alert_id"] is None and not c["observed_denied"]]
    assert benign and all(c["allowed"] for c in benign), [c for c in benign if not c["allowed"]][:3]
    assert not rec.unsupported and not rec.rejected
    # incident conversations: those of alerts that share no (source, destination, port) with benign traffic
    ordinary = {(c["source_workload"], c["dest_workload"], c["dest_ip"], c["proto"], c["dest_port"]) for c in benign}
    incident = [c for c in result.conversations if c["alert_id"] is not None
                and (c["source_workload"], c["dest_workload"], c["dest_ip"], c["proto"], c["dest_port"]) not in ordinary]
    assert incident and not [c for c in incident if c["allowed"]]
    for a in truth:
        if "dest_ip" in a:
            hits = [c for c in result.conversations if c["dest_ip"] == a["dest_ip"] and c["dest_port"] == a["dest_port"]]
            assert hits and not any(c["allowed"] for c in hits), a["kind"]
    scan = next(a for a in truth if a["kind"] == "port_scan")
    scanned = [c for c in incident if c["dest_ip"] in scan["targets"]]
    assert scanned and not any(c["allowed"] for c in scanned)
    # the excluded flows are listed, with their alert
    assert {e["alert_id"] for e in rec.excluded} == {f"alert-{i}" for i in range(len(truth))}
    # without the alerts the incidents would have been learned: the exclusion is what denies them
    naive = build(read_evidence(con, T0, T0 + SPAN, []), T0, T0 + SPAN, Options())
    vllm = naive.by_workload()["genai-prod/vllm"]
    assert any(r.peer.kind == "cidr" and r.peer.cidr == "169.254.169.254/32" for r in vllm.egress)


def test_recommend_cli_writes_valid_outputs_and_tracks_stability(lake, tmp_path: Path) -> None:
    root, truth = lake
    alerts = tmp_path / "alerts.jsonl"
    alerts.write_bytes(b"\n".join(orjson.dumps(a) for a in _alerts(truth)))
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.cli", "--state-dir", str(tmp_path / "state"), "recommend", "--lake", root,
           "--since", str(T0), "--until", str(T0 + SPAN), "--output", str(out), "--exclude", str(alerts), "--approved-domain", "api.openai.com"]
    statuses = []
    for _ in range(3):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        con = connect(root)
        rows = query_table(con, "SELECT * FROM policy_recommendations").to_pylist()
        statuses.append({r["status"] for r in rows})
    assert statuses == [{"learning"}, {"stabilizing"}, {"stable"}]  # the same flows give the same rules, run after run
    # the lake rows follow policy_recommendation.v1 (one file per period: reruns replace it)
    schema = json.loads((schema_dir() / "policy_recommendation.v1.json").read_text())
    for r in rows:
        doc = {k: (dict(v) if k in ("selector", "peer_selector") and v is not None else v)
               for k, v in r.items() if k in json_schema("policy_recommendation.v1")["properties"]}
        jsonschema.validate(doc, schema)
    assert len({r["run_id"] for r in rows}) == 1
    assert sum(1 for r in rows if r["rule_key"] == "egress|dns|UDP/53 TCP/53") == len({r["workload"] for r in rows})
    # every YAML document validates, and the reports name the excluded alerts
    for name in ("networkpolicies.yaml", "calico-networkpolicies.yaml", "calico-staged.yaml", "guardrails.yaml"):
        for obj in yaml.safe_load_all((out / name).read_text()):
            validate_object(obj)
    html = (out / "report.html").read_text()
    assert "<script" not in html and "http://" not in html and "https://" not in html
    md = (out / "report.md").read_text()
    for i in range(len(truth)):
        assert f"alert-{i}" in md and f"alert-{i}" in html
    assert "Impact replay" in md and "genai-prod/vllm" in md


@pytest.mark.parametrize("args, message", [
    (["--since", str(T0 + 10), "--until", str(T0)], "must be after"),
    (["--since", "yesterday-ish", "--until", str(T0)], "invalid time"),
    (["--since", str(T0), "--until", str(T0 + 60), "--exclude", "/nonexistent/alerts.jsonl"], "no such alerts file"),
    (["--since", str(T0), "--until", str(T0 + 60), "--merge-min-addresses", "1"], "merge_min_addresses"),
    (["--since", str(T0), "--until", str(T0 + 60), "--approved-domain", "bad domain"], "approved domain"),
    (["--since", str(T0), "--until", str(T0 + 60), "--approved-domain", "api.openai.com\nkind: Secret"], "approved domain"),
    (["--since", str(T0), "--until", str(T0 + 60), "--tier", "Bad_Tier"], "tier 'Bad_Tier' is not a valid Kubernetes object name"),
    (["--since", str(T0), "--until", str(T0 + 60), "--domain-mode", "dns"], "domain_mode must be one of inline, networkset, nets"),
])
def test_recommend_cli_bad_input_is_one_line(lake, tmp_path: Path, args, message) -> None:
    root, _ = lake
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--state-dir", str(tmp_path), "recommend", "--lake", root,
                           "--output", str(tmp_path / "o"), "--no-lake-rows", *args], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("flowctl: error:") and message in lines[-1], proc.stderr
