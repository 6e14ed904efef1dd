"""Helpers shared by every test: free local TCP ports, a lake sink running on a thread of the test.

Guards for the whole run: a test whose non-daemon thread outlives it fails (such a thread would keep the
test process from exiting once every test ran), child processes left at the end are killed and listed,
and a run that takes longer than RUN_LIMIT_SECONDS, or does not exit within EXIT_LIMIT_SECONDS of its last
test, prints every thread's stack and ends with a failure instead of hanging.
"""

from __future__ import annotations

import faulthandler
import os
import random
import signal
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

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


RUN_LIMIT_SECONDS = 40 * 60  # `make test` takes 7-13 minutes on 2 cores
EXIT_LIMIT_SECONDS = 60


def process_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process from /proc, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it has ended)."""
    stat = process_stat(pid)
    return stat is not None and stat[0] != "Z"


def _kill_children(out, why: str) -> None:
    """SIGKILL this process's live children, each named on ``out`` with ``why``."""
    me = os.getpid()
    for proc in Path("/proc").glob("[0-9]*"):
        pid = int(proc.name)
        stat = process_stat(pid)
        if stat is None or stat[1] != me or stat[0] == "Z":
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            os.kill(pid, signal.SIGKILL)
        except OSError:
            continue  # it ended while we looked
        out.write(f"child process {pid} {why}, killed: {cmd}\n")
    out.flush()


def _report_and_exit(config: pytest.Config, why: str, status: int) -> None:
    """Print ``why``, every thread's stack and the live child processes on the real terminal; end the run."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.suspend_global_capture(in_=True)
    out = sys.__stderr__
    out.write(f"\n{'!' * 20} {why} {'!' * 20}\n")
    out.flush()
    faulthandler.dump_traceback(file=out, all_threads=True)
    _kill_children(out, "still running")
    os._exit(status)


def _watchdog(config: pytest.Config, seconds: float, why: str, status: int) -> threading.Event:
    """After ``seconds``, unless the returned event is set first: _report_and_exit with ``status``."""
    done = threading.Event()

    def watch() -> None:
        if not done.wait(seconds):
            _report_and_exit(config, why, status)

    threading.Thread(target=watch, name="test-run-watchdog", daemon=True).start()
    return done


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_RUN_DONE] = _watchdog(
        session.config, RUN_LIMIT_SECONDS, f"the test run took longer than {RUN_LIMIT_SECONDS}s", 1)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    session.config.stash[_RUN_DONE].set()
    _kill_children(sys.__stderr__, "outlived the tests")
    session.config.stash[_STATUS] = int(exitstatus)


def pytest_unconfigure(config: pytest.Config) -> None:
    _watchdog(config, EXIT_LIMIT_SECONDS, f"the test process did not exit within {EXIT_LIMIT_SECONDS}s of its last test",
              config.stash.get(_STATUS, 1))


_RUN_DONE = pytest.StashKey[threading.Event]()
_STATUS = pytest.StashKey[int]()


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test() -> Iterator[None]:
    """A test's non-daemon threads end with it: one left running would keep the test process from exiting."""
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + 10
    while True:
        left = [t for t in threading.enumerate() if t not in before and not t.daemon and t.is_alive()
                and not t.name.startswith("ThreadPoolExecutor")]  # idle pool workers end at exit on their own
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not left, f"non-daemon threads outlived the test: {[t.name for t in left]}"
