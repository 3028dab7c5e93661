"""The real anthropic SDK against the local server: cache reads, 5-minute and 1-hour cache
writes, thinking tokens, streams (raw events and MessageStream), errors and rate limits."""
from __future__ import annotations

import asyncio
import gc
import time

import pytest

import ragmon
from ragmon import monitored_query
from tests.instrument.sdk_helpers import (PROMPT, anthropic, assert_billed_numbers,  # noqa: F401
                                          metric_tokens, only_model, priced, records, server,
                                          unreadable)

MESSAGES = [{"role": "user", "content": PROMPT}]
ARGS = dict(model="claude-haiku-4-5", max_tokens=200, messages=MESSAGES)


def sync_client(server, metrics, instrument=True):
    client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0)
    return ragmon.instrument_anthropic(client, metrics=metrics) if instrument else client


def returns_text(client):
    return lambda: client.messages.create(**ARGS).content[0].text, None


def returns_message(client):
    return lambda: client.messages.create(**ARGS), None


def returns_model_dump(client):
    return lambda: client.messages.create(**ARGS).model_dump(), None


def returns_raw_stream(client):
    return lambda: client.messages.create(stream=True, **ARGS), list


def yields_raw_events(client):
    def answer():
        yield from client.messages.create(stream=True, **ARGS)
    return answer, list


def yields_message_stream_text(client):
    def answer():
        with client.messages.stream(**ARGS) as stream:
            yield from stream.text_stream
    return answer, "".join


def returns_final_message(client):
    def answer():
        with client.messages.stream(**ARGS) as stream:
            stream.until_done()
        return stream.get_final_message()
    return answer, None


INSTRUMENTED_WAYS = [returns_text, returns_message, returns_model_dump, returns_raw_stream,
                     yields_raw_events, yields_message_stream_text, returns_final_message]
PLAIN_WAYS = [returns_message, returns_model_dump, returns_raw_stream, yields_raw_events,
              returns_final_message]


def run(way, client, metrics, records):
    fn, consume = way(client)
    result = monitored_query("answer", metrics=metrics, request_log=records)(fn)()
    if consume is not None:
        result = consume(result)
    assert len(records.records) == 1
    return result, records.records[0]


@pytest.mark.parametrize("way", INSTRUMENTED_WAYS, ids=lambda w: w.__name__)
def test_an_instrumented_client_gives_the_billed_numbers_whatever_is_returned(way, server, priced, records):
    result, record = run(way, sync_client(server, priced), priced, records)
    assert result
    model = assert_billed_numbers(priced, server, record)
    assert model == "claude-haiku-4-5-20241022"  # the dated snapshot, as the API answers
    assert record["pricing"]["entry"] == "anthropic/claude-haiku-4-5"
    assert record["pricing"]["provider"] == "anthropic"


@pytest.mark.parametrize("way", PLAIN_WAYS, ids=lambda w: w.__name__)
def test_the_decorator_alone_reads_what_the_sdk_returns(way, server, priced, records):
    result, record = run(way, sync_client(server, priced, instrument=False), priced, records)
    assert result
    assert_billed_numbers(priced, server, record)


def test_cache_writes_are_billed_at_their_own_prices_by_lifetime(server, priced, records):
    run(returns_message, sync_client(server, priced), priced, records)
    record = records.records[0]
    tokens = record["tokens"]
    assert (tokens["cached_input"], tokens["cache_write_5m"], tokens["cache_write_1h"]) == (1200, 300, 80)
    per_1k = record["pricing"]["per_1k"]
    # claude-haiku-4-5: input $1, cache read $0.10, 5m write $1.25, 1h write $2, output $5 per MTok
    expected = (tokens["input"] * 0.001 + 1200 * 0.0001 + 300 * 0.00125 + 80 * 0.002
                + tokens["output"] * 0.005) / 1000
    assert per_1k["cache_write"] == 0.00125 and per_1k["cache_write_1h"] == 0.002
    assert record["cost"] == pytest.approx(expected, rel=1e-12)
    assert round(record["cost"] * 100, 2) == round(expected * 100, 2)  # to the cent, and finer


def test_thinking_tokens_are_reasoning_within_output(server, priced, records):
    run(returns_message, sync_client(server, priced), priced, records)
    model, billed = only_model(server)
    tokens = metric_tokens(priced, model)
    assert tokens["reasoning"] == 40 and tokens["output"] == billed["output"]


def test_time_to_first_token_is_the_first_text_delta(server, priced, records):
    server.configure(first_token_delay=0.3)
    run(yields_raw_events, sync_client(server, priced, instrument=False), priced, records)
    assert records.records[0]["time_to_first_token"] >= 0.3


def test_an_abandoned_stream_keeps_the_input_of_message_start(server, priced, records):
    client = sync_client(server, priced)

    @monitored_query("answer", metrics=priced, request_log=records)
    def answer():
        yield from client.messages.create(stream=True, **ARGS)

    events = answer()
    for event in events:
        if event.type == "content_block_delta":
            break
    events.close()
    gc.collect()
    record = records.records[0]
    _, billed = only_model(server)
    assert record["status"] == "cancelled"
    assert record["tokens"]["input"] == billed["input"]
    assert record["tokens"]["cached_input"] == 1200
    assert record["tokens"]["cache_write_5m"] == 300 and record["tokens"]["cache_write_1h"] == 80
    assert record["tokens"]["output"] == 1
    assert record["pricing"]["partial"] is True


def test_rate_limit_headers_with_rfc3339_reset(server, priced):
    client = sync_client(server, priced)
    client.messages.create(**ARGS)
    get = priced.registry.get_sample_value
    assert get("rag_rate_limit_remaining_requests", {"provider": "anthropic"}) == 10_000 - 1
    assert get("rag_rate_limit_remaining_tokens", {"provider": "anthropic"}) == 2_000_000
    reset = get("rag_rate_limit_reset_timestamp_seconds", {"provider": "anthropic", "limit": "requests"})
    assert time.time() < reset <= time.time() + 13


@pytest.mark.parametrize("status, error_type", [(429, "RateLimitError"), (529, "OverloadedError"),
                                                (401, "AuthenticationError"), (500, "InternalServerError")])
def test_sdk_errors_are_counted_by_type(status, error_type, server, priced):
    client = sync_client(server, priced)
    server.fail_next(status)
    with pytest.raises(getattr(anthropic, error_type)):
        client.messages.create(**ARGS)
    assert priced.registry.get_sample_value(
        "rag_llm_errors_total", {"provider": "anthropic", "error_type": error_type}) == 1


def test_track_rate_limit_takes_raw_responses_errors_and_parsed_objects(server, priced):
    client = sync_client(server, priced, instrument=False)
    raw = client.messages.with_raw_response.create(**ARGS)
    found = ragmon.track_rate_limit(headers=raw, metrics=priced)
    assert found["requests"] == 10_000 - 1 and "requests_reset" in found
    found = ragmon.track_rate_limit("anthropic", headers=raw.headers, metrics=priced)  # httpx.Headers
    assert found["tokens"] == 2_000_000  # counted before the first answer was billed
    server.fail_next(429)
    with pytest.raises(anthropic.RateLimitError) as error:
        client.messages.create(**ARGS)
    assert ragmon.track_rate_limit(headers=error.value, metrics=priced)["requests"] == 10_000 - 2
    assert ragmon.track_rate_limit(headers={"anthropic-ratelimit-requests-remaining": "7"},
                                   metrics=priced) == {"requests": 7.0}
    message = raw.parse()
    assert ragmon.track_rate_limit("anthropic", headers=message, metrics=priced) == {}
    assert priced.registry.get_sample_value("rag_instrumentation_errors_total",
                                            {"reason": "no_headers"}) == 1


def test_async_client_stream_and_message(server, priced, records):
    client = ragmon.instrument_anthropic(
        anthropic.AsyncAnthropic(base_url=server.anthropic_base_url, api_key="test", max_retries=0),
        metrics=priced)

    @monitored_query("answer", metrics=priced, request_log=records)
    async def text():
        return (await client.messages.create(**ARGS)).content[0].text

    @monitored_query("answer", metrics=priced, request_log=records)
    async def streamed():
        async with client.messages.stream(**ARGS) as stream:
            async for piece in stream.text_stream:
                yield piece

    async def main():
        return await text(), "".join([piece async for piece in streamed()])

    first, second = asyncio.run(main())
    assert first == second
    model, billed = only_model(server)
    assert metric_tokens(priced, model) == {k: billed[k] for k in (
        "input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning")}
    assert records.records[0]["cost"] == pytest.approx(records.records[1]["cost"])


@pytest.mark.parametrize("tier", ["standard", "priority", "batch"])
@pytest.mark.parametrize("way", [returns_message, returns_raw_stream, returns_text],
                         ids=lambda w: w.__name__)
def test_the_service_tier_anthropic_names_prices_the_call_as_genai_prices_does(
        way, tier, server, priced, records):
    from decimal import Decimal

    from genai_prices import Usage as GenaiUsage, calc_price

    server.configure(anthropic_service_tier=tier, cache_write_1h_tokens=0)
    run(way, sync_client(server, priced), priced, records)
    model, billed = only_model(server)
    record = records.records[0]
    prompt = billed["input"] + billed["cached_input"] + billed["cache_write_5m"]
    usage = GenaiUsage(input_tokens=prompt, cache_read_tokens=billed["cached_input"],
                       cache_write_tokens=billed["cache_write_5m"], output_tokens=billed["output"])
    context = {"processing": "batch"} if tier == "batch" else {"service_tier": tier}
    theirs = calc_price(usage, model, provider_id="anthropic", price_context=context).total_price
    assert abs(Decimal(repr(record["cost"])) - theirs) <= theirs * Decimal("1e-9"), (record, theirs)
    assert record["pricing"]["service_tier"] == tier
    spend = priced.registry.get_sample_value("rag_spend_dollars_total", {"model": model})
    assert spend == pytest.approx(record["cost"], rel=1e-12)
    if tier == "batch":  # half the standard price: a batch result priced as standard fails here
        standard = calc_price(usage, model, provider_id="anthropic").total_price
        assert theirs < standard and record["pricing"]["tier"] == "batch"
