"""`flowctl up` runs the stack, reports stats, and drains everything into the lake on shutdown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from pipeline.query.views import connect, query_table
from tests.conftest import free_port

pytestmark = pytest.mark.integration


def _scrape(port: int) -> dict[str, float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return {family.name: sum(s.value for s in family.samples if s.name.endswith("_total"))
            for family in text_string_to_metric_families(text)}


def _counter(port: int, name: str) -> float:
    """A counter of the role serving /metrics on ``port``; 0 while that role has not started serving."""
    try:
        return _scrape(port).get(name, 0.0)
    except OSError:  # refused, reset or timed out (URLError is one too)
        return 0.0


def _collect(stream, into: list[str]) -> threading.Thread:
    """Read a pipe line by line into ``into`` as it is written, so the test can watch it and it never fills up."""
    def read() -> None:
        for line in stream:
            into.append(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    return reader


def _stats(lines: list[str]) -> tuple[list[dict], list[dict]]:
    """The periodic stats lines and the final summary line of `flowctl up --no-view`."""
    parsed = [json.loads(line) for line in list(lines) if line.startswith("{")]
    return [x for x in parsed if not x.get("summary")], [x for x in parsed if x.get("summary")]


def test_up_runs_reports_and_drains_on_sigterm(tmp_path: Path) -> None:
    base = free_port(3)
    cmd = [sys.executable, "-m", "pipeline.cli", "--state-dir", str(tmp_path / "state"), "--lake", str(tmp_path / "lake"),
           "--partitions", "2", "up", "--no-view", "--stats-every", "2", "--rate", "1500",
           "--detect-interval", "", "--recommend-interval", ""]
    env = {**os.environ, "FLOWCTL_METRICS_PORT": str(base)}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env)
    out_lines: list[str] = []
    err_lines: list[str] = []
    readers = [_collect(proc.stdout, out_lines), _collect(proc.stderr, err_lines)]
    try:
        # Every role of the stack serves its own /metrics: up (the agent) on the port, then worker, then sink.
        wanted = ((base, "flowctl_agent_records_published"), (base + 1, "flowctl_worker_records_in"),
                  (base + 2, "flowctl_sink_rows"))
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            stats, _ = _stats(out_lines)
            if (len(stats) >= 3 and stats[-1]["published"] > stats[0]["published"] > 0
                    and all(_counter(port, name) > 0 for port, name in wanted)):
                break
            time.sleep(0.5)
        assert proc.poll() is None, "".join(err_lines)
        for port, name in wanted:
            assert _scrape(port)[name] > 0, name
        assert (tmp_path / "state" / "broker.json").exists(), "other verbs find the running broker"
        proc.send_signal(signal.SIGTERM)
        proc.wait(180)
        for reader in readers:
            reader.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = "".join(err_lines)
    assert proc.returncode == 0, err[-2000:]
    stats, summary = _stats(out_lines)
    assert len(stats) >= 3 and summary
    assert stats[-1]["published"] > stats[0]["published"] > 0
    published = summary[0]["published_total"]
    flows = query_table(connect(str(tmp_path / "lake")), "SELECT count(*) AS n FROM flows")["n"][0].as_py()
    assert flows == published, "shutdown drains every published flow into the lake"
    assert not (tmp_path / "state" / "broker.json").exists()
