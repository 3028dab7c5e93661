"""No silent money: every way in settles through one path, under one vocabulary of token kinds.

Each finding below was measured on the library with the real SDKs against LLMTestServer; each
test fails on the code before the one settlement path."""
from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import openai
import pytest
from prometheus_client import CollectorRegistry

import ragmon
from ragmon import monitored_query
from ragmon.instrument.catalog import RAGMetrics
from ragmon.instrument.pricing import ModelPrice, PriceMatch, PriceTable
from ragmon.testing import LLMTestServer
from tests.conftest import ListSink

SONNET = ModelPrice(0.003, 0.015, 0.0003, 0.00375, 0.006)
MINI = ModelPrice(0.00015, 0.0006, 0.000075)
PROMPT = "Which city is the capital of France and why is it famous"


@pytest.fixture
def metrics():
    return RAGMetrics(registry=CollectorRegistry(), price_table=PriceTable(
        ModelPrice(1.0, 1.0, 1.0), {"claude-sonnet-4-5": SONNET, "gpt-4o-mini": MINI}))


@pytest.fixture
def records():
    return ListSink()


def tokens_of(metrics, model):
    get = metrics.registry.get_sample_value
    found = {kind: get("rag_tokens_total", {"model": model, "token_type": kind}) or 0
             for kind in ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h")}
    found["reasoning"] = get("rag_reasoning_tokens_total", {"model": model}) or 0
    return found


def spend(metrics, model):
    return metrics.registry.get_sample_value("rag_spend_dollars_total", {"model": model})


# --- a returned dict with cache writes -----------------------------------------------------------

def test_cache_writes_in_a_returned_dict_are_billed_at_their_price(metrics, records):
    @monitored_query("answer", model="claude-sonnet-4-5", metrics=metrics, request_log=records)
    def answer():  # the names record_tokens documents, input_tokens the whole prompt
        return {"answer": "ok", "input_tokens": 1600, "cache_write_tokens": 1500,
                "output_tokens": 120}

    answer()
    billed = (100 * SONNET.input + 1500 * SONNET.cache_write + 120 * SONNET.output) / 1000
    assert tokens_of(metrics, "claude-sonnet-4-5")["cache_write_5m"] == 1500
    assert spend(metrics, "claude-sonnet-4-5") == pytest.approx(billed)
    [record] = records.records
    assert record["tokens"]["cache_write_5m"] == 1500 and record["tokens"]["input"] == 100
    assert record["cost"] == pytest.approx(billed)


def test_performance_monitor_records_every_kind(metrics, records):
    monitor = ragmon.PerformanceMonitor(metrics=metrics, sink=records)
    monitor.end_request(monitor.start_request(), model="claude-sonnet-4-5", input_tokens=2000,
                        cached_input_tokens=300, cache_write_tokens=1500,
                        cache_write_1h_tokens=100, output_tokens=120, reasoning_tokens=20)
    [record] = records.records
    assert record["tokens"] == {"input": 100, "output": 120, "cached_input": 300,
                                "cache_write_5m": 1500, "cache_write_1h": 100, "reasoning": 20}
    assert record["cost"] == pytest.approx(
        (100 * SONNET.input + 300 * SONNET.cached_input + 1500 * SONNET.cache_write
         + 100 * SONNET.cache_write_1h + 120 * SONNET.output) / 1000)


# --- the same usage reported twice --------------------------------------------------------------

@pytest.fixture
def server():
    with LLMTestServer(cached_tokens=100) as running:
        yield running


def billed_tokens(server):
    [(model, billed)] = server.billed().items()
    return model, {kind: billed[kind] for kind in
                   ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h",
                    "reasoning")}


def test_raw_chunks_yielded_and_reported_by_hand_count_once(server, metrics, records):
    client = openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)

    @monitored_query("answer", model="gpt-4o-mini", metrics=metrics, request_log=records)
    async def answer():
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:  # the docs' earlier advice, on top of the yielded chunk
                ragmon.record_tokens(chunk.usage.prompt_tokens, chunk.usage.completion_tokens)
            yield chunk

    async def consume():
        return [chunk async for chunk in answer()]

    asyncio.run(consume())
    model, billed = billed_tokens(server)
    assert tokens_of(metrics, model) == billed
    assert records.records[0]["tokens"]["input"] == billed["input"]
    assert metrics.registry.get_sample_value("rag_duplicate_usage_total",
                                             {"operation": "answer"}) == 1


def test_an_instrumented_client_and_record_tokens_by_hand_count_once(server, metrics, records):
    client = ragmon.instrument_openai(
        openai.AsyncOpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0),
        metrics=metrics)

    @monitored_query("answer", model="gpt-4o-mini", metrics=metrics, request_log=records)
    async def answer():
        stream = await client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}], stream=True,
            stream_options={"include_usage": True})
        async for chunk in stream:
            if chunk.usage is not None:
                ragmon.record_tokens(chunk.usage.prompt_tokens, chunk.usage.completion_tokens,
                                     chunk.usage.prompt_tokens_details.cached_tokens)
            elif chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content

    async def consume():
        return "".join([text async for text in answer()])

    assert asyncio.run(consume())
    model, billed = billed_tokens(server)
    assert tokens_of(metrics, model) == billed
    assert metrics.registry.get_sample_value("rag_duplicate_usage_total",
                                             {"operation": "answer"}) == 1


def test_two_calls_reported_by_hand_are_two_calls(metrics):
    @monitored_query("answer", model="gpt-4o-mini", metrics=metrics, request_log=False)
    def answer():
        ragmon.record_tokens(100, 10)
        ragmon.record_tokens(100, 10)
        return "ok"

    answer()
    assert tokens_of(metrics, "gpt-4o-mini")["input"] == 200
    assert metrics.registry.get_sample_value("rag_duplicate_usage_total",
                                             {"operation": "answer"}) is None


# --- a query that names a model but receives no usage --------------------------------------------

def test_a_query_without_usage_is_counted_and_said_once(server, metrics, records, caplog):
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)

    @monitored_query("uninstrumented", model="gpt-4o-mini", metrics=metrics, request_log=records)
    def answer():
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
        ).choices[0].message.content

    with caplog.at_level(logging.WARNING, logger="ragmon"):
        answer()
        answer()
    assert metrics.registry.get_sample_value(
        "rag_queries_without_usage_total",
        {"operation": "uninstrumented", "model": "gpt-4o-mini"}) == 2
    said = [r.getMessage() for r in caplog.records if "no token usage" in r.getMessage()]
    assert len(said) == 1
    assert "instrument_openai" in said[0] and "record_tokens" in said[0]


def test_a_cache_hit_or_an_instrumented_call_is_not_a_query_without_usage(server, metrics):
    client = ragmon.instrument_openai(
        openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0),
        metrics=metrics)

    @monitored_query("answer", model="gpt-4o-mini", metrics=metrics, request_log=False)
    def answer(cached):
        if cached:
            ragmon.track_cache_operation(hit=True, metrics=metrics)
            return "from the cache"
        return client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}]
        ).choices[0].message.content

    answer(True)
    answer(False)
    assert metrics.registry.get_sample_value(
        "rag_queries_without_usage_total", {"operation": "answer", "model": "gpt-4o-mini"}) is None


# --- one input convention ------------------------------------------------------------------------

def test_prompt_tokens_as_input_tokens_bill_the_cached_tokens_once(server, metrics, records):
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="test", max_retries=0)

    @monitored_query("answer", model="gpt-4o-mini", metrics=metrics, request_log=records)
    def answer():
        reply = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": PROMPT}])
        usage = reply.usage
        return {"answer": reply.choices[0].message.content, "model": reply.model,
                "input_tokens": usage.prompt_tokens, "output_tokens": usage.completion_tokens,
                "cached_input_tokens": usage.prompt_tokens_details.cached_tokens}

    answer()
    model, billed = billed_tokens(server)
    cost = (billed["input"] * MINI.input + billed["cached_input"] * MINI.cached_input
            + billed["output"] * MINI.output) / 1000
    assert records.records[0]["cost"] == pytest.approx(cost)
    assert tokens_of(metrics, model) == billed


def test_parts_larger_than_their_whole_are_refused_and_counted(metrics, records):
    with pytest.raises(ValueError, match="input_tokens is the whole prompt"):
        ragmon.record_tokens(100, 10, 200, metrics=metrics)

    @monitored_query("answer", model="gpt-4o-mini", metrics=metrics, request_log=records)
    def answer():
        return {"input_tokens": 100, "cached_input_tokens": 200, "output_tokens": 10}

    answer()
    assert metrics.registry.get_sample_value(
        "rag_instrumentation_errors_total", {"reason": "parts_exceed_whole"}) == 2
    assert tokens_of(metrics, "gpt-4o-mini") == dict.fromkeys(
        ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning"), 0)
    assert records.records[0]["out_of_bounds"] == {"input_tokens": 100, "cached_input_tokens": 200}


# --- a seventh kind is one row -------------------------------------------------------------------

SEVENTH_KIND = textwrap.dedent('''
    import importlib.util, json, sys, time
    from pathlib import Path
    # The one place: tokens.py, loaded first and given one more row before anything reads it.
    spec = importlib.util.spec_from_file_location("ragmon.instrument.tokens", sys.argv[1])
    tokens = importlib.util.module_from_spec(spec)
    sys.modules["ragmon.instrument.tokens"] = tokens
    spec.loader.exec_module(tokens)
    tokens.KINDS = tokens.KINDS + (tokens.TokenKind(
        "audio_input", "audio_input_tokens", "audio_input", "audio_input", "input", "input",
        False, {"openai_chat": "prompt_tokens_details.audio_tokens"}),)

    from prometheus_client import CollectorRegistry
    import ragmon
    from ragmon.instrument.catalog import RAGMetrics
    from ragmon.instrument.pricing import ModelPrice, PriceMatch, PriceTable
    from ragmon.instrument.records import DailyFileSink
    from ragmon.report.compact import compact_logs
    from ragmon.report.reader import read_table

    log_dir = Path(sys.argv[2])
    metrics = RAGMetrics(registry=CollectorRegistry(), price_table=PriceTable(
        ModelPrice(1.0, 1.0, 1.0), {"gpt-4o-mini": ModelPrice(0.00015, 0.0006, 0.000075)}))

    @ragmon.monitored_query("answer", model="gpt-4o-mini", metrics=metrics,
                            request_log=DailyFileSink(log_dir))
    def answer():
        ragmon.record_tokens(input_tokens=100, output_tokens=10, audio_input_tokens=30)
        return {"input_tokens": 50, "output_tokens": 5, "audio_input_tokens": 20,
                "model": "gpt-4o-mini"}

    answer()
    get = metrics.registry.get_sample_value
    [line] = next(log_dir.glob("*.jsonl")).read_text().splitlines()
    table, _ = read_table(log_dir)
    compact_logs(log_dir, now=time.time() + 3 * 86400)
    history, _ = read_table(log_dir)
    print(json.dumps({
        "metric": get("rag_tokens_total", {"model": "gpt-4o-mini", "token_type": "audio_input"}),
        "input_metric": get("rag_tokens_total", {"model": "gpt-4o-mini", "token_type": "input"}),
        "spend": get("rag_spend_dollars_total", {"model": "gpt-4o-mini"}),
        "record": json.loads(line)["tokens"],
        "report": table.column("audio_input_tokens").to_pylist(),
        "history": history.column("audio_input_tokens").to_pylist(),
        "history_files": len(list(log_dir.glob("history/*"))),
        "help": [m.documentation for m in metrics.registry.collect() if m.name == "rag_tokens"],
    }))
''')


def test_a_seventh_token_kind_is_one_row_in_tokens_py(tmp_path):
    import ragmon.instrument.tokens as tokens_module
    script = tmp_path / "seventh_kind.py"
    script.write_text(SEVENTH_KIND)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    ran = subprocess.run([sys.executable, str(script), tokens_module.__file__, str(log_dir)],
                         capture_output=True, text=True, timeout=300,
                         cwd=Path(__file__).resolve().parents[2],
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])})
    assert ran.returncode == 0, ran.stderr
    seen = json.loads(ran.stdout.strip().splitlines()[-1])
    assert seen["metric"] == 50  # 30 reported by hand + 20 returned
    assert seen["input_metric"] == 100  # the parts priced apart come out of the whole prompt
    assert seen["spend"] == pytest.approx((150 * 0.00015 + 15 * 0.0006) / 1000)
    assert seen["record"]["audio_input"] == 50 and seen["record"]["input"] == 100
    assert seen["report"] == [50]
    assert seen["history"] == [50] and seen["history_files"] >= 1
    [help_text] = seen["help"]  # rag_tokens_total's help names the kinds of the table
    assert "(input, output, cached_input, cache_write_5m, cache_write_1h, audio_input)" in help_text


def test_a_price_with_long_context_tiers_prices_each_call_by_its_own_prompt(records):
    base = ModelPrice(0.001, 0.005, 0.0001, tiers=((1000, ModelPrice(0.002, 0.010, 0.0002)),))
    table = PriceTable(ModelPrice(1.0, 1.0, 1.0), {})
    table.match = lambda model, day=None, **known: PriceMatch(base, "exact", model)
    metrics = RAGMetrics(registry=CollectorRegistry(), price_table=table)

    @monitored_query("answer", model="long-model", metrics=metrics, request_log=records)
    def answer():
        ragmon.record_tokens(500, 10)  # under the threshold
        ragmon.record_tokens(2000, 10, 400)  # over it: every token at the tier's price
        return "ok"

    answer()
    expected = ((500 * 0.001 + 10 * 0.005)
                + (1600 * 0.002 + 400 * 0.0002 + 10 * 0.010)) / 1000
    assert records.records[0]["cost"] == pytest.approx(expected)
    assert spend(metrics, "long-model") == pytest.approx(expected)


def test_the_record_says_which_long_context_tier_priced_a_call(records):
    from ragmon.settings import SHIPPED_PRICES_FILE
    from tests.conftest import make_settings

    metrics = RAGMetrics(registry=CollectorRegistry(),
                         settings=make_settings(MODEL_PRICES_FILE=SHIPPED_PRICES_FILE))
    table = metrics.price_table

    @monitored_query("answer", model="gemini-2.5-pro", metrics=metrics, request_log=records)
    def answer(prompt_tokens):
        ragmon.record_tokens(prompt_tokens, 100)
        return "ok"

    answer(1_000)
    answer(300_000)
    short, long = records.records
    base = table.match("gemini-2.5-pro")
    tiered = table.match("gemini-2.5-pro", prompt_tokens=300_000)
    assert tiered.tier and tiered.tier.startswith("input>") and tiered.price != base.price
    assert short["pricing"]["tier"] is None and short["pricing"]["price_id"] == base.price.id
    assert long["pricing"]["tier"] == tiered.tier
    assert long["pricing"]["price_id"] == tiered.price.id
    assert long["cost"] == pytest.approx(tiered.price.cost(300_000, 100))


def _settled_both_ways(model: str, returned: dict) -> list[tuple]:
    """(metric samples, record's tokens, cost and pricing) of one query returning `returned`,
    settled the usual way (a plain returned dict: one pass) and the whole way (the same counts
    reported with record_tokens, so settle() and count() run)."""
    from ragmon.settings import SHIPPED_PRICES_FILE
    from tests.conftest import make_settings

    seen = []
    for by_hand in (False, True):
        metrics = RAGMetrics(registry=CollectorRegistry(),
                             settings=make_settings(MODEL_PRICES_FILE=SHIPPED_PRICES_FILE))
        sink = ListSink()

        @monitored_query("answer", model=model, metrics=metrics, request_log=sink)
        def answer():
            if by_hand:
                ragmon.record_tokens(returned.get("input_tokens", 0),
                                     returned.get("output_tokens", 0))
                return {"answer": "ok"}
            return dict(returned, answer="ok")

        answer()
        samples = sorted((s.name, tuple(sorted(s.labels.items())), s.value)
                         for m in metrics.registry.collect() for s in m.samples
                         if s.name.startswith(("rag_tokens", "rag_spend", "rag_query_cost",
                                               "rag_unknown_model"))
                         and not s.name.endswith("_created"))
        [record] = sink.records
        seen.append((samples, record["tokens"], record["cost"], record["pricing"],
                     record.get("out_of_bounds")))
    return seen


@pytest.mark.parametrize("model, returned", [
    ("gpt-4o-mini", {"input_tokens": 500, "output_tokens": 150}),
    ("gpt-4o-mini", {"output_tokens": 7}),
    ("my-own-model", {"input_tokens": 500, "output_tokens": 150}),  # unknown: default, counted
    ("gemini-2.5-pro", {"input_tokens": 300_000, "output_tokens": 10}),  # long-context tier
    ("gpt-4o-mini", {"input_tokens": 10**30, "output_tokens": 10}),  # past the bound
])
def test_the_usual_returned_dict_is_settled_as_the_whole_way_settles_it(model, returned):
    usual, whole_way = _settled_both_ways(model, returned)
    assert usual == whole_way
    assert usual[0]  # something was counted
