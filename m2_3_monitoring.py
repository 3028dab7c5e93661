"""M2.3 production monitoring for RAG / LLM services: one import for honest latency, cost,
quality and error numbers on a Prometheus endpoint, plus one JSON record per request.

    from m2_3_monitoring import monitored_query, stage, start_metrics_server

    @monitored_query(operation="rag_search", model="gpt-4o-mini")
    def answer(question):
        with stage("retrieval"):
            docs = search(question)
        with stage("generation"):
            reply = llm(question, docs)
        return {"answer": reply.text, "input_tokens": reply.usage.input,
                "output_tokens": reply.usage.output, "relevance_score": 0.85}

    start_metrics_server()          # http://127.0.0.1:8000/metrics

`python m2_3_monitoring.py --help` runs a simulated RAG service (the demo).

Importing this module loads only the standard library and prometheus_client; settings are read
on first use. The implementation lives in the small modules of ``ragmon/``, one per concern.
"""
from __future__ import annotations

from ragmon.catalog import OTHER, GuardedMetric, LabelGuard, RAGMetrics
from ragmon.context import current_request_id, request_context
from ragmon.instrument import (configure_request_log, default_metrics, monitored_query,
                               observe_stage, record_quality, record_tokens, set_attributes,
                               stage, track_cache_operation, track_rate_limit)
from ragmon.jsonlog import StructuredLogger, redact
from ragmon.performance import PerformanceMonitor
from ragmon.pricing import ModelPrice, PriceTable
from ragmon.records import DailyFileSink, StreamSink
from ragmon.server import start_metrics_server

# The default catalog, registered in prometheus_client's global REGISTRY.
metrics: RAGMetrics = default_metrics()

__all__ = [
    "metrics", "RAGMetrics", "monitored_query", "stage", "observe_stage", "track_cache_operation",
    "track_rate_limit", "record_tokens", "record_quality", "set_attributes", "StructuredLogger",
    "PerformanceMonitor", "start_metrics_server", "configure_request_log", "current_request_id",
    "request_context", "redact", "ModelPrice", "PriceTable", "DailyFileSink", "StreamSink",
    "GuardedMetric", "LabelGuard", "OTHER",
]

if __name__ == "__main__":
    import sys

    from ragmon.demo import main
    sys.exit(main())
