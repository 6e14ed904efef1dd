"""Run the roles together on one machine: embedded broker, worker and sink processes, agent.

Used by ``flowctl ingest``, ``flowctl demo``, ``flowctl bench`` and the integration
tests. The worker and the sink run as the same ``flowctl worker`` / ``flowctl sink``
processes an operator would start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from pipeline import topics
from pipeline.broker.embedded import EmbeddedBroker
from pipeline.config import ENV_PREFIX, Settings
from pipeline.kafka import end_offsets, ensure_topics, group_reader, wait_for_group

log = logging.getLogger(__name__)

BROKER_FILE = "broker.json"


class StackError(RuntimeError):
    pass


def settings_env(settings: Settings) -> dict[str, str]:
    """FLOWCTL_* variables that reproduce ``settings`` in a child process."""
    env = {}
    for f in dataclasses.fields(settings):
        value = getattr(settings, f.name)
        if isinstance(value, bool):
            env[ENV_PREFIX + f.name.upper()] = "true" if value else "false"
        elif isinstance(value, (str, int, float)):
            env[ENV_PREFIX + f.name.upper()] = str(value)
    for key, value in settings.kafka_extra.items():
        env[f"{ENV_PREFIX}KAFKA_EXTRA_{key.replace('.', '_').upper()}"] = str(value)
    return env


# One machine, several roles: each serves /metrics on metrics_port + its offset (the parent keeps metrics_port).
METRICS_PORT_OFFSETS = {"worker": 1, "sink": 2, "agent": 3, "detect": 4}


# Set for the roles a LocalStack starts: the pid of the process that started them (see stop_with_parent).
PARENT_ENV = ENV_PREFIX + "STACK_PARENT"
ORPHAN_GRACE_SECONDS = 15.0


def role_env(settings: Settings, role: str) -> dict[str, str]:
    """The environment of a child process running ``role`` with ``settings``."""
    env = {**os.environ, **settings_env(settings), PARENT_ENV: str(os.getpid())}
    if settings.metrics_port:
        env[ENV_PREFIX + "METRICS_PORT"] = str(settings.metrics_port + METRICS_PORT_OFFSETS.get(role, 0))
    return env


def stop_with_parent() -> None:
    """In a role a LocalStack started: stop (SIGTERM to itself) once the process that started it is gone,
    and exit ORPHAN_GRACE_SECONDS later if that stop has not finished.

    The embedded broker lives in that process; a role left behind by a killed ``flowctl up`` or a crashed
    test would otherwise retry a dead address forever. Does nothing in a process started any other way.
    """
    parent = os.environ.pop(PARENT_ENV, "")
    if not parent.isdigit():
        return
    pid = int(parent)

    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(1.0)
        log.warning("the process that started this role (pid %d) is gone; stopping", pid)
        os.kill(os.getpid(), signal.SIGTERM)
        # A stop that needs the broker (a final commit, leaving the group) cannot finish without it.
        time.sleep(ORPHAN_GRACE_SECONDS)
        log.error("still running %.0fs after its stack died; exiting (files written are kept, offsets not "
                  "committed are read again by the next run)", ORPHAN_GRACE_SECONDS)
        logging.shutdown()
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def broker_file(settings: Settings) -> Path:
    return Path(settings.state_dir) / BROKER_FILE


def write_broker_file(settings: Settings, bootstrap: str) -> Path:
    path = broker_file(settings)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bootstrap_servers": bootstrap, "pid": os.getpid()}))
    return path


def running_broker(settings: Settings) -> str | None:
    """Address of a ``flowctl broker`` started earlier from this directory, if it still runs."""
    path = broker_file(settings)
    if not path.exists():
        return None
    try:
        info = json.loads(path.read_text())
        os.kill(int(info["pid"]), 0)
    except (ValueError, KeyError, OSError):
        return None
    return str(info["bootstrap_servers"])


class LocalStack:
    """Broker (embedded unless bootstrap servers are set), worker process and sink process."""

    def __init__(self, settings: Settings, worker: bool = True, sink: bool = True) -> None:
        self.settings = settings
        self.broker: EmbeddedBroker | None = None
        self.procs: dict[str, subprocess.Popen] = {}
        self.role_args: dict[str, list[str]] = {}  # what each role was started with, for restarts
        self._want = [name for name, on in (("worker", worker), ("sink", sink)) if on]

    def __enter__(self) -> LocalStack:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> LocalStack:
        if self.settings.embedded:
            self.broker = EmbeddedBroker().start()
            run_id = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + f"-{os.getpid()}"
            self.settings = self.settings.with_overrides(bootstrap_servers=self.broker.bootstrap_servers,
                                                         broker_kind="embedded",
                                                         lake_source_id=f"embedded-{run_id}")
        ensure_topics(self.settings, topics.topic_specs(self.settings.partitions, self.settings.replication_factor),
                      self.broker)
        for name in self._want:
            self.start_role(name)
        return self

    def start_role(self, name: str, args: list[str] | None = None) -> subprocess.Popen:
        """Start `flowctl ARGS` (default: `flowctl NAME`) as the role ``name`` of this stack."""
        self.role_args[name] = args or [name]
        cmd = [sys.executable, "-m", "pipeline.cli", *self.role_args[name]]
        proc = subprocess.Popen(cmd, env=role_env(self.settings, name), stdin=subprocess.DEVNULL)
        self.procs[name] = proc
        return proc

    def kill_role(self, name: str, sig: int = signal.SIGKILL, grace: float = 30.0) -> int:
        """Signal a role; one that has not exited ``grace`` seconds later is killed (as Kubernetes would).

        Returns its exit code (negative: the signal that ended it)."""
        proc = self.procs.pop(name)
        proc.send_signal(sig)
        try:
            return proc.wait(grace)
        except subprocess.TimeoutExpired:
            log.error("%s did not stop within %.0fs of signal %d; killing it", name, grace, sig)
            proc.kill()
            return proc.wait(30)

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise StackError(f"{name} process exited with code {proc.returncode}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                log.error("%s did not stop within 30s; killing it", name)
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.broker is not None:
            self.broker.stop()
            self.broker = None

    def wait_until_processed(self, timeout: float = 300.0) -> None:
        """Block until the worker consumed everything on the raw topic and the sink committed its outputs."""
        reader = group_reader(self.settings, self.settings.worker_group + "-probe")
        try:
            raw_end = end_offsets(reader, topics.RAW)
            self._wait("worker", self.settings.worker_group, {topics.RAW: raw_end}, timeout)
            outputs = {t: end_offsets(reader, t) for t in (topics.ENRICHED, topics.WINDOWED, topics.DLQ)}
            self._wait("sink", self.settings.sink_group, outputs, timeout)
        finally:
            reader.close()

    def _wait(self, role: str, group: str, targets: dict[str, dict[int, int]], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if role in self.procs:
                self.check_alive()
            try:
                wait_for_group(self.settings, group, targets, timeout=min(5.0, max(0.1, deadline - time.monotonic())),
                               what=role)
                return
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise
