"""The real google-genai SDK against the local server: cached content inside the prompt count,
thinking tokens beside the candidates' (billed as output), streams, the async client, errors."""
from __future__ import annotations

import asyncio

import pytest
from google import genai
from google.genai import errors as genai_errors
from prometheus_client import CollectorRegistry

import ragmon
from ragmon import monitored_query
from ragmon.instrument.catalog import RAGMetrics
from ragmon.instrument.pricing import ModelPrice, PriceTable
from tests.conftest import ListSink
from tests.instrument.sdk_helpers import PROMPT, metric_tokens, only_model, unreadable
from ragmon.testing import LLMTestServer

MODEL = "gemini-2.5-flash"
PRICE = ModelPrice(0.0003, 0.0025, 0.00003)  # dollars per 1K: input, output, cached input


@pytest.fixture
def server():
    with LLMTestServer(cached_tokens=1200, reasoning_tokens=40) as running:
        yield running


@pytest.fixture
def priced():
    return RAGMetrics(registry=CollectorRegistry(),
                      price_table=PriceTable(ModelPrice(1.0, 1.0, 1.0), {MODEL: PRICE}))


@pytest.fixture
def records():
    return ListSink()


def client_for(server, metrics, instrument=True):
    client = genai.Client(api_key="test", http_options={"base_url": server.gemini_base_url})
    return ragmon.instrument_gemini(client, metrics=metrics) if instrument else client


def billed_cost(billed: dict) -> float:
    return (billed["input"] * PRICE.input + billed["cached_input"] * PRICE.cached_input
            + billed["output"] * PRICE.output) / 1000


def assert_billed(metrics, server, record=None):
    model, billed = only_model(server)
    kinds = ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning")
    want = {kind: billed[kind] for kind in kinds}
    assert want["cached_input"] and want["reasoning"]  # the test exercises both
    assert metric_tokens(metrics, model) == want
    spend = metrics.registry.get_sample_value("rag_spend_dollars_total", {"model": model})
    assert spend == pytest.approx(billed_cost(billed), rel=1e-9)
    if record is not None:
        assert record["model"] == model
        assert {kind: record["tokens"].get(kind, 0) for kind in kinds} == want
        assert record["cost"] == pytest.approx(billed_cost(billed), rel=1e-9)
        assert record["pricing"]["provider"] == "gemini"
    assert not unreadable(metrics)


def returns_text(client):
    return lambda: client.models.generate_content(model=MODEL, contents=PROMPT).text, None


def returns_response(client):
    return lambda: client.models.generate_content(model=MODEL, contents=PROMPT), None


def yields_stream_text(client):
    def answer():
        for chunk in client.models.generate_content_stream(model=MODEL, contents=PROMPT):
            yield chunk.text
    return answer, "".join


def yields_stream_chunks(client):
    def answer():
        yield from client.models.generate_content_stream(model=MODEL, contents=PROMPT)
    return answer, list


def run(way, client, metrics, records):
    fn, consume = way(client)
    result = monitored_query("answer", model=MODEL, metrics=metrics, request_log=records)(fn)()
    if consume is not None:
        result = consume(result)
    assert len(records.records) == 1
    return result, records.records[0]


@pytest.mark.parametrize("way", [returns_text, returns_response, yields_stream_text,
                                 yields_stream_chunks], ids=lambda w: w.__name__)
def test_an_instrumented_client_records_exactly_what_was_billed(way, server, priced, records):
    result, record = run(way, client_for(server, priced), priced, records)
    assert result
    assert_billed(priced, server, record)


@pytest.mark.parametrize("way", [returns_response, yields_stream_chunks],
                         ids=lambda w: w.__name__)
def test_the_decorator_alone_reads_what_the_sdk_returns(way, server, priced, records):
    run(way, client_for(server, priced, instrument=False), priced, records)
    assert_billed(priced, server, records.records[0])


def test_record_tokens_reads_a_response_and_its_wire_json(server, priced):
    client = client_for(server, priced, instrument=False)
    response = client.models.generate_content(model=MODEL, contents=PROMPT)
    ragmon.record_tokens(response, metrics=priced)
    ragmon.record_tokens(response.model_dump(mode="json", by_alias=True), metrics=priced)
    model, billed = only_model(server)
    assert metric_tokens(priced, model)["cached_input"] == 2 * billed["cached_input"]
    assert metric_tokens(priced, model)["reasoning"] == 2 * billed["reasoning"]


def test_the_async_client_text_and_stream(server, priced, records):
    client = client_for(server, priced)

    @monitored_query("answer", model=MODEL, metrics=priced, request_log=records)
    async def answer():
        first = await client.aio.models.generate_content(model=MODEL, contents=PROMPT)
        parts = [chunk.text async for chunk in
                 await client.aio.models.generate_content_stream(model=MODEL, contents=PROMPT)]
        return first.text + "".join(parts)

    assert asyncio.run(answer())
    assert_billed(priced, server, records.records[0])
    assert server.billed()[MODEL]["requests"] == 2


def test_calls_outside_a_query_are_counted_at_once(server, priced):
    client = client_for(server, priced)
    client.models.generate_content(model=MODEL, contents=PROMPT)
    assert_billed(priced, server)


def test_a_rate_limit_error_is_counted_as_rate_limit_error_and_raised(server, priced):
    client = client_for(server, priced)
    server.fail_next(429)
    with pytest.raises(genai_errors.ClientError):
        client.models.generate_content(model=MODEL, contents=PROMPT)
    assert priced.registry.get_sample_value(
        "rag_llm_errors_total", {"provider": "gemini", "error_type": "RateLimitError"}) == 1


def test_an_abandoned_stream_keeps_what_it_knew_and_is_marked_partial(server, priced, records):
    client = client_for(server, priced)

    @monitored_query("answer", model=MODEL, metrics=priced, request_log=records)
    def answer():
        yield from client.models.generate_content_stream(model=MODEL, contents=PROMPT)

    stream = answer()
    next(stream)
    stream.close()
    [record] = records.records
    assert record["status"] == "cancelled" and record["pricing"]["partial"] is True
    assert record["tokens"]["cached_input"] == 1200
    assert priced.registry.get_sample_value("rag_partial_usage_total", {"model": MODEL}) == 1
