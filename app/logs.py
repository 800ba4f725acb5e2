"""Logging set-up: one JSON object per line in containers, a readable line locally.

Fields passed through `extra=` (task_id, task, executor, status, duration_s, ...) become JSON
keys, or `key=value` pairs after the message in text mode, so the same call site serves both.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {
    "message",
    "asctime",
    "color_message",  # uvicorn's ANSI-coloured copy of the message
}

# One encoder for every line: json.dumps() with options builds a new one per call.
_encode = json.JSONEncoder(default=str, separators=(",", ":")).encode


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    attributes = record.__dict__
    if attributes.keys() <= _STANDARD:  # a C set comparison: most library lines have no extras
        return {}
    return {k: v for k, v in attributes.items() if k not in _STANDARD and k[:1] != "_"}


class _SecondCache:
    """The text of the last whole second seen, so a burst of lines formats it once.

    Only one entry: lines arrive in time order, and a miss costs one strftime. Safe from any
    thread: the tuple is replaced in one assignment, never mutated.
    """

    __slots__ = ("_entry", "_render")

    def __init__(self, render: Callable[[int], str]) -> None:
        self._render = render
        self._entry: tuple[int, str] = (-1, "")

    def __call__(self, second: int) -> str:
        entry = self._entry
        if entry[0] != second:
            entry = self._entry = (second, self._render(second))
        return entry[1]


def _utc_second(second: int) -> str:
    return datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S")


class JsonFormatter(logging.Formatter):
    """{"ts", "level", "logger", "message", **extra, "exc_info"?} on one line.

    `ts` is what datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
    gives, built from a per-second cache: every task transition writes a line, so the
    formatter is on the hot path of each submit.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._second = _SecondCache(_utc_second)

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": self._timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        payload.update(_extras(record))
        if record.exc_info:
            payload["exc_info"] = self.formatException(record.exc_info)
        return _encode(payload)

    def _timestamp(self, created: float) -> str:
        # datetime's own rounding: microseconds rounded half-even, then truncated to ms.
        fraction, whole = math.modf(created)
        second, micros = int(whole), round(fraction * 1e6)
        if micros >= 1_000_000:
            second, micros = second + 1, micros - 1_000_000
        return f"{self._second(second)}.{micros // 1000:03d}+00:00"


class TextFormatter(logging.Formatter):
    """`HH:MM:SS LEVEL logger: message key=value ...` for a terminal.

    Same text as logging.Formatter with that format string, written out by hand with the clock
    cached per second (the generic path re-parses the format and calls strftime per line).
    """

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
        self._second = _SecondCache(self._local_second)

    def _local_second(self, second: int) -> str:
        return time.strftime("%H:%M:%S", self.converter(second))

    def format(self, record: logging.LogRecord) -> str:
        record.message = record.getMessage()
        record.asctime = self._second(int(record.created))
        line = f"{record.asctime} {record.levelname:<7} {record.name}: {record.message}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = _joined(line, record.exc_text)
        if record.stack_info:
            line = _joined(line, self.formatStack(record.stack_info))
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{key}={value}" for key, value in extras.items())
        return line


def _joined(line: str, block: str) -> str:
    return f"{line}{block}" if line[-1:] == "\n" else f"{line}\n{block}"


def configure_logging(log_format: str = "text", level: str = "INFO") -> None:
    """Route the root logger (and uvicorn's and Celery's) to stderr in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "celery"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True


def uvicorn_log_config(log_format: str = "text", level: str = "INFO") -> dict[str, Any]:
    """logging.dictConfig for uvicorn.run(log_config=...): its own first lines ("Started server
    process", "Waiting for application startup") come before the app's lifespan calls
    configure_logging(), so without this they would be plain text in a JSON container log."""
    formatter = "app.logs.JsonFormatter" if log_format == "json" else "app.logs.TextFormatter"
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"tasklane": {"()": formatter}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "tasklane",
                "stream": "ext://sys.stderr",
            }
        },
        "root": {"handlers": ["stderr"], "level": level.upper()},
        "loggers": {
            name: {"handlers": [], "propagate": True, "level": level.upper()}
            for name in ("uvicorn", "uvicorn.error", "uvicorn.access")
        },
    }
