"""Structured logging: JSON lines when stderr is not a terminal, readable text when it is.

Context fields ride along without being passed around (context variables, so per thread
or task): the request id (set by the HTTP middleware), and on workers ``worker_id``,
``sweep_id`` and ``trial_id`` (the trial in hand). Secrets are scrubbed from every line: bearer
tokens, ``gsw_`` API tokens and passwords in database URLs.

Pure stdlib, so the worker can use it without pulling in the API.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

CONTEXT_FIELDS = ("request_id", "worker_id", "sweep_id", "trial_id")
# Extra attributes the HTTP middleware attaches to its request lines.
EXTRA_FIELDS = ("method", "route", "path", "status", "duration_ms", "client")

_context: ContextVar[dict[str, Any] | None] = ContextVar("gridsweep_log_context", default=None)

_SECRET_PATTERNS = (
    # "Authorization: Bearer abc", "bearer=abc", "'authorization': 'Basic abc'"
    (re.compile(r"(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]+"), r"\1 [REDACTED]"),
    # gridsweep API tokens, wherever they appear
    (re.compile(r"\bgsw_[A-Za-z0-9_-]+"), "gsw_[REDACTED]"),
    # scheme://user:password@host
    (re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://[^:/@\s]*):[^@/\s]+@"), r"\1:***@"),
)


def redact(text: str) -> str:
    """``text`` with tokens and URL passwords replaced."""
    for pattern, repl in _SECRET_PATTERNS:
        text = pattern.sub(repl, text)
    return text


def set_fields(**fields: Any) -> None:
    """Fields on the lines of the current context (thread or task); ``None`` removes one."""
    current = dict(_context.get() or {})
    for k, v in fields.items():
        if v is None:
            current.pop(k, None)
        else:
            current[k] = v
    _context.set(current)


def current_fields() -> dict[str, Any]:
    return dict(_context.get() or {})


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for k, v in current_fields().items():
            if not hasattr(record, k):
                setattr(record, k, v)
        return True


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    return {k: getattr(record, k) for k in (*CONTEXT_FIELDS, *EXTRA_FIELDS) if hasattr(record, k)}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, msg, context and extra fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
            **_fields(record),
        }
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return json.dumps(out, default=str)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message [key=value ...]`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extra = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return redact(f"{line} [{extra}]" if extra else line)


def configure_logging(level: str | int = "INFO", fmt: str = "auto", stream: Any = None) -> None:
    """Route every logger (uvicorn's included) through one handler on stderr.

    ``fmt``: ``json``, ``text`` or ``auto`` (JSON unless the stream is a terminal).
    """
    stream = stream or sys.stderr
    if fmt == "auto":
        fmt = "text" if getattr(stream, "isatty", lambda: False)() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    # uvicorn installs its own handlers unless told otherwise; send its lines through ours.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lg = logging.getLogger(name)
        lg.handlers.clear()
        lg.propagate = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request drowns the rest
