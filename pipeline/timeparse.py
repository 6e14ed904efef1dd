"""Parse the time arguments every verb accepts: ISO 8601, epoch seconds or relative."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_RELATIVE = re.compile(r"^(?P<sign>[-+]?)(?P<num>\d+(?:\.\d+)?)(?P<unit>s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TimeParseError(ValueError):
    pass


def parse_duration(text: str) -> float:
    """'90s', '5m', '2h', '1d' → seconds; a bare '0' needs no unit."""
    if text.strip() == "0":
        return 0.0
    m = _RELATIVE.match(text.strip())
    if not m or m.group("sign") == "-":
        raise TimeParseError(f"invalid duration {text!r}: use a number and a unit, e.g. 30s, 5m, 2h, 1d")
    return float(m.group("num")) * _UNIT_SECONDS[m.group("unit")]


def parse_time(text: str, now: float | None = None) -> int:
    """Epoch seconds from '2026-11-27T10:00:00Z', '1795737600', '-2h' or 'now'."""
    value = text.strip()
    if not value:
        raise TimeParseError("empty time")
    now = time.time() if now is None else now
    if value == "now":
        return int(now)
    m = _RELATIVE.match(value)
    if m and m.group("sign"):
        offset = float(m.group("num")) * _UNIT_SECONDS[m.group("unit")]
        return int(now - offset if m.group("sign") == "-" else now + offset)
    if re.fullmatch(r"\d{9,11}(\.\d+)?", value):
        return int(float(value))
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise TimeParseError(
            f"invalid time {text!r}: use ISO 8601 (2026-11-27T10:00:00Z), epoch seconds or relative (-2h)"
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp())
