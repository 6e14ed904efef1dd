"""Follow a flow-log file like a log shipper: appends, rotation, truncation, restart.

The file is identified by device and inode, not by name, so a rotated file
(renamed away, a new file created under the name) is read to its end before
the new one. A file that shrank was truncated in place and is read again from
the start.

The checkpoint remembers per file the byte offset up to which Kafka confirmed
every record, plus the boundaries of ranges handed out but not yet confirmed.
A range boundary is written *before* the range is published; after a crash the
same ranges are read and published again with the same batch ids, so the
worker drops what Kafka already had, and nothing is lost or doubled.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

log = logging.getLogger(__name__)


@dataclass
class FileState:
    path: str
    offset: int = 0  # confirmed: every line before it is in Kafka
    line: int = 0  # lines before ``offset``
    inflight: list[tuple[int, int]] = field(default_factory=list)  # (end offset, end line) handed out, in order
    epoch: int = 0  # bumped when the file is truncated: confirmations of older chunks no longer apply


@dataclass
class Chunk:
    """Complete lines of one file range ``[start, end)``."""

    key: str
    path: str
    start: int
    end: int
    first_line: int  # 1-based number of the first line
    end_line: int
    lines: list[bytes]
    epoch: int = 0

    @property
    def batch_key(self) -> str:
        return f"{self.key}#{self.epoch}@{self.start}-{self.end}"


class Checkpoint:
    """Per-file positions in a JSON file, replaced atomically (a crash leaves the old or the new one)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.files: dict[str, FileState] = {}
        if self.path.exists():
            doc = orjson.loads(self.path.read_bytes())
            for key, f in doc.get("files", {}).items():
                self.files[key] = FileState(f["path"], int(f["offset"]), int(f.get("line", 0)),
                                            [(int(e), int(n)) for e, n in f.get("inflight", [])], int(f.get("epoch", 0)))

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"version": 1, "files": {k: {"path": f.path, "offset": f.offset, "line": f.line,
                                           "inflight": [list(x) for x in f.inflight], "epoch": f.epoch} for k, f in self.files.items()}}
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, self.path)


def _without_cr(block: bytes, lines: list[bytes]) -> list[bytes]:
    """Lines without a CRLF file's ``\\r``; a block without any is left alone (no loop per line)."""
    return [ln.rstrip(b"\r") for ln in lines] if b"\r" in block else lines


def file_key(st: os.stat_result) -> str:
    return f"{st.st_dev}:{st.st_ino}"


class FileTailer:
    """Hands out chunks of complete lines from ``path`` and the files it was rotated to."""

    def __init__(self, path: str | Path, checkpoint: Checkpoint, chunk_bytes: int = 16 << 20,
                 max_line_bytes: int = 1 << 20) -> None:
        self.path = Path(path)
        self.checkpoint = checkpoint
        # A backlog is read in big chunks: each partition's message then holds enough rows that the
        # per-message cost of Arrow IPC compression stays small (docs/agent.md, Throughput).
        self.chunk_bytes = max(chunk_bytes, 2 * max_line_bytes + 2)
        self.max_line_bytes = max_line_bytes
        self._open: dict[str, tuple[object, str]] = {}  # key → (file object, path)
        self._read_at: dict[str, tuple[int, int]] = {}  # key → (next offset to read, lines before it)
        self._replay: list[tuple[str, int, int, int, int]] = []  # (key, start, start line, end, end line)
        self._active: str | None = None
        self._recover()

    # -- startup -----------------------------------------------------------------

    def _recover(self) -> None:
        """Find the checkpointed files again (possibly under rotated names) and queue their unconfirmed ranges."""
        by_key = self._files_by_key()
        for key in list(self.checkpoint.files):
            state = self.checkpoint.files[key]
            found = by_key.get(key)
            if found is None:
                if state.inflight:
                    log.error("%s (%s) is gone with %d unconfirmed ranges; those records are lost",
                              state.path, key, len(state.inflight))
                del self.checkpoint.files[key]
                continue
            state.path = str(found)
            start, line = state.offset, state.line
            for end, end_line in state.inflight:
                self._replay.append((key, start, line, end, end_line))
                start, line = end, end_line
            self._read_at[key] = (start, line)

    def _files_by_key(self) -> dict[str, Path]:
        """The followed file and its rotated siblings (``flows.log.1``, ``flows-<time>.log`` …) by inode."""
        out: dict[str, Path] = {}
        directory = self.path.parent
        stem = self.path.name.split(".")[0]
        if directory.is_dir():
            for p in directory.iterdir():
                if p.name.startswith(stem) and p.is_file() and not p.name.endswith(".tmp"):
                    try:
                        out[file_key(p.stat())] = p
                    except OSError:
                        continue
        return out

    # -- reading -----------------------------------------------------------------

    def chunks(self) -> Iterator[Chunk]:
        """Every chunk available now: replays first, then older rotated files, then the followed file."""
        while self._replay:
            key, start, line, end, end_line = self._replay.pop(0)
            chunk = self._read_range(key, start, line, end)
            if chunk is not None:
                yield chunk
        try:
            st = self.path.stat()
        except FileNotFoundError:
            st = None
        active = file_key(st) if st is not None else None
        # Older files first: a checkpointed or previously active file that is no longer the followed one.
        for key in [k for k in list(self.checkpoint.files) if k != active]:
            yield from self._drain(key, final=True)
            self._forget_if_done(key)
        if active is None:
            return
        if active not in self.checkpoint.files:
            self.checkpoint.files[active] = FileState(str(self.path))
            self._read_at.setdefault(active, (0, 0))
        self._active = active
        state = self.checkpoint.files[active]
        offset, _ = self._read_at.get(active, (state.offset, state.line))
        if st.st_size < offset:
            log.warning("%s was truncated (%d < %d bytes); reading it again from the start", self.path, st.st_size, offset)
            state.offset, state.line, state.inflight = 0, 0, []
            state.epoch += 1
            self._read_at[active] = (0, 0)
        yield from self._drain(active, final=False)

    def _file(self, key: str):
        if key not in self._open:
            state = self.checkpoint.files[key]
            fh = open(state.path, "rb")  # noqa: SIM115 (kept open across calls, closed in close())
            if file_key(os.fstat(fh.fileno())) != key:
                fh.close()
                raise FileNotFoundError(f"{state.path} is no longer file {key}")
            self._open[key] = (fh, state.path)
        return self._open[key][0]

    def _drain(self, key: str, final: bool) -> Iterator[Chunk]:
        """Chunks of complete lines from the read position; ``final``: the file will not grow, a last
        line without newline counts too."""
        try:
            fh = self._file(key)
        except OSError:
            return
        while True:
            start, line = self._read_at.get(key, (self.checkpoint.files[key].offset, self.checkpoint.files[key].line))
            fh.seek(start)
            data = fh.read(self.chunk_bytes)
            if not data:
                return
            cut = data.rfind(b"\n") + 1
            if cut == 0:
                if len(data) > self.max_line_bytes:
                    cut = self._skip_long_line(fh, start)
                    lines = [data[:self.max_line_bytes + 1]]
                    yield self._emit(key, start, line, start + cut, lines)
                    continue
                if not final or len(data) == 0:
                    return
                cut = len(data)
            body = data[:cut]
            lines = body.split(b"\n")
            if lines and lines[-1] == b"":
                lines.pop()
            yield self._emit(key, start, line, start + cut, _without_cr(body, lines))
            if len(data) < self.chunk_bytes and cut == len(data):
                return

    def _skip_long_line(self, fh, start: int) -> int:
        """Length up to and including the newline that ends an over-long line (or to EOF)."""
        pos = start
        fh.seek(start)
        while True:
            block = fh.read(self.chunk_bytes)
            if not block:
                return pos - start
            nl = block.find(b"\n")
            if nl >= 0:
                return pos - start + nl + 1
            pos += len(block)

    def _emit(self, key: str, start: int, line: int, end: int, lines: list[bytes]) -> Chunk:
        self._read_at[key] = (end, line + len(lines))
        state = self.checkpoint.files[key]
        return Chunk(key, state.path, start, end, line + 1, line + len(lines), lines, state.epoch)

    def _read_range(self, key: str, start: int, line: int, end: int) -> Chunk | None:
        try:
            fh = self._file(key)
        except OSError:
            log.error("cannot reopen %s to replay an unconfirmed range; those records are lost", key)
            return None
        fh.seek(start)
        data = fh.read(end - start)
        if len(data) < end - start:
            log.error("%s is shorter than its checkpoint; the unconfirmed range %d-%d is lost", key, start, end)
            return None
        lines = data[:-1].split(b"\n") if data.endswith(b"\n") else data.split(b"\n")
        if len(lines) == 1 and len(lines[0]) > self.max_line_bytes:
            lines = [lines[0][:self.max_line_bytes + 1]]
        return self._emit(key, start, line, end, _without_cr(data, lines))

    # -- checkpointing -------------------------------------------------------------

    def begin(self, chunk: Chunk) -> None:
        """Record that ``chunk`` is about to be published (before producing it)."""
        state = self.checkpoint.files[chunk.key]
        if state.epoch != chunk.epoch:
            return
        if not state.inflight or state.inflight[-1][0] < chunk.end:
            state.inflight.append((chunk.end, chunk.end_line))
        self.checkpoint.save()

    def confirm(self, chunk: Chunk) -> None:
        """Kafka confirmed every record of ``chunk`` and of the chunks before it."""
        state = self.checkpoint.files.get(chunk.key)
        if state is None or state.epoch != chunk.epoch:
            return
        if chunk.end > state.offset:
            state.offset, state.line = chunk.end, chunk.end_line
        state.inflight = [x for x in state.inflight if x[0] > state.offset]

    def _forget_if_done(self, key: str) -> None:
        state = self.checkpoint.files.get(key)
        if state is None or state.inflight:
            return
        try:
            size = os.path.getsize(state.path)
        except OSError:
            size = -1
        if key != self._active and state.offset >= size and self._read_at.get(key, (0, 0))[0] >= size:
            # Fully shipped rotated file: stop watching it, keep its entry so a restart skips it.
            entry = self._open.pop(key, None)
            if entry is not None:
                entry[0].close()

    @property
    def lag_bytes(self) -> int:
        """Bytes of the followed files not yet confirmed by Kafka."""
        total = 0
        for state in list(self.checkpoint.files.values()):  # also read by the metrics thread
            try:
                total += max(0, os.path.getsize(state.path) - state.offset)
            except OSError:
                continue
        return total

    def close(self) -> None:
        for fh, _ in self._open.values():
            fh.close()
        self._open.clear()
