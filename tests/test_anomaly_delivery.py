"""Alert delivery: a webhook on a real local HTTP server, the JSON Lines file, alerts.v1 on the embedded broker."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import orjson
import pytest
from confluent_kafka import Consumer
from jsonschema import Draft202012Validator

from jobs.anomaly.delivery import JsonlAlertSink, KafkaAlertSink, WebhookAlertSink
from pipeline import topics
from pipeline.broker.embedded import EmbeddedBroker
from pipeline.config import Settings
from pipeline.schema import schema_dir
from tests.conftest import free_port
from tests.test_anomaly import SINCE, build, run, windows

ALERT_SCHEMA = Draft202012Validator(json.loads((schema_dir() / "alert.v1.json").read_text()))


@pytest.fixture(scope="module")
def alerts(tmp_path_factory) -> list[dict]:
    """Real alerts from a detection run: a large transfer, a metadata call and a new destination."""
    t = SINCE + 3600 + np.arange(0, 600, 60)
    lake = build(tmp_path_factory.mktemp("delivery") / "lake",
                 windows("genai-prod/vllm", t, "185.220.101.77", 300_000_000),
                 windows("genai-prod/vllm", t, "169.254.169.254", 400, kind="cloud_metadata", port=80),
                 windows("genai-prod/rag-api", t, "docs.example.org", 900))
    found = run(lake)
    assert len(found) == 3
    return found


class Receiver:
    """A local HTTP server that answers the first POSTs with the given error statuses, then 200."""

    def __init__(self, fail_with: list[int] | None = None, hold: threading.Event | None = None) -> None:
        self.fail_with = list(fail_with or [])
        self.hold = hold
        self.entered = threading.Event()
        self.attempts: list[float] = []
        self.accepted: list[dict] = []
        self.headers: list[dict] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.attempts.append(time.monotonic())
                receiver.entered.set()
                if receiver.hold is not None:
                    receiver.hold.wait(30)
                status = receiver.fail_with.pop(0) if receiver.fail_with else 200
                if status == 200:
                    receiver.accepted.append(orjson.loads(body))
                    receiver.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.hold is not None:
            self.hold.set()
        self.server.shutdown()
        self.server.server_close()


def _dead_url() -> str:
    """A URL on a local port nobody listens on."""
    return f"http://127.0.0.1:{free_port()}/alerts"


def test_webhook_retries_server_errors_with_backoff_then_delivers_once(alerts: list[dict]) -> None:
    with Receiver(fail_with=[500, 503, 500]) as rx:
        sink = WebhookAlertSink(rx.url, attempts=5, backoff=0.05)
        sink.send(alerts[:1], 0, 1)
        assert sink.close() == 0
    assert (sink.delivered, sink.failed) == (1, 0)
    assert rx.accepted == alerts[:1], "delivered exactly once, unchanged"
    assert len(rx.attempts) == 4
    gaps = np.diff(rx.attempts)
    assert all(gap >= 0.05 * 2**n for n, gap in enumerate(gaps)), f"exponential backoff between attempts: {gaps}"
    assert rx.headers[0]["X-Flowctl-Alert-Id"] == alerts[0]["id"]
    assert rx.headers[0]["Content-Type"] == "application/json"


def test_webhook_payload_is_a_valid_alert_v1_document(alerts: list[dict]) -> None:
    with Receiver() as rx:
        sink = WebhookAlertSink(rx.url)
        sink.send(alerts, 0, 1)
        assert sink.close() == 0
    assert sorted(a["id"] for a in rx.accepted) == sorted(a["id"] for a in alerts)
    for doc in rx.accepted:
        ALERT_SCHEMA.validate(doc)


def test_a_slow_receiver_never_holds_the_sender(alerts: list[dict]) -> None:
    release = threading.Event()
    with Receiver(hold=release) as rx:
        sink = WebhookAlertSink(rx.url)
        sink.send(alerts, 0, 1)  # returns while the receiver still holds the first request
        assert rx.entered.wait(10)
        assert not release.is_set() and rx.accepted == []
        release.set()
        assert sink.close() == 0
    assert len(rx.accepted) == len(alerts)


def test_a_dead_receiver_is_reported_and_counted_not_lost_silently(alerts: list[dict], caplog) -> None:
    sink = WebhookAlertSink(_dead_url(), attempts=3, backoff=0.01)
    with caplog.at_level(logging.ERROR, logger="jobs.anomaly.delivery"):
        sink.send(alerts, 0, 1)
        assert sink.close() == len(alerts)
    assert (sink.delivered, sink.failed) == (0, len(alerts))
    for a in alerts:
        assert f"gave up on alert {a['id']} after 3 attempt(s)" in caplog.text


def test_a_client_error_is_not_retried(alerts: list[dict], caplog) -> None:
    with Receiver(fail_with=[400]) as rx, caplog.at_level(logging.ERROR, logger="jobs.anomaly.delivery"):
        sink = WebhookAlertSink(rx.url, attempts=5, backoff=0.01)
        sink.send(alerts[:1], 0, 1)
        assert sink.close() == 1
    assert len(rx.attempts) == 1 and rx.accepted == []
    assert "after 1 attempt(s)" in caplog.text


def test_a_webhook_url_must_be_http() -> None:
    with pytest.raises(ValueError, match="must start with http"):
        WebhookAlertSink("ftp://example.org/hook")


# ---- JSON Lines ------------------------------------------------------------------------------------


def test_jsonl_lines_are_valid_alerts_and_rescoring_does_not_duplicate(tmp_path: Path, alerts: list[dict]) -> None:
    path = tmp_path / "out" / "alerts.jsonl"
    sink = JsonlAlertSink(path)
    sink.send(alerts, 0, 1)
    first = path.read_bytes()
    lines = first.splitlines()
    assert len(lines) == len(alerts)
    for line in lines:
        ALERT_SCHEMA.validate(orjson.loads(line))
    sink.send(alerts, 0, 1)  # the same period scored again: same ids, same documents
    assert path.read_bytes() == first


def test_jsonl_keeps_one_line_per_id_updated_in_place(tmp_path: Path, alerts: list[dict]) -> None:
    a, b, c = alerts
    sink = JsonlAlertSink(tmp_path / "alerts.jsonl")
    sink.send([a, b], 0, 1)
    later = {**b, "end_time": b["end_time"] + 600, "detected_at": b["detected_at"] + 600}
    JsonlAlertSink(tmp_path / "alerts.jsonl").send([later, c], 1, 2)  # a later run, a new process
    assert sink.read() == [a, later, c]


def test_jsonl_refuses_to_overwrite_a_file_that_is_not_alerts(tmp_path: Path, alerts: list[dict]) -> None:
    path = tmp_path / "notes.jsonl"
    path.write_text('{"id": "a-1"}\nnot json\n')
    with pytest.raises(ValueError, match=r"notes.jsonl:2 is not a JSON alert"):
        JsonlAlertSink(path).send(alerts, 0, 1)
    assert path.read_text() == '{"id": "a-1"}\nnot json\n'


# ---- alerts.v1 on the embedded broker ----------------------------------------------------------------


def test_kafka_sink_publishes_one_json_alert_per_message_keyed_by_id(alerts: list[dict]) -> None:
    with EmbeddedBroker() as broker:
        broker.create_topic(topics.ALERTS, 3)
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, broker_kind="embedded")
        sink = KafkaAlertSink(settings)
        sink.send(alerts, 0, 1)
        update = {**alerts[0], "end_time": alerts[0]["end_time"] + 300, "detected_at": alerts[0]["detected_at"] + 300}
        sink.send([update], 1, 2)
        assert sink.close() == 0
        consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "alerts-test",
                             "auto.offset.reset": "earliest", "enable.auto.commit": False})
        consumer.subscribe([topics.ALERTS])
        messages = []
        deadline = time.monotonic() + 30
        while len(messages) < len(alerts) + 1 and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                messages.append(msg)
        consumer.close()
    assert len(messages) == len(alerts) + 1
    docs = [orjson.loads(m.value()) for m in messages]
    for m, doc in zip(messages, docs, strict=True):
        ALERT_SCHEMA.validate(doc)
        assert m.key() == doc["id"].encode()
    assert sorted(d["id"] for d in docs) == sorted([*(a["id"] for a in alerts), update["id"]])
    same = [m for m in messages if m.key() == update["id"].encode()]
    assert len({m.partition() for m in same}) == 1, "updates of one incident share a key, hence a partition"
    assert max((orjson.loads(m.value()) for m in same), key=lambda d: d["detected_at"]) == update
