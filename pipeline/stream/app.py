"""The Faust worker: consumes flows.raw.v1, publishes enriched flows, windows and dead letters.

One Kafka message is a batch of flows (see docs/architecture.md), so Faust's
per-message cost is paid once per few thousand flows. Outputs of a message
are confirmed by Kafka before the message counts as processed, so its offset
is committed only after its outputs are durable.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from pathlib import Path

import faust
from confluent_kafka import TopicPartition

from pipeline import topics
from pipeline.config import Settings
from pipeline.envelope import ARROW, NDJSON, Envelope, encode_arrow, encode_ndjson
from pipeline.kafka import LagGuard, group_reader
from pipeline.stream.enrich import FlowEnricher
from pipeline.stream.processor import FlowProcessor

log = logging.getLogger(__name__)


def _faust_broker_settings(settings: Settings) -> dict:
    servers = [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()]
    conf: dict = {"broker": [f"kafka://{s}" for s in servers]}
    proto = settings.security_protocol.upper()
    context = None
    if proto in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_ca_location or None)
    if proto.startswith("SASL"):
        conf["broker_credentials"] = faust.SASLCredentials(
            username=settings.sasl_username, password=settings.sasl_password,
            mechanism=settings.sasl_mechanism or "PLAIN", ssl_context=context)
    elif context is not None:
        conf["broker_credentials"] = faust.SSLCredentials(context)
    return conf


def create_app(settings: Settings) -> faust.App:
    """The worker app; on the embedded broker topics must exist before it starts (no CreateTopics)."""
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    app = faust.App(
        settings.worker_group,
        **_faust_broker_settings(settings),
        datadir=str(Path(settings.state_dir) / "worker"),
        web_enabled=False,
        topic_allow_declare=not settings.embedded,
        topic_disable_leader=True,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.5,
        consumer_max_fetch_size=16 * 1024 * 1024,
        producer_max_request_size=16 * 1024 * 1024,
        producer_compression_type=None if settings.compression == "none" else settings.compression,
        producer_acks=-1,
        value_serializer="raw",
        key_serializer="raw",
    )
    raw = app.topic(topics.RAW, value_serializer="raw", key_serializer="raw", internal=False)
    enriched = app.topic(topics.ENRICHED, value_serializer="raw", key_serializer="raw")
    windowed = app.topic(topics.WINDOWED, value_serializer="raw", key_serializer="raw")
    dlq = app.topic(topics.DLQ, value_serializer="raw", key_serializer="raw")
    processor = FlowProcessor(settings.window_seconds, settings.grace_seconds, FlowEnricher.from_settings(settings))
    app.flowctl_processor = processor  # type: ignore[attr-defined]
    dlq_partitions = max(1, min(settings.partitions, 3))

    async def publish_windows(partition: int, tables) -> list:
        futures = []
        for table in tables:
            if table.num_rows:
                env = Envelope("flow_window", "1", ARROW, table.num_rows, settings.node, "")
                futures.append(await windowed.send(value=encode_arrow(table), partition=partition,
                                                   headers=env.headers()))
        return futures

    reader = None

    def expect_committed(partition: int) -> None:
        """Where this partition must continue: its committed offset (0 on a fresh embedded broker)."""
        nonlocal reader
        if reader is None:
            reader = group_reader(settings, settings.worker_group)
        offsets = reader.committed([TopicPartition(topics.RAW, partition)], timeout=10)
        committed = offsets[0].offset if offsets else -1
        if committed >= 0:
            processor.expect_offset(partition, committed)
        elif settings.on_embedded_broker:
            # Topics on an embedded broker are created empty by us: anything before the first
            # message we see was dropped by the broker before it was processed.
            processor.expect_offset(partition, 0)

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs):
        for tp in revoked:
            if tp.topic == topics.RAW:
                processor.forget_partition(tp.partition)

    # On the embedded broker the worker waits while the sink lags, or the broker would drop
    # enriched batches the sink has not written yet.
    guard = LagGuard(settings, topics.ENRICHED, settings.sink_group, settings.max_lag_bytes) \
        if settings.on_embedded_broker else None

    async def wait_for_sink() -> None:
        if guard is None or not guard.due():
            return
        while guard.worst_lag_bytes() > settings.max_lag_bytes:
            await asyncio.sleep(0.1)

    @app.agent(raw)
    async def process(stream):
        async for event in stream.events():
            msg = event.message
            if not processor.knows(msg.partition):
                expect_committed(msg.partition)
            await wait_for_sink()
            out = processor.process(event.value, event.headers, msg.partition, msg.offset)
            futures = []
            if out.enriched is not None:
                env = Envelope("flow_enriched", "1", ARROW, out.enriched.num_rows, settings.node, out.batch_id)
                body = encode_arrow(out.enriched)
                if guard is not None:
                    guard.record(len(body))
                futures.append(await enriched.send(value=body, key=event.key,
                                                   partition=msg.partition, headers=env.headers()))
            futures += await publish_windows(msg.partition, out.windows)
            if out.dlq:
                env = Envelope("dlq_record", "1", NDJSON, len(out.dlq), settings.node, out.batch_id)
                futures.append(await dlq.send(value=encode_ndjson(out.dlq), partition=msg.partition % dlq_partitions,
                                              headers=env.headers()))
            if futures:
                await asyncio.gather(*futures)

    @app.timer(interval=1.0)
    async def close_idle_windows():
        for partition, tables in processor.flush_idle(settings.idle_flush_seconds).items():
            futures = await publish_windows(partition, tables)
            if futures:
                await asyncio.gather(*futures)

    return app


def run_worker(settings: Settings) -> None:
    """Run the worker until SIGINT/SIGTERM (blocks; exits the process when done)."""
    app = create_app(settings)
    worker = faust.Worker(app, loglevel=settings.log_level.upper(), quiet=True, redirect_stdouts=False)
    worker.spinner = None  # a terminal spinner garbles the output of the verbs that start workers
    worker.execute_from_commandline()
