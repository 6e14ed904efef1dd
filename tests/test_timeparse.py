"""Time arguments: ISO 8601, epoch seconds, relative offsets, durations."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from pipeline.timeparse import TimeParseError, parse_duration, parse_time

NOW = datetime(2026, 11, 27, 10, 0, 0, tzinfo=UTC).timestamp()


def epoch(*args, tz=UTC) -> int:
    return int(datetime(*args, tzinfo=tz).timestamp())


@pytest.mark.parametrize("text, expected", [
    ("2026-11-27T10:00:00Z", epoch(2026, 11, 27, 10)),
    ("2026-11-27T10:00:00+00:00", epoch(2026, 11, 27, 10)),
    ("2026-11-27T12:00:00+02:00", epoch(2026, 11, 27, 10)),
    ("2026-11-27T05:30:00-04:30", epoch(2026, 11, 27, 10)),
    ("2026-11-27T10:00:00", epoch(2026, 11, 27, 10)),  # naive: UTC, never the machine's zone
    ("2026-11-27 10:00:00", epoch(2026, 11, 27, 10)),
    ("2026-11-27T10:00:00.750Z", epoch(2026, 11, 27, 10)),
    ("2026-11-27", epoch(2026, 11, 27)),
    ("  2026-11-27T10:00:00Z  ", epoch(2026, 11, 27, 10)),
])
def test_iso_8601(text, expected):
    assert parse_time(text, now=0) == expected


def test_naive_time_does_not_depend_on_the_local_zone(monkeypatch):
    import time

    monkeypatch.setenv("TZ", "America/Los_Angeles")
    time.tzset()
    try:
        assert parse_time("2026-11-27T10:00:00") == epoch(2026, 11, 27, 10)
    finally:
        monkeypatch.undo()
        time.tzset()


@pytest.mark.parametrize("text, expected", [
    ("1795737600", 1795737600),
    ("1795737600.9", 1795737600),
    ("999999999", 999999999),
])
def test_epoch_seconds(text, expected):
    assert parse_time(text, now=NOW) == expected


@pytest.mark.parametrize("text, delta", [
    ("-2h", -timedelta(hours=2)),
    ("-30m", -timedelta(minutes=30)),
    ("-45s", -timedelta(seconds=45)),
    ("-1d", -timedelta(days=1)),
    ("-2w", -timedelta(weeks=2)),
    ("-1.5h", -timedelta(minutes=90)),
    ("+10m", timedelta(minutes=10)),
])
def test_relative(text, delta):
    assert parse_time(text, now=NOW) == int(NOW + delta.total_seconds())


def test_now():
    assert parse_time("now", now=NOW) == int(NOW)
    assert parse_time(" now ", now=NOW + 0.7) == int(NOW)


def test_relative_uses_the_clock_when_no_now_is_given():
    import time

    before = time.time()
    got = parse_time("-1h")
    after = time.time()
    assert int(before) - 3600 <= got <= int(after) - 3600


@pytest.mark.parametrize("text", ["yesterday", "2h ago", "-2x", "2026-13-01T00:00:00Z", "12:00", "1e9", "--2h", "",
                                  "   ", "-h", "2026/11/27"])
def test_garbage_is_a_time_parse_error_that_says_what_works(text):
    with pytest.raises(TimeParseError) as info:
        parse_time(text, now=NOW)
    message = str(info.value)
    if text.strip():
        assert repr(text) in message
        assert "ISO 8601" in message and "-2h" in message
    else:
        assert "empty" in message


def test_time_parse_error_is_a_value_error():
    with pytest.raises(ValueError):
        parse_time("soon")


@pytest.mark.parametrize("text, seconds", [
    ("90s", 90), ("5m", 300), ("2h", 7200), ("1d", 86400), ("1w", 7 * 86400), ("1.5m", 90), ("0s", 0), ("0", 0),
    (" 10m ", 600), ("+5m", 300),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["-5m", "5", "m", "5 minutes", "", "5M", "1h30m"])
def test_bad_durations(text):
    with pytest.raises(TimeParseError, match="30s, 5m"):
        parse_duration(text)
