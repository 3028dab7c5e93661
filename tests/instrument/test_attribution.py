"""Who spends it: attribution keys reach queries and records; spend, tokens and queries are
counted per key with at most K named values plus `other`, and nothing is lost to the cap."""
import asyncio
import json
import random
import re

import pytest

import m2_3_monitoring
import ragmon
from ragmon import RAGMetrics, attribution, monitored_query, request_context, set_attribution
from ragmon.instrument.attribution import HeavyValues, fold_top_k, load_budgets
from ragmon.settings import ConfigError
from tests.conftest import make_settings

MODEL = "gpt-4o-mini"


@pytest.fixture(autouse=True)
def leaves_the_query_path():
    """Attribution joins the query path on first use; each test leaves it as it found it."""
    yield
    from ragmon.instrument.attribution import stop_using
    stop_using()


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


# --- bounded series, exact sums -----------------------------------------------------------------

class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def attributed_sums(registry, key):
    spend = series_of(registry, "rag_attributed_spend_dollars", key)
    queries = series_of(registry, "rag_attributed_queries", key)
    tokens = series_of(registry, "rag_attributed_tokens", key)
    return spend, queries, tokens


def assert_exact(registry, key, queries_expected):
    spend, queries, tokens = attributed_sums(registry, key)
    total = sample(registry, "rag_spend_dollars_total", model=MODEL)
    assert round(sum(spend.values()), 2) == round(total, 2)
    assert abs(sum(spend.values()) - total) < 1e-6
    assert sum(queries.values()) == queries_expected
    for token_type in ("input", "output"):
        assert sum(v for (_, t), v in tokens.items() if t == token_type) == sample(
            registry, "rag_tokens_total", model=MODEL, token_type=token_type)


def test_100000_distinct_tenants_leave_at_most_k_plus_1_series_and_lose_no_dollar(registry):
    k = 20
    metrics = RAGMetrics(registry=registry, settings=make_settings(ATTRIBUTION_TOP_K=k))
    answer = query(metrics)
    rng = random.Random(22)
    changes = lambda: sample(registry, "rag_attribution_membership_changes_total",  # noqa: E731
                             key="tenant")
    for i in range(100_000):
        with attribution(tenant=f"t{i}", team=f"team{i % 7}"):
            answer(rng.randint(10, 2000), rng.randint(1, 300))
        if i == 999:
            warmed_up = changes()
    for key in ("tenant", "team"):
        spend, queries, tokens = attributed_sums(registry, key)
        assert len(spend) <= k + 1 and len(queries) <= k + 1
        assert len({value for value, _ in tokens}) <= k + 1
        assert_exact(registry, key, 100_000)
    assert len(series_of(registry, "rag_attributed_spend_dollars", "team")) == 7 + 1  # all named
    # A crowd of light tenants does not churn the named set: once the first thousand queries
    # have set the scale, no light tenant outweighs a member twice over.
    assert k <= warmed_up <= 2 * k and changes() == warmed_up


def test_the_heavy_tenants_of_a_skewed_mix_are_named(registry):
    metrics = RAGMetrics(registry=registry, settings=make_settings(ATTRIBUTION_TOP_K=10))
    answer = query(metrics)
    rng = random.Random(5)
    heavy = [f"heavy{i}" for i in range(5)]
    for i in range(60_000):
        if rng.random() < 0.3:  # 5 tenants: 30% of the queries, ~80% of the spend
            tenant, tokens_in = rng.choice(heavy), 20_000
        else:
            tenant, tokens_in = f"light{rng.randrange(20_000)}", 500
        with attribution(tenant=tenant):
            answer(tokens_in, 100)
    spend, _, _ = attributed_sums(registry, "tenant")
    assert set(heavy) <= {value for value, _ in spend}
    named = sum(v for (value, _), v in spend.items() if value in heavy)
    assert named > 0.7 * sum(spend.values())
    assert len(spend) <= 11
    assert_exact(registry, "tenant", 60_000)
    assert sample(registry, "rag_attribution_membership_changes_total", key="tenant") <= 10 + 5


def test_churn_moves_counts_into_other_exactly_and_changes_stay_rare(registry):
    """The heavy tenants change every phase; the sliding window lets the new ones in, each
    departing value's counts move to `other`, and the sums stay exact after every phase."""
    from ragmon.instrument.attribution import AttributionLedger
    clock = FakeClock()
    settings = make_settings(ATTRIBUTION_TOP_K=5)
    metrics = RAGMetrics(registry=registry, settings=settings)
    metrics.attribution_ledger = AttributionLedger(metrics, settings, clock=clock)
    answer = query(metrics)
    rng = random.Random(9)
    done = 0
    for phase in range(6):
        heavy = [f"p{phase}-heavy{i}" for i in range(3)]
        for i in range(6000):
            tenant = rng.choice(heavy) if rng.random() < 0.4 else f"light{rng.randrange(5000)}"
            with attribution(tenant=tenant):
                answer(8000 if tenant in heavy else 300, 50)
            done += 1
            if i % 1000 == 999:
                clock.now += 1800  # a half-life passes
        spend, queries, _ = attributed_sums(registry, "tenant")
        assert set(heavy) <= {value for value, _ in spend}, phase
        assert len(spend) <= 6 and len(queries) <= 6
        assert_exact(registry, "tenant", done)
    changes = sample(registry, "rag_attribution_membership_changes_total", key="tenant")
    assert 5 + 3 * 5 <= changes <= 5 + 6 * 3 + 6  # the new heavy ones, not the crowd


def test_heavy_values_keeps_memory_bounded_and_prefers_heavy_hitters():
    heavy = HeavyValues(k=3, clock=FakeClock())
    for i in range(50_000):
        heavy.add(f"light{i}", 0.01)
        if i % 10 == 0:
            heavy.add("whale", 1.0)
    assert len(heavy.scores) <= 2 * heavy.capacity
    assert "whale" in heavy.named and len(heavy.named) == 3


def test_a_scrape_waits_for_a_membership_change_in_progress(registry):
    """Moving a departing value's counts into `other` and collecting the attributed metrics
    hold one lock, so a scrape never sees those counts twice (or not at all)."""
    import threading
    from ragmon.instrument.attribution import ledger_of
    metrics = RAGMetrics(registry=registry, settings=make_settings(ATTRIBUTION_TOP_K=2))
    with attribution(tenant="acme"):
        query(metrics)()
    ledger = ledger_of(metrics)
    collected = []
    with ledger.lock:  # as _admit holds it while it folds a value into other
        scrape = threading.Thread(target=lambda: collected.append(
            list(metrics.attributed_spend.collect())))
        scrape.start()
        scrape.join(0.5)
        assert scrape.is_alive() and not collected
    scrape.join()
    assert collected


def test_fold_top_k_keeps_k_values_and_adds_the_rest_to_other():
    from prometheus_client.metrics_core import Metric
    family = Metric("rag_attributed_spend_dollars", "doc", "counter")
    for value, amount in [("a", 5.0), ("b", 1.0), ("c", 3.0), ("other", 2.0), ("d", 0.5)]:
        family.add_sample("rag_attributed_spend_dollars_total",
                          {"key": "tenant", "value": value}, amount)
    queries = Metric("rag_attributed_queries", "doc", "counter")
    for value in "abcd":
        queries.add_sample("rag_attributed_queries_total", {"key": "tenant", "value": value}, 1)
    folded = {f.name: f for f in fold_top_k([family, queries], k=2)}
    spend = {s.labels["value"]: s.value for s in folded["rag_attributed_spend_dollars"].samples}
    assert spend == {"a": 5.0, "c": 3.0, "other": 3.5}
    count = {s.labels["value"]: s.value for s in folded["rag_attributed_queries"].samples}
    assert count == {"a": 1, "c": 1, "other": 2}


# --- budgets ------------------------------------------------------------------------------------

def test_budgets_file_json_and_yaml_give_exact_spend_for_budgeted_values_only(tmp_path, registry):
    (tmp_path / "budgets.yaml").write_text(
        "tenant:\n  acme: {daily: 5, monthly: 100}\n  globex:\n    monthly: 20\n")
    (tmp_path / "budgets.json").write_text(json.dumps(
        {"tenant": {"acme": {"daily": 5, "monthly": 100}, "globex": {"monthly": 20}}}))
    assert load_budgets(tmp_path / "budgets.yaml") == load_budgets(tmp_path / "budgets.json")
    settings = make_settings(BUDGETS_FILE=tmp_path / "budgets.yaml", ATTRIBUTION_TOP_K=1)
    metrics = RAGMetrics(registry=registry, settings=settings)
    answer = query(metrics)
    for tenant in ["acme", "globex", "globex", "initech"]:  # globex is in "other" (K=1)
        with attribution(tenant=tenant):
            answer()
    one = sample(registry, "rag_spend_dollars_total", model=MODEL) / 4
    assert sample(registry, "rag_budget_dollars", key="tenant", value="acme", period="daily") == 5
    assert sample(registry, "rag_budget_dollars", key="tenant", value="globex",
                  period="monthly") == 20
    assert registry.get_sample_value("rag_budget_dollars", {"key": "tenant", "value": "globex",
                                                            "period": "daily"}) is None
    assert sample(registry, "rag_budget_spend_dollars_total", key="tenant",
                  value="acme") == pytest.approx(one)
    assert sample(registry, "rag_budget_spend_dollars_total", key="tenant",
                  value="globex") == pytest.approx(2 * one)
    assert registry.get_sample_value("rag_budget_spend_dollars_total",
                                     {"key": "tenant", "value": "initech"}) is None


@pytest.mark.parametrize("content, message", [
    ('{"tenant": {"acme": {"daily": -5}}}', "daily budget -5"),
    ('{"tenant": {"acme": {"weekly": 5}}}', "daily and/or monthly"),
    ('{"tenant": {"acme corp": {"daily": 5}}}', "'acme corp'"),
    ('{"Tenant": {"acme": {"daily": 5}}}', "'Tenant'"),
    ('{"tenant": ["acme"]}', "must map values"),
    ('[1, 2]', "holds a list"),
    ('{"tenant": {"acme": {"daily": 5}', "not valid JSON"),
])
def test_a_bad_budgets_file_names_the_bad_value(tmp_path, content, message):
    path = tmp_path / "budgets.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(message)):
        load_budgets(path)
    from ragmon.settings import check_startup
    with pytest.raises(ConfigError, match="BUDGETS_FILE"):
        check_startup(make_settings(BUDGETS_FILE=path))


def test_a_bad_budgets_file_never_breaks_queries(tmp_path, registry):
    path = tmp_path / "budgets.json"
    path.write_text("{not json")
    metrics = RAGMetrics(registry=registry, settings=make_settings(BUDGETS_FILE=path))
    with attribution(tenant="acme"):
        assert query(metrics)() == {"input_tokens": 1000, "output_tokens": 100}
    assert sample(registry, "rag_instrumentation_errors_total", reason="budgets_file") == 1
    assert sample(registry, "rag_attributed_queries_total", key="tenant", value="acme") == 1


def test_counts_survive_a_settings_change(registry, monkeypatch):
    from ragmon.instrument import attribution as feature
    metrics = RAGMetrics(registry=registry)  # follows the process settings
    monkeypatch.setattr(metrics, "_settings", make_settings(ATTRIBUTION_TOP_K=2))
    answer = query(metrics)
    for tenant in ("a", "b", "c"):
        with attribution(tenant=tenant):
            answer()
    before = feature.ledger_of(metrics)
    metrics.settings_changed()  # as ragmon.configure() does
    monkeypatch.setattr(metrics, "_settings", make_settings(ATTRIBUTION_TOP_K=5))
    with attribution(tenant="d"):
        answer()
    assert feature.ledger_of(metrics) is not before
    assert_exact(registry, "tenant", 4)
