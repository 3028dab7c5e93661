"""List prices from genai-prices: the public table prices current models of five providers, as
the SDKs spell them, exactly as genai-prices' own calc_price does (cache reads, cache writes,
reasoning, price history, service tiers, long-context tiers, time of day); the user's price file
wins; a glob never prices a model the database knows; an unknown model is default-priced,
counted and marked; the shipped snapshot is genai-prices' data and works without it."""
from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import pytest
from genai_prices import Usage as GenaiUsage, calc_price
from prometheus_client import CollectorRegistry

import ragmon
from ragmon.instrument import price_database
from ragmon.instrument.catalog import RAGMetrics
from ragmon.instrument.decorator import monitored_query
from ragmon.instrument.pricing import ModelPrice, PriceTable
from tests.conftest import ListSink, make_settings

ROOT = Path(__file__).resolve().parents[2]
NOON = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.timezone.utc)

# (name as an SDK or router returns it, provider the SDK names or None, genai-prices' model
# reference and provider for the same request). The first fifteen were priced at the default
# guess, or (claude-opus-4-6) by an older generation's glob, by the hand-kept table.
CURRENT_MODELS = [
    ("gpt-5.1", None, "gpt-5.1", None), ("gpt-5.2", None, "gpt-5.2", None),
    ("gpt-5.4", None, "gpt-5.4", None), ("gpt-5.4-mini", None, "gpt-5.4-mini", None),
    ("gpt-5.5", None, "gpt-5.5", None), ("claude-sonnet-5", None, "claude-sonnet-5", None),
    ("gemini-2.5-flash", None, "gemini-2.5-flash", None),
    ("gemini-2.5-pro", None, "gemini-2.5-pro", None),
    ("gemini-3-pro-preview", None, "gemini-3-pro-preview", None),
    ("gemini-3.5-flash", None, "gemini-3.5-flash", None),
    ("deepseek-chat", None, "deepseek-chat", None),
    ("deepseek-reasoner", None, "deepseek-reasoner", None),
    ("mistral-large-2512", None, "mistral-large-2512", None),
    ("mistral-small-latest", None, "mistral-small-latest", None),
    ("claude-opus-4-6", None, "claude-opus-4-6", None),
    # OpenAI: dated snapshots as the API returns them, a router prefix, Azure.
    ("gpt-5", None, "gpt-5", None), ("gpt-5-mini", None, "gpt-5-mini", None),
    ("gpt-5-nano", None, "gpt-5-nano", None), ("gpt-5.4-nano", None, "gpt-5.4-nano", None),
    ("gpt-4.1", None, "gpt-4.1", None), ("gpt-4.1-mini", None, "gpt-4.1-mini", None),
    ("gpt-4.1-nano", None, "gpt-4.1-nano", None), ("gpt-4o", None, "gpt-4o", None),
    ("gpt-4o-mini-2024-07-18", "openai", "gpt-4o-mini-2024-07-18", "openai"),
    ("gpt-4o-2024-08-06", None, "gpt-4o-2024-08-06", None),
    ("o3-2025-04-16", None, "o3-2025-04-16", None),
    ("o4-mini-2025-04-16", None, "o4-mini-2025-04-16", None),
    ("gpt-5.4-2026-03-05", None, "gpt-5.4-2026-03-05", None),
    ("gpt-5.5-2026-04-23", None, "gpt-5.5-2026-04-23", None),
    ("gpt-5.1-2025-11-13", None, "gpt-5.1-2025-11-13", None),
    ("openai/gpt-4o-mini", None, "gpt-4o-mini", "openai"),
    ("text-embedding-3-small", "openai", "text-embedding-3-small", "openai"),
    ("gpt-4o-mini", "azure", "gpt-4o-mini", "azure"),
    # Anthropic: dated ids, a router prefix, Bedrock and Vertex spellings.
    ("claude-opus-4-5-20251101", "anthropic", "claude-opus-4-5-20251101", "anthropic"),
    ("claude-sonnet-4-5-20250929", None, "claude-sonnet-4-5-20250929", None),
    ("claude-haiku-4-5-20251001", None, "claude-haiku-4-5-20251001", None),
    ("claude-sonnet-4-20250514", None, "claude-sonnet-4-20250514", None),
    ("claude-opus-4-1-20250805", None, "claude-opus-4-1-20250805", None),
    ("claude-3-5-haiku-20241022", None, "claude-3-5-haiku-20241022", None),
    ("claude-sonnet-4-6", None, "claude-sonnet-4-6", None),
    ("claude-opus-4-7", None, "claude-opus-4-7", None),
    ("anthropic/claude-sonnet-4-5", None, "claude-sonnet-4-5", "anthropic"),
    ("anthropic.claude-sonnet-4-5-20250929-v1:0", None,
     "anthropic.claude-sonnet-4-5-20250929-v1:0", "aws"),
    ("us.anthropic.claude-haiku-4-5-20251001-v1:0", "bedrock",
     "us.anthropic.claude-haiku-4-5-20251001-v1:0", "aws"),
    ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", None,
     "global.anthropic.claude-sonnet-4-5-20250929-v1:0", "aws"),
    ("claude-sonnet-4-5@20250929", None, "claude-sonnet-4-5@20250929", "google"),
    ("claude-opus-4-1@20250805", "vertex", "claude-opus-4-1@20250805", "google"),
    # Google: the Gemini API and Vertex.
    ("gemini-2.5-flash-lite", None, "gemini-2.5-flash-lite", None),
    ("gemini-2.0-flash-001", None, "gemini-2.0-flash-001", None),
    ("gemini-3-flash-preview", None, "gemini-3-flash-preview", None),
    ("gemini-3.1-pro-preview", "google", "gemini-3.1-pro-preview", "google"),
    ("models/gemini-2.5-flash", None, "gemini-2.5-flash", "google"),
    ("vertex_ai/gemini-2.5-pro", None, "gemini-2.5-pro", "google"),
    # DeepSeek and Mistral.
    ("deepseek-v4-flash", None, "deepseek-v4-flash", None),
    ("deepseek/deepseek-chat", None, "deepseek-chat", "deepseek"),
    ("mistral-medium-latest", None, "mistral-medium-latest", None),
    ("mistral-large-latest", None, "mistral-large-latest", None),
    ("codestral-latest", None, "codestral-latest", None),
    ("ministral-8b-latest", None, "ministral-8b-latest", None),
    ("magistral-medium-latest", None, "magistral-medium-latest", None),
    ("mistral/mistral-small-latest", None, "mistral-small-latest", "mistral"),
    ("mistral-embed", None, "mistral-embed", None),
    ("devstral-2512", None, "devstral-2512", None),
]

# One request with every token kind: the whole prompt includes the cache reads and writes, the
# whole completion includes the reasoning.
PROMPT, CACHE_READ, WRITE_5M, WRITE_1H, OUTPUT, REASONING = 12_000, 5_000, 1_000, 500, 800, 300


def ragmon_cost(found, prompt=PROMPT) -> float:
    return found.price.cost_by_kind({
        "input": prompt - CACHE_READ - WRITE_5M - WRITE_1H, "cached_input": CACHE_READ,
        "cache_write": WRITE_5M, "cache_write_1h": WRITE_1H, "output": OUTPUT})


def genai(ref, provider, when=NOON, prompt=PROMPT, context=None):
    usage = GenaiUsage(input_tokens=prompt, cache_read_tokens=CACHE_READ,
                       cache_write_tokens=WRITE_5M + WRITE_1H, cache_write_5m_tokens=WRITE_5M,
                       cache_write_1h_tokens=WRITE_1H, output_tokens=OUTPUT,
                       output_reasoning_tokens=REASONING)
    extra = {"provider_id": provider} if provider else {}
    return calc_price(usage, ref, genai_request_timestamp=when, price_context=context, **extra)


def same_dollars(ours: float, theirs: Decimal) -> bool:
    return abs(Decimal(repr(ours)) - theirs) <= Decimal("1e-12") + theirs * Decimal("1e-9")


@pytest.fixture(scope="module")
def public_table():
    ragmon.configure(MODEL_PRICES_FILE="", PRICE_DATABASE="auto")
    try:
        yield ragmon.PriceTable.from_settings(ragmon.get_settings())
    finally:
        ragmon.settings.set_settings(None)


@pytest.fixture(scope="module")
def converted_table():
    """The installed genai-prices converted now, whatever the shipped snapshot holds."""
    snapshot = price_database.snapshot_from_genai_prices()
    return PriceTable(ModelPrice(0.003, 0.015, 0.0003),
                      database=price_database.PriceDatabase(snapshot, "converted"))


def test_at_least_fifty_current_models_of_five_providers_are_listed():
    assert len(CURRENT_MODELS) >= 50
    assert len({name for name, *_ in CURRENT_MODELS}) == len(CURRENT_MODELS)


@pytest.mark.parametrize("name, provider, ref, genai_provider", CURRENT_MODELS)
def test_the_public_table_prices_current_models_as_genai_prices_does(
        public_table, converted_table, name, provider, ref, genai_provider):
    theirs = genai(ref, genai_provider)
    for table in (public_table, converted_table):
        found = table.match(name, NOON, provider=provider, prompt_tokens=PROMPT)
        assert found.known and found.source.startswith(("genai-prices", "shipped", "converted")), found
        assert found.entry.split("/", 1)[1] == theirs.model.id, (found.entry, theirs.model.id)
        assert same_dollars(ragmon_cost(found), theirs.total_price), (name, ragmon_cost(found),
                                                                    theirs.total_price)


@pytest.mark.parametrize("name, when, context, prompt, tier", [
    ("gpt-5.5", NOON, {"service_tier": "flex"}, PROMPT, "flex"),
    ("gpt-5.5", NOON, {"service_tier": "flex"}, 300_000, "flex+input>272000"),
    ("gpt-5.5", NOON, None, 300_000, "input>272000"),
    ("gpt-5.4", NOON, {"service_tier": "priority"}, PROMPT, "priority"),
    ("gpt-4o", NOON, {"processing": "batch"}, PROMPT, "batch"),
    ("gemini-2.5-pro", NOON, {"processing": "batch"}, 250_000, "batch+input>200000"),
    ("gemini-2.5-pro", NOON, {"service_tier": "flex"}, PROMPT, None),  # no flex price: standard
    ("gemini-4-neon", NOON, {"service_tier": "priority"}, PROMPT, "priority"),
    ("claude-sonnet-4-5", NOON, None, 250_000, "input>200000"),
    ("o3", dt.datetime(2025, 6, 9, 12, tzinfo=dt.timezone.utc), None, PROMPT, None),
    ("o3", dt.datetime(2025, 6, 10, 0, tzinfo=dt.timezone.utc), None, PROMPT, None),
    ("deepseek-chat", dt.datetime(2026, 12, 7, 20, tzinfo=dt.timezone.utc), None, PROMPT, None),
    ("deepseek-chat", dt.datetime(2026, 12, 7, 1, tzinfo=dt.timezone.utc), None, PROMPT, None),
])
def test_tiers_history_and_time_of_day_are_priced_as_genai_prices_does(
        public_table, name, when, context, prompt, tier):
    service_tier = None if context is None else (
        "batch" if context.get("processing") == "batch" else context["service_tier"])
    found = public_table.match(name, when, service_tier=service_tier, prompt_tokens=prompt)
    theirs = genai(name, None, when=when, prompt=prompt, context=context)
    assert found.tier == tier
    assert same_dollars(ragmon_cost(found, prompt), theirs.total_price), (found, theirs.total_price)


def test_a_date_without_a_time_takes_the_price_in_force_at_noon_utc(public_table):
    assert public_table.match("deepseek-chat", dt.date(2026, 12, 7)).price == \
        public_table.match("deepseek-chat", NOON).price
    night = public_table.match("deepseek-chat", dt.datetime(2026, 12, 7, 20, tzinfo=dt.timezone.utc))
    assert night.price.input < public_table.match("deepseek-chat", NOON).price.input


def test_the_users_price_file_beats_the_database_and_its_globs_never_price_a_known_model(tmp_path):
    prices = tmp_path / "negotiated.json"
    prices.write_text(json.dumps({
        "gpt-4o-mini": {"input": 0.0001, "output": 0.0004, "cached_input": 0.00005},
        "claude-opus-4": {"input": 0.015, "output": 0.075, "patterns": ["claude-opus-4*"]},
        "llama-3.1-8b-local": {"input": 0.0, "output": 0.0}}))
    table = PriceTable.from_settings(make_settings(MODEL_PRICES_FILE=prices, PRICE_DATABASE="shipped"))
    for name in ("gpt-4o-mini", "gpt-4o-mini-2024-07-18", "openai/gpt-4o-mini"):
        found = table.match(name, NOON, provider="openai")
        assert (found.source, found.entry, found.price.input) == ("user file", "gpt-4o-mini", 0.0001)
    assert table.match("llama-3.1-8b-local").source == "user file"
    # The old generation's glob: claude-opus-4-6 is the database's, at a third of that price.
    opus = table.match("claude-opus-4-6", NOON)
    assert (opus.source, opus.entry) == ("shipped", "anthropic/claude-opus-4-6")
    assert opus.price.input == pytest.approx(0.005)
    # A name the database does not know still reaches the glob.
    assert table.match("claude-opus-4-internal-ft").source == "user file"
    assert table.match("claude-opus-4-internal-ft").match == "pattern"


def test_an_unknown_model_is_default_priced_counted_and_marked():
    registry = CollectorRegistry()
    metrics = RAGMetrics(registry=registry, settings=make_settings(PRICE_DATABASE="shipped"))
    sink = ListSink()
    query = monitored_query("answer", metrics=metrics, request_log=sink)(
        lambda: {"model": "my-own-finetune-7b", "input_tokens": 1000, "output_tokens": 100})
    query()
    assert registry.get_sample_value("rag_unknown_model_total") == 1
    pricing = sink.records[0]["pricing"]
    assert (pricing["match"], pricing["source"], pricing["entry"]) == ("default", "default", None)
    assert sink.records[0]["cost"] == pytest.approx(1000 * 0.003 / 1000 + 100 * 0.015 / 1000)


def test_records_say_what_priced_them():
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=make_settings(PRICE_DATABASE="shipped"))
    sink = ListSink()
    monitored_query("answer", metrics=metrics, request_log=sink)(
        lambda: {"model": "claude-opus-4-6", "input_tokens": 1000, "output_tokens": 100})()
    pricing = sink.records[0]["pricing"]
    assert (pricing["source"], pricing["entry"], pricing["tier"]) == \
        ("shipped", "anthropic/claude-opus-4-6", None)
    assert sink.records[0]["cost"] == pytest.approx((1000 * 5 + 100 * 25) / 1e6)
    assert metrics.registry.get_sample_value("rag_unknown_model_total") == 0


def test_the_shipped_snapshot_is_the_installed_genai_prices_data():
    installed = price_database.installed_genai_prices()
    shipped = json.loads(price_database.SHIPPED_DATABASE_FILE.read_text())
    table = PriceTable.from_settings(make_settings(PRICE_DATABASE="auto"))
    assert table.database_source == f"genai-prices {installed}"
    if installed == shipped["version"]:
        converted = price_database.snapshot_from_genai_prices(
            today=dt.date.fromisoformat(shipped["generated"]))
        assert converted == shipped, ("the shipped snapshot differs from genai-prices "
                                      f"{installed}: run python -m ragmon.instrument.price_database")
    else:  # a newer genai-prices than the snapshot: its own data is converted and used
        assert table.database is not price_database.load_database("shipped")


def test_the_database_is_read_once_per_process_and_shared():
    first = PriceTable.from_settings(make_settings(PRICE_DATABASE="auto"))
    second = PriceTable.from_settings(make_settings(PRICE_DATABASE="auto", MODEL_PRICES_FILE=""))
    assert first.database is second.database is price_database.load_database("auto")
    assert PriceTable.from_settings(make_settings(PRICE_DATABASE="none")).database is None


def test_without_genai_prices_installed_the_shipped_snapshot_prices_and_says_so(tmp_path):
    code = ("import sys; sys.modules['genai_prices'] = None\n"
            "import json, ragmon\n"
            "found = ragmon.PriceTable.from_settings(ragmon.get_settings()).match('gpt-5.4-mini')\n"
            "print(json.dumps([found.source, found.entry, found.price.input, "
            "'genai_prices' in sys.modules and sys.modules['genai_prices'] is not None]))")
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "MODEL_PRICES_FILE": "",
                                 "PRICE_DATABASE": "auto"})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["shipped", "openai/gpt-5.4-mini", 0.00075, False]


def test_asking_for_genai_prices_when_it_is_missing_is_explained(monkeypatch):
    monkeypatch.setattr(price_database, "installed_genai_prices", lambda: None)
    with pytest.raises(ValueError, match=r"pip install 'ragmon\[prices\]'"):
        price_database.load_database("genai-prices")


def test_a_snapshot_can_be_regenerated_to_a_file_and_used_as_the_price_file(tmp_path):
    out = tmp_path / "prices_snapshot.json"
    assert price_database.main(["--out", str(out)]) == 0
    table = PriceTable.from_settings(make_settings(MODEL_PRICES_FILE=out, PRICE_DATABASE="none"))
    found = table.match("gpt-5.4-mini", NOON)
    assert (found.source, found.entry) == ("user file", "openai/gpt-5.4-mini")


def test_a_model_priced_by_hours_or_pages_is_not_priced_by_tokens(public_table):
    assert public_table.match("whisper-1", NOON, provider="openai").match == "default"
    assert public_table.match("mistral-ocr-latest", NOON).match == "default"


def test_matching_is_provider_aware(public_table):
    direct = public_table.match("claude-sonnet-4-5-20250929", NOON, provider="anthropic")
    bedrock = public_table.match("claude-sonnet-4-5-20250929", NOON, provider="bedrock")
    assert direct.entry == "anthropic/claude-sonnet-4-5"
    assert bedrock.entry.startswith("aws/") and bedrock.price.input == pytest.approx(direct.price.input * 1.1)
    # DeepSeek through the OpenAI SDK (the headers say "openai"): the name says whose model it is.
    assert public_table.match("deepseek-chat", NOON, provider="openai").entry == "deepseek/deepseek-chat"
    # Azure resells OpenAI's models at OpenAI's prices, without OpenAI's service tiers.
    azure = public_table.match("gpt-5.4", NOON, provider="azure", service_tier="priority")
    assert azure.tier is None and azure.source != "default"


def test_a_long_context_tier_starts_above_its_threshold_and_prices_every_kind(public_table):
    at = public_table.match("gpt-5.4", NOON, prompt_tokens=272_000)
    above = public_table.match("gpt-5.4", NOON, prompt_tokens=272_001)
    assert at.tier is None and above.tier == "input>272000"
    assert above.price.input == 2 * at.price.input and above.price.output > at.price.output
    assert above.price.id == "openai/gpt-5.4>272000"


def test_cost_by_kind_bills_each_price_field_and_names_a_wrong_one(public_table):
    price = public_table.match("claude-opus-4-6", NOON).price
    assert price.cost_by_kind({"input": 1000, "cached_input": 1000, "cache_write": 1000,
                               "cache_write_1h": 1000, "output": 1000}) == pytest.approx(
        (5 + 0.5 + 6.25 + 10 + 25) / 1000)
    with pytest.raises(KeyError, match="cache_write_5m"):
        price.cost_by_kind({"cache_write_5m": 1})


def test_time_of_day_prices_are_cached_per_window_never_across_them(public_table):
    evening = dt.datetime(2026, 12, 8, 20, tzinfo=dt.timezone.utc)
    day = dt.date(2026, 12, 8)
    first = public_table.match("deepseek-chat", evening)  # asked first at an off-peak hour
    assert public_table.match("deepseek-chat", day).price != first.price  # a date means noon
    assert public_table.match("deepseek-chat", evening.replace(hour=22)).price == first.price
    assert public_table.match("deepseek-chat", evening.replace(hour=10)).price == \
        public_table.match("deepseek-chat", day).price


def test_the_docs_say_which_genai_prices_the_shipped_snapshot_is_and_how_old():
    shipped = json.loads(price_database.SHIPPED_DATABASE_FILE.read_text())
    docs = (ROOT / "docs" / "sdk.md").read_text()
    assert (f"The shipped snapshot is genai-prices {shipped['version']}, generated on\n"
            f"{shipped['generated']}") in docs, "update docs/sdk.md after regenerating the snapshot"
