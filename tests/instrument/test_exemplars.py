"""Exemplars on the query latency histogram: the request id (and the trace id of the caller's
OpenTelemetry span) of an observation, served in OpenMetrics when the scraper asks for it.
Multiprocess mode drops them (prometheus_client keeps values only in its mmap files): pinned."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import urllib.request

from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from prometheus_client.exposition import generate_latest

from m2_3_monitoring import monitored_query, request_context, start_metrics_server

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPENMETRICS = "application/openmetrics-text; version=1.0.0; charset=utf-8"


def latency_exemplars(text: str) -> list[dict]:
    """Exemplar labels of every rag_query_duration_seconds bucket in an OpenMetrics text."""
    return [dict(sample.exemplar.labels) for family in text_string_to_metric_families(text)
            if family.name == "rag_query_duration_seconds" for sample in family.samples
            if sample.exemplar is not None]


def test_the_latency_observation_carries_the_request_id(metrics, sink, registry):
    @monitored_query(operation="rag_search", metrics=metrics, request_log=sink)
    def answer(question):
        return {"answer": "42"}

    with request_context("req-spike-1"):
        answer("q")
    exemplars = latency_exemplars(openmetrics_latest(registry).decode())
    assert exemplars == [{"request_id": "req-spike-1"}]
    # the same id as the request record: the exemplar leads to `m2_3_report.py show`
    assert sink.records[0]["request_id"] == "req-spike-1"
    # the classic text format has no exemplars, and no label holds the id
    classic = generate_latest(registry).decode()
    assert "req-spike-1" not in classic


def test_a_generated_request_id_is_the_exemplar_too(metrics, sink, registry):
    @monitored_query(operation="rag_search", metrics=metrics, request_log=sink)
    def answer(question):
        return None

    answer("q")
    assert latency_exemplars(openmetrics_latest(registry).decode()) == \
        [{"request_id": sink.records[0]["request_id"]}]


def test_the_trace_id_of_the_callers_span_joins_the_exemplar(metrics, sink, registry):
    from opentelemetry.sdk.trace import TracerProvider

    tracer = TracerProvider().get_tracer("rag-test")

    @monitored_query(operation="rag_search", metrics=metrics, request_log=sink)
    def answer(question):
        return None

    with tracer.start_as_current_span("handle") as span:
        with request_context("req-traced"):
            answer("q")
        trace_id = format(span.get_span_context().trace_id, "032x")
    assert latency_exemplars(openmetrics_latest(registry).decode()) == \
        [{"request_id": "req-traced", "trace_id": trace_id}]


def test_an_id_too_long_for_an_exemplar_is_left_out_and_nothing_breaks(metrics, sink, registry):
    @monitored_query(operation="rag_search", metrics=metrics, request_log=sink)
    def answer(question):
        return "ok"

    with request_context("r" * 200):
        assert answer("q") == "ok"
    assert registry.get_sample_value("rag_query_duration_seconds_count", {"operation": "rag_search"}) == 1
    assert registry.get_sample_value("rag_instrumentation_errors_total", {"reason": "recording"}) in (None, 0)
    assert latency_exemplars(openmetrics_latest(registry).decode()) == []


def test_metrics_endpoint_serves_openmetrics_with_exemplars_when_asked(metrics, sink, registry):
    @monitored_query(operation="rag_search", metrics=metrics, request_log=sink)
    def answer(question):
        return None

    with request_context("req-http"):
        answer("q")
    server = start_metrics_server(port=0, registry=registry)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/metrics"
        request = urllib.request.Request(url, headers={"Accept": OPENMETRICS})
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.headers["Content-Type"].startswith("application/openmetrics-text")
            assert latency_exemplars(response.read().decode()) == [{"request_id": "req-http"}]
        with urllib.request.urlopen(url, timeout=5) as response:  # a classic scraper
            assert response.headers["Content-Type"].startswith("text/plain")
            assert "req-http" not in response.read().decode()
    finally:
        server.shutdown()
        server.server_close()


def test_multiprocess_mode_counts_the_observation_but_drops_its_exemplar(tmp_path):
    """prometheus_client stores values only in PROMETHEUS_MULTIPROC_DIR's files; exemplars are
    lost there. If a release starts keeping them, this test fails and docs/metrics.md changes."""
    script = textwrap.dedent("""
        import json
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector
        from prometheus_client.openmetrics.exposition import generate_latest
        from ragmon.instrument.catalog import RAGMetrics
        from ragmon.instrument.context import request_context
        from ragmon import monitored_query
        from ragmon.settings import load_settings
        import os

        settings = load_settings({"MODEL_PRICES_FILE": "", "REQUEST_LOG_DESTINATION": "none",
                                  "LOG_DESTINATION": "none"}, dotenv_path=os.devnull)
        metrics = RAGMetrics(registry=CollectorRegistry(), settings=settings)

        @monitored_query(operation="rag_search", metrics=metrics, request_log=False)
        def answer(question):
            return None

        with request_context("req-worker"):
            answer("q")
        served = CollectorRegistry()
        MultiProcessCollector(served)
        print(json.dumps(generate_latest(served).decode()))
    """)
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    text = json.loads(result.stdout)
    assert 'rag_query_duration_seconds_count{operation="rag_search"} 1.0' in text
    assert latency_exemplars(text) == [] and "req-worker" not in text


def test_each_bucket_takes_a_new_exemplar_at_most_once_per_interval():
    from ragmon.instrument.exemplars import ExemplarSampler

    sampler = ExemplarSampler((0.1, 1.0), interval=1.0)
    assert sampler.due(0.05, now=100.0)           # first in bucket 0.1
    assert not sampler.due(0.07, now=100.5)       # same bucket, within the interval
    assert sampler.due(0.5, now=100.5)            # another bucket: its own clock
    assert sampler.due(3.0, now=100.5)            # the +Inf bucket too
    assert not sampler.due(0.1, now=100.99)       # the bound belongs to its bucket (le)
    assert sampler.due(0.08, now=101.0)           # the interval passed
