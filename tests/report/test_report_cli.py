"""m2_3_report.py as an operator runs it: each verb in a subprocess, on temporary log dirs."""
from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ragmon.instrument.records import log_file_name
from tests.report.test_report import NOW, encode, rec, sample_records, write_records

ROOT = Path(__file__).resolve().parents[2]
# Settings come from the environment; these pin what the tests rely on, whatever .env says.
ENV = {"MODEL_PRICES_FILE": "", "SLOW_QUERY_SECONDS": "5", "VERY_SLOW_QUERY_SECONDS": "30",
       "BOTTLENECK_SHARE": "0.5", "STAGE_BUDGETS": "", "LOG_RETENTION_DAYS": "30",
       "REQUEST_LOG_DESTINATION": "none", "LOG_DESTINATION": "none"}


def run(*args, cwd=None, env=None) -> subprocess.CompletedProcess:
    environ = {**os.environ, **ENV, **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / "m2_3_report.py"), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd or ROOT, env=environ,
                          timeout=120)


@pytest.fixture(scope="module")
def logs(tmp_path_factory) -> Path:
    log_dir = tmp_path_factory.mktemp("logs")
    records = sample_records() + [rec(100 + n, ago=5 * 3600 + n * 600) for n in range(12)]
    write_records(log_dir, records, raw_lines=[encode(rec(99))[:25]])  # ends in a torn line
    return log_dir


def test_report_text(logs):
    proc = run("report", "--hours", 1, "--log-dir", logs)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    for needle in ("Performance report - last 1 h", "total 23", "success rate 91.3%",
                   "p50 ", "p95 ", "p99 ", "max 40.00 s", "slow (> 5 s): 2", "very slow (> 30 s): 1",
                   "Stages (bottleneck: share > 0.5)", "claude-3-5-haiku", "Cache", "hit rate",
                   "TimeoutError", "RateLimitError", "Attribute agent_type", "crewai",
                   "Slowest requests", "req-21", "Skipped 1 unreadable line(s): 1 torn last line"):
        assert needle in out, needle
    assert "skipped 1 unreadable line(s): 1 torn last line" in proc.stderr


def test_report_json_and_csv(logs):
    proc = run("report", "--hours", 1, "--format", "json", "--top", 2, "--log-dir", logs)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["totals"]["requests"] == 23 and len(report["slowest"]) == 2
    assert report["read"]["skipped_by_reason"] == {"torn_last_line": 1}
    proc = run("report", "--format", "csv", "--log-dir", logs)
    assert proc.returncode == 0, proc.stderr
    rows = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert ("totals", "", "requests", "23") in {(r["section"], r["item"], r["metric"], r["value"])
                                                for r in rows}


def test_stats_cover_a_longer_period(logs):
    proc = run("stats", "--hours", 24, "--log-dir", logs)
    assert proc.returncode == 0, proc.stderr
    assert "total 35" in proc.stdout and "Distributions" in proc.stdout and "Per 15min" in proc.stdout
    proc = run("stats", "--format", "json", "--bucket", "30min", "--log-dir", logs)
    stats = json.loads(proc.stdout)
    assert stats["bucket"] == "30min" and sum(r["requests"] for r in stats["series"]) == 35


def test_export_by_extension(logs, tmp_path):
    for name in ("out.json", "out.jsonl", "out.csv"):
        proc = run("export", "--output", tmp_path / name, "--hours", 48, "--log-dir", logs)
        assert proc.returncode == 0, proc.stderr
        assert f"exported 35 records from the last 48 h in {logs}" in proc.stdout
    assert json.loads((tmp_path / "out.json").read_text())["count"] == 35
    assert len((tmp_path / "out.jsonl").read_text().splitlines()) == 35
    assert len(list(csv.DictReader((tmp_path / "out.csv").open()))) == 35


def test_export_to_an_unknown_extension_is_a_clear_error(logs, tmp_path):
    proc = run("export", "--output", tmp_path / "out.parquet", "--log-dir", logs)
    assert proc.returncode == 2
    assert "'.parquet' is not one of .json, .jsonl, .csv" in proc.stderr
    assert not (tmp_path / "out.parquet").exists()


def test_config_shows_the_settings_in_force(tmp_path):
    proc = run("config", "--log-dir", tmp_path, env={"LOG_RETENTION_DAYS": "12"})
    assert proc.returncode == 0, proc.stderr
    assert "LOG_RETENTION_DAYS" in proc.stdout and "= 12" in proc.stdout
    assert str(tmp_path) in proc.stdout
    values = json.loads(run("config", "--format", "json").stdout)
    assert values["SLOW_QUERY_SECONDS"] == 5.0 and values["LOG_HASH_KEY"] == "(random per process)"


def test_bad_settings_are_reported_not_a_traceback(tmp_path):
    proc = run("report", "--log-dir", tmp_path, env={"SLOW_QUERY_SECONDS": "soon"})
    assert proc.returncode == 2
    assert "SLOW_QUERY_SECONDS='soon'" in proc.stderr and "Traceback" not in proc.stderr


def test_cleanup_deletes_old_files_only(tmp_path):
    old, young = log_file_name(NOW - 40 * 86400), log_file_name(NOW - 2 * 86400)
    for name in (old, young, "notes.txt"):
        (tmp_path / name).write_text("{}\n")
    proc = run("cleanup", "--days", 30, "--dry-run", "--log-dir", tmp_path)
    assert proc.returncode == 0 and "would delete 1 log file(s)" in proc.stdout
    assert (tmp_path / old).exists()
    proc = run("cleanup", "--log-dir", tmp_path)  # default: LOG_RETENTION_DAYS=30
    assert proc.returncode == 0, proc.stderr
    assert "deleted 1 log file(s) older than 30 day(s)" in proc.stdout and old in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([young, "notes.txt"])
    proc = run("cleanup", "--days", 0, "--log-dir", tmp_path)
    assert proc.returncode == 2 and "'0' is not a whole number of days >= 1" in proc.stderr


def test_plot_writes_an_image(logs, tmp_path):
    out = tmp_path / "charts" / "trends.png"
    proc = run("plot", "--output", out, "--hours", 24, "--log-dir", logs)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000
    assert "35 requests" in proc.stdout


def test_an_empty_period_is_said_plainly(tmp_path):
    (tmp_path / log_file_name(NOW - 3 * 86400)).write_text("")
    proc = run("report", "--hours", 1, "--log-dir", tmp_path)
    assert proc.returncode == 0
    assert f"no requests in the last 1 h in {tmp_path}" in proc.stdout
    proc = run("plot", "--output", tmp_path / "t.png", "--log-dir", tmp_path)
    assert proc.returncode == 1 and "nothing to plot" in proc.stderr
    assert not (tmp_path / "t.png").exists()
    proc = run("export", "--output", tmp_path / "e.json", "--hours", 1, "--log-dir", tmp_path)
    assert proc.returncode == 0 and "no requests in the last 1 h" in proc.stdout


def test_a_missing_log_directory_says_where_it_looked(tmp_path):
    missing = tmp_path / "not-here"
    for verb in ("report", "stats", "plot", "cleanup", "export"):
        extra = ["--output", tmp_path / "x.json"] if verb == "export" else []
        proc = run(verb, "--log-dir", missing, *extra)
        assert proc.returncode == 2, verb
        assert f"log directory '{missing}' does not exist" in proc.stderr, verb
        assert "Traceback" not in proc.stderr


def test_the_default_log_dir_comes_from_the_settings(tmp_path):
    write_records(tmp_path / "configured", [rec(1)])
    proc = run("report", env={"LOG_DIR": str(tmp_path / "configured")}, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "total 1 " in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["report", "--hours", "0"], "'0' is not a number of hours > 0"),
    (["report", "--hours", "soon"], "'soon' is not a number of hours > 0"),
    (["report", "--format", "xml"], "invalid choice: 'xml'"),
    (["export"], "the following arguments are required: --output"),
    ([], "the following arguments are required: COMMAND"),
])
def test_bad_command_lines_exit_2_with_a_message(args, message):
    proc = run(*args)
    assert proc.returncode == 2 and message in proc.stderr


def test_main_is_callable_in_process(logs, capsys):
    import m2_3_report
    assert m2_3_report.main(["report", "--hours", "1", "--format", "json", "--log-dir", str(logs)]) == 0
    assert json.loads(capsys.readouterr().out)["totals"]["requests"] == 23

