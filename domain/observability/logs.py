"""Logging for every tunehouse process: human-readable text or JSON lines.

`configure_logging("json")` puts one handler on the root logger that writes one
JSON object per line to stderr:

    {"ts": "2024-05-01T12:00:00.123Z", "level": "INFO", "logger": "tunehouse.worker",
     "message": "...", "job_id": "ftjob-...", "exc_info": "Traceback ..."}

`log_context(job_id=...)` adds ids to every record emitted inside it (in this
thread or asyncio task: it is a contextvar), in both formats.
"""

import json
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import datetime, timezone
from typing import Any

FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Keys of a JSON line that context ids may not replace.
_RESERVED = frozenset({"ts", "level", "logger", "message", "exc_info", "stack_info"})

_context: ContextVar[Mapping[str, Any]] = ContextVar("tunehouse_log_context", default={})


@contextmanager
def log_context(**ids: Any) -> Iterator[Mapping[str, Any]]:
    """Add `ids` (None values left out) to every record logged inside the block.
    Nested blocks add to (and may override) the outer ones."""
    merged = {**_context.get(), **{name: value for name, value in ids.items() if value is not None}}
    token = _context.set(merged)
    try:
        yield merged
    finally:
        _context.reset(token)


def current_context() -> dict[str, Any]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Copies the ids in context onto the record as it is emitted (as
    `record.context`), so a formatter running later still has them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "context"):
            record.context = current_context()
        return True


def _record_context(record: logging.LogRecord) -> Mapping[str, Any]:
    context = getattr(record, "context", None)
    return context if context is not None else _context.get()


class TextFormatter(logging.Formatter):
    """The classic line, with the ids in context after the message."""

    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        context = _record_context(record)
        if context:
            line += " [" + " ".join(f"{name}={value}" for name, value in context.items()) + "]"
        return line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds").replace(
                "+00:00", "Z"
            ),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, value in _record_context(record).items():
            if name not in _RESERVED:
                entry[name] = value
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exc_info"] = record.exc_text
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        # default=str: an id that is not JSON (a UUID, a Path) is written as text.
        return json.dumps(entry, default=str, ensure_ascii=False)


class _TunehouseHandler(logging.StreamHandler):
    """Marks the handler configure_logging installed, so a second call replaces it."""


def make_formatter(format: str) -> logging.Formatter:
    if format not in FORMATS:
        raise ValueError(f"unknown log format {format!r}: use one of {', '.join(FORMATS)}")
    return JsonFormatter() if format == "json" else TextFormatter()


def configure_logging(format: str = "text", level: int | str = logging.INFO, stream=None) -> logging.Handler:
    """One handler on the root logger, writing `format` lines to stderr.

    Every logger that propagates (ours, Celery's with worker_hijack_root_logger
    off, uvicorn's when it is started with log_config=None) ends up here. Forked
    processes (Celery's prefork pool) inherit it. Idempotent."""
    handler = _TunehouseHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(format))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for existing in list(root.handlers):
        if isinstance(existing, _TunehouseHandler):
            root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(level)
    # warnings.warn() (Celery's "running as root" and the like) as log records,
    # not raw text on stderr between the JSON lines.
    logging.captureWarnings(True)
    return handler
