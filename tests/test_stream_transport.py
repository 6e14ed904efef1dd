"""The worker's Kafka consumer fetches with a short wait on the embedded broker and Faust's own on Kafka."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pipeline.broker.embedded import FETCH_WAIT_MS
from pipeline.config import load_settings
from pipeline.stream.app import create_app
from pipeline.stream.transport import EmbeddedBrokerTransport


def worker_consumer(tmp_path: Path, **env: str):
    settings = load_settings(env={**env, "FLOWCTL_STATE_DIR": str(tmp_path / "state")})
    app = create_app(settings)

    async def build():  # aiokafka creates its consumer inside a running loop, as the worker does
        return app.consumer._new_consumer_thread()._create_worker_consumer(app.transport)

    return app, asyncio.run(build())


def test_embedded_broker_consumer_waits_briefly_for_fetches(tmp_path) -> None:
    app, consumer = worker_consumer(tmp_path, FLOWCTL_BOOTSTRAP_SERVERS="127.0.0.1:9092", FLOWCTL_BROKER_KIND="embedded")
    assert isinstance(app.transport, EmbeddedBrokerTransport)
    assert consumer._fetch_max_wait_ms == FETCH_WAIT_MS


def test_apache_kafka_keeps_fausts_transport(tmp_path) -> None:
    app, consumer = worker_consumer(tmp_path, FLOWCTL_BOOTSTRAP_SERVERS="kafka-1:9092", FLOWCTL_BROKER_KIND="kafka")
    assert not isinstance(app.transport, EmbeddedBrokerTransport)
    assert [str(u) for u in app.conf.broker] == ["kafka://kafka-1:9092"]
    assert consumer._fetch_max_wait_ms > FETCH_WAIT_MS  # long polls: Kafka answers when data arrives
