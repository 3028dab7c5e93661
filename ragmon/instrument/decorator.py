"""``@monitored_query``: one decorated RAG function measured per call (latency, status, errors,
in-flight, tokens, cost, quality, stages) and written as one JSON record.

Two promises shape this module:
- The host application never notices monitoring. The decorated function's result and exceptions
  pass through untouched (the same exception object, the same traceback). Anything that goes
  wrong while *recording* is logged and counted in rag_instrumentation_errors_total, never raised.
- The per-query cost stays small. Labelled children are resolved once per operation/model and
  cached; a query costs one context switch-in/out plus the metric updates themselves.

Tokens and dollars are settled by ``accounting.settle`` (the usual returned dict by its one-pass
``settle_plain``) and the record is built from its result; stages live in ``stages``, the
helpers a query calls in ``helpers``, streams in ``streams``; metric updates go through
``writers``. A per-query feature joins through ``hooks`` (see there how, at no cost when unused).
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
                         settle, settle_plain)
from .catalog import CHILD_CACHE_SIZE, BoundedCache, RAGMetrics
from .context import CURRENT_QUERY, QueryContext
from .exemplars import sampled_observer
from .providers.fields import PLAIN
from .records import CANCELLED_EXCEPTIONS, build_record
from .runtime import (STATE, UNSET, current_request_log, default_metrics, is_safe_label,
                      note_unreadable, recording_failed, safe_name, sync_otel)
from .quality import built_in_score
from .gc_safe import call_outside_collection, in_collection, start_finisher
from .hooks import HOOKS, Finished, run_finish_hooks, run_start_hooks
from .streams import (UNFINISHED, MonitoredStream, close_quietly, finish_collected, follow_stream,
                      observe_chunk, stream_outcome)
from .tokens import PartsExceedWhole, Usage
from .usage import StreamUsage, Unreadable, is_stream, read_usage
from .writers import adder, observer

log = logging.getLogger("ragmon")
_perf = time.perf_counter
_time = time.time
_REAL = (int, float)
_new = object.__new__


def _good_name(name: str) -> bool:
    """Whether a returned model name is labelled and recorded as it is."""
    return bool(name) and not name.isspace() and len(name) <= MAX_LABEL_LENGTH and name.isprintable()

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
            # The hottest updates as plain functions, made once (writers.py).
            self.observe_latency = sampled_observer(self.latency)
            self.add_in_flight = adder(self.in_flight)
            self.series_of = self.series  # the bound method settle() is given, made once
            self.count_success = adder(self.succeeded)
            # Keyed by safe, length-capped values and emptied when full: bounded in count and size.
            self.errors_by_type: dict[str, Any] = BoundedCache(CHILD_CACHE_SIZE)
            self.by_model: dict = BoundedCache(CHILD_CACHE_SIZE)
            self.stages: dict[str, Any] = BoundedCache(CHILD_CACHE_SIZE)
            current_request_log()  # resolve the process default now, where a failure is caught
            sync_otel(settings)  # OTEL_ENABLED: the OpenTelemetry output registers its hook
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
            if sink is UNSET:  # configure() since: resolved again from the new settings
                sink = self._process_sink()
        ctx = QueryContext(self, self.operation, self.model, _perf(), sink or None)
        if HOOKS.start:
            run_start_hooks(ctx)
        return ctx

    def _process_sink(self):
        try:
            return current_request_log()
        except Exception as failure:
            recording_failed(self.metrics, "setup", "the request log could not be opened: %r",
                             failure)
            return None

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
        """``observe`` of this operation's relevance score: its own histogram and its
        rag_evaluation_score series (quality.built_in_score)."""
        writer = self._relevance
        if writer is None:
            writer = self._relevance = built_in_score(self.metrics, self.operation,
                                                      "relevance_score")
        return writer

    @property
    def precision(self):
        writer = self._precision
        if writer is None:
            writer = self._precision = built_in_score(self.metrics, self.operation,
                                                      "context_precision")
        return writer

    def stage_observer(self, name: str):
        """``observe`` of stage `name`'s latency child for this operation."""
        writer = self.stages.get(name)
        if writer is None:
            writer = self.stages[safe_name(name)] = observer(self.metrics.stage_latency.labels(
                self.operation, name))
        return writer

    def finish(self, ctx: QueryContext, result: object, exc: BaseException | None) -> None:
        end = _perf()
        duration = end - ctx.start
        try:
            self.observe_latency(duration, end, ctx)  # with the request id now and then
            if exc is None:
                status = "success"
                error_type = None
                self.count_success(1)
            else:
                status, error_type = self._count_failure(exc)

            # The usages of the query, in order: what it reported while it ran, then its result.
            usages = relevance = precision = hand = raw = r_model = returned = plain = None
            if type(result) is dict:  # _read_dict, inlined for the usual result
                get = result.get
                relevance, precision, r_model = (get("relevance_score"),
                                                 get("context_precision"), get("model"))
                if not ((relevance is None or (type(relevance) in _REAL and 0 <= relevance <= 1))
                        and (precision is None
                             or (type(precision) in _REAL and 0 <= precision <= 1))
                        and (r_model is None or type(r_model) is str and _good_name(r_model))):
                    relevance, precision, r_model = self._checked(
                        (relevance, precision, r_model), _SCORE_FIELDS)
                p = tokens.plan()
                present = result.keys() & p.field_set
                if present:
                    name_of = p.name_of
                    counts = {}  # read straight into kind names: no second pass over them
                    for field in present:
                        value = get(field)
                        if type(value) is not int or value < 0:
                            value = self._count_of(field, value)
                        if value:
                            counts[name_of[field]] = value
                    if len(counts) <= 2 and len(counts) == ("input" in counts) + ("output" in counts):
                        plain = counts  # wholes alone: no part to check against them
                    else:
                        hand, raw = self._usage_of(counts, r_model)
                elif "usage" in result:
                    returned = read_usage(result)  # a model_dump() of an SDK response
            elif result is not None:
                if isinstance(result, Mapping):
                    relevance, precision, hand, raw, r_model = self._read_dict(result)
                    if hand is None and self._careful_get(result)("usage") is not None:
                        returned = read_usage(result)
                elif type(result) not in PLAIN:
                    returned = read_usage(result)  # an SDK response, by shape
            extra = ctx.extra  # what the query reported while it ran (streams, record_*())
            first_token = None
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
                elif usages is None:
                    usages = [returned]
                else:
                    usages.append(returned)
            if hand is not None:  # the counts of its returned dict
                if usages is None:
                    usages = [hand]
                else:
                    usages.append(hand)
            now = _time()
            day = int(now // 86400)
            model = ctx.model if r_model is None else r_model
            settlement = None
            if plain is not None:
                if usages is None and first_token is None:
                    # The usual query: input and output from its returned dict, nothing else.
                    settlement = settle_plain(plain, self.series_of(model, day), self.metrics)
                if settlement is None:  # the whole way: settle() and count()
                    hand = _new(Usage)  # Usage.of_kinds of wholes alone, inlined
                    hand.tokens, hand.by_hand = plain, True
                    if r_model is not None:
                        hand.model = r_model
                    if usages is None:
                        usages = [hand]
                    else:
                        usages.append(hand)
            if settlement is not None:
                pass
            elif usages:
                settlement = settle(usages, model, day, self.series_of)
                count(settlement, self.metrics, self.operation, first_token)
                if first_token is not None and not settlement.lines:
                    self.series(model, day).child("ttft").observe(first_token)
                model = settlement.model
            else:
                settlement = None
                if first_token is not None:
                    self.series(model, day).child("ttft").observe(first_token)
                if (model is not None and exc is None and returned is None and raw is None
                        and not cache_hits):
                    self._without_usage(model)
            if raw:
                settlement = settlement or Settlement(model)
                settlement.out_of_bounds = {**raw, **(settlement.out_of_bounds or {})}
            if relevance is not None:
                (self._relevance or self.relevance)(relevance)
            if precision is not None:
                (self._precision or self.precision)(precision)
        except Exception as failure:
            recording_failed(self.metrics, "recording", "recording query %r failed: %r",
                             self.operation, failure)
            return
        if ctx.sink is not None:
            record = self._record(ctx, now, duration, status, error_type, model, settlement,
                                  relevance, precision, first_token)
        else:
            record = None
        if HOOKS.finish:
            run_finish_hooks(ctx, Finished(status, error_type, duration, model, settlement,
                                           record), self.metrics)
        if record is not None:
            try:
                ctx.sink.write(record, at=now)
            except Exception as failure:
                recording_failed(self.metrics, "record_write",
                                 "writing the request record failed: %r", failure)

    def _count_failure(self, exc: BaseException) -> tuple[str, str]:
        """Counts a query that raised: (status, error type)."""
        if isinstance(exc, CANCELLED_EXCEPTIONS):
            self.cancelled.inc()
            return "cancelled", type(exc).__name__
        error_type = type(exc).__name__
        if not is_safe_label(error_type):
            error_type = safe_label(error_type)
        self.failed.inc()
        counter = self.errors_by_type.get(error_type)
        if counter is None:
            counter = self.errors_by_type[error_type] = self.metrics.errors.labels(
                self.operation, error_type)
        counter.inc()
        return "error", error_type

    def _read_dict(self, result: Mapping) -> tuple:
        """(relevance, precision, the usage it reports or None, raw refused values or None, its
        model or None) of a returned dict. Token fields follow record_tokens' names and input
        convention."""
        get = result.get if type(result) is dict else self._careful_get(result)
        relevance, precision, r_model = (get("relevance_score"), get("context_precision"),
                                         get("model"))
        if not ((relevance is None or (type(relevance) in _REAL and 0 <= relevance <= 1))
                and (precision is None or (type(precision) in _REAL and 0 <= precision <= 1))
                and (r_model is None or type(r_model) is str and _good_name(r_model))):
            relevance, precision, r_model = self._checked((relevance, precision, r_model),
                                                          _SCORE_FIELDS)
        # A dict's keys say which fields it has; a Mapping of the application's own is asked
        # for each field (its keys() may not tell, or raise).
        p = tokens.plan()
        present = result.keys() & p.field_set if type(result) is dict else p.fields
        if not present:
            return relevance, precision, None, None, r_model
        name_of = p.name_of
        counts = {}  # read straight into kind names: no second pass over them
        for field in present:
            value = get(field)
            if type(value) is not int or value < 0:
                value = self._count_of(field, value)
            if value:
                counts[name_of[field]] = value
        hand, raw = self._usage_of(counts, r_model)
        return relevance, precision, hand, raw, r_model

    def _count_of(self, field: str, value: object) -> int | None:
        """A returned token count that is not a plain int >= 0: checked (a bad one logged,
        counted and left out)."""
        if value is None:
            return None
        return self._checked((value,), ((field, check_count),))[0]

    def _usage_of(self, counts: dict, r_model: str | None) -> tuple:
        """(the Usage of counts by kind name, None) or (None, the raw counts refused)."""
        try:
            return Usage.of_kinds(counts, r_model, None, True), None
        except PartsExceedWhole as problem:
            return None, refused(self.metrics, self.operation, problem)

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

    def _record(self, ctx: QueryContext, now: float, duration: float, status: str,
                error_type: str | None, model: str | None, settlement: Settlement | None,
                relevance: float | None, precision: float | None,
                first_token: float | None) -> dict | None:
        """The query's request record (None, counted, if it cannot be built)."""
        extra = ctx.extra
        try:
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
            return build_record(  # make_record's arguments, in its order
                ctx.request_id, self.service, self.env, ctx.operation, model, status, error_type,
                now - duration, duration, ctx.stages or {}, counts, cost, relevance,
                precision, first_token, hits, misses, attributes, pricing, out_of_bounds)
        except Exception as failure:
            recording_failed(self.metrics, "record_write", "writing the request record failed: %r",
                             failure)
            return None


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
        add_in_flight = inst.add_in_flight
        add_in_flight(1)
        # Counted first, out of flight after: a scrape in between never misses the query.
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            CURRENT_QUERY.reset(token)
            inst.finish(ctx, None, exc)
            add_in_flight(-1)
            raise
        CURRENT_QUERY.reset(token)
        if type(result) in _NEVER_STREAMS or not is_stream(result) or not inst.defer(ctx, result):
            inst.finish(ctx, result, None)
        add_in_flight(-1)
        return result
    return monitored


def _wrap_coroutine(inst: Instrumented, fn: Callable) -> Callable:
    @functools.wraps(fn)
    async def monitored(*args, **kwargs):
        if not inst.ready and not inst.resolve():
            return await fn(*args, **kwargs)
        ctx = inst.start()
        token = CURRENT_QUERY.set(ctx)
        add_in_flight = inst.add_in_flight
        add_in_flight(1)
        # Counted first, out of flight after: a scrape in between never misses the query.
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            CURRENT_QUERY.reset(token)
            inst.finish(ctx, None, exc)
            add_in_flight(-1)
            raise
        CURRENT_QUERY.reset(token)
        if type(result) in _NEVER_STREAMS or not is_stream(result) or not inst.defer(ctx, result):
            inst.finish(ctx, result, None)
        add_in_flight(-1)
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
