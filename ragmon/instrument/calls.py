"""What an instrumented LLM client records per call, shared by every SDK adapter: the call's
stage time, its usage (added to the running query, or counted at once outside one), its stream
(followed to its end), its rate-limit headers and its errors by bounded type."""
from __future__ import annotations

import time
from typing import Callable, Mapping

from ..checks import check_name
from .accounting import record_usage
from .catalog import RAGMetrics
from .context import CURRENT_QUERY
from .ratelimits import record_rate_limits
from .runtime import (STATE, cached_child, default_metrics, note_unreadable, recording_failed,
                      sync_otel)
from .streams import follow_stream
from .usage import StreamUsage, Unreadable, is_stream, read_usage

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


def check_instrument_arguments(provider: str, metrics: RAGMetrics | None,
                               stage: str | None) -> None:
    check_name("provider", provider, "openai")
    if stage is not None:
        check_name("stage", stage, "generation")
    if metrics is not None and not isinstance(metrics, RAGMetrics):
        raise ValueError(f"metrics={metrics!r} is not a RAGMetrics catalog")


class CallRecorder:
    """What an instrumented client records per call, for every SDK adapter; every method
    swallows its own failures."""

    def __init__(self, provider: str, metrics: RAGMetrics | None, stage: str | None,
                 deployments: dict[str, str],
                 error_type: Callable[[BaseException], str | None] | None = None):
        self.provider = provider
        self._metrics = metrics
        self.stage = stage
        self.deployments = deployments
        self.error_type = error_type
        try:  # OTEL_ENABLED from the environment: the output starts with the first client
            sync_otel((metrics or default_metrics()).settings)
        except Exception as failure:  # a bad setting is reported where settings are used
            recording_failed(metrics, "setup", "reading the settings failed: %r", failure)

    @staticmethod
    def current_query():
        return CURRENT_QUERY.get()

    def metrics_for(self, query) -> RAGMetrics:
        if self._metrics is not None:
            return self._metrics
        return query.owner.metrics if query is not None else default_metrics()

    def rate_limits(self, response) -> None:
        try:
            record_rate_limits(self.provider, response.headers, self._metrics or default_metrics())
        except Exception as failure:
            recording_failed(self._metrics or default_metrics(), "recording",
                             "reading rate-limit headers failed: %r", failure)

    def counted_error(self, exc: BaseException) -> str:
        found = self.error_type(exc) if self.error_type is not None else None
        return found or sdk_error_type(exc)

    def failed(self, exc: BaseException, start: float, query, args=(), kwargs=None) -> None:
        try:
            m = self.metrics_for(query)
            error_type = self.counted_error(exc)
            m.llm_errors.labels(self.provider, error_type).inc()
            end = _perf()
            self.timed(m, query, end - start)
            if STATE.otel is not None:
                STATE.otel.llm_call(query, self.provider, requested_model(args, kwargs or {}),
                                    start, end, error_type=error_type)
        except Exception as failure:
            recording_failed(self._metrics, "recording", "counting an SDK error failed: %r",
                             failure)

    def stream_failed(self, exc: BaseException) -> None:
        try:
            m = self.metrics_for(CURRENT_QUERY.get())
            m.llm_errors.labels(self.provider, self.counted_error(exc)).inc()
        except Exception as failure:
            recording_failed(self._metrics, "recording", "counting an SDK error failed: %r",
                             failure)

    def timed(self, m: RAGMetrics, query, duration: float) -> None:
        if self.stage is None:
            return
        if query is not None and m is query.owner.metrics:
            query.owner.stage_observer(self.stage)(duration)
            query.add_stage(self.stage, duration, {"provider": self.provider})
            if STATE.otel is not None:  # the stage's span, holding the call's
                STATE.otel.stage_ended(query, self.stage, duration)
        else:
            stage = self.stage
            cached_child(m, ("stage", "none", stage),
                         lambda: m.stage_latency.labels("none", stage)).observe(duration)

    def answered_call(self, result, start: float, query, args, kwargs) -> None:
        """An OpenAI / Anthropic SDK call returned: a parsed response, a raw one or a stream."""
        try:
            requested = requested_model(args, kwargs)
            if kwargs.get("stream") or is_stream(result):
                m = self.metrics_for(query)
                tracker = follow_stream(result, start)
                if tracker is not None:
                    tracker.provider = self.provider
                    self.follow(tracker, m, query, start, requested)
                return
            parsed = result.parse() if hasattr(result, "parse") and hasattr(result, "headers") else result
        except Exception as failure:
            recording_failed(self._metrics, "recording", "reading an SDK response failed: %r",
                             failure)
            return
        self.answered(parsed, start, query, requested)

    def answered(self, response, start: float, query, requested: str | None) -> None:
        """One whole response (an SDK object or its JSON) of a call that began at `start`."""
        try:
            m = self.metrics_for(query)
            end = _perf()
            self.timed(m, query, end - start)
            usage = read_usage(response)
            if isinstance(usage, Unreadable):
                note_unreadable(m, usage.shape)
                usage = None
            if usage is not None:
                self._name(usage, requested)
            if STATE.otel is not None:  # OpenTelemetry output on: the call's span and duration
                STATE.otel.llm_call(query, self.provider, requested, start, end, usage)
            if usage is None:
                return
            if query is not None and m is query.owner.metrics:
                query.extras().add_usage(usage)
            else:
                record_usage(usage, metrics=m)
        except Exception as failure:
            recording_failed(self._metrics, "recording", "reading an SDK response failed: %r",
                             failure)

    def stream_started(self, start: float, query, requested: str | None) -> StreamUsage:
        """A tracker for a stream this adapter feeds itself (``feed``), recorded at its end."""
        tracker = StreamUsage(start, provider=self.provider)
        try:
            self.follow(tracker, self.metrics_for(query), query, start, requested)
        except Exception as failure:
            recording_failed(self._metrics, "recording", "following a stream failed: %r", failure)
        return tracker

    def feed(self, tracker: StreamUsage, chunk) -> None:
        try:
            tracker.feed(chunk)
        except Exception as failure:  # a chunk we misread must not break the caller's stream
            recording_failed(self._metrics, "recording", "reading a streamed chunk failed: %r",
                             failure)

    def follow(self, tracker: StreamUsage, m: RAGMetrics, query, start: float,
               requested: str | None) -> None:
        if STATE.otel is not None:
            tracker.chunk_gaps = []  # time_per_output_chunk
        if query is not None and m is query.owner.metrics:
            query.extras().add_usage(tracker)
        tracker.on_end.append(lambda t: self._stream_ended(t, m, query, start, requested))

    def _name(self, usage, requested: str | None) -> None:
        usage.provider = usage.provider or self.provider
        model = usage.model or requested
        usage.model = self.deployments.get(model, model) if model is not None else None

    def _stream_ended(self, tracker, m: RAGMetrics, query, start: float,
                      requested: str | None) -> None:
        try:
            end = _perf()
            self.timed(m, query, end - start)
            self._name(tracker.usage, requested)
            error_type = None
            if tracker.error is not None and not isinstance(tracker.error, GeneratorExit):
                error_type = self.counted_error(tracker.error)
                if self.error_type is None:  # adapters that feed the tracker count their own
                    m.llm_errors.labels(self.provider, sdk_error_type(tracker.error)).inc()
            if STATE.otel is not None:
                STATE.otel.llm_call(query, self.provider, requested, start, end,
                                    tracker.snapshot(), error_type, tracker)
            if query is None or m is not query.owner.metrics:
                usage = tracker.snapshot()
                record_usage(usage, metrics=m, first_token=tracker.first_content,
                             incomplete_stream=tracker.completed and not tracker.final)
        except Exception as failure:
            recording_failed(self._metrics, "recording", "recording a stream's usage failed: %r",
                             failure)


def requested_model(args, kwargs) -> str | None:
    options = kwargs.get("options") if "options" in kwargs else (args[1] if len(args) > 1 else None)
    body = getattr(options, "json_data", None)
    model = body.get("model") if isinstance(body, Mapping) else None
    return model if isinstance(model, str) and model else None

