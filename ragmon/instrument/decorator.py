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
from typing import Any, Callable, Mapping

from .catalog import RAGMetrics
from .context import CURRENT_QUERY, OPEN_STREAMS, QueryContext
from ..checks import check_amount, check_count, check_name, check_score
from .records import CANCELLED_EXCEPTIONS, make_record, sink_for

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


_last_warned: dict[str, float] = {}


def _recording_failed(metrics: RAGMetrics | None, reason: str, message: str, *args) -> None:
    """Counts a swallowed monitoring failure; logs it at most once a minute per reason."""
    try:
        if metrics is not None:
            metrics.count_instrumentation_error(reason)
        now = time.monotonic()
        if now - _last_warned.get(reason, -1e9) >= 60:
            _last_warned[reason] = now
            log.warning("monitoring: " + message + " (counted in rag_instrumentation_errors_total"
                        "{reason=%r}; the application was not affected)", *args, reason,
                        exc_info=log.isEnabledFor(logging.DEBUG))
    except Exception:  # the last line of defence must not raise either
        pass


class _ModelChildren:
    __slots__ = ("input", "output", "cached_input", "cost", "spend", "ttft", "price", "known")


class _Instrumented:
    """The state behind one decorated function: its labels, cached children and finishing logic."""

    def __init__(self, operation: str, model: str | None, metrics: RAGMetrics | None, request_log):
        self.operation = operation
        self.model = model
        self._metrics = metrics
        self._request_log = request_log  # None: process default; False: no records
        self.ready = False
        self._retry_at = 0.0

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
            self.relevance = m.relevance.labels(op)
            self.precision = m.context_precision.labels(op)
            # Bound methods of the hottest calls, looked up once instead of on every query.
            self._observe_latency = self.latency.observe
            self._count_success = self.succeeded.inc
            self.errors_by_type: dict[str, Any] = {}
            self.by_model: dict[str | None, _ModelChildren] = {}
            self.stages: dict[str, Any] = {}
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
            label = model if model is not None else "unknown"
            children = _ModelChildren()
            children.input = m.tokens.labels(label, "input")
            children.output = m.tokens.labels(label, "output")
            children.cached_input = m.tokens.labels(label, "cached_input")
            children.cost = m.query_cost.labels(label)
            children.spend = m.spend.labels(label)
            children.ttft = m.time_to_first_token.labels(self.operation, label)
            children.price, children.known = m.price_table.lookup(model)
            self.by_model[model] = children
        return children

    def stage_child(self, name: str):
        child = self.stages.get(name)
        if child is None:
            child = self.stages[name] = self.metrics.stage_latency.labels(self.operation, name)
        return child

    def finish(self, ctx: QueryContext, result: object, exc: BaseException | None) -> None:
        duration = _perf() - ctx.start
        try:
            self._observe_latency(duration)
            if exc is None:
                status, error_type = "success", None
                self._count_success()
            elif isinstance(exc, CANCELLED_EXCEPTIONS):
                status, error_type = "cancelled", type(exc).__name__
                self.cancelled.inc()
            else:
                status, error_type = "error", type(exc).__name__
                self.failed.inc()
                counter = self.errors_by_type.get(error_type)
                if counter is None:
                    counter = self.errors_by_type[error_type] = self.metrics.errors.labels(
                        self.operation, error_type)
                counter.inc()

            # What the returned dict says; values stay in locals (this runs for every query).
            inp = out = cached = 0
            relevance = precision = first_token = None
            model = ctx.model
            if type(result) is dict or (result is not None and isinstance(result, Mapping)):
                get = result.get
                r_inp, r_out, r_cached = get("input_tokens"), get("output_tokens"), get("cached_input_tokens")
                relevance, precision, r_model = get("relevance_score"), get("context_precision"), get("model")
                # The usual shape: ints >= 0, scores in 0..1 (`type(...) is` also rejects bool).
                if not ((r_inp is None or (type(r_inp) is int and r_inp >= 0))
                        and (r_out is None or (type(r_out) is int and r_out >= 0))
                        and (r_cached is None or (type(r_cached) is int and r_cached >= 0))
                        and (relevance is None or (type(relevance) in _REAL and 0 <= relevance <= 1))
                        and (precision is None or (type(precision) in _REAL and 0 <= precision <= 1))
                        and (r_model is None or (type(r_model) is str and r_model and not r_model.isspace()))):
                    r_inp, r_out, r_cached, relevance, precision, r_model = self._checked_result(
                        (r_inp, r_out, r_cached, relevance, precision, r_model))
                inp, out, cached = r_inp or 0, r_out or 0, r_cached or 0
                if r_model is not None:
                    model = r_model
            extra = ctx.extra  # what the query reported while it ran (streams, record_*())
            if extra is not None:
                inp += extra.input_tokens
                out += extra.output_tokens
                cached += extra.cached_input_tokens
                relevance = relevance if relevance is not None else extra.relevance_score
                precision = precision if precision is not None else extra.context_precision
                first_token = extra.first_token

            cost = None
            if inp or out or cached or first_token is not None:
                children = self.by_model.get(model) or self.model_children(model)
                if first_token is not None:
                    children.ttft.observe(first_token)
                if inp or out or cached:
                    if inp:
                        children.input.inc(inp)
                    if out:
                        children.output.inc(out)
                    if cached:
                        children.cached_input.inc(cached)
                    price = children.price  # PriceTable.cost, inlined: this runs per query
                    cost = (inp * price.input + out * price.output + cached * price.cached_input) / 1000.0
                    children.cost.observe(cost)
                    if cost:
                        children.spend.inc(cost)
                    if not children.known:
                        self.metrics._note_unknown_model(model)
            if relevance is not None:
                self.relevance.observe(relevance)
            if precision is not None:
                self.precision.observe(precision)
        except Exception as failure:
            _recording_failed(self.metrics, "recording", "recording query %r failed: %r",
                              self.operation, failure)
            return
        if ctx.sink is not None:
            self._write_record(ctx, duration, status, error_type, model, inp, out, cached, cost,
                               relevance, precision, first_token)

    def _checked_result(self, fields: tuple) -> tuple:
        """The returned dict's fields with each bad one logged, counted and replaced by None."""
        checked = []
        for (name, check), value in zip(_RESULT_FIELDS, fields):
            try:
                checked.append(None if value is None else check(name, value))
            except ValueError as bad:
                checked.append(None)
                _recording_failed(self.metrics, "bad_return_value",
                                  "%r returned a bad value: %s", self.operation, bad)
        return tuple(checked)

    def _write_record(self, ctx: QueryContext, duration: float, status: str,
                      error_type: str | None, model: str | None, inp: int, out: int, cached: int,
                      cost: float | None, relevance: float | None, precision: float | None,
                      first_token: float | None) -> None:
        extra = ctx.extra
        try:
            end = time.time()
            ctx.sink.write(make_record(
                request_id=ctx.request_id, service=self.service, env=self.env,
                operation=ctx.operation, model=model, status=status, error_type=error_type,
                start_time=end - duration, total_time=duration, stages=ctx.stages or {},
                input_tokens=inp, output_tokens=out, cached_input_tokens=cached, cost=cost,
                relevance_score=relevance, context_precision=precision,
                time_to_first_token=first_token,
                cache_hits=extra.cache_hits if extra else 0,
                cache_misses=extra.cache_misses if extra else 0,
                attributes=extra.attributes if extra else None), at=end)
        except Exception as failure:
            _recording_failed(self.metrics, "record_write", "writing the request record failed: %r",
                              failure)


_REAL = (int, float)
_RESULT_FIELDS = (("input_tokens", check_count), ("output_tokens", check_count),
                  ("cached_input_tokens", check_count), ("relevance_score", check_score),
                  ("context_precision", check_score),
                  ("model", lambda name, value: check_name(name, value, "gpt-4o-mini")))


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
    check_name("operation", operation, "rag_search")
    if model is not None:
        check_name("model", model, "gpt-4o-mini")
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


def _wrap_function(inst: _Instrumented, fn: Callable) -> Callable:
    @functools.wraps(fn)
    def monitored(*args, **kwargs):
        if not inst.ready and not inst.resolve():
            return fn(*args, **kwargs)
        ctx = inst.start()
        token = CURRENT_QUERY.set(ctx)
        in_flight = inst.in_flight
        in_flight.inc()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            in_flight.dec()
            CURRENT_QUERY.reset(token)
            inst.finish(ctx, None, exc)
            raise
        in_flight.dec()
        CURRENT_QUERY.reset(token)
        inst.finish(ctx, result, None)
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
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:
            in_flight.dec()
            CURRENT_QUERY.reset(token)
            inst.finish(ctx, None, exc)
            raise
        in_flight.dec()
        CURRENT_QUERY.reset(token)
        inst.finish(ctx, result, None)
        return result
    return monitored


class _Stream:
    """The end of one monitored stream, recorded exactly once: by the stream itself, or by
    close_abandoned_streams() when the server gives up on it (client gone) while the generator
    sits suspended, which otherwise would end it only at garbage collection."""

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
        self.inst.in_flight.dec()
        self.inst.finish(self.ctx, result, exc)
        return True


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
                if first_chunk:
                    first_chunk = False
                    ctx.extras().first_token = _perf() - ctx.start
                try:
                    arg = yield item
                    step = inner.send
                except GeneratorExit:
                    raise
                except BaseException as thrown:  # forwarded into the stream, as `yield from` does
                    step, arg = inner.throw, thrown
        except BaseException as exc:
            if isinstance(exc, GeneratorExit):
                inner.close()
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
                if first_chunk:
                    first_chunk = False
                    ctx.extras().first_token = _perf() - ctx.start
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
    check_name("stage", name, "retrieval")
    check_amount("duration", duration, f"seconds for stage {name!r} as a finite number >= 0")
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
    check_name("cache_type", cache_type, "semantic")
    query = CURRENT_QUERY.get()
    m = metrics or (query.owner.metrics if query is not None else default_metrics())
    _child(m, ("cache", cache_type, hit),
           lambda: m.cache_operations.labels(cache_type, "hit" if hit else "miss")).inc()
    if query is not None and m is query.owner.metrics:
        if hit:
            query.extras().cache_hits += 1
        else:
            query.extras().cache_misses += 1


# Providers name their headers differently; each entry is (header, "requests"|"tokens").
_RATE_LIMIT_HEADERS = (
    ("x-ratelimit-remaining-requests", "requests"),
    ("x-ratelimit-remaining-tokens", "tokens"),
    ("anthropic-ratelimit-requests-remaining", "requests"),
    ("anthropic-ratelimit-tokens-remaining", "tokens"),
)


def track_rate_limit(provider: str, remaining_requests: float | None = None,
                     remaining_tokens: float | None = None, *, headers: Mapping | None = None,
                     metrics: RAGMetrics | None = None) -> dict[str, float]:
    """Records the rate-limit headroom a provider reports, from numbers or response headers
    (``x-ratelimit-remaining-requests`` / ``-tokens`` and Anthropic's equivalents).

    Bad numbers passed directly raise ValueError; unparsable headers (they come from outside)
    are logged and counted instead. Returns what was recorded.
    """
    check_name("provider", provider, "openai")
    m = metrics or default_metrics()
    found: dict[str, float] = {}
    if remaining_requests is not None:
        found["requests"] = check_amount("remaining_requests", remaining_requests, "a count >= 0 as reported by the provider")
    if remaining_tokens is not None:
        found["tokens"] = check_amount("remaining_tokens", remaining_tokens, "a count >= 0 as reported by the provider")
    if headers:
        lowered = {str(key).lower(): value for key, value in headers.items()}
        for header, kind in _RATE_LIMIT_HEADERS:
            raw = lowered.get(header)
            if raw is None or kind in found:
                continue
            try:
                found[kind] = check_amount(header, float(str(raw).strip()), "a count >= 0")
            except ValueError:
                _recording_failed(m, "bad_header", "header %s=%r from %s is not a number",
                                  header, raw, provider)
    if "requests" in found:
        m.rate_limit_requests.labels(provider).set(found["requests"])
    if "tokens" in found:
        m.rate_limit_tokens.labels(provider).set(found["tokens"])
    return found


def record_tokens(input_tokens: int = 0, output_tokens: int = 0, cached_input_tokens: int = 0, *,
                  model: str | None = None, metrics: RAGMetrics | None = None) -> float | None:
    """Reports token usage. Inside a monitored query (e.g. from a streaming generator) it adds to
    that query, which counts tokens and cost when it ends; outside one it counts them now and
    returns the cost."""
    input_tokens = check_count("input_tokens", input_tokens)
    output_tokens = check_count("output_tokens", output_tokens)
    cached_input_tokens = check_count("cached_input_tokens", cached_input_tokens)
    if model is not None:
        check_name("model", model, "gpt-4o-mini")
    query = CURRENT_QUERY.get()
    if query is not None and (metrics is None or metrics is query.owner.metrics):
        extra = query.extras()
        extra.input_tokens += input_tokens
        extra.output_tokens += output_tokens
        extra.cached_input_tokens += cached_input_tokens
        if model is not None:
            query.model = model
        return None
    if not (input_tokens or output_tokens or cached_input_tokens):
        return 0.0
    m = metrics or default_metrics()
    label = model or "unknown"
    cost = m.calculate_cost(input_tokens, output_tokens, model, cached_input_tokens)
    for kind, count in (("input", input_tokens), ("output", output_tokens),
                        ("cached_input", cached_input_tokens)):
        if count:
            m.tokens.labels(label, kind).inc(count)
    m.query_cost.labels(label).observe(cost)
    m.spend.labels(label).inc(cost)
    return cost


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
                          ", ".join(attributes))
        return False
    extra = query.extras()
    if extra.attributes is None:
        extra.attributes = {}
    extra.attributes.update(attributes)
    return True
