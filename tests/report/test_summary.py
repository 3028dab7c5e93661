"""The report aggregated in DuckDB over the log files (ragmon.report.summary, what `report`
prints) against the same queries over the load_records() DataFrame (the notebook's), on a log of JSONL and compacted Parquet with everything a real log holds: torn lines, records of
older formats, non-object stages, missing fields, default-priced and repriced records."""
from __future__ import annotations

import io
import json
import math
import sys
from collections import Counter
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from m2_3_report import build_report, load_records
from ragmon.instrument.records import encode, log_file_name
from ragmon.report.compact import compact_logs
from ragmon.report.formatting import format_csv, format_text
from ragmon.report.reader import LogDirNotFound
from ragmon.report.summary import report_from_log
from tests.conftest import make_settings
from tests.report.test_report import NOW, rec, write_records
from tests.report.test_report_cli import run

DAY = 86400


def same(new, old, path="report"):
    """Equal dicts, floats to 1e-9 (sums and means may differ in the last bits)."""
    if isinstance(old, dict):
        assert isinstance(new, dict) and new.keys() == old.keys(), (path, new, old)
        for key in old:
            same(new[key], old[key], f"{path}.{key}")
    elif isinstance(old, list):
        assert isinstance(new, list) and len(new) == len(old), (path, new, old)
        for i, (a, b) in enumerate(zip(new, old)):
            same(a, b, f"{path}[{i}]")
    elif isinstance(old, float) and isinstance(new, float):
        assert math.isclose(new, old, rel_tol=1e-9, abs_tol=1e-12), (path, new, old)
    else:
        assert new == old and type(new) is type(old), (path, new, old)


def mixed_log(log_dir):
    """Three past days (to be compacted) and today, each with a bit of everything. Returns the
    valid records, as written, with their end times."""
    records = []
    for day in (3, 2, 1, 0):
        for n in range(12):
            i = day * 100 + n
            ago = day * DAY + 600 + n * 37 + (0 if n % 4 else 5000)
            model = ("gpt-4o-mini", "claude-3-5-haiku", "mystery-model", None)[n % 4]
            status = "error" if n % 5 == 0 else ("cancelled" if n == 7 else "success")
            attributes = {"agent_type": ("crewai", "simple", "langgraph")[n % 3],
                          "tool_calls": n % 4,
                          "entities": [["customers", "bills"], ["payments"], []][n % 3],
                          "flag": (True, "yes", 3)[n % 3] if n % 2 else None}
            extra = {}
            if n == 3:  # repriced: first figure kept, priced by the table now
                extra = {"cost_original": 0.5, "price_match": "exact",
                         "repriced_at": "2026-11-20T00:00:00+00:00"}
            if n == 5:  # says so itself: default-priced although the table knows the model
                extra = {"price_match": "default"}
            records.append(rec(i, total=0.3 + n * 0.41 + day * 0.01, ago=ago, status=status,
                               error_type=("TimeoutError" if n % 10 == 0 else None)
                               if status == "error" else None, model=model,
                               operation="rag_search" if n % 3 else "summarize",
                               cost=None if n == 6 else 0.001 * (n + 1), attributes=attributes,
                               relevance=None if n % 6 == 1 else round(0.1 * (n % 9), 2),
                               stages=({"retrieval": 0.1 * n, "generation": 0.2}
                                       if n % 6 else {}), **extra))
    # Two requests ending at the same instant, for the ties.
    for n in (90, 91):
        records.append(rec(n, total=2.0, ago=2 * DAY + 60, model="gpt-4o", operation="summarize",
                           attributes={"agent_type": "tie-" + str(n)}))
    write_records(log_dir, records)
    old_day = log_dir / log_file_name(NOW - 2 * DAY)
    naive = datetime.fromtimestamp(NOW - 2 * DAY - 300, timezone.utc).replace(tzinfo=None)
    older = [{"timestamp": naive.isoformat(), "total_time": 1.25},  # the oldest format
             {"timestamp": naive.isoformat() + "+00:00", "total_time": 0.75, "model": "gpt-4o",
              "stages": {"retrieval": {"duration": 0.5}}}]
    with open(old_day, "ab") as f:
        f.write(b"".join(json.dumps(r).encode() + b"\n" for r in older))
        # Non-object stages: a record without stages (the value is counted as a bad value).
        f.write(b'{"start_time": 1, "total_time": 1, "stages": [1, 2]}\n')
        f.write(b"not json\n")
    newest = log_dir / log_file_name(NOW)
    with open(newest, "ab") as f:
        f.write(b'{"start_time": %r, "total_time": 0.5}\n' % (NOW - 30.5))  # fields missing
        f.write(b"[1, 2]\n")  # JSON, but not a record
        f.write(encode(rec(99))[:40])  # torn last line
    with_end = [(r, r["start_time"] + r["total_time"]) for r in records]
    with_end += [(older[0], NOW - 2 * DAY - 300), (older[1], NOW - 2 * DAY - 300),
                 ({"start_time": NOW - 30.5, "total_time": 0.5}, NOW - 30.0),
                 ({"start_time": 1, "total_time": 1, "stages": [1, 2]}, 2.0)]
    return with_end


def priced(log_dir, **overrides):
    """Settings whose price table knows every model of the log but mystery-model."""
    prices = log_dir.parent / f"{log_dir.name}-prices.json"
    prices.write_text(json.dumps({model: {"input": 0.001, "output": 0.002}
                                  for model in ("gpt-4o-mini", "claude-3-5-haiku", "gpt-4o")}))
    return make_settings(MODEL_PRICES_FILE=str(prices), **overrides)


@pytest.fixture
def log(tmp_path):
    with_end = mixed_log(tmp_path)
    [result] = compact_logs(tmp_path, now=NOW)
    assert len(result.compacted) == 3 and list((tmp_path / "history").glob("day=*"))
    return tmp_path, with_end


@pytest.mark.parametrize("hours", [None, 30, 24 * 2.5])
def test_the_report_of_the_log_is_the_report_of_its_dataframe(log, hours):
    log_dir, _ = log
    settings = priced(log_dir, STAGE_BUDGETS="retrieval=1.0", SLOW_QUERY_SECONDS="3")
    old = build_report(load_records(log_dir, hours, settings=settings, now=NOW), settings,
                       hours=hours, now=NOW)
    new = report_from_log(log_dir, settings, hours=hours, now=NOW)
    assert not new["empty"] and new["read"]["skipped_lines"] >= 2
    same(new, old)
    assert format_text(new) == format_text(old)
    assert format_csv(new).splitlines()[0] == format_csv(old).splitlines()[0]


def test_the_figures_match_the_records_as_written(log):
    """A few figures computed here from the records themselves, not by either engine."""
    log_dir, with_end = log
    settings = priced(log_dir)
    report = report_from_log(log_dir, settings, hours=None, now=NOW)
    totals = np.array([r["total_time"] for r, _ in with_end])
    assert report["totals"]["requests"] == len(with_end)
    assert report["latency"]["p95"] == pytest.approx(np.percentile(totals, 95))
    assert report["latency"]["p50"] == pytest.approx(np.percentile(totals, 50))
    costs = [r["cost"] for r, _ in with_end if r.get("cost") is not None]
    assert report["cost"]["total"] == pytest.approx(sum(costs))
    assert report["cost"]["requests_without_cost"] == len(with_end) - len(costs)
    default = [r for r, _ in with_end if r.get("cost") is not None and (
        r.get("price_match") == "default"
        or (r.get("price_match") is None and r.get("model") == "mystery-model"))]
    assert report["cost"]["default_priced"]["requests"] == len(default)
    assert report["cost"]["default_priced"]["cost"] == pytest.approx(sum(r["cost"] for r in default))
    assert report["cost"]["default_priced"]["models"] == sorted(
        {r["model"] for r in default if r.get("model")})
    repriced = [r for r, _ in with_end if "cost_original" in r]
    assert report["cost"]["repriced"] == {"requests": len(repriced),
                                          "cost_before": pytest.approx(0.5 * len(repriced)),
                                          "cost_after": pytest.approx(sum(r["cost"] for r in repriced))}
    retrieval = [r["stages"]["retrieval"]["duration"] for r, _ in with_end
                 if "retrieval" in (r.get("stages") or {})]
    [stage] = [s for s in report["stages"] if s["stage"] == "retrieval"]
    assert stage["requests"] == len(retrieval)
    assert stage["p95"] == pytest.approx(np.percentile(retrieval, 95))
    items = Counter(item for r, _ in with_end for item in (r.get("attributes") or {}).get("entities", []))
    assert {v["value"]: v["requests"] for v in report["attributes"]["entities"]["values"]} == items
    failed = Counter((r.get("error_type") or "(none)") for r, _ in with_end
                     if r.get("status") != "success")
    assert {e["error_type"]: e["count"] for e in report["errors"]} == failed
    assert report["attributes"]["flag"]["kind"] == "category"
    assert {v["value"] for v in report["attributes"]["flag"]["values"]} == {"True", "yes", "3"}
    assert report["attributes"]["tool_calls"]["kind"] == "number"
    first = min(end for _, end in with_end)
    assert report["period"]["first"].startswith(
        datetime.fromtimestamp(first, timezone.utc).isoformat()[:19])


def test_skipped_lines_are_named_with_file_and_line(log):
    log_dir, _ = log
    report = report_from_log(log_dir, make_settings(), hours=None, now=NOW)
    read = report["read"]
    newest = log_file_name(NOW)
    assert read["skipped_by_reason"]["torn_last_line"] == 1
    assert any(e.startswith(f"{newest}:") and "torn" in e for e in read["skipped_examples"])
    # Lines skipped before compaction are kept in the partition, not read again.
    assert read["records"] == report["totals"]["requests"]
    text = format_text(report)
    assert "Skipped" in text and f"e.g. {newest}:" in text


def test_an_empty_period_and_a_missing_directory_say_so(tmp_path):
    settings = make_settings()
    write_records(tmp_path, [rec(1, ago=3 * 3600)])
    new = report_from_log(tmp_path, settings, hours=1, now=NOW)
    old = build_report(load_records(tmp_path, 1, settings=settings, now=NOW), settings, hours=1,
                       now=NOW)
    assert new["empty"] and new["message"] == old["message"] == f"no requests in the last 1 h in {tmp_path}"
    assert format_text(new) == format_text(old)
    with pytest.raises(LogDirNotFound, match="nowhere"):
        report_from_log(tmp_path / "nowhere", settings, hours=1)
    proc = run("report", "--hours", 1, "--log-dir", tmp_path / "nowhere")
    assert proc.returncode == 2 and "nowhere" in proc.stderr


def test_the_command_prints_the_sql_report(log):
    log_dir, _ = log
    proc = run("report", "--hours", 24 * 5, "--format", "json", "--log-dir", log_dir)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    settings = make_settings(SLOW_QUERY_SECONDS="5", VERY_SLOW_QUERY_SECONDS="30")
    old = build_report(load_records(log_dir, 24 * 5, settings=settings), settings, hours=24 * 5)
    assert printed["totals"] == old["totals"] | {"requests_per_hour": printed["totals"]["requests_per_hour"]}
    same(printed["models"], old["models"])
    assert "torn last line" in proc.stderr  # the note on stderr, the JSON stays clean


class Terminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("on_terminal", [True, False])
def test_the_progress_bar_shows_on_a_terminal_only(log, monkeypatch, on_terminal):
    from ragmon.report import summary

    log_dir, _ = log
    stderr = Terminal() if on_terminal else io.StringIO()
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setattr(summary, "PROGRESS_DELAY", 0.0)
    report = report_from_log(log_dir, priced(log_dir), hours=None, now=NOW, progress=True)
    assert report["totals"]["requests"] > 0
    assert ("summarising" in stderr.getvalue()) is on_terminal


def test_history_partitions_written_before_the_newer_token_kinds_are_read(tmp_path):
    """A partition whose tokens struct has only input, output and cached_input (as compaction
    wrote them before cache writes and reasoning were recorded)."""
    import duckdb

    folder = tmp_path / "history" / datetime.fromtimestamp(NOW - 2 * DAY, timezone.utc).strftime(
        "day=%Y-%m-%d")
    folder.mkdir(parents=True)
    end = NOW - 2 * DAY
    duckdb.connect().execute(f"""
        COPY (SELECT NULL::VARCHAR AS timestamp, {end - 1.5} + i AS start_time, 1.5 AS total_time,
                     'old-' || i AS request_id, 'success' AS status, NULL::VARCHAR AS error_type,
                     'rag_search' AS operation, 'gpt-4o-mini' AS model, 'svc' AS service,
                     'prod' AS env, 0.01 AS cost, NULL::DOUBLE AS relevance_score,
                     NULL::DOUBLE AS context_precision, NULL::DOUBLE AS time_to_first_token,
                     {{'input': 10::BIGINT, 'output': 5::BIGINT, 'cached_input': 0::BIGINT}} AS tokens,
                     {{'hits': 1::BIGINT, 'misses': 0::BIGINT}} AS cache, '{{}}'::JSON AS stages,
                     MAP {{}}::MAP(VARCHAR, STRUCT(duration DOUBLE)) AS stage_durations,
                     MAP {{}}::MAP(VARCHAR, JSON) AS attributes, NULL::DOUBLE AS cost_original,
                     NULL::VARCHAR AS price_match, NULL::JSON AS pricing,
                     NULL::VARCHAR AS repriced_at
              FROM range(3) t(i))
        TO '{folder / "records.parquet"}' (FORMAT parquet)""")
    settings = make_settings()
    df = load_records(tmp_path, settings=settings)
    assert len(df) == 3 and df["input_tokens"].sum() == 30 and df["reasoning_tokens"].sum() == 0
    report = report_from_log(tmp_path, settings, hours=None, now=NOW)
    assert report["tokens"] == {"input": 30, "output": 15, "cached_input": 0}
    assert report["read"]["lines"] == 3 and report["read"]["outside_period"] == 0
    hours = (NOW - end - 0.5) / 3600  # the first of the three ended before the period
    part = report_from_log(tmp_path, settings, hours=hours, now=NOW)
    assert part["totals"]["requests"] == 2 and part["read"]["outside_period"] == 1
    assert part["read"] == load_records(tmp_path, hours, settings=settings, now=NOW).attrs["read_stats"]


# --- the slowest requests -----------------------------------------------------------------------

def test_the_slowest_request_is_found_whatever_digits_its_time_has(tmp_path):
    """A total time whose repr has more digits than a DOUBLE literal keeps (DuckDB reads such
    a literal as a DECIMAL that no longer equals the stored value)."""
    records = [rec(n, total=0.00005 + n * 1e-6, ago=60 + n) for n in range(4)]
    records.append(rec(9, total=0.00011096699972767965, ago=30))
    write_records(tmp_path, records)
    report = report_from_log(tmp_path, make_settings(), hours=1, now=NOW)
    assert [s["request_id"] for s in report["slowest"]] == ["req-9", "req-3", "req-2", "req-1",
                                                            "req-0"]
    assert report["slowest"][0]["total_time"] == 0.00011096699972767965
    assert report["slowest"][0]["slowest_stage"] == "generation"


def test_the_slowest_requests_of_a_log_with_a_torn_line(tmp_path):
    records = [rec(n, total=t, ago=60 + n) for n, t in enumerate(
        (0.0123456789012345678, 0.00011096699972767965, 3.3333333333333335e-05, 0.5))]
    write_records(tmp_path, records, raw_lines=[encode(rec(99))[:40]])
    proc = run("report", "--hours", 1, "--format", "json", "--log-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout)
    assert [s["request_id"] for s in printed["slowest"]] == ["req-3", "req-0", "req-1", "req-2"]
    assert printed["read"]["skipped_by_reason"] == {"torn_last_line": 1}


latencies = st.floats(min_value=0.0, max_value=1e6, allow_nan=False, allow_infinity=False)


@hypothesis_settings(max_examples=40, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(totals=st.lists(st.one_of(latencies, st.floats(min_value=1e-9, max_value=1e-3),
                                 st.floats(min_value=1e-3, max_value=10.0)),
                       min_size=1, max_size=12),
       top=st.integers(min_value=1, max_value=5))
def test_the_slowest_requests_are_the_longest_at_every_magnitude(tmp_path_factory, totals, top):
    log_dir = tmp_path_factory.mktemp("log")
    records = [rec(n, total=t, ago=60 + n) for n, t in enumerate(totals)]
    write_records(log_dir, records)
    report = report_from_log(log_dir, make_settings(), hours=24 * 400, top=top, now=NOW)
    # The longest first; equal times by end time, then read order (as pandas' nlargest keeps).
    expected = sorted(records, key=lambda r: (-r["total_time"], r["start_time"] + r["total_time"],
                                              int(r["request_id"][4:])))[:top]
    assert [s["request_id"] for s in report["slowest"]] == [r["request_id"] for r in expected]
    assert [s["total_time"] for s in report["slowest"]] == [r["total_time"] for r in expected]
