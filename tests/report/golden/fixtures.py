"""The report tests' logs, written at a fixed clock so that their figures can be kept as golden
data: the figures the pandas engine (ragmon.report.analysis, since removed) computed on them are
in pandas_figures.json, which the SQL engine must reproduce (test_engine_figures.py)."""
from __future__ import annotations

import contextlib
from pathlib import Path

# 2026-11-20 12:34:56.789 UTC: every record of the fixtures ends within a few days before it.
FIXED_NOW = 1795696496.789
# The parts of a report that are figures (the header says when and where it was made).
FIGURES = ("totals", "latency", "stages", "models", "cost", "tokens", "cache", "quality",
           "errors", "operations", "attributes", "slowest")
# What stats adds: the distributions and the time table.
STATS_FIGURES = ("distributions", "bucket", "series")


@contextlib.contextmanager
def fixed_clock(now: float = FIXED_NOW):
    """The record builders of the report tests, with their clock at `now`."""
    from tests.report import test_report, test_summary

    saved = test_report.NOW, test_summary.NOW
    test_report.NOW = test_summary.NOW = now
    try:
        yield
    finally:
        test_report.NOW, test_summary.NOW = saved


def sample_log(log_dir: Path) -> Path:
    """test_report's sample records plus older ones and a torn last line (test_report_cli's)."""
    from tests.report.test_report import encode, rec, sample_records, write_records

    with fixed_clock():
        records = sample_records() + [rec(100 + n, ago=5 * 3600 + n * 600) for n in range(12)]
        write_records(log_dir, records, raw_lines=[encode(rec(99))[:25]])
    return log_dir


def mixed_history_log(log_dir: Path) -> Path:
    """test_summary's mixed log (every kind of record), three days of it compacted."""
    from ragmon.report.compact import compact_logs
    from tests.report.test_summary import mixed_log

    with fixed_clock():
        mixed_log(log_dir)
    # The line with non-object stages: the reader of the pandas engine skipped it, today's reads
    # it as a record without stages (and counts the value); left out, both read the same records.
    for path in log_dir.glob("*.jsonl"):
        lines = path.read_bytes().splitlines(keepends=True)
        path.write_bytes(b"".join(line for line in lines if b'"stages": [1, 2]' not in line))
    compact_logs(log_dir, now=FIXED_NOW)
    return log_dir


def settings_for(name: str, log_dir: Path):
    from tests.conftest import make_settings
    from tests.report.test_summary import priced

    if name == "mixed":
        return priced(log_dir, STAGE_BUDGETS="retrieval=1.0", SLOW_QUERY_SECONDS="3")
    return make_settings(STAGE_BUDGETS="generation=2.0", SLOW_QUERY_SECONDS="5",
                         VERY_SLOW_QUERY_SECONDS="30")


# (log, kind, hours, bucket): what the golden file holds, each case under "log kind hours bucket".
CASES = [("sample", "report", None, None), ("sample", "report", 1.0, None),
         ("sample", "report", 6.0, None), ("sample", "stats", 24.0, None),
         ("sample", "stats", 24.0, "15min"), ("mixed", "report", None, None),
         ("mixed", "report", 30.0, None), ("mixed", "report", 60.0, None),
         ("mixed", "stats", None, None), ("mixed", "stats", 96.0, "6h")]


def case_name(log: str, kind: str, hours, bucket) -> str:
    return f"{log} {kind} {hours} {bucket}"


def build_logs(root: Path) -> dict:
    return {"sample": sample_log(root / "sample"), "mixed": mixed_history_log(root / "mixed")}


def figures_only(result: dict, kind: str) -> dict:
    keys = FIGURES + (STATS_FIGURES if kind == "stats" else ())
    return {key: result[key] for key in keys if key in result}
