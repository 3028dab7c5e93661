"""The report's one engine (SQL over DuckDB) against the figures the former pandas engine
computed on the report tests' logs (tests/report/golden/pandas_figures.json, captured before
it was removed): over the log files, over a load_records() DataFrame, report and stats alike."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from m2_3_report import build_report, build_stats, load_records
from ragmon.report.summary import report_from_log, stats_from_log
from tests.report.golden.fixtures import (CASES, FIXED_NOW, build_logs, case_name, figures_only,
                                          settings_for)
from tests.report.test_summary import same

GOLDEN = json.loads((Path(__file__).parent / "golden" / "pandas_figures.json").read_text())


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    return build_logs(tmp_path_factory.mktemp("golden"))


def as_json(value):
    return json.loads(json.dumps(value))  # tuples and the like as the golden file holds them


@pytest.mark.parametrize("log, kind, hours, bucket", CASES,
                         ids=[case_name(*case) for case in CASES])
def test_the_engine_reproduces_the_pandas_figures(logs, log, kind, hours, bucket):
    golden = GOLDEN[case_name(log, kind, hours, bucket)]
    settings = settings_for(log, logs[log])
    if kind == "report":
        from_log = report_from_log(logs[log], settings, hours=hours, now=FIXED_NOW)
        df = load_records(logs[log], hours, settings=settings, now=FIXED_NOW)
        from_frame = build_report(df, settings, hours=hours, now=FIXED_NOW)
    else:
        from_log = stats_from_log(logs[log], settings, hours=hours, bucket=bucket, now=FIXED_NOW)
        df = load_records(logs[log], hours, settings=settings, now=FIXED_NOW)
        from_frame = build_stats(df, settings, hours=hours, bucket=bucket, now=FIXED_NOW)
    same(as_json(figures_only(from_log, kind)), golden)
    same(as_json(figures_only(from_frame, kind)), golden)


def test_the_golden_figures_are_not_trivial():
    """The golden cases cover what they are meant to: every section holds something."""
    report = GOLDEN[case_name("mixed", "report", None, None)]
    assert report["totals"]["requests"] == 53 and len(report["stages"]) == 2
    assert {a["kind"] for a in report["attributes"].values()} == {"category", "number", "list"}
    assert report["cost"]["default_priced"]["requests"] and report["cost"]["repriced"]["requests"]
    stats = GOLDEN[case_name("sample", "stats", 24.0, "15min")]
    assert stats["bucket"] == "15min" and len(stats["series"]) > 20
    assert any(row["requests"] == 0 for row in stats["series"])  # empty buckets are listed


def test_a_frame_without_the_record_columns_is_refused_naming_them():
    import pandas as pd

    with pytest.raises(ValueError, match=r"lacks the column\(s\) \['timestamp', 'total_time'\]"):
        build_report(pd.DataFrame({"latency": [1.0]}))
