"""The agent's main loop for file sources: tail → adapter → Kafka, checkpointing what Kafka confirmed."""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pipeline import metrics
from pipeline.agent.agent import FlowAgent
from pipeline.agent.sources.base import LineAdapter
from pipeline.agent.tail import Chunk, FileTailer

log = logging.getLogger(__name__)


@dataclass
class ShipStats:
    lines: int = 0
    published: int = 0
    rejected: int = 0
    skipped: int = 0
    chunks: int = 0


def ship_file(agent: FlowAgent, tailer: FileTailer, adapter: LineAdapter, follow: bool = True,
              stop: threading.Event | None = None, idle_seconds: float = 0.25, save_every: float = 0.5,
              on_progress: Callable[[ShipStats], None] | None = None) -> ShipStats:
    """Ship what ``tailer`` hands out until ``stop`` is set (or, without ``follow``, until the file is read).

    A chunk's range is marked in flight before it is produced and confirmed in the checkpoint only
    once Kafka acknowledged it and every chunk before it (flows and dead letters alike).
    """
    stop = stop or threading.Event()
    stats = ShipStats()
    # Read at every scrape: a value set by this loop would go stale while it waits for Kafka or the worker.
    metrics.AGENT_SOURCE_LAG.set_function(lambda: tailer.lag_bytes)
    inflight: deque[tuple[int, Chunk]] = deque()
    last_save = time.monotonic()
    unsaved = False

    def settle(timeout: float) -> None:
        nonlocal last_save, unsaved
        confirmed = agent.poll(timeout)
        while inflight and inflight[0][0] <= confirmed:
            tailer.confirm(inflight.popleft()[1])
            unsaved = True
        if unsaved and time.monotonic() - last_save >= save_every:
            tailer.checkpoint.save()
            last_save, unsaved = time.monotonic(), False

    try:
        while not stop.is_set():
            got = False
            for chunk in tailer.chunks():
                got = True
                batch = adapter.parse(chunk.lines, first_line=chunk.first_line)
                tailer.begin(chunk)
                agent.dead_letter(batch.rejects, origin=f"{adapter.name}:{chunk.path}")
                agent.publish(batch.table, batch_key=chunk.batch_key)
                inflight.append((agent.tracker.issued, chunk))
                stats.lines += batch.lines
                metrics.AGENT_READ.labels(adapter.name).inc(batch.lines)
                stats.published += batch.table.num_rows
                stats.rejected += len(batch.rejects)
                stats.skipped += batch.skipped
                stats.chunks += 1
                settle(0)
                if on_progress is not None:
                    on_progress(stats)
                if stop.is_set():
                    break
            if not got:
                if not follow:
                    break
                settle(idle_seconds)
        agent.finish()
        settle(0)
    finally:
        tailer.checkpoint.save()
    return stats
