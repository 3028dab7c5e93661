"""Structured JSON logging: one object per line, correlated with the query in progress.

Every line has: timestamp (UTC ISO-8601), level, logger, service, env, event, request_id and
``fields``. Lines go through the standard ``logging`` module (logger "ragmon.events"),
so levels and handlers work as usual; LOG_DESTINATION picks stderr, LOG_DIR/app.jsonl or nothing
unless the application routes "ragmon.events" itself (then only its handlers get the lines).

Privacy by default: query text and user ids are written as a keyed hash and a length (LOG_RAW_TEXT
turns raw text on), and secrets are redacted from every field, raw mode or not: values of fields
named like secrets (password, token, api_key, ...) and secret-shaped substrings of any string
(see redaction.py). LOG_DIR/app.jsonl is created 0640; a line that cannot be written is counted,
not raised or printed as a traceback.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import sys
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Mapping

from ..checks import check_amount, text_of
from .context import current_request_id
from .redaction import REDACTED, redact, scrub  # noqa: F401  (redact is part of the API)

EVENTS_LOGGER = "ragmon.events"


def _scrub(value: Any) -> Any:
    return scrub(value)


# Without LOG_HASH_KEY, one random key per process: every logger in the process hashes alike,
# and hashes cannot be compared across restarts.
_PROCESS_HASH_KEY = os.urandom(32)

_loggers: dict[tuple, logging.Logger] = {}

# JSON lines stay out of the application's text logs unless it routes them. Set once, and only
# on a logger nobody configured before ragmon was imported, so an application's own setting
# (dictConfig, `propagate = True`) is never overwritten.
if EVENTS_LOGGER not in logging.Logger.manager.loggerDict:
    logging.getLogger(EVENTS_LOGGER).propagate = False


class _UnlessRouted(logging.Filter):
    """LOG_DESTINATION is the route of last resort: once the application routes
    "ragmon.events" itself (a handler of its own on it, or ``propagate = True`` towards its
    root handlers), lines go only there, so a line is never printed twice. A handler that is
    also on the root logger is a catch-all (pytest's capture, some agents), not a route."""

    def filter(self, record: logging.LogRecord) -> bool:
        events = logging.getLogger(EVENTS_LOGGER)
        if events.propagate:
            return False
        if events.handlers:
            catch_all = logging.getLogger().handlers
            return all(handler in catch_all for handler in events.handlers)
        return True


def _events_logger(settings) -> logging.Logger:
    """The stdlib logger for one logging configuration (destination, directory, level).

    Each configuration gets its own child of "ragmon.events" with its own handler, so a
    StructuredLogger built with other settings never rewires the others. Children propagate to
    "ragmon.events": attach a handler there (or let it propagate) to receive every line,
    whatever its configuration; see docs/production.md#logs.
    """
    key = (settings.LOG_DESTINATION, str(settings.log_dir), settings.LOG_LEVEL)
    logger = _loggers.get(key)
    if logger is not None:
        return logger
    if settings.LOG_DESTINATION == "stderr":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
    elif settings.LOG_DESTINATION == "file":
        handler = _QuietFileHandler(settings.log_dir / "app.jsonl")
    else:
        handler = logging.NullHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_UnlessRouted())
    logger = logging.getLogger(f"{EVENTS_LOGGER}.{len(_loggers)}")
    logger.addHandler(handler)
    logger.setLevel(settings.LOG_LEVEL)
    _loggers[key] = logger
    return logger


class _QuietFileHandler(logging.FileHandler):
    """LOG_DIR/app.jsonl, created 0640 (log lines may say more than the world should read).

    The file is opened on the first line, so a read-only or missing directory does not stop the
    application from starting; a line that cannot be written (full disk, deleted directory) is
    counted in rag_instrumentation_errors_total{reason="log_write"} and warned about once a
    minute, instead of a traceback on stderr for every call.
    """

    def __init__(self, path):
        super().__init__(path, encoding="utf-8", delay=True)

    def _open(self):
        path = self.baseFilename
        os.makedirs(os.path.dirname(path), exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                os.write(fd, b"\n")  # fence a line cut off by a full disk: the next starts clean
        except OSError:
            os.close(fd)
            raise
        return open(fd, "a", encoding=self.encoding, errors=self.errors, closefd=True)

    def emit(self, record):
        try:
            if self.stream is not None and self._replaced():
                self.close()  # deleted or replaced: start a new file at the path
            super().emit(record)  # opening the file happens here, outside logging's own try
        except Exception:
            self.handleError(record)

    def _replaced(self) -> bool:
        try:
            st = os.stat(self.baseFilename)
            own = os.fstat(self.stream.fileno())
        except (OSError, ValueError):
            return True
        return (st.st_dev, st.st_ino) != (own.st_dev, own.st_ino)

    def handleError(self, record):
        self.lost = getattr(self, "lost", 0) + 1
        try:
            from .runtime import STATE, recording_failed
            recording_failed(STATE.metrics, "log_write", "a log line to %s could not be written",
                              self.baseFilename)
            if self.stream is not None:
                self.close()  # reopened on the next line (the directory may come back)
        except Exception:
            pass


class StructuredLogger:
    """JSON-lines logger for one component: ``StructuredLogger(__name__)``.

    ``settings`` defaults to config.get_settings(); ``raw_text`` overrides LOG_RAW_TEXT.
    """

    def __init__(self, name: str, *, settings=None, raw_text: bool | None = None):
        if not isinstance(name, str) or not name:
            raise ValueError(f"name={name!r} must be a non-empty string, e.g. StructuredLogger(__name__)")
        if settings is None:
            from ..settings import get_settings
            settings = get_settings()
        self.name = name
        self.settings = settings
        self.raw_text = settings.LOG_RAW_TEXT if raw_text is None else raw_text
        key = settings.LOG_HASH_KEY
        self._hash_key = key.encode() if key else _PROCESS_HASH_KEY
        self._logger = _events_logger(settings)

    # --- the three calls of the product design -------------------------------------------------
    def log_request(self, query: str, user_id: str | None = None, session_id: str | None = None,
                    **fields: Any) -> None:
        """A query arrived. Query text and user id are hashed unless raw text is on."""
        if not isinstance(query, str):
            raise ValueError(f"query={query!r} must be the query text (a string)")
        data: dict[str, Any] = {"query_length": len(query)}
        if self.raw_text:
            data["query"] = query
            if user_id is not None:
                data["user_id"] = str(user_id)
        else:
            data["query_hash"] = self.hash(query)
            if user_id is not None:
                data["user_hash"] = self.hash(str(user_id))
        if session_id is not None:
            data["session_id"] = str(session_id)
        self.event(logging.INFO, "request", **data, **fields)

    def log_response(self, duration_ms: float, tokens: Mapping[str, int] | None = None,
                     cost: float | None = None, success: bool = True, **fields: Any) -> None:
        """A query finished: its duration, tokens ({"input": .., "output": ..}), cost, outcome."""
        check_amount("duration_ms", duration_ms, "a number of milliseconds >= 0")
        if cost is not None:
            check_amount("cost", cost, "dollars >= 0, or None")
        if tokens is not None and not isinstance(tokens, Mapping):
            raise ValueError(f"tokens={tokens!r} must be a dict such as {{'input': 450, 'output': 180}}")
        self.event(logging.INFO if success else logging.WARNING, "response",
                   duration_ms=float(duration_ms), tokens=dict(tokens or {}), cost=cost,
                   success=bool(success), **fields)

    def log_error(self, exc: BaseException, context: Mapping[str, Any] | None = None) -> None:
        """An exception: its type, message and traceback, plus your context."""
        if not isinstance(exc, BaseException):
            raise ValueError(f"exc={exc!r} must be an exception instance (inside `except E as e:`)")
        try:
            trace = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        except Exception:  # an exception whose __str__ raises breaks format_exception too
            trace = f"{type(exc).__name__}: {text_of(exc)}"
        message = text_of(exc)
        context = dict(context or {})
        if not self.raw_text:
            # The query and user id in the context are hashed as log_request() hashes them, and
            # wherever the message or traceback quotes them, the quote is replaced by the hash.
            for raw, shown in self._hash_private(context):
                message, trace = message.replace(raw, shown), trace.replace(raw, shown)
        self.event(logging.ERROR, "error", error_type=type(exc).__name__, message=message,
                   traceback=trace, context=context)

    def _hash_private(self, context: dict) -> list[tuple[str, str]]:
        """Replaces ``query`` and ``user_id`` in `context` by their hashes (and the query's
        length); returns (raw text, what stands for it) for each, longest first."""
        quoted = []
        for name, kind in (("query", "query"), ("user_id", "user")):
            if context.get(name) is None:
                continue
            raw = text_of(context.pop(name))
            digest = self.hash(raw)
            context[f"{kind}_hash"] = digest
            if kind == "query":
                context["query_length"] = len(raw)
            if len(raw) >= 4:  # a shorter one would replace ordinary words
                quoted.append((raw, f"[{kind} {digest}]"))
        return sorted(quoted, key=lambda pair: -len(pair[0]))

    # --- general --------------------------------------------------------------------------------
    def info(self, event: str, **fields: Any) -> None:
        self.event(logging.INFO, event, **fields)

    def warning(self, event: str, **fields: Any) -> None:
        self.event(logging.WARNING, event, **fields)

    def error(self, event: str, **fields: Any) -> None:
        self.event(logging.ERROR, event, **fields)

    def event(self, level: int, event: str, **fields: Any) -> None:
        if not self._logger.isEnabledFor(level):
            return
        try:
            line = self.format(level, event, fields)
        except Exception as failure:  # logging never raises into the application
            from .runtime import STATE, recording_failed
            recording_failed(STATE.metrics, "log_format", "a log line for event %r could not "
                              "be formatted: %r", text_of(event), failure)
            return
        self._logger.log(level, line)

    def format(self, level: int, event: str, fields: Mapping[str, Any]) -> str:
        line = {
            "timestamp": datetime.fromtimestamp(time.time(), timezone.utc).isoformat(),
            "level": logging.getLevelName(level),
            "logger": self.name,
            "service": self.settings.SERVICE_NAME,
            "env": self.settings.ENV,
            "event": scrub(event),
            "request_id": current_request_id(),
            "fields": _scrub(fields),
        }
        return json.dumps(line, default=str, separators=(",", ":"))

    def hash(self, text: str) -> str:
        """A keyed hash (HMAC-SHA256, 16 hex chars) so equal inputs can be correlated without
        storing them."""
        return hmac.new(self._hash_key, text.encode("utf-8"), hashlib.sha256).hexdigest()[:16]
