"""The quality report (scores by operation, model and day; feedback joined to its requests; the
worst-rated requests), and every other reader of the log untouched by evaluation and feedback
records."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from m2_3_report import main
from ragmon import RAGMetrics, record_feedback, record_scores
from ragmon.instrument.records import QUALITY_FILE_SUFFIX, DailyFileSink, log_file_name
from ragmon.report.cli import export_records
from ragmon.report.compact import compact_logs
from ragmon.report.plots import log_trends
from ragmon.report.quality import format_quality_text, quality_report
from ragmon.report.reader import read_columns
from ragmon.report.retention import cleanup_logs
from ragmon.report.summary import html_from_log, report_from_log, stats_from_log
from tests.conftest import make_settings
from tests.report.test_report import NOW, rec, write_records

DAY = 86400


def requests() -> list[dict]:
    """Ten requests today (two operations, two models), four two days ago."""
    records = []
    for n in range(10):
        records.append(rec(n, ago=600 + n, operation="search" if n % 2 else "chat",
                           model="gpt-4o-mini" if n < 5 else "claude-3-5-haiku",
                           relevance=n / 10, scores={"faithfulness": 1 - n / 10},
                           retrieval={"documents": n % 3, "top_score": 0.5 if n % 3 else None,
                                      "newest_document_age_seconds": 60.0}))
    for n in range(10, 14):
        records.append(rec(n, ago=2 * DAY + n, operation="chat", relevance=0.9,
                           scores={"faithfulness": 0.95, "bogus": "high"}))
    return records


@pytest.fixture
def metrics():
    return RAGMetrics(registry=CollectorRegistry(), settings=make_settings())


def write_quality(log_dir: Path, metrics) -> None:
    """Feedback and late scores through the library, checked against the log just written."""
    sink = DailyFileSink(log_dir)
    try:
        assert record_feedback("req-3", thumbs="down", reason="outdated", metrics=metrics,
                               request_log=sink).verified
        assert record_feedback("req-3", rating=2, metrics=metrics, request_log=sink)
        assert record_feedback("req-8", rating=5, metrics=metrics, request_log=sink)
        assert record_feedback("req-elsewhere", thumbs="up", metrics=metrics, request_log=sink,
                               verify=False)
        assert record_scores({"faithfulness": 0.05, "judge_tone": 0.5}, request_id="req-6",
                             metrics=metrics, request_log=sink)
        assert record_scores(faithfulness=0.4, request_id="req-11", metrics=metrics,
                             request_log=sink)
    finally:
        sink.close()


@pytest.fixture
def log_dir(tmp_path, metrics) -> Path:
    write_records(tmp_path, requests())
    write_quality(tmp_path, metrics)
    return tmp_path


def rounded(value):
    """Sums of floats in another order differ in the last bits; the figures do not."""
    if isinstance(value, float):
        return round(value, 9)
    if isinstance(value, dict):
        return {k: rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [rounded(v) for v in value]
    return value


def by_key(groups):
    return {g["key"]: g for g in groups}


def test_quality_by_operation_model_and_day(log_dir):
    report = quality_report(log_dir, hours=3 * 24, now=time.time())
    assert report["requests"] == 14
    assert report["score_names"][:2] == ["faithfulness", "relevance_score"]
    ops = by_key(report["by_operation"])
    assert ops["search"]["requests"] == 5 and ops["chat"]["requests"] == 9
    # search: req-1,3,5,7,9: relevance n/10 -> mean 0.5
    assert ops["search"]["scores"]["relevance_score"]["mean"] == pytest.approx(0.5)
    # chat faithfulness today: req-0,2,4,8 carried (1, .8, .6, .2), req-6 replaced by 0.05 late;
    # two days ago req-10,12,13 0.95 and req-11 replaced by 0.4
    expected = (1 + .8 + .6 + .05 + .2 + .95 * 3 + .4) / 9
    assert ops["chat"]["scores"]["faithfulness"]["mean"] == pytest.approx(expected)
    assert ops["chat"]["scores"]["judge_tone"] == {"mean": 0.5, "count": 1}
    assert ops["search"]["feedback"] == {"positive": 0, "negative": 2, "neutral": 0}
    assert ops["search"]["negative_share"] == 1.0
    assert ops["chat"]["feedback"] == {"positive": 1, "negative": 0, "neutral": 0}
    # retrieval health: documents n % 3 on today's requests; empty for n = 0, 3, 6, 9
    assert ops["search"]["retrievals"] == 5 and ops["search"]["empty_retrievals"] == 2
    assert ops["chat"]["retrievals"] == 5 and ops["chat"]["empty_retrievals"] == 2
    models = by_key(report["by_model"])
    assert models["gpt-4o-mini"]["requests"] == 9 and models["claude-3-5-haiku"]["requests"] == 5
    days = [g["key"] for g in report["by_day"]]
    assert days == sorted({time.strftime("%Y-%m-%d", time.gmtime(r["start_time"] + r["total_time"]))
                           for r in requests()})


def test_feedback_is_joined_to_its_request_and_the_rest_is_counted_unmatched(log_dir):
    report = quality_report(log_dir, hours=3 * 24)
    feedback = report["feedback"]
    assert feedback["total"] == 4 and feedback["matched"] == 3 and feedback["unmatched"] == 1
    joined = {(f["request_id"], f["thumbs"], f["rating"]) for f in feedback["latest"]}
    assert joined == {("req-3", "down", None), ("req-3", None, 2), ("req-8", None, 5)}
    entry = next(f for f in feedback["latest"] if f["thumbs"] == "down")
    assert entry["operation"] == "search" and entry["model"] == "gpt-4o-mini"
    assert entry["reason"] == "outdated" and entry["status"] == "success"
    assert report["evaluations"] == {"late": 2, "matched": 2, "unmatched": 0}


def test_the_worst_rated_requests_come_first_with_their_ids(log_dir):
    report = quality_report(log_dir, hours=3 * 24, top=3)
    worst = report["worst"]
    assert [w["request_id"] for w in worst] == ["req-3", "req-8", "req-6"]
    # req-3: thumbs down (0) and rating 2 (0.25); req-8 has rating 5 (1.0) but is rated at all;
    # req-6 has no feedback and the lowest mean score (faithfulness 0.05, relevance 0.6, tone 0.5)
    assert worst[0]["feedback_value"] == pytest.approx(0.125)
    assert worst[0]["reasons"] == ["outdated"] and worst[0]["negative_feedback"] == 2
    assert worst[2]["scores"] == {"faithfulness": 0.05, "judge_tone": 0.5, "relevance_score": 0.6}
    text = format_quality_text(report)
    for needle in ("By operation", "By model", "By day (UTC)", "Latest feedback", "req-3",
                   "Worst-rated requests", "outdated"):
        assert needle in text, needle


def test_a_period_leaves_older_requests_and_their_feedback_out(log_dir):
    report = quality_report(log_dir, hours=1)
    assert report["requests"] == 10
    assert report["evaluations"] == {"late": 2, "matched": 1, "unmatched": 1}


def test_the_cli_prints_the_quality_report_as_text_and_json(log_dir, capsys):
    assert main(["quality", "--hours", "72", "--log-dir", str(log_dir)]) == 0
    assert "Worst-rated requests" in capsys.readouterr().out
    assert main(["quality", "--hours", "72", "--format", "json", "--top", "1",
                 "--log-dir", str(log_dir)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [w["request_id"] for w in report["worst"]] == ["req-3"]


def test_an_empty_log_gives_an_empty_report(tmp_path):
    report = quality_report(tmp_path, hours=1)
    assert report["requests"] == 0 and report["worst"] == []
    assert "no requests" in format_quality_text(report)


def test_the_quality_report_reads_compacted_days_the_same(log_dir):
    before = quality_report(log_dir, hours=3 * 24, now=NOW)
    compact_logs(log_dir, now=NOW, settings=make_settings())
    assert list((log_dir / "history").glob("day=*/records.parquet"))
    after = quality_report(log_dir, hours=3 * 24, now=NOW)
    for key in ("requests", "by_operation", "by_model", "by_day", "feedback", "worst",
                "evaluations"):
        assert rounded(after[key]) == rounded(before[key]), key


# --- every other reader is untouched by the quality records ---------------------------------

def _figures(log_dir: Path, settings, tmp_path: Path) -> dict:
    report = report_from_log(log_dir, settings, hours=72, now=NOW, exact=True)
    stats = stats_from_log(log_dir, settings, hours=72, now=NOW)
    for result in (report, stats):
        result.pop("generated_at", None)
        result.pop("read", None)
    df, read = read_columns(log_dir)
    trends, _ = log_trends(log_dir, 72, None)
    html = html_from_log(log_dir, settings, hours=72)
    out = tmp_path / f"export-{len(list(tmp_path.iterdir()))}.jsonl"
    export = export_records(out, log_dir, 72, settings=settings)
    return {"report": report, "stats": stats, "rows": len(df), "skipped": read.skipped_total,
            "trend_requests": trends["requests"], "html": "<html" in html.lower(),
            "exported": export["records"],
            "export_lines": len(out.read_text().splitlines())}


def test_quality_files_change_no_report_stats_plot_html_export_or_compaction(tmp_path, metrics):
    settings = make_settings()
    plain, with_quality, scratch = tmp_path / "plain", tmp_path / "quality", tmp_path / "out"
    for directory in (plain, with_quality, scratch):
        directory.mkdir()
    write_records(plain, requests())
    write_records(with_quality, requests())
    write_quality(with_quality, metrics)
    assert list(with_quality.glob("*" + QUALITY_FILE_SUFFIX))
    assert rounded(_figures(with_quality, settings, scratch)) == \
        rounded(_figures(plain, settings, scratch))
    results = compact_logs(with_quality, now=NOW, settings=settings)
    assert results[0].rejected_lines == 0 and results[0].records == 4
    assert list(with_quality.glob("*" + QUALITY_FILE_SUFFIX))  # not compacted: still beside
    compact_logs(plain, now=NOW, settings=settings)
    assert rounded(_figures(with_quality, settings, scratch)) == \
        rounded(_figures(plain, settings, scratch))


def test_retention_deletes_old_quality_files_with_the_request_files(tmp_path):
    old, young = log_file_name(NOW - 40 * DAY), log_file_name(NOW - 2 * DAY)
    for name in (old, young):
        (tmp_path / name).write_text("")
        (tmp_path / name.replace("_performance.jsonl", QUALITY_FILE_SUFFIX)).write_text("")
    result = cleanup_logs(tmp_path, 30, now=NOW)
    assert sorted(result.deleted) == sorted([old, old.replace("_performance.jsonl",
                                                              QUALITY_FILE_SUFFIX)])
    assert len(list(tmp_path.iterdir())) == 2


def test_quality_records_inside_a_request_file_are_never_read_as_requests(tmp_path, settings):
    """A stream sink's output saved as a request file mixes them; they are skipped and said."""
    write_records(tmp_path, requests()[:3], raw_lines=[
        json.dumps({"kind": "feedback", "timestamp": "2026-01-01T00:00:00+00:00",
                    "start_time": NOW - 10, "request_id": "req-1", "feedback": "negative",
                    "thumbs": "down"}).encode() + b"\n"])
    report = report_from_log(tmp_path, settings, hours=1, now=NOW, exact=True)
    assert report["totals"]["requests"] == 3
    quality = quality_report(tmp_path, hours=1)
    assert quality["requests"] == 3


def test_a_copy_of_the_log_directory_reads_the_same_to_the_last_digit(log_dir, tmp_path):
    copy = tmp_path.parent / (tmp_path.name + "-copy")
    shutil.copytree(log_dir, copy)
    assert quality_report(copy, hours=72, now=NOW)["worst"] == \
        quality_report(log_dir, hours=72, now=NOW)["worst"]
