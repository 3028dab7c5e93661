"""Usage read by shape from LangChain messages, LiteLLM-shaped responses and model_dump() dicts,
and the price table's name matching (snapshots, prefixes, aliases, patterns, versions)."""
from __future__ import annotations

import datetime
import json
import logging
from types import SimpleNamespace as NS

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk

import ragmon
from ragmon import monitored_query
from ragmon.instrument.pricing import ModelPrice, PriceTable, normalize_model_name
from ragmon.instrument.tokens import Usage
from ragmon.instrument.usage import Unreadable, read_usage
from tests.instrument.sdk_helpers import priced, records, unreadable  # noqa: F401

LANGCHAIN_USAGE = {"input_tokens": 1500, "output_tokens": 120, "total_tokens": 1620,
                   "input_token_details": {"cache_read": 1000, "cache_creation": 200},
                   "output_token_details": {"reasoning": 30}}


def test_langchain_ai_message_returned_from_a_query(priced, records):
    message = AIMessage(content="Paris", usage_metadata=LANGCHAIN_USAGE,
                        response_metadata={"model_name": "claude-sonnet-4-5-20250929"})
    monitored_query("answer", metrics=priced, request_log=records)(lambda: message)()
    record = records.records[0]
    assert record["model"] == "claude-sonnet-4-5-20250929"
    # LangChain's input_tokens include cache reads and writes: 1500 - 1000 - 200 uncached.
    assert record["tokens"] == {"input": 300, "output": 120, "cached_input": 1000,
                                "cache_write_5m": 200, "cache_write_1h": 0, "reasoning": 30}
    expected = (300 * 0.003 + 1000 * 0.0003 + 200 * 0.00375 + 120 * 0.015) / 1000
    assert record["cost"] == pytest.approx(expected)
    assert record["pricing"]["entry"] == "anthropic/claude-sonnet-4-5"


def test_langchain_chunks_yielded_add_up(priced, records):
    @monitored_query("answer", metrics=priced, request_log=records)
    def answer():
        yield AIMessageChunk(content="")
        yield AIMessageChunk(content="Par")
        yield AIMessageChunk(content="is", usage_metadata={"input_tokens": 50, "output_tokens": 2,
                                                           "total_tokens": 52})
    assert [c.content for c in answer()] == ["", "Par", "is"]
    record = records.records[0]
    assert (record["tokens"]["input"], record["tokens"]["output"]) == (50, 2)


def test_a_langchain_message_without_usage_is_unreadable(priced, records):
    monitored_query("answer", metrics=priced, request_log=records)(lambda: AIMessage(content="x"))()
    assert unreadable(priced) == {"AIMessage:ai": 1}
    assert records.records[0]["cost"] is None


def litellm_response(**usage):
    """What litellm.completion() returns: an OpenAI-shaped ModelResponse whose usage also carries
    Anthropic's cache fields when the model is Claude."""
    return NS(id="chatcmpl-litellm", object="chat.completion", model="anthropic/claude-3-5-haiku-20241022",
              choices=[NS(message=NS(content="Paris", role="assistant"))],
              usage=NS(total_tokens=None, completion_tokens_details=None, **usage))


def test_litellm_model_response_with_anthropic_cache_fields():
    found = read_usage(litellm_response(
        prompt_tokens=1500, completion_tokens=100,
        prompt_tokens_details=NS(cached_tokens=1000, cache_write_tokens=None),
        cache_read_input_tokens=1000, cache_creation_input_tokens=200))
    assert found.as_dict() == {"input": 300, "cached_input": 1000, "cache_write_5m": 200,
                               "cache_write_1h": 0, "output": 100, "reasoning": 0}
    assert found.model == "anthropic/claude-3-5-haiku-20241022"
    table = PriceTable.from_file(ragmon.settings.SHIPPED_PRICES_FILE, ModelPrice(1, 1, 1))
    assert table.match(found.model).entry == "anthropic/claude-3-5-haiku-latest"


@pytest.mark.parametrize("value", ["text", 42, None, {"answer": "x"}, ["a"], NS(answer="x")])
def test_values_that_are_not_responses_are_left_alone(value):
    assert read_usage(value) is None


@pytest.mark.parametrize("value, shape", [
    ({"object": "chat.completion", "usage": None}, "dict:chat.completion"),
    ({"type": "message", "usage": None}, "dict:message"),
    (NS(choices=[], usage=None), "SimpleNamespace"),
])
def test_responses_without_readable_usage_are_unreadable(value, shape):
    found = read_usage(value)
    assert isinstance(found, Unreadable) and found.shape == shape


def test_record_tokens_reads_a_response_and_checks_reasoning(priced):
    dumped = {"id": "msg_1", "type": "message", "model": "claude-haiku-4-5",
              "usage": {"input_tokens": 10, "output_tokens": 20, "cache_read_input_tokens": 5,
                        "cache_creation_input_tokens": 0}}
    cost = ragmon.record_tokens(dumped, metrics=priced)
    assert cost == pytest.approx((10 * 0.001 + 20 * 0.005 + 5 * 0.0001) / 1000)
    with pytest.raises(ValueError, match="reasoning tokens are a part of the output"):
        ragmon.record_tokens(output_tokens=5, reasoning_tokens=6, metrics=priced)


# --- price table --------------------------------------------------------------------------------

@pytest.mark.parametrize("name, bare", [
    ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"), ("openai/gpt-4o", "gpt-4o"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku"),
    ("anthropic.claude-3-5-haiku-20241022-v1:0", "claude-3-5-haiku"),
    ("azure/gpt-4.1-mini", "gpt-4.1-mini"), ("o3-2025-04-16", "o3"),
])
def test_model_names_are_normalized(name, bare):
    assert normalize_model_name(name) == bare


def write_prices(tmp_path, content) -> PriceTable:
    path = tmp_path / "prices.json"
    path.write_text(json.dumps(content))
    return PriceTable.from_file(path, ModelPrice(9, 9, 9))


def test_exact_beats_pattern_and_the_longest_pattern_wins(tmp_path):
    table = write_prices(tmp_path, {
        "gpt-4o": {"input": 1, "output": 1, "patterns": ["gpt-4o*"]},
        "gpt-4o-mini": {"input": 2, "output": 2, "patterns": ["gpt-4o-mini*"]},
        "gpt-4o-mini-tts": {"input": 3, "output": 3},
    })
    assert (table.match("gpt-4o-mini-tts").entry, table.match("gpt-4o-mini-tts").match) == ("gpt-4o-mini-tts", "exact")
    assert table.match("gpt-4o-mini-search").entry == "gpt-4o-mini"
    assert table.match("gpt-4o-audio").entry == "gpt-4o"
    assert table.match("gpt-4o-audio").match == "pattern"
    assert table.match("llama").match == "default" and not table.match("llama").known


def test_aliases_and_azure_deployments(tmp_path):
    table = write_prices(tmp_path, {"_aliases": {"prod-chat": "gpt-4o"},
                                    "gpt-4o": {"input": 1, "output": 1, "aliases": ["chatgpt-4o-latest"]}})
    assert table.match("prod-chat").entry == "gpt-4o"
    assert table.match("chatgpt-4o-latest").match == "exact"
    with pytest.raises(ValueError, match="points at 'nope'"):
        write_prices(tmp_path, {"_aliases": {"x": "nope"}, "gpt-4o": {"input": 1}})


def test_price_versions_apply_from_their_day(tmp_path, priced):
    table = write_prices(tmp_path, {"o3": {"input": 0.01, "output": 0.04, "versions": [
        {"effective_from": "2025-06-10", "input": 0.002, "output": 0.008}]}})
    before = table.match("o3", datetime.date(2025, 6, 9))
    after = table.match("o3", datetime.date(2025, 6, 10))
    assert (before.price.input, before.price.id) == (0.01, "o3")
    assert (after.price.input, after.price.id, after.price.output) == (0.002, "o3@2025-06-10", 0.008)
    assert after.price.cached_input == before.price.cached_input  # not restated: inherited
    with pytest.raises(ValueError, match="effective_from"):
        write_prices(tmp_path, {"o3": {"input": 1, "versions": [{"input": 2}]}})


def test_records_name_the_price_version_in_force(priced, records):
    monitored_query("answer", metrics=priced, request_log=records)(
        lambda: {"model": "o3-2025-04-16", "input_tokens": 1000, "output_tokens": 100})()
    pricing = records.records[0]["pricing"]
    assert pricing["price_id"] == "openai/o3@2025-06-10" and pricing["match"] == "exact"
    assert records.records[0]["cost"] == pytest.approx(0.002 + 0.0008)


def test_a_model_missing_from_the_table_is_default_priced_and_marked(priced, records, caplog):
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        monitored_query("answer", metrics=priced, request_log=records)(
            lambda: {"model": "my-local-llama", "input_tokens": 1000, "output_tokens": 100})()
    pricing = records.records[0]["pricing"]
    assert pricing["match"] == "default" and pricing["entry"] is None
    assert priced.registry.get_sample_value("rag_unknown_model_total") == 1


def test_usage_sums_every_billed_kind_once():
    usage = Usage(input=1, output=10, cached_input=100, cache_write_5m=1000, cache_write_1h=10000,
                  reasoning=5)
    assert usage.billed_tokens == 11111
