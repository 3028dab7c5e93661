"""ragmon: production monitoring for RAG / LLM services.

One import gives honest latency, cost, quality and error numbers on a Prometheus endpoint, plus
one JSON record per request::

    import ragmon

    @ragmon.monitored_query(operation="rag_search", model="gpt-4o-mini")
    def answer(question):
        with ragmon.stage("retrieval"):
            docs = search(question)
        with ragmon.stage("generation"):
            reply = llm(question, docs)
        return {"answer": reply.text, "input_tokens": reply.usage.input,
                "output_tokens": reply.usage.output}

    ragmon.start_metrics_server()          # http://127.0.0.1:8000/metrics

The package follows the data: ``ragmon.instrument`` measures (metrics and request records),
``ragmon.stack`` runs Prometheus and Alertmanager over them, ``ragmon.report`` reads the records,
``ragmon.course`` holds the notebook's helpers. Importing ``ragmon`` loads only the standard
library and prometheus_client and reads no configuration; settings come from the environment
and `.env` on first use, or from ``ragmon.configure(...)``.
"""
from __future__ import annotations

from .instrument.catalog import RAGMetrics
from .instrument.context import current_request_id, request_context
from .instrument.decorator import monitored_query
from .instrument.helpers import record_quality, record_tokens, set_attributes, track_cache_operation
from .instrument.jsonlog import StructuredLogger, redact
from .instrument.performance import PerformanceMonitor
from .instrument.pricing import PriceTable
from .instrument.quality import FeedbackResult, record_feedback, record_scores
from .instrument.retrieval import record_retrieval
from .instrument.records import DailyFileSink
from .instrument.ratelimits import track_rate_limit
from .instrument.runtime import configure, configure_request_log, default_metrics
from .instrument.sdk import instrument_anthropic, instrument_gemini, instrument_openai
from .instrument.stages import observe_stage, stage
from .instrument.server import start_metrics_server
from .settings import ConfigError, Settings, get_settings, load_settings, make_settings

__version__ = "0.2.0"

#: The default catalog, registered in prometheus_client's global REGISTRY.
metrics: RAGMetrics = default_metrics()

__all__ = [
    # measuring a query
    "monitored_query", "stage", "observe_stage", "record_tokens", "record_quality",
    "record_scores", "record_retrieval", "record_feedback", "FeedbackResult",
    "set_attributes", "track_cache_operation", "track_rate_limit", "current_request_id",
    "request_context", "instrument_openai", "instrument_anthropic", "instrument_gemini",
    # the metrics and the records
    "metrics", "RAGMetrics", "PriceTable", "start_metrics_server", "configure_request_log",
    "DailyFileSink", "StructuredLogger", "redact", "PerformanceMonitor",
    # settings
    "configure", "make_settings", "load_settings", "get_settings", "Settings", "ConfigError",
]
