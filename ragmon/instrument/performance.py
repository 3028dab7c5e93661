"""PerformanceMonitor: per-request stage timings, bottlenecks and one record per request.

Two ways to use it, writing the same record as ``@monitored_query`` (ragmon.instrument.records)::

    monitor = PerformanceMonitor(log_dir="./logs")
    monitor.start_request("req-1")
    monitor.log_stage("req-1", "retrieval", 0.42, {"documents": 50})
    summary = monitor.end_request("req-1", model="gpt-4o-mini", input_tokens=500)

    with monitor.request("req-2", attributes={"agent_type": "simple"}) as req:
        with req.stage("retrieval") as stage:
            stage.metadata["documents"] = 50
        req.set(model="gpt-4o-mini", output_tokens=150)
    req.summary  # the same dict end_request returns

Every stage also feeds ``rag_stage_duration_seconds`` through ``ragmon.instrument.observe_stage``,
so dashboards see PerformanceMonitor stages next to ``stage()`` blocks.
"""
from __future__ import annotations

import atexit
import logging
import math
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from typing import Any, Mapping

from ..checks import (MAX_COST_DOLLARS, MAX_TOKENS, check_amount, check_count, check_name,
                      check_score, check_whole, safe_label)
from . import tokens
from .accounting import refused, series_for, settle, today
from .records import STATUSES, add_stage, build_record, iso_utc, status_of
from .tokens import PartsExceedWhole, Usage

log = logging.getLogger("ragmon")

# Fields end_request()/set() accept besides status, error_type and the token kinds (every
# field of tokens.KINDS, under record_tokens' names and input convention).
RECORD_FIELDS = ("model", "cost", "relevance_score", "context_precision", "time_to_first_token",
                 "cache_hits", "cache_misses", "operation")
_COUNT_FIELDS = ("cache_hits", "cache_misses")
_SCORE_FIELDS = ("relevance_score", "context_precision")


class PerformanceMonitorError(Exception):
    """Base class of PerformanceMonitor's usage errors."""


class UnknownRequestError(PerformanceMonitorError, KeyError):
    """A request id that was never started (or was forgotten long ago)."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RequestEndedError(PerformanceMonitorError, ValueError):
    """A stage or end for a request that has already ended."""


class DuplicateRequestError(PerformanceMonitorError, ValueError):
    """start_request() with an id that is already in use."""


class InvalidDurationError(PerformanceMonitorError, ValueError):
    """A stage duration that is negative, not a number, NaN or infinite."""


def check_duration(name: str, value: object) -> float:
    """Returns `value` as a float if it is a finite number of seconds >= 0, else raises."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidDurationError(
            f"{name}={value!r} is not a duration; expected seconds as a number >= 0, e.g. 0.25 "
            "(measure it with time.perf_counter() differences, not datetimes)")
    value = float(value)
    if math.isnan(value) or math.isinf(value):
        raise InvalidDurationError(f"{name}={value!r} is not finite; expected seconds >= 0")
    if value < 0:
        raise InvalidDurationError(
            f"{name}={value!r} is negative; expected seconds >= 0. A negative value usually "
            "means start and end were swapped (end - start) or wall-clock time jumped; "
            "use time.perf_counter()")
    return value


def find_bottlenecks(stages: Mapping[str, float], total_time: float, share_threshold: float,
                     budgets: Mapping[str, float]) -> list[dict]:
    """Stages whose share of `total_time` passes `share_threshold` or whose duration passes
    their budget in `budgets`, slowest first, each with the reasons in words and as codes.

    m2_3_report.py applies the same rule, vectorised, to logged records.
    """
    out = []
    for name, duration in stages.items():
        share = duration / total_time if total_time > 0 else 0.0
        codes, words = [], []
        if share > share_threshold:
            codes.append("share")
            words.append(f"took {share:.0%} of the request's {total_time:.3f} s "
                         f"(threshold BOTTLENECK_SHARE={share_threshold:g})")
        budget = budgets.get(name)
        if budget is not None and duration > budget:
            codes.append("budget")
            words.append(f"took {duration:.3f} s, over its budget of {budget:g} s "
                         f"(STAGE_BUDGETS {name}={budget:g})")
        if codes:
            out.append({"stage": name, "duration": duration, "share": share,
                        "reasons": codes, "reason": "; ".join(words)})
    out.sort(key=lambda b: b["duration"], reverse=True)
    return out


class _Request:
    """State of one request between start and end. Guarded by the monitor's lock."""

    __slots__ = ("request_id", "start_wall", "start_perf", "stages", "fields", "attributes",
                 "status", "error_type")

    def __init__(self, request_id: str, start_wall: float, start_perf: float):
        self.request_id = request_id
        self.start_wall = start_wall
        self.start_perf = start_perf
        self.stages: dict[str, dict] = {}
        self.fields: dict[str, Any] = {}
        self.attributes: dict[str, Any] = {}
        self.status: str | None = None
        self.error_type: str | None = None

    def apply(self, fields: Mapping[str, Any], attributes: Mapping | None, status: str | None,
              error_type: object) -> None:
        """Merges already-checked updates from set() or end_request()."""
        self.fields.update(fields)
        if attributes:
            self.attributes.update(attributes)
        if status is not None:
            self.status = status
        if error_type is not None:
            self.error_type = safe_label(error_type)  # str() that cannot raise, safe to label


class PerformanceMonitor:
    """Tracks requests stage by stage and writes one record per request.

    ``log_dir``: write daily files there (``YYYYMMDD_performance.jsonl``). Without it, records
    go where the settings say (REQUEST_LOG_DESTINATION: file in LOG_DIR, stderr, or none): the
    process-wide request log of @monitored_query (configure_request_log) when ``settings`` is
    not given either, else a sink made from ``settings``.
    ``sink``: any object with ``write(record)``, instead of a file (tests, custom transports).
    ``metrics``: the RAGMetrics catalog the stage histograms go to (default: the library's).
    ``operation``: the ``operation`` label and record field (overridable per request).
    ``settings``: config.Settings (default: config.get_settings()); supplies the bottleneck
    threshold, stage budgets, slow-query thresholds, service and env names.
    ``keep_summaries``: how many ended requests get_summary() remembers.

    Thread-safe: any thread may start, log to and end any request.
    """

    def __init__(self, log_dir=None, metrics=None, operation: str = "query", settings=None,
                 *, sink=None, keep_summaries: int = 10_000, max_open: int = 10_000):
        shared_sink = settings is None and log_dir is None and sink is None
        if settings is None:
            from ..settings import get_settings
            settings = get_settings()
        if not isinstance(operation, str) or not operation:
            raise ValueError(f"operation={operation!r} must be a non-empty string naming the kind "
                             "of request, e.g. operation='rag_search'")
        if log_dir is not None and sink is not None:
            raise ValueError("pass log_dir or sink, not both: log_dir is a shortcut for "
                             "sink=DailyFileSink(log_dir)")
        self.settings = settings
        if metrics is None:
            from .runtime import default_metrics
            metrics = default_metrics()
        self.metrics = metrics
        self.operation = operation
        self._owns_sink = sink is None and not shared_sink
        if shared_sink:  # the process-wide request log, as configure_request_log() set it
            from .runtime import current_request_log
            sink = current_request_log()
        elif sink is None:
            from .records import DailyFileSink, sink_from_settings
            sink = DailyFileSink(log_dir) if log_dir is not None else sink_from_settings(settings)
        self.sink = sink
        self.log_dir = getattr(sink, "log_dir", None)
        self.keep_summaries = keep_summaries
        self.max_open = max_open
        self._lock = threading.Lock()
        self._open: dict[str, _Request] = {}
        self._ended: OrderedDict[str, dict] = OrderedDict()
        self._warned_max_open = False
        self._closed = False
        # A weak reference, so the atexit hook neither keeps the monitor alive nor fires for one
        # that was already closed and collected.
        ref = weakref.ref(self)
        self._atexit = lambda: (m := ref()) is not None and m.close()
        atexit.register(self._atexit)

    # --- start_request / add_stage / end_request ----------------------------------------------------------------
    def start_request(self, request_id: str | None = None) -> str:
        """Starts timing a request and returns its id (a new uuid4 hex when None)."""
        if request_id is None:
            request_id = uuid.uuid4().hex
        elif not isinstance(request_id, str) or not request_id:
            raise ValueError(f"request_id={request_id!r} must be a non-empty string, e.g. a uuid4 "
                             "hex or your X-Request-ID header; pass None to get a new one")
        state = _Request(request_id, time.time(), time.perf_counter())
        with self._lock:
            if request_id in self._open:
                raise DuplicateRequestError(
                    f"request {request_id!r} is already started and not ended; request ids must "
                    "be unique per request: end it first, or use a new id (start_request(None) "
                    "makes one)")
            if request_id in self._ended:
                raise DuplicateRequestError(
                    f"request {request_id!r} has already ended; request ids must be unique per "
                    "request: use a new id (start_request(None) makes one)")
            self._open[request_id] = state
            too_many = len(self._open) > self.max_open and not self._warned_max_open
            if too_many:
                self._warned_max_open = True
        if too_many:
            log.warning("PerformanceMonitor has more than %d requests open; are requests being "
                        "started without end_request()? monitor.open_requests() lists them",
                        self.max_open)
        return request_id

    def log_stage(self, request_id: str, name: str, duration: float,
                  metadata: Mapping[str, Any] | None = None) -> None:
        """Adds a stage of `duration` seconds. A stage logged twice adds up (two retrieval
        rounds); its metadata is merged, later keys winning."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"stage name={name!r} must be a non-empty string, e.g. 'retrieval'")
        duration = check_duration(f"duration of stage {name!r}", duration)
        if metadata is not None and not isinstance(metadata, Mapping):
            raise ValueError(f"metadata={metadata!r} for stage {name!r} must be a dict (or None), "
                             "e.g. {'documents': 50}")
        with self._lock:
            state = self._require_open(request_id, f"log stage {name!r}")
            operation = state.fields.get("operation") or self.operation
            add_stage(state.stages, name, duration, metadata)
        self._observe(name, duration, metadata, operation)

    def end_request(self, request_id: str, *, status: str | None = None,
                    error_type: str | None = None, total_time: float | None = None,
                    attributes: Mapping[str, Any] | None = None, **fields: Any) -> dict:
        """Ends the request, writes its record and returns its summary.

        ``status``: success (default), error or cancelled; an ``error_type`` alone implies error.
        ``total_time``: seconds; default the wall time since start_request, or the sum of the
        stages when that is larger (durations measured elsewhere and logged afterwards).
        ``attributes``: free-form keys merged into the record's attributes (agent_type,
        complexity_score, entities, tool_calls, graphql_calls, ...).
        Other keywords: model, input_tokens, output_tokens, cached_input_tokens, cost,
        relevance_score, context_precision, time_to_first_token, cache_hits, cache_misses,
        operation. ``cost`` defaults to the price of the tokens for ``model``.
        """
        end_perf = time.perf_counter()
        if total_time is not None:
            total_time = check_duration("total_time", total_time)
        updates = self._check_fields(fields)
        if attributes is not None and not isinstance(attributes, Mapping):
            raise ValueError(f"attributes={attributes!r} must be a dict of free-form keys, e.g. "
                             "{'agent_type': 'simple', 'tool_calls': 3}")
        if status is not None:
            self._check_status(status)
        with self._lock:
            state = self._require_open(request_id, "end it")
            del self._open[request_id]
        state.apply(updates, attributes, status, error_type)
        summary = self._finish(state, end_perf, total_time)
        with self._lock:
            self._ended[request_id] = summary
            while len(self._ended) > self.keep_summaries:
                self._ended.popitem(last=False)
        return summary

    def get_summary(self, request_id: str) -> dict:
        """The summary of an ended request, or a provisional one (``"ended": False``, time so
        far) for an open request."""
        now = time.perf_counter()
        with self._lock:
            summary = self._ended.get(request_id)
            if summary is not None:
                return summary
            state = self._open.get(request_id)
            if state is None:
                raise UnknownRequestError(self._unknown_message(request_id, "get its summary"))
            stages = {name: entry["duration"] for name, entry in state.stages.items()}
            metadata = {name: dict(entry["metadata"]) for name, entry in state.stages.items()}
        elapsed = now - state.start_perf
        total = max(elapsed, sum(stages.values()))
        summary = self._summarize(state, stages, metadata, total, status=None)
        summary["ended"] = False
        summary["note"] = (f"request {request_id!r} is still open after {elapsed:.3f} s; "
                           "end_request() writes its record")
        return summary

    # --- extras ----------------------------------------------------------------------------
    def set(self, request_id: str, *, attributes: Mapping[str, Any] | None = None,
            status: str | None = None, error_type: str | None = None, **fields: Any) -> None:
        """Sets record fields of an open request before it ends (see end_request)."""
        updates = self._check_fields(fields)
        if status is not None:
            self._check_status(status)
        if attributes is not None and not isinstance(attributes, Mapping):
            raise ValueError(f"attributes={attributes!r} must be a dict")
        with self._lock:
            state = self._require_open(request_id, "set fields on it")
            state.apply(updates, attributes, status, error_type)

    def count(self, request_id: str, attribute: str, n: int = 1) -> int:
        """Adds `n` to a counting attribute (tool_calls, graphql_calls, ...); returns the total."""
        check_whole("n", n, "count(id, 'tool_calls', 1)")
        with self._lock:
            state = self._require_open(request_id, f"count {attribute!r}")
            total = state.attributes.get(attribute, 0) + n
            state.attributes[attribute] = total
        return total

    def request(self, request_id: str | None = None, *, attributes: Mapping[str, Any] | None = None,
                **fields: Any) -> "RequestHandle":
        """A context manager for one request: ``with monitor.request() as req: ...``.

        An exception leaving the block ends the request as an error (error_type is the
        exception's class name; KeyboardInterrupt and cancellation count as cancelled) and is
        re-raised."""
        return RequestHandle(self, request_id, attributes, fields)

    def open_requests(self) -> list[dict]:
        """Requests started and not ended: id, age in seconds, stages so far. Oldest first."""
        now = time.perf_counter()
        with self._lock:
            states = list(self._open.values())
            return [{"request_id": s.request_id, "age": now - s.start_perf,
                     "stages": list(s.stages)} for s in states]

    def close(self, flush_open: bool = True) -> list[str]:
        """Ends the monitor. Requests still open are warned about and, with ``flush_open``,
        written as cancelled records (error_type "RequestNotEnded", attribute not_ended=true)
        so they are not lost. Returns their ids. Idempotent; also runs at interpreter exit."""
        with self._lock:
            if self._closed:
                return []
            self._closed = True
            leftovers = list(self._open.values())
            self._open.clear()
        atexit.unregister(self._atexit)
        ids = [s.request_id for s in leftovers]
        if leftovers:
            log.warning("PerformanceMonitor closed with %d request(s) never ended: %s%s; %s",
                        len(ids), ", ".join(ids[:10]), " ..." if len(ids) > 10 else "",
                        "writing them as cancelled records (error_type RequestNotEnded)"
                        if flush_open else "they are not written")
            if flush_open:
                now = time.perf_counter()
                for state in leftovers:
                    state.status = "cancelled"
                    state.error_type = "RequestNotEnded"
                    state.attributes["not_ended"] = True
                    self._finish(state, now, None)
        close = getattr(self.sink, "close", None)
        if close is not None and self._owns_sink:
            close()
        return ids

    def __enter__(self) -> "PerformanceMonitor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- internals -------------------------------------------------------------------------
    def _require_open(self, request_id: str, action: str) -> _Request:
        state = self._open.get(request_id)
        if state is not None:
            return state
        if request_id in self._ended:
            raise RequestEndedError(
                f"cannot {action}: request {request_id!r} has already ended and its record is "
                "written; log every stage before end_request(), or start a new request")
        raise UnknownRequestError(self._unknown_message(request_id, action))

    def _unknown_message(self, request_id, action: str) -> str:
        return (f"cannot {action}: request {request_id!r} is unknown to this monitor; call "
                f"start_request({request_id!r}) first (or use monitor.request() as a context "
                "manager). Ids of ended requests are forgotten after "
                f"{self.keep_summaries} newer ones.")

    @staticmethod
    def _check_status(status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"status={status!r} is not one of {', '.join(STATUSES)}; an "
                             "error_type alone implies status='error'")

    @staticmethod
    def _check_fields(fields: Mapping[str, Any]) -> dict:
        known = (*RECORD_FIELDS, *tokens.fields())
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise TypeError(f"unknown record field(s) {unknown}; expected some of "
                            f"{list(known)}, or put free-form values in attributes={{...}}")
        for name in (*_COUNT_FIELDS, *tokens.fields()):
            if name in fields:
                check_count(name, fields[name])
        for name in _SCORE_FIELDS:
            if fields.get(name) is not None:
                check_score(name, fields[name])
        for name in ("cost", "time_to_first_token"):
            if fields.get(name) is not None:
                check_amount(name, fields[name])
        if "operation" in fields:
            check_name("operation", fields["operation"], "rag_search")
        return dict(fields)

    def _observe(self, name: str, duration: float, metadata, operation: str) -> None:
        from .stages import observe_stage
        observe_stage(name, duration, metadata, metrics=self.metrics, operation=operation,
                      attach=False)  # this monitor writes the request's record itself

    def _summarize(self, state: _Request, stages: dict[str, float], metadata: dict[str, dict],
                   total: float, status: str | None) -> dict:
        settings = self.settings
        return {
            "request_id": state.request_id,
            "operation": state.fields.get("operation") or self.operation,
            "status": status,
            "error_type": state.error_type,
            "start_time": state.start_wall,
            "total_time": total,
            "stage_time": sum(stages.values()),
            "stages": {name: {"duration": d, "share": d / total if total > 0 else 0.0,
                              "metadata": metadata[name]} for name, d in stages.items()},
            "bottlenecks": find_bottlenecks(stages, total, settings.BOTTLENECK_SHARE,
                                            settings.STAGE_BUDGETS),
            "slow": total > settings.SLOW_QUERY_SECONDS,
            "very_slow": total > settings.VERY_SLOW_QUERY_SECONDS,
            "ended": True,
        }

    def _finish(self, state: _Request, end_perf: float, total_time: float | None) -> dict:
        stages = {name: entry["duration"] for name, entry in state.stages.items()}
        elapsed = end_perf - state.start_perf
        if total_time is None:
            total_time = max(elapsed, sum(stages.values()))
        # The request ends now; a total longer than the elapsed time (stage durations measured
        # elsewhere and logged afterwards) moves the start back, never the end into the future.
        end_wall = state.start_wall + elapsed
        state.start_wall = end_wall - total_time
        status = state.status or ("error" if state.error_type else "success")
        summary = self._summarize(state, stages, {n: e["metadata"] for n, e in state.stages.items()},
                                  total_time, status)
        summary["timestamp"] = iso_utc(end_wall)
        summary["record_written"] = self._write(state, total_time, status)
        return summary

    def _write(self, state: _Request, total_time: float, status: str) -> bool:
        if self.sink is None:
            return False
        f = state.fields
        operation = self._safe_name(f.get("operation") or self.operation)
        cost = f.get("cost")
        model = f.get("model")
        model = None if model is None else self._safe_name(model)
        counts = {name: f[name] for name in tokens.fields() if f.get(name)}
        settlement = out_of_bounds = None
        try:
            usage = Usage.reported(counts, model=model, by_hand=True)
            settlement = settle([usage], model, today(),
                                lambda name, day: series_for(self.metrics, operation, name, day))
            for name, line in settlement.lines.items():
                if not line.series.known:
                    self.metrics.note_unknown_model(name)
            out_of_bounds = settlement.out_of_bounds
            if cost is None:
                cost = settlement.cost
            elif cost > MAX_COST_DOLLARS:
                out_of_bounds, cost = {**(out_of_bounds or {}), "cost": cost}, None
            if out_of_bounds:
                self.metrics.count_instrumentation_error("out_of_bounds")
                log.warning("request %r reported %s beyond the sane bounds (%d tokens, $%s per "
                            "call); kept raw under out_of_bounds in its record", state.request_id,
                            ", ".join(out_of_bounds), MAX_TOKENS, MAX_COST_DOLLARS)
        except PartsExceedWhole as problem:
            out_of_bounds = refused(self.metrics, operation, problem)
        except Exception:  # pricing must not fail the request either
            log.exception("could not price request %r", state.request_id)
            self.metrics.count_instrumentation_error("recording")
            cost = None
        try:
            record = build_record(
                state.request_id, self.settings.SERVICE_NAME, self.settings.ENV, operation,
                model, status, state.error_type, state.start_wall, total_time,
                self._safe_stages(state.stages),
                settlement.record_tokens() if settlement is not None
                else tokens.record_tokens_field({}),
                cost, f.get("relevance_score"), f.get("context_precision"),
                f.get("time_to_first_token"), f.get("cache_hits", 0), f.get("cache_misses", 0),
                state.attributes, settlement.pricing() if settlement is not None else None,
                out_of_bounds or None)
            self.sink.write(record, at=state.start_wall + total_time)
            return True
        except Exception:  # the application must not fail because its log could not be written
            log.exception("could not write the record of request %r", state.request_id)
            self.metrics.count_instrumentation_error("record_write")
            return False

    def _safe_name(self, name: object) -> str:
        """A name as @monitored_query records it: one a record or label cannot hold (a lone
        surrogate, a control character, over 128 characters) is replaced and counted."""
        safe = safe_label(name)
        if safe != name:
            self.metrics.count_instrumentation_error("unsafe_name")
        return safe

    def _safe_stages(self, stages: dict) -> dict:
        if all(safe_label(name) == name for name in stages):
            return stages
        return {self._safe_name(name): entry for name, entry in stages.items()}


class StageHandle:
    """One stage block: ``with req.stage("retrieval", documents=50) as stage: ...``."""

    __slots__ = ("_request", "name", "metadata", "_start", "duration")

    def __init__(self, request: "RequestHandle", name: str, metadata: dict):
        self._request = request
        self.name = name
        self.metadata = metadata
        self._start = 0.0
        self.duration: float | None = None

    def __enter__(self) -> "StageHandle":
        self._start = time.perf_counter()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.duration = time.perf_counter() - self._start
        if exc_type is not None:
            self.metadata.setdefault("error_type", exc_type.__name__)
        self._request.monitor.log_stage(self._request.request_id, self.name, self.duration,
                                        self.metadata)


class RequestHandle:
    """A request as a context manager; see PerformanceMonitor.request()."""

    def __init__(self, monitor: PerformanceMonitor, request_id: str | None,
                 attributes: Mapping[str, Any] | None, fields: dict):
        self.monitor = monitor
        self._requested_id = request_id
        self.request_id: str | None = None
        self.attributes: dict[str, Any] = dict(attributes or {})
        self._fields = PerformanceMonitor._check_fields(fields)
        self.summary: dict | None = None
        self.status: str | None = None
        self.error_type: str | None = None

    def __enter__(self) -> "RequestHandle":
        self.request_id = self.monitor.start_request(self._requested_id)
        if self._fields:
            self.monitor.set(self.request_id, **self._fields)
        return self

    def stage(self, name: str, metadata: Mapping[str, Any] | None = None, **more: Any) -> StageHandle:
        return StageHandle(self, name, {**(metadata or {}), **more})

    def log_stage(self, name: str, duration: float, metadata: Mapping[str, Any] | None = None) -> None:
        self.monitor.log_stage(self.request_id, name, duration, metadata)

    def set(self, **fields: Any) -> None:
        """Record fields (model, tokens, cost, scores, ...) written when the block ends."""
        if self.request_id is None:
            self._fields.update(PerformanceMonitor._check_fields(fields))
        else:
            self.monitor.set(self.request_id, **fields)

    def count(self, attribute: str, n: int = 1) -> int:
        check_whole("n", n, "req.count('tool_calls')")
        self.attributes[attribute] = self.attributes.get(attribute, 0) + n
        return self.attributes[attribute]

    def fail(self, error_type: str, status: str = "error") -> None:
        """Marks the request failed without raising (e.g. a handled fallback)."""
        PerformanceMonitor._check_status(status)
        self.status, self.error_type = status, error_type

    def __exit__(self, exc_type, exc, tb) -> None:
        status, error_type = self.status, self.error_type
        if exc_type is not None:
            error_type = exc_type.__name__
            status = status_of(exc)
        self.summary = self.monitor.end_request(self.request_id, status=status,
                                                error_type=error_type, attributes=self.attributes)
