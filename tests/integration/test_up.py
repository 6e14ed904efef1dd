"""`flowctl up` runs the stack, reports stats, and drains everything into the lake on shutdown."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.query.views import connect, query_table

pytestmark = pytest.mark.integration


def _free_port_base(count: int) -> int:
    """The first of ``count`` consecutive free TCP ports."""
    for _ in range(50):
        base = random.randrange(20_000, 60_000)
        socks = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError("no free port range")


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {family.name: sum(s.value for s in family.samples if s.name.endswith("_total"))
            for family in text_string_to_metric_families(text)}


def test_up_runs_reports_and_drains_on_sigterm(tmp_path: Path) -> None:
    base = _free_port_base(3)
    cmd = [sys.executable, "-m", "pipeline.cli", "--state-dir", str(tmp_path / "state"), "--lake", str(tmp_path / "lake"),
           "--partitions", "2", "up", "--no-view", "--stats-every", "2", "--rate", "1500",
           "--detect-interval", "", "--recommend-interval", ""]
    env = {**os.environ, "FLOWCTL_METRICS_PORT": str(base)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    time.sleep(20)
    assert proc.poll() is None, proc.stderr.read()
    # Every role of the stack serves its own /metrics: up (the agent) on the port, then worker, then sink.
    assert _scrape(base)["flowctl_agent_records_published"] > 0
    assert _scrape(base + 1)["flowctl_worker_records_in"] > 0
    assert _scrape(base + 2)["flowctl_sink_rows"] > 0
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
