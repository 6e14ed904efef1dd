"""The agent's on-disk spool: batches Kafka could not take wait here, in order, until it is back.

A segment (``<sequence>.spool``) holds already-encoded messages with their topic,
partition, key and headers. It is written to a temporary name, fsynced, renamed
and the directory fsynced, so a segment under its final name is complete; a
leftover ``.tmp`` is a write cut short by a crash (its messages were never
counted as delivered, so the source sends them again) and is discarded. Every
segment carries a CRC32 of its body: one that fails the check is moved aside as
``.corrupt`` and reported, never replayed.

``Outbox`` routes the agent's messages: straight to Kafka while Kafka confirms
them, to the spool once deliveries fail (the producer's delivery timeout is the
trigger), and back to Kafka, oldest segment first, once a metadata probe gets an
answer. While the spool holds anything new messages are spooled too, so the
replay keeps their order. A spooled message counts as delivered for the
caller's checkpoint: the spool is local disk, like the checkpoint itself. When
the spool reaches its bound, ``send`` waits (the caller stops reading its
source) until the replay makes room; nothing is discarded.
"""

from __future__ import annotations

import fcntl
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from confluent_kafka import KafkaError, KafkaException, Producer

from pipeline import metrics

if TYPE_CHECKING:
    from pipeline.agent.publisher import DeliveryTracker

log = logging.getLogger(__name__)

MAGIC = b"FLOWSPOOL1\n"
_HEAD = struct.Struct("<11sIQI")  # magic, message count, body length, crc32 of the body
_MSG = struct.Struct("<HiiHQ")  # topic length, partition, key length (-1: none), header count, value length
_HDR = struct.Struct("<Hi")  # header name length, value length (-1: none)
SUFFIX = ".spool"


class SpoolError(RuntimeError):
    """The spool cannot be used (locked by another agent, unreadable directory)."""


class SpoolCorrupt(SpoolError):
    """A segment failed its length or checksum check; it was moved aside, not replayed."""


@dataclass(frozen=True)
class SpooledMessage:
    topic: str
    partition: int  # -1: the producer's partitioner chooses
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes | None], ...] = ()

    @property
    def records(self) -> int:
        """Records in the message, from its ``count`` header."""
        for name, value in self.headers:
            if name == "count" and value:
                try:
                    return int(value)
                except ValueError:
                    return 0
        return 0


def encode_segment(messages: list[SpooledMessage]) -> bytes:
    parts: list[bytes] = []
    for m in messages:
        topic = m.topic.encode()
        parts.append(_MSG.pack(len(topic), m.partition, -1 if m.key is None else len(m.key), len(m.headers), len(m.value)))
        parts.append(topic)
        if m.key is not None:
            parts.append(m.key)
        for name, value in m.headers:
            raw = name.encode()
            parts.append(_HDR.pack(len(raw), -1 if value is None else len(value)))
            parts.append(raw)
            if value is not None:
                parts.append(value)
        parts.append(m.value)
    body = b"".join(parts)
    return _HEAD.pack(MAGIC, len(messages), len(body), zlib.crc32(body)) + body


def decode_segment(data: bytes) -> list[SpooledMessage]:
    """The messages of a segment; raises ValueError when it is torn or damaged."""
    if len(data) < _HEAD.size:
        raise ValueError(f"{len(data)} bytes, shorter than the segment header")
    magic, count, length, crc = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise ValueError("not a spool segment (bad magic)")
    body = memoryview(data)[_HEAD.size:]
    if len(body) != length:
        raise ValueError(f"torn: body has {len(body)} of {length} bytes")
    if zlib.crc32(body) != crc:
        raise ValueError("checksum mismatch")
    out: list[SpooledMessage] = []
    pos = 0
    for _ in range(count):
        tlen, partition, klen, nh, vlen = _MSG.unpack_from(body, pos)
        pos += _MSG.size
        topic = bytes(body[pos:pos + tlen]).decode()
        pos += tlen
        key = None
        if klen >= 0:
            key, pos = bytes(body[pos:pos + klen]), pos + klen
        headers = []
        for _ in range(nh):
            nlen, hlen = _HDR.unpack_from(body, pos)
            pos += _HDR.size
            name = bytes(body[pos:pos + nlen]).decode()
            pos += nlen
            value = None
            if hlen >= 0:
                value, pos = bytes(body[pos:pos + hlen]), pos + hlen
            headers.append((name, value))
        value_bytes = bytes(body[pos:pos + vlen])
        pos += vlen
        out.append(SpooledMessage(topic, partition, key, value_bytes, tuple(headers)))
    if pos != len(body):
        raise ValueError("trailing bytes after the last message")
    return out


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Spool:
    """A bounded directory of segments, oldest first; one agent at a time (an exclusive lock)."""

    def __init__(self, directory: str | Path, max_bytes: int) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self._lock = open(self.directory / ".lock", "a+b")  # noqa: SIM115 (held until close())
        except OSError as exc:
            raise SpoolError(f"cannot use spool directory {self.directory}: {exc}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock.close()
            raise SpoolError(f"spool {self.directory} is in use by another agent") from None
        self._segments: dict[int, int] = {}  # sequence → file size, in sequence order
        self._bytes = 0
        self._next = 0
        self._recover()

    def _recover(self) -> None:
        seqs = []
        for p in self.directory.iterdir():
            stem = p.name.split(".")[0]
            if stem.isdigit():
                seqs.append(int(stem))
            if p.name.endswith(".tmp"):
                log.warning("discarding %s: a spool write cut short by a crash (its records were never counted "
                            "as delivered; the source sends them again)", p)
                p.unlink()
        self._next = max(seqs, default=-1) + 1
        for p in sorted(self.directory.glob("*" + SUFFIX), key=lambda q: int(q.name.split(".")[0])):
            size = p.stat().st_size
            try:
                with p.open("rb") as fh:
                    head = fh.read(_HEAD.size)
                if len(head) < _HEAD.size or _HEAD.unpack(head)[0] != MAGIC or _HEAD.size + _HEAD.unpack(head)[2] != size:
                    raise ValueError("torn or not a spool segment")
            except (OSError, ValueError, struct.error) as exc:
                self._quarantine(p, str(exc))
                continue
            self._segments[int(p.name.split(".")[0])] = size
            self._bytes += size
        if self._segments:
            log.warning("spool %s holds %d segments (%.1f MiB) from an earlier run; they are sent first",
                        self.directory, len(self._segments), self.bytes / 2**20)
        metrics.AGENT_SPOOL_BYTES.set(self.bytes)

    def _quarantine(self, path: Path, reason: str) -> None:
        target = path.with_name(path.name + ".corrupt")
        os.replace(path, target)
        metrics.AGENT_SPOOL_CORRUPT.inc()
        log.error("spool segment %s is damaged (%s); moved to %s and not replayed", path, reason, target.name)

    @property
    def bytes(self) -> int:
        return self._bytes

    @property
    def full(self) -> bool:
        return self.bytes >= self.max_bytes

    def __len__(self) -> int:
        return len(self._segments)

    def segments(self) -> list[int]:
        """Sequence numbers, oldest first."""
        return sorted(self._segments)

    def append(self, messages: list[SpooledMessage]) -> int:
        """Write one segment durably; returns its sequence number."""
        seq = self._next
        self._next += 1
        path = self.directory / f"{seq:012d}{SUFFIX}"
        tmp = path.with_name(path.name + ".tmp")
        data = encode_segment(messages)
        with tmp.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(self.directory)
        self._segments[seq] = len(data)
        self._bytes += len(data)
        metrics.AGENT_SPOOLED.inc(sum(m.records for m in messages))
        metrics.AGENT_SPOOL_BYTES.set(self.bytes)
        return seq

    def read(self, seq: int) -> list[SpooledMessage]:
        """The messages of segment ``seq``; a damaged one is moved aside and raises SpoolCorrupt."""
        path = self.directory / f"{seq:012d}{SUFFIX}"
        try:
            return decode_segment(path.read_bytes())
        except (ValueError, struct.error, UnicodeDecodeError) as exc:
            self._bytes -= self._segments.pop(seq, 0)
            self._quarantine(path, str(exc))
            metrics.AGENT_SPOOL_BYTES.set(self.bytes)
            raise SpoolCorrupt(f"{path}: {exc}") from None

    def remove(self, seq: int) -> None:
        """Kafka confirmed every message of segment ``seq``."""
        (self.directory / f"{seq:012d}{SUFFIX}").unlink(missing_ok=True)
        self._bytes -= self._segments.pop(seq, 0)
        metrics.AGENT_SPOOL_BYTES.set(self.bytes)

    def close(self) -> None:
        self._lock.close()


DIRECT, SPOOLING, REPLAYING = "direct", "spooling", "replaying"


@dataclass
class _Replay:
    seq: int
    remaining: int
    messages: int
    records: int
    failed: bool = False


@dataclass
class OutboxStats:
    spooled_messages: int = 0
    replayed_messages: int = 0
    outages: int = 0
    spool_waits: float = 0.0


class Outbox:
    """Sends messages to Kafka or, while Kafka is unreachable, to the spool (see the module docstring).

    ``tracker`` numbers every message (``issue``) and is told when one is delivered or spooled;
    ``has_room`` (optional) says whether Kafka may take more now (embedded-broker backpressure),
    ``on_replay`` is told the size and partition of every replayed message. Once ``give_up`` is set (the agent is
    stopping) a full spool no longer blocks (it may exceed its bound by one batch) and ``drain`` stops
    waiting for an absent Kafka: what is spooled stays for the next run.
    Without a spool a failed delivery is kept in ``failures`` and ``raise_failures`` reports it.
    """

    def __init__(self, producers: dict[str, Producer], tracker: DeliveryTracker, spool: Spool | None = None,
                 has_room: Callable[[], bool] | None = None, on_replay: Callable[[int, int], None] | None = None,
                 probe_seconds: float = 2.0, replay_segments: int = 4) -> None:
        self.producers = producers
        self.tracker = tracker
        self.spool = spool
        self.has_room = has_room
        self.on_replay = on_replay
        self.probe_seconds = probe_seconds
        self.replay_segments = replay_segments
        self.failures: list[str] = []
        self.give_up: threading.Event | None = None
        self.stats = OutboxStats()
        self.state = DIRECT
        self._to_spool: list[tuple[int, SpooledMessage]] = []  # (ticket, message), failed or held back
        self._replaying: list[_Replay] = []
        self._next_probe = 0.0
        self._warned_full = 0.0
        if spool is not None and len(spool):
            self.state = SPOOLING  # left by an earlier run: probe Kafka, then send it first

    def _enter(self, state: str) -> None:
        if state == self.state:
            return
        if state == SPOOLING and self.state == DIRECT:
            self.stats.outages += 1
            log.warning("Kafka is not confirming deliveries; spooling batches to %s", self.spool.directory)
        elif state == DIRECT:
            log.warning("spool %s is empty again; publishing directly", self.spool.directory)
        self.state = state
        self._next_probe = 0.0

    def kafka_unreachable(self) -> None:
        """Kafka cannot be reached (told by a caller that found out without a delivery): spool from now on."""
        if self.spool is not None and self.state == DIRECT:
            self._enter(SPOOLING)

    def _producer(self, topic: str) -> Producer:
        return self.producers[topic]

    def send(self, topic: str, value: bytes, key: bytes | None = None, partition: int = -1,
             headers: list[tuple[str, bytes]] | None = None, on_success: Callable[[], None] | None = None) -> None:
        """Hand one message over: to Kafka, or to the spool while it holds anything or Kafka is away."""
        ticket = self.tracker.issue()
        headers = list(headers or [])
        if self.spool is not None and (self.state != DIRECT or self._to_spool):
            self._wait_for_spool_room()
            if self.state != DIRECT or self._to_spool:
                self._to_spool.append((ticket, SpooledMessage(topic, partition, key, value, tuple(headers))))
                return
        done = self.tracker.callback(ticket)

        def on_delivery(err: KafkaError | None, msg) -> None:
            if err is None:
                done(None, msg)
                if on_success is not None:
                    on_success()
            elif self.spool is not None:
                # Kept for the next poll, which writes every failed message in one segment.
                self._to_spool.append((ticket, SpooledMessage(topic, partition, msg.key(), msg.value() or b"",
                                                              tuple(headers))))
            else:
                done(err, msg)
                self.failures.append(str(err))

        self._produce(self._producer(topic), topic, value, key, partition, headers, on_delivery)

    def _produce(self, producer: Producer, topic: str, value: bytes, key: bytes | None, partition: int,
                 headers, on_delivery) -> None:
        while True:
            try:
                producer.produce(topic, value=value, key=key, partition=partition, headers=headers,
                                 on_delivery=on_delivery)
                break
            except BufferError:
                # Local queue full: serve delivery reports until there is room, never drop.
                self._serve(0.1)
        producer.poll(0)

    def _wait_for_spool_room(self) -> None:
        started = time.monotonic()
        while self.spool.full and self.state != DIRECT and not self.giving_up():
            now = time.monotonic()
            if now - self._warned_full > 30:
                self._warned_full = now
                log.warning("spool %s is full (%.1f MiB); not reading the source until Kafka takes the backlog",
                            self.spool.directory, self.spool.bytes / 2**20)
            self.poll(0.2)
        self.stats.spool_waits += time.monotonic() - started

    def giving_up(self) -> bool:
        return self.give_up is not None and self.give_up.is_set()

    def _serve(self, timeout: float) -> None:
        first = True
        for producer in self.producers.values():
            producer.poll(timeout if first else 0)
            first = False

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery reports, spool what failed, probe and replay; returns the tracker's watermark."""
        self._serve(timeout)
        if self.spool is None:
            return self.tracker.confirmed_through
        self._write_spool()
        if self.state == SPOOLING and time.monotonic() >= self._next_probe:
            if self._kafka_answers():
                self._enter(REPLAYING)
            else:
                self._next_probe = time.monotonic() + self.probe_seconds
        if self.state == REPLAYING:
            self._pump()
        return self.tracker.confirmed_through

    def _write_spool(self) -> None:
        if not self._to_spool:
            return
        batch = sorted(self._to_spool, key=lambda tm: tm[0])
        self._to_spool = []
        self.spool.append([m for _, m in batch])
        self.stats.spooled_messages += len(batch)
        for ticket, _ in batch:
            self.tracker.callback(ticket)(None, None)
        if self.state == DIRECT:
            self._enter(SPOOLING)

    def _kafka_answers(self) -> bool:
        topic, producer = next(iter(self.producers.items()))
        try:
            producer.list_topics(topic, timeout=1.0)
            return True
        except KafkaException:
            return False

    def _pump(self) -> None:
        """Replay the oldest segments (a few at a time), remove confirmed ones, fall back on failure."""
        kept: list[_Replay] = []
        for r in self._replaying:
            if r.remaining:
                kept.append(r)
            elif r.failed:
                self._enter(SPOOLING)  # the segment stays and is sent again after the next probe
            else:
                self.spool.remove(r.seq)
                self.stats.replayed_messages += r.messages
                metrics.AGENT_REPLAYED.inc(r.records)
        self._replaying = kept
        if self.state != REPLAYING:
            return
        busy = {r.seq for r in self._replaying}
        for seq in self.spool.segments():
            if len(self._replaying) >= self.replay_segments:
                break
            if seq in busy:
                continue
            if self.has_room is not None and not self.has_room():
                break
            try:
                messages = self.spool.read(seq)
            except SpoolCorrupt:
                continue
            replay = _Replay(seq, len(messages), len(messages), sum(m.records for m in messages))
            self._replaying.append(replay)
            for m in messages:
                self._produce(self._producer(m.topic), m.topic, m.value, m.key, m.partition, list(m.headers),
                              self._replay_callback(replay))
                if self.on_replay is not None:
                    self.on_replay(len(m.value), m.partition)
            if not messages:
                replay.remaining = 0
        if not self._replaying and not len(self.spool) and not self._to_spool:
            self._enter(DIRECT)

    @staticmethod
    def _replay_callback(replay: _Replay):
        def on_delivery(err: KafkaError | None, msg) -> None:
            replay.remaining -= 1
            if err is not None:
                replay.failed = True
        return on_delivery

    def drain(self, timeout: float) -> bool:
        """Until Kafka confirmed everything and the spool is empty, or ``timeout``; False if data stays spooled."""
        deadline = time.monotonic() + timeout
        while True:
            self.poll(0.1)
            if self.spool is None or (self.state == DIRECT and not self._to_spool
                                      and not any(len(p) for p in self.producers.values())):
                return True
            if time.monotonic() > deadline or (self.state != DIRECT and self.giving_up()):
                return False

    def raise_failures(self, error: type[Exception]) -> None:
        if self.failures:
            first, count = self.failures[0], len(self.failures)
            self.failures.clear()
            raise error(f"Kafka rejected {count} batches: {first}")
