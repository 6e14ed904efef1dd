"""The Faust worker: consumes flows.raw.v1, publishes enriched flows, windows and dead letters.

One Kafka message is a batch of flows (see docs/architecture.md), so Faust's
per-message cost is paid once per few thousand flows. A raw message is
acknowledged — and its offset becomes committable — only after its outputs
were confirmed by Kafka and a window-state snapshot that includes it is on
disk (:mod:`pipeline.stream.state`), so a crash loses and doubles nothing.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections import defaultdict
from pathlib import Path

import faust
from confluent_kafka import TopicPartition

from pipeline import metrics, topics
from pipeline.config import Settings
from pipeline.envelope import ARROW, NDJSON, Envelope, encode_arrow, encode_ndjson
from pipeline.kafka import LagGuard, group_reader
from pipeline.logs import build_handler
from pipeline.stream import transport as embedded_transport
from pipeline.stream.enrich import FlowEnricher
from pipeline.stream.processor import FlowProcessor
from pipeline.stream.state import WindowStateStore

log = logging.getLogger(__name__)

CHECKPOINT_SECONDS = 0.25
CHECKPOINT_MESSAGES = 16
# Outputs not confirmed in this time fail the checkpoint: nothing is acknowledged, and a restart replays.
DELIVERY_TIMEOUT = 20.0


def _faust_broker_settings(settings: Settings) -> dict:
    servers = [s.strip() for s in settings.bootstrap_servers.split(",") if s.strip()]
    scheme = embedded_transport.register() if settings.on_embedded_broker else "kafka"
    conf: dict = {"broker": [f"{scheme}://{s}" for s in servers]}
    proto = settings.security_protocol.upper()
    context = None
    if proto in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=settings.ssl_ca_location or None)
        if settings.ssl_certificate_location:  # mutual TLS: the same client certificate as the librdkafka clients
            context.load_cert_chain(settings.ssl_certificate_location, settings.ssl_key_location or None,
                                    settings.ssl_key_password or None)
    if proto.startswith("SASL"):
        conf["broker_credentials"] = faust.SASLCredentials(
            username=settings.sasl_username, password=settings.sasl_password,
            mechanism=settings.sasl_mechanism or "PLAIN", ssl_context=context)
    elif context is not None:
        conf["broker_credentials"] = faust.SSLCredentials(context)
    return conf


def source_id(settings: Settings) -> str:
    """Identifies the Kafka source whose offsets a snapshot refers to."""
    return settings.lake_source_id or settings.bootstrap_servers


class FlowApp(faust.App):
    """A Faust app that runs ``before_stop`` first when it stops.

    Faust's stop waits until every message handed to an agent is acknowledged, while its timers already
    ended; the worker acknowledges at checkpoints, so it must checkpoint on its own before that wait.
    """

    before_stop = None  # async callable, set by create_app

    async def on_stop(self) -> None:
        if self.before_stop is not None:
            await self.before_stop()
        await super().on_stop()


def create_app(settings: Settings) -> faust.App:
    """The worker app; on the embedded broker topics must exist before it starts (no CreateTopics)."""
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    app = FlowApp(
        settings.worker_group,
        **_faust_broker_settings(settings),
        datadir=str(Path(settings.state_dir) / "worker"),
        web_enabled=False,
        topic_allow_declare=not settings.on_embedded_broker,
        topic_disable_leader=True,
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=0.25,
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
    store = WindowStateStore(Path(settings.state_dir) / "worker" / "windows", source_id(settings))
    lock = asyncio.Lock()
    held: dict[int, list] = defaultdict(list)  # partition → events processed but not yet acknowledged
    last_offset: dict[int, int] = {}
    inflight: list = []  # output deliveries not yet confirmed
    current = {"stream": None, "checkpoint_at": time.monotonic(), "stopping": False}
    reader = None
    # On the embedded broker the worker waits while the sink lags, or the broker would drop
    # enriched batches the sink has not written yet.
    guard = LagGuard(settings, topics.ENRICHED, settings.sink_group, settings.max_lag_bytes) \
        if settings.on_embedded_broker else None

    def committed_offset(partition: int) -> int:
        nonlocal reader
        if reader is None:
            reader = group_reader(settings, settings.worker_group)
        offsets = reader.committed([TopicPartition(topics.RAW, partition)], timeout=10)
        return offsets[0].offset if offsets else -1

    def start_partition(partition: int) -> None:
        """Restore window state and the offset expectation of a partition this worker now owns."""
        committed = committed_offset(partition)
        if committed >= 0:
            processor.expect_offset(partition, committed)
        elif settings.on_embedded_broker:
            # Topics on an embedded broker are created empty by us: anything before the first
            # message we see was dropped by the broker before it was processed.
            processor.expect_offset(partition, 0)
        snapshot = store.load(partition, settings.window_seconds, settings.grace_seconds)
        if snapshot is not None and snapshot.next_offset >= max(committed, 0):
            processor.restore(partition, snapshot.state, snapshot.next_offset)
            log.info("partition %d: restored %d open windows covering offsets below %d", partition,
                     snapshot.state.open_windows, snapshot.next_offset)
        elif committed > 0:
            log.error("partition %d: no window state covers committed offset %d here; windows that were open "
                      "when the partition moved will miss earlier flows (share the state directory between "
                      "workers, or keep partitions on the worker that owns the state)", partition, committed)

    async def send_windows(partition: int, tables) -> list:
        futures = []
        for table in tables:
            if table.num_rows:
                ws = table["window_start"][0].as_py()
                rev = table["revision"][0].as_py()
                # Deterministic id: a window re-emitted after a crash is dropped by the sink.
                env = Envelope("flow_window", "1", ARROW, table.num_rows, settings.node,
                               f"window:{source_id(settings)}:{partition}:{ws}:{rev}")
                body = encode_arrow(table, settings.body_compression)
                futures.append(await windowed.send(value=body, partition=partition, headers=env.headers()))
                metrics.WINDOW_ROWS.labels("correction" if rev else "window").inc(table.num_rows)
        return futures

    async def wait_for_sink() -> None:
        if guard is None or current["stopping"] or not guard.due():
            return
        async with lock:
            # Deliveries still in flight are not in the end offsets yet: confirm them first.
            if inflight:
                await asyncio.wait_for(asyncio.gather(*inflight), DELIVERY_TIMEOUT)
                inflight.clear()
        while guard.worst_lag_bytes() > settings.max_lag_bytes and not current["stopping"]:
            await asyncio.sleep(0.1)

    async def checkpoint() -> None:
        """Snapshot the window state of partitions with held events, then acknowledge those events."""
        async with lock:
            if inflight:
                await asyncio.wait_for(asyncio.gather(*inflight), DELIVERY_TIMEOUT)
                inflight.clear()
            if not held:
                return
            to_ack = []
            for partition, events in held.items():
                if events:
                    store.save(partition, processor.window_state(partition), last_offset[partition] + 1)
                    to_ack += events
            held.clear()
            current["checkpoint_at"] = time.monotonic()
        stream = current["stream"]
        for event in to_ack:
            await stream.ack(event)

    async def final_checkpoint(when: str) -> None:
        try:
            # Bounded: during shutdown the producer may already be gone. Without this checkpoint nothing
            # more is acknowledged, and the next owner replays from the last one — safe, only slower.
            await asyncio.wait_for(checkpoint(), 10.0)
        except Exception as exc:  # noqa: BLE001 - revocation and stop must complete (timeouts included)
            log.warning("no checkpoint at %s (%s); the next owner replays from the last one", when, exc)

    async def before_stop() -> None:
        # From now on every processed message is checkpointed (and so acknowledged) at once, and the wait
        # for the sink ends: Faust's stop waits for the messages already handed to the agent.
        current["stopping"] = True
        await final_checkpoint("stop")

    app.before_stop = before_stop

    @app.on_partitions_revoked.connect
    async def on_revoked(app, revoked, **kwargs):
        await final_checkpoint("partition revocation")
        for tp in revoked:
            if tp.topic == topics.RAW:
                processor.forget_partition(tp.partition)

    @app.agent(raw)
    async def process(stream):
        manual = stream.noack()
        current["stream"] = manual
        async for event in manual.events():
            msg = event.message
            await wait_for_sink()
            async with lock:
                if not processor.knows(msg.partition):
                    start_partition(msg.partition)
                out = processor.process(event.value, event.headers, msg.partition, msg.offset)
                futures = []
                if out.enriched is not None:
                    env = Envelope("flow_enriched", "1", ARROW, out.enriched.num_rows, settings.node, out.batch_id)
                    body = encode_arrow(out.enriched, settings.body_compression)
                    if guard is not None:
                        guard.record(len(body), msg.partition)
                    futures.append(await enriched.send(value=body, key=event.key, partition=msg.partition,
                                                       headers=env.headers()))
                futures += await send_windows(msg.partition, out.windows)
                if out.dlq:
                    env = Envelope("dlq_record", "1", NDJSON, len(out.dlq), settings.node, out.batch_id)
                    futures.append(await dlq.send(value=encode_ndjson(out.dlq),
                                                  partition=msg.partition % dlq_partitions, headers=env.headers()))
                # Confirmed in bulk by the next checkpoint, before the message is acknowledged:
                # one Kafka round trip per checkpoint, not per message.
                inflight.extend(futures)
                held[msg.partition].append(event)
                last_offset[msg.partition] = msg.offset
                pending = sum(len(v) for v in held.values())
            if (pending >= CHECKPOINT_MESSAGES or current["stopping"]
                    or time.monotonic() - current["checkpoint_at"] >= CHECKPOINT_SECONDS):
                await checkpoint()

    @app.timer(interval=CHECKPOINT_SECONDS)
    async def periodic_checkpoint():
        if current["stream"] is not None:
            await checkpoint()

    @app.timer(interval=1.0)
    async def close_idle_windows():
        flushed = False
        async with lock:
            for partition, tables in processor.flush_idle(settings.idle_flush_seconds).items():
                futures = await send_windows(partition, tables)
                if futures:
                    await asyncio.gather(*futures)
                if partition in last_offset:
                    store.save(partition, processor.window_state(partition), last_offset[partition] + 1)
                flushed = True
        if flushed and current["stream"] is not None:
            await checkpoint()

    return app


def run_worker(settings: Settings) -> None:
    """Run the worker until SIGINT/SIGTERM (blocks; exits the process when done)."""
    app = create_app(settings)
    metrics.serve(settings.metrics_port)
    # Faust replaces the root logger's handlers at start: hand it ours so the format stays the configured one.
    level = settings.log_level.upper()
    app.conf.loghandlers = [build_handler(settings, role="worker")]
    worker = faust.Worker(app, loglevel=level, quiet=True, redirect_stdouts=False,
                          logging_config={"version": 1, "disable_existing_loggers": False,
                                          "root": {"level": level, "handlers": []}})
    worker.spinner = None  # a terminal spinner garbles the output of the verbs that start workers
    worker.execute_from_commandline()
