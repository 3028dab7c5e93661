import json
import logging

import pytest

from ragmon.instrument.catalog import RAGMetrics
from ragmon.instrument.pricing import ModelPrice, PriceTable, load_price_file
from ragmon.settings import SHIPPED_PRICES_FILE
from tests.conftest import make_settings


def test_cost_uses_the_configured_defaults_for_unknown_models(metrics, caplog):
    with caplog.at_level(logging.WARNING, logger="ragmon"):
        first = metrics.calculate_cost(input_tokens=500, output_tokens=150, model="gpt-4")
        metrics.calculate_cost(input_tokens=500, output_tokens=150, model="gpt-4")
    assert first == pytest.approx(500 * 0.003 / 1000 + 150 * 0.015 / 1000)
    assert metrics.registry.get_sample_value("rag_unknown_model_total") == 2
    assert len([r for r in caplog.records if "not in the price table" in r.getMessage()]) == 1


def test_price_file_prices_known_models_including_cached_input(tmp_path, registry):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"_comment": "x", "gpt-4": {"input": 0.03, "output": 0.06, "cached_input": 0.015}}))
    m = RAGMetrics(registry=registry, settings=make_settings(MODEL_PRICES_FILE=prices))
    cost = m.calculate_cost(input_tokens=500, output_tokens=150, model="gpt-4", cached_input_tokens=1000)
    assert cost == pytest.approx(0.015 + 0.009 + 0.015)
    assert registry.get_sample_value("rag_unknown_model_total") == 0


def test_an_entry_without_cache_read_prices_bills_them_like_its_input_and_a_version_inherits(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({
        "local-llama": {"input": 0.0, "output": 0.0},
        "gpt-x": {"input": 0.002, "output": 0.008, "cached_input": 0.0005,
                  "versions": [{"effective_from": "2025-01-01", "input": 0.004}]}}))
    default = ModelPrice(0.003, 0.015, 0.0003)
    models = load_price_file(prices, default)
    assert models["local-llama"].cached_input == 0.0, "never the default's cache-read price"
    table = PriceTable.from_settings(make_settings(MODEL_PRICES_FILE=prices))
    import datetime
    version = table.match("gpt-x", datetime.date(2025, 6, 1)).price
    assert (version.input, version.cached_input) == (0.004, 0.0005)


def test_the_shipped_price_database_loads_as_a_price_file_too():
    table = PriceTable.from_file(SHIPPED_PRICES_FILE, ModelPrice(1, 1, 1))
    found = table.match("gpt-4o-mini")
    assert (found.price.output, found.entry, found.source) == (0.0006, "openai/gpt-4o-mini", "user file")


@pytest.mark.parametrize("kwargs, expected", [
    ({"input_tokens": -1}, "negative"),
    ({"output_tokens": 1.5}, "not a count"),
    ({"input_tokens": 500.0}, "not a count"),
    ({"input_tokens": "500"}, "not a count"),
    ({"cached_input_tokens": True}, "not a count"),
])
def test_bad_token_counts_raise_value_error_naming_the_value(metrics, kwargs, expected):
    with pytest.raises(ValueError, match=expected) as err:
        metrics.calculate_cost(model="gpt-4", **kwargs)
    assert repr(next(iter(kwargs.values()))) in str(err.value)


@pytest.mark.parametrize("content, expected", [
    ("not json", "not valid JSON"),
    ("[1, 2]", "holds a list"),
    ('{"m": {"input": -1}}', "finite number >= 0"),
    ('{"m": {"inptu": 1}}', "keys input, output, cached_input"),
])
def test_bad_price_files_are_explained(tmp_path, content, expected):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=expected):
        load_price_file(path, ModelPrice(0, 0, 0))


def test_a_missing_price_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        PriceTable.from_settings(make_settings(MODEL_PRICES_FILE=tmp_path / "nope.json"))
