"""`flowctl up` runs the stack, reports stats, and drains everything into the lake on shutdown."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.query.views import connect, query_table

pytestmark = pytest.mark.integration


def test_up_runs_reports_and_drains_on_sigterm(tmp_path: Path) -> None:
    cmd = [sys.executable, "-m", "pipeline.cli", "--state-dir", str(tmp_path / "state"), "--lake", str(tmp_path / "lake"),
           "--partitions", "2", "up", "--no-view", "--stats-every", "2", "--rate", "1500",
           "--detect-interval", "", "--recommend-interval", ""]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    time.sleep(20)
    assert proc.poll() is None, proc.stderr.read()
    assert (tmp_path / "state" / "broker.json").exists(), "other verbs find the running broker"
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-2000:]
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    stats = [x for x in lines if not x.get("summary")]
    summary = [x for x in lines if x.get("summary")]
    assert len(stats) >= 3 and summary
    assert stats[-1]["published"] > stats[0]["published"] > 0
    published = summary[0]["published_total"]
    flows = query_table(connect(str(tmp_path / "lake")), "SELECT count(*) AS n FROM flows")["n"][0].as_py()
    assert flows == published, "shutdown drains every published flow into the lake"
    assert not (tmp_path / "state" / "broker.json").exists()
