"""The agent's wait for its worker on the embedded broker ends when the agent is told to stop,
also while the broker cannot be reached (a stopping agent must not hang on an absent Kafka)."""

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
            batches, still_since = -1, time.monotonic()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and publisher.is_alive():
                if agent.stats.batches != batches:
                    batches, still_since = agent.stats.batches, time.monotonic()
                elif time.monotonic() - still_since > 2:
                    break  # the publisher waits for the worker
                time.sleep(0.1)
            assert publisher.is_alive() and 0 < batches, "the agent waits for the worker once the lag limit is hit"
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
