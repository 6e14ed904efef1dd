"""Helpers shared by every test: free local TCP ports, a lake sink running on a thread of the test."""

from __future__ import annotations

import random
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from pipeline import topics
from pipeline.config import Settings
from pipeline.kafka import end_offsets, group_reader, wait_for_group
from pipeline.sink.consumer import LakeSink
from pipeline.sink.lake import ParquetLakeWriter


def free_port(count: int = 1) -> int:
    """A local TCP port nobody listens on; with ``count``, the first of that many consecutive free ports.

    The port is closed again before it is returned, so a test can also use it as an address that refuses connections.
    """
    if count == 1:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            return sock.getsockname()[1]
    for _ in range(50):
        base = random.randrange(20_000, 60_000 - count)
        socks: list[socket.socket] = []
        try:
            for port in range(base, base + count):
                sock = socket.socket()
                socks.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in socks:
                sock.close()
    raise RuntimeError(f"no {count} consecutive free ports")


@contextmanager
def sink_in_thread(settings: Settings, writer: ParquetLakeWriter | None = None) -> Iterator[tuple[LakeSink, threading.Thread]]:
    """A real LakeSink running on a thread of this process until the block ends: (sink, its thread)."""
    sink = LakeSink(settings, writer=writer)
    stop = threading.Event()
    runner = threading.Thread(target=sink.run, args=(stop,), daemon=True)
    runner.start()
    try:
        yield sink, runner
    finally:
        stop.set()
        runner.join(30)


def wait_until_sink_committed(settings: Settings, timeout: float) -> None:
    """Until the sink's group has committed every message flows.enriched.v1 holds now."""
    probe = group_reader(settings, "sink-committed-probe")
    try:
        wait_for_group(settings, settings.sink_group, {topics.ENRICHED: end_offsets(probe, topics.ENRICHED)},
                       timeout=timeout, what="sink")
    finally:
        probe.close()
