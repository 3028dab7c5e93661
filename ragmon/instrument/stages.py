"""Timing the stages of a query: ``stage()`` (context manager and decorator) and
``observe_stage()`` for durations measured elsewhere (PerformanceMonitor)."""
from __future__ import annotations

import functools
import inspect
import time
from typing import Callable, Mapping

from ..checks import MAX_LABEL_LENGTH, check_amount, check_name, safe_label
from .catalog import RAGMetrics
from .context import CURRENT_QUERY
from .runtime import STATE, cached_child, default_metrics, recording_failed, safe_name

_perf = time.perf_counter


def observe_stage(name: str, duration: float, metadata: Mapping | None = None, *,
                  metrics: RAGMetrics | None = None, operation: str | None = None,
                  attach: bool = True) -> None:
    """Records one stage's duration in rag_stage_duration_seconds and, inside a monitored query,
    in that query's record. Shared by stage() and PerformanceMonitor, which passes
    ``attach=False`` because it writes its own record for the stage."""
    name = safe_name(check_name("stage", name, "retrieval"))
    check_amount("duration", duration, f"seconds for stage {name!r} as a finite number >= 0")
    if operation is not None:
        operation = safe_name(operation)
    record_stage(name, duration, metadata, metrics, operation, attach)


def record_stage(name: str, duration: float, metadata: Mapping | None,
                  metrics: RAGMetrics | None, operation: str | None = None,
                  attach: bool = True) -> None:
    """observe_stage without the argument checks, for callers whose arguments are known good."""
    query = CURRENT_QUERY.get() if attach else None
    if query is not None and STATE.otel is not None:
        STATE.otel.stage_ended(query, name, duration)
    try:
        if query is not None and metrics is None and operation is None:  # inlined in stage.__exit__
            query.owner.stage_observer(name)(duration)
            query.add_stage(name, duration, metadata)
            return
        m = metrics or (query.owner.metrics if query is not None else default_metrics())
        op = operation or (query.operation if query is not None else "none")
        cached_child(m, ("stage", op, name), lambda: m.stage_latency.labels(op, name)).observe(duration)
        if query is not None and m is query.owner.metrics:
            query.add_stage(name, duration, metadata)
    except Exception as failure:
        owner_metrics = metrics or (query.owner.metrics if query is not None else STATE.metrics)
        recording_failed(owner_metrics, "recording", "recording stage %r failed: %r", name, failure)


_GOOD_NAMES: set = set()  # stage names used as they are; bounded (cleared when full)


def _checked_stage_name(name) -> str:
    if type(name) is not str or not name or name.isspace():
        check_name("stage", name, "retrieval")  # raises with the full explanation
    if len(name) > MAX_LABEL_LENGTH or not name.isprintable():
        return safe_label(name)
    if len(_GOOD_NAMES) >= 1000:
        _GOOD_NAMES.clear()
    _GOOD_NAMES.add(name)
    return name


class stage:
    """Times one stage of a query, as a context manager or a decorator::

        with stage("retrieval", top_k=5) as s:
            docs = search(query)
            s.metadata["documents"] = len(docs)

        @stage("generation")
        def generate(prompt): ...

    Inside a @monitored_query the stage lands in that query's record and is labelled with its
    operation. Create one per block (it is cheap), as with Histogram.time().
    """

    __slots__ = ("name", "metadata", "metrics", "_start")

    def __init__(self, name: str, *, metrics: RAGMetrics | None = None, **metadata):
        try:
            known = type(name) is str and name in _GOOD_NAMES  # seen before: one set lookup
        except TypeError:
            known = False
        if not known:
            name = _checked_stage_name(name)
        self.name = name
        self.metadata = metadata
        self.metrics = metrics
        self._start = None

    def __enter__(self) -> "stage":
        self._start = _perf()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        duration = _perf() - self._start
        query = CURRENT_QUERY.get()
        if query is None or self.metrics is not None:
            record_stage(self.name, duration, self.metadata, self.metrics)
            return
        if STATE.otel is not None:  # OpenTelemetry output on: the stage's span
            STATE.otel.stage_ended(query, self.name, duration)
        # The usual case: _record_stage's first branch, inlined because it runs for every stage.
        try:
            owner = query.owner
            (owner.stages.get(self.name) or owner.stage_observer(self.name))(duration)
            if query.sink is not None:
                query.add_stage(self.name, duration, self.metadata)
        except Exception as failure:
            recording_failed(query.owner.metrics, "recording", "recording stage %r failed: %r",
                              self.name, failure)

    async def __aenter__(self) -> "stage":
        return self.__enter__()

    async def __aexit__(self, exc_type, exc, tb) -> None:
        self.__exit__(exc_type, exc, tb)

    def __call__(self, fn: Callable) -> Callable:
        name, metadata, metrics = self.name, self.metadata, self.metrics
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def timed_async(*args, **kwargs):
                start = _perf()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    record_stage(name, _perf() - start, metadata, metrics)
            return timed_async

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = _perf()
            try:
                return fn(*args, **kwargs)
            finally:
                record_stage(name, _perf() - start, metadata, metrics)
        return timed
