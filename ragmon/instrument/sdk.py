"""Instrumenting an LLM SDK client once: every call is measured, whatever the code returns.

    client = ragmon.instrument_openai(openai.OpenAI())        # or AsyncOpenAI, AzureOpenAI
    client = ragmon.instrument_anthropic(anthropic.Anthropic())  # or AsyncAnthropic

Each API call of the client (Chat Completions, Responses, Messages, streams included) is then:

- timed as a stage (``generation`` by default) of the monitored query it runs in;
- read for usage: tokens by kind, the model that answered, its provider; inside a
  ``@monitored_query`` they add to the query (priced per answering model), outside one they are
  counted at once under ``operation="none"``;
- read for rate-limit headers (``x-ratelimit-*``, ``anthropic-ratelimit-*``, with reset times),
  on every HTTP response, errors and retries included;
- counted when it fails, by SDK error type (``rag_llm_errors_total``).

Streams are followed in place (the SDK's own Stream object is returned): the first *content*
chunk times the first token, the final usage chunk/event gives the tokens; a stream abandoned or
cut early still counts the input known from its first event and the output chunks seen so far,
marked partial. The SDKs are not imported: the client is recognised by its methods.
"""
from __future__ import annotations

import inspect
import logging
import re
import time
from datetime import datetime
from typing import Any, Mapping

from ..checks import check_name, safe_label, text_of
from .catalog import RAGMetrics
from .context import CURRENT_QUERY
from .decorator import _child, _recording_failed, default_metrics, follow_stream, record_usage
from .usage import Unreadable, read_usage

log = logging.getLogger("ragmon")
_perf = time.perf_counter

# SDK exception names counted as themselves; any other SDK error is counted as its nearest
# known base class, anything else as "other", so the label stays bounded.
SDK_ERROR_TYPES = (
    "RateLimitError", "APITimeoutError", "APIConnectionError", "AuthenticationError",
    "PermissionDeniedError", "BadRequestError", "NotFoundError", "ConflictError",
    "UnprocessableEntityError", "InternalServerError", "OverloadedError",
    "ServiceUnavailableError", "DeadlineExceededError", "RequestTooLargeError",
    "LengthFinishReasonError", "ContentFilterFinishReasonError", "APIResponseValidationError",
    "APIStatusError", "APIError",
)


def sdk_error_type(exc: BaseException) -> str:
    for cls in type(exc).__mro__:
        if cls.__name__ in SDK_ERROR_TYPES:
            return cls.__name__
    return "other"


def record_llm_error(provider: str, error: BaseException, *,
                     metrics: RAGMetrics | None = None) -> str:
    """Counts a failed LLM call in rag_llm_errors_total by provider and bounded error type (for
    clients ragmon does not instrument itself). Returns the type it was counted as."""
    check_name("provider", provider, "openai")
    if not isinstance(error, BaseException):
        raise ValueError(f"error={error!r} is not an exception; pass the exception the call raised")
    error_type = sdk_error_type(error)
    (metrics or default_metrics()).llm_errors.labels(provider, error_type).inc()
    return error_type


# --- rate-limit headers --------------------------------------------------------------------------

# (header, what it is, limit kind)
_RATE_HEADERS = (
    ("x-ratelimit-remaining-requests", "remaining", "requests"),
    ("x-ratelimit-remaining-tokens", "remaining", "tokens"),
    ("x-ratelimit-reset-requests", "reset", "requests"),
    ("x-ratelimit-reset-tokens", "reset", "tokens"),
    ("anthropic-ratelimit-requests-remaining", "remaining", "requests"),
    ("anthropic-ratelimit-tokens-remaining", "remaining", "tokens"),
    ("anthropic-ratelimit-requests-reset", "reset", "requests"),
    ("anthropic-ratelimit-tokens-reset", "reset", "tokens"),
)
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
                       r"(?:(\d+(?:\.\d+)?)ms)?$")


def parse_reset(value: str, now: float | None = None) -> float:
    """The Unix time a rate-limit window resets, from OpenAI's durations (``1m30s``, ``250ms``,
    ``6m0s``) or Anthropic's RFC 3339 timestamps. ValueError when it is neither."""
    now = time.time() if now is None else now
    text = text_of(value).strip()
    match = _DURATION.match(text)
    if match and text and any(match.groups()):
        hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
        return now + hours * 3600 + minutes * 60 + seconds + millis / 1000
    try:
        return float(text) + now if text.replace(".", "", 1).isdigit() else \
            datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"rate-limit reset {value!r} is neither a duration like '1m30s' nor an "
                         "RFC 3339 time like '2026-01-01T00:00:00Z'") from None


def headers_of(source: Any) -> Mapping | None:
    """The headers carried by `source`: a mapping (dict, httpx.Headers), a raw response (httpx,
    the SDKs' ``with_raw_response`` objects), an SDK error or stream (``.response.headers``).
    None when `source` carries none (parsed objects such as ``ChatCompletion`` do not)."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source
    for path in (("headers",), ("response", "headers"), ("_response", "headers"),
                 ("http_response", "headers")):
        value = source
        for attr in path:
            value = getattr(value, attr, None)
            if value is None:
                break
        if value is not None and hasattr(value, "get") and hasattr(value, "items"):
            return value
    return None


def provider_of_headers(headers: Mapping) -> str | None:
    for key in headers.keys():
        name = str(key).lower()
        if name.startswith("anthropic-ratelimit-"):
            return "anthropic"
        if name.startswith("x-ratelimit-"):
            return "openai"
    return None


def read_rate_limits(headers: Mapping) -> tuple[dict[str, float], dict[str, float], list]:
    """({kind: remaining}, {kind: reset Unix time}, [(header, bad value)]) from response headers."""
    get = headers.get
    remaining, reset, bad = {}, {}, []
    now = time.time()
    for header, what, kind in _RATE_HEADERS:
        raw = get(header)
        if raw is None:
            continue
        try:
            if what == "remaining":
                number = float(text_of(raw).strip())
                if not number >= 0:
                    raise ValueError
                remaining.setdefault(kind, number)
            else:
                reset.setdefault(kind, parse_reset(raw, now))
        except ValueError:
            bad.append((header, raw))
    return remaining, reset, bad


# --- instrumenting a client --------------------------------------------------------------------

def instrument_openai(client, *, metrics: RAGMetrics | None = None, stage: str | None = "generation",
                      deployments: Mapping[str, str] | None = None, provider: str = "openai"):
    """Instruments an ``openai.OpenAI`` / ``AsyncOpenAI`` / ``AzureOpenAI`` client in place and
    returns it. ``deployments`` maps Azure deployment names to model names for pricing (a
    response that names no model, or names the deployment, is priced as the mapped model).
    ``stage=None`` records no stage (when your code already wraps calls in ``stage()``)."""
    return _instrument(client, provider, metrics, stage, deployments)


def instrument_anthropic(client, *, metrics: RAGMetrics | None = None,
                         stage: str | None = "generation", provider: str = "anthropic"):
    """Instruments an ``anthropic.Anthropic`` / ``AsyncAnthropic`` client in place and returns it
    (``messages.create``, ``messages.stream`` and raw streams are all covered)."""
    return _instrument(client, provider, metrics, stage, None)


def _instrument(client, provider: str, metrics: RAGMetrics | None, stage: str | None,
                deployments: Mapping[str, str] | None):
    check_name("provider", provider, "openai")
    if stage is not None:
        check_name("stage", stage, "generation")
    if metrics is not None and not isinstance(metrics, RAGMetrics):
        raise ValueError(f"metrics={metrics!r} is not a RAGMetrics catalog")
    original = getattr(client, "request", None)
    http = getattr(client, "_client", None)
    if original is None or not callable(original) or http is None or not hasattr(http, "event_hooks"):
        raise ValueError(f"{client!r} is not an OpenAI or Anthropic SDK client (it has no "
                         "request() method over an httpx client); pass e.g. openai.OpenAI() or "
                         "anthropic.Anthropic()")
    if getattr(client, "_ragmon_instrumented", False):
        return client
    calls = _Calls(provider, metrics, stage, dict(deployments or {}))
    if inspect.iscoroutinefunction(original):
        async def on_response(response):
            calls.rate_limits(response)

        async def request(*args, **kwargs):
            start = _perf()
            query = CURRENT_QUERY.get()
            try:
                result = await original(*args, **kwargs)
            except Exception as exc:
                calls.failed(exc, start, query)
                raise
            calls.answered(result, start, query, args, kwargs)
            return result
    else:
        def on_response(response):
            calls.rate_limits(response)

        def request(*args, **kwargs):
            start = _perf()
            query = CURRENT_QUERY.get()
            try:
                result = original(*args, **kwargs)
            except Exception as exc:
                calls.failed(exc, start, query)
                raise
            calls.answered(result, start, query, args, kwargs)
            return result
    http.event_hooks["response"].append(on_response)
    request.__wrapped__ = original
    client.request = request
    client._ragmon_instrumented = True
    return client


class _Calls:
    """What an instrumented client records per call; every method swallows its own failures."""

    def __init__(self, provider: str, metrics: RAGMetrics | None, stage: str | None,
                 deployments: dict[str, str]):
        self.provider = provider
        self._metrics = metrics
        self.stage = stage
        self.deployments = deployments

    def metrics_for(self, query) -> RAGMetrics:
        if self._metrics is not None:
            return self._metrics
        return query.owner.metrics if query is not None else default_metrics()

    def rate_limits(self, response) -> None:
        try:
            record_rate_limits(self.provider, response.headers, self._metrics or default_metrics())
        except Exception as failure:
            _recording_failed(self._metrics or default_metrics(), "recording",
                              "reading rate-limit headers failed: %r", failure)

    def failed(self, exc: BaseException, start: float, query) -> None:
        try:
            m = self.metrics_for(query)
            record_llm_error(self.provider, exc, metrics=m)
            self.timed(m, query, _perf() - start)
        except Exception as failure:
            _recording_failed(self._metrics, "recording", "counting an SDK error failed: %r",
                              failure)

    def timed(self, m: RAGMetrics, query, duration: float) -> None:
        if self.stage is None:
            return
        if query is not None and m is query.owner.metrics:
            query.owner.stage_child(self.stage).observe(duration)
            query.add_stage(self.stage, duration, {"provider": self.provider})
        else:
            stage = self.stage
            _child(m, ("stage", "none", stage),
                   lambda: m.stage_latency.labels("none", stage)).observe(duration)

    def answered(self, result, start: float, query, args, kwargs) -> None:
        try:
            m = self.metrics_for(query)
            requested = _requested_model(args, kwargs)
            if kwargs.get("stream") or _is_stream_result(result):
                tracker = follow_stream(result, start)
                if tracker is None:
                    return
                tracker.provider = self.provider
                if query is not None:
                    extra = query.extras()
                    if extra.usages is None:
                        extra.usages = []
                    extra.usages.append(tracker)
                tracker.on_end.append(
                    lambda t: self._stream_ended(t, m, query, start, requested))
                return
            self.timed(m, query, _perf() - start)
            parsed = result.parse() if hasattr(result, "parse") and hasattr(result, "headers") else result
            usage = read_usage(parsed)
            if usage is None:
                return
            if isinstance(usage, Unreadable):
                from .decorator import _note_unreadable
                _note_unreadable(m, usage.shape)
                return
            self._name(usage, requested)
            if query is not None and m is query.owner.metrics:
                extra = query.extras()
                if extra.usages is None:
                    extra.usages = []
                extra.usages.append(usage)
            else:
                record_usage(usage, metrics=m)
        except Exception as failure:
            _recording_failed(self._metrics, "recording", "reading an SDK response failed: %r",
                              failure)

    def _name(self, usage, requested: str | None) -> None:
        usage.provider = usage.provider or self.provider
        model = usage.model or requested
        usage.model = self.deployments.get(model, model) if model is not None else None

    def _stream_ended(self, tracker, m: RAGMetrics, query, start: float,
                      requested: str | None) -> None:
        try:
            self.timed(m, query, _perf() - start)
            self._name(tracker.usage, requested)
            if tracker.error is not None and not isinstance(tracker.error, GeneratorExit):
                m.llm_errors.labels(self.provider, sdk_error_type(tracker.error)).inc()
            if query is None or m is not query.owner.metrics:
                usage = tracker.snapshot()
                record_usage(usage, metrics=m, first_token=tracker.first_content,
                             incomplete_stream=tracker.completed and not tracker.final)
        except Exception as failure:
            _recording_failed(self._metrics, "recording", "recording a stream's usage failed: %r",
                              failure)


def _requested_model(args, kwargs) -> str | None:
    options = kwargs.get("options") if "options" in kwargs else (args[1] if len(args) > 1 else None)
    body = getattr(options, "json_data", None)
    model = body.get("model") if isinstance(body, Mapping) else None
    return model if isinstance(model, str) and model else None


def _is_stream_result(result) -> bool:
    return hasattr(result, "_iterator") and hasattr(result, "response")


def record_rate_limits(provider: str | None, headers: Mapping, metrics: RAGMetrics) -> dict[str, float]:
    """Sets the rate-limit gauges from response headers; returns what was recorded
    (``requests`` / ``tokens`` remaining, ``requests_reset`` / ``tokens_reset`` Unix times)."""
    remaining, reset, bad = read_rate_limits(headers)
    provider = safe_label(provider or provider_of_headers(headers) or "unknown")
    for header, raw in bad:
        _recording_failed(metrics, "bad_header", "header %s=%s from %s is not a number or time",
                          header, safe_label(raw), provider)
    cache = metrics.child_cache
    for kind, value in remaining.items():
        child = cache.get(("rate", provider, kind))
        if child is None:
            gauge = metrics.rate_limit_requests if kind == "requests" else metrics.rate_limit_tokens
            child = cache[("rate", provider, kind)] = gauge.labels(provider)
        child.set(value)
    for kind, when in reset.items():
        child = cache.get(("reset", provider, kind))
        if child is None:
            child = cache[("reset", provider, kind)] = metrics.rate_limit_reset.labels(provider, kind)
        child.set(when)
    found = dict(remaining)
    found.update({f"{kind}_reset": when for kind, when in reset.items()})
    return found
