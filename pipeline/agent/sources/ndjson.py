"""NDJSON files of canonical flowlog.v1 records."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import pyarrow as pa

from pipeline.agent.sources.base import LineAdapter, Mapped, SourceBatch, long_line_reject
from pipeline.conform import ConformResult, Reject, parse_ndjson


class NdjsonAdapter(LineAdapter):
    """Canonical records need no mapping; they are validated by the shared conform step."""

    name = "ndjson"

    def map(self, raw: pa.Table, dialect: int) -> Mapped:  # pragma: no cover - parse is overridden
        raise NotImplementedError

    def parse(self, lines: Sequence[bytes], first_line: int = 1) -> SourceBatch:
        kept: list[bytes] = []
        numbers: list[int] = []
        rejects: list[Reject] = []
        for i, line in enumerate(lines):
            if not line.strip():
                continue
            if len(line) > self.max_line_bytes:
                rejects.append(long_line_reject(line, self.max_line_bytes, first_line + i))
                continue
            kept.append(bytes(line))
            numbers.append(i)
        result = parse_ndjson(kept)
        for r in result.rejects:
            i = numbers[r.row] if r.row is not None else 0
            rejects.append(Reject(r.reason, row=first_line + i, raw=bytes(lines[i])))
        rejects.sort(key=lambda r: r.row or 0)
        return SourceBatch(result.table, rejects, lines=sum(1 for line in lines if line.strip()))


def read_ndjson(path: str | Path, batch_lines: int = 50_000) -> Iterator[tuple[int, ConformResult]]:
    """Yield (first line number, conformed batch) for a file; rejects carry line numbers (1-based) in ``row``."""
    adapter = NdjsonAdapter()
    with Path(path).open("rb") as fh:
        lines: list[bytes] = []
        first = 1
        for number, line in enumerate(fh, start=1):
            lines.append(line.rstrip(b"\r\n"))
            if len(lines) >= batch_lines:
                yield first, adapter.parse(lines, first)
                first, lines = number + 1, []
        if lines:
            yield first, adapter.parse(lines, first)
