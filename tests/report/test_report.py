"""Reading the request log and building reports: columns, time filtering, every report section,
bad lines, the fast and lenient parsers agreeing, parallel reading, retention and export."""
from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

import m2_3_report
from m2_3_report import build_report, export_records, format_text, load_records
from ragmon.report import reader
from m2_3_report import build_stats
from ragmon.instrument.performance import find_bottlenecks
from ragmon.report.reader import LogDirNotFound, read_columns
from ragmon.instrument.records import DailyFileSink, encode, log_file_name, make_record
from ragmon.report.formatting import format_csv, format_stats_text
from ragmon.report.retention import cleanup_logs
from tests.conftest import make_settings

NOW = time.time()


def rec(n: int, *, total: float = 1.0, ago: float = 60.0, status: str = "success",
        error_type: str | None = None, model: str | None = "gpt-4o-mini", stages=None,
        attributes=None, cost: float | None = 0.001, tokens=(100, 20, 0), cache=(1, 0),
        operation: str = "rag_search", relevance: float | None = 0.8, **extra) -> dict:
    """A record that ended `ago` seconds before NOW."""
    if stages is None:
        stages = {"retrieval": total * 0.2, "generation": total * 0.7}
    record = make_record(
        request_id=f"req-{n}", service="rag-service", env="production", operation=operation,
        model=model, status=status, error_type=error_type, start_time=NOW - ago - total,
        total_time=total,
        stages={name: {"duration": d, "metadata": {"n": n}} for name, d in stages.items()},
        input_tokens=tokens[0], output_tokens=tokens[1], cached_input_tokens=tokens[2],
        cost=cost, relevance_score=relevance, cache_hits=cache[0], cache_misses=cache[1],
        attributes=attributes)
    record.update(extra)
    return record


def write_records(log_dir: Path, records, raw_lines: list[bytes] = ()) -> Path:
    """Writes records through the real sink (files by the UTC day of each record's end), then
    appends `raw_lines` as they are to the newest file."""
    sink = DailyFileSink(log_dir)
    for record in records:
        sink.write(record, at=record["start_time"] + record["total_time"])
    sink.close()
    log_dir.mkdir(parents=True, exist_ok=True)
    newest = log_dir / log_file_name(NOW)
    with open(newest, "ab") as f:
        for line in raw_lines:
            f.write(line)
    return newest


def sample_records() -> list[dict]:
    records = [rec(n, total=0.5 + n * 0.1, attributes={
        "agent_type": "crewai" if n % 3 == 0 else "simple", "complexity_score": n / 20,
        "entities": ["customers", "bills"] if n % 2 else ["payments"], "tool_calls": n % 4})
        for n in range(20)]
    records.append(rec(20, total=6.0, model="claude-3-5-haiku", cost=0.01,
                       stages={"retrieval": 0.5, "generation": 5.0}, attributes={"agent_type": "simple"}))
    records.append(rec(21, total=40.0, status="error", error_type="TimeoutError",
                       model="claude-3-5-haiku", cost=None, tokens=(0, 0, 0), cache=(0, 1),
                       stages={"retrieval": 39.0}))
    records.append(rec(22, total=0.2, status="error", error_type="RateLimitError", cost=None,
                       tokens=(0, 0, 0), stages={}))
    return records


# --- loading --------------------------------------------------------------------------------------

def test_load_records_gives_one_row_per_request_with_documented_columns(tmp_path, settings):
    write_records(tmp_path, sample_records())
    df = load_records(tmp_path, settings=settings)
    assert len(df) == 23
    for column in ("request_id", "timestamp", "start_time", "total_time", "status", "error_type",
                   "operation", "model", "cost", "input_tokens", "output_tokens",
                   "cached_input_tokens", "cache_hits", "cache_misses", "relevance_score",
                   "stage_retrieval", "stage_generation", "attr_agent_type", "attr_entities",
                   "attr_complexity_score", "attr_tool_calls"):
        assert column in df.columns, column
    assert df["timestamp"].is_monotonic_increasing
    row = df.set_index("request_id").loc["req-21"]
    assert row["status"] == "error" and row["error_type"] == "TimeoutError"
    assert np.isnan(row["stage_generation"]) and row["stage_retrieval"] == 39.0
    assert np.isnan(row["cost"])
    assert df.set_index("request_id").loc["req-1", "attr_entities"] == ("customers", "bills")
    assert df.attrs["read_stats"]["records"] == 23 and df.attrs["log_dir"] == str(tmp_path)


def test_hours_keep_only_recent_records_and_skip_old_files(tmp_path, settings):
    records = [rec(1, ago=30 * 60), rec(2, ago=3 * 3600), rec(3, ago=3 * 86400)]
    write_records(tmp_path, records)
    assert set(load_records(tmp_path, 1, settings=settings)["request_id"]) == {"req-1"}
    two = load_records(tmp_path, 4, settings=settings)
    assert set(two["request_id"]) == {"req-1", "req-2"}
    # The file three days old cannot hold records of the last 4 hours: it is not even opened.
    assert not any(log_file_name(NOW - 3 * 86400) in f for f in two.attrs["read_stats"]["files"])
    assert len(load_records(tmp_path, None, settings=settings)) == 3
    with pytest.raises(ValueError, match="hours=-1"):
        load_records(tmp_path, -1, settings=settings)


def test_a_missing_log_directory_says_where_it_looked(tmp_path, settings):
    missing = tmp_path / "nowhere"
    with pytest.raises(LogDirNotFound) as info:
        load_records(missing, 1, settings=settings)
    assert isinstance(info.value, FileNotFoundError)
    assert str(missing) in str(info.value) and "--log-dir" in str(info.value)


def test_torn_and_corrupt_lines_are_skipped_counted_and_never_fatal(tmp_path, settings):
    good = [rec(n) for n in range(5)]
    newest = write_records(tmp_path, good, raw_lines=[
        b"this is not json\n",
        b"[1, 2, 3]\n",
        b"\n",
        encode({"request_id": "no-times", "stages": {}}),
        encode(rec(90, total=-1.0)),
        encode(rec(91, stages={"retrieval": "slow"})),
        encode(rec(6)),
        encode(rec(7))[:40],  # a write cut short: the torn last line
    ])
    df = load_records(tmp_path, settings=settings)
    assert sorted(df["request_id"]) == [f"req-{n}" for n in (0, 1, 2, 3, 4, 6)]
    stats = df.attrs["read_stats"]
    assert stats["skipped_by_reason"] == {"corrupt_json": 1, "not_an_object": 1, "bad_fields": 3,
                                          "torn_last_line": 1}
    assert stats["skipped_lines"] == 6 and stats["lines"] == 13
    assert f"{newest.name}:6: not valid JSON" in stats["skipped_examples"]
    assert f"{newest.name}:13: torn last line (a write in progress or cut short)" in stats["skipped_examples"]
    text = format_text(build_report(df, settings))
    assert "Skipped 6 unreadable line(s)" in text and "1 torn last line" in text


def test_values_of_the_wrong_type_are_read_as_missing_and_counted(tmp_path, settings):
    odd = rec(1, cost="cheap", tokens=(100, 20, 0))
    odd["tokens"]["input"] = "many"
    nan_cost = encode(rec(2)).replace(b'"cost":0.001', b'"cost":NaN')  # what json.dumps writes
    write_records(tmp_path, [odd], raw_lines=[nan_cost])
    df = load_records(tmp_path, settings=settings).set_index("request_id")
    assert np.isnan(df.loc["req-1", "cost"]) and df.loc["req-1", "input_tokens"] == 0
    assert df.loc["req-1", "output_tokens"] == 20
    assert np.isnan(df.loc["req-2", "cost"]) and df.loc["req-2", "stage_retrieval"] == 0.2
    assert df.attrs["read_stats"]["bad_values"] == 3


def test_seed_001_style_records_are_read(tmp_path, settings):
    seed = {"start_time": NOW - 100, "total_time": 4.567, "timestamp": "2024-01-15T10:30:00",
            "stages": {"retrieval": {"duration": 1.5, "metadata": {"strategy": "comprehensive"}},
                       "generation": {"duration": 2.1, "metadata": {"model": "gpt-4"}}}}
    only_timestamp = {"timestamp": "2026-01-15T10:30:00", "total_time": 1.0, "stages": {}}
    write_records(tmp_path, [], raw_lines=[(json.dumps(seed) + "\n").encode(),
                                           (json.dumps(only_timestamp) + "\n").encode()])
    df = load_records(tmp_path, settings=settings)
    assert len(df) == 2
    seeded = df[df["total_time"] == 4.567].iloc[0]
    assert seeded["stage_generation"] == 2.1 and seeded["request_id"] is None
    report = build_report(df, settings)
    assert report["totals"]["requests"] == 2 and report["totals"]["other"] == 2


def test_stage_names_and_attribute_keys_that_appear_later_become_columns(tmp_path, settings):
    records = [rec(n) for n in range(3)]
    records += [rec(3, stages={"retrieval": 0.1, "tool-call": 0.3},
                    attributes={"agent_type": "crewai", "graphql_queries": 2})]
    records += [rec(4)]
    write_records(tmp_path, records)
    df = load_records(tmp_path, settings=settings).set_index("request_id")
    assert df.loc["req-3", "stage_tool-call"] == 0.3 and np.isnan(df.loc["req-4", "stage_tool-call"])
    assert df.loc["req-3", "attr_graphql_queries"] == 2 and np.isnan(df.loc["req-0", "attr_graphql_queries"])
    assert df.loc["req-3", "attr_agent_type"] == "crewai"


def test_the_engine_and_the_line_rules_agree(tmp_path, settings):
    # The engine (DuckDB) skips a line exactly when the second pass's rules name it.
    records = sample_records() + [rec(50, stages={"rerank": 0.2}, attributes={"flag": True})]
    write_records(tmp_path, records, raw_lines=[b"garbage\n", encode(rec(51)),
                                                       b'{"stages": [1], "total_time": 1}\n'])
    engine = load_records(tmp_path, settings=settings)
    kept = []
    for path in sorted(tmp_path.glob("*_performance.jsonl")):
        for _, line in reader.bounded_lines(path):
            reason, record = reader.line_problem(line) if line.strip() else ("blank", None)
            if record is not None:
                kept.append(record)
    assert engine.attrs["read_stats"]["parser"] == "duckdb"
    assert engine.attrs["read_stats"]["skipped_lines"] == 2
    assert engine["request_id"].tolist() == [r["request_id"] for r in kept]
    assert engine["total_time"].tolist() == [r["total_time"] for r in kept]
    by_id = {r["request_id"]: r for r in kept}
    for column in ("stage_retrieval", "stage_generation", "stage_rerank"):
        name = column[len("stage_"):]
        expected = [by_id[i]["stages"].get(name, {}).get("duration") for i in engine["request_id"]]
        got = engine[column].astype(object).where(engine[column].notna(), None).tolist()
        assert got == expected, column


def test_parallel_reading_matches_serial_reading_line_numbers_included(tmp_path, settings):
    records = [rec(n, ago=10 + n, total=0.1 + (n % 50) / 100,
                   attributes={"agent_type": "crewai" if n % 7 == 0 else "simple"})
               for n in range(3000)]
    records[2500]["attributes"]["late_key"] = "x"  # a schema change inside the second half
    write_records(tmp_path, records[:2000], raw_lines=[b"{broken\n"])
    write_records(tmp_path, records[2000:])
    serial, serial_stats = read_columns(tmp_path, workers=1)
    parallel, parallel_stats = read_columns(tmp_path, workers=3)
    assert len(serial) == len(parallel) == 3000
    assert serial["request_id"].tolist() == parallel["request_id"].tolist()
    assert np.allclose(serial["total_time"], parallel["total_time"])
    assert serial["attr_agent_type"].astype(str).tolist() == parallel["attr_agent_type"].astype(str).tolist()
    assert parallel["attr_late_key"].notna().sum() == 1
    assert serial_stats.example_texts() == parallel_stats.example_texts()
    assert serial_stats.example_texts()[0].endswith(":2001: not valid JSON")
    assert serial_stats.lines == parallel_stats.lines == 3001


def test_bounded_lines_give_every_line_and_skip_over_long_ones(tmp_path):
    path = tmp_path / "x.jsonl"
    lines = [(b"%d" % n) * (n % 17 + 1) + b"\n" for n in range(500)]
    path.write_bytes(b"".join(lines) + b"tail-without-newline")
    got = [line for _, line in reader.bounded_lines(path)]
    assert b"".join(got) == path.read_bytes()
    long = b"x" * 5000 + b"\n"
    path.write_bytes(lines[0] + long + lines[1] + long[:-1])
    assert list(reader.bounded_lines(path, limit=100)) == [(1, lines[0]), (2, None), (3, lines[1]),
                                                           (4, None)]


# --- the report -----------------------------------------------------------------------------------

def test_report_sections_have_the_right_numbers(tmp_path):
    settings = make_settings(SLOW_QUERY_SECONDS="5", VERY_SLOW_QUERY_SECONDS="30",
                             BOTTLENECK_SHARE="0.6", STAGE_BUDGETS="retrieval=2.0")
    records = sample_records()
    write_records(tmp_path, records)
    df = load_records(tmp_path, 1, settings=settings)
    report = build_report(df, settings, top=3)
    totals = [r["total_time"] for r in records]

    assert report["empty"] is False and report["period"]["hours"] == 1
    assert report["totals"]["requests"] == 23 and report["totals"]["error"] == 2
    assert report["totals"]["success_rate"] == pytest.approx(21 / 23)
    for key, q in (("p50", 50), ("p95", 95), ("p99", 99)):
        assert report["latency"][key] == pytest.approx(np.percentile(totals, q))
    assert report["latency"]["max"] == 40.0
    assert report["latency"]["slow"] == 2 and report["latency"]["very_slow"] == 1

    stages = {s["stage"]: s for s in report["stages"]}
    # generation is 70% of most requests (> 0.6) and 5.0/6.0 of req-20; retrieval 39/40 of
    # req-21 (share and budget) and 0.5 of req-20 (neither).
    assert stages["generation"]["bottlenecks"] == 21 and stages["generation"]["requests"] == 21
    assert stages["retrieval"]["bottlenecks"] == 1
    assert stages["retrieval"]["bottlenecks_by_budget"] == 1
    assert stages["retrieval"]["requests"] == 22

    models = {m["model"]: m for m in report["models"]}
    assert models["claude-3-5-haiku"]["requests"] == 2
    assert models["claude-3-5-haiku"]["cost"] == pytest.approx(0.01)
    assert models["gpt-4o-mini"]["cost"] == pytest.approx(0.02)
    assert models["gpt-4o-mini"]["input_tokens"] == 2000
    assert report["cost"]["total"] == pytest.approx(0.03)
    assert report["cost"]["requests_without_cost"] == 2
    assert report["tokens"]["output"] == 21 * 20
    assert report["cache"] == {"hits": 22, "misses": 1, "hit_rate": pytest.approx(22 / 23)}
    assert {e["error_type"]: e["count"] for e in report["errors"]} == {"TimeoutError": 1,
                                                                        "RateLimitError": 1}
    agent = report["attributes"]["agent_type"]
    assert agent["kind"] == "category"
    assert {v["value"]: v["requests"] for v in agent["values"]} == {"crewai": 7, "simple": 14}
    entities = report["attributes"]["entities"]
    assert entities["kind"] == "list"
    assert {v["value"]: v["requests"] for v in entities["values"]} == {
        "customers": 10, "bills": 10, "payments": 10}
    score = report["attributes"]["complexity_score"]
    assert score["kind"] == "number" and score["mean"] == pytest.approx(np.mean([n / 20 for n in range(20)]))
    assert [s["request_id"] for s in report["slowest"]] == ["req-21", "req-20", "req-19"]
    assert report["slowest"][0]["slowest_stage"] == "retrieval"
    assert json.loads(json.dumps(report)) == report  # JSON-able as it is

    text = format_text(report)
    for needle in ("Performance report - last 1 h", "success rate 91.3%", "very slow (> 30 s): 1",
                   "generation", "claude-3-5-haiku", "hit rate 95.7%", "TimeoutError",
                   "Attribute agent_type", "req-21", "retrieval 39.00 s"):
        assert needle in text, needle


def test_report_bottleneck_counts_agree_with_the_monitor_rule(tmp_path):
    settings = make_settings(BOTTLENECK_SHARE="0.4", STAGE_BUDGETS="retrieval=0.3,generation=0.9")
    rng = np.random.default_rng(3)
    records = []
    for n in range(300):
        stages = {"retrieval": float(rng.uniform(0, 0.6)), "generation": float(rng.uniform(0, 1.5))}
        if n % 10 == 0:
            del stages["retrieval"]
        records.append(rec(n, total=sum(stages.values()) + float(rng.uniform(0, 0.3)), stages=stages))
    write_records(tmp_path, records)
    df = load_records(tmp_path, settings=settings)
    expected = {"retrieval": 0, "generation": 0}
    for r in records:
        for b in find_bottlenecks({k: v["duration"] for k, v in r["stages"].items()},
                                  r["total_time"], 0.4, settings.STAGE_BUDGETS):
            expected[b["stage"]] += 1
    report = build_report(df, settings)
    assert {s["stage"]: s["bottlenecks"] for s in report["stages"]} == expected


def test_an_empty_period_says_so_plainly(tmp_path, settings):
    write_records(tmp_path, [rec(1, ago=5 * 3600)])
    df = load_records(tmp_path, 1, settings=settings)
    report = build_report(df, settings)
    assert report["empty"] is True
    assert report["message"] == f"no requests in the last 1 h in {tmp_path}"
    assert report["message"] in format_text(report)
    assert "no requests" in format_csv(report)
    assert build_stats(df, settings, hours=1)["empty"] is True
    empty_dir = tmp_path / "empty"
    empty_dir.mkdir()
    assert build_report(load_records(empty_dir, settings=settings), settings)["empty"] is True


def test_report_csv_is_long_form_and_parseable(tmp_path, settings):
    write_records(tmp_path, sample_records())
    report = build_report(load_records(tmp_path, 1, settings=settings), settings)
    rows = list(csv.DictReader(io.StringIO(format_csv(report))))
    assert set(rows[0]) == {"section", "item", "metric", "value"}
    index = {(r["section"], r["item"], r["metric"]): r["value"] for r in rows}
    assert index[("totals", "", "requests")] == "23"
    assert float(index[("model", "claude-3-5-haiku", "cost")]) == pytest.approx(0.01)
    assert index[("stage", "generation", "bottlenecks")] == "21"
    assert index[("attribute agent_type", "crewai", "requests")] == "7"
    assert index[("slowest", "req-21", "total_time")] == "40.0"


def test_stats_add_distributions_and_a_time_table(tmp_path, settings):
    records = [rec(n, ago=n * 600, total=0.5 + (n % 5) / 10) for n in range(30)]
    write_records(tmp_path, records)
    stats = build_stats(load_records(tmp_path, 6, settings=settings), settings, hours=6)
    assert stats["distributions"]["total_time"]["count"] == 30
    assert stats["distributions"]["stage retrieval"]["max"] == pytest.approx(0.18)
    assert sum(r["requests"] for r in stats["series"]) == 30
    assert stats["bucket"] == "15min"
    assert "Per 15min" in format_stats_text(stats)


# --- retention ------------------------------------------------------------------------------------

def test_cleanup_deletes_only_old_log_files(tmp_path):
    day = 86400
    old = [log_file_name(NOW - d * day) for d in (40, 31)]
    young = [log_file_name(NOW - d * day) for d in (29, 0)]
    for name in old + young:
        (tmp_path / name).write_text("{}\n")
    others = ["notes.txt", "2026_performance.jsonl", "20261399_performance.jsonl",
              old[0] + ".bak", "app.jsonl", "x" + old[0]]
    for name in others:
        (tmp_path / name).write_text("keep me\n")
    (tmp_path / "archive").mkdir()
    (tmp_path / "archive" / old[0]).write_text("keep me\n")
    outside = tmp_path.parent / f"outside-{os.getpid()}.jsonl"
    outside.write_text("keep me\n")
    link = tmp_path / log_file_name(NOW - 50 * day)
    link.symlink_to(outside)

    dry = cleanup_logs(tmp_path, 30, now=NOW, dry_run=True)
    assert sorted(dry.deleted) == sorted(old) and all((tmp_path / n).exists() for n in old)
    result = cleanup_logs(tmp_path, 30, now=NOW)
    assert sorted(result.deleted) == sorted(old) and result.failed == []
    remaining = {p.name for p in tmp_path.iterdir()}
    assert remaining == set(young) | set(others) | {"archive", link.name}
    assert (tmp_path / "archive" / old[0]).exists() and outside.read_text() == "keep me\n"
    outside.unlink()


def test_cleanup_never_deletes_a_day_that_may_hold_young_records(tmp_path):
    name = log_file_name(NOW - 30 * 86400)  # its day ends less than 30 days ago, or just about
    (tmp_path / name).write_text("{}\n")
    day_start = (NOW - 30 * 86400) // 86400 * 86400
    # At the moment the day's last record turns 30 days old, the file goes; a second before, not.
    assert cleanup_logs(tmp_path, 30, now=day_start + 86400 + 30 * 86400 - 1).deleted == []
    assert cleanup_logs(tmp_path, 30, now=day_start + 86400 + 30 * 86400).deleted == [name]


@pytest.mark.parametrize("days", [0, -3, 1.5, "30", True])
def test_cleanup_rejects_bad_days(tmp_path, days):
    with pytest.raises(ValueError, match="days="):
        cleanup_logs(tmp_path, days)


def test_cleanup_of_a_missing_directory_says_where_it_looked(tmp_path):
    with pytest.raises(LogDirNotFound, match="nowhere"):
        cleanup_logs(tmp_path / "nowhere", 30)


# --- export ----------------------------------------------------------------------------------------

def test_export_json_jsonl_and_csv(tmp_path, settings):
    records = sample_records()
    write_records(tmp_path / "logs", records, raw_lines=[b"torn"])
    as_json = export_records(tmp_path / "out.json", tmp_path / "logs", 48, settings=settings)
    data = json.loads((tmp_path / "out.json").read_text())
    assert as_json["records"] == data["count"] == 23
    assert data["records"][0]["stages"]["retrieval"]["metadata"] == {"n": 0}  # metadata kept
    assert data["read"]["skipped_by_reason"] == {"torn_last_line": 1}

    export_records(tmp_path / "out.jsonl", tmp_path / "logs", 48, settings=settings)
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [r["request_id"] for r in records]

    export_records(tmp_path / "out.csv", tmp_path / "logs", 48, settings=settings)
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert len(rows) == 23 and "stage_generation" in rows[0]
    assert json.loads(next(r for r in rows if r["request_id"] == "req-1")["attr_entities"]) == [
        "customers", "bills"]


def test_export_refuses_an_unknown_extension_before_reading(tmp_path, settings):
    with pytest.raises(ValueError, match=r"'\.xlsx' is not one of \.json, \.jsonl, \.csv"):
        export_records(tmp_path / "out.xlsx", tmp_path / "no-such-dir", 48, settings=settings)
    assert not (tmp_path / "out.xlsx").exists()


def test_export_of_an_empty_period_writes_valid_empty_files(tmp_path, settings):
    (tmp_path / "logs").mkdir()
    export_records(tmp_path / "e.json", tmp_path / "logs", 1, settings=settings)
    assert json.loads((tmp_path / "e.json").read_text())["records"] == []
    export_records(tmp_path / "e.csv", tmp_path / "logs", 1, settings=settings)
    assert (tmp_path / "e.csv").read_text().startswith("request_id,timestamp")


def test_notebook_api_is_importable():
    for name in ("load_records", "build_report", "format_text", "export_records", "plot_trends"):
        assert callable(getattr(m2_3_report, name))


def test_list_attributes_with_unhashable_items_are_still_counted(tmp_path, settings):
    write_records(tmp_path, [rec(1, attributes={"tools": [{"name": "sql"}, {"name": "web"}]}),
                             rec(2, attributes={"tools": [{"name": "sql"}]})])
    report = build_report(load_records(tmp_path, settings=settings), settings)
    tools = report["attributes"]["tools"]
    assert tools["kind"] == "list"
    assert {v["value"]: v["requests"] for v in tools["values"]} == {
        str({"name": "sql"}): 2, str({"name": "web"}): 1}


def test_a_stage_first_seen_after_the_first_record_keeps_every_row_aligned(tmp_path):
    # The demo's log begins this way: a cache hit (embedding only), then a full query.
    import time as _time
    from ragmon.instrument.records import DailyFileSink as _Sink, make_record as _make
    sink, now = _Sink(tmp_path), _time.time()

    def rec(rid, stages):
        return _make(request_id=rid, service="s", env="development", operation="op", model="m",
                     status="success", error_type=None, start_time=now - 1, total_time=0.5,
                     stages={name: {"duration": seconds, "metadata": {}} for name, seconds in stages.items()})

    sink.write(rec("hit", {"embedding": 0.01}), at=now)
    sink.write(rec("miss", {"embedding": 0.02, "retrieval": 0.1, "reranking": 0.05, "generation": 0.3}), at=now)
    sink.close()
    from m2_3_report import load_records as _load
    df = _load(tmp_path).set_index("request_id")
    assert df.loc["hit", "stage_embedding"] == 0.01
    assert df.loc["hit", ["stage_retrieval", "stage_generation"]].isna().all()
    assert df.loc["miss", "stage_generation"] == 0.3


def test_the_text_report_copes_with_records_that_have_no_status(tmp_path):
    # Records of the minimal form carry only timing; the slowest-requests table must still render.
    import json as _json
    import time as _time
    from ragmon.instrument.records import log_file_name as _name
    now = _time.time()
    line = {"request_id": "old-1", "start_time": now - 2, "total_time": 1.5,
            "stages": {"retrieval": {"duration": 1.0, "metadata": {}}}}
    (tmp_path / _name(now)).write_text(_json.dumps(line) + "\n")
    from m2_3_report import build_report as _build, format_text as _format, load_records as _load
    text = _format(_build(_load(tmp_path)))
    assert "old-1" in text


def test_csv_export_is_written_by_the_engine_without_a_dataframe(tmp_path, settings):
    """History and JSONL in one CSV, oldest first, attribute values readable, and pandas never
    imported: the rows go from DuckDB to the file."""
    import subprocess
    import sys

    from ragmon.report.compact import compact_logs

    records = [rec(n, ago=3 * 86400 + n, attributes={"agent": "crewai", "entities": ["a", "b"],
                                                      "score": 0.5}) for n in range(3)]
    records += [rec(10 + n, ago=60 + n, attributes={"agent": "simple"}) for n in range(2)]
    write_records(tmp_path / "logs", records)
    compact_logs(tmp_path / "logs", now=NOW, settings=settings)
    code = ("import sys; from ragmon.report.cli import export_records; "
            "r = export_records(sys.argv[1], sys.argv[2]); "
            "print(r['records'], 'pandas' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "out.csv"),
                           str(tmp_path / "logs")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["5", "False"]
    rows = list(csv.DictReader((tmp_path / "out.csv").open()))
    assert [r["request_id"] for r in rows] == ["req-2", "req-1", "req-0", "req-11", "req-10"]
    assert json.loads(rows[0]["attr_entities"]) == ["a", "b"] and rows[0]["attr_agent"] == "crewai"
    assert float(rows[0]["attr_score"]) == 0.5 and rows[-1]["attr_entities"] == ""
    assert float(rows[0]["stage_generation"]) == pytest.approx(0.7)


def test_a_request_cost_under_a_hundredth_of_a_cent_keeps_two_significant_digits():
    from ragmon.report.formatting import money
    assert [money(v) for v in (0.000026, 0.00012, 0.5, 3.456, 0, None)] == \
        ["$0.000026", "$0.0001", "$0.5000", "$3.46", "$0.0000", "-"]
