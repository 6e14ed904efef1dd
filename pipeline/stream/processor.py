"""What the worker does with one raw message, free of Kafka: decode, validate, enrich, window.

The Faust agent in :mod:`pipeline.stream.app` feeds messages in and publishes
what comes out; tests drive this class directly.
"""

from __future__ import annotations

import base64
import logging
import time
from dataclasses import dataclass, field

import orjson
import pyarrow as pa

from pipeline import metrics, topics
from pipeline.conform import Reject, conform_table, parse_ndjson
from pipeline.envelope import ARROW, NDJSON, Envelope, EnvelopeError, decode_arrow, split_ndjson
from pipeline.stream.enrich import FlowEnricher
from pipeline.stream.windows import WindowAggregator

log = logging.getLogger(__name__)


@dataclass
class ProcessOutput:
    enriched: pa.Table | None = None
    windows: list[pa.Table] = field(default_factory=list)
    dlq: list[dict] = field(default_factory=list)
    batch_id: str = ""


@dataclass
class ProcessorStats:
    messages: int = 0
    records_in: int = 0
    records_out: int = 0
    dead_letters: int = 0
    duplicates: int = 0
    offset_gaps: int = 0
    lost_messages: int = 0
    replayed: int = 0


def _raw_text(raw: bytes | None) -> str | None:
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(raw).decode()


class FlowProcessor:
    def __init__(self, window_seconds: int = 60, grace_seconds: int = 120,
                 enricher: FlowEnricher | None = None, dedup_memory: int = 100_000) -> None:
        self.window_seconds = window_seconds
        self.grace_seconds = grace_seconds
        self.enricher = enricher or FlowEnricher()
        self.windows: dict[int, WindowAggregator] = {}
        self.next_offset: dict[int, int] = {}
        self.stats = ProcessorStats()
        self._seen: dict[str, None] = {}
        self._dedup_memory = dedup_memory
        # Per partition: offsets below this are already in the restored window state.
        self.covered_below: dict[int, int] = {}

    def window_state(self, partition: int) -> WindowAggregator:
        state = self.windows.get(partition)
        if state is None:
            state = self.windows[partition] = WindowAggregator(self.window_seconds, self.grace_seconds)
        return state

    def _dead_letter(self, rejects: list[Reject], partition: int, offset: int, batch_id: str) -> list[dict]:
        now = int(time.time())
        self.stats.dead_letters += len(rejects)
        metrics.WORKER_DEAD_LETTERS.inc(len(rejects))
        return [{
            "reason": r.reason,
            "source_topic": topics.RAW,
            "source_partition": partition,
            "source_offset": offset,
            "batch_id": batch_id or None,
            "row": r.row,
            "record": None if r.record is None else _json(r.record),
            "raw": _raw_text(r.raw) if r.record is None else None,
            "dlq_time": now,
        } for r in rejects]

    def expect_offset(self, partition: int, offset: int) -> None:
        """The offset the partition must continue from (the group's committed position)."""
        self.next_offset[partition] = offset

    def knows(self, partition: int) -> bool:
        return partition in self.next_offset

    def check_offset(self, partition: int, offset: int) -> dict | None:
        """Detect skipped offsets (data the broker dropped); returns a dead-letter record describing the gap."""
        expected = self.next_offset.get(partition)
        self.next_offset[partition] = offset + 1
        if expected is None or offset <= expected:
            return None
        lost = offset - expected
        self.stats.offset_gaps += 1
        self.stats.lost_messages += lost
        metrics.OFFSET_GAPS.labels("worker").inc()
        metrics.LOST_MESSAGES.labels("worker").inc(lost)
        log.error("OFFSET GAP on %s[%d]: expected offset %d, got %d: %d messages were lost before processing",
                  topics.RAW, partition, expected, offset, lost)
        return {"reason": f"offset gap: {lost} messages lost (offsets {expected}..{offset - 1})",
                "source_topic": topics.RAW, "source_partition": partition, "source_offset": expected,
                "batch_id": None, "row": None, "record": None, "raw": None, "dlq_time": int(time.time())}

    def process(self, value: bytes | None, headers, partition: int, offset: int) -> ProcessOutput:
        """Never raises for bad data: a message that cannot be processed goes to the DLQ whole."""
        try:
            return self._process(value, headers, partition, offset)
        except Exception as exc:  # a bug or a hostile batch must not stop the partition or vanish
            log.exception("cannot process %s[%d]@%d; dead-lettering the whole message", topics.RAW, partition, offset)
            env = Envelope.from_headers(headers)
            out = ProcessOutput(batch_id=env.batch_id)
            out.dlq = self._dead_letter([Reject(f"worker error: {type(exc).__name__}: {exc}", raw=value or b"")],
                                        partition, offset, env.batch_id)
            return out

    def restore(self, partition: int, state: WindowAggregator, next_offset: int) -> None:
        """Continue from a window-state snapshot that covers offsets below ``next_offset``."""
        self.windows[partition] = state
        self.covered_below[partition] = next_offset

    def _process(self, value: bytes | None, headers, partition: int, offset: int) -> ProcessOutput:
        self.stats.messages += 1
        metrics.WORKER_MESSAGES.inc()
        env = Envelope.from_headers(headers)
        out = ProcessOutput(batch_id=env.batch_id)
        gap = self.check_offset(partition, offset)
        if gap is not None:
            out.dlq.append(gap)
        if offset < self.covered_below.get(partition, -1):
            # Its flows are in the restored window state and its outputs were delivered before the crash.
            self.stats.replayed += 1
            return out
        state = self.window_state(partition)
        if env.control == "flush":
            out.windows = state.flush()
            return out
        if env.batch_id:
            if env.batch_id in self._seen:
                self.stats.duplicates += 1
                metrics.WORKER_DUPLICATES.inc()
                log.info("dropping redelivered batch %s at %s[%d]@%d", env.batch_id, topics.RAW, partition, offset)
                return out
            self._remember(env.batch_id)
        batch_id = env.batch_id or f"{topics.RAW}+{partition}+{offset}"
        value = value or b""
        if env.schema not in ("flowlog", "flowlog.v1") or env.schema_version not in ("1", "v1"):
            out.dlq += self._dead_letter(
                [Reject(f"unsupported schema {env.schema} version {env.schema_version}", raw=value)],
                partition, offset, env.batch_id)
            return out
        try:
            if env.content_type == ARROW:
                result = conform_table(decode_arrow(value))
            elif env.content_type in (NDJSON, "application/json", "application/x-json-stream"):
                result = parse_ndjson(split_ndjson(value))
            else:
                raise EnvelopeError(f"unsupported content-type {env.content_type!r}")
        except EnvelopeError as exc:
            out.dlq += self._dead_letter([Reject(str(exc), raw=value)], partition, offset, env.batch_id)
            return out
        self.stats.records_in += result.table.num_rows + len(result.rejects)
        metrics.WORKER_RECORDS_IN.inc(result.table.num_rows + len(result.rejects))
        if result.rejects:
            out.dlq += self._dead_letter(result.rejects, partition, offset, env.batch_id)
        if result.table.num_rows:
            out.enriched = self.enricher.enrich(result.table, batch_id)
            self.stats.records_out += out.enriched.num_rows
            metrics.WORKER_RECORDS_OUT.inc(out.enriched.num_rows)
            out.windows = state.add(out.enriched)
            metrics.OPEN_WINDOWS.set(sum(s.open_windows for s in self.windows.values()))
        return out

    def flush_idle(self, idle_seconds: float) -> dict[int, list[pa.Table]]:
        """Close the windows of partitions that received nothing for ``idle_seconds``."""
        return {p: s.flush() for p, s in self.windows.items() if s.open_windows and s.idle_for() >= idle_seconds}

    def _remember(self, batch_id: str) -> None:
        self._seen[batch_id] = None
        if len(self._seen) > self._dedup_memory:
            for old in list(self._seen)[: self._dedup_memory // 10]:
                del self._seen[old]

    def forget_partition(self, partition: int) -> None:
        self.windows.pop(partition, None)
        self.next_offset.pop(partition, None)
        self.covered_below.pop(partition, None)


def _json(record) -> str:
    return orjson.dumps(record, default=str).decode()
