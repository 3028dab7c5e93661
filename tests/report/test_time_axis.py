"""The time axis of stats, plot and report: a record dated far in the future (a writer's wrong
clock, a corrupt start_time) is skipped and said, and no bucket width builds an unbounded
table of empty rows."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from m2_3_report import build_stats, load_records
from ragmon.report.summary import report_from_log
from tests.conftest import make_settings
from tests.report.test_report import NOW, rec, write_records
from tests.report.test_report_cli import run

YEAR = 365.25 * 86400


def log_with_a_future_record(log_dir, ahead: float):
    records = [rec(n, total=0.5 + n / 10, ago=600 + 60 * n) for n in range(20)]
    write_records(log_dir, records + [rec(99, total=1.0, ago=-ahead)])
    return records


def test_a_record_dated_50_years_ahead_is_skipped_and_counted(tmp_path):
    records = log_with_a_future_record(tmp_path, 50 * YEAR)
    df = load_records(tmp_path, 24, settings=make_settings(), now=NOW)
    assert len(df) == len(records) and "req-99" not in set(df["request_id"])
    assert df.attrs["read_stats"]["future_records"] == 1
    assert df.attrs["read_stats"]["outside_period"] == 0
    report = report_from_log(tmp_path, make_settings(), hours=24, now=NOW)
    assert report["totals"]["requests"] == len(records)
    assert report["read"]["future_records"] == 1
    assert report["period"]["last"] < pd.Timestamp(NOW + 3600, unit="s", tz="UTC").isoformat()


def test_stats_with_a_one_minute_bucket_ignores_a_record_two_months_ahead(tmp_path):
    log_with_a_future_record(tmp_path, 60 * 86400)
    proc = run("stats", "--hours", 24, "--bucket", "1min", "--format", "json", "--log-dir", tmp_path)
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(proc.stdout)
    assert stats["totals"]["requests"] == 20
    assert len(stats["series"]) <= 24 * 60 + 1
    assert "1 record(s) ending more than 24 h after this machine's clock" in proc.stderr
    plot = run("plot", "--hours", 24, "--bucket", "1min", "--output", tmp_path / "t.png",
               "--log-dir", tmp_path)
    assert plot.returncode == 0, plot.stderr
    assert (tmp_path / "t.png").stat().st_size > 0


def test_a_bucket_that_would_cut_the_records_span_too_fine_is_refused(tmp_path):
    """Records 40 days apart inside the period (here the whole log): the table would need more
    than 10,000 rows, which the error names with the bucket that fits."""
    write_records(tmp_path, [rec(1, ago=40 * 86400), rec(2, ago=60)])
    df = load_records(tmp_path, None, settings=make_settings(), now=NOW)
    assert len(df) == 2
    with pytest.raises(ValueError, match=r"bucket '1min' cuts the records' span of .* more than "
                                         r"10,000 rows; choose a bucket of at least"):
        build_stats(df, make_settings(), bucket="1min")
    assert len(build_stats(df, make_settings(), bucket="1D")["series"]) <= 42
