"""NDJSON files of canonical flowlog.v1 records."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pipeline.conform import ConformResult, parse_ndjson


def read_ndjson(path: str | Path, batch_lines: int = 50_000) -> Iterator[tuple[int, ConformResult]]:
    """Yield (first line number, conformed batch) for a file; rejects carry line numbers (1-based) in ``row``."""
    path = Path(path)
    with path.open("rb") as fh:
        lines: list[bytes] = []
        numbers: list[int] = []
        first = 1
        for number, line in enumerate(fh, start=1):
            if line.strip():
                lines.append(line.rstrip(b"\r\n"))
                numbers.append(number)
            if len(lines) >= batch_lines:
                yield first, _batch(lines, numbers)
                first, lines, numbers = number + 1, [], []
        if lines:
            yield first, _batch(lines, numbers)


def _batch(lines: list[bytes], numbers: list[int]) -> ConformResult:
    result = parse_ndjson(lines)
    for r in result.rejects:
        if r.row is not None:
            r.row = numbers[r.row]
    return result
