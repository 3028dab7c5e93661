"""Caller-supplied label values cannot silence /metrics, blow up the series count or memory."""
import json
import subprocess
import tracemalloc
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from ragmon.checks import MAX_LABEL_LENGTH
from ragmon.instrument.catalog import OTHER, RAGMetrics
from ragmon import (monitored_query, record_tokens, stage, track_cache_operation,
                                         track_rate_limit)
from ragmon.instrument.server import start_metrics_server
from tests.conftest import ListSink, make_settings, require_binaries

LONE_SURROGATE = "gpt\udc80"


def promtool_check(body: bytes) -> None:
    (promtool,) = require_binaries("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=body, capture_output=True)
    assert result.returncode == 0 and not result.stdout and not result.stderr, result


def scrape(server) -> tuple[int, str]:
    port = server.server_address[1]
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        return response.status, response.read().decode("utf-8")


@pytest.mark.parametrize("where", ["model", "stage", "cache_type", "provider", "operation",
                                  "returned_model", "error_type"])
def test_a_lone_surrogate_anywhere_leaves_metrics_renderable(metrics, where):
    bad = LONE_SURROGATE + "\x00\n\u2028"

    @monitored_query(bad if where == "operation" else "op",
                     model=bad if where == "model" else "gpt", metrics=metrics, request_log=False)
    def query():
        if where == "stage":
            with stage(bad):
                pass
        if where == "cache_type":
            track_cache_operation(True, bad, metrics=metrics)
        if where == "provider":
            track_rate_limit(bad, remaining_requests=3, metrics=metrics)
        if where == "error_type":  # class names cannot hold surrogates, but newlines and length
            raise type("Bad\n\u2028Error" + "x" * 500, (Exception,), {})()
        return {"input_tokens": 5, **({"model": bad} if where == "returned_model" else {})}

    try:
        query()
    except Exception as exc:
        assert where == "error_type" and type(exc).__name__.startswith("Bad\n")
    body = generate_latest(metrics.registry)  # raised UnicodeEncodeError before values were made safe
    promtool_check(body)
    text = body.decode("utf-8")
    assert "\ufffd" in text and "\u2028" not in text


def test_metrics_endpoint_serves_every_other_family_when_one_fails_and_counts_it():
    registry = CollectorRegistry()
    metrics = RAGMetrics(registry=registry, settings=make_settings())
    metrics.queries.labels("op", "success").inc()

    class Broken:
        def collect(self):
            raise RuntimeError("a custom collector fails")

    class Unencodable:
        def collect(self):
            family = GaugeMetricFamily("app_thing", "x", labels=["name"])
            family.add_metric([LONE_SURROGATE], 1)  # bypasses our label guard
            yield family

    registry.register(Broken())
    registry.register(Unencodable())
    server = start_metrics_server(port=0, registry=registry)
    try:
        status, body = scrape(server)
    finally:
        server.shutdown()
        server.server_close()
    assert status == 200
    families = {f.name for f in text_string_to_metric_families(body)}
    assert "rag_queries" in families and "app_thing" not in families
    assert registry.get_sample_value("rag_instrumentation_errors_total", {"reason": "exposition"}) == 2


def test_series_budget_bounds_each_metric_and_keeps_totals(registry):
    m = RAGMetrics(registry=registry, settings=make_settings(MAX_SERIES_PER_METRIC=50,
                                                             MAX_SERIES_PER_HISTOGRAM=50))
    for op in range(20):
        for status in ("success", "error"):
            for _ in range(3):
                m.queries.labels(f"op{op}", status).inc()
    for op in range(20):
        for name in range(20):
            m.stage_latency.labels(f"op{op}", f"stage{name}").observe(0.1)
    stage_series = {tuple(s.labels.values()) for f in registry.collect()
                    if f.name == "rag_stage_duration_seconds" for s in f.samples
                    if s.name.endswith("_count")}
    assert len(stage_series) == 51  # the budget plus the one overflow series
    assert registry.get_sample_value("rag_stage_duration_seconds_count",
                                     {"operation": OTHER, "stage": OTHER}) == 400 - 50
    # status is a fixed vocabulary: the overflow keeps it, so the error ratio stays right
    total = sum(s.value for f in registry.collect() if f.name == "rag_queries"
                for s in f.samples if s.name == "rag_queries_total")
    errors = sum(s.value for f in registry.collect() if f.name == "rag_queries"
                 for s in f.samples if s.name == "rag_queries_total" and s.labels["status"] == "error")
    assert (total, errors) == (120, 60)
    assert registry.get_sample_value("rag_label_overflow_total",
                                     {"metric": "rag_stage_duration_seconds", "label": "operation+stage"}) == 350


def test_series_budget_is_configurable_per_metric(registry):
    m = RAGMetrics(registry=registry, settings=make_settings(SERIES_LIMITS="rag_tokens_total=4"))
    for model in range(5):
        m.tokens.labels(f"m{model}", "input").inc()
        m.spend.labels(f"m{model}").inc()
    assert registry.get_sample_value("rag_tokens_total", {"model": "m4", "token_type": "input"}) is None
    assert registry.get_sample_value("rag_tokens_total", {"model": OTHER, "token_type": "input"}) == 1
    assert registry.get_sample_value("rag_spend_dollars_total", {"model": "m4"}) == 1


def test_no_child_exists_for_a_series_with_nothing_to_report(metrics):
    @monitored_query("op", model="gpt", metrics=metrics, request_log=False)
    def query():
        return {"input_tokens": 5}  # no stream, no scores, no cached tokens

    query()
    names = {s.name for f in metrics.registry.collect() for s in f.samples}
    assert "rag_tokens_total" in names
    for never_observed in ("rag_time_to_first_token_seconds_count", "rag_relevance_score_count",
                           "rag_context_precision_count"):
        assert never_observed not in names
    assert metrics.registry.get_sample_value(
        "rag_tokens_total", {"model": "gpt", "token_type": "cached_input"}) is None


def test_worst_case_cardinality_stays_within_the_default_budgets(registry):
    m = RAGMetrics(registry=registry, settings=make_settings())
    for op in range(30):
        @monitored_query(f"op{op}", metrics=m, request_log=False)
        def query(model):
            for name in range(40):
                with stage(f"stage{name}"):
                    pass
            return {"model": model, "input_tokens": 1}
        for model in range(40):
            query(f"model{model}")
    per_metric = {}
    for family in registry.collect():
        combos = {tuple(sorted((k, v) for k, v in s.labels.items() if k != "le")) for s in family.samples}
        per_metric[family.name] = len(combos)
    assert per_metric["rag_stage_duration_seconds"] <= 250 + 1
    assert max(per_metric.values()) <= 1000 + 3


def test_long_and_many_values_do_not_grow_memory_without_bound(registry):
    m = RAGMetrics(registry=registry, settings=make_settings())

    @monitored_query("op", metrics=m, request_log=False)
    def query(model):
        with stage(model):
            pass
        track_cache_operation(True, model, metrics=m)
        return {"model": model, "input_tokens": 1}

    tracemalloc.start()
    for i in range(10_000):
        query(f"{i:05d}" + "x" * 10_000)
    held, _peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    # 10,000 distinct 10 KB names kept raw would hold 100 MB (the finding: 498 MB for 50,000);
    # capped values in count-bounded caches hold a few MB whatever the number of names
    assert held < 12_000_000, held
    from ragmon.instrument.catalog import CHILD_CACHE_SIZE
    inst = query.__monitoring__
    for cache in (inst.by_model, inst.stages, m.child_cache):
        assert len(cache) <= CHILD_CACHE_SIZE and all(
            len(part) <= MAX_LABEL_LENGTH for key in cache for part in
            (key if isinstance(key, tuple) else (key,)) if isinstance(part, str))
    labels = {v for f in registry.collect() for s in f.samples for v in s.labels.values()}
    assert max(len(v) for v in labels) <= MAX_LABEL_LENGTH


def test_absurd_token_counts_are_counted_dropped_from_metrics_and_kept_in_the_record(metrics):
    sink = ListSink()

    @monitored_query("op", model="gpt", metrics=metrics, request_log=sink)
    def query():
        return {"input_tokens": 10**30, "output_tokens": 10}

    query()
    spend = metrics.registry.get_sample_value("rag_spend_dollars_total", {"model": "gpt"})
    assert spend is not None and spend < 1
    assert metrics.registry.get_sample_value("rag_tokens_total", {"model": "gpt", "token_type": "input"}) is None
    assert metrics.registry.get_sample_value("rag_instrumentation_errors_total", {"reason": "out_of_bounds"}) == 1
    (record,) = sink.records
    assert record["out_of_bounds"] == {"input_tokens": 10**30}
    assert record["tokens"]["input"] == 0 and record["tokens"]["output"] == 10
    from ragmon.instrument.records import encode
    assert json.loads(encode(record))["out_of_bounds"]["input_tokens"] == 10**30


def test_record_tokens_outside_a_query_drops_out_of_bound_counts(metrics):
    assert record_tokens(10**30, model="gpt", metrics=metrics) in (0.0, None)
    assert metrics.registry.get_sample_value("rag_spend_dollars_total", {"model": "gpt"}) in (None, 0.0)
    assert metrics.registry.get_sample_value("rag_instrumentation_errors_total", {"reason": "out_of_bounds"}) == 1


def test_the_report_reads_records_of_queries_that_passed_lone_surrogates(tmp_path, metrics):
    import io

    from ragmon.instrument.records import DailyFileSink
    from ragmon.report.cli import main

    sink = DailyFileSink(tmp_path)

    @monitored_query("op" + LONE_SURROGATE, metrics=metrics, request_log=sink)
    def query():
        with stage("retrieval" + LONE_SURROGATE, note=LONE_SURROGATE):
            pass
        return {"input_tokens": 10, "model": LONE_SURROGATE}

    for _ in range(3):
        query()
    raw = b"".join(path.read_bytes() for path in tmp_path.iterdir())
    assert b"\\udc80" not in raw.lower() and json.loads(raw.splitlines()[0])["model"] == "gpt\ufffd"
    out, err = io.StringIO(), io.StringIO()
    assert main(["report", "--log-dir", str(tmp_path), "--hours", "1", "--format", "json"],
                out=out, err=err) == 0, err.getvalue()
    assert json.loads(out.getvalue())
