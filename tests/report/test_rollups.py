"""Per-day rollups of the Parquet history: the report over them equals the report over the
records (counts and sums exactly, quantiles within the sketch's stated relative error), uses
raw records for partial days, and never uses a rollup that no longer matches its day."""
from __future__ import annotations

import json
import math
import random
from datetime import datetime, timezone

import duckdb
import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings as hypothesis_settings, strategies as st

from ragmon.report.compact import compact_logs
from ragmon.report.costs import reprice_logs
from ragmon.report.formatting import format_text
from ragmon.report.rollups import RELATIVE_ERROR, ROLLUP_DIR, bucket_sql, quantile_sql
from ragmon.report.summary import report_from_log
from tests.conftest import make_settings
from tests.report.test_report import NOW, rec, write_records

DAY = 86400
# A quantile estimate may be off by RELATIVE_ERROR of the exact value, plus float rounding.
BOUND = RELATIVE_ERROR * (1 + 1e-9)
THRESHOLDS = {"STAGE_BUDGETS": "retrieval=0.5", "SLOW_QUERY_SECONDS": "2",
              "VERY_SLOW_QUERY_SECONDS": "20"}


def within(estimate, exact) -> bool:
    if exact is None or estimate is None:
        return estimate is None and exact is None
    return abs(estimate - exact) <= BOUND * abs(exact) + 1e-12


def seeded_log(log_dir, days=(2, 3, 4), per_day=400, seed=11) -> None:
    """Records over several magnitudes (0.1 ms to minutes), zero-length stages, errors, models,
    costs and attributes on whole past days, and a few of today's (left in JSONL)."""
    rng = random.Random(seed)
    records = []
    for d in days:
        midnight = datetime.fromtimestamp(NOW - d * DAY, timezone.utc).replace(
            hour=0, minute=0, second=0, microsecond=0).timestamp()
        for n in range(per_day):
            total = 10 ** rng.uniform(-4, 2.5)
            failed = rng.random() < 0.1
            records.append(rec(
                d * 10_000 + n, total=total, ago=NOW - midnight - rng.uniform(60, DAY - 60),
                status="error" if failed else "success",
                error_type=rng.choice(["TimeoutError", "RateLimitError"]) if failed else None,
                model=rng.choice(["gpt-4o-mini", "claude-3-5-haiku", None]),
                operation=rng.choice(["rag_search", "rerank_only"]),
                stages={"retrieval": total * rng.random(), "generation": 0.0 if n % 7 == 0
                        else total * rng.random() * 0.5},
                cost=None if n % 13 == 0 else rng.uniform(0, 0.05),
                tokens=(rng.randint(0, 4000), rng.randint(0, 900), rng.randint(0, 100)),
                cache=(rng.randint(0, 1), rng.randint(0, 1)),
                relevance=None if n % 5 == 0 else rng.choice([0.0, rng.random()]),
                attributes={"agent": rng.choice(["crewai", "simple", "langgraph"]),
                            "score": 10 ** rng.uniform(-2, 2),
                            "entities": rng.sample(["a", "b", "c", "d"], rng.randint(0, 2))}))
    records += [rec(900_000 + n, total=10 ** rng.uniform(-3, 1), ago=60 + n) for n in range(50)]
    write_records(log_dir, records)


@pytest.fixture(scope="module")
def history(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("rollups") / "logs"
    seeded_log(log_dir)
    settings = make_settings(**THRESHOLDS)
    [result] = compact_logs(log_dir, now=NOW, settings=settings)
    assert len(result.compacted) == 3
    return log_dir, settings


def by(items, key):
    return {item[key]: item for item in items}


def assert_same_figures(fast, exact):
    """Counts exactly equal, sums equal up to float rounding, quantiles within the bound."""
    assert fast["totals"] == exact["totals"]
    assert fast["read"] == exact["read"]
    assert fast["period"] == exact["period"]
    for key in ("slow", "very_slow", "slow_share"):
        assert fast["latency"][key] == exact["latency"][key]
    assert fast["latency"]["max"] == exact["latency"]["max"]
    assert fast["latency"]["mean"] == pytest.approx(exact["latency"]["mean"], rel=1e-12)
    for q in ("p50", "p95", "p99"):
        assert within(fast["latency"][q], exact["latency"][q]), q
    assert fast["tokens"] == exact["tokens"] and fast["cache"] == exact["cache"]
    assert fast["cost"]["requests_without_cost"] == exact["cost"]["requests_without_cost"]
    assert fast["cost"]["total"] == pytest.approx(exact["cost"]["total"], rel=1e-12)
    assert fast["cost"]["repriced"] == pytest.approx(exact["cost"]["repriced"], rel=1e-12)
    assert fast["errors"] == exact["errors"]
    assert [m["model"] for m in fast["models"]] == [m["model"] for m in exact["models"]]
    for model, figures in by(exact["models"], "model").items():
        mine = by(fast["models"], "model")[model]
        assert {k: v for k, v in mine.items() if k not in ("cost", "mean_cost", "p95_latency")} \
            == {k: v for k, v in figures.items() if k not in ("cost", "mean_cost", "p95_latency")}
        assert mine["cost"] == pytest.approx(figures["cost"], rel=1e-12)
        assert within(mine["p95_latency"], figures["p95_latency"]), model
    for operation, figures in by(exact["operations"], "value").items():
        mine = by(fast["operations"], "value")[operation]
        assert (mine["requests"], mine["error_rate"]) == (figures["requests"], figures["error_rate"])
        assert within(mine["p95_latency"], figures["p95_latency"])
    assert [s["stage"] for s in fast["stages"]] == [s["stage"] for s in exact["stages"]]
    for stage, figures in by(exact["stages"], "stage").items():
        mine = by(fast["stages"], "stage")[stage]
        for key in ("requests", "max", "budget", "bottlenecks", "bottlenecks_by_share",
                    "bottlenecks_by_budget"):
            assert mine[key] == figures[key], (stage, key)
        for key in ("mean", "total_time", "mean_share", "time_share"):
            assert mine[key] == pytest.approx(figures[key], rel=1e-12), (stage, key)
        for q in ("p50", "p95", "p99"):
            assert within(mine[q], figures[q]), (stage, q)
    for name, figures in exact["quality"].items():
        mine = fast["quality"][name]
        assert mine["measured"] == figures["measured"]
        assert mine["mean"] == (None if figures["mean"] is None
                                else pytest.approx(figures["mean"], rel=1e-12))
        assert within(mine["p50"], figures["p50"]) and within(mine["p95"], figures["p95"])
    assert fast["attributes"].keys() == exact["attributes"].keys()
    for key, figures in exact["attributes"].items():
        mine = fast["attributes"][key]
        if figures["kind"] == "number":
            assert (mine["requests"], mine["max"]) == (figures["requests"], figures["max"])
            assert mine["sum"] == pytest.approx(figures["sum"], rel=1e-12)
            assert within(mine["p50"], figures["p50"]) and within(mine["p95"], figures["p95"])
        else:
            strip = lambda values: [{k: v for k, v in value.items() if k != "p95_latency"}  # noqa
                                    for value in values]
            assert strip(mine["values"]) == strip(figures["values"])
            assert mine["requests"] == figures["requests"] and mine["other"] == figures["other"]
            for value, exact_value in zip(mine["values"], figures["values"]):
                assert within(value.get("p95_latency"), exact_value.get("p95_latency"))
    # The slowest requests come from the per-day top lists: exact.
    assert fast["slowest"] == exact["slowest"]


def test_the_report_over_rollups_equals_the_exact_report_within_the_stated_error(history):
    log_dir, settings = history
    fast = report_from_log(log_dir, settings, hours=None, now=NOW, top=25)
    exact = report_from_log(log_dir, settings, hours=None, now=NOW, top=25, exact=True)
    assert fast["rollups"]["days"] == 3 and fast["rollups"]["raw_files"] == 1
    assert "rollups" not in exact
    assert "3 whole day(s) of history read from their rollups: percentiles within 1%" \
        in format_text(fast) and "from their rollups" not in format_text(exact)
    assert fast["totals"]["requests"] == 3 * 400 + 50
    assert_same_figures(fast, exact)


def test_a_partial_first_day_is_read_from_its_records(history):
    log_dir, settings = history
    oldest = datetime.fromtimestamp(NOW - 4 * DAY, timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0).timestamp()
    for since, rolled in ((oldest + 6 * 3600, 2), (oldest, 3), (oldest + DAY, 2)):
        hours = (NOW - since) / 3600
        fast = report_from_log(log_dir, settings, hours=hours, now=NOW, top=25)
        exact = report_from_log(log_dir, settings, hours=hours, now=NOW, top=25, exact=True)
        assert fast["rollups"]["days"] == rolled
        assert_same_figures(fast, exact)


def test_other_thresholds_read_the_records(history):
    log_dir, _ = history
    other = make_settings(SLOW_QUERY_SECONDS="1")
    report = report_from_log(log_dir, other, hours=None, now=NOW)
    exact = report_from_log(log_dir, other, hours=None, now=NOW, exact=True)
    assert "rollups" not in report and report["latency"] == exact["latency"]


def test_a_day_rewritten_behind_the_rollups_back_is_read_from_its_records(tmp_path):
    settings = make_settings(**THRESHOLDS)
    seeded_log(tmp_path, per_day=50)
    compact_logs(tmp_path, now=NOW, settings=settings)
    [first, *_] = sorted((tmp_path / "history").glob("day=*"))
    table = pq.read_table(first / "records.parquet")
    pq.write_table(table.slice(0, 10), first / "records.parquet")  # not through reprice
    fast = report_from_log(tmp_path, settings, hours=None, now=NOW)
    exact = report_from_log(tmp_path, settings, hours=None, now=NOW, exact=True)
    assert fast["rollups"]["days"] == 2
    assert fast["totals"] == exact["totals"] and fast["totals"]["requests"] == 10 + 2 * 50 + 50


def test_reprice_of_the_history_rebuilds_the_rollups_so_costs_stay_right(tmp_path):
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"gpt-4o-mini": {"input": 0.001, "output": 0.002},
                                  "claude-3-5-haiku": {"input": 0.01, "output": 0.02}}))
    settings = make_settings(MODEL_PRICES_FILE=str(prices), **THRESHOLDS)
    log_dir = tmp_path / "logs"
    seeded_log(log_dir, per_day=60)
    compact_logs(log_dir, now=NOW, settings=settings)
    before = report_from_log(log_dir, settings, hours=None, now=NOW)
    result = reprice_logs(log_dir, prices, settings, dry_run=False, now=NOW)
    assert result.records > 0
    fast = report_from_log(log_dir, settings, hours=None, now=NOW)
    exact = report_from_log(log_dir, settings, hours=None, now=NOW, exact=True)
    assert fast["rollups"]["days"] == 3
    assert fast["cost"]["total"] != pytest.approx(before["cost"]["total"])
    assert fast["cost"]["total"] == pytest.approx(exact["cost"]["total"], rel=1e-12)
    assert fast["cost"]["repriced"] == pytest.approx(exact["cost"]["repriced"], rel=1e-12)
    assert [m["model"] for m in fast["models"]] == [m["model"] for m in exact["models"]]
    for mine, figures in zip(fast["models"], exact["models"]):
        assert mine["cost"] == pytest.approx(figures["cost"], rel=1e-12)


def test_cleanup_deletes_a_partition_with_its_rollup(tmp_path):
    from ragmon.report.retention import cleanup_logs

    seeded_log(tmp_path, days=(2,), per_day=5)
    compact_logs(tmp_path, now=NOW, settings=make_settings())
    [partition] = (tmp_path / "history").glob("day=*")
    assert (partition / ROLLUP_DIR / "rollup.json").exists()
    result = cleanup_logs(tmp_path, 1, now=NOW + 10 * DAY)
    assert f"history/{partition.name}" in result.deleted and not partition.exists()


def sketch_quantiles(values, qs):
    con = duckdb.connect()
    try:
        con.execute("CREATE TABLE v (x DOUBLE)")
        con.executemany("INSERT INTO v VALUES (?)", [(float(x),) for x in values])
        sign, bucket = bucket_sql("x")
        # Split in two "days" and merged, as the report does.
        con.execute(f"""CREATE TABLE s AS SELECT 'm' AS metric, '' AS grp, {sign} AS sign,
                        {bucket} AS bucket, count(*) AS count FROM v
                        GROUP BY metric, grp, sign, bucket, rowid % 2""")
        found = {round(q, 4): value for _, _, q, value in
                 con.execute(quantile_sql("s", qs)).fetchall()}
        return [found[round(q, 4)] for q in qs]
    finally:
        con.close()


@hypothesis_settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=1e-6, max_value=1e6), min_size=1, max_size=300),
       st.lists(st.sampled_from([0.0, 0.01, 0.25, 0.5, 0.9, 0.95, 0.99, 1.0]), min_size=1,
                max_size=4, unique=True))
def test_sketch_quantiles_are_within_the_relative_error_of_exact_ones(values, qs):
    estimates = sketch_quantiles(values, qs)
    for q, estimate in zip(qs, estimates):
        exact = float(np.percentile(values, 100 * q))
        assert within(estimate, exact), (q, estimate, exact)


def test_zero_and_negative_values_have_buckets_of_their_own():
    values = [-5.0, -0.5, 0.0, 0.0, 0.0, 2.0, 40.0]
    for q, estimate in zip((0.0, 0.2, 0.5, 1.0), sketch_quantiles(values, (0.0, 0.2, 0.5, 1.0))):
        exact = float(np.percentile(values, 100 * q))
        assert math.isclose(estimate, exact, rel_tol=BOUND, abs_tol=1e-12), (q, estimate, exact)


def test_a_history_without_jsonl_and_a_longer_top_list(tmp_path):
    settings = make_settings(**THRESHOLDS)
    seeded_log(tmp_path, per_day=40)
    compact_logs(tmp_path, now=NOW, settings=settings)
    for today in tmp_path.glob("*_performance.jsonl"):
        today.unlink()
    fast = report_from_log(tmp_path, settings, hours=None, now=NOW)
    exact = report_from_log(tmp_path, settings, hours=None, now=NOW, exact=True)
    assert fast["rollups"] == {"days": 3, "raw_files": 0, "quantile_relative_error": 0.01}
    assert_same_figures(fast, exact)
    # More slowest requests than a day's rollup keeps: every record is read.
    assert "rollups" not in report_from_log(tmp_path, settings, hours=None, now=NOW, top=101)


def test_stats_and_the_html_page_take_the_reports_figures_from_the_rollups(history):
    from ragmon.report.summary import html_from_log, stats_from_log

    log_dir, settings = history
    stats = stats_from_log(log_dir, settings, hours=None, now=NOW)
    report = report_from_log(log_dir, settings, hours=None, now=NOW, top=5)
    exact = report_from_log(log_dir, settings, hours=None, now=NOW, top=5, exact=True)
    assert stats["rollups"] == report["rollups"] and stats["rollups"]["days"] == 3
    assert_same_figures(stats, exact)
    # The time table and the distributions still count every record.
    assert sum(row["requests"] for row in stats["series"]) == exact["totals"]["requests"]
    assert stats["distributions"]["total_time"]["count"] == exact["totals"]["requests"]
    assert stats["read"] == exact["read"]
    page = html_from_log(log_dir, settings, hours=None, now=NOW)
    assert "3 whole day(s) of history read from their rollups" in page


def test_an_attribute_of_mixed_value_types_reads_every_record_and_counts_each_line_once(tmp_path):
    settings = make_settings(**THRESHOLDS)
    records = [rec(n, ago=3 * DAY + 60 * n, attributes={"tags": ["a", "b"] if n % 2 else "a"})
               for n in range(20)]
    records += [rec(100 + n, ago=60 + n) for n in range(5)]
    write_records(tmp_path, records)
    compact_logs(tmp_path, now=NOW, settings=settings)
    assert list(tmp_path.glob(f"history/*/{ROLLUP_DIR}"))
    fast = report_from_log(tmp_path, settings, hours=None, now=NOW)
    exact = report_from_log(tmp_path, settings, hours=None, now=NOW, exact=True)
    assert "rollups" not in fast
    assert fast["read"] == exact["read"] and fast["read"]["lines"] == 25
    assert fast["attributes"] == exact["attributes"]
