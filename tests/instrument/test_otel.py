"""OpenTelemetry output (OTEL_ENABLED): exported over OTLP/HTTP to a local receiver that decodes
it with the official opentelemetry-proto messages, and checked against what the Prometheus side
counted for the same queries."""
from __future__ import annotations

import subprocess
import sys

import openai
import pytest
from prometheus_client import CollectorRegistry

import ragmon
from ragmon.instrument import otel as otel_module
from ragmon.instrument.catalog import QUERY_LATENCY_BUCKETS, RAGMetrics
from ragmon.instrument.runtime import STATE, otel_flush
from ragmon.report.cli import format_request
from ragmon.settings import set_settings
from ragmon.testing import LLMTestServer
from ragmon.testing.otlp_receiver import OTLPReceiver
from tests.conftest import ListSink, make_settings

MODEL = "gpt-4o-mini"
INPUT_KINDS = ("input", "cached_input", "cache_write_5m", "cache_write_1h")


@pytest.fixture
def receiver():
    with OTLPReceiver() as running:
        yield running


@pytest.fixture
def otel_on(receiver):
    """OTel output on, sending to the receiver; turned off (flushed) before the receiver stops."""
    ragmon.configure(OTEL_ENABLED=True, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url,
                     REQUEST_LOG_DESTINATION="none", LOG_DESTINATION="none",
                     PRICE_DATABASE="none")
    assert STATE.otel is not None
    yield receiver
    ragmon.configure(OTEL_ENABLED=False, REQUEST_LOG_DESTINATION="none", LOG_DESTINATION="none")
    assert STATE.otel is None
    set_settings(None)


@pytest.fixture
def llm():
    with LLMTestServer(cached_tokens=6, cache_write_tokens=3, reasoning_tokens=5,
                       model_suffix=None) as server:
        yield server


@pytest.fixture
def catalog():
    return RAGMetrics(registry=CollectorRegistry(), settings=make_settings())


def client_for(llm, catalog, stage=None):
    client = openai.OpenAI(base_url=llm.openai_base_url, api_key="test", max_retries=0)
    return ragmon.instrument_openai(client, metrics=catalog, stage=stage)


def prometheus_tokens(catalog) -> dict:
    found = {}
    for family in catalog.registry.collect():
        for sample in family.samples:
            if sample.name == "rag_tokens_total":
                kind = sample.labels["token_type"]
                found[kind] = found.get(kind, 0) + sample.value
            elif sample.name == "rag_reasoning_tokens_total":
                found["reasoning"] = found.get("reasoning", 0) + sample.value
    return found


def prometheus_queries(catalog) -> dict:
    found = {}
    for family in catalog.registry.collect():
        for sample in family.samples:
            if sample.name == "rag_queries_total" and sample.value:
                status = sample.labels["status"]
                found[status] = found.get(status, 0) + sample.value
    return found


def run_mixed_traffic(llm, catalog, sink):
    """Every way an LLM call reaches the library: an instrumented client (plain and streamed,
    inside a stage), a returned SDK object, record_tokens inside and outside a query, a
    returned dict, an instrumented call outside any query, and a failing query."""
    client = client_for(llm, catalog)
    plain = openai.OpenAI(base_url=llm.openai_base_url, api_key="test", max_retries=0)
    messages = [{"role": "user", "content": "Which city is the capital of France"}]

    @ragmon.monitored_query("answer", model=MODEL, metrics=catalog, request_log=sink)
    def answer(question):
        with ragmon.stage("retrieval"):
            pass
        with ragmon.stage("generation"):
            reply = client.chat.completions.create(model=MODEL, messages=messages)
        stream = client.chat.completions.create(model=MODEL, messages=messages, stream=True,
                                                stream_options={"include_usage": True})
        for _chunk in stream:
            pass
        ragmon.record_tokens(input_tokens=120, output_tokens=30, cached_input_tokens=20,
                             model=MODEL)
        return reply.choices[0].message.content

    @ragmon.monitored_query("returned", model=MODEL, metrics=catalog, request_log=sink)
    def returned():
        return plain.chat.completions.create(model=MODEL, messages=messages)

    @ragmon.monitored_query("by_hand", model=MODEL, metrics=catalog, request_log=sink)
    def by_hand():
        return {"answer": "Paris", "input_tokens": 50, "output_tokens": 7,
                "relevance_score": 0.8}

    @ragmon.monitored_query("failing", model=MODEL, metrics=catalog, request_log=sink)
    def failing():
        with ragmon.stage("retrieval"):
            raise LookupError("index unavailable")

    for _ in range(3):
        answer("q")
    returned()
    by_hand()
    with pytest.raises(LookupError):
        failing()
    ragmon.record_tokens(input_tokens=40, output_tokens=9, model=MODEL, metrics=catalog)
    client.chat.completions.create(model=MODEL, messages=messages)  # outside any query
    assert otel_flush()


def total_sum(receiver, name, **attributes) -> float:
    return sum(point.sum for found, point in receiver.points(name)
               if all(found.get(k) == v for k, v in attributes.items()))


def total_count(receiver, name, **attributes) -> int:
    return sum(point.count for found, point in receiver.points(name)
               if all(found.get(k) == v for k, v in attributes.items()))


def test_genai_metrics_agree_with_the_prometheus_counts(otel_on, llm, catalog):
    receiver = otel_on
    sink = ListSink()
    run_mixed_traffic(llm, catalog, sink)
    prom = prometheus_tokens(catalog)
    assert prom["cached_input"] and prom["cache_write_5m"] and prom["reasoning"]

    # gen_ai.client.token.usage: input is the whole prompt, output the whole completion.
    assert total_sum(receiver, "gen_ai.client.token.usage", **{"gen_ai.token.type": "input"}) \
        == sum(prom.get(kind, 0) for kind in INPUT_KINDS)
    assert total_sum(receiver, "gen_ai.client.token.usage", **{"gen_ai.token.type": "output"}) \
        == prom["output"]
    # rag.tokens: the library's own kinds, exactly as rag_tokens_total.
    rag_tokens = {}
    for found, point in receiver.points("rag.tokens"):
        kind = found["rag.token.type"]
        rag_tokens[kind] = rag_tokens.get(kind, 0) + point.as_int
    assert rag_tokens == {kind: value for kind, value in prom.items()
                          if kind != "reasoning" and value}
    assert sum(p.as_int for _, p in receiver.points("rag.reasoning_tokens")) == prom["reasoning"]

    # Queries: the duration histogram's counts are rag_queries_total, by status.
    queries = prometheus_queries(catalog)
    assert queries == {"success": 5, "error": 1}
    assert total_count(receiver, "rag.query.duration", **{"rag.status": "success"}) == 5
    assert total_count(receiver, "rag.query.duration", **{"rag.status": "error"}) == 1
    errors = [found for found, _ in receiver.points("rag.query.duration")
              if found["rag.status"] == "error"]
    assert errors == [{"rag.operation": "failing", "rag.status": "error",
                       "error.type": "LookupError"}]
    # The spend, inside queries and outside them, is rag_spend_dollars_total.
    spend = sum(s.value for f in catalog.registry.collect() for s in f.samples
                if s.name == "rag_spend_dollars_total")
    assert sum(p.as_double for _, p in receiver.points("rag.spend")) == pytest.approx(spend)
    query_spend = sum(r["cost"] for r in sink.records if r["cost"])
    assert total_sum(receiver, "rag.query.cost") == pytest.approx(query_spend)

    # Names, units, bucket boundaries and required attributes, per the GenAI conventions.
    metrics = {metric.name: metric for _, metric in receiver.metrics()}
    assert metrics["gen_ai.client.token.usage"].unit == "{token}"
    assert metrics["gen_ai.client.operation.duration"].unit == "s"
    assert metrics["gen_ai.client.operation.time_to_first_chunk"].unit == "s"
    assert metrics["gen_ai.client.operation.time_per_output_chunk"].unit == "s"
    assert metrics["rag.query.duration"].unit == "s"
    for found, point in receiver.points("gen_ai.client.token.usage"):
        assert list(point.explicit_bounds) == list(otel_module.TOKEN_USAGE_BUCKETS)
        assert found["gen_ai.operation.name"] == "chat"
        assert found["gen_ai.token.type"] in ("input", "output")
        assert found["gen_ai.request.model"] == MODEL
    for found, point in receiver.points("gen_ai.client.operation.duration"):
        assert list(point.explicit_bounds) == list(otel_module.OPERATION_DURATION_BUCKETS)
        assert found == {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                         "gen_ai.request.model": MODEL, "gen_ai.response.model": MODEL}
    for _, point in receiver.points("rag.query.duration"):
        assert list(point.explicit_bounds) == [float(b) for b in QUERY_LATENCY_BUCKETS]
    # One operation duration per instrumented call (3 plain + 3 streamed + 1 outside a query),
    # one first-chunk time per streamed call, and one gap per streamed chunk after the first.
    assert total_count(receiver, "gen_ai.client.operation.duration") == 7
    assert total_count(receiver, "gen_ai.client.operation.time_to_first_chunk") == 3
    assert total_count(receiver, "gen_ai.client.operation.time_per_output_chunk") > 0
    assert total_count(receiver, "rag.stage.duration", **{"rag.stage": "retrieval"}) == 4
    assert total_sum(receiver, "rag.quality.score") == pytest.approx(0.8)
    resource = receiver.metrics()[0][0]
    assert resource["service.name"] == "rag-service"
    assert len(resource["service.instance.id"]) == 36


def test_a_query_is_a_span_tree_and_its_record_names_it(otel_on, llm, catalog):
    receiver = otel_on
    sink = ListSink()
    run_mixed_traffic(llm, catalog, sink)
    spans = [span for _, span in receiver.spans()]
    by_id = {span.span_id: span for span in spans}
    queries = [span for span in spans if span.name == "rag.query answer"]
    assert len(queries) == 3
    record = next(r for r in sink.records if r["operation"] == "answer")
    query = next(span for span in queries if span.span_id.hex() == record["span_id"])
    assert query.trace_id.hex() == record["trace_id"] and not query.parent_span_id
    attributes = {a.key: a.value for a in query.attributes}
    assert attributes["rag.request_id"].string_value == record["request_id"]
    assert attributes["rag.status"].string_value == "success"
    assert attributes["rag.cost_usd"].double_value == pytest.approx(record["cost"])
    assert attributes["rag.usage.cached_input"].int_value == record["tokens"]["cached_input"]
    assert attributes["gen_ai.usage.input_tokens"].int_value == sum(
        record["tokens"][kind] for kind in INPUT_KINDS)
    children = [span for span in spans if span.parent_span_id == query.span_id]
    assert sorted(span.name for span in children) == [
        "chat gpt-4o-mini", "rag.stage generation", "rag.stage retrieval"]
    generation = next(span for span in children if span.name == "rag.stage generation")
    in_stage = [span for span in spans if span.parent_span_id == generation.span_id]
    assert [span.name for span in in_stage] == ["chat gpt-4o-mini"]
    call = {a.key: a.value for a in in_stage[0].attributes}
    assert call["gen_ai.provider.name"].string_value == "openai"
    assert call["gen_ai.usage.cache_read.input_tokens"].int_value == 6
    assert call["gen_ai.usage.reasoning.output_tokens"].int_value == 5
    for child in children + in_stage:
        assert query.start_time_unix_nano <= child.start_time_unix_nano
        assert child.end_time_unix_nano <= query.end_time_unix_nano
    failing = next(span for span in spans if span.name == "rag.query failing")
    assert failing.status.code == failing.status.STATUS_CODE_ERROR
    assert all(span.trace_id == by_id[span.parent_span_id].trace_id
               for span in spans if span.parent_span_id in by_id)
    assert "trace      " + record["trace_id"] in format_request(record)


def test_the_rag_span_joins_the_callers_trace(otel_on, catalog):
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider

    sink = ListSink()

    @ragmon.monitored_query("inner", metrics=catalog, request_log=sink)
    def inner():
        return "ok"

    host = TracerProvider().get_tracer("host")
    with host.start_as_current_span("host request") as parent:
        inner()
        parent_context = parent.get_span_context()
    assert trace.get_current_span() is trace.INVALID_SPAN
    otel_flush()
    span = next(span for _, span in otel_on.spans() if span.name == "rag.query inner")
    assert span.trace_id == parent_context.trace_id.to_bytes(16, "big")
    assert span.parent_span_id == parent_context.span_id.to_bytes(8, "big")
    assert sink.records[0]["trace_id"] == format(parent_context.trace_id, "032x")


def test_records_have_no_trace_fields_when_off(catalog):
    sink = ListSink()
    assert STATE.otel is None

    @ragmon.monitored_query("plain", metrics=catalog, request_log=sink)
    def plain():
        return "ok"

    plain()
    assert "trace_id" not in sink.records[0] and "span_id" not in sink.records[0]
    assert "trace      " not in format_request(sink.records[0])


OFF_CHECK = """
import sys, ragmon
from ragmon.testing import LLMTestServer
import openai
@ragmon.monitored_query("q", model="gpt-4o-mini")
def q():
    with ragmon.stage("retrieval"):
        pass
    ragmon.record_tokens(input_tokens=10, output_tokens=2)
    return "ok"
q()
ragmon.record_tokens(input_tokens=1, output_tokens=1, model="gpt-4o-mini")
print(sorted(name for name in sys.modules if name.startswith("opentelemetry")))
"""


def test_off_no_opentelemetry_module_is_imported(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "REQUEST_LOG_DESTINATION": "none", "PRICE_DATABASE": "none"}
    out = subprocess.run([sys.executable, "-c", OFF_CHECK], capture_output=True, text=True,
                         cwd=tmp_path, env=env, check=True).stdout
    assert out.strip() == "[]"
    env["OTEL_ENABLED"] = "true"
    env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"  # nothing listens: export fails
    env["OTEL_METRIC_EXPORT_INTERVAL"] = "600000"
    env["OTEL_EXPORTER_OTLP_TIMEOUT"] = "1"  # the export at exit gives up quickly
    out = subprocess.run([sys.executable, "-c", OFF_CHECK], capture_output=True, text=True,
                         cwd=tmp_path, env=env, check=True, timeout=120).stdout
    assert "opentelemetry.sdk.metrics" in out


def test_a_missing_sdk_is_counted_not_raised(monkeypatch, catalog):
    import builtins
    real_import = builtins.__import__

    def without_otel(name, *args, **kwargs):
        if name.startswith("opentelemetry"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    from ragmon.instrument.runtime import default_metrics
    default_metrics()
    monkeypatch.delitem(sys.modules, "ragmon.instrument.otel")
    monkeypatch.setattr(builtins, "__import__", without_otel)
    ragmon.configure(OTEL_ENABLED=True, REQUEST_LOG_DESTINATION="none")
    try:
        assert STATE.otel is None
        errors = default_metrics().registry.get_sample_value(
            "rag_instrumentation_errors_total", {"reason": "otel"})
        assert errors and errors >= 1
    finally:
        monkeypatch.undo()
        ragmon.configure(OTEL_ENABLED=False, REQUEST_LOG_DESTINATION="none")
        set_settings(None)


def test_the_requested_and_the_answering_model_are_told_apart(otel_on, catalog):
    with LLMTestServer() as dated:  # answers as gpt-4o-mini-2024-07-18, as OpenAI does
        client = client_for(dated, catalog, stage="generation")
        messages = [{"role": "user", "content": "hello"}]

        @ragmon.monitored_query("dated", metrics=catalog, request_log=False)
        def ask():
            client.chat.completions.create(model=MODEL, messages=messages)
            for _chunk in client.chat.completions.create(
                    model=MODEL, messages=messages, stream=True,
                    stream_options={"include_usage": True}):
                pass

        ask()
        assert otel_flush()
    found = {(a["gen_ai.request.model"], a["gen_ai.response.model"])
             for a, _ in otel_on.points("gen_ai.client.token.usage")}
    assert len(found) == 1 and next(iter(found))[0] == MODEL, found
    assert next(iter(found))[1].startswith(MODEL + "-"), found
    spans = [span for _, span in otel_on.spans()]
    generation = [s for s in spans if s.name == "rag.stage generation"]
    calls = [s for s in spans if s.name == "chat gpt-4o-mini"]
    assert len(generation) == 2 and len(calls) == 2
    assert {c.parent_span_id for c in calls} == {g.span_id for g in generation}


def test_a_failed_call_carries_its_error_type_on_duration_and_span(otel_on, llm, catalog):
    client = client_for(llm, catalog)
    llm.fail_next(429)

    @ragmon.monitored_query("limited", model=MODEL, metrics=catalog, request_log=False)
    def ask():
        return client.chat.completions.create(model=MODEL, messages=[{"role": "user",
                                                                      "content": "hi"}])

    with pytest.raises(openai.RateLimitError):
        ask()
    assert otel_flush()
    durations = [found for found, _ in otel_on.points("gen_ai.client.operation.duration")]
    assert durations == [{"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai",
                          "gen_ai.request.model": MODEL, "error.type": "RateLimitError"}]
    assert catalog.registry.get_sample_value(
        "rag_llm_errors_total", {"provider": "openai", "error_type": "RateLimitError"}) == 1
    spans = {span.name: span for _, span in otel_on.spans()}
    call = spans["chat gpt-4o-mini"]
    assert call.status.code == call.status.STATUS_CODE_ERROR
    assert call.parent_span_id == spans["rag.query limited"].span_id
    assert not otel_on.points("gen_ai.client.token.usage")


def test_named_scores_are_quality_scores(otel_on, catalog):
    @ragmon.monitored_query("judged", metrics=catalog, request_log=ListSink())
    def judged():
        ragmon.record_scores(faithfulness=0.9, answer_relevance=0.6)
        return {"answer": "ok", "relevance_score": 0.7}

    judged()
    assert otel_flush()
    found = {a["rag.score.name"]: p.sum for a, p in otel_on.points("rag.quality.score")}
    assert found == {"faithfulness": 0.9, "answer_relevance": 0.6, "relevance_score": 0.7}
