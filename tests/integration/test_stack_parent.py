"""Roles a LocalStack started stop by themselves when the process that started them dies (it held the embedded broker)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

STACK = textwrap.dedent("""
    import sys, time
    from pipeline.config import Settings
    from pipeline.runner import LocalStack
    stack = LocalStack(Settings(lake=sys.argv[1], state_dir=sys.argv[2], partitions=1), worker=False).start()
    print(stack.procs["sink"].pid, flush=True)
    time.sleep(600)
""")


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def test_a_role_stops_when_its_stack_process_is_killed(tmp_path: Path) -> None:
    parent = subprocess.Popen([sys.executable, "-c", STACK, str(tmp_path / "lake"), str(tmp_path / "state")],
                              stdout=subprocess.PIPE, text=True)
    sink = 0
    try:
        sink = int(parent.stdout.readline())
        time.sleep(3)
        assert _alive(sink), "the sink runs while its stack does"
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + 30
        while _alive(sink) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not _alive(sink), "the orphaned sink still runs"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        if sink and _alive(sink):
            os.kill(sink, signal.SIGKILL)
