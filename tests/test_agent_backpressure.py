"""The agent's wait for its worker on the embedded broker: it ends when the agent is told to stop, also
while the broker cannot be reached (a stopping agent must not hang on an absent Kafka), and it gives
way to the spool once Kafka stayed away as long as a delivery may take."""

from __future__ import annotations

import threading
import time

import pytest

from pipeline import topics
from pipeline.agent.agent import FlowAgent
from pipeline.agent.publisher import PublishStopped
from pipeline.agent.sources.synthetic import SyntheticCluster
from pipeline.broker.embedded import EmbeddedBroker
from pipeline.config import Settings

pytestmark = pytest.mark.integration

T0 = 1_795_000_000 // 3600 * 3600


@pytest.mark.parametrize("broker_down", [False, True], ids=["broker-up", "broker-down"])
def test_stop_ends_the_wait_for_the_worker(broker_down: bool) -> None:
    tables = list(SyntheticCluster(seed=5, cluster="it").generate(T0, T0 + 3600, rate=200, batch_rows=2000))
    with EmbeddedBroker() as broker:
        broker.create_topics(topics.topic_specs(2, 1))
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, broker_kind="embedded", partitions=2,
                            max_lag_bytes=64 * 1024)
        agent = FlowAgent(settings)
        stop = threading.Event()
        agent.outbox.give_up = stop
        outcome: list[BaseException | None] = []

        def publish() -> None:
            try:
                for table in tables:  # no worker consumes: the lag limit is reached long before the end
                    agent.publish(table)
                outcome.append(None)
            except BaseException as exc:  # the assertion below reports it
                outcome.append(exc)

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        try:
            _wait_until_still(agent, publisher)
            if broker_down:
                broker.set_broker_down()
                time.sleep(1.5)  # the lag can no longer be read
            stopped = time.monotonic()
            stop.set()
            publisher.join(20)
            assert not publisher.is_alive(), "the wait ignored the stop request"
            assert time.monotonic() - stopped < 15
            assert len(outcome) == 1 and isinstance(outcome[0], PublishStopped), outcome
        finally:
            stop.set()
            if broker_down:
                broker.set_broker_up()
            publisher.join(30)
            agent.close()


def test_an_agent_waiting_for_the_worker_spools_once_kafka_stays_away(tmp_path) -> None:
    """Nothing in flight, so no delivery times out: the unreadable lag itself says Kafka is away."""
    tables = list(SyntheticCluster(seed=6, cluster="it").generate(T0, T0 + 3600, rate=200, batch_rows=2000))
    with EmbeddedBroker() as broker:
        broker.create_topics(topics.topic_specs(2, 1))
        settings = Settings(bootstrap_servers=broker.bootstrap_servers, broker_kind="embedded", partitions=2,
                            max_lag_bytes=64 * 1024, agent_spool_after_seconds=1.0)
        agent = FlowAgent(settings, spool_dir=tmp_path / "spool")
        stop = threading.Event()
        agent.outbox.give_up = stop
        publisher = threading.Thread(target=lambda: [agent.publish(t) for t in tables if not stop.is_set()],
                                     daemon=True)
        publisher.start()
        try:
            _wait_until_still(agent, publisher)
            waiting_at = agent.stats.batches
            assert len(agent.spool) == 0
            broker.set_broker_down()
            deadline = time.monotonic() + 30
            while agent.stats.batches == waiting_at and time.monotonic() < deadline:
                time.sleep(0.1)
            assert agent.stats.batches > waiting_at, "publishing goes on into the spool"
            agent.poll(0.5)
            assert len(agent.spool) > 0 and agent.outbox.stats.outages == 1
        finally:
            stop.set()
            broker.set_broker_up()
            publisher.join(30)
            agent.close()


def _wait_until_still(agent: FlowAgent, publisher: threading.Thread) -> None:
    """Until the publisher stopped publishing for 2 s (it waits for the worker)."""
    batches, still_since = -1, time.monotonic()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and publisher.is_alive():
        if agent.stats.batches != batches:
            batches, still_since = agent.stats.batches, time.monotonic()
        elif time.monotonic() - still_since > 2:
            break
        time.sleep(0.1)
    assert publisher.is_alive() and 0 < batches, "the agent waits for the worker once the lag limit is hit"
