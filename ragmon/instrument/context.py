"""The query in progress, carried in a ContextVar so stages, loggers and helpers can find it.

A ContextVar follows threads and asyncio tasks correctly: two concurrent queries never see each
other's context. The request id is cheap to make (a random per-process prefix and a counter)
because it is made on every query; a forked child (a gunicorn worker, with or without --preload)
draws a new prefix, so ids stay unique across the workers of one server.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from contextvars import ContextVar

from .records import add_stage

_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}-{next(_ids):x}"


def _renew_request_ids() -> None:
    """A forked process would otherwise repeat its parent's ids (same prefix, same counter)."""
    global _ID_PREFIX, _ids
    _ID_PREFIX = os.urandom(4).hex()
    _ids = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_renew_request_ids)


class QueryExtras:
    """What a query reports while it runs, besides its return value: LLM usage (record_tokens,
    instrumented clients, streams), quality set by hand, cache lookups, attributes, the first
    chunk's time. Made on first use, so a query that reports nothing this way costs nothing."""

    __slots__ = ("relevance_score", "context_precision", "first_token", "cache_hits",
                 "cache_misses", "attributes", "usages", "chunks", "quality", "timeline")

    def __init__(self):
        # LLM usages and streams seen during the query (tokens.Usage / usage.StreamUsage), in
        # the order they came, and the tracker of the chunks a streaming query yields itself.
        self.usages: list | None = None
        self.chunks = None
        self.relevance_score = self.context_precision = self.first_token = None
        self.cache_hits = self.cache_misses = 0
        self.attributes: dict | None = None
        self.quality = None  # quality.QueryQuality: named scores, retrieval health
        # Stages and LLM calls with their times, kept only while OpenTelemetry output is on.
        self.timeline: list | None = None

    def add_usage(self, usage) -> None:
        if self.usages is None:
            self.usages = [usage]
        elif all(known is not usage for known in self.usages):
            self.usages.append(usage)


class QueryContext:
    """One query in progress; turned into metrics and a record when it ends."""

    __slots__ = ("_request_id", "owner", "operation", "model", "start", "sink", "stages", "extra")

    def __init__(self, owner, operation: str, model: str | None, start: float, sink=None):
        # The id is made only when something reads it (a record, a log line), but the bound or
        # enclosing id it inherits is captured now, while this query's context is current.
        enclosing = CURRENT_QUERY.get()
        self._request_id = enclosing if enclosing is not None else _BOUND_REQUEST_ID.get()
        self.owner = owner  # the _Instrumented that started the query (its metrics catalog)
        self.operation = operation
        self.model = model
        self.start = start
        self.sink = sink  # where this query's record goes; None: no record, so no stage list
        self.stages: dict | None = None
        self.extra: QueryExtras | None = None

    def extras(self) -> QueryExtras:
        extra = self.extra
        if extra is None:
            extra = self.extra = QueryExtras()
        return extra

    @property
    def request_id(self) -> str:
        rid = self._request_id
        if rid is None:  # new_request_id(), inlined: a record reads it on every query
            rid = self._request_id = f"{_ID_PREFIX}-{next(_ids):x}"
        elif type(rid) is not str:  # the enclosing query: share its id
            rid = self._request_id = rid.request_id
        return rid

    def add_stage(self, name: str, duration: float, metadata: dict | None) -> None:
        if self.sink is None:
            return
        stages = self.stages
        if stages is None:  # the usual first stage, without records.add_stage's merging
            self.stages = {name: {"duration": duration,
                                  "metadata": dict(metadata) if metadata else {}}}
        else:
            add_stage(stages, name, duration, metadata)


CURRENT_QUERY: ContextVar[QueryContext | None] = ContextVar("ragmon_current_query", default=None)
_BOUND_REQUEST_ID: ContextVar[str | None] = ContextVar("ragmon_bound_request_id", default=None)
# The monitored streams started while serving one HTTP request (a list set by the ASGI
# middleware), so the ones the server abandons can be finished when the response ends.
OPEN_STREAMS: ContextVar[list | None] = ContextVar("ragmon_open_streams", default=None)


def current_request_id() -> str | None:
    """The id of the query in progress, or one bound with request_context(); else None."""
    query = CURRENT_QUERY.get()
    return query.request_id if query is not None else _BOUND_REQUEST_ID.get()


@contextlib.contextmanager
def request_context(request_id: str):
    """Binds a request id you already have (e.g. an X-Request-ID header) to the queries and log
    lines inside the block."""
    if not isinstance(request_id, str) or not request_id:
        raise ValueError(f"request_id={request_id!r} must be a non-empty string, e.g. the value "
                         "of your X-Request-ID header")
    token = _BOUND_REQUEST_ID.set(request_id)
    try:
        yield request_id
    finally:
        _BOUND_REQUEST_ID.reset(token)
