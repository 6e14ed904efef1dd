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

from pipeline.runner import ORPHAN_GRACE_SECONDS
from tests.conftest import process_alive

pytestmark = pytest.mark.integration

STACK = textwrap.dedent("""
    import sys, time
    from pipeline.agent.agent import FlowAgent
    from pipeline.agent.sources.synthetic import SyntheticCluster
    from pipeline.config import Settings
    from pipeline.runner import LocalStack
    stack = LocalStack(Settings(lake=sys.argv[1], state_dir=sys.argv[2], partitions=2)).start()
    agent = FlowAgent(stack.settings)
    for table in SyntheticCluster(seed=3, cluster="it").generate(1_795_000_000, 1_795_000_600, rate=200):
        agent.publish(table)
    agent.finish()
    print(" ".join(str(p.pid) for p in stack.procs.values()), flush=True)
    time.sleep(600)
""")


def test_busy_roles_stop_when_their_stack_process_is_killed(tmp_path: Path) -> None:
    """Worker and sink still working when the process holding the broker is SIGKILLed: both exit by themselves
    (those whose stop needs the broker after the grace period)."""
    parent = subprocess.Popen([sys.executable, "-c", STACK, str(tmp_path / "lake"), str(tmp_path / "state")],
                              stdout=subprocess.PIPE, text=True)
    roles: list[int] = []
    try:
        roles = [int(pid) for pid in parent.stdout.readline().split()]
        assert len(roles) == 2 and all(process_alive(pid) for pid in roles), "worker and sink run while their stack does"
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        deadline = time.monotonic() + ORPHAN_GRACE_SECONDS + 30
        while any(process_alive(pid) for pid in roles) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(process_alive(pid) for pid in roles), "an orphaned role still runs"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait(30)
        for pid in roles:
            if process_alive(pid):
                os.kill(pid, signal.SIGKILL)
