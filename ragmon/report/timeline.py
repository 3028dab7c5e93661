"""The report's figures over time, in SQL over the same rows as the report (the log's, or a
registered frame's): per time bucket requests, errors, latency percentiles, spend, tokens,
quality and each stage's share of the time; and the distributions of latency and of each stage.

Buckets are aligned as pandas' resample aligns them (from midnight UTC of the first record's
day), every bucket from the first record's to the last one's is listed (empty ones too), and
there are never more than MAX_BUCKETS of them.
"""
from __future__ import annotations

import math
from datetime import datetime, timezone

from .reader import sql_quote

# Rows of a time table at most: a 1min bucket over records years apart would build millions.
MAX_BUCKETS = 10_000
# The quantiles of the distributions table.
DISTRIBUTION_QUANTILES = (0.0, 0.5, 0.9, 0.95, 0.99, 1.0)


def bucket_seconds(bucket: str) -> float:
    """The width of a pandas frequency such as 5min, 1h or 1D, in seconds; ValueError names a
    text that is not a fixed time span."""
    import pandas as pd

    try:
        seconds = pd.Timedelta(pd.tseries.frequencies.to_offset(bucket)).total_seconds()
    except (ValueError, TypeError):
        raise ValueError(f"bucket {bucket!r} is not a time span; expected a pandas frequency "
                         "such as 5min, 1h or 1D") from None
    if not seconds > 0:
        raise ValueError(f"bucket {bucket!r} is not a positive time span; e.g. 5min or 1h")
    return seconds


def choose_bucket(first: float | None, last: float | None, bucket: str | None = None) -> str:
    """A pandas frequency for time buckets: given, or about 24-100 buckets over [first, last]."""
    if bucket:
        return bucket
    if first is None or last is None or last <= first:
        return "1h"
    span = last - first
    for seconds, freq in ((2 * 3600, "5min"), (8 * 3600, "15min"), (72 * 3600, "1h"),
                          (14 * 86400, "6h")):
        if span <= seconds:
            return freq
    return "1D"


def check_bucket_count(first: float, last: float, bucket: str) -> int:
    """The number of buckets `bucket` cuts [first, last] into; ValueError when more than
    MAX_BUCKETS, naming the span and the smallest bucket that fits."""
    width = bucket_seconds(bucket)
    origin = math.floor(first / 86400) * 86400
    count = math.floor((last - origin) / width) - math.floor((first - origin) / width) + 1
    if count > MAX_BUCKETS:
        span = last - first
        raise ValueError(f"bucket {bucket!r} cuts the records' span of {span / 3600:,.1f} h into "
                         f"more than {MAX_BUCKETS:,} rows; choose a bucket of at least "
                         f"{span / MAX_BUCKETS:,.0f} s (e.g. 1h or 1D) or a shorter --hours")
    return count


def span(run, inside: str) -> tuple[float | None, float | None]:
    [(first, last)] = run(f"SELECT min(end_time), max(end_time) FROM all_rows WHERE {inside}")
    return first, last


def series(run, inside: str, bucket: str, stage_keys: list[str], first: float,
           last: float) -> list[dict]:
    """One dict per bucket from the first record's to the last one's: bucket_start (epoch
    seconds), requests, errors, p50, p95, p99, max, cost (None: nothing priced), tokens,
    relevance (mean), error_rate, cost_per_hour and share_<stage> per stage."""
    width = bucket_seconds(bucket)
    count = check_bucket_count(first, last, bucket)
    origin = math.floor(first / 86400) * 86400
    start = origin + math.floor((first - origin) / width) * width
    shares = "".join(
        f", fsum(stage_map[{sql_quote(k)}].duration) AS {_share(i)}" for i, k in enumerate(stage_keys))
    rows = run(f"""
        WITH b AS (
            SELECT floor((end_time - ?) / ?)::BIGINT AS i, * FROM all_rows WHERE {inside})
        SELECT i, count(*), count(*) FILTER (status = 'error'),
               quantile_cont(total_time, [0.5, 0.95, 0.99]), max(total_time), fsum(cost),
               coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
               avg(relevance_score), fsum(total_time){shares}
        FROM b GROUP BY i""", [start, width])
    by_index = {row[0]: row for row in rows}
    out = []
    for i in range(count):
        row = by_index.get(i)
        item = {"bucket_start": start + i * width, "requests": 0, "errors": 0, "p50": None,
                "p95": None, "p99": None, "max": None, "cost": None, "input_tokens": 0,
                "output_tokens": 0, "relevance": None, "error_rate": None, "cost_per_hour": None}
        item.update({f"share_{k}": None for k in stage_keys})
        if row is not None:
            _, n, errors, (p50, p95, p99), longest, cost, tok_in, tok_out, relevance, total = row[:10]
            item.update({"requests": n, "errors": errors, "p50": p50, "p95": p95, "p99": p99,
                         "max": longest, "cost": cost, "input_tokens": int(tok_in),
                         "output_tokens": int(tok_out), "relevance": relevance,
                         "error_rate": errors / n,
                         "cost_per_hour": None if cost is None else cost * 3600.0 / width})
            for key, value in zip(stage_keys, row[10:]):
                item[f"share_{key}"] = value / total if value is not None and total else None
        out.append(item)
    return out


def _share(i: int) -> str:
    return f"share_{i}"


def cost_by_model(run, inside: str, bucket: str, first: float) -> list[tuple]:
    """(bucket start, model or '(none)', dollars per hour) for each bucket and model with a cost."""
    width = bucket_seconds(bucket)
    origin = math.floor(first / 86400) * 86400
    start = origin + math.floor((first - origin) / width) * width
    rows = run(f"""
        SELECT floor((end_time - ?) / ?)::BIGINT AS i, coalesce(model, '(none)') AS m,
               coalesce(fsum(cost), 0)
        FROM all_rows WHERE {inside} GROUP BY i, m ORDER BY i, m""", [start, width])
    return [(start + i * width, model, cost * 3600.0 / width) for i, model, cost in rows]


def distributions(run, inside: str, stage_keys: list[str]) -> dict:
    """count, mean, std, min, p50, p90, p95, p99, max of total_time and of each stage."""
    from .analysis import json_float

    quantiles = "[" + ", ".join(map(str, DISTRIBUTION_QUANTILES)) + "]"
    figures = lambda x: (f"count({x}), fsum({x}) / count({x}), stddev_pop({x}), "  # noqa: E731
                         f"quantile_cont({x}, {quantiles})")
    parts = [figures("total_time")] + [figures(f"stage_map[{sql_quote(k)}].duration")
                                       for k in stage_keys]
    [row] = run(f"SELECT {', '.join(parts)} FROM all_rows WHERE {inside}")
    out = {}
    for i, label in enumerate(["total_time"] + [f"stage {k}" for k in stage_keys]):
        n, mean, std, qs = row[4 * i: 4 * i + 4]
        if not n:
            continue
        mn, p50, p90, p95, p99, mx = qs
        out[label] = {"count": n, "mean": json_float(mean), "std": json_float(std),
                      "min": json_float(mn), "p50": json_float(p50), "p90": json_float(p90),
                      "p95": json_float(p95), "p99": json_float(p99), "max": json_float(mx)}
    return out


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat()


def trends(run, inside: str, bucket: str | None, stage_keys: list[str]) -> dict | None:
    """What the trend charts draw (None: no rows): the bucket, the per-bucket rows of series()
    with the stages' shares, the cost per hour by model, and the number of requests."""
    first, last = span(run, inside)
    if first is None:
        return None
    bucket = choose_bucket(first, last, bucket)
    rows = series(run, inside, bucket, stage_keys, first, last)
    return {"bucket": bucket, "rows": rows, "stages": list(stage_keys),
            "cost_by_model": cost_by_model(run, inside, bucket, first),
            "requests": sum(r["requests"] for r in rows)}
