"""Shared integration fixtures: short group sessions for crash tests; one lake built by the real pipeline, reused by the tests that only read it."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.config import Settings
from pipeline.conform import ConformResult
from pipeline.pipeline_ops import push
from pipeline.runner import LocalStack

T0 = 1_795_000_000 // 3600 * 3600


@pytest.fixture()
def short_sessions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Consumer group sessions of 8 s for the roles this test starts, instead of the defaults (librdkafka 45 s, Faust 60 s).

    A role killed and restarted under the same group gets its partitions back only once the killed member's
    session expired; the restart is what the crash tests assert on, not the length of that wait.
    """
    monkeypatch.setenv("FLOWCTL_KAFKA_EXTRA_SESSION_TIMEOUT_MS", "8000")  # the sink (librdkafka)
    monkeypatch.setenv("FLOWCTL_KAFKA_EXTRA_HEARTBEAT_INTERVAL_MS", "1000")
    monkeypatch.setenv("BROKER_SESSION_TIMEOUT", "8")  # the worker: Faust reads these from the environment
    monkeypatch.setenv("BROKER_HEARTBEAT_INTERVAL", "1")


@dataclass(frozen=True)
class IncidentLake:
    """Two hours of normal traffic, then one hour with the synthetic incidents, through agent → broker → worker → sink."""

    settings: Settings
    cluster: SyntheticCluster
    start: int  # first flow
    since: int  # the incident hour
    until: int


@pytest.fixture(scope="session")
def incident_lake(tmp_path_factory) -> IncidentLake:
    """Read-only for its users: a test that writes to a lake copies it first."""
    root = tmp_path_factory.mktemp("incident-lake")
    settings = Settings(lake=str(root / "lake"), state_dir=str(root / "state"), partitions=2, idle_flush_seconds=1.0,
                        sink_flush_seconds=0.5)
    cluster = SyntheticCluster(seed=5, cluster="it")
    since, until = T0 + 2 * 3600, T0 + 3 * 3600
    tables = [*cluster.generate(T0, since, rate=10), *cluster.generate(since, until, rate=10, anomalies=True)]
    with LocalStack(settings) as stack:
        push(stack, (ConformResult(t) for t in tables), origin="test")
    return IncidentLake(settings, cluster, T0, since, until)
