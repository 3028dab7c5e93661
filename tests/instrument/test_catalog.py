import logging
import re
import subprocess

import pytest
from prometheus_client import generate_latest

from ragmon.instrument.catalog import OTHER, RAGMetrics
from tests.conftest import make_settings


def test_every_metric_has_the_prefix_and_unit_conventions(metrics):
    for name in metrics.exposed_series_names():
        assert re.fullmatch(r"rag_[a-z0-9_]+", name), name
    names = metrics.exposed_series_names()
    assert "rag_query_duration_seconds_bucket" in names
    assert "rag_spend_dollars_total" in names and "rag_queries_total" in names


def test_query_latency_works_as_in_the_seed(metrics):
    with metrics.query_latency.labels(operation="search").time():
        pass
    assert metrics.registry.get_sample_value("rag_query_duration_seconds_count", {"operation": "search"}) == 1


def test_query_latency_buckets_reach_a_minute_and_include_the_alert_threshold(metrics):
    buckets = metrics.query_latency.metric._upper_bounds
    assert 2.0 in buckets and max(b for b in buckets if b != float("inf")) >= 60


def test_label_values_past_the_limit_become_other_and_are_counted_once_warned(registry, caplog):
    m = RAGMetrics(registry=registry, settings=make_settings(MAX_LABEL_VALUES=3))
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        for user in range(10):
            m.errors.labels(operation="op", error_type=f"E{user}").inc()
    values = {s.labels["error_type"] for f in registry.collect() if f.name == "rag_errors"
              for s in f.samples if s.name == "rag_errors_total"}
    assert values == {"E0", "E1", "E2", OTHER}
    assert registry.get_sample_value("rag_errors_total", {"operation": "op", "error_type": OTHER}) == 7
    assert registry.get_sample_value("rag_label_overflow_total", {"metric": "rag_errors_total", "label": "error_type"}) == 7
    warnings = [r for r in caplog.records if "passed its limit" in r.getMessage()]
    assert len(warnings) == 1


def test_per_metric_limits_override_the_default(registry):
    m = RAGMetrics(registry=registry, settings=make_settings(LABEL_LIMITS="rag_tokens_total=2"))
    for model in ("a", "b", "c"):
        m.tokens.labels(model, "input").inc()
        m.spend.labels(model).inc()
    assert registry.get_sample_value("rag_tokens_total", {"model": "c", "token_type": "input"}) is None
    assert registry.get_sample_value("rag_spend_dollars_total", {"model": "c"}) == 1


def test_wrong_label_names_give_a_clear_error(metrics):
    with pytest.raises(ValueError, match=r"takes labels \['operation'\]"):
        metrics.query_latency.labels(user_id="alice")


def test_two_catalogs_in_one_registry_collide_loudly(registry, settings):
    RAGMetrics(registry=registry, settings=settings)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        RAGMetrics(registry=registry, settings=settings)


def test_promtool_check_metrics_prints_nothing_for_a_populated_catalog(metrics):
    m = metrics
    m.query_latency.labels("q").observe(1)
    m.stage_latency.labels("q", "retrieval").observe(0.1)
    m.time_to_first_token.labels("q", "gpt").observe(0.2)
    m.queries.labels("q", "success").inc()
    m.errors.labels("q", "TimeoutError").inc()
    m.tokens.labels("gpt", "input").inc(5)
    m.query_cost.labels("gpt").observe(0.01)
    m.spend.labels("gpt").inc(0.01)
    m.relevance.labels("q").observe(0.9)
    m.context_precision.labels("q").observe(0.7)
    m.cache_operations.labels("semantic", "hit").inc()
    m.in_flight.labels("q").set(1)
    m.rate_limit_requests.labels("openai").set(10)
    m.rate_limit_tokens.labels("openai").set(10)
    m.count_instrumentation_error("recording")
    m.label_overflow.labels("x", "y").inc()
    m.unknown_model.inc()
    m.service_info.labels("svc", "dev").set(1)
    m.tokens.labels("gpt", "cache_write_1h").inc(5)
    m.reasoning_tokens.labels("gpt").inc(2)
    m.partial_usage.labels("gpt").inc()
    m.rate_limit_reset.labels("openai", "requests").set(1.8e9)
    m.llm_errors.labels("openai", "RateLimitError").inc()
    m.unreadable_responses.labels("stream_without_usage").inc()
    m.http_requests.labels("GET", "/items/{item_id}", "2xx").inc()
    m.http_latency.labels("GET", "/items/{item_id}").observe(0.1)
    m.http_stream.labels("POST", "/ask/stream").observe(1.5)
    result = subprocess.run(["/usr/bin/promtool", "check", "metrics"], input=generate_latest(m.registry),
                            capture_output=True)
    assert result.stdout == b"" and result.stderr == b"", (result.stdout, result.stderr)
    assert result.returncode == 0


def test_fifty_thousand_unknown_models_write_a_bounded_number_of_warnings(metrics, caplog):
    now = [0.0]
    metrics.warnings.clock = lambda: now[0]  # a frozen clock: the count cannot depend on speed
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        for n in range(50_000):
            metrics.calculate_cost(input_tokens=1, model=f"my-model-{n}")
        burst = [r.getMessage() for r in caplog.records if "not in the price table" in r.getMessage()]
        assert len(burst) == metrics.warnings.burst
        assert metrics.registry.get_sample_value("rag_unknown_model_total") == 50_000
        now[0] += 60.0
        caplog.clear()
        metrics.calculate_cost(input_tokens=1, model="one-more-model")
    (later,) = [r.getMessage() for r in caplog.records]
    left_out = 50_000 - metrics.warnings.burst
    assert "one-more-model" in later and f"{left_out} more warning(s)" in later
    assert len(caplog.records) == 1  # no other warning per value, either


def test_a_model_is_warned_about_once_and_warnings_are_redacted(metrics, caplog):
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        for _ in range(3):
            metrics.calculate_cost(input_tokens=1, model="ft:sk-proj-abcdefghijklmnop1234")
    assert len(caplog.records) == 1 and "sk-proj-abcdefghijklmnop1234" not in caplog.text
