"""The Goldmane NDJSON push receiver on a local port, publishing into the embedded broker."""

from __future__ import annotations

import gzip
import http.client
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition

from pipeline import topics
from pipeline.agent.agent import FlowAgent
from pipeline.agent.receiver import MAX_BODY_BYTES, serve_ndjson
from pipeline.agent.sources.goldmane import GoldmaneAdapter
from pipeline.broker.embedded import EmbeddedBroker
from pipeline.config import Settings
from pipeline.envelope import decode_arrow
from tests.test_sources_adapters import GOLDMANE, WHISKER

PARTITIONS = 2


@pytest.fixture
def settings():
    with EmbeddedBroker() as b:
        b.create_topics(topics.topic_specs(PARTITIONS, 1))
        yield Settings(bootstrap_servers=b.bootstrap_servers, broker_kind="embedded", partitions=PARTITIONS,
                       cluster="it", node="node-1"), b


@contextmanager
def receiving(agent: FlowAgent, confirm_timeout: float = 60.0):
    """The receiver on a free port; yields its (host, port)."""
    ready = threading.Event()
    where: list[str] = []
    stop = threading.Event()

    def on_ready(url: str) -> None:
        where.append(url)
        ready.set()

    thread = threading.Thread(target=serve_ndjson, args=(agent, GoldmaneAdapter(cluster="it"), "http://127.0.0.1:0", stop),
                              kwargs={"on_ready": on_ready, "confirm_timeout": confirm_timeout}, daemon=True)
    thread.start()
    try:
        assert ready.wait(30)
        url = urlparse(where[0])
        yield url.hostname, url.port
    finally:
        stop.set()
        thread.join(60)


def post(addr, body: bytes, headers: dict[str, str] | None = None, chunked: bool = False) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(*addr, timeout=60)
    hdrs = {"Content-Type": "application/x-ndjson", **(headers or {})}
    if chunked:
        conn.request("POST", "/", body=iter([body]), headers=hdrs, encode_chunked=True)
    else:
        conn.request("POST", "/", body=body, headers=hdrs)
    resp = conn.getresponse()
    status, doc = resp.status, orjson.loads(resp.read() or b"{}")
    conn.close()
    return status, doc


def _emitter_body(records: list[bytes]) -> bytes:
    """What the Goldmane emitter sends: JSON flows separated by newlines, no trailing newline."""
    return b"\n".join(records)


def _consume(settings: Settings, topic: str, partitions: int) -> list:
    consumer = Consumer({**settings.kafka_client_config(), "group.id": "receiver-test", "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out, misses = [], 0
    while misses < 4:
        msg = consumer.poll(0.5)
        if msg is None:
            misses += 1
        elif msg.error() is None and msg.value():
            out.append(msg)
    consumer.close()
    return out


GOOD = [orjson.dumps(GOLDMANE), orjson.dumps(WHISKER),
        orjson.dumps({**GOLDMANE, "Key": {**GOLDMANE["Key"], "source_name": "vllm-*", "source_namespace": "genai"}})]
BAD = [b"{not json", orjson.dumps({**GOLDMANE, "bytes_in": "many"}),
       orjson.dumps({**GOLDMANE, "Key": {**GOLDMANE["Key"], "action": 3}})]


def test_good_records_reach_the_raw_topic_and_bad_ones_the_dlq_with_reasons(settings) -> None:
    s, _ = settings
    agent = FlowAgent(s, backpressure=False)
    with receiving(agent) as addr:
        status, reply = post(addr, _emitter_body([GOOD[0], BAD[0], GOOD[1], BAD[1], BAD[2]]))
        assert status == 200, reply
        assert reply == {"records": 5, "published": 2, "rejected": 3, "skipped": 0}
        status, reply = post(addr, gzip.compress(_emitter_body([GOOD[2]])), {"Content-Encoding": "gzip"})
        assert (status, reply["published"]) == (200, 1)
        assert post(addr, b"") == (200, {"records": 0, "published": 0, "rejected": 0, "skipped": 0})
    agent.close()
    rows = []
    for msg in _consume(s, topics.RAW, PARTITIONS):
        headers = dict(msg.headers())
        assert headers["node"] == b"node-1" and headers["content-type"] == b"application/vnd.apache.arrow.stream"
        rows += decode_arrow(msg.value()).to_pylist()
    assert sorted(r["source_name_aggr"] for r in rows) == ["client-*", "nginx-5d8f7c6b9d-*", "vllm-*"]
    assert {r["cluster"] for r in rows} == {"it"}
    dead = [orjson.loads(line) for msg in _consume(s, topics.DLQ, PARTITIONS) for line in msg.value().splitlines()]
    by_line = {d["row"]: d for d in dead}
    assert sorted(by_line) == [2, 4, 5], "the line numbers of the bad records in the request"
    assert "invalid JSON" in by_line[2]["reason"] and by_line[2]["raw"] == "{not json"
    assert "bytes_in" in by_line[4]["reason"] and "Pass" in by_line[5]["reason"]
    assert {d["source_topic"] for d in dead} == {"goldmane:http"}


def test_requests_the_receiver_cannot_take_get_clear_status_codes(settings) -> None:
    s, _ = settings
    agent = FlowAgent(s, backpressure=False)
    with receiving(agent) as addr:
        status, reply = post(addr, _emitter_body(GOOD), chunked=True)
        assert status == 411 and "Content-Length" in reply["error"]
        assert post(addr, b"\x1f\x8b not gzip at all", {"Content-Encoding": "gzip"})[0] == 400
        assert post(addr, GOOD[0], {"Content-Encoding": "br"})[0] == 415
        conn = http.client.HTTPConnection(*addr, timeout=30)
        conn.putrequest("POST", "/")
        conn.putheader("Content-Length", str(MAX_BODY_BYTES + 1))
        conn.endheaders()
        assert conn.getresponse().status == 413
        conn.close()
        assert post(addr, GOOD[0])[0] == 200, "the receiver still works"
    agent.close()
    assert len(_consume(s, topics.RAW, PARTITIONS)) == 1, "only the accepted request was published"


def test_unconfirmed_records_get_503_and_spooled_ones_200(settings, tmp_path: Path) -> None:
    """Kafka away: without a spool the emitter is told to retry; with one, spooled records are safe."""
    s, broker = settings
    agent = FlowAgent(s, backpressure=False)
    spooling = FlowAgent(s.with_overrides(agent_spool_after_seconds=1.0), backpressure=False, spool_dir=tmp_path / "spool")
    broker.set_broker_down()
    with receiving(agent, confirm_timeout=1.0) as addr:
        status, reply = post(addr, _emitter_body(GOOD))
        assert status == 503 and "not confirmed" in reply["error"]
        broker.set_broker_up()  # the producer still holds the records and delivers them now
    agent.close()
    broker.set_broker_down()
    with receiving(spooling) as addr:
        status, reply = post(addr, _emitter_body(GOOD))
        assert (status, reply["published"]) == (200, 3)
        assert len(spooling.spool) == 1
        broker.set_broker_up()
    spooling.close()
    assert not list((tmp_path / "spool").glob("*.spool")), "replayed when Kafka came back"
    rows = sum(decode_arrow(m.value()).num_rows for m in _consume(s, topics.RAW, PARTITIONS))
    assert rows == 6, "both requests' records, once each"
