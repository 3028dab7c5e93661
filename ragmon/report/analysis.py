"""What the report's figures share: the JSON-able number and time forms, the header, and the
names of the stage and attribute columns of a load_records() DataFrame.

The figures themselves are computed once, in SQL, whatever holds the records (ragmon.report.summary
and ragmon.report.timeline): the log's JSONL and Parquet files, or a DataFrame registered in DuckDB.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

from .reader import ATTR_PREFIX, STAGE_PREFIX

TOP_VALUES = 10  # values listed per attribute; the rest are summed into "other"


def stage_names(df) -> list[str]:
    return [c[len(STAGE_PREFIX):] for c in df.columns if c.startswith(STAGE_PREFIX)]


def attribute_names(df) -> list[str]:
    return [c[len(ATTR_PREFIX):] for c in df.columns if c.startswith(ATTR_PREFIX)]


def json_float(value) -> float | None:
    """A JSON-able float: None for NaN/inf/None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def iso_time(ts) -> str | None:
    if ts is None:
        return None
    try:  # epoch floats carry ~0.1 us of noise: round it away
        return ts.round("us").isoformat()
    except AttributeError:
        return datetime.fromtimestamp(float(ts), timezone.utc).isoformat()


def report_header(settings, hours: float | None, now: float | None, read: dict | None,
                  requests: int) -> dict:
    """The report's header: when, which period, what was read, the thresholds, and whether the
    period was empty (with the message that says so)."""
    generated = datetime.now(timezone.utc) if now is None else datetime.fromtimestamp(now, timezone.utc)
    report: dict = {
        "generated_at": generated.isoformat(),
        "period": {"hours": hours,
                   "since": (iso_time(generated.timestamp() - hours * 3600) if hours is not None
                             else None),
                   "until": generated.isoformat(), "first": None, "last": None},
        "read": read,
        "thresholds": {"slow_seconds": settings.SLOW_QUERY_SECONDS,
                       "very_slow_seconds": settings.VERY_SLOW_QUERY_SECONDS,
                       "bottleneck_share": settings.BOTTLENECK_SHARE,
                       "stage_budgets": dict(settings.STAGE_BUDGETS)},
        "empty": requests == 0,
    }
    if requests == 0:
        where = (read or {}).get("log_dir", "the log directory")
        period = f"the last {hours:g} h" if hours is not None else "the log"
        report["message"] = f"no requests in {period} in {where}"
    return report
