"""The agent's on-disk spool and the outbox that routes around a Kafka outage (real embedded broker)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from pipeline.agent.publisher import DeliveryTracker
from pipeline.agent.spool import DIRECT, SPOOLING, Outbox, Spool, SpoolCorrupt, SpooledMessage, SpoolError
from pipeline.broker.embedded import EmbeddedBroker

TOPIC = "spool.test"


def _msg(i: int, partition: int = 0) -> SpooledMessage:
    return SpooledMessage(TOPIC, partition, b"key-%d" % i if i % 2 else None, b"value-%d" % i * 50,
                          (("count", str(i).encode()), ("batch-id", b"b%d" % i), ("empty", None)))


def test_segments_come_back_in_order_with_every_field(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    first = spool.append([_msg(0), _msg(1, partition=3)])
    second = spool.append([_msg(2, partition=-1)])
    assert spool.segments() == [first, second] and first < second
    assert spool.read(first) == [_msg(0), _msg(1, partition=3)]
    assert spool.read(second) == [_msg(2, partition=-1)]
    assert _msg(7).records == 7
    spool.remove(first)
    assert spool.segments() == [second]


def test_a_restart_finds_the_segments_and_continues_the_sequence(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    a, b = spool.append([_msg(0)]), spool.append([_msg(1)])
    size = spool.bytes
    spool.close()  # the agent stops (or dies) with data still spooled
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.segments() == [a, b] and again.bytes == size
    c = again.append([_msg(2)])
    assert c > b
    assert [again.read(s)[0] for s in again.segments()] == [_msg(0), _msg(1), _msg(2)]


def test_the_bound_counts_segment_bytes(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1000)
    spool.append([_msg(1)])
    assert not spool.full
    spool.append([_msg(2), _msg(3), _msg(4)])
    assert spool.full and spool.bytes >= 1000
    spool.remove(spool.segments()[1])
    assert not spool.full


def test_a_torn_tail_is_reported_and_moved_aside_not_replayed(tmp_path: Path, caplog) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    good = spool.append([_msg(0)])
    torn = spool.append([_msg(1), _msg(2)])
    spool.close()
    path = tmp_path / f"{torn:012d}.spool"
    path.write_bytes(path.read_bytes()[:-30])  # a file system that kept only part of the last segment
    (tmp_path / "000000000009.spool.tmp").write_bytes(b"half a segment")  # a write cut short by SIGKILL
    again = Spool(tmp_path, max_bytes=1 << 20)
    assert again.segments() == [good]
    assert (tmp_path / f"{torn:012d}.spool.corrupt").exists()
    assert not (tmp_path / "000000000009.spool.tmp").exists()
    assert "damaged" in caplog.text and "cut short" in caplog.text
    assert again.append([_msg(3)]) > 9, "never reuses a sequence number that existed"


def test_a_damaged_body_fails_its_checksum(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    seq = spool.append([_msg(0), _msg(1)])
    path = tmp_path / f"{seq:012d}.spool"
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(SpoolCorrupt, match="checksum"):
        spool.read(seq)
    assert spool.segments() == [] and (tmp_path / f"{seq:012d}.spool.corrupt").exists()


def test_one_agent_per_spool(tmp_path: Path) -> None:
    spool = Spool(tmp_path, max_bytes=1 << 20)
    with pytest.raises(SpoolError, match="in use"):
        Spool(tmp_path, max_bytes=1 << 20)
    spool.close()
    Spool(tmp_path, max_bytes=1 << 20).close()


# -- the outbox against the embedded broker --------------------------------------------------


@pytest.fixture
def broker():
    with EmbeddedBroker() as b:
        b.create_topic(TOPIC, 2)
        yield b


def _producer(broker: EmbeddedBroker) -> Producer:
    return Producer({"bootstrap.servers": broker.bootstrap_servers, "enable.idempotence": True, "acks": "all",
                     "delivery.timeout.ms": 1000, "log.connection.close": "false", "log_level": 0})


def _read_all(broker: EmbeddedBroker, expected: int) -> list[tuple[int, bytes]]:
    consumer = Consumer({"bootstrap.servers": broker.bootstrap_servers, "group.id": "t", "log_level": 0})
    consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(2)])
    out: list[tuple[int, bytes]] = []
    misses = 0
    while len(out) < expected and misses < 20:
        msg = consumer.poll(0.5)
        if msg is None:
            misses += 1
        elif msg.error() is None:
            out.append((msg.partition(), msg.value()))
    consumer.close()
    return out


def _send(outbox: Outbox, i: int) -> None:
    outbox.send(TOPIC, b"m%04d" % i, partition=i % 2, headers=[("count", b"1"), ("batch-id", b"%d" % i)])


def test_outage_spools_then_replays_in_order_and_the_watermark_counts_spooled_as_durable(broker, tmp_path) -> None:
    tracker = DeliveryTracker()
    producer = _producer(broker)
    outbox = Outbox({TOPIC: producer}, tracker, Spool(tmp_path, 1 << 20), probe_seconds=0.2)
    for i in range(10):
        _send(outbox, i)
    assert outbox.drain(30) and tracker.confirmed_through == 10
    broker.set_broker_down()
    for i in range(10, 20):
        _send(outbox, i)
    while outbox.state == DIRECT:  # deliveries time out (1 s), then the failed messages are spooled
        outbox.poll(0.1)
    assert outbox.state == SPOOLING
    for i in range(20, 30):  # while the spool holds anything, new messages join it: order is kept
        _send(outbox, i)
    outbox.poll(0)
    assert tracker.confirmed_through == 30, "spooled messages count as delivered"
    assert len(outbox.spool) >= 1
    broker.set_broker_up()
    assert outbox.drain(60)
    assert outbox.state == DIRECT and len(outbox.spool) == 0
    got = _read_all(broker, 30)
    for p in range(2):
        values = [v for part, v in got if part == p]
        assert values == [b"m%04d" % i for i in range(30) if i % 2 == p], "every message once, in order"
    producer.flush(5)


def test_a_full_spool_stops_the_caller_until_kafka_takes_the_backlog(broker, tmp_path) -> None:
    tracker = DeliveryTracker()
    outbox = Outbox({TOPIC: _producer(broker)}, tracker, Spool(tmp_path, max_bytes=400), probe_seconds=0.2)
    broker.set_broker_down()
    _send(outbox, 0)
    while outbox.state == DIRECT:
        outbox.poll(0.1)
    sent = [0]

    def source() -> None:
        for i in range(1, 40):
            _send(outbox, i)
            outbox.poll(0)
            sent.append(i)

    thread = threading.Thread(target=source, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not outbox.spool.full and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    thread.join(2)  # the spool is full: the source must not get to its end
    assert thread.is_alive(), "the source is not read while the spool is full"
    assert outbox.spool.full and len(sent) < 40
    broker.set_broker_up()
    thread.join(60)
    assert not thread.is_alive() and len(sent) == 40
    assert outbox.drain(60) and len(outbox.spool) == 0
    got = sorted(v for _, v in _read_all(broker, 40))
    assert got == [b"m%04d" % i for i in range(40)]


def test_a_restarted_agent_sends_the_spool_first(broker, tmp_path) -> None:
    spool = Spool(tmp_path, 1 << 20)
    spool.append([SpooledMessage(TOPIC, 0, None, b"old-%d" % i, (("count", b"1"),)) for i in range(3)])
    spool.close()
    outbox = Outbox({TOPIC: _producer(broker)}, DeliveryTracker(), Spool(tmp_path, 1 << 20), probe_seconds=0.2)
    assert outbox.state == SPOOLING
    outbox.send(TOPIC, b"new", partition=0)
    assert outbox.drain(30) and len(outbox.spool) == 0
    assert [v for _, v in _read_all(broker, 4)] == [b"old-0", b"old-1", b"old-2", b"new"]
