"""Structured JSON logs on request, and configured secrets masked in every log record."""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from pipeline import topics
from pipeline.broker.embedded import EmbeddedBroker
from pipeline.config import ConfigError, load_settings
from pipeline.logs import configure_logging

SECRET = "s3cr3t-Pa55word"


@pytest.fixture
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _log_to(fmt: str, restore_root_logger) -> tuple[io.StringIO, logging.Logger]:
    settings = load_settings(env={"FLOWCTL_LOG_FORMAT": fmt, "FLOWCTL_LOG_LEVEL": "info",
                                  "FLOWCTL_SASL_PASSWORD": SECRET})
    stream = io.StringIO()
    configure_logging(settings, role="sink", stream=stream)
    return stream, logging.getLogger("pipeline.sink.test")


def test_json_records_carry_level_logger_role_extra_and_exception(restore_root_logger) -> None:
    stream, log = _log_to("json", restore_root_logger)
    log.info("flushed %d rows", 42, extra={"partition": 3, "topic": "flows.enriched.v1"})
    try:
        raise OSError("disk full")
    except OSError:
        log.exception("write failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "flushed 42 rows"
    assert (first["level"], first["logger"], first["role"]) == ("info", "pipeline.sink.test", "sink")
    assert (first["partition"], first["topic"]) == (3, "flows.enriched.v1")
    assert first["ts"].endswith("Z")
    assert second["level"] == "error" and "OSError: disk full" in second["exception"]


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_secrets_are_masked_in_messages_arguments_and_tracebacks(fmt: str, restore_root_logger) -> None:
    stream, log = _log_to(fmt, restore_root_logger)
    log.warning("connecting with sasl.password=%s", SECRET)
    log.error("config was sasl.password=" + SECRET)
    try:
        raise ValueError(f"authentication failed for password {SECRET}")
    except ValueError:
        log.exception("client error")
    out = stream.getvalue()
    assert SECRET not in out
    assert out.count("***") >= 3


def test_log_format_is_validated() -> None:
    with pytest.raises(ConfigError, match="log_format"):
        load_settings(env={"FLOWCTL_LOG_FORMAT": "xml"})


@pytest.mark.integration
def test_faust_worker_logs_json_lines_and_stops_promptly_on_sigterm(tmp_path: Path) -> None:
    with EmbeddedBroker() as broker:
        broker.create_topics(topics.topic_specs(2, 1))
        env = {**os.environ, "FLOWCTL_BOOTSTRAP_SERVERS": broker.bootstrap_servers, "FLOWCTL_BROKER_KIND": "embedded",
               "FLOWCTL_PARTITIONS": "2", "FLOWCTL_STATE_DIR": str(tmp_path / "state"),
               "FLOWCTL_SASL_PASSWORD": SECRET}
        cmd = [sys.executable, "-m", "pipeline.cli", "--log-format", "json", "--log-level", "info", "worker"]
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=tmp_path)
        lines: list[str] = []
        ready = threading.Event()

        def read() -> None:
            for line in proc.stderr:
                lines.append(line)
                if "[^Worker]: Ready" in line:  # Faust's record once the worker has its partitions and runs
                    ready.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            ready.wait(90)
            assert proc.poll() is None and ready.is_set(), "".join(lines)[-2000:]
            proc.send_signal(signal.SIGTERM)
            proc.wait(25)
            reader.join(10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = "".join(lines)
    assert proc.returncode == 0, err[-2000:]
    records = [json.loads(line) for line in err.splitlines() if line.strip()]
    assert records, "the worker logs at info level"
    assert all(r["role"] == "worker" for r in records)
    assert any(r["logger"].startswith(("faust", "mode")) for r in records), "Faust's own records use the format too"
    assert SECRET not in err
