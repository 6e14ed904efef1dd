"""Process logging for every verb: human-readable text, or one JSON object per line for log shippers.

``log_format = "json"`` (FLOWCTL_LOG_FORMAT=json, ``--log-format json``) makes each record a
single-line JSON document with ``ts``, ``level``, ``logger``, ``message``, the process role,
any ``extra=`` fields and the formatted exception, so Loki/Elasticsearch/CloudWatch can index
them without parsing. Configured secrets are masked in every record, whatever the format.
"""

from __future__ import annotations

import logging
import os
import sys
from datetime import UTC, datetime
from typing import Any

import orjson

from pipeline.config import Settings

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
MASK = "***"
# LogRecord attributes that are not caller-supplied ``extra`` fields.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime", "taskName"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record; unknown extra values are rendered with ``str``."""

    def __init__(self, role: str = "") -> None:
        super().__init__()
        self.role = role

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "pid": record.process,
        }
        if self.role:
            doc["role"] = self.role
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                doc[key] = value
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            doc["exception"] = record.exc_text
        if record.stack_info:
            doc["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(doc, default=str).decode()


class SecretMask(logging.Filter):
    """Replaces configured secret values in a record's message, arguments and exception text."""

    def __init__(self, secrets: list[str]) -> None:
        super().__init__()
        # Very short values would mask innocent text without protecting anything.
        self.secrets = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def _clean(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        cleaned = self._clean(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and record.exc_info[1] is not None:
            text = logging.Formatter().formatException(record.exc_info)
            if self._clean(text) != text:
                # Keep the masked traceback as text; the exception object itself carries the secret.
                record.exc_text, record.exc_info = self._clean(text), None
        return True


def build_handler(settings: Settings, role: str = "", stream=None) -> logging.Handler:
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter(role) if settings.log_format == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(SecretMask(settings.secrets()))
    return handler


_active_mask = SecretMask([])


def mask_secrets(text: str) -> str:
    """``text`` with the secrets of the configured settings masked (for output outside logging)."""
    return _active_mask._clean(text)


def configure_logging(settings: Settings, role: str = "", stream=None) -> None:
    """Route every logger of this process through one handler in the configured format."""
    global _active_mask
    _active_mask = SecretMask(settings.secrets())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(build_handler(settings, role or os.environ.get("FLOWCTL_ROLE", ""), stream))
    root.setLevel(settings.log_level.upper())
