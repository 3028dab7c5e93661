"""Process-wide monitoring state: the default metrics, the request-record sink in force, the
counting of swallowed monitoring failures and the small label helpers every recorder shares.

Nothing here imports the decorator or the SDK adapters: they all import this.
"""
from __future__ import annotations

import logging
from typing import Any, Callable

from ..checks import MAX_LABEL_LENGTH, safe_label
from .catalog import RAGMetrics
from .notices import WarningLimiter
from .records import sink_for

log = logging.getLogger("ragmon")

UNSET = object()


class ProcessState:
    """What one process monitors with: the default catalog (made on first use) and the sink of
    request records (``UNSET`` until resolved from settings on first use)."""

    __slots__ = ("metrics", "request_log", "otel")

    def __init__(self):
        self.metrics: RAGMetrics | None = None
        self.request_log: Any = UNSET
        # The OpenTelemetry output (otel.Telemetry) when OTEL_ENABLED; None costs a query one check.
        self.otel: Any = None


STATE = ProcessState()


def default_metrics() -> RAGMetrics:
    """The catalog registered in prometheus_client's global REGISTRY (``ragmon.metrics``)."""
    metrics = STATE.metrics
    if metrics is None:
        metrics = STATE.metrics = RAGMetrics()
    return metrics


def sync_otel(settings, turn_off: bool = False) -> None:
    """Starts the OpenTelemetry output when `settings` turn it on (importing the OpenTelemetry
    SDK only then); with ``turn_off``, also stops it when they do not. A missing SDK is logged
    and counted, never raised: monitoring never stops the host."""
    try:
        if getattr(settings, "OTEL_ENABLED", False):
            if STATE.otel is None:
                from .otel import start
                STATE.otel = start(settings)
        elif turn_off and STATE.otel is not None:
            telemetry, STATE.otel = STATE.otel, None
            telemetry.shutdown()
    except ImportError as missing:
        recording_failed(STATE.metrics, "otel", "OTEL_ENABLED is set but %s; install it with "
                         "pip install 'ragmon[otel]'. Prometheus metrics are unaffected", missing)
    except Exception as failure:
        recording_failed(STATE.metrics, "otel", "starting the OpenTelemetry output failed: %r",
                         failure)


def otel_flush(timeout_seconds: float = 10.0) -> bool:
    """Exports the pending OpenTelemetry metrics and spans now (a short-lived script before it
    exits, a test). True when there was nothing to do or everything was sent."""
    telemetry = STATE.otel
    return True if telemetry is None else telemetry.flush(int(timeout_seconds * 1000))


def configure_request_log(destination: str | None = None, log_dir: str | None = None, sink=None):
    """Chooses where per-query records go, overriding REQUEST_LOG_DESTINATION / LOG_DIR.

    ``destination`` is "file" (daily JSONL files in ``log_dir``), "stderr" or "none"; or pass any
    object with ``write(record, at)`` as ``sink``. Returns the sink now in use (None when off).
    Settings are read only for what is not given. Queries already running keep the sink they
    started with, so the previous sink is left open.
    """
    if sink is None:
        if destination is None or (destination == "file" and log_dir is None):
            from ..settings import get_settings
            settings = get_settings()
            destination = destination if destination is not None else settings.REQUEST_LOG_DESTINATION
            log_dir = log_dir if log_dir is not None else settings.log_dir
        sink = sink_for(destination, log_dir)
    STATE.request_log = sink
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
    STATE.request_log = UNSET
    if STATE.metrics is not None:
        STATE.metrics.settings_changed()
    sync_otel(settings, turn_off=True)
    return settings


def current_request_log():
    if STATE.request_log is UNSET:
        configure_request_log()
    return STATE.request_log


_process_warnings = WarningLimiter(log)  # for failures outside any catalog


def recording_failed(metrics: RAGMetrics | None, reason: str, message: str, *args) -> None:
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


def is_safe_label(value: object) -> bool:
    return type(value) is str and len(value) <= MAX_LABEL_LENGTH and value.isprintable()


def safe_name(value: str) -> str:
    """A caller's name (operation, model, stage, cache type) as it is labelled and recorded."""
    return value if is_safe_label(value) else safe_label(value)


def cached_child(metrics: RAGMetrics, key: tuple, make: Callable):
    """A labelled child from the catalog's bounded cache, made on first use."""
    child = metrics.child_cache.get(key)
    if child is None:
        child = metrics.child_cache[key] = make()
    return child


_warned_shapes: set[str] = set()


def note_unreadable(metrics: RAGMetrics, shape: str, hint: str = "") -> None:
    """Counts a response whose usage could not be read; warns once per shape."""
    shape = safe_label(shape)
    metrics.unreadable_responses.labels(shape).inc()
    if shape not in _warned_shapes and len(_warned_shapes) < 100:
        _warned_shapes.add(shape)
        log.warning("monitoring: could not read token usage from a returned %s; its tokens and "
                    "cost are not recorded (counted in rag_unreadable_responses_total). %s"
                    "Instrument the client with ragmon.instrument_openai(client) / "
                    "instrument_anthropic(client) / instrument_gemini(client), or report usage "
                    "with record_tokens().", shape, hint)
