"""Costs over time: default-priced spend apart, reprice (dry run and real), reconcile with a
seeded invoice in each accepted CSV shape."""
from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from m2_3_report import build_report, load_records
from ragmon.instrument.pricing import PriceTable
from ragmon.report.costs import read_invoice, reconcile, reprice_logs
from tests.report.test_report import NOW, rec, write_records
from tests.report.test_report_cli import run

DAY = 86400


def day_of(ago_days: int) -> str:
    return datetime.fromtimestamp(NOW - ago_days * DAY, timezone.utc).date().isoformat()


@pytest.fixture
def prices(tmp_path):
    path = tmp_path / "prices.json"
    path.write_text(json.dumps({"gpt-4o-mini": {"input": 0.001, "output": 0.002},
                                "claude-3-5-haiku": {"input": 0.01, "output": 0.02}}))
    return path


@pytest.fixture
def priced(prices):
    """Settings whose price table knows gpt-4o-mini and claude-3-5-haiku, not mystery-model."""
    from tests.conftest import make_settings
    return make_settings(MODEL_PRICES_FILE=str(prices))


def history(log_dir):
    """Two past days: gpt-4o-mini priced too cheaply, plus one unknown model; today one record."""
    records = []
    for d in (2, 3):
        records += [rec(d * 10 + n, ago=d * DAY, model="gpt-4o-mini", cost=0.0001,
                        tokens=(1000, 500, 0)) for n in range(3)]
        records.append(rec(d * 10 + 5, ago=d * DAY, model="mystery-model", cost=0.0105,
                           tokens=(1000, 500, 0)))
    records.append(rec(99, ago=60, model="gpt-4o-mini", cost=0.0001, tokens=(1000, 500, 0)))
    write_records(log_dir, records)
    return records


def test_reprice_dry_run_changes_nothing_and_the_real_run_keeps_the_original(tmp_path, prices,
                                                                          settings):
    log_dir = tmp_path / "logs"
    history(log_dir)
    before = {p.name: p.read_bytes() for p in log_dir.iterdir()}
    dry = reprice_logs(log_dir, prices, settings, dry_run=True, now=NOW)
    assert {p.name: p.read_bytes() for p in log_dir.iterdir()} == before
    by_key = {(r["day"], r["model"]): r for r in dry.rows}
    mini = by_key[(day_of(2), "gpt-4o-mini")]
    assert mini["requests"] == 3
    assert mini["old"] == pytest.approx(0.0003) and mini["new"] == pytest.approx(3 * 0.002)
    assert dry.skipped_today == 1  # the day in progress is not rewritten
    real = reprice_logs(log_dir, prices, settings, dry_run=False, now=NOW)
    assert real.rows == dry.rows and real.records == 8
    df = load_records(log_dir, settings=settings).set_index("request_id")
    assert df.loc["req-20", "cost"] == pytest.approx(0.002)
    assert df.loc["req-20", "cost_original"] == pytest.approx(0.0001)
    assert df.loc["req-25", "price_match"] == "default"
    assert df.loc["req-99", "cost"] == pytest.approx(0.0001)  # today: left alone
    report = build_report(df.reset_index(), settings)
    assert report["cost"]["repriced"]["requests"] == 8
    # Repriced again, the first figure stays the original.
    reprice_logs(log_dir, prices, settings, dry_run=False, now=NOW)
    again = load_records(log_dir, settings=settings).set_index("request_id")
    assert again.loc["req-20", "cost_original"] == pytest.approx(0.0001)


def test_reprice_rewrites_the_parquet_history_too(tmp_path, prices, settings):
    from ragmon.report.compact import compact_logs
    log_dir = tmp_path / "logs"
    history(log_dir)
    compact_logs(log_dir, now=NOW)
    proc = run("reprice", "--prices", prices, "--since", day_of(2), "--log-dir", log_dir)
    assert proc.returncode == 0, proc.stderr
    assert "repriced 4 records in 1 file(s)" in proc.stdout and day_of(3) not in proc.stdout
    df = load_records(log_dir, settings=settings).set_index("request_id")
    assert df.loc["req-20", "cost"] == pytest.approx(0.002)
    assert df.loc["req-30", "cost"] == pytest.approx(0.0001)  # before --since
    proc = run("report", "--hours", 24 * 5, "--log-dir", log_dir)
    assert "repriced: 4 requests" in proc.stdout


def test_the_report_shows_default_priced_spend_apart(tmp_path, priced):
    settings = priced
    history(tmp_path)
    report = build_report(load_records(tmp_path, settings=settings), settings)
    default = report["cost"]["default_priced"]
    assert default["requests"] == 2 and default["models"] == ["mystery-model"]
    assert default["cost"] == pytest.approx(0.021)
    # A record that says how it was priced is believed.
    write_records(tmp_path / "said", [rec(1, model="gpt-4o-mini", price_match="default")])
    said = build_report(load_records(tmp_path / "said", settings=settings), settings)
    assert said["cost"]["default_priced"]["requests"] == 1


def test_reconcile_names_the_day_and_model_that_differ(tmp_path, priced, prices):
    settings = priced
    history(tmp_path)
    df = load_records(tmp_path, settings=settings)
    invoice = tmp_path.parent / f"{tmp_path.name}-invoice.csv"
    invoice.write_text("date,model,cost\n"
                       f"{day_of(3)},gpt-4o-mini,0.0003\n"       # agrees
                       f"{day_of(2)},gpt-4o-mini,0.0060\n"       # differs: prices were wrong
                       f"{day_of(3)},mystery-model,0.0300\n"     # default-priced records
                       f"{day_of(6)},gpt-4o-mini,0.0100\n"       # a day the log lacks
                       f"{day_of(2)},o3-pro,0.5\n")              # a model nobody logged
    totals, shape = read_invoice(invoice)
    assert shape == "simple"
    table = PriceTable.from_settings(settings)
    found = {(d.day, d.model): d for d in reconcile(df, totals, table)}
    assert (day_of(3), "gpt-4o-mini") not in found
    assert found[(day_of(2), "gpt-4o-mini")].cause.startswith("prices differ")
    assert found[(day_of(3), "mystery-model")].cause.startswith("default-priced records")
    assert found[(day_of(6), "gpt-4o-mini")].cause.startswith("missing day")
    assert found[(day_of(2), "o3-pro")].cause.startswith("unknown model")
    assert found[(day_of(2), "mystery-model")].cause.startswith("not on the invoice")
    # Within the tolerance, no difference.
    assert not [d for d in reconcile(df, {(day_of(3), "gpt-4o-mini"): 0.000305}, table)
                if d.model == "gpt-4o-mini"]
    proc = run("reconcile", "--invoice", invoice, "--log-dir", tmp_path,
               env={"MODEL_PRICES_FILE": str(prices)})
    assert proc.returncode == 0, proc.stderr
    assert "5 difference(s) beyond 2%" in proc.stdout and "missing day" in proc.stdout


def test_provider_cost_exports_are_read(tmp_path):
    start = int(datetime(2026, 11, 20, tzinfo=timezone.utc).timestamp())
    openai = tmp_path / "openai.csv"
    openai.write_text("start_time,end_time,amount_value,amount_currency,line_item,project_id\n"
                      f'{start},{start + DAY},0.25,usd,"gpt-4o-mini-2024-07-18, input",proj\n'
                      f'{start},{start + DAY},0.50,usd,"gpt-4o-mini-2024-07-18, output",proj\n')
    totals, shape = read_invoice(openai)
    assert shape == "openai" and totals == {("2026-11-20", "gpt-4o-mini-2024-07-18"): 0.75}
    anthropic = tmp_path / "anthropic.csv"
    anthropic.write_text("starting_at,ending_at,amount,currency,model,cost_type\n"
                         "2026-11-20T00:00:00Z,2026-11-21T00:00:00Z,123.45,USD,claude-3-5-haiku,tokens\n")
    totals, shape = read_invoice(anthropic)
    assert shape == "anthropic" and totals == {("2026-11-20", "claude-3-5-haiku"): pytest.approx(1.2345)}
    bad = tmp_path / "bad.csv"
    bad.write_text("when,what\n1,2\n")
    with pytest.raises(ValueError, match="expected one of: simple: date, model, cost"):
        read_invoice(bad)


def test_cache_writes_and_reasoning_survive_compaction_and_are_repriced(tmp_path, settings):
    """Token kinds of the SDK records (cache writes, reasoning) are read, kept in the Parquet
    history, and billed by reprice at the price file's cache_write price, dated versions too."""
    from ragmon.report.compact import compact_logs
    from ragmon.report.reader import iter_records
    log_dir = tmp_path / "logs"
    record = rec(40, ago=2 * DAY, model="claude-x-20250101", cost=0.0, tokens=(1000, 500, 200))
    record["tokens"].update(cache_write_5m=2000, cache_write_1h=0, reasoning=300)
    write_records(log_dir, [record])
    compact_logs(log_dir, now=NOW)
    past = day_of(2).replace("-", "")
    assert not (log_dir / f"{past}_performance.jsonl").exists(), "the past day moved to Parquet"
    assert list((log_dir / "history").glob("day=*/records.parquet"))
    (back,) = [r for r in iter_records(log_dir) if r["request_id"] == "req-40"]
    assert back["tokens"] == {"input": 1000, "output": 500, "cached_input": 200,
                              "cache_write_5m": 2000, "reasoning": 300}
    df = load_records(log_dir, settings=settings)
    assert df.loc[0, "cache_write_5m_tokens"] == 2000 and df.loc[0, "reasoning_tokens"] == 300
    prices = tmp_path / "prices.json"
    day = day_of(2)
    prices.write_text(json.dumps({"claude-x": {
        "input": 0.001, "output": 0.01, "cached_input": 0.0001, "cache_write": 0.00125,
        "patterns": ["claude-x-*"],
        "versions": [{"effective_from": day, "input": 0.002}]}}))
    reprice_logs(log_dir, prices, settings, dry_run=False, now=NOW)
    (after,) = [r for r in iter_records(log_dir) if r["request_id"] == "req-40"]
    # the version in force that day (input 0.002), the entry's other prices, the 5m cache write
    expected = (1000 * 0.002 + 500 * 0.01 + 200 * 0.0001 + 2000 * 0.00125) / 1000
    assert after["cost"] == pytest.approx(expected, rel=1e-9)
    assert after["price_match"] == "alias"  # a dated snapshot of claude-x


def test_reprice_keeps_blank_unreadable_and_over_long_lines_as_they_were(tmp_path, prices, settings):
    from ragmon.instrument.records import log_file_name
    from ragmon.report import reader

    log_dir = tmp_path / "logs"
    day = log_dir / log_file_name(NOW - 2 * DAY)
    records = [rec(n, ago=2 * DAY + n, model="gpt-4o-mini", cost=0.0001, tokens=(1000, 1000, 0))
               for n in range(3)]
    write_records(log_dir, records)
    long_line = b'{"pad": "' + b"x" * (reader.MAX_LINE_BYTES + 10) + b'"}\n'
    lines = day.read_bytes().splitlines(keepends=True)
    day.write_bytes(lines[0] + b"\n" + long_line + lines[1] + b"not json\n" + lines[2])
    result = reprice_logs(log_dir, prices, settings, dry_run=False, now=NOW)
    assert result.records == 3 and not result.notes
    after = day.read_bytes().splitlines(keepends=True)
    assert len(after) == 6 and after[1] == b"\n" and after[2] == long_line
    assert after[4] == b"not json\n"
    assert [json.loads(after[i])["cost"] for i in (0, 3, 5)] == [pytest.approx(0.003)] * 3


@pytest.mark.parametrize("stored", ["jsonl", "parquet"])
def test_reprice_uses_the_database_price_in_force_at_each_records_time(tmp_path, stored):
    """Past records are repriced from the database's history: o3 before and after its price cut,
    DeepSeek at its off-peak hour, a flex request with a long prompt; checked against
    genai-prices' own calc_price."""
    from genai_prices import Usage, calc_price

    from ragmon.report.compact import compact_logs
    from ragmon.report.reader import iter_records
    from tests.conftest import make_settings

    def at(year, month, day, hour):
        return datetime(year, month, day, hour, tzinfo=timezone.utc)

    cases = {  # request id: (model, end, tokens (input uncached, output, cached), pricing)
        "req-1": ("o3-2025-04-16", at(2025, 6, 9, 12), (1000, 500, 200), None),
        "req-2": ("o3-2025-04-16", at(2025, 6, 11, 12), (1000, 500, 200), None),
        "req-3": ("deepseek-chat", at(2026, 11, 20, 20), (1000, 500, 200), None),
        "req-4": ("deepseek-chat", at(2026, 11, 20, 10), (1000, 500, 200), None),
        "req-5": ("gpt-5.5", at(2026, 11, 20, 10), (290_000, 500, 10_000),
                  {"match": "exact", "provider": "openai", "service_tier": "flex"}),
    }
    records = []
    for n, (rid, (model, end, tokens, pricing)) in enumerate(cases.items()):
        record = rec(n, ago=NOW - end.timestamp(), model=model, cost=0.0, tokens=tokens)
        record["request_id"] = rid
        if pricing:
            record["pricing"] = pricing
        records.append(record)
    log_dir = tmp_path / "logs"
    write_records(log_dir, records)
    if stored == "parquet":
        compact_logs(log_dir, now=NOW)
        assert not [p for p in log_dir.glob("*.jsonl") if p.stat().st_size], "all in Parquet"
    user_file = tmp_path / "mine.json"
    user_file.write_text(json.dumps({"llama-local": {"input": 0, "output": 0}}))
    settings = make_settings(PRICE_DATABASE="shipped")
    reprice_logs(log_dir, user_file, settings, dry_run=False, now=NOW)
    after = {r["request_id"]: r for r in iter_records(log_dir)}
    for rid, (model, end, (uncached, output, cached), pricing) in cases.items():
        context = {"service_tier": pricing["service_tier"]} if pricing else None
        billed = calc_price(Usage(input_tokens=uncached + cached, cache_read_tokens=cached,
                                  output_tokens=output), model,
                            genai_request_timestamp=end, price_context=context)
        assert after[rid]["cost"] == pytest.approx(float(billed.total_price), rel=1e-9), rid
        assert after[rid]["pricing"]["source"] == "shipped"
    assert after["req-1"]["cost"] > 4 * after["req-2"]["cost"]  # before the price cut
    assert after["req-3"]["cost"] < after["req-4"]["cost"]  # off-peak
    assert after["req-5"]["pricing"]["tier"] == "flex+input>272000"
