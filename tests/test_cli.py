"""The CLI contract: every verb has --help; bad input gives one line on stderr and a non-zero exit."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

VERBS = ["broker", "agent", "worker", "sink", "ingest", "sql", "demo", "bench", "up", "detect", "recommend", "query", "lake"]


def flowctl(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pipeline.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120)


def test_top_level_help_lists_every_verb() -> None:
    out = flowctl("--help")
    assert out.returncode == 0
    for verb in VERBS:
        assert verb in out.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_help(verb: str) -> None:
    out = flowctl(verb, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage" in out.stdout


def _one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    assert lines[0].startswith("flowctl: error:") and needle in lines[0]


def test_ingest_of_missing_file_fails_with_one_line(tmp_path: Path) -> None:
    _one_line_error(flowctl("ingest", str(tmp_path / "nope.ndjson"), cwd=tmp_path), "no such file")


def test_sql_error_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "lake").mkdir()
    _one_line_error(flowctl("--lake", str(tmp_path / "lake"), "sql", "SELECT * FROM no_such_table", cwd=tmp_path),
                    "no_such_table")


def test_sql_on_a_missing_lake_is_an_error_and_creates_nothing(tmp_path: Path) -> None:
    _one_line_error(flowctl("--lake", str(tmp_path / "typo"), "sql", "SELECT count(*) FROM flows", cwd=tmp_path),
                    "no lake at")
    assert not (tmp_path / "typo").exists()


def test_sql_unknown_format(tmp_path: Path) -> None:
    _one_line_error(flowctl("--lake", str(tmp_path), "sql", "SELECT 1", "--format", "xml", cwd=tmp_path), "--format")


def test_agent_without_kafka_says_how_to_get_one(tmp_path: Path) -> None:
    _one_line_error(flowctl("--state-dir", str(tmp_path / "state"), "agent", cwd=tmp_path), "flowctl broker")


def test_bad_config_file_is_reported(tmp_path: Path) -> None:
    (tmp_path / "flowctl.toml").write_text("partitions = 'many'\n")
    _one_line_error(flowctl("sql", "SELECT 1", cwd=tmp_path), "partitions")


@pytest.mark.parametrize("interval, needle", [("1m", "must be a whole number of detection buckets"), ("soon", "must look like")])
def test_up_refuses_a_detection_interval_before_starting_anything(tmp_path: Path, interval: str, needle: str) -> None:
    """Checked up front: the detect role would otherwise exit on it again and again once the stack runs."""
    out = flowctl("--state-dir", str(tmp_path / "state"), "--lake", str(tmp_path / "lake"), "up", "--no-view",
                  "--detect-interval", interval, cwd=tmp_path)
    _one_line_error(out, f"--detect-interval {needle}")
    assert not (tmp_path / "state" / "broker.json").exists() and not (tmp_path / "lake").exists()


def test_bad_relative_time(tmp_path: Path) -> None:
    _one_line_error(flowctl("--state-dir", str(tmp_path), "--bootstrap-servers", "127.0.0.1:1", "agent",
                            "--since", "yesterday-ish", cwd=tmp_path), "invalid time")


def test_sql_formats_on_an_empty_lake(tmp_path: Path) -> None:
    """Views exist before any data lands, so analysts' queries bind on a fresh lake."""
    (tmp_path / "lake").mkdir()
    out = flowctl("--lake", str(tmp_path / "lake"), "sql", "SELECT count(*) AS n FROM flows", "-f", "json",
                  cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == '{"n":0}'
    out = flowctl("--lake", str(tmp_path / "lake"), "sql", "SELECT 1 AS a, 'x' AS b", "-f", "csv", cwd=tmp_path)
    assert out.stdout.splitlines() == ['"a","b"', '1,"x"']
