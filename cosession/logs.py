"""The process's log: one line per event, as text (default) or JSON (``[log] format``).

A line is a message and its fields. The fields are what a log line of ours passes in
``extra=``: the session, the participant, the user, the endpoint, the reason, and for the access
log the method, path, status and duration; every line also carries the request id of the
request it was written for (dashboard/web/request_log.py), so a page's lines can be found
together. Text puts the fields after the message as ``key=value``; JSON gives one object per
line with ``time``, ``level``, ``logger``, ``message``, the fields, and ``exception`` when there
is one.

No credential is ever a field or in a message: passwords, keys, tokens and share-link tokens are
never passed to a logger (docs/operations.md, "Logs").
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from dashboard.web.request_log import RequestIdFilter

# The fields a line may carry, in the order text shows them.
FIELDS = ("session", "participant", "user", "endpoint", "protocol", "role", "reason", "method", "path", "status",
          "duration_ms", "client", "detail", "request_id")
_IN_ACCESS_MESSAGE = frozenset({"method", "path", "status"})  # text: "GET /path 200" says them already


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {name: value for name in FIELDS
            if (value := getattr(record, name, None)) is not None and value != ""}


def _time(record: logging.LogRecord) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER: MESSAGE key=value ...``; a value with a space or a quote is quoted."""

    def format(self, record: logging.LogRecord) -> str:
        line = f"{_time(record)} {record.levelname} {record.name}: {record.getMessage()}"
        fields = " ".join(f"{name}={_text_value(value)}" for name, value in _fields(record).items()
                          if name not in _IN_ACCESS_MESSAGE)
        if fields:
            line += " " + fields
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def _text_value(value: Any) -> str:
    text = str(value)
    if not text or any(c.isspace() or c in "\"=" for c in text):
        return json.dumps(text)
    return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {"time": _time(record), "level": record.levelname.lower(), "logger": record.name,
                                "message": record.getMessage(), **_fields(record)}
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def configure(settings: Any, stream: TextIO | None = None) -> logging.Handler:
    """Send every log line of the process to `stream` (standard error) in the format of
    `settings` ([log] of config.settings), at its level. Replaces any handler already there."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter() if settings.format == "json" else TextFormatter())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.level.upper())
    return handler
