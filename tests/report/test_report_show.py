"""`m2_3_report.py show REQUEST_ID`: from a request id (an exemplar on the latency panel, a log
line) to that request's whole record, in a subprocess on a temporary log dir."""
from __future__ import annotations

import json

import pytest

from tests.report.test_report import encode, rec, sample_records, write_records
from tests.report.test_report_cli import run


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    log_dir = tmp_path_factory.mktemp("logs")
    write_records(log_dir, sample_records(), raw_lines=[encode(rec(99))[:25]])  # a torn line
    return log_dir


def test_show_prints_the_whole_record_of_one_request(logs):
    proc = run("show", "req-21", "--log-dir", logs)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("request req-21 ")
    for needle in ("status     error  error TimeoutError", "total      40.000 s", "retrieval",
                   "39.000 s", "model claude-3-5-haiku", "cost unknown", "tokens     in 0  out 0"):
        assert needle in out, needle
    assert "req-20" not in out and "req-2 " not in out  # only that request
    record = json.loads(out.split("  record     ", 1)[1])
    assert record["request_id"] == "req-21" and record["stages"]["retrieval"]["duration"] == 39.0


def test_show_json_is_the_record_as_written(logs):
    proc = run("show", "req-20", "--format", "json", "--log-dir", logs)
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["request_id"] == "req-20" and record["cost"] == 0.01
    assert record["tokens"] == {"input": 100, "output": 20, "cached_input": 0}
    assert set(record["stages"]) == {"retrieval", "generation"}


def test_show_an_unknown_id_says_where_it_looked(logs):
    proc = run("show", "req-404", "--log-dir", logs)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "no request 'req-404'" in proc.stderr and str(logs) in proc.stderr


def test_show_needs_an_id(logs):
    proc = run("show", " ", "--log-dir", logs)
    assert proc.returncode == 2 and "is empty" in proc.stderr
