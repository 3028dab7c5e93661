"""Instrumenting RAG code: @monitored_query, stage(), and the cache, rate-limit and token helpers.

Two promises shape this module:
- The host application never notices monitoring. The decorated function's result and exceptions
  pass through untouched (the same exception object, the same traceback). Anything that goes
  wrong while *recording* is logged and counted in rag_instrumentation_errors_total, never raised.
- The per-query cost stays small. Labelled children are resolved once per operation/model and
  cached; a query costs one context switch-in/out plus the metric updates themselves.

Explicit calls with bad arguments (a negative token count, a stage without a name) still raise
ValueError at once: that is a programming error the caller should see in development.
"""
from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
import weakref
from typing import Any, Callable, Mapping

from .catalog import CHILD_CACHE_SIZE, QUERY_LATENCY_BUCKETS, BoundedCache, RAGMetrics
from .context import CURRENT_QUERY, OPEN_STREAMS, QueryContext
from .exemplars import ExemplarSampler, latency_exemplar
from .gc_safe import call_outside_collection, in_collection, start_finisher
from .notices import WarningLimiter
from ..checks import (MAX_COST_DOLLARS, MAX_LABEL_LENGTH, MAX_TOKENS, check_amount, check_count,
                      check_name, check_score, safe_label, text_of)
from .records import CANCELLED_EXCEPTIONS, build_record, sink_for
from .usage import _PLAIN, StreamUsage, Unreadable, Usage, _is_stream, is_content, read_usage, watch_stream

log = logging.getLogger("ragmon")
_perf = time.perf_counter

_default_metrics: RAGMetrics | None = None
_UNSET = object()
_request_log: Any = _UNSET  # the process-wide record sink, resolved from settings on first use


def default_metrics() -> RAGMetrics:
    """The catalog registered in prometheus_client's global REGISTRY (``ragmon.metrics``)."""
    global _default_metrics
    if _default_metrics is None:
        _default_metrics = RAGMetrics()
    return _default_metrics


def configure_request_log(destination: str | None = None, log_dir: str | None = None, sink=None):
    """Chooses where per-query records go, overriding REQUEST_LOG_DESTINATION / LOG_DIR.

    ``destination`` is "file" (daily JSONL files in ``log_dir``), "stderr" or "none"; or pass any
    object with ``write(record, at)`` as ``sink``. Returns the sink now in use (None when off).
    Settings are read only for what is not given. Queries already running keep the sink they
    started with, so the previous sink is left open.
    """
    global _request_log
    if sink is None:
        if destination is None or (destination == "file" and log_dir is None):
            from ..settings import get_settings
            settings = get_settings()
            destination = destination if destination is not None else settings.REQUEST_LOG_DESTINATION
            log_dir = log_dir if log_dir is not None else settings.log_dir
        sink = sink_for(destination, log_dir)
    _request_log = sink
    return sink


def configure(settings=None, **values):
    """Sets ragmon's settings in code, for applications with their own configuration system.

        ragmon.configure(LOG_DIR="/var/log/rag", SERVICE_NAME="answers", METRICS_PORT=9400)
        ragmon.configure(settings)      # a Settings from make_settings() or load_settings()

    Named values are checked like their environment variables (a bad one raises ConfigError
    naming it); settings not named keep their defaults; no environment variable or `.env` is
    read. The default metrics and the request log pick the new settings up at once. Returns the
    Settings now in force.
    """
    from ..settings import make_settings, set_settings
    if settings is not None and values:
        raise ValueError("configure() takes either a Settings object or named values, not both; "
                         "pass make_settings(**values) or the values alone")
    settings = make_settings(**values) if settings is None else settings
    set_settings(settings)
    global _request_log
    _request_log = _UNSET
    if _default_metrics is not None:
        _default_metrics.settings_changed()
    return settings


def current_request_log():
    if _request_log is _UNSET:
        configure_request_log()
    return _request_log


_process_warnings = WarningLimiter(log)  # for failures outside any catalog


def _recording_failed(metrics: RAGMetrics | None, reason: str, message: str, *args) -> None:
    """Counts a swallowed monitoring failure; logs it within its reason's allowance (a few, then
    one a minute; see notices.py), redacted."""
    try:
        if metrics is not None:
            metrics.count_instrumentation_error(reason)
        warnings = getattr(metrics, "warnings", None) or _process_warnings
        warnings.warn(reason, "monitoring: " + message + " (counted in rag_instrumentation_errors_"
                      "total{reason=%r}; the application was not affected)", *args, reason,
                      exc_info=log.isEnabledFor(logging.DEBUG))
    except Exception:  # the last line of defence must not raise either
        pass


def _is_safe_label(value: object) -> bool:
    return type(value) is str and len(value) <= MAX_LABEL_LENGTH and value.isprintable()


def _safe_name(value: str) -> str:
    """A caller's name (operation, model, stage, cache type) as it is labelled and recorded."""
    return value if _is_safe_label(value) else safe_label(value)


class _ModelChildren:
    """The children of one model, each made on its first observation: a model that never
    streamed has no time-to-first-token series, one without cached tokens no cached series."""

    __slots__ = ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning",
                 "partial", "cost", "spend", "ttft", "price", "known", "match", "day", "pricing",
                 "_metrics", "_operation", "_label")

    def __init__(self, metrics: RAGMetrics, operation: str, label: str):
        self._metrics, self._operation, self._label = metrics, operation, label
        self.input = self.output = self.cached_input = self.cost = self.spend = self.ttft = None
        self.cache_write_5m = self.cache_write_1h = self.reasoning = self.partial = None
        self.day = None

    def make(self, name: str):
        m, label = self._metrics, self._label
        if name == "ttft":
            child = m.time_to_first_token.labels(self._operation, label)
        elif name == "cost":
            child = m.query_cost.labels(label)
        elif name == "spend":
            child = m.spend.labels(label)
        elif name == "reasoning":
            child = m.reasoning_tokens.labels(label)
        elif name == "partial":
            child = m.partial_usage.labels(label)
        else:
            child = m.tokens.labels(label, name)
        setattr(self, name, child)
        return child

    def child(self, name: str):
        return getattr(self, name) or self.make(name)


def _price_day(day: int):
    import datetime
    return datetime.date(1970, 1, 1) + datetime.timedelta(days=day)


_warned_shapes: set[str] = set()


def _note_unreadable(metrics: RAGMetrics, shape: str, hint: str = "") -> None:
    """Counts a response whose usage could not be read; warns once per shape."""
    shape = safe_label(shape)
    metrics.unreadable_responses.labels(shape).inc()
    if shape not in _warned_shapes and len(_warned_shapes) < 100:
        _warned_shapes.add(shape)
        log.warning("monitoring: could not read token usage from a returned %s; its tokens and "
                    "cost are not recorded (counted in rag_unreadable_responses_total). %s"
                    "Instrument the client with ragmon.instrument_openai(client) / "
                    "instrument_anthropic(client), or report usage with record_tokens().",
                    shape, hint)


class _Instrumented:
    """The state behind one decorated function: its labels, cached children and finishing logic."""

    def __init__(self, operation: str, model: str | None, metrics: RAGMetrics | None, request_log):
        self.operation = operation
        self.model = model
        self._metrics = metrics
        self._request_log = request_log  # None: process default; False: no records
        self.ready = False
        self._retry_at = 0.0
        self._relevance = self._precision = None

    def resolve(self) -> bool:
        """Resolves children on first call (not at import). False if monitoring is unusable;
        then the call runs unmonitored and setup is retried at most once a minute."""
        if time.monotonic() < self._retry_at:
            return False
        try:
            m = self.metrics = self._metrics or default_metrics()
            op = self.operation
            settings = m.settings
            self.service, self.env = settings.SERVICE_NAME, settings.ENV
            m.service_info.labels(self.service, self.env).set(1)
            self.latency = m.query_latency.labels(op)
            self.in_flight = m.in_flight.labels(op)
            self.succeeded = m.queries.labels(op, "success")
            self.failed = m.queries.labels(op, "error")
            self.cancelled = m.queries.labels(op, "cancelled")
            # Bound methods of the hottest calls, looked up once instead of on every query.
            self._observe_latency = self.latency.observe
            self._exemplar_due = ExemplarSampler(QUERY_LATENCY_BUCKETS).due
            self._count_success = self.succeeded.inc
            # Keyed by safe, length-capped values and emptied when full: bounded in count and size.
            self.errors_by_type: dict[str, Any] = BoundedCache(CHILD_CACHE_SIZE)
            self.by_model: dict[str | None, _ModelChildren] = BoundedCache(CHILD_CACHE_SIZE)
            self.stages: dict[str, Any] = BoundedCache(CHILD_CACHE_SIZE)
            current_request_log()  # resolve the process default now, where a failure is caught
            self.ready = True
        except Exception as exc:
            self._retry_at = time.monotonic() + 60
            _recording_failed(self._metrics or _default_metrics, "setup", "could not set up %r: %s",
                              self.operation, exc)
        return self.ready

    def start(self) -> QueryContext:
        sink = self._request_log
        if sink is None:
            sink = _request_log  # resolved by resolve(); configure_request_log() may change it
        return QueryContext(self, self.operation, self.model, _perf(), sink or None)

    def model_children(self, model: str | None) -> _ModelChildren:
        children = self.by_model.get(model)
        if children is None:
            m = self.metrics
            children = _ModelChildren(m, self.operation, model if model is not None else "unknown")
            self.reprice(children, model, int(time.time() // 86400))
            self.by_model[model] = children
        return children

    def reprice(self, children: _ModelChildren, model: str | None, day: int) -> None:
        """Prices in force on `day` (days since the epoch, UTC): versions change at midnight."""
        children.match = self.metrics.price_table.match(model, _price_day(day))
        children.price, children.known = children.match.price, children.match.known or model is None
        children.pricing = children.match.describe()
        children.day = day

    @property
    def relevance(self):
        child = self._relevance
        if child is None:
            child = self._relevance = self.metrics.relevance.labels(self.operation)
        return child

    @property
    def precision(self):
        child = self._precision
        if child is None:
            child = self._precision = self.metrics.context_precision.labels(self.operation)
        return child

    def stage_child(self, name: str):
        child = self.stages.get(name)
        if child is None:
            child = self.stages[_safe_name(name)] = self.metrics.stage_latency.labels(
                self.operation, name)
        return child

    def finish(self, ctx: QueryContext, result: object, exc: BaseException | None) -> None:
        end = _perf()
        duration = end - ctx.start
        try:
            if self._exemplar_due(duration, end):  # the request id, for the spike's drill-down
                self._observe_latency(duration, latency_exemplar(ctx.request_id))
            else:
                self._observe_latency(duration)
            if exc is None:
                status, error_type = "success", None
                self._count_success()
            elif isinstance(exc, CANCELLED_EXCEPTIONS):
                status, error_type = "cancelled", type(exc).__name__
                self.cancelled.inc()
            else:
                status, error_type = "error", type(exc).__name__
                if not _is_safe_label(error_type):
                    error_type = safe_label(error_type)
                self.failed.inc()
                counter = self.errors_by_type.get(error_type)
                if counter is None:
                    counter = self.errors_by_type[error_type] = self.metrics.errors.labels(
                        self.operation, error_type)
                counter.inc()

            # What the returned dict says; values stay in locals (this runs for every query).
            inp = out = cached = 0
            relevance = precision = first_token = r_model = returned = None
            model = ctx.model
            if type(result) is dict or (result is not None and isinstance(result, Mapping)):
                get = result.get if type(result) is dict else self._careful_get(result)
                r_inp, r_out, r_cached = get("input_tokens"), get("output_tokens"), get("cached_input_tokens")
                relevance, precision, r_model = get("relevance_score"), get("context_precision"), get("model")
                # The usual shape: ints >= 0, scores in 0..1 (`type(...) is` also rejects bool).
                if not ((r_inp is None or (type(r_inp) is int and r_inp >= 0))
                        and (r_out is None or (type(r_out) is int and r_out >= 0))
                        and (r_cached is None or (type(r_cached) is int and r_cached >= 0))
                        and (relevance is None or (type(relevance) in _REAL and 0 <= relevance <= 1))
                        and (precision is None or (type(precision) in _REAL and 0 <= precision <= 1))
                        and (r_model is None or (type(r_model) is str and r_model
                                                 and not r_model.isspace()
                                                 and len(r_model) <= MAX_LABEL_LENGTH
                                                 and r_model.isprintable()))):
                    r_inp, r_out, r_cached, relevance, precision, r_model = self._checked_result(
                        (r_inp, r_out, r_cached, relevance, precision, r_model))
                inp, out, cached = r_inp or 0, r_out or 0, r_cached or 0
                if r_model is not None:
                    model = r_model
                if r_inp is None and r_out is None and (
                        "usage" in result if type(result) is dict else get("usage") is not None):
                    returned = read_usage(result)  # a model_dump() of an SDK response
            elif result is not None and type(result) not in _PLAIN:
                returned = read_usage(result)  # an SDK response, by shape
            extra = ctx.extra  # what the query reported while it ran (streams, record_*())
            llm = None
            if extra is not None:
                inp += extra.input_tokens
                out += extra.output_tokens
                cached += extra.cached_input_tokens
                relevance = relevance if relevance is not None else extra.relevance_score
                precision = precision if precision is not None else extra.context_precision
                if extra.usages is not None or extra.chunks is not None:
                    if extra.chunks is not None and exc is None:
                        extra.chunks.completed = True  # the query's own stream ran to its end
                    llm = self._llm_usages(ctx, extra)
                first_token = extra.first_token
            if returned is not None:
                llm = self._add_returned(llm, returned, ctx)

            cost = None
            pricing = None
            out_of_bounds = None
            if inp > MAX_TOKENS or out > MAX_TOKENS or cached > MAX_TOKENS:
                out_of_bounds, inp, out, cached = _token_bounds(self.metrics, self.operation,
                                                                inp, out, cached)
            if llm:
                llm, out_of_bounds = _bounded_usages(self.metrics, self.operation, llm, out_of_bounds)
            ttft_pending = first_token is not None
            if llm:
                cost, pricing, model, ttft_pending, llm_tokens = self._record_llm(
                    ctx, llm, model, first_token, (inp, out, cached) if r_model is None else None)
                if r_model is None:
                    inp = out = cached = 0  # folded into the LLM usage of the answering model
                else:
                    model = r_model
            else:
                llm = None
            if inp or out or cached or ttft_pending:
                children = self.by_model.get(model) or self.model_children(model)
                if ttft_pending:
                    (children.ttft or children.make("ttft")).observe(first_token)
                if inp or out or cached:
                    day = int(time.time() // 86400)
                    if children.day != day:
                        self.reprice(children, model, day)
                    if inp:
                        (children.input or children.make("input")).inc(inp)
                    if out:
                        (children.output or children.make("output")).inc(out)
                    if cached:
                        (children.cached_input or children.make("cached_input")).inc(cached)
                    price = children.price  # PriceTable.cost, inlined: this runs per query
                    own = (inp * price.input + out * price.output + cached * price.cached_input) / 1000.0
                    if own > MAX_COST_DOLLARS:
                        out_of_bounds = _cost_bound(self.metrics, self.operation, own, out_of_bounds)
                        own = None
                    else:
                        (children.cost or children.make("cost")).observe(own)
                        if own:
                            (children.spend or children.make("spend")).inc(own)
                    if not children.known:
                        self.metrics._note_unknown_model(model)
                    if own is not None:
                        cost = own if cost is None else cost + own
                    pricing = pricing or children.pricing
            if llm is not None:
                kinds = llm_tokens
                kinds[0] += inp
                kinds[1] += out
                kinds[2] += cached
                inp, out, cached = kinds[0], kinds[1], kinds[2]
            else:
                kinds = None
            if relevance is not None:
                (self._relevance or self.relevance).observe(relevance)
            if precision is not None:
                (self._precision or self.precision).observe(precision)
        except Exception as failure:
            _recording_failed(self.metrics, "recording", "recording query %r failed: %r",
                              self.operation, failure)
            return
        if ctx.sink is not None:
            self._write_record(ctx, duration, status, error_type, model, inp, out, cached, cost,
                               relevance, precision, first_token, kinds, pricing,
                               out_of_bounds)

    # --- LLM usage read from SDK responses and streams ------------------------------------------
    def _llm_usages(self, ctx: QueryContext, extra) -> list:
        """The usage of every LLM response and stream of the query, each counted once."""
        found, seen = [], set()
        sources = list(extra.usages or ())
        if extra.chunks is not None:
            sources.append(extra.chunks)
        for source in sources:
            if isinstance(source, StreamUsage):
                if source is extra.chunks and not (source.final or source.usage.response_id):
                    continue  # yielded chunks carried no usage at all (plain text chunks)
                usage = source.snapshot()
                if source.completed and not source.final:
                    _note_unreadable(self.metrics, "stream_without_usage",
                                     "Pass stream_options={'include_usage': True} to OpenAI "
                                     "streams so the final chunk reports usage. ")
                if source.first_content_at is not None and extra.first_token is None:
                    extra.first_token = source.first_content_at - ctx.start
            else:
                usage = source
            rid = usage.response_id
            if rid is not None:
                if rid in seen:
                    continue
                seen.add(rid)
            found.append(usage)
        return found

    def _add_returned(self, llm: list | None, returned, ctx: QueryContext) -> list | None:
        if isinstance(returned, Unreadable):
            if not llm:  # an instrumented client may already have read the same call
                _note_unreadable(self.metrics, returned.shape)
            return llm
        if llm is None:
            llm = []
        rid = returned.response_id
        if rid is None or all(u.response_id != rid for u in llm):
            llm.append(returned)
        return llm

    def _record_llm(self, ctx: QueryContext, llm: list, model: str | None,
                    first_token: float | None, own: tuple | None):
        """Counts each LLM usage under the model that answered it; returns the query's cost,
        pricing, model, first-token time and token totals by kind."""
        totals = [0, 0, 0, 0, 0, 0]  # input, output, cached, write 5m, write 1h, reasoning
        cost = 0.0
        by_model: dict = {}
        day = int(time.time() // 86400)
        for usage in llm:
            name = usage.model or model
            children = self.by_model.get(name) or self.model_children(name)
            if children.day != day:
                self.reprice(children, name, day)
            counts = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens,
                      usage.cache_write_tokens, usage.cache_write_1h_tokens)
            for kind, count in zip(_TOKEN_KINDS, counts):
                if count:
                    children.child(kind).inc(count)
            if usage.reasoning_tokens:
                children.child("reasoning").inc(usage.reasoning_tokens)
            if usage.partial:
                children.child("partial").inc()
            for index, count in enumerate(counts):
                totals[index] += count
            totals[5] += usage.reasoning_tokens
            one = children.price.cost(*counts)
            cost += one
            if one:
                children.child("spend").inc(one)
            if not children.known:
                self.metrics._note_unknown_model(name)
            entry = by_model.setdefault(name, [children, 0.0])
            entry[1] += one
            model = name
        if own is not None and any(own):  # the returned dict's counts, for the answering model
            children = self.by_model.get(model) or self.model_children(model)
            for kind, count in zip(_TOKEN_KINDS, own):
                if count:
                    children.child(kind).inc(count)
            one = children.price.cost(*own)
            cost += one
            if one:
                children.child("spend").inc(one)
            for index, count in enumerate(own):
                totals[index] += count
            entry = by_model.setdefault(model, [children, 0.0])
            entry[1] += one
        for name, (children, one) in by_model.items():
            children.child("cost").observe(one)
        ttft_pending = first_token is not None
        if ttft_pending and model in by_model:
            by_model[model][0].child("ttft").observe(first_token)
            ttft_pending = False
        pricing = dict(by_model[model][0].pricing) if model in by_model else None
        if pricing is not None and len(by_model) > 1:
            pricing = dict(pricing, by_model={name: c.pricing
                                              for name, (c, _) in by_model.items()})
        if pricing is not None:
            pricing["partial"] = any(u.partial for u in llm)
            provider = next((u.provider for u in reversed(llm) if u.provider), None)
            if provider:
                pricing["provider"] = provider
        return cost, pricing, model, ttft_pending, totals

    def defer(self, ctx: QueryContext, stream) -> bool:
        """Finishes the query when the SDK stream it returned ends (read to the end, closed,
        abandoned or garbage-collected) instead of now, so its usage is counted. False if the
        stream cannot be followed or has already ended."""
        try:
            tracker = follow_stream(stream, ctx.start)
            if tracker is None or tracker.done:
                return False
            extra = ctx.extras()
            if extra.usages is None:
                extra.usages = []
            if tracker not in extra.usages:
                extra.usages.append(tracker)
            tracker.on_end.append(lambda t: self.finish(ctx, None, _stream_outcome(t)))
            return True
        except Exception as failure:
            _recording_failed(self.metrics, "recording", "following a returned stream failed: %r",
                              failure)
            return False

    def _careful_get(self, result: Mapping) -> Callable:
        """``result.get`` for a Mapping of the application's own: a field whose reading raises
        is counted and left out, and the record is written with the others."""
        def get(name: str):
            try:
                return result.get(name)
            except Exception as failure:
                _recording_failed(self.metrics, "bad_return_value", "%r returned a %s whose "
                                  ".get(%r) raised %s; the field is left out of the record",
                                  self.operation, type(result).__name__, name,
                                  type(failure).__name__)
                return None
        return get

    def _checked_result(self, fields: tuple) -> tuple:
        """The returned dict's fields with each bad one logged, counted and replaced by None."""
        checked = []
        for (name, check), value in zip(_RESULT_FIELDS, fields):
            try:
                checked.append(None if value is None else check(name, value))
            except ValueError:  # the value may be a secret or user text: never quote it
                checked.append(None)
                _recording_failed(self.metrics, "bad_return_value",
                                  "%r returned %s of type %s, which is not %s; left out of the "
                                  "metrics and the record", self.operation, name,
                                  type(value).__name__, _EXPECTED[name])
        return tuple(checked)

    def _write_record(self, ctx: QueryContext, duration: float, status: str,
                      error_type: str | None, model: str | None, inp: int, out: int, cached: int,
                      cost: float | None, relevance: float | None, precision: float | None,
                      first_token: float | None, kinds: list | None = None,
                      pricing: dict | None = None, out_of_bounds: dict | None = None) -> None:
        extra = ctx.extra
        try:
            end = time.time()
            if extra is None:
                hits = misses = 0
                attributes = None
            else:
                hits, misses, attributes = extra.cache_hits, extra.cache_misses, extra.attributes
            if kinds is None:
                write_5m = write_1h = reasoning = 0
            else:
                write_5m, write_1h, reasoning = kinds[3], kinds[4], kinds[5]
            ctx.sink.write(build_record(  # make_record's arguments, in its order
                ctx.request_id, self.service, self.env, ctx.operation, model, status, error_type,
                end - duration, duration, ctx.stages or {}, inp, out, cached, cost, relevance,
                precision, first_token, hits, misses, attributes, write_5m, write_1h, reasoning,
                pricing, out_of_bounds), at=end)
        except Exception as failure:
            _recording_failed(self.metrics, "record_write", "writing the request record failed: %r",
                              failure)


def _token_bounds(metrics: RAGMetrics, operation: str, inp: int, out: int,
                  cached: int) -> tuple[dict, int, int, int]:
    """Token counts above MAX_TOKENS: counted, left out of the metrics (one return of 10**30
    would add $1e23 to spend), and returned raw for the record."""
    raw = {}
    for name, value in (("input_tokens", inp), ("output_tokens", out),
                        ("cached_input_tokens", cached)):
        if value > MAX_TOKENS:
            raw[name] = value
    _recording_failed(metrics, "out_of_bounds", "%r reported %s above the bound of %d tokens per "
                      "call; left out of the metrics, kept in the record under out_of_bounds",
                      operation, ", ".join(raw), MAX_TOKENS)
    return (raw, 0 if inp > MAX_TOKENS else inp, 0 if out > MAX_TOKENS else out,
            0 if cached > MAX_TOKENS else cached)


def _cost_bound(metrics: RAGMetrics, operation: str, cost: float, raw: dict | None) -> dict:
    _recording_failed(metrics, "out_of_bounds", "%r cost $%s, above the bound of $%s per call; "
                      "left out of the metrics, kept in the record under out_of_bounds",
                      operation, cost, MAX_COST_DOLLARS)
    raw = dict(raw or {})
    raw["cost"] = cost
    return raw


def _bounded_usages(metrics: RAGMetrics, operation: str, usages: list,
                    raw: dict | None) -> tuple[list, dict | None]:
    """The LLM usages whose every count is within MAX_TOKENS; the others are counted, left out of
    the metrics and returned raw (merged into `raw`) for the record."""
    kept = []
    for usage in usages:
        counts = {"input_tokens": usage.input_tokens, "output_tokens": usage.output_tokens,
                  "cached_input_tokens": usage.cached_input_tokens,
                  "cache_write_tokens": usage.cache_write_tokens,
                  "cache_write_1h_tokens": usage.cache_write_1h_tokens,
                  "reasoning_tokens": usage.reasoning_tokens}
        over = {name: value for name, value in counts.items() if value > MAX_TOKENS}
        if not over:
            kept.append(usage)
            continue
        _recording_failed(metrics, "out_of_bounds", "%r reported %s above the bound of %d tokens "
                          "per call; left out of the metrics, kept in the record under "
                          "out_of_bounds", operation, ", ".join(over), MAX_TOKENS)
        raw = {**(raw or {}), **over}
    return kept, raw


def _checked_model(name: str, value: object) -> str:
    return _safe_name(check_name(name, value, "gpt-4o-mini"))


_REAL = (int, float)
_EXPECTED = {"input_tokens": "a whole number >= 0", "output_tokens": "a whole number >= 0",
             "cached_input_tokens": "a whole number >= 0", "relevance_score": "a number from 0 to 1",
             "context_precision": "a number from 0 to 1",
             "model": "a non-empty string"}
_RESULT_FIELDS = (("input_tokens", check_count), ("output_tokens", check_count),
                  ("cached_input_tokens", check_count), ("relevance_score", check_score),
                  ("context_precision", check_score), ("model", _checked_model))


def follow_stream(stream, started: float | None = None) -> StreamUsage | None:
    """The tracker following an SDK stream object, attached on first call (see usage.watch_stream).
    Its end is also signalled when the stream is garbage-collected unread."""
    tracker = getattr(stream, "_ragmon_usage", None)
    if tracker is None:
        tracker = StreamUsage(started)
        if not watch_stream(stream, tracker):
            return None
        stream._ragmon_usage = tracker
        start_finisher()
        weakref.finalize(stream, call_outside_collection, tracker.end)
    return tracker


def _stream_outcome(tracker: StreamUsage) -> BaseException | None:
    """The exception a query that returned this stream ends with: the stream's own error, or
    GeneratorExit (status "cancelled") when it was abandoned before its end."""
    if tracker.error is not None:
        return tracker.error
    return None if tracker.completed else GeneratorExit()


def _observe_chunk(ctx: QueryContext, item, waiting_first: bool) -> bool:
    """Reads a chunk a streaming query yields: its usage (SDK chunks, events) and, for the first
    *content* chunk, the time to first token. Returns whether the first content is still awaited."""
    try:
        if type(item) not in _PLAIN:
            extra = ctx.extras()
            tracker = extra.chunks
            if tracker is None:
                tracker = extra.chunks = StreamUsage(ctx.start)
            elif tracker.is_new_response(item):  # a second stream relayed by the same query
                tracker.completed = True
                if extra.usages is None:
                    extra.usages = []
                extra.usages.append(tracker)
                tracker = extra.chunks = StreamUsage(ctx.start)
            tracker.feed(item)
        if waiting_first and is_content(item):
            ctx.extras().first_token = _perf() - ctx.start
            return False
    except Exception as failure:
        _recording_failed(ctx.owner.metrics, "recording", "reading a streamed chunk failed: %r",
                          failure)
    return waiting_first


# --- the decorator -------------------------------------------------------------------------------

def monitored_query(operation: str = "query", model: str | None = None, *,
                    metrics: RAGMetrics | None = None, request_log=None) -> Callable:
    """Monitors every call of a RAG function: latency, status, errors, in-flight, tokens, cost,
    quality, per-stage timing, and one JSON record per call.

    Works on functions, ``async def`` functions, generators and async generators (streaming:
    time to first chunk is recorded; report the stream's tokens with ``record_tokens()`` or
    return a dict from the generator). A returned dict may carry ``input_tokens``,
    ``output_tokens``, ``cached_input_tokens``, ``relevance_score``, ``context_precision`` and
    ``model`` (which overrides the decorator's).

    ``metrics``: the RAGMetrics catalog to record into (default: the global one).
    ``request_log``: a sink for this function's records; ``False`` turns records off for it.
    """
    operation = _safe_name(check_name("operation", operation, "rag_search"))
    if model is not None:
        model = _safe_name(check_name("model", model, "gpt-4o-mini"))
    if metrics is not None and not isinstance(metrics, RAGMetrics):
        raise ValueError(f"metrics={metrics!r} is not a RAGMetrics catalog; pass "
                         "RAGMetrics(registry=...) or leave it out for the global one")

    def decorate(fn: Callable) -> Callable:
        if not callable(fn):
            raise ValueError(f"@monitored_query decorates functions; got {fn!r}")
        inst = _Instrumented(operation, model, metrics, request_log)
        if inspect.isasyncgenfunction(fn):
            wrapper = _wrap_async_generator(inst, fn)
        elif inspect.iscoroutinefunction(fn):
            wrapper = _wrap_coroutine(inst, fn)
        elif inspect.isgeneratorfunction(fn):
            wrapper = _wrap_generator(inst, fn)
        else:
            wrapper = _wrap_function(inst, fn)
        wrapper.__monitoring__ = inst
        return wrapper

    return decorate


# Results that are never SDK streams, as a set: the usual dict result is found by one hash
# lookup instead of a scan of _PLAIN and two failed attribute lookups in _is_stream().
_NEVER_STREAMS = frozenset((*_PLAIN, dict))


def _wrap_function(inst: _Instrumented, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def monitored(*args, **kwargs):
        if not inst.ready and not inst.resolve():
            return fn(*args, **kwargs)
        ctx = inst.start()
        token = CURRENT_QUERY.set(ctx)
        in_flight = inst.in_flight
        in_flight.inc()
        # Counted first, out of flight after: a scrape in between never misses the query.
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            CURRENT_QUERY.reset(token)
            inst.finish(ctx, None, exc)
            in_flight.dec()
            raise
        CURRENT_QUERY.reset(token)
        if type(result) in _NEVER_STREAMS or not _is_stream(result) or not inst.defer(ctx, result):
            inst.finish(ctx, result, None)
        in_flight.dec()
        return result
    return monitored


def _wrap_coroutine(inst: _Instrumented, fn: Callable) -> Callable:
    @functools.wraps(fn)
    async def monitored(*args, **kwargs):
        if not inst.ready and not inst.resolve():
            return await fn(*args, **kwargs)
        ctx = inst.start()
        token = CURRENT_QUERY.set(ctx)
        in_flight = inst.in_flight
        in_flight.inc()
        # Counted first, out of flight after: a scrape in between never misses the query.
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            CURRENT_QUERY.reset(token)
            inst.finish(ctx, None, exc)
            in_flight.dec()
            raise
        CURRENT_QUERY.reset(token)
        if type(result) in _NEVER_STREAMS or not _is_stream(result) or not inst.defer(ctx, result):
            inst.finish(ctx, result, None)
        in_flight.dec()
        return result
    return monitored


class _Stream:
    """The end of one monitored stream, recorded exactly once: by the stream itself, or by
    close_abandoned_streams() when the server gives up on it (client gone) while the generator
    sits suspended, which otherwise would end it only at garbage collection.

    Until it ends, a synchronous stream (and so the application's generator) is held in
    `_UNFINISHED`: a garbage collection may then finalize the monitored wrapper, never the
    application's generator directly, and the wrapper hands the closing to gc_safe's finisher
    thread (see there why). An event loop finalizes async generators itself, outside the
    collection."""

    __slots__ = ("inst", "ctx", "inner", "done", "_lock")

    def __init__(self, inst: _Instrumented, ctx: QueryContext, inner):
        self.inst, self.ctx, self.inner = inst, ctx, inner
        self.done = False
        self._lock = threading.Lock()
        streams = OPEN_STREAMS.get()
        if streams is not None:
            streams.append(self)

    def end(self, result: object, exc: BaseException | None) -> bool:
        with self._lock:
            if self.done:
                return False
            self.done = True
        _UNFINISHED.discard(self)
        self.inst.finish(self.ctx, result, exc)
        self.inst.in_flight.dec()
        return True


_UNFINISHED: set[_Stream] = set()


def _finish_collected(stream: _Stream) -> None:
    """Ends a stream whose wrapper a garbage collection finalized (run by the finisher thread):
    closes the application's generator, unless its other closer is running it right now
    (close_abandoned_streams), then records the query cancelled."""
    try:
        _close_quietly(stream.inner)
    finally:
        stream.end(None, GeneratorExit())


async def close_abandoned_streams(streams: list) -> int:
    """Finishes the monitored streams in `streams` that have not ended (recorded ``cancelled``,
    in-flight decremented) and closes their generators, so their ``finally`` blocks release the
    upstream connection now. A generator still running in another thread is closed by its own
    wrapper when its step returns. Returns how many streams were finished here."""
    finished = 0
    for stream in streams:
        if stream.done or not stream.end(None, GeneratorExit()):
            continue
        finished += 1
        inner = stream.inner
        try:
            if inspect.isasyncgen(inner):
                if not inner.ag_running:
                    await inner.aclose()
            elif not inner.gi_running:
                inner.close()
        except (RuntimeError, ValueError):  # started running meanwhile: its wrapper closes it
            pass
        except Exception as failure:  # the application's own cleanup failed
            log.warning("closing an abandoned stream of %r raised %r", stream.ctx.operation, failure)
    return finished


def _close_quietly(inner) -> None:
    try:
        inner.close()
    except Exception as failure:
        if not inner.gi_running:  # else another thread is closing it right now
            log.warning("closing an abandoned stream raised %r", failure)


def _wrap_generator(inst: _Instrumented, fn: Callable) -> Callable:
    # The query context is switched in around each step of the inner generator, never across a
    # yield, so the caller's code between chunks does not run "inside" the query.
    @functools.wraps(fn)
    def monitored(*args, **kwargs):
        if not inst.ready and not inst.resolve():
            return (yield from fn(*args, **kwargs))
        ctx = inst.start()
        inner = fn(*args, **kwargs)
        inst.in_flight.inc()
        stream = _Stream(inst, ctx, inner)
        start_finisher()
        _UNFINISHED.add(stream)
        step, arg, first_chunk = inner.send, None, True
        try:
            while True:
                token = CURRENT_QUERY.set(ctx)
                try:
                    item = step(arg)
                except StopIteration as stop:
                    result = stop.value
                    break
                finally:
                    CURRENT_QUERY.reset(token)
                if stream.done:  # abandoned by the server while this step ran in a thread
                    _close_quietly(inner)
                    return None
                if first_chunk or type(item) not in _PLAIN:
                    first_chunk = _observe_chunk(ctx, item, first_chunk)
                try:
                    arg = yield item
                    step = inner.send
                except GeneratorExit:
                    raise
                except BaseException as thrown:  # forwarded into the stream, as `yield from` does
                    step, arg = inner.throw, thrown
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):
                if in_collection():  # maybe inside a lock the application's cleanup needs
                    call_outside_collection(_finish_collected, stream)
                    raise
                try:
                    inner.close()
                finally:
                    stream.end(None, exc)
                raise
            stream.end(None, exc)
            raise
        stream.end(result, None)
        return result
    return monitored


def _wrap_async_generator(inst: _Instrumented, fn: Callable) -> Callable:
    @functools.wraps(fn)
    async def monitored(*args, **kwargs):
        if not inst.ready and not inst.resolve():
            async for item in fn(*args, **kwargs):
                yield item
            return
        ctx = inst.start()
        inner = fn(*args, **kwargs)
        inst.in_flight.inc()
        stream = _Stream(inst, ctx, inner)
        step, arg, first_chunk = inner.asend, None, True
        try:
            while True:
                token = CURRENT_QUERY.set(ctx)
                try:
                    item = await step(arg)
                except StopAsyncIteration:
                    break
                finally:
                    CURRENT_QUERY.reset(token)
                if stream.done:  # abandoned by the server while this step was awaited
                    await inner.aclose()
                    return
                if first_chunk or type(item) not in _PLAIN:
                    first_chunk = _observe_chunk(ctx, item, first_chunk)
                try:
                    arg = yield item
                    step = inner.asend
                except GeneratorExit:
                    raise
                except BaseException as thrown:
                    step, arg = inner.athrow, thrown
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):
                await inner.aclose()
            stream.end(None, exc)
            raise
        stream.end(None, None)
    return monitored


# --- stages ----------------------------------------------------------------------------------------

def _child(metrics: RAGMetrics, key: tuple, make: Callable):
    child = metrics.child_cache.get(key)
    if child is None:
        child = metrics.child_cache[key] = make()
    return child


def observe_stage(name: str, duration: float, metadata: Mapping | None = None, *,
                  metrics: RAGMetrics | None = None, operation: str | None = None,
                  attach: bool = True) -> None:
    """Records one stage's duration in rag_stage_duration_seconds and, inside a monitored query,
    in that query's record. Shared by stage() and PerformanceMonitor, which passes
    ``attach=False`` because it writes its own record for the stage."""
    name = _safe_name(check_name("stage", name, "retrieval"))
    check_amount("duration", duration, f"seconds for stage {name!r} as a finite number >= 0")
    if operation is not None:
        operation = _safe_name(operation)
    _record_stage(name, duration, metadata, metrics, operation, attach)


def _record_stage(name: str, duration: float, metadata: Mapping | None,
                  metrics: RAGMetrics | None, operation: str | None = None,
                  attach: bool = True) -> None:
    """observe_stage without the argument checks, for callers whose arguments are known good."""
    query = CURRENT_QUERY.get() if attach else None
    try:
        if query is not None and metrics is None and operation is None:  # inlined in stage.__exit__
            query.owner.stage_child(name).observe(duration)
            query.add_stage(name, duration, metadata)
            return
        m = metrics or (query.owner.metrics if query is not None else default_metrics())
        op = operation or (query.operation if query is not None else "none")
        _child(m, ("stage", op, name), lambda: m.stage_latency.labels(op, name)).observe(duration)
        if query is not None and m is query.owner.metrics:
            query.add_stage(name, duration, metadata)
    except Exception as failure:
        owner_metrics = metrics or (query.owner.metrics if query is not None else _default_metrics)
        _recording_failed(owner_metrics, "recording", "recording stage %r failed: %r", name, failure)


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
        if type(name) is not str or not name or name.isspace():
            check_name("stage", name, "retrieval")  # raises with the full explanation
        if len(name) > MAX_LABEL_LENGTH or not name.isprintable():
            name = safe_label(name)
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
            _record_stage(self.name, duration, self.metadata, self.metrics)
            return
        # The usual case: _record_stage's first branch, inlined because it runs for every stage.
        try:
            owner = query.owner
            (owner.stages.get(self.name) or owner.stage_child(self.name)).observe(duration)
            if query.sink is not None:
                query.add_stage(self.name, duration, self.metadata)
        except Exception as failure:
            _recording_failed(query.owner.metrics, "recording", "recording stage %r failed: %r",
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
                    _record_stage(name, _perf() - start, metadata, metrics)
            return timed_async

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            start = _perf()
            try:
                return fn(*args, **kwargs)
            finally:
                _record_stage(name, _perf() - start, metadata, metrics)
        return timed


# --- cache, rate limits, tokens, attributes -----------------------------------------------------------

def track_cache_operation(hit: bool = True, cache_type: str = "semantic", *,
                          metrics: RAGMetrics | None = None) -> None:
    """Counts one cache lookup as a hit or a miss (and in the current query's record)."""
    if type(hit) is not bool:
        raise ValueError(f"hit={hit!r} must be True (a cache hit) or False (a miss)")
    cache_type = _safe_name(check_name("cache_type", cache_type, "semantic"))
    query = CURRENT_QUERY.get()
    m = metrics or (query.owner.metrics if query is not None else default_metrics())
    _child(m, ("cache", cache_type, hit),
           lambda: m.cache_operations.labels(cache_type, "hit" if hit else "miss")).inc()
    if query is not None and m is query.owner.metrics:
        if hit:
            query.extras().cache_hits += 1
        else:
            query.extras().cache_misses += 1


def track_rate_limit(provider: str | None = None, remaining_requests: float | None = None,
                     remaining_tokens: float | None = None, *, headers: Any = None,
                     metrics: RAGMetrics | None = None) -> dict[str, float]:
    """Records the rate-limit headroom a provider reports, from numbers or response headers
    (``x-ratelimit-remaining-*`` / ``-reset-*`` and Anthropic's ``anthropic-ratelimit-*``).

    ``headers`` may be a mapping (dict, ``httpx.Headers``), a raw response (httpx, or the SDKs'
    ``client.....with_raw_response`` result), an SDK error or stream (they carry the response).
    Parsed objects such as ``ChatCompletion`` carry no headers: that is counted
    (``reason="no_headers"``); instrument the client with ``instrument_openai()`` instead.
    ``provider`` defaults to the one the headers name. Bad numbers passed directly raise
    ValueError; unparsable headers (they come from outside) are logged and counted instead.
    Returns what was recorded (``requests``, ``tokens``, ``requests_reset``, ``tokens_reset``).
    """
    from .sdk import headers_of, provider_of_headers, record_rate_limits
    if provider is not None:
        provider = _safe_name(check_name("provider", provider, "openai"))
    m = metrics or default_metrics()
    found: dict[str, float] = {}
    if remaining_requests is not None:
        found["requests"] = check_amount("remaining_requests", remaining_requests, "a count >= 0 as reported by the provider")
    if remaining_tokens is not None:
        found["tokens"] = check_amount("remaining_tokens", remaining_tokens, "a count >= 0 as reported by the provider")
    mapping = headers_of(headers)
    if headers is not None and mapping is None:
        _recording_failed(m, "no_headers", "track_rate_limit(headers=%s) got an object without "
                          "headers; pass response.headers of a raw response "
                          "(client.chat.completions.with_raw_response.create(...)) or instrument "
                          "the client with ragmon.instrument_openai(client)", type(headers).__name__)
    if provider is None:
        provider = _safe_name((provider_of_headers(mapping) if mapping else None) or "unknown")
    if found:
        if "requests" in found:
            m.rate_limit_requests.labels(provider).set(found["requests"])
        if "tokens" in found:
            m.rate_limit_tokens.labels(provider).set(found["tokens"])
    if mapping:
        try:
            lowered = {text_of(key).lower(): value for key, value in mapping.items()}
        except Exception as bad:  # headers come from outside: a broken mapping is not our caller's bug
            _recording_failed(m, "bad_header", "rate-limit headers from %s could not be read: %r",
                              provider, bad)
            lowered = {}
        for kind in ("requests", "tokens"):  # numbers passed directly win over headers
            if kind in found:
                for name in (f"x-ratelimit-remaining-{kind}", f"anthropic-ratelimit-{kind}-remaining"):
                    lowered.pop(name, None)
        found.update(record_rate_limits(provider, lowered, m))
    return found


def record_usage(usage: Usage, *, metrics: RAGMetrics | None = None, operation: str = "none",
                 first_token: float | None = None, incomplete_stream: bool = False) -> float | None:
    """Counts one LLM call's usage now, outside any monitored query; returns its cost (None when
    the cost is past the sane bound: counted, nothing recorded)."""
    m = metrics or default_metrics()
    model = _safe_name(usage.model) if usage.model is not None else None
    label = model or "unknown"
    found = m.price_table.match(model)
    counts = (usage.input_tokens, usage.output_tokens, usage.cached_input_tokens,
              usage.cache_write_tokens, usage.cache_write_1h_tokens)
    cost = found.price.cost(*counts)
    if cost > MAX_COST_DOLLARS:
        _cost_bound(m, operation, cost, None)
        return None
    if not found.known and model is not None:
        m._note_unknown_model(model)
    for kind, count in zip(_TOKEN_KINDS, counts):
        if count:
            _child(m, ("usage", label, kind), lambda kind=kind: m.tokens.labels(label, kind)).inc(count)
    if usage.reasoning_tokens:
        _child(m, ("reasoning", label), lambda: m.reasoning_tokens.labels(label)).inc(
            usage.reasoning_tokens)
    if usage.partial:
        _child(m, ("partial", label), lambda: m.partial_usage.labels(label)).inc()
    if incomplete_stream:
        _note_unreadable(m, "stream_without_usage", "Pass stream_options={'include_usage': True} "
                         "to OpenAI streams so the final chunk reports usage. ")
    if first_token is not None:
        _child(m, ("ttft", operation, label),
               lambda: m.time_to_first_token.labels(operation, label)).observe(first_token)
    _child(m, ("cost", label), lambda: m.query_cost.labels(label)).observe(cost)
    if cost:
        _child(m, ("spend", label), lambda: m.spend.labels(label)).inc(cost)
    return cost


_TOKEN_KINDS = ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h")


def record_tokens(input_tokens: Any = 0, output_tokens: int = 0, cached_input_tokens: int = 0, *,
                  cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0,
                  reasoning_tokens: int = 0, model: str | None = None,
                  metrics: RAGMetrics | None = None) -> float | None:
    """Reports token usage, as counts or as an SDK response: ``record_tokens(completion)``
    reads a ChatCompletion, Responses ``Response``, Anthropic ``Message``, LangChain message or
    their ``model_dump()`` (by shape). Counts: ``input_tokens`` uncached, ``cached_input_tokens``
    cache reads, ``cache_write_tokens`` / ``cache_write_1h_tokens`` cache writes,
    ``reasoning_tokens`` the part of ``output_tokens`` spent reasoning.

    Inside a monitored query (e.g. from a streaming generator) it adds to that query, which
    counts tokens and cost when it ends; outside one it counts them now and returns the cost.
    A response whose usage cannot be read is counted in rag_unreadable_responses_total.
    """
    query = CURRENT_QUERY.get()
    if model is not None:
        model = _safe_name(check_name("model", model, "gpt-4o-mini"))
    if type(input_tokens) not in _PLAIN:  # an SDK response or its model_dump()
        found = read_usage(input_tokens)
        m = metrics or (query.owner.metrics if query is not None else default_metrics())
        if found is None or isinstance(found, Unreadable):
            _note_unreadable(m, found.shape if found is not None else type(input_tokens).__name__)
            return None
        if model is not None:
            found.model = model
        usage = found
    else:
        input_tokens = check_count("input_tokens", input_tokens)
        output_tokens = check_count("output_tokens", output_tokens)
        cached_input_tokens = check_count("cached_input_tokens", cached_input_tokens)
        cache_write_tokens = check_count("cache_write_tokens", cache_write_tokens)
        cache_write_1h_tokens = check_count("cache_write_1h_tokens", cache_write_1h_tokens)
        reasoning_tokens = check_count("reasoning_tokens", reasoning_tokens)
        if reasoning_tokens > output_tokens:
            raise ValueError(f"reasoning_tokens={reasoning_tokens} exceeds output_tokens="
                             f"{output_tokens}; reasoning tokens are a part of the output tokens")
        usage = None
        if cache_write_tokens or cache_write_1h_tokens or reasoning_tokens:
            usage = Usage(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
                          cache_write_1h_tokens, reasoning_tokens, model=model)
    if query is not None and (metrics is None or metrics is query.owner.metrics):
        extra = query.extras()
        if usage is not None:
            if extra.usages is None:
                extra.usages = []
            extra.usages.append(usage)
            if usage.model is not None and model is not None:
                query.model = model
            return None
        extra.input_tokens += input_tokens
        extra.output_tokens += output_tokens
        extra.cached_input_tokens += cached_input_tokens
        if model is not None:
            query.model = model
        return None
    if usage is None:
        if not (input_tokens or output_tokens or cached_input_tokens):
            return 0.0
        usage = Usage(input_tokens, output_tokens, cached_input_tokens, model=model)
    m = metrics or default_metrics()
    try:
        bounded, _raw = _bounded_usages(m, "record_tokens", [usage], None)
        return record_usage(bounded[0], metrics=m) if bounded else None
    except Exception as failure:  # a recording failure never reaches the host
        _recording_failed(m, "recording", "record_tokens(model=%r) failed: %r", model, failure)
        return None


def record_quality(relevance_score: float | None = None, context_precision: float | None = None) -> None:
    """Sets the current query's quality scores (0..1) when they are not in its return value."""
    relevance = None if relevance_score is None else check_score("relevance_score", relevance_score)
    precision = None if context_precision is None else check_score("context_precision", context_precision)
    query = CURRENT_QUERY.get()
    if query is None:
        raise RuntimeError("record_quality() was called outside a @monitored_query function; call "
                           "it inside one, or observe metrics.relevance directly")
    if relevance is not None:
        query.extras().relevance_score = relevance
    if precision is not None:
        query.extras().context_precision = precision


def set_attributes(**attributes: object) -> bool:
    """Adds free-form attributes (agent type, tool calls, ...) to the current query's record.
    Returns False, and counts it, when no monitored query is running."""
    query = CURRENT_QUERY.get()
    if query is None:
        _recording_failed(default_metrics(), "no_active_query", "set_attributes(%s) outside a monitored query",
                          ", ".join(safe_label(name) for name in attributes))
        return False
    extra = query.extras()
    if extra.attributes is None:
        extra.attributes = {}
    extra.attributes.update(attributes)
    return True
