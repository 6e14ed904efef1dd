"""Where alerts go: the lake's alerts table, a JSON Lines file, the alerts.v1 topic, a webhook.

Each destination is an :class:`AlertSink`. The webhook posts from a background thread
with retries and backoff, so a slow or dead receiver never holds up detection.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import orjson

from jobs.anomaly.alerts import to_table
from pipeline import topics
from pipeline.config import Settings
from pipeline.sink.lake import ParquetLakeWriter

log = logging.getLogger(__name__)

LAKE_TOPIC = "alerts.v1@detect"


class AlertSink:
    """One destination of alerts."""

    name = "sink"

    def send(self, alerts: list[dict], since: int, until: int) -> None:
        raise NotImplementedError

    def close(self) -> int:
        """Finish pending deliveries; returns how many alerts this sink gave up on since it was opened."""
        return 0


class LakeAlertSink(AlertSink):
    """alerts/date=…/hour=…/alerts.v1@detect+0+<since>+<until>.parquet, one name per detection period.

    Scoring the same period again replaces that period's files (stale hour files of the
    same name are removed), so the lake never holds the same run twice.
    """

    name = "lake"

    def __init__(self, lake: str) -> None:
        self.writer = ParquetLakeWriter(lake)

    def file_name(self, since: int, until: int) -> str:
        return f"{LAKE_TOPIC}+0+{int(since)}+{int(until)}.parquet"

    def send(self, alerts: list[dict], since: int, until: int) -> None:
        written = set(self.writer.write("alerts", LAKE_TOPIC, 0, int(since), int(until), to_table(alerts)))
        name = self.file_name(since, until)
        for info in self.writer.files("alerts"):
            if info.base_name == name and info.path not in written:
                self.writer.fs.delete_file(info.path)


class JsonlAlertSink(AlertSink):
    """One JSON alert per line, one line per alert id: the file holds the latest version of every alert.

    A run replaces the lines of the ids it reports (an ongoing incident is updated in place,
    re-scoring a period rewrites identical lines) and appends new ids; lines of other ids are
    kept. The file is rewritten atomically, so a reader never sees half a run.
    """

    name = "jsonl"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def read(self) -> list[dict]:
        """The alerts in the file, in file order (none if it does not exist)."""
        if not self.path.exists():
            return []
        alerts = []
        for n, line in enumerate(self.path.read_bytes().splitlines(), 1):
            if not line.strip():
                continue
            try:
                alert = orjson.loads(line)
            except orjson.JSONDecodeError:
                alert = None
            if not isinstance(alert, dict) or not isinstance(alert.get("id"), str):
                raise ValueError(f"{self.path}:{n} is not a JSON alert; choose another --output file")
            alerts.append(alert)
        return alerts

    def send(self, alerts: list[dict], since: int, until: int) -> None:
        merged = {a["id"]: a for a in self.read()}
        merged.update((a["id"], a) for a in alerts)  # dicts keep the first position of a key: updates stay in place
        body = b"".join(orjson.dumps(a) + b"\n" for a in merged.values())
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_bytes(body)
        tmp.replace(self.path)


class KafkaAlertSink(AlertSink):
    """alerts.v1, one JSON alert per message, keyed by alert id (updates of one incident share a key)."""

    name = "kafka"

    def __init__(self, settings: Settings, topic: str = topics.ALERTS) -> None:
        from confluent_kafka import Producer

        self.topic = topic
        self.producer = Producer({**settings.kafka_client_config(), "enable.idempotence": True})
        self.failed = 0

    def _report(self, err, _msg) -> None:
        if err is not None:
            self.failed += 1
            log.error("alert not delivered to %s: %s", self.topic, err)

    def send(self, alerts: list[dict], since: int, until: int) -> None:
        self.failed = 0
        for a in alerts:
            self.producer.produce(self.topic, key=a["id"].encode(), value=orjson.dumps(a), on_delivery=self._report)
            self.producer.poll(0)
        remaining = self.producer.flush(30)
        if remaining or self.failed:
            raise RuntimeError(f"{remaining + self.failed} alerts not delivered to {self.topic}")


class WebhookAlertSink(AlertSink):
    """POSTs each alert as JSON from a background thread; retries with exponential backoff.

    ``send`` only queues, so a slow or dead receiver never holds detection up. Server errors
    (5xx), 408, 429 and connection failures are retried (``attempts`` in all, waiting
    ``backoff`` × 2^n between them); other 4xx answers are final. Every alert given up on is
    logged with its id and counted in ``failed``.
    """

    name = "webhook"

    def __init__(self, url: str, attempts: int = 5, backoff: float = 0.5, timeout: float = 5.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"webhook URL must start with http:// or https://, got {url!r}")
        self.url = url
        self.attempts = attempts
        self.backoff = backoff
        self.timeout = timeout
        self.delivered = 0
        self.failed = 0
        self._busy = 0  # alerts queued or being posted
        self._lock = threading.Lock()
        self._queue: queue.Queue[dict | None] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    def send(self, alerts: list[dict], since: int, until: int) -> None:
        for a in alerts:
            with self._lock:
                self._busy += 1
            self._queue.put(a)

    def _post(self, alert: dict) -> None:
        request = urllib.request.Request(self.url, data=orjson.dumps(alert), method="POST",
                                         headers={"Content-Type": "application/json", "X-Flowctl-Alert-Id": alert["id"]})
        with urllib.request.urlopen(request, timeout=self.timeout) as response:
            if response.status >= 300:
                raise urllib.error.HTTPError(self.url, response.status, "unexpected status", response.headers, None)

    def _deliver(self, alert: dict) -> bool:
        for attempt in range(self.attempts):
            try:
                self._post(alert)
                return True
            except (OSError, urllib.error.URLError) as exc:
                final = isinstance(exc, urllib.error.HTTPError) and 400 <= exc.code < 500 and exc.code not in (408, 429)
                if final or attempt == self.attempts - 1:
                    log.error("webhook %s gave up on alert %s after %d attempt(s): %s", self.url, alert["id"],
                              attempt + 1, exc)
                    return False
                time.sleep(self.backoff * 2**attempt)
        return False

    def _run(self) -> None:
        while True:
            alert = self._queue.get()
            if alert is None:
                return
            ok = self._deliver(alert)
            with self._lock:
                self._busy -= 1
                if ok:
                    self.delivered += 1
                else:
                    self.failed += 1

    def close(self, timeout: float = 60.0) -> int:
        """Wait (at most ``timeout`` seconds) for queued alerts; returns the alerts not delivered."""
        self._queue.put(None)
        self._thread.join(timeout)
        with self._lock:
            lost = self.failed + self._busy
        if self._busy:
            log.error("webhook %s still retrying after %.0fs; %d alerts undelivered", self.url, timeout, self._busy)
        return lost


def kafka_settings(settings: Settings) -> Settings | None:
    """Settings for publishing alerts: configured Kafka, or a running `flowctl broker`; else None."""
    if not settings.embedded:
        return settings
    from pipeline.runner import running_broker

    address = running_broker(settings)
    return None if address is None else settings.with_overrides(bootstrap_servers=address, broker_kind="embedded")
