"""Shared pieces of the SDK tests: the local LLM server, a catalog priced with the shipped price
file, and the expected numbers computed from what the server billed."""
from __future__ import annotations

import anthropic
import openai
import pytest
from prometheus_client import CollectorRegistry

from ragmon.instrument.catalog import RAGMetrics
from ragmon.settings import SHIPPED_PRICES_FILE
from ragmon.testing import LLMTestServer
from tests.conftest import ListSink, make_settings

# A prompt-cache hit, a cache write and reasoning in every answer: each kind must land in its slot.
KNOBS = dict(cached_tokens=1200, cache_write_tokens=300, cache_write_1h_tokens=80,
             reasoning_tokens=40)
PROMPT = "Which city is the capital of France and why is it famous"


@pytest.fixture
def server():
    with LLMTestServer(**KNOBS) as running:
        yield running


@pytest.fixture
def priced():
    """A fresh catalog priced with the shipped price database (a snapshot of genai-prices)."""
    return RAGMetrics(registry=CollectorRegistry(),
                      settings=make_settings(MODEL_PRICES_FILE=SHIPPED_PRICES_FILE))


@pytest.fixture
def records():
    return ListSink()


def only_model(server) -> tuple[str, dict]:
    billed = server.billed()
    assert len(billed) == 1, billed
    return next(iter(billed.items()))


def expected_cost(metrics: RAGMetrics, model: str, billed: dict) -> float:
    price = metrics.price_table.match(model).price
    return price.cost(billed["input"], billed["output"], billed["cached_input"],
                      billed["cache_write_5m"], billed["cache_write_1h"])


def metric_tokens(metrics: RAGMetrics, model: str) -> dict:
    get = metrics.registry.get_sample_value
    found = {kind: get("rag_tokens_total", {"model": model, "token_type": kind}) or 0
             for kind in ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h")}
    found["reasoning"] = get("rag_reasoning_tokens_total", {"model": model}) or 0
    return found


def assert_billed_numbers(metrics: RAGMetrics, server, record: dict | None = None) -> str:
    """The record, the token counters and the spend agree with what the server billed."""
    model, billed = only_model(server)
    kinds = ("input", "output", "cached_input", "cache_write_5m", "cache_write_1h", "reasoning")
    want = {kind: billed[kind] for kind in kinds}
    assert metric_tokens(metrics, model) == want
    cost = expected_cost(metrics, model, billed)
    assert cost > 0
    spend = metrics.registry.get_sample_value("rag_spend_dollars_total", {"model": model})
    assert spend == pytest.approx(cost, rel=1e-9)
    if record is not None:
        assert record["model"] == model
        tokens = record["tokens"]
        assert {kind: tokens.get(kind, 0) for kind in kinds} == want
        assert record["cost"] == pytest.approx(cost, rel=1e-9)
        assert record["pricing"]["match"] in ("exact", "alias", "pattern")
        assert record["pricing"]["partial"] is False
    assert not unreadable(metrics)
    return model


def unreadable(metrics: RAGMetrics) -> dict:
    return {sample.labels["shape"]: sample.value
            for family in metrics.unreadable_responses.collect() for sample in family.samples
            if sample.name.endswith("_total")}


__all__ = ["server", "priced", "records", "assert_billed_numbers", "expected_cost", "only_model",
           "metric_tokens", "unreadable", "PROMPT", "KNOBS", "ListSink", "openai", "anthropic"]
