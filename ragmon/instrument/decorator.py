"""``@monitored_query``: one decorated RAG function measured per call (latency, status, errors,
in-flight, tokens, cost, quality, stages) and written as one JSON record.

Two promises shape this module:
- The host application never notices monitoring. The decorated function's result and exceptions
  pass through untouched (the same exception object, the same traceback). Anything that goes
  wrong while *recording* is logged and counted in rag_instrumentation_errors_total, never raised.
- The per-query cost stays small. Labelled children are resolved once per operation/model and
  cached; a query costs one context switch-in/out plus the metric updates themselves.

Tokens and dollars are settled by ``accounting.settle`` and the record is built from its result;
stages live in ``stages``, the helpers a query calls in ``helpers``, streams in ``streams``.
"""
from __future__ import annotations

import functools
import inspect
import logging
import time
from typing import Any, Callable, Mapping

from ..checks import MAX_LABEL_LENGTH, check_count, check_name, check_score, safe_label
from . import tokens
from .accounting import (STREAM_WITHOUT_USAGE_HINT, ModelSeries, Settlement, count, refused,
                         settle, today)
from .catalog import CHILD_CACHE_SIZE, QUERY_LATENCY_BUCKETS, BoundedCache, RAGMetrics
from .context import CURRENT_QUERY, QueryContext
from .exemplars import ExemplarSampler, latency_exemplar
from .providers.fields import PLAIN
from .records import CANCELLED_EXCEPTIONS, build_record
from .runtime import (STATE, current_request_log, default_metrics, is_safe_label,
                      note_unreadable, recording_failed, safe_name, sync_otel)
from .gc_safe import call_outside_collection, in_collection, start_finisher
from .streams import (UNFINISHED, MonitoredStream, close_quietly, finish_collected, follow_stream,
                      observe_chunk, stream_outcome)
from .tokens import PartsExceedWhole, Usage
from .usage import StreamUsage, Unreadable, is_stream, read_usage

log = logging.getLogger("ragmon")
_perf = time.perf_counter
_REAL = (int, float)

_warned_without_usage: set[str] = set()


def _checked_model(name: str, value: object) -> str:
    return safe_name(check_name(name, value, "gpt-4o-mini"))


_EXPECTED = {"relevance_score": "a number from 0 to 1", "context_precision": "a number from 0 to 1",
             "model": "a non-empty string"}  # token fields: "a whole number >= 0"
_SCORE_FIELDS = (("relevance_score", check_score), ("context_precision", check_score),
                 ("model", _checked_model))


class Instrumented:
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
            self.by_model: dict = BoundedCache(CHILD_CACHE_SIZE)
            self.stages: dict[str, Any] = BoundedCache(CHILD_CACHE_SIZE)
            current_request_log()  # resolve the process default now, where a failure is caught
            sync_otel(settings)
            self.ready = True
        except Exception as exc:
            self._retry_at = time.monotonic() + 60
            recording_failed(self._metrics or STATE.metrics, "setup", "could not set up %r: %s",
                             self.operation, exc)
        return self.ready

    def start(self) -> QueryContext:
        sink = self._request_log
        if sink is None:
            sink = STATE.request_log  # resolved by resolve(); configure_request_log() may change it
        return QueryContext(self, self.operation, self.model, _perf(), sink or None)

    def series(self, model: str | None, day: int):
        """The priced metric children of `model` for this operation (accounting.ModelSeries)."""
        found = self.by_model.get(model)
        if found is None:
            found = self.by_model[model] = ModelSeries(self.metrics, self.operation, model)
        if found.day != day:
            found.reprice(day)
        return found

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
            child = self.stages[safe_name(name)] = self.metrics.stage_latency.labels(
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
                if not is_safe_label(error_type):
                    error_type = safe_label(error_type)
                self.failed.inc()
                counter = self.errors_by_type.get(error_type)
                if counter is None:
                    counter = self.errors_by_type[error_type] = self.metrics.errors.labels(
                        self.operation, error_type)
                counter.inc()

            relevance = precision = first_token = hand = raw = returned = r_model = None
            usages: list = []
            if type(result) is dict or (result is not None and isinstance(result, Mapping)):
                relevance, precision, hand, raw, r_model = self._read_dict(result)
                if hand is None and (
                        "usage" in result if type(result) is dict
                        else self._careful_get(result)("usage") is not None):
                    returned = read_usage(result)  # a model_dump() of an SDK response
            elif result is not None and type(result) not in PLAIN:
                returned = read_usage(result)  # an SDK response, by shape
            extra = ctx.extra  # what the query reported while it ran (streams, record_*())
            cache_hits = 0
            if extra is not None:
                if relevance is None:
                    relevance = extra.relevance_score
                if precision is None:
                    precision = extra.context_precision
                if extra.usages is not None or extra.chunks is not None:
                    if extra.chunks is not None and exc is None:
                        extra.chunks.completed = True  # the query's own stream ran to its end
                    usages = self._reported(ctx, extra)
                first_token = extra.first_token
                cache_hits = extra.cache_hits
            if returned is not None:
                if isinstance(returned, Unreadable):
                    if not usages:  # an instrumented client may already have read the same call
                        note_unreadable(self.metrics, returned.shape)
                else:
                    usages.append(returned)
            if hand is not None:
                usages.append(hand)
            model = ctx.model if r_model is None else r_model
            if usages:
                settlement = settle(usages, model, today(), self.series)
                count(settlement, self.metrics, self.operation, first_token)
                if not settlement.lines and first_token is not None:
                    self.series(model, today()).child("ttft").observe(first_token)
                model = settlement.model
            else:
                settlement = None
                if first_token is not None:
                    self.series(model, today()).child("ttft").observe(first_token)
                if (model is not None and exc is None and returned is None and raw is None
                        and not cache_hits):
                    self._without_usage(model)
            if raw:
                settlement = settlement or Settlement(model)
                settlement.out_of_bounds = {**raw, **(settlement.out_of_bounds or {})}
            if relevance is not None:
                (self._relevance or self.relevance).observe(relevance)
            if precision is not None:
                (self._precision or self.precision).observe(precision)
        except Exception as failure:
            recording_failed(self.metrics, "recording", "recording query %r failed: %r",
                             self.operation, failure)
            return
        otel = STATE.otel  # OpenTelemetry output (otel.py), None unless OTEL_ENABLED
        ids = None if otel is None else otel.query_finished(
            self, ctx, duration, end, status, error_type, model, settlement, usages, relevance,
            precision, first_token)
        if ctx.sink is not None:
            self._write_record(ctx, duration, status, error_type, model, settlement, relevance,
                               precision, first_token, ids)

    def _read_dict(self, result: Mapping) -> tuple:
        """(relevance, precision, the usage it reports or None, raw refused values or None, its
        model or None) of a returned dict. Token fields follow record_tokens' names and input
        convention."""
        get = result.get if type(result) is dict else self._careful_get(result)
        relevance, precision, r_model = (get("relevance_score"), get("context_precision"),
                                         get("model"))
        if not ((relevance is None or (type(relevance) in _REAL and 0 <= relevance <= 1))
                and (precision is None or (type(precision) in _REAL and 0 <= precision <= 1))
                and (r_model is None or (type(r_model) is str and r_model
                                         and not r_model.isspace()
                                         and len(r_model) <= MAX_LABEL_LENGTH
                                         and r_model.isprintable()))):
            relevance, precision, r_model = self._checked((relevance, precision, r_model),
                                                          _SCORE_FIELDS)
        # A dict's keys say which fields it has; a Mapping of the application's own is asked
        # for each field (its keys() may not tell, or raise).
        present = (result.keys() & tokens.plan().field_set if type(result) is dict
                   else tokens.fields())
        if not present:
            return relevance, precision, None, None, r_model
        counts = {}
        for field in present:
            value = get(field)
            if type(value) is not int or value < 0:
                if value is None:
                    continue
                value = self._checked((value,), ((field, check_count),))[0]
                if value is None:
                    continue
            counts[field] = value
        try:
            usage = Usage.reported(counts, model=r_model, by_hand=True)
        except PartsExceedWhole as problem:
            return (relevance, precision, None, refused(self.metrics, self.operation, problem),
                    r_model)
        return relevance, precision, usage, None, r_model

    def _checked(self, values: tuple, checks: tuple) -> list:
        """Each bad value logged, counted and replaced by None."""
        checked = []
        for (name, check), value in zip(checks, values):
            try:
                checked.append(None if value is None else check(name, value))
            except ValueError:  # the value may be a secret or user text: never quote it
                checked.append(None)
                recording_failed(self.metrics, "bad_return_value",
                                 "%r returned %s of type %s, which is not %s; left out of the "
                                 "metrics and the record", self.operation, name,
                                 type(value).__name__, _EXPECTED.get(name, "a whole number >= 0"))
        return checked

    def _careful_get(self, result: Mapping) -> Callable:
        """``result.get`` for a Mapping of the application's own: a field whose reading raises
        is counted and left out, and the record is written with the others."""
        def get(name: str):
            try:
                return result.get(name)
            except Exception as failure:
                recording_failed(self.metrics, "bad_return_value", "%r returned a %s whose "
                                 ".get(%r) raised %s; the field is left out of the record",
                                 self.operation, type(result).__name__, name,
                                 type(failure).__name__)
                return None
        return get

    def _without_usage(self, model: str) -> None:
        """A successful query that names a model received no usage: its tokens and cost are
        missing. Counted on the dashboard; said once per operation in the log."""
        self.metrics.queries_without_usage.labels(self.operation, model).inc()
        if self.operation not in _warned_without_usage and len(_warned_without_usage) < 1000:
            _warned_without_usage.add(self.operation)
            log.warning("monitoring: query %r names model %r but received no token usage, so its "
                        "tokens and cost are not recorded (counted in "
                        "rag_queries_without_usage_total). Instrument the client with "
                        "ragmon.instrument_openai(client) (or instrument_anthropic / "
                        "instrument_gemini), return the SDK response, or call "
                        "ragmon.record_tokens(...)", self.operation, model)

    def _reported(self, ctx: QueryContext, extra) -> list:
        """The usage of every LLM response and stream the query saw, in order."""
        found = []
        sources = list(extra.usages or ())
        if extra.chunks is not None:
            sources.append(extra.chunks)
        for source in sources:
            if isinstance(source, StreamUsage):
                if source is extra.chunks and not (source.final or source.usage.response_id):
                    continue  # yielded chunks carried no usage at all (plain text chunks)
                if source.completed and not source.final:
                    note_unreadable(self.metrics, "stream_without_usage",
                                    STREAM_WITHOUT_USAGE_HINT)
                if source.first_content_at is not None and extra.first_token is None:
                    extra.first_token = source.first_content_at - ctx.start
                found.append(source.snapshot())
            else:
                found.append(source)
        return found

    def defer(self, ctx: QueryContext, stream) -> bool:
        """Finishes the query when the SDK stream it returned ends (read to the end, closed,
        abandoned or garbage-collected) instead of now, so its usage is counted. False if the
        stream cannot be followed or has already ended."""
        try:
            tracker = follow_stream(stream, ctx.start)
            if tracker is None or tracker.done:
                return False
            ctx.extras().add_usage(tracker)
            tracker.on_end.append(lambda t: self.finish(ctx, None, stream_outcome(t)))
            return True
        except Exception as failure:
            recording_failed(self.metrics, "recording", "following a returned stream failed: %r",
                             failure)
            return False

    def _write_record(self, ctx: QueryContext, duration: float, status: str,
                      error_type: str | None, model: str | None, settlement: Settlement | None,
                      relevance: float | None, precision: float | None,
                      first_token: float | None, ids: tuple[str, str] | None = None) -> None:
        extra = ctx.extra
        try:
            end = time.time()
            if extra is None:
                hits = misses = 0
                attributes = None
            else:
                hits, misses, attributes = extra.cache_hits, extra.cache_misses, extra.attributes
            if settlement is None:
                counts, cost, pricing, out_of_bounds = tokens.record_tokens_field({}), None, None, None
            else:
                counts, cost = settlement.record_tokens(), settlement.cost
                pricing, out_of_bounds = settlement.pricing(), settlement.out_of_bounds
            record = build_record(  # make_record's arguments, in its order
                ctx.request_id, self.service, self.env, ctx.operation, model, status, error_type,
                end - duration, duration, ctx.stages or {}, counts, cost, relevance,
                precision, first_token, hits, misses, attributes, pricing, out_of_bounds)
            if ids is not None:  # the query's OpenTelemetry span, when OTEL_ENABLED
                record["trace_id"], record["span_id"] = ids
            ctx.sink.write(record, at=end)
        except Exception as failure:
            recording_failed(self.metrics, "record_write", "writing the request record failed: %r",
                             failure)


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
    operation = safe_name(check_name("operation", operation, "rag_search"))
    if model is not None:
        model = safe_name(check_name("model", model, "gpt-4o-mini"))
    if metrics is not None and not isinstance(metrics, RAGMetrics):
        raise ValueError(f"metrics={metrics!r} is not a RAGMetrics catalog; pass "
                         "RAGMetrics(registry=...) or leave it out for the global one")

    def decorate(fn: Callable) -> Callable:
        if not callable(fn):
            raise ValueError(f"@monitored_query decorates functions; got {fn!r}")
        inst = Instrumented(operation, model, metrics, request_log)
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
_NEVER_STREAMS = frozenset((*PLAIN, dict))


def _wrap_function(inst: Instrumented, fn: Callable) -> Callable:
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
        if type(result) in _NEVER_STREAMS or not is_stream(result) or not inst.defer(ctx, result):
            inst.finish(ctx, result, None)
        in_flight.dec()
        return result
    return monitored


def _wrap_coroutine(inst: Instrumented, fn: Callable) -> Callable:
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
        if type(result) in _NEVER_STREAMS or not is_stream(result) or not inst.defer(ctx, result):
            inst.finish(ctx, result, None)
        in_flight.dec()
        return result
    return monitored


def _wrap_generator(inst: Instrumented, fn: Callable) -> Callable:
    # The query context is switched in around each step of the inner generator, never across a
    # yield, so the caller's code between chunks does not run "inside" the query.
    @functools.wraps(fn)
    def monitored(*args, **kwargs):
        if not inst.ready and not inst.resolve():
            return (yield from fn(*args, **kwargs))
        ctx = inst.start()
        inner = fn(*args, **kwargs)
        inst.in_flight.inc()
        stream = MonitoredStream(inst, ctx, inner)
        start_finisher()
        UNFINISHED.add(stream)
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
                    close_quietly(inner)
                    return None
                if first_chunk or type(item) not in PLAIN:
                    first_chunk = observe_chunk(ctx, item, first_chunk)
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
                    call_outside_collection(finish_collected, stream)
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


def _wrap_async_generator(inst: Instrumented, fn: Callable) -> Callable:
    @functools.wraps(fn)
    async def monitored(*args, **kwargs):
        if not inst.ready and not inst.resolve():
            async for item in fn(*args, **kwargs):
                yield item
            return
        ctx = inst.start()
        inner = fn(*args, **kwargs)
        inst.in_flight.inc()
        stream = MonitoredStream(inst, ctx, inner)
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
                if first_chunk or type(item) not in PLAIN:
                    first_chunk = observe_chunk(ctx, item, first_chunk)
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
