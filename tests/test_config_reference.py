"""docs/configuration.md lists every setting once, with its variable and its true default."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from pipeline.config import ENV_PREFIX, Settings, load_settings, render_settings

REFERENCE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"
ROW = re.compile(r"^\| `(?P<name>[a-z0-9_]+)` \| `(?P<env>[A-Z0-9_<>]+)` \| (?P<default>[^|]+) \| (?P<meaning>.+) \|$")


def _rows() -> dict[str, dict[str, str]]:
    rows: dict[str, dict[str, str]] = {}
    for line in REFERENCE.read_text().splitlines():
        m = ROW.match(line)
        if m:
            assert m["name"] not in rows, f"{m['name']} documented twice"
            rows[m["name"]] = m.groupdict()
    return rows


def test_every_setting_is_documented_and_nothing_else() -> None:
    documented = set(_rows())
    actual = {f.name for f in dataclasses.fields(Settings)}
    assert documented == actual, f"missing: {sorted(actual - documented)}; stale: {sorted(documented - actual)}"


def test_documented_variables_and_defaults_match_the_code() -> None:
    defaults = dict(line.split(" = ", 1) for line in render_settings(Settings()).splitlines() if " = " in line)
    for name, row in _rows().items():
        if isinstance(getattr(Settings(), name), dict):
            assert row["env"] == f"{ENV_PREFIX}{name.upper()}_<NAME>" and row["default"].strip() == "(table)"
            continue
        assert row["env"] == ENV_PREFIX + name.upper(), name
        assert row["default"].strip() == f"`{defaults[name]}`", name
        assert row["meaning"].strip(), name


def test_documented_variables_really_set_the_settings() -> None:
    """Each documented variable is read: a value that differs from the default comes through."""
    for name, row in _rows().items():
        default = getattr(Settings(), name)
        if isinstance(default, dict):
            continue
        if name in Settings.CHOICES:
            value = next(c for c in Settings.CHOICES[name] if c != default)
        elif isinstance(default, bool):
            value = not default
        elif isinstance(default, (int, float)):
            value = type(default)(default + 3)
        else:
            value = "x-" + name
        settings = load_settings(env={row["env"]: str(value).lower() if isinstance(value, bool) else str(value)})
        assert getattr(settings, name) == value, name
