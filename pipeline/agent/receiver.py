"""HTTP push receiver: the Goldmane emitter POSTs ``application/x-ndjson`` flow batches here.

A request is answered 200 only after Kafka confirmed every record of it (flows
and dead letters; with a spool, spooled counts as confirmed), so an emitter that
retries on errors loses nothing; 503 when the agent cannot confirm them, 413 for
bodies above the limit, 411 without a Content-Length, 400 for a gzip body that
does not decompress, 415 for other content encodings. Malformed lines are dead
letters and still get 200 (a retry would not make them valid). Requests are
read by server threads and published by the caller's thread, one at a time.
"""

from __future__ import annotations

import logging
import queue
import threading
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

import orjson

from pipeline import metrics
from pipeline.agent.agent import FlowAgent
from pipeline.agent.publisher import PublishError
from pipeline.agent.sources.base import LineAdapter

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 << 20


@dataclass
class ReceiverStats:
    requests: int = 0
    lines: int = 0
    published: int = 0
    rejected: int = 0


@dataclass
class _Request:
    body: bytes
    done: threading.Event = field(default_factory=threading.Event)
    status: int = 503
    reply: dict = field(default_factory=dict)


def serve_ndjson(agent: FlowAgent, adapter: LineAdapter, url: str, stop: threading.Event,
                 on_ready=None, confirm_timeout: float = 60.0) -> ReceiverStats:
    """Serve until ``stop`` is set; every POST body is one NDJSON batch of ``adapter``'s format."""
    parsed = urlparse(url)
    host, port = parsed.hostname or "0.0.0.0", 8080 if parsed.port is None else parsed.port
    inbox: queue.Queue[_Request] = queue.Queue(maxsize=16)  # full: the handlers wait (backpressure)

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server naming)
            if self.headers.get("Content-Length") is None:
                # A chunked body would otherwise be read as empty and acknowledged: refuse it instead.
                self.close_connection = True
                self._answer(411, {"error": "Content-Length required"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY_BYTES:
                self.close_connection = True
                self._answer(413, {"error": f"body larger than {MAX_BODY_BYTES} bytes"})
                return
            body = self.rfile.read(length)
            encoding = (self.headers.get("Content-Encoding") or "identity").strip().lower()
            if encoding == "gzip":
                try:
                    inflater = zlib.decompressobj(wbits=31)
                    body = inflater.decompress(body, MAX_BODY_BYTES + 1)
                except zlib.error as exc:
                    self._answer(400, {"error": f"gzip body does not decompress: {exc}"})
                    return
                if len(body) > MAX_BODY_BYTES or inflater.unconsumed_tail:
                    self._answer(413, {"error": f"decompressed body larger than {MAX_BODY_BYTES} bytes"})
                    return
            elif encoding != "identity":
                self._answer(415, {"error": f"unsupported Content-Encoding {encoding}"})
                return
            req = _Request(body)
            try:
                inbox.put(req, timeout=confirm_timeout)
            except queue.Full:
                self._answer(503, {"error": "agent busy (Kafka slow or its spool full); retry later"})
                return
            if not req.done.wait(confirm_timeout + 5):
                self._answer(503, {"error": "not confirmed by Kafka in time"})
                return
            self._answer(req.status, req.reply)

        def _answer(self, status: int, doc: dict) -> None:
            body = orjson.dumps(doc)
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt: str, *args) -> None:
            log.debug("receiver: " + fmt, *args)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="ndjson-receiver", daemon=True)
    thread.start()
    if on_ready is not None:
        on_ready(f"http://{host}:{server.server_address[1]}")
    stats = ReceiverStats()
    waiting: list[tuple[int, _Request]] = []
    try:
        while not stop.is_set():
            try:
                req = inbox.get(timeout=0.1)
            except queue.Empty:
                req = None
            if req is not None:
                lines = req.body.split(b"\n")
                batch = adapter.parse(lines)
                try:
                    agent.dead_letter(batch.rejects, origin=f"{adapter.name}:http")
                    agent.publish(batch.table)
                except PublishError as exc:
                    req.status, req.reply = 503, {"error": str(exc)}
                    req.done.set()
                    continue
                req.status, req.reply = 200, {"records": batch.lines, "published": batch.table.num_rows,
                                              "rejected": len(batch.rejects), "skipped": batch.skipped}
                waiting.append((agent.tracker.issued, req))
                stats.requests += 1
                stats.lines += batch.lines
                metrics.AGENT_READ.labels(adapter.name).inc(batch.lines)
                stats.published += batch.table.num_rows
                stats.rejected += len(batch.rejects)
            try:
                confirmed = agent.poll(0)
            except PublishError as exc:
                for _, r in waiting:
                    r.status, r.reply = 503, {"error": str(exc)}
                    r.done.set()
                waiting.clear()
                continue
            while waiting and waiting[0][0] <= confirmed:
                waiting.pop(0)[1].done.set()
    finally:
        server.shutdown()
        server.server_close()
        confirmed_all = False
        try:
            agent.finish()
            confirmed_all = True
        finally:
            for _, r in waiting:
                if not confirmed_all:
                    r.status, r.reply = 503, {"error": "agent stopped before Kafka confirmed the records"}
                r.done.set()
    return stats
