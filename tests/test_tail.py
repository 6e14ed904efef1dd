"""FileTailer and Checkpoint: appends, partial lines, rotation, truncation, replay after a crash."""

from __future__ import annotations

import os
from pathlib import Path

from pipeline.agent.tail import Checkpoint, FileTailer


def _lines(tailer: FileTailer, confirm: bool = True) -> list[bytes]:
    out = []
    for chunk in tailer.chunks():
        tailer.begin(chunk)
        out += chunk.lines
        if confirm:
            tailer.confirm(chunk)
    tailer.checkpoint.save()
    return out


def test_follows_appends_and_waits_for_the_end_of_a_line(tmp_path: Path) -> None:
    log = tmp_path / "flows.log"
    log.write_bytes(b"a\nb\npart")
    t = FileTailer(log, Checkpoint(tmp_path / "ck.json"))
    assert _lines(t) == [b"a", b"b"]
    with log.open("ab") as fh:
        fh.write(b"ial\nc\n")
    assert _lines(t) == [b"partial", b"c"]
    assert _lines(t) == []


def test_rotation_reads_the_old_file_to_its_end_then_the_new_one(tmp_path: Path) -> None:
    log = tmp_path / "flows.log"
    log.write_bytes(b"1\n2\n")
    t = FileTailer(log, Checkpoint(tmp_path / "ck.json"))
    assert _lines(t) == [b"1", b"2"]
    with log.open("ab") as fh:
        fh.write(b"3\n")  # written just before rotation, not read yet
    os.rename(log, tmp_path / "flows.log.1")
    log.write_bytes(b"4\n")
    assert _lines(t) == [b"3", b"4"]


def test_truncation_starts_again_from_the_beginning(tmp_path: Path) -> None:
    log = tmp_path / "flows.log"
    log.write_bytes(b"old-1\nold-2\n")
    t = FileTailer(log, Checkpoint(tmp_path / "ck.json"))
    assert _lines(t) == [b"old-1", b"old-2"]
    with log.open("r+b") as fh:
        fh.truncate(0)
        fh.write(b"new\n")
    chunks = list(t.chunks())
    assert [c.lines for c in chunks] == [[b"new"]]
    assert chunks[0].epoch == 1  # a fresh batch identity, so the worker does not drop it as a redelivery


def test_restart_resumes_at_the_confirmed_offset_and_replays_unconfirmed_ranges(tmp_path: Path) -> None:
    log = tmp_path / "flows.log"
    log.write_bytes(b"".join(b"line-%d\n" % i for i in range(100)))
    ck = tmp_path / "ck.json"
    t = FileTailer(log, Checkpoint(ck), chunk_bytes=1, max_line_bytes=40)  # ~82-byte chunks
    chunks = list(t.chunks())
    assert len(chunks) > 3
    for c in chunks:
        t.begin(c)
    t.confirm(chunks[0])
    t.checkpoint.save()
    t.close()  # crash: chunks[1:] were published, never confirmed
    with log.open("ab") as fh:
        fh.write(b"line-100\n")
    again = FileTailer(log, Checkpoint(ck), chunk_bytes=1, max_line_bytes=40)
    replayed = list(again.chunks())
    # the same ranges, hence the same batch keys, then the new data
    assert [c.batch_key for c in replayed[:len(chunks) - 1]] == [c.batch_key for c in chunks[1:]]
    assert [ln for c in replayed for ln in c.lines] == [b"line-%d" % i for i in range(chunks[0].end_line, 101)]
    assert replayed[0].first_line == chunks[0].end_line + 1


def test_an_over_long_line_is_cut_and_skipped(tmp_path: Path) -> None:
    log = tmp_path / "flows.log"
    log.write_bytes(b"x" * 5000 + b"\nok\n")
    t = FileTailer(log, Checkpoint(tmp_path / "ck.json"), chunk_bytes=1, max_line_bytes=1000)
    lines = _lines(t)
    assert len(lines[0]) == 1001 and lines[1:] == [b"ok"]


def test_crlf_lines_lose_their_carriage_return(tmp_path: Path) -> None:
    log = tmp_path / "flows.log"
    log.write_bytes(b"a\r\nb\r\n")
    assert _lines(FileTailer(log, Checkpoint(tmp_path / "ck.json"))) == [b"a", b"b"]
    plain = tmp_path / "plain.log"
    plain.write_bytes(b"c\nd\n")
    assert _lines(FileTailer(plain, Checkpoint(tmp_path / "ck2.json"))) == [b"c", b"d"]
