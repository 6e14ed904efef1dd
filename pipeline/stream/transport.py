"""A Faust transport for the embedded broker: fetches that do not wait long.

Faust fixes aiokafka's fetch wait at 1.5 s, and the embedded broker (librdkafka's mock cluster)
holds a waiting fetch that long even when data arrives; see
:data:`pipeline.broker.embedded.FETCH_WAIT_MS`. A caught-up worker then saw each new batch up to
1.5 s late, and with the agent waiting for the worker's commits that latency, not CPU, held a
worker near 30,000 flows/s. Apache Kafka answers a waiting fetch when data arrives, so
production keeps Faust's own transport.
"""

from __future__ import annotations

from faust.transport.drivers import TRANSPORTS
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Consumer, Transport

from pipeline.broker.embedded import FETCH_WAIT_MS

SCHEME = "flowctl-embedded"


class _ConsumerThread(AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport):  # noqa: ANN001, ANN202 - Faust's signature
        consumer = super()._create_worker_consumer(transport)
        consumer._fetch_max_wait_ms = FETCH_WAIT_MS  # aiokafka passes it to its fetcher at start
        return consumer


class _Consumer(Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class EmbeddedBrokerTransport(Transport):
    Consumer = _Consumer


def register() -> str:
    """Make ``flowctl-embedded://host:port`` broker URLs use this transport; returns the scheme."""
    TRANSPORTS.aliases.setdefault(SCHEME, f"{__name__}:EmbeddedBrokerTransport")
    return SCHEME
