"""Instrumenting an LLM SDK client once: every call is measured, whatever the code returns.

    client = ragmon.instrument_openai(openai.OpenAI())        # or AsyncOpenAI, AzureOpenAI
    client = ragmon.instrument_anthropic(anthropic.Anthropic())  # or AsyncAnthropic
    client = ragmon.instrument_gemini(google.genai.Client())     # client.models and client.aio

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
import json
import logging
import re
import time
from typing import Any, Mapping

from ..checks import check_name
from .calls import CallRecorder, check_instrument_arguments, sdk_error_type
from .catalog import RAGMetrics
from .context import CURRENT_QUERY
from .providers import gemini
from .runtime import default_metrics

log = logging.getLogger("ragmon")
_perf = time.perf_counter

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
    check_instrument_arguments(provider, metrics, stage)
    original = getattr(client, "request", None)
    http = getattr(client, "_client", None)
    if original is None or not callable(original) or http is None or not hasattr(http, "event_hooks"):
        raise ValueError(f"{client!r} is not an OpenAI or Anthropic SDK client (it has no "
                         "request() method over an httpx client); pass e.g. openai.OpenAI() or "
                         "anthropic.Anthropic() (instrument_gemini() takes google.genai.Client())")
    if getattr(client, "_ragmon_instrumented", False):
        return client
    calls = CallRecorder(provider, metrics, stage, dict(deployments or {}))
    if inspect.iscoroutinefunction(original):
        async def on_response(response):
            calls.rate_limits(response)

        async def request(*args, **kwargs):
            start = _perf()
            query = CURRENT_QUERY.get()
            try:
                result = await original(*args, **kwargs)
            except Exception as exc:
                calls.failed(exc, start, query, args, kwargs)
                raise
            calls.answered_call(result, start, query, args, kwargs)
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
                calls.failed(exc, start, query, args, kwargs)
                raise
            calls.answered_call(result, start, query, args, kwargs)
            return result
    http.event_hooks["response"].append(on_response)
    request.__wrapped__ = original
    client.request = request
    client._ragmon_instrumented = True
    return client


# --- Google Gemini (google-genai) ------------------------------------------------------------

def _model_in(path: str) -> str | None:
    match = re.search(r"models/([^:/?]+):", path or "")
    return match.group(1) if match else None


def _is_generation(path: Any) -> bool:
    return isinstance(path, str) and "enerateContent" in path


def instrument_gemini(client, *, metrics=None, stage: str | None = "generation",
                      provider: str = "gemini"):
    """Instruments a ``google.genai.Client`` in place (``client.models`` and ``client.aio.models``,
    streams included) and returns it."""
    check_instrument_arguments(provider, metrics, stage)
    api = getattr(client, "_api_client", None)
    if api is None or not callable(getattr(api, "request", None)):
        raise ValueError(f"{client!r} is not a google-genai Client (it has no API client with "
                         "request()); pass google.genai.Client(...)")
    if getattr(api, "_ragmon_instrumented", False):
        return client
    calls = CallRecorder(provider, metrics, stage, {}, gemini.error_type)
    request, streamed = api.request, api.request_streamed
    async_request, async_streamed = api.async_request, api.async_request_streamed

    def read(response, started, query, path):
        calls.rate_limits(response)
        body = getattr(response, "body", None)
        calls.answered(json.loads(body) if body else {}, started, query, _model_in(path))

    def sync_request(method, path, *args, **kwargs):
        if not _is_generation(path):
            return request(method, path, *args, **kwargs)
        started, query = _perf(), calls.current_query()
        try:
            response = request(method, path, *args, **kwargs)
        except Exception as exc:
            calls.failed(exc, started, query)
            raise
        read(response, started, query, path)
        return response

    def sync_streamed(method, path, *args, **kwargs):
        if not _is_generation(path):
            return streamed(method, path, *args, **kwargs)
        started, query = _perf(), calls.current_query()
        return _follow_sync(streamed(method, path, *args, **kwargs), calls, _model_in(path),
                            started, query)

    async def async_req(method, path, *args, **kwargs):
        if not _is_generation(path):
            return await async_request(method, path, *args, **kwargs)
        started, query = _perf(), calls.current_query()
        try:
            response = await async_request(method, path, *args, **kwargs)
        except Exception as exc:
            calls.failed(exc, started, query)
            raise
        read(response, started, query, path)
        return response

    async def async_stream(method, path, *args, **kwargs):
        if not _is_generation(path):
            return await async_streamed(method, path, *args, **kwargs)
        started, query = _perf(), calls.current_query()
        try:
            inner = await async_streamed(method, path, *args, **kwargs)
        except Exception as exc:
            calls.failed(exc, started, query)
            raise
        return _follow_async(inner, calls, _model_in(path), started, query)

    api.request, api.request_streamed = sync_request, sync_streamed
    api.async_request, api.async_request_streamed = async_req, async_stream
    api._ragmon_instrumented = True
    return client


def _chunk(response) -> Any:
    body = getattr(response, "body", None)
    return json.loads(body) if body else {}


def _follow_sync(inner, calls, model, started, query):
    tracker = calls.stream_started(started, query, model)
    headers_read = False
    try:
        for response in inner:
            if not headers_read:
                headers_read = True
                calls.rate_limits(response)
            calls.feed(tracker, _chunk(response))
            yield response
        tracker.completed = True
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            calls.stream_failed(exc)
        tracker.end(exc)
        raise
    finally:
        tracker.end()


async def _follow_async(inner, calls, model, started, query):
    tracker = calls.stream_started(started, query, model)
    headers_read = False
    try:
        async for response in inner:
            if not headers_read:
                headers_read = True
                calls.rate_limits(response)
            calls.feed(tracker, _chunk(response))
            yield response
        tracker.completed = True
    except BaseException as exc:
        if not isinstance(exc, GeneratorExit):
            calls.stream_failed(exc)
        tracker.end(exc)
        raise
    finally:
        tracker.end()


