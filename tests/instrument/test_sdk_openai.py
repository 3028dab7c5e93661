"""The real openai SDK against the local server: every natural way of returning an answer from a
monitored query gives the tokens and cost the server billed, priced by the answering model."""
from __future__ import annotations

import asyncio
import gc
import time

import pytest

import ragmon
from ragmon import monitored_query
from tests.instrument.sdk_helpers import (PROMPT, assert_billed_numbers, metric_tokens,  # noqa: F401
                                          only_model, openai, priced, records, server, unreadable)

MESSAGES = [{"role": "user", "content": PROMPT}]
STREAM = dict(stream=True, stream_options={"include_usage": True})


def sync_client(server, metrics, instrument=True):
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)
    return ragmon.instrument_openai(client, metrics=metrics) if instrument else client


def chat(client, **kw):
    return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **kw)


# Each way returns (monitored function, how the caller consumes its result).
def returns_text(client):
    return lambda: chat(client).choices[0].message.content, None


def returns_completion(client):
    return lambda: chat(client), None


def returns_model_dump(client):
    return lambda: chat(client).model_dump(), None


def returns_stream(client):
    return lambda: chat(client, **STREAM), list


def yields_chunks(client):
    def answer():
        yield from chat(client, **STREAM)
    return answer, list


def yields_text(client):
    def answer():
        for chunk in chat(client, **STREAM):
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content
    return answer, "".join


def returns_responses_text(client):
    return lambda: client.responses.create(model="gpt-4o-mini", input=PROMPT).output_text, None


def returns_response(client):
    return lambda: client.responses.create(model="gpt-4o-mini", input=PROMPT), None


def returns_response_dump(client):
    return lambda: client.responses.create(model="gpt-4o-mini", input=PROMPT).model_dump(), None


def returns_responses_stream(client):
    return lambda: client.responses.create(model="gpt-4o-mini", input=PROMPT, stream=True), list


def returns_raw_response(client):
    def answer():
        raw = client.chat.completions.with_raw_response.create(model="gpt-4o-mini", messages=MESSAGES)
        return raw.parse()
    return answer, None


INSTRUMENTED_WAYS = [returns_text, returns_completion, returns_model_dump, returns_stream,
                     yields_chunks, yields_text, returns_responses_text, returns_response,
                     returns_response_dump, returns_responses_stream, returns_raw_response]
# Without instrument_openai() the decorator reads what it is given: every way except those that
# return or yield only text.
PLAIN_WAYS = [returns_completion, returns_model_dump, returns_stream, yields_chunks,
              returns_response, returns_response_dump, returns_responses_stream,
              returns_raw_response]


def run(way, client, metrics, records):
    fn, consume = way(client)
    monitored = monitored_query("answer", metrics=metrics, request_log=records)(fn)
    result = monitored()
    if consume is not None:
        result = consume(result)
    assert len(records.records) == 1, "one record per query"
    return result, records.records[0]


@pytest.mark.parametrize("way", INSTRUMENTED_WAYS, ids=lambda w: w.__name__)
def test_an_instrumented_client_gives_the_billed_numbers_whatever_is_returned(way, server, priced, records):
    result, record = run(way, sync_client(server, priced), priced, records)
    assert result
    model = assert_billed_numbers(priced, server, record)
    assert model == "gpt-4o-mini-2024-07-18" and record["pricing"]["entry"] == "openai/gpt-4o-mini"
    assert record["status"] == "success"
    assert record["pricing"]["provider"] == "openai"
    stages = record["stages"]
    assert stages["generation"]["duration"] > 0


@pytest.mark.parametrize("way", PLAIN_WAYS, ids=lambda w: w.__name__)
def test_the_decorator_alone_reads_what_the_sdk_returns(way, server, priced, records):
    result, record = run(way, sync_client(server, priced, instrument=False), priced, records)
    assert result
    assert_billed_numbers(priced, server, record)


def test_text_returned_from_an_uninstrumented_client_is_not_priced_as_zero_silently(server, priced, records):
    run(returns_text, sync_client(server, priced, instrument=False), priced, records)
    record = records.records[0]
    # A string carries no usage; the record says so by having no cost, never a cost of $0.
    assert record["cost"] is None


def test_the_dated_snapshot_is_priced_as_its_model_not_the_default(server, priced, records):
    run(returns_completion, sync_client(server, priced), priced, records)
    assert priced.registry.get_sample_value("rag_unknown_model_total") == 0
    pricing = records.records[0]["pricing"]
    assert pricing["match"] == "exact" and pricing["price_id"] == "openai/gpt-4o-mini"
    assert pricing["per_1k"]["output"] == 0.0006


def test_reasoning_is_part_of_output_never_added(server, priced, records):
    run(returns_completion, sync_client(server, priced), priced, records)
    model, billed = only_model(server)
    tokens = metric_tokens(priced, model)
    assert tokens["reasoning"] == 40 and tokens["output"] == billed["output"]
    summed = sum(sample.value for family in priced.tokens.collect() for sample in family.samples
                 if sample.name == "rag_tokens_total")
    assert summed == billed["input"] + billed["cached_input"] + billed["cache_write_5m"] + billed["output"]


def warm_up(client) -> None:
    """One stream first: the SDK's first stream in a process spends a while building its chunk
    types, which would delay the role-only chunk as much as the content."""
    for _ in chat(client, **STREAM):
        pass


def test_time_to_first_token_waits_for_content_not_the_role_only_chunk(server, priced, records):
    client = sync_client(server, priced, instrument=False)
    warm_up(client)
    server.configure(first_token_delay=0.3)
    run(yields_chunks, client, priced, records)
    record = records.records[0]
    # The role-only chunk arrives at once; the first content chunk 0.3 s later.
    assert record["time_to_first_token"] >= 0.3
    model = record["model"]
    count = priced.registry.get_sample_value("rag_time_to_first_token_seconds_count",
                                             {"operation": "answer", "model": model})
    assert count == 1
    fast = priced.registry.get_sample_value("rag_time_to_first_token_seconds_bucket",
                                            {"operation": "answer", "model": model, "le": "0.2"})
    assert fast == 0


def test_ttft_of_an_instrumented_stream_returned_to_the_caller(server, priced, records):
    server.configure(first_token_delay=0.3)
    run(returns_stream, sync_client(server, priced), priced, records)
    assert records.records[0]["time_to_first_token"] >= 0.3


def test_instrumented_calls_outside_a_query_are_counted_at_once(server, priced):
    client = sync_client(server, priced)
    chat(client)
    for _ in chat(client, **STREAM):
        pass
    model, billed = only_model(server)
    assert metric_tokens(priced, model)["output"] == billed["output"]
    assert priced.registry.get_sample_value("rag_stage_duration_seconds_count",
                                            {"operation": "none", "stage": "generation"}) == 2


def test_rate_limit_headers_set_the_gauges_with_reset_times(server, priced):
    client = sync_client(server, priced)
    chat(client)
    chat(client)
    get = priced.registry.get_sample_value
    assert get("rag_rate_limit_remaining_requests", {"provider": "openai"}) == 10_000 - 2
    model, billed = only_model(server)
    # The second answer's headers count the first answer's tokens (half of what was billed).
    first_call = sum(billed[k] for k in ("input", "cached_input", "cache_write_5m", "output")) // 2
    assert get("rag_rate_limit_remaining_tokens", {"provider": "openai"}) == 2_000_000 - first_call
    now = time.time()
    # The server says the request window resets in 1m30s and the token window in 250ms.
    assert now + 60 < get("rag_rate_limit_reset_timestamp_seconds",
                          {"provider": "openai", "limit": "requests"}) <= now + 90
    assert get("rag_rate_limit_reset_timestamp_seconds", {"provider": "openai", "limit": "tokens"}) <= now + 0.25


@pytest.mark.parametrize("status, error_type", [(429, "RateLimitError"), (500, "InternalServerError"),
                                                (401, "AuthenticationError"), (400, "BadRequestError")])
def test_sdk_errors_are_counted_by_type_and_still_raised(status, error_type, server, priced, records):
    client = sync_client(server, priced)
    server.fail_next(status)
    with pytest.raises(getattr(openai, error_type)):
        run(returns_text, client, priced, records)
    get = priced.registry.get_sample_value
    assert get("rag_llm_errors_total", {"provider": "openai", "error_type": error_type}) == 1
    assert get("rag_errors_total", {"operation": "answer", "error_type": error_type}) == 1
    assert records.records[0]["status"] == "error"


def test_a_timeout_is_counted_as_api_timeout_error(server, priced):
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0, timeout=0.2)
    ragmon.instrument_openai(client, metrics=priced)
    server.stall_next(1.0)
    with pytest.raises(openai.APITimeoutError):
        chat(client)
    assert priced.registry.get_sample_value(
        "rag_llm_errors_total", {"provider": "openai", "error_type": "APITimeoutError"}) == 1


def test_rate_limit_headers_of_a_429_are_recorded_too(server, priced):
    client = sync_client(server, priced)
    server.fail_next(429)
    with pytest.raises(openai.RateLimitError):
        chat(client)
    assert priced.registry.get_sample_value("rag_rate_limit_remaining_requests",
                                            {"provider": "openai"}) == 10_000 - 1


def test_an_abandoned_stream_keeps_what_it_knew_and_is_marked_partial(server, priced, records):
    client = sync_client(server, priced)

    @monitored_query("answer", metrics=priced, request_log=records)
    def answer():
        ragmon.record_tokens(input_tokens=11)  # the caller's own count of the prompt
        yield from chat(client, **STREAM)

    stream = answer()
    for index, _ in enumerate(stream):
        if index == 3:  # the role-only chunk and three content chunks
            break
    stream.close()
    gc.collect()
    record = records.records[0]
    assert record["status"] == "cancelled"
    assert record["tokens"]["input"] == 11
    assert record["tokens"]["output"] == 3
    assert record["pricing"]["partial"] is True
    model = record["model"]
    assert priced.registry.get_sample_value("rag_partial_usage_total", {"model": model}) == 1
    assert record["cost"] > 0


def test_a_stream_without_include_usage_is_counted_as_unreadable(server, priced, records):
    client = sync_client(server, priced, instrument=False)
    monitored = monitored_query("answer", metrics=priced, request_log=records)(
        lambda: chat(client, stream=True))
    list(monitored())
    assert unreadable(priced) == {"stream_without_usage": 1}
    record = records.records[0]
    assert record["pricing"]["partial"] is True  # output counted from chunks, marked partial


def test_a_completion_without_usage_is_counted_not_recorded_as_zero(priced, records):
    monitored = monitored_query("answer", metrics=priced, request_log=records)(
        lambda: {"id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini",
                 "choices": [], "usage": None})
    monitored()
    assert unreadable(priced) == {"dict:chat.completion": 1}
    assert records.records[0]["cost"] is None


def test_an_instrumented_client_and_a_returned_completion_count_once(server, priced, records):
    run(returns_completion, sync_client(server, priced), priced, records)
    model, billed = only_model(server)
    assert metric_tokens(priced, model)["input"] == billed["input"]


def test_azure_deployment_names_are_priced_through_the_mapping(server, priced, records):
    server.configure(model_suffix="")
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)
    ragmon.instrument_openai(client, metrics=priced, deployments={"prod-chat": "gpt-4o"})
    monitored = monitored_query("answer", metrics=priced, request_log=records)(
        lambda: client.chat.completions.create(model="prod-chat", messages=MESSAGES).choices[0].message.content)
    monitored()
    record = records.records[0]
    assert record["model"] == "gpt-4o" and record["pricing"]["match"] == "exact"


# --- async ----------------------------------------------------------------------------------

def test_async_client_text_and_stream(server, priced, records):
    client = ragmon.instrument_openai(
        openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0),
        metrics=priced)

    @monitored_query("answer", metrics=priced, request_log=records)
    async def text():
        reply = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return reply.choices[0].message.content

    @monitored_query("answer", metrics=priced, request_log=records)
    async def streamed():
        stream = await client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, **STREAM)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    async def main():
        first = await text()
        second = "".join([piece async for piece in streamed()])
        return first, second

    first, second = asyncio.run(main())
    assert first == second == "Paris is the capital of France."
    model, billed = only_model(server)
    assert metric_tokens(priced, model) == {k: billed[k] for k in (
        "input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning")}
    assert [r["cost"] for r in records.records] == pytest.approx([records.records[0]["cost"]] * 2)
    assert records.records[1]["time_to_first_token"] is not None


def test_a_query_relaying_two_streams_counts_both(server, priced, records):
    client = sync_client(server, priced, instrument=False)

    @monitored_query("answer", metrics=priced, request_log=records)
    def answer():
        yield from chat(client, **STREAM)  # e.g. a draft, then a rewrite
        yield from chat(client, **STREAM)

    list(answer())
    model, billed = only_model(server)
    assert billed["requests"] == 2
    assert_billed_numbers(priced, server, records.records[0])
