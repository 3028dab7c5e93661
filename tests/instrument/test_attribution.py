"""Who spends it: attribution keys reach queries and records; spend, tokens and queries are
counted per key with at most K named values plus `other`, and nothing is lost to the cap."""
import asyncio
import json
import random

import pytest

import m2_3_monitoring
import ragmon
from ragmon import RAGMetrics, attribution, monitored_query, request_context, set_attribution
from ragmon.instrument.attribution import HeavyValues, fold_top_k, load_budgets
from ragmon.settings import ConfigError
from tests.conftest import make_settings

MODEL = "gpt-4o-mini"


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0.0


def series_of(registry, family_name, key):
    """{(value, token_type?): sample value} of one attributed family and key."""
    out = {}
    for family in registry.collect():
        if family.name != family_name:
            continue
        for s in family.samples:
            if s.name.endswith("_total") and s.labels["key"] == key:
                out[(s.labels["value"], s.labels.get("token_type"))] = s.value
    return out


def query(metrics, sink=None, **decorator):
    @monitored_query("answer", model=MODEL, metrics=metrics, request_log=sink or False,
                     **decorator)
    def answer(tokens_in=1000, tokens_out=100):
        return {"input_tokens": tokens_in, "output_tokens": tokens_out}
    return answer


def test_public_api_is_exported_from_both_entry_points():
    for module in (ragmon, m2_3_monitoring):
        assert module.attribution is attribution and module.set_attribution is set_attribution
        assert "attribution" in module.__all__ and "set_attribution" in module.__all__


def test_settings_have_the_contract_defaults_and_check_their_values():
    s = make_settings()
    assert s.ATTRIBUTION_KEYS == ("tenant", "team", "feature")
    assert s.ATTRIBUTION_TOP_K == 20
    assert s.ATTRIBUTION_HEADERS == {"tenant": "X-Tenant-Id", "team": "X-Team",
                                     "feature": "X-Feature"}
    assert s.BUDGETS_FILE == ""
    assert make_settings(ATTRIBUTION_KEYS="tenant,api_key_name").ATTRIBUTION_KEYS == (
        "tenant", "api_key_name")
    with pytest.raises(ConfigError, match="'Tenant'"):
        make_settings(ATTRIBUTION_KEYS="Tenant")
    with pytest.raises(ConfigError, match="ATTRIBUTION_TOP_K"):
        make_settings(ATTRIBUTION_TOP_K="0")
    with pytest.raises(ConfigError, match="not in ATTRIBUTION_KEYS"):
        make_settings(ATTRIBUTION_KEYS="tenant", ATTRIBUTION_HEADERS="team=X-Team")
    with pytest.raises(ConfigError, match="header"):
        make_settings(ATTRIBUTION_HEADERS="tenant=X Tenant")


def test_keys_from_block_decorator_and_inside_the_query_reach_record_and_metrics(metrics, sink):
    answer = query(metrics, sink, attribution={"feature": "chat"})

    @attribution(team="search")
    def handler():
        with attribution(tenant="acme"):
            return answer()

    handler()
    answer()

    @monitored_query("late", model=MODEL, metrics=metrics, request_log=sink)
    def late():
        assert set_attribution(tenant="globex") is True
        return {"input_tokens": 10, "output_tokens": 1}
    with attribution(tenant="acme"):
        late()

    assert [r.get("attribution") for r in sink.records] == [
        {"feature": "chat", "team": "search", "tenant": "acme"}, {"feature": "chat"},
        {"tenant": "globex"}]
    r = metrics.registry
    assert sample(r, "rag_attributed_queries_total", key="feature", value="chat") == 2
    assert sample(r, "rag_attributed_queries_total", key="tenant", value="globex") == 1
    assert sample(r, "rag_attributed_queries_total", key="team", value="search") == 1
    assert sample(r, "rag_attributed_tokens_total", key="tenant", value="acme",
                  token_type="input") == 1000


def test_a_query_without_keys_writes_no_attribution_field_and_counts_nothing(metrics, sink):
    query(metrics, sink)()
    assert "attribution" not in sink.records[0]
    assert series_of(metrics.registry, "rag_attributed_queries", "tenant") == {}


def test_request_context_binds_keys_and_coroutines_and_generators_keep_them(metrics, sink):
    answer = query(metrics, sink)
    with request_context("req-1", tenant="acme"):
        answer()

    @monitored_query("stream", model=MODEL, metrics=metrics, request_log=sink)
    def stream():
        yield "a"
        yield "b"

    @attribution(tenant="gen")
    def outer():
        yield from stream()

    assert list(outer()) == ["a", "b"]

    @attribution(tenant="async")
    async def coroutine():
        return await query_async()

    @monitored_query("async", model=MODEL, metrics=metrics, request_log=sink)
    async def query_async():
        return {"input_tokens": 1, "output_tokens": 1}

    asyncio.run(coroutine())
    assert [(r["request_id"] if r["operation"] == "answer" else r["operation"],
             r["attribution"]) for r in sink.records] == [
        ("req-1", {"tenant": "acme"}), ("stream", {"tenant": "gen"}),
        ("async", {"tenant": "async"})]


@pytest.mark.parametrize("bad", ["x" * 65, "acme corp", "", "é", "a\nb", 3.5, b"acme", True])
def test_a_bad_value_is_replaced_and_counted_never_raised(metrics, sink, bad):
    answer = query(metrics, sink)
    with attribution(tenant=bad):
        assert answer() == {"input_tokens": 1000, "output_tokens": 100}
    assert sink.records[0]["attribution"] == {"tenant": "invalid"}
    assert sample(metrics.registry, "rag_attribution_invalid_values_total", key="tenant") == 1


def test_whole_numbers_are_taken_as_text_and_none_means_unset(metrics, sink):
    with attribution(tenant=42, team=None):
        query(metrics, sink)()
    assert sink.records[0]["attribution"] == {"tenant": "42"}


def test_set_attribution_outside_a_query_returns_false():
    assert set_attribution(tenant="acme") is False


def test_monitored_query_refuses_a_bad_fixed_value_at_decoration():
    with pytest.raises(ValueError, match="feature"):
        monitored_query("q", attribution={"feature": "has space"})
    with pytest.raises(ValueError, match="mapping"):
        monitored_query("q", attribution=["feature"])


def test_metrics_are_in_the_catalog(metrics):
    names = metrics.exposed_series_names()
    for name in ("rag_attributed_spend_dollars_total", "rag_attributed_tokens_total",
                 "rag_attributed_queries_total", "rag_attribution_membership_changes_total",
                 "rag_attribution_invalid_values_total", "rag_budget_dollars",
                 "rag_budget_spend_dollars_total"):
        assert name in names
