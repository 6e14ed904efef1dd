"""The batch envelope: one Kafka message carries many records (see docs/architecture.md).

Value: an Arrow IPC stream or NDJSON. Headers: schema, schema-version,
content-type, count, node, batch-id.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import orjson
import pyarrow as pa
import pyarrow.ipc as ipc

ARROW = "application/vnd.apache.arrow.stream"
NDJSON = "application/x-ndjson"


class EnvelopeError(ValueError):
    """A message whose value cannot be decoded."""


@dataclass(frozen=True)
class Envelope:
    schema: str
    schema_version: str
    content_type: str
    count: int
    node: str
    batch_id: str
    control: str = ""

    def headers(self) -> list[tuple[str, bytes]]:
        out = [
            ("schema", self.schema.encode()),
            ("schema-version", self.schema_version.encode()),
            ("content-type", self.content_type.encode()),
            ("count", str(self.count).encode()),
            ("node", self.node.encode()),
            ("batch-id", self.batch_id.encode()),
        ]
        if self.control:
            out.append(("control", self.control.encode()))
        return out

    @classmethod
    def from_headers(cls, headers: list[tuple[str, bytes | None]] | dict | None) -> Envelope:
        """Read headers; a message without headers is taken as a one-line NDJSON flowlog batch."""
        items = headers.items() if isinstance(headers, dict) else (headers or [])
        h = {k: (v.decode("utf-8", "replace") if isinstance(v, bytes) else (v or "")) for k, v in items}
        try:
            count = int(h.get("count", "0") or 0)
        except ValueError:
            count = 0
        return cls(
            schema=h.get("schema", "flowlog"),
            schema_version=h.get("schema-version", "1"),
            content_type=h.get("content-type", NDJSON),
            count=count,
            node=h.get("node", ""),
            batch_id=h.get("batch-id", ""),
            control=h.get("control", ""),
        )


def new_batch_id() -> str:
    return uuid.uuid4().hex


def encode_arrow(table: pa.Table, compression: str | None = "zstd") -> bytes:
    """Arrow IPC stream with compressed buffers (Kafka-level compression is then unnecessary).

    ``compression`` is the ``body_compression`` setting: zstd (the default) needs ~40% fewer bytes
    than lz4, which decodes ~3x faster; "none" (or None) leaves the buffers as they are. Readers
    need not know it: the codec is recorded in each message.
    """
    sink = pa.BufferOutputStream()
    options = ipc.IpcWriteOptions(compression=None if compression == "none" else compression)
    with ipc.new_stream(sink, table.schema, options=options) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def decode_arrow(value: bytes, use_threads: bool = True) -> pa.Table:
    """The table of an Arrow IPC stream, whatever codec (or none) each of its buffers was written with.

    ``use_threads=False`` decompresses on the calling thread: cheaper for a caller that already
    decodes several messages side by side.
    """
    try:
        return ipc.open_stream(pa.py_buffer(value), options=ipc.IpcReadOptions(use_threads=use_threads)).read_all()
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise EnvelopeError(f"not a valid Arrow IPC stream: {exc}") from None


def encode_ndjson(records: list[dict]) -> bytes:
    return b"\n".join(orjson.dumps(r) for r in records) + b"\n"


def split_ndjson(value: bytes) -> list[bytes]:
    """Non-empty lines of an NDJSON value."""
    return [line for line in value.split(b"\n") if line.strip()]
