"""Smoke tests: a minute's check that the library works as the README shows.

Run with `python tests_monitoring.py` or `pytest tests_monitoring.py -v`. The full suite
(one file per area, the real Prometheus stack, the notebook) is `make test`.
"""
from __future__ import annotations

import asyncio
import traceback
import urllib.request

from prometheus_client import CollectorRegistry

from ragmon.settings import load_settings
from m2_3_monitoring import (RAGMetrics, StructuredLogger, metrics, monitored_query, stage,
                             start_metrics_server, track_cache_operation)


def fresh_metrics() -> RAGMetrics:
    settings = load_settings({"REQUEST_LOG_DESTINATION": "none", "LOG_DESTINATION": "none"})
    return RAGMetrics(registry=CollectorRegistry(), settings=settings)


def test_decorator_records_a_query():
    m = fresh_metrics()

    @monitored_query(operation="rag_search", model="gpt-4", metrics=m)
    def my_rag_function(query: str):
        with stage("retrieval"):
            pass
        return {"answer": "Generated answer", "input_tokens": 500, "output_tokens": 150, "relevance_score": 0.85}

    assert my_rag_function("q")["answer"] == "Generated answer"
    get = m.registry.get_sample_value
    assert get("rag_queries_total", {"operation": "rag_search", "status": "success"}) == 1
    assert get("rag_tokens_total", {"model": "gpt-4", "token_type": "input"}) == 500
    assert get("rag_stage_duration_seconds_count", {"operation": "rag_search", "stage": "retrieval"}) == 1


def test_async_decorator_and_errors_pass_through():
    m = fresh_metrics()

    @monitored_query(operation="rag_search", metrics=m)
    async def broken():
        raise TimeoutError("llm timed out")

    try:
        asyncio.run(broken())
    except TimeoutError as exc:
        assert str(exc) == "llm timed out"
    else:
        raise AssertionError("the exception was swallowed")
    assert m.registry.get_sample_value("rag_errors_total", {"operation": "rag_search", "error_type": "TimeoutError"}) == 1


def test_manual_recording_as_in_the_readme():
    with metrics.query_latency.labels(operation="smoke_search").time():
        pass
    track_cache_operation(hit=True, cache_type="semantic")
    cost = metrics.calculate_cost(input_tokens=500, output_tokens=150, model="gpt-4")
    assert cost > 0


def test_metrics_server_serves_the_default_registry():
    server = start_metrics_server(port=0)
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/metrics", timeout=5).read()
        assert b"rag_query_duration_seconds_bucket" in body
    finally:
        server.shutdown()
        server.server_close()


def test_structured_logger_accepts_the_readme_calls():
    settings = load_settings({"LOG_DESTINATION": "none"})
    logger = StructuredLogger(__name__, settings=settings)
    logger.log_request(query="What are the sales figures?", user_id="alice", session_id="sess_123")
    logger.log_response(duration_ms=1250.5, tokens={"input": 450, "output": 180}, cost=0.0234, success=True)
    try:
        raise ValueError("API error")
    except ValueError as exc:
        logger.log_error(exc, context={"endpoint": "/api/query"})
    line = logger.format(20, "response", {"duration_ms": 1.0})
    assert '"event":"response"' in line and '"service":"rag-service"' in line


if __name__ == "__main__":
    tests = [(name, fn) for name, fn in sorted(globals().items()) if name.startswith("test_") and callable(fn)]
    failed = 0
    for name, fn in tests:
        try:
            fn()
            print(f"PASS {name}")
        except Exception:
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    raise SystemExit(1 if failed else 0)
