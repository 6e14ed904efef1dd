"""`flowctl up`: the whole pipeline as one long-running service on one machine.

Starts the broker (embedded unless bootstrap servers are configured), the
worker and sink processes, an agent (real-time synthetic traffic in this
process, or any `flowctl agent` source as a process), anomaly detection on an
interval and policy recommendation on an interval, and shows a live view of
rates, lag, dead letters and alerts. Ctrl-C / SIGTERM stops the agent first,
lets the worker and sink drain and commit, then stops everything.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import orjson
from rich.console import Console
from rich.live import Live
from rich.table import Table

from pipeline import metrics, topics
from pipeline.agent.agent import FlowAgent
from pipeline.agent.live import publish_live
from pipeline.config import Settings
from pipeline.kafka import committed_offsets, end_offsets, group_reader
from pipeline.runner import LocalStack, StackError, role_env, write_broker_file

log = logging.getLogger(__name__)


@dataclass
class Snapshot:
    at: float
    ends: dict[str, int]
    worker_lag: int
    sink_lag: int
    rss_mib: dict[str, float] = field(default_factory=dict)
    published: int = 0


def _rss_mib(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class RealtimeSyntheticAgent(threading.Thread):
    """Publishes synthetic cluster traffic for the current time, second by second."""

    def __init__(self, settings: Settings, rate: float, seed: int) -> None:
        super().__init__(name="agent", daemon=True)
        from pipeline.agent.sources.synthetic import SyntheticCluster

        self.settings = settings
        self.rate = rate
        self.cluster = SyntheticCluster(seed=seed, cluster=settings.cluster if settings.cluster != "default" else "local")
        self.stop_event = threading.Event()
        self.published = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        agent = FlowAgent(self.settings, track_batches=False)
        try:
            publish_live(agent, self.cluster, self.rate, self.stop_event, on_publish=self._count)
        except BaseException as exc:  # reported by the supervisor loop
            self.error = exc
        finally:
            agent.close()

    def _count(self, rows: int) -> None:
        self.published += rows


class Stack:
    def __init__(self, settings: Settings, source: str, rate: float, seed: int, detect_interval: str,
                 recommend_interval: float, output: Path, compact_interval: float = 0.0) -> None:
        self.settings = settings
        self.source = source
        self.rate = rate
        self.seed = seed
        self.detect_interval = detect_interval
        self.recommend_interval = recommend_interval
        self.compact_interval = compact_interval
        self.output = output
        self.local = LocalStack(settings)
        self.agent: RealtimeSyntheticAgent | None = None
        self.stop_event = threading.Event()
        # Bounded: a long-running `up` must not grow; ~3 hours of 2 s snapshots.
        self.history: deque[Snapshot] = deque(maxlen=5000)
        self.restarts: dict[str, int] = {}

    def start(self) -> None:
        metrics.serve(self.settings.metrics_port)  # the in-process agent's counters; roles use the next ports
        self.local.start()
        self.settings = self.local.settings
        write_broker_file(self.settings, self.settings.bootstrap_servers)
        if self.source == "synthetic":
            self.agent = RealtimeSyntheticAgent(self.settings, self.rate, self.seed)
            self.agent.start()
        else:
            self.local.start_role("agent", ["agent", "--source", self.source])
        if self.detect_interval:
            self.local.start_role("detect", ["detect", "--interval", self.detect_interval])
        if self.recommend_interval:
            args = ["recommend", "--since", f"-{int(self.recommend_interval)}s", "--until", "now",
                    "--output", str(self.output)]
            threading.Thread(target=self._every, args=(self.recommend_interval, args), name="recommend",
                             daemon=True).start()
        if self.compact_interval:
            # The sink writes a file per partition per flush; merging them, in the open hour too, keeps readers fast.
            args = ["lake", "compact", "--min-age", "1h", "--settled", "2m"]
            threading.Thread(target=self._every, args=(self.compact_interval, args),
                             name="compact", daemon=True).start()

    def _every(self, interval: float, args: list[str]) -> None:
        """Run `flowctl ARGS` every ``interval`` seconds until stopped; a failed run is logged, the next one still runs."""
        env = role_env(self.settings, args[0])
        while not self.stop_event.wait(interval):
            done = subprocess.run([sys.executable, "-m", "pipeline.cli", *args], env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, check=False)
            if done.returncode:
                last = (done.stderr.strip().splitlines() or ["no output"])[-1]
                log.error("flowctl %s failed (exit %d): %s", args[0], done.returncode, last)

    def snapshot(self, reader) -> Snapshot:
        ends = {t: sum(end_offsets(reader, t).values()) for t in (topics.RAW, topics.ENRICHED, topics.WINDOWED,
                                                                   topics.DLQ, topics.ALERTS)}
        raw_end = end_offsets(reader, topics.RAW)
        enr_end = end_offsets(reader, topics.ENRICHED)
        worker_done = committed_offsets(self._worker_reader, topics.RAW, len(raw_end))
        sink_done = committed_offsets(self._sink_reader, topics.ENRICHED, len(enr_end))
        snap = Snapshot(
            at=time.monotonic(), ends=ends,
            worker_lag=sum(max(0, e - worker_done.get(p, 0)) for p, e in raw_end.items()),
            sink_lag=sum(max(0, e - sink_done.get(p, 0)) for p, e in enr_end.items()),
            rss_mib={name: _rss_mib(proc.pid) for name, proc in self.local.procs.items() if proc.poll() is None},
            published=self.agent.published if self.agent else 0,
        )
        snap.rss_mib["up"] = _rss_mib(os.getpid())
        self.history.append(snap)
        return snap

    def _restart_dead_roles(self, console: Console) -> None:
        """A role that exited (e.g. the worker after Kafka was unreachable) restarts from its committed position."""
        for name, proc in list(self.local.procs.items()):
            if proc.poll() is None:
                continue
            self.restarts[name] = self.restarts.get(name, 0) + 1
            if self.restarts[name] > 5:
                raise StackError(f"{name} exited {self.restarts[name]} times (last exit code {proc.returncode}); giving up")
            console.print(f"[yellow]{name} exited with code {proc.returncode}; restarting it[/]")
            del self.local.procs[name]
            self.local.start_role(name, self.local.role_args[name])

    def view(self, snap: Snapshot, started: float) -> Table:
        table = Table(title=f"flowctl up — {self.settings.bootstrap_servers} — lake {self.settings.lake} — "
                            f"{time.monotonic() - started:,.0f}s", header_style="bold")
        for col in ("topic", "messages", "per second"):
            table.add_column(col, justify="right" if col != "topic" else "left")
        previous = self.history[-2] if len(self.history) > 1 else None
        for t, n in snap.ends.items():
            rate = (n - previous.ends[t]) / (snap.at - previous.at) if previous and snap.at > previous.at else 0.0
            table.add_row(t, f"{n:,}", f"{rate:,.1f}")
        flows_rate = ((snap.published - previous.published) / (snap.at - previous.at)) if previous and snap.at > previous.at else 0
        table.add_row("flows published", f"{snap.published:,}", f"{flows_rate:,.0f}")
        table.add_row("worker lag (messages)", f"{snap.worker_lag:,}", "")
        table.add_row("sink lag (messages)", f"{snap.sink_lag:,}", "")
        table.add_row("memory (MiB)", ", ".join(f"{k} {v:,.0f}" for k, v in snap.rss_mib.items()), "")
        return table

    def run(self, duration: float | None, console: Console, live_view: bool, stats_every: float) -> list[Snapshot]:
        started = time.monotonic()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stop_event.set())
        reader = group_reader(self.settings, "flowctl-up-view")
        self._worker_reader = group_reader(self.settings, self.settings.worker_group)
        self._sink_reader = group_reader(self.settings, self.settings.sink_group)
        try:
            live = Live(console=console, refresh_per_second=1, transient=False) if live_view else None
            if live:
                live.start()
            last_stats = 0.0
            while not self.stop_event.wait(2.0):
                self._restart_dead_roles(console)
                if self.agent is not None and self.agent.error is not None:
                    raise RuntimeError(f"agent failed: {self.agent.error}")
                snap = self.snapshot(reader)
                if live:
                    live.update(self.view(snap, started))
                elif time.monotonic() - last_stats >= stats_every:
                    last_stats = time.monotonic()
                    print(orjson.dumps({"t": round(snap.at - started, 1), "published": snap.published,
                                        "worker_lag": snap.worker_lag, "sink_lag": snap.sink_lag,
                                        "rss_mib": {k: round(v, 1) for k, v in snap.rss_mib.items()},
                                        "messages": snap.ends}).decode(), flush=True)
                if duration is not None and time.monotonic() - started >= duration:
                    break
            if live:
                live.stop()
        finally:
            self.stop(console)
            reader.close()
            self._worker_reader.close()
            self._sink_reader.close()
        if not live_view and len(self.history) >= 2:
            summary = soak_summary(list(self.history))
            summary["published_total"] = self.agent.published if self.agent else None
            print(orjson.dumps(summary).decode(), flush=True)
        return list(self.history)

    def stop(self, console: Console) -> None:
        """Agent first; then wait until worker and sink committed everything; then stop the rest."""
        self.stop_event.set()
        console.print("stopping: agent first, then draining the worker and the sink …")
        if self.agent is not None:
            self.agent.stop_event.set()
            self.agent.join(60)
        if "agent" in self.local.procs:
            self.local.kill_role("agent", signal.SIGTERM)
        for name in ("detect",):
            if name in self.local.procs:
                self.local.kill_role(name, signal.SIGTERM)
        try:
            self.local.wait_until_processed(timeout=120)
        except (TimeoutError, RuntimeError) as exc:
            console.print(f"[red]not everything was drained before shutdown: {exc}[/]")
        self.local.stop()
        Path(self.settings.state_dir, "broker.json").unlink(missing_ok=True)


def soak_summary(history: list[Snapshot]) -> dict:
    """Memory and lag at the start and end of a run (after a warm-up of a fifth of it)."""
    warm = history[max(1, len(history) // 5):]
    first, last = warm[0], warm[-1]
    seconds = last.at - first.at
    return {
        "summary": True,
        "seconds": round(seconds, 1),
        "flows_per_second": round((last.published - first.published) / seconds, 1) if seconds else 0.0,
        "rss_mib_start": {k: round(v, 1) for k, v in first.rss_mib.items()},
        "rss_mib_end": {k: round(v, 1) for k, v in last.rss_mib.items()},
        "worker_lag_start": first.worker_lag, "worker_lag_end": last.worker_lag,
        "worker_lag_max": max(s.worker_lag for s in warm),
        "sink_lag_start": first.sink_lag, "sink_lag_end": last.sink_lag, "sink_lag_max": max(s.sink_lag for s in warm),
    }
