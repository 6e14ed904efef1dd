"""The embedded broker speaks Kafka to both clients the pipeline uses, and injects failures."""

from __future__ import annotations

import asyncio
import time

import aiokafka
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from pipeline.broker.embedded import BrokerError, EmbeddedBroker


@pytest.fixture()
def broker():
    with EmbeddedBroker() as b:
        yield b


def test_topics_get_the_requested_partitions(broker: EmbeddedBroker) -> None:
    broker.create_topic("t.parts", 5)
    meta = Producer({"bootstrap.servers": broker.bootstrap_servers}).list_topics("t.parts", timeout=10)
    assert len(meta.topics["t.parts"].partitions) == 5


def test_confluent_producer_to_aiokafka_consumer_with_headers(broker: EmbeddedBroker) -> None:
    broker.create_topic("t.io", 2)
    p = Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True, "acks": "all"})
    for i in range(20):
        p.produce("t.io", value=f"v{i}".encode(), partition=i % 2, headers=[("batch-id", str(i).encode())])
    assert p.flush(15) == 0

    async def consume() -> list[tuple[bytes, dict]]:
        c = aiokafka.AIOKafkaConsumer("t.io", bootstrap_servers=broker.bootstrap_servers, group_id="g",
                                      auto_offset_reset="earliest")
        await c.start()
        got: list = []
        try:
            deadline = time.monotonic() + 20
            while len(got) < 20 and time.monotonic() < deadline:
                for msgs in (await c.getmany(timeout_ms=500)).values():
                    got += [(m.value, dict(m.headers)) for m in msgs]
        finally:
            await c.stop()
        return got

    got = asyncio.run(consume())
    assert sorted(v for v, _ in got) == sorted(f"v{i}".encode() for i in range(20))
    assert all(h["batch-id"] == v[1:] for v, h in got)


def test_broker_down_delays_delivery_but_loses_nothing(broker: EmbeddedBroker) -> None:
    broker.create_topic("t.down", 1)
    p = Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True, "acks": "all",
                  "log_level": 0})
    p.produce("t.down", value=b"before")
    assert p.flush(10) == 0
    broker.set_broker_down()
    delivered: list = []
    for i in range(5):
        p.produce("t.down", value=f"during{i}".encode(), on_delivery=lambda e, m: delivered.append(e))
    p.flush(1.0)
    assert not [e for e in delivered if e is None], "nothing can be acknowledged while the broker is down"
    broker.set_broker_up()
    assert p.flush(30) == 0
    assert delivered == [None] * 5
    c = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "x"})
    assert c.get_watermark_offsets(TopicPartition("t.down", 0), timeout=10) == (0, 6)
    c.close()


def test_injected_request_errors_reach_the_client(broker: EmbeddedBroker) -> None:
    broker.create_topic("t.err", 1)
    # 29 = TOPIC_AUTHORIZATION_FAILED: not retriable, so the producer reports it
    broker.push_request_errors("Produce", [29])
    p = Producer({"bootstrap.servers": broker.bootstrap_servers, "log_level": 0})
    errors: list = []
    p.produce("t.err", value=b"x", on_delivery=lambda e, m: errors.append(e))
    p.flush(10)
    assert errors and errors[0] is not None and errors[0].code() == 29


def test_stopped_broker_refuses_changes() -> None:
    b = EmbeddedBroker().start()
    b.stop()
    with pytest.raises(BrokerError):
        b.create_topic("late", 1)
    with pytest.raises(KafkaException):
        Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "x", "log_level": 0}).list_topics(timeout=1)
