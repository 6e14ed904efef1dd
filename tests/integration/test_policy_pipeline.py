"""Recommendation on a lake built by the real pipeline: agent → embedded Kafka → worker → sink → lake → `flowctl detect` →
`flowctl recommend`. Every object validates, the replay allows every benign flow it learned from, incidents are denied."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import yaml

from jobs.policy.learn import read_evidence, read_lake_alerts
from jobs.policy.model import Options, build
from jobs.policy.replay import replay
from jobs.policy.run import policy_objects
from jobs.policy.validate import validate_object
from pipeline.query.views import connect
from pipeline.stream.enrich import stable_workload

pytestmark = pytest.mark.integration


def _flowctl(lake: str, state: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "--lake", lake, "--state-dir", str(state), *args],
                          capture_output=True, text=True, timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr
    return proc


def test_recommendation_from_a_pipeline_built_lake_allows_benign_traffic_and_denies_incidents(incident_lake, tmp_path: Path) -> None:
    lake = str(tmp_path / "lake")
    shutil.copytree(incident_lake.settings.lake, lake)  # detect and recommend write to the lake; the shared one stays as built
    state = tmp_path / "state"
    start, since, until = incident_lake.start, incident_lake.since, incident_lake.until
    # The lake holds two hours of history: detection's baseline is shortened to fit.
    _flowctl(lake, state, "detect", "--since", str(since), "--until", str(until),
             env={"FLOWCTL_DETECT_LOOKBACK_HOURS": "2", "FLOWCTL_DETECT_MIN_HISTORY_BUCKETS": "12"})
    con = connect(lake)
    alerts = read_lake_alerts(con, start, until)
    truth = {t["kind"]: t for t in incident_lake.cluster.ground_truth_anomalies(since, until)}
    workload = {k: stable_workload(pa.array([t["namespace"]]), pa.array([t["name_aggr"]]))[0].as_py() for k, t in truth.items()}
    flagged = {(a.source_workload, d) for a in alerts for d in a.destinations}
    for kind in ("cloud_metadata_access", "exfiltration"):
        assert (workload[kind], truth[kind]["dest"]) in flagged, kind

    out = tmp_path / "out"
    proc = _flowctl(lake, state, "recommend", "--since", str(start), "--until", str(until), "--output", str(out),
                    "--approved-domain", "api.openai.com")
    assert "workloads rejected" in proc.stdout and " 0 workloads rejected" in proc.stdout
    written = {p.name: list(yaml.safe_load_all(p.read_text())) for p in out.glob("*.yaml")}
    assert {"networkpolicies.yaml", "calico-networkpolicies.yaml", "calico-staged.yaml", "guardrails.yaml"} <= set(written)
    for objects in written.values():
        for obj in objects:
            validate_object(obj)

    # The same evidence and alerts give the same recommendation in-process: replay it over the training period.
    rec = build(read_evidence(con, start, until, alerts), start, until, Options(approved_domains=("api.openai.com",)))
    rendered = policy_objects(rec, Options(approved_domains=("api.openai.com",)))
    for name, objects in written.items():
        assert objects == rendered[name], name
    result = replay(con, rec, start, until, alerts)
    benign = [c for c in result.conversations if c["alert_id"] is None and not c["observed_denied"]]
    assert benign and not [c for c in benign if not c["allowed"]], [c for c in benign if not c["allowed"]][:3]
    # flows of alerts that share no (source, destination, port) with benign traffic are all denied
    ordinary = {(c["source_workload"], c["dest_workload"], c["dest_ip"], c["proto"], c["dest_port"]) for c in benign}
    incident = [c for c in result.conversations if c["alert_id"] is not None
                and (c["source_workload"], c["dest_workload"], c["dest_ip"], c["proto"], c["dest_port"]) not in ordinary]
    assert incident and not [c for c in incident if c["allowed"]]

    # The incidents the detector flagged are not learned, listed as not allowed, and denied in the replay.
    report = (out / "report.md").read_text()
    section = report[report.index("Not allowed by this recommendation"):]
    for kind in ("cloud_metadata_access", "exfiltration"):
        t = truth[kind]
        excluded = [e for e in rec.excluded if e["dest_ip"] == t["dest_ip"] and e["dest_port"] == t["dest_port"]]
        assert excluded and all(e["alert_id"] in section for e in excluded), kind
        hits = [c for c in result.conversations if c["dest_ip"] == t["dest_ip"] and c["dest_port"] == t["dest_port"]]
        assert hits and not any(c["allowed"] for c in hits), kind
        assert t["dest_ip"] not in (out / "networkpolicies.yaml").read_text(), kind
    # and the GenAI guardrail denies the metadata endpoint to the namespace of the workload that reached it
    deny = next(g for g in written["guardrails.yaml"] if g["metadata"]["name"] == "flowctl-genai-deny-cloud-metadata")
    assert truth["cloud_metadata_access"]["namespace"] in deny["spec"]["subject"]["namespaces"]["matchExpressions"][0]["values"]

    # Calico's domain-based egress as GlobalNetworkSets validates too, and names the same domains the inline rules did.
    sets_out = tmp_path / "networksets"
    _flowctl(lake, state, "recommend", "--since", str(start), "--until", str(until), "--output", str(sets_out), "--no-lake-rows",
             "--domain-mode", "networkset")
    sets = list(yaml.safe_load_all((sets_out / "calico-globalnetworksets.yaml").read_text()))
    for obj in sets + list(yaml.safe_load_all((sets_out / "calico-networkpolicies.yaml").read_text())):
        validate_object(obj)
    inline = {d for obj in written["calico-networkpolicies.yaml"][1:] for r in obj["spec"]["egress"] for d in r["destination"].get("domains", [])}
    assert inline and inline == {d for s in sets for d in s["spec"]["allowedEgressDomains"]}
