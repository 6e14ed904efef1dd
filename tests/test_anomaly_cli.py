"""`flowctl detect` end to end on a lake built from the synthetic cluster with an injected exfiltration."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from jsonschema import Draft202012Validator

from jobs.anomaly.scenarios import DAY, T0, LakeBuilder, ScenarioCluster
from pipeline.query.views import connect, query_table
from pipeline.schema import schema_dir
from tests.conftest import free_port

ALERT_SCHEMA = Draft202012Validator(json.loads((schema_dir() / "alert.v1.json").read_text()))
DAY1 = T0 + DAY
EXFIL_START = DAY1 + 14 * 3600  # ScenarioCluster's exfil_burst: genai-prod/tgi, 6 GB to 185.220.101.77, 14:00-14:20


def iso(ts: int) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@pytest.fixture(scope="module")
def built_lake(tmp_path_factory) -> Path:
    """A benign day, then the next day until 16:00 with the exfiltration burst at 14:00."""
    lake = tmp_path_factory.mktemp("detect-cli") / "lake"
    sc = ScenarioCluster(seed=21)
    builder = LakeBuilder(lake, "test.benign")
    for table in sc.benign(T0, DAY1 + 16 * 3600, rate=4.0, scale_up_from=T0 + 10 * DAY):
        builder.add(table)
    table, _ = sc.incident("exfil_burst", DAY1 // DAY)
    builder.add(table)
    builder.close()
    return lake


@pytest.fixture()
def lake(built_lake: Path, tmp_path: Path) -> Path:
    """A private copy: detection writes its alerts into the lake."""
    return Path(shutil.copytree(built_lake, tmp_path / "lake"))


def flowctl(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "FLOWCTL_DETECT_LOOKBACK_HOURS": "24", "FLOWCTL_DETECT_MIN_HISTORY_BUCKETS": "100", **env}
    return subprocess.run([sys.executable, "-m", "pipeline.cli", "--state-dir", str(tmp_path / "state"), *args],
                          capture_output=True, text=True, cwd=tmp_path, env=environ, timeout=120)


def detect(tmp_path: Path, lake: Path, since: int, until: int, *args: str, **env: str) -> subprocess.CompletedProcess:
    return flowctl(tmp_path, "detect", "--lake", str(lake), "--since", iso(since), "--until", iso(until), *args, **env)


def lines(path: Path) -> list[dict]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()]


def one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode != 0
    errors = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(errors) == 1, out.stderr
    assert errors[0].startswith("flowctl: error:") and needle in errors[0], errors[0]


def test_detect_writes_the_alert_file_and_the_lake(tmp_path: Path, lake: Path) -> None:
    out = detect(tmp_path, lake, DAY1 + 12 * 3600, DAY1 + 16 * 3600, "--output", "alerts.jsonl")
    assert out.returncode == 0, out.stderr
    alerts = lines(tmp_path / "alerts.jsonl")
    for a in alerts:
        ALERT_SCHEMA.validate(a)
    exfil = [a for a in alerts if a["source_workload"] == "genai-prod/tgi"]
    assert [a["detector"] for a in exfil] == ["large_transfer_new_destination"], [a["reason"] for a in alerts]
    assert exfil[0]["destinations"] == ["185.220.101.77:443"] and exfil[0]["start_time"] == EXFIL_START
    assert len(alerts) == 1, [a["reason"] for a in alerts]
    assert exfil[0]["id"] in out.stdout and "scored" in out.stderr
    stored = query_table(connect(str(lake)), "SELECT id FROM alerts").column("id").to_pylist()
    assert stored == [exfil[0]["id"]]


def test_scoring_the_same_period_twice_gives_the_same_ids_and_lines(tmp_path: Path, lake: Path) -> None:
    args = (DAY1 + 12 * 3600, DAY1 + 16 * 3600, "--output", "alerts.jsonl")
    assert detect(tmp_path, lake, *args).returncode == 0
    first = (tmp_path / "alerts.jsonl").read_bytes()
    assert detect(tmp_path, lake, *args).returncode == 0
    assert (tmp_path / "alerts.jsonl").read_bytes() == first
    stored = query_table(connect(str(lake)), "SELECT id FROM alerts").column("id").to_pylist()
    assert sorted(stored) == sorted(a["id"] for a in lines(tmp_path / "alerts.jsonl"))


def test_the_interval_loop_scores_each_period_once_and_updates_the_ongoing_incident(tmp_path: Path, lake: Path) -> None:
    out = detect(tmp_path, lake, EXFIL_START, EXFIL_START + 600, "--interval", "5m", "--runs", "3",
                 "--output", "alerts.jsonl")
    assert out.returncode == 0, out.stderr
    periods = re.findall(r"between (\S+Z) and (\S+Z)", out.stderr)
    expected = [(EXFIL_START, EXFIL_START + 600), (EXFIL_START + 600, EXFIL_START + 900),
                (EXFIL_START + 900, EXFIL_START + 1200)]
    assert periods == [(iso(a), iso(b)) for a, b in expected]
    (alert,) = lines(tmp_path / "alerts.jsonl")
    assert alert["detector"] == "large_transfer_new_destination"
    assert (alert["start_time"], alert["end_time"], alert["detected_at"]) == (EXFIL_START, EXFIL_START + 1200,
                                                                             EXFIL_START + 1200)
    assert alert["buckets"] == 4
    versions = query_table(connect(str(lake)), "SELECT id, end_time FROM alerts ORDER BY detected_at").to_pylist()
    assert {v["id"] for v in versions} == {alert["id"]}, "one incident, one id, in every period"
    assert [v["end_time"] for v in versions] == [EXFIL_START + 600, EXFIL_START + 900, EXFIL_START + 1200]


def test_sigterm_stops_the_interval_loop_cleanly(tmp_path: Path, lake: Path) -> None:
    port = free_port()
    environ = {**os.environ, "FLOWCTL_DETECT_LOOKBACK_HOURS": "24", "FLOWCTL_METRICS_PORT": str(port)}
    cmd = [sys.executable, "-m", "pipeline.cli", "--state-dir", str(tmp_path / "state"), "detect", "--lake", str(lake),
           "--since", "-10m", "--until", "now", "--interval", "5m"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=environ)
    try:
        seen = []
        for line in proc.stderr:  # the first period has been scored once this line appears
            seen.append(line)
            if "no traffic between" in line:
                break
        assert proc.poll() is None, "".join(seen)
        # A long-running detect serves /metrics: one period scored so far.
        scraped = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'flowctl_detect_runs_total{outcome="scored"} 1.0' in scraped
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, rest
    assert "SIGTERM received, stopping" in rest


def test_bad_input_gives_one_line_and_a_non_zero_exit(tmp_path: Path) -> None:
    missing = tmp_path / "no-lake"
    one_line_error(detect(tmp_path, missing, DAY1, DAY1 + 3600), "does not exist")
    assert not missing.exists(), "a mistyped lake is not created"
    empty = tmp_path / "empty"
    empty.mkdir()
    one_line_error(detect(tmp_path, empty, DAY1, DAY1 + 3600), "the lake has no flow_windows rows")
    one_line_error(detect(tmp_path, empty, DAY1 + 3600, DAY1), "must be after --since")
    one_line_error(detect(tmp_path, empty, DAY1, DAY1 + 3600, "--interval", "7m"), "whole number of detection buckets")


def test_a_period_without_traffic_is_zero_alerts_not_an_error(tmp_path: Path, lake: Path) -> None:
    out = detect(tmp_path, lake, DAY1 + 20 * DAY, DAY1 + 20 * DAY + 3600, "--output", "alerts.jsonl")
    assert out.returncode == 0, out.stderr
    assert "no traffic between" in out.stderr
    assert (tmp_path / "alerts.jsonl").read_bytes() == b""


def test_a_corrupt_model_file_is_retrained_with_a_clear_message(tmp_path: Path, lake: Path) -> None:
    period = (DAY1 + 12 * 3600, DAY1 + 16 * 3600)
    assert detect(tmp_path, lake, *period).returncode == 0
    models = sorted((tmp_path / "state" / "anomaly" / "models").glob("*.joblib"))
    assert models
    models[0].write_bytes(b"\x00 not a model")
    out = detect(tmp_path, lake, *period, "--output", "alerts.jsonl")
    assert out.returncode == 0, out.stderr
    assert f"model file {models[0]} is unreadable" in out.stderr and "retraining" in out.stderr
    assert [a["detector"] for a in lines(tmp_path / "alerts.jsonl")] == ["large_transfer_new_destination"]
    assert models[0].read_bytes()[:2] != b"\x00 ", "the retrained model replaced the corrupt file"


def test_too_little_history_is_said_in_the_alert_context(tmp_path: Path, lake: Path) -> None:
    out = detect(tmp_path, lake, DAY1 + 12 * 3600, DAY1 + 16 * 3600, "--output", "alerts.jsonl",
                 FLOWCTL_DETECT_MIN_HISTORY_BUCKETS="1000")
    assert out.returncode == 0, out.stderr
    assert "workloads with too little history (< 1000 baseline buckets)" in out.stderr
    (alert,) = [a for a in lines(tmp_path / "alerts.jsonl") if a["source_workload"] == "genai-prod/tgi"]
    assert alert["context"].startswith("too little history:") and "(minimum 1000)" in alert["context"]


def test_a_dead_webhook_fails_the_run_but_every_other_destination_has_the_alerts(tmp_path: Path, lake: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/hook"
    out = detect(tmp_path, lake, DAY1 + 12 * 3600, DAY1 + 16 * 3600, "--output", "alerts.jsonl", "--webhook", url)
    assert out.returncode == 1
    last = out.stderr.strip().splitlines()[-1]
    assert last == "flowctl: error: alert delivery failed: webhook: 1 alerts not delivered"
    assert "gave up on alert" in out.stderr
    (alert,) = lines(tmp_path / "alerts.jsonl")
    assert query_table(connect(str(lake)), "SELECT id FROM alerts").column("id").to_pylist() == [alert["id"]]
