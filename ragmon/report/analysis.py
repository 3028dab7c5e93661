"""Analysis of request records (a DataFrame from ragmon.report.reader.read_columns) into plain dicts.

Everything here is vectorised over the DataFrame: a million records summarise in well under a
second. The dicts hold only JSON-able values (str, int, float, None, lists, dicts) so that
`report --format json` is ``json.dumps(report)`` and the notebook can use them directly.
"""
from __future__ import annotations

import math
from collections import Counter
from datetime import datetime, timezone
from typing import Mapping

from .reader import ATTR_PREFIX, STAGE_PREFIX

TOP_VALUES = 10  # values listed per attribute; the rest are summed into "other"


def stage_names(df) -> list[str]:
    return [c[len(STAGE_PREFIX):] for c in df.columns if c.startswith(STAGE_PREFIX)]


def attribute_names(df) -> list[str]:
    return [c[len(ATTR_PREFIX):] for c in df.columns if c.startswith(ATTR_PREFIX)]


def bottleneck_masks(df, stage: str, share_threshold: float, budgets: Mapping[str, float]):
    """(by_share, by_budget) boolean arrays for one stage: the rule of
    ragmon.instrument.performance.find_bottlenecks, applied to every record at once."""
    import numpy as np

    duration = df[STAGE_PREFIX + stage].to_numpy()
    total = df["total_time"].to_numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(total > 0, duration / total, 0.0)
    by_share = share > share_threshold  # NaN (stage absent) compares False
    budget = budgets.get(stage)
    by_budget = duration > budget if budget is not None else np.zeros(len(df), dtype=bool)
    return by_share, by_budget


def _f(value) -> float | None:
    """A JSON-able float: None for NaN/inf/None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _iso(ts) -> str | None:
    if ts is None:
        return None
    try:  # epoch floats carry ~0.1 us of noise: round it away
        return ts.round("us").isoformat()
    except AttributeError:
        return datetime.fromtimestamp(float(ts), timezone.utc).isoformat()


def _quantiles(values, qs=(50, 95, 99)) -> list[float | None]:
    import numpy as np

    values = values[~np.isnan(values)] if values.dtype.kind == "f" else values
    if not len(values):
        return [None] * len(qs)
    return [_f(v) for v in np.percentile(values, qs)]


def _pricing(df, settings, cost, priced) -> dict:
    """Spend priced by the table apart from spend priced at the default (a model missing from
    the price table), and the records a reprice corrected."""
    import numpy as np

    out: dict = {}
    try:
        from ..instrument.pricing import PriceTable
        from .costs import default_priced_mask
        table = PriceTable.from_settings(settings)
    except (OSError, ValueError):  # no readable price file: nothing to tell apart
        table = None
    if table is not None:
        default = default_priced_mask(df, table) & priced
        out["default_priced"] = {"requests": int(default.sum()),
                                 "cost": _f(cost[default].sum()) if default.any() else 0.0,
                                 "models": sorted({str(m) for m in df["model"][default].dropna()})}
        out["table_priced"] = _f(cost[priced & ~default].sum()) if (priced & ~default).any() else 0.0
    if "cost_original" in df:
        original = df["cost_original"].to_numpy()
        repriced = ~np.isnan(original)
        out["repriced"] = {"requests": int(repriced.sum()),
                           "cost_before": _f(original[repriced].sum()) if repriced.any() else 0.0,
                           "cost_after": _f(np.nan_to_num(cost[repriced]).sum())
                           if repriced.any() else 0.0}
    return out


def report_header(settings, hours: float | None, now: float | None, read: dict | None,
                  requests: int) -> dict:
    """The report's header: when, which period, what was read, the thresholds, and whether the
    period was empty (with the message that says so)."""
    generated = datetime.now(timezone.utc) if now is None else datetime.fromtimestamp(now, timezone.utc)
    report: dict = {
        "generated_at": generated.isoformat(),
        "period": {"hours": hours,
                   "since": (_iso(generated.timestamp() - hours * 3600) if hours is not None
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


def build_report(df, settings=None, *, hours: float | None = None, read_stats=None,
                 top: int = 10, now: float | None = None) -> dict:
    """The performance report of the records in `df` as a JSON-able dict.

    ``settings``: thresholds (SLOW_QUERY_SECONDS, VERY_SLOW_QUERY_SECONDS, BOTTLENECK_SHARE,
    STAGE_BUDGETS); default config.get_settings(). ``hours``: the period, for the header.
    ``read_stats``: a ReadStats (or its dict) saying what was read and skipped; taken from
    ``df.attrs["read_stats"]`` when not given. ``top``: how many slowest requests to list.
    """
    import numpy as np

    if settings is None:
        from ..settings import get_settings
        settings = get_settings()
    if read_stats is None:
        read_stats = df.attrs.get("read_stats")
    if read_stats is not None and not isinstance(read_stats, dict):
        read_stats = read_stats.as_dict()
    n = len(df)
    report = report_header(settings, hours, now, read_stats, n)
    if n == 0:
        return report
    timestamps = df["timestamp"]
    report["period"]["first"] = _iso(timestamps.iloc[0])
    report["period"]["last"] = _iso(timestamps.iloc[-1])
    total = df["total_time"].to_numpy()
    status_counts = df["status"].value_counts(dropna=False)
    counts = {str(k): int(v) for k, v in status_counts.items() if v}
    success = counts.get("success", 0)
    span_hours = hours if hours else max((timestamps.iloc[-1] - timestamps.iloc[0]).total_seconds()
                                         / 3600, 1 / 60)
    report["totals"] = {
        "requests": n, "success": success, "error": counts.get("error", 0),
        "cancelled": counts.get("cancelled", 0),
        "other": n - success - counts.get("error", 0) - counts.get("cancelled", 0),
        "success_rate": success / n, "error_rate": counts.get("error", 0) / n,
        "requests_per_hour": n / span_hours,
    }
    p50, p95, p99 = _quantiles(total)
    slow = int((total > settings.SLOW_QUERY_SECONDS).sum())
    very_slow = int((total > settings.VERY_SLOW_QUERY_SECONDS).sum())
    report["latency"] = {"mean": _f(total.mean()), "p50": p50, "p95": p95, "p99": p99,
                         "max": _f(total.max()), "slow": slow, "very_slow": very_slow,
                         "slow_share": slow / n}
    report["stages"] = _stages(df, settings)
    report["models"] = _models(df)
    cost = df["cost"].to_numpy()
    priced = ~np.isnan(cost)
    report["cost"] = {"total": _f(cost[priced].sum()) if priced.any() else 0.0,
                      "per_request": _f(cost[priced].mean()) if priced.any() else None,
                      "requests_without_cost": int((~priced).sum()),
                      **_pricing(df, settings, cost, priced)}
    report["tokens"] = {kind: int(df[f"{kind}_tokens"].sum())
                        for kind in ("input", "output", "cached_input")}
    hits, misses = int(df["cache_hits"].sum()), int(df["cache_misses"].sum())
    report["cache"] = {"hits": hits, "misses": misses,
                       "hit_rate": hits / (hits + misses) if hits + misses else None}
    report["quality"] = _quality(df)
    report["errors"] = _errors(df)
    report["operations"] = _groups(df, "operation")
    report["attributes"] = {name: _attribute(df, name) for name in attribute_names(df)}
    report["slowest"] = _slowest(df, top)
    return report


def _stages(df, settings) -> list[dict]:
    import numpy as np

    out = []
    total = df["total_time"].to_numpy()
    for name in stage_names(df):
        duration = df[STAGE_PREFIX + name].to_numpy()
        present = ~np.isnan(duration)
        if not present.any():
            continue
        d = duration[present]
        t = total[present]
        with np.errstate(divide="ignore", invalid="ignore"):
            shares = np.where(t > 0, d / t, 0.0)
        by_share, by_budget = bottleneck_masks(df, name, settings.BOTTLENECK_SHARE,
                                               settings.STAGE_BUDGETS)
        p50, p95, p99 = _quantiles(d)
        out.append({
            "stage": name, "requests": int(present.sum()), "mean": _f(d.mean()), "p50": p50,
            "p95": p95, "p99": p99, "max": _f(d.max()), "total_time": _f(d.sum()),
            "mean_share": _f(shares.mean()), "time_share": _f(d.sum() / t.sum()) if t.sum() else None,
            "budget": settings.STAGE_BUDGETS.get(name),
            "bottlenecks": int((by_share | by_budget).sum()),
            "bottlenecks_by_share": int(by_share.sum()),
            "bottlenecks_by_budget": int(by_budget.sum()),
        })
    out.sort(key=lambda s: s["total_time"] or 0, reverse=True)
    return out


def _models(df) -> list[dict]:
    if df["model"].isna().all():
        return []
    frame = df[["model", "cost", "input_tokens", "output_tokens", "cached_input_tokens",
                "total_time", "status"]].copy()
    frame["model"] = _fill_missing(frame["model"])
    frame["is_error"] = (frame["status"] == "error").to_numpy()
    grouped = frame.groupby("model", observed=True, sort=False)
    sums = grouped[["cost", "input_tokens", "output_tokens", "cached_input_tokens", "is_error"]].sum()
    sizes = grouped.size()
    priced = grouped["cost"].count()
    p95 = grouped["total_time"].quantile(0.95)
    out = []
    for model in sizes.index:
        requests = int(sizes[model])
        out.append({
            "model": str(model), "requests": requests, "cost": _f(sums.at[model, "cost"]),
            "mean_cost": _f(sums.at[model, "cost"] / priced[model]) if priced[model] else None,
            "input_tokens": int(sums.at[model, "input_tokens"]),
            "output_tokens": int(sums.at[model, "output_tokens"]),
            "cached_input_tokens": int(sums.at[model, "cached_input_tokens"]),
            "p95_latency": _f(p95[model]), "error_rate": float(sums.at[model, "is_error"]) / requests,
        })
    out.sort(key=lambda m: (m["cost"] or 0, m["requests"]), reverse=True)
    return out


def _fill_missing(column, label: str = "(none)"):
    """`column` with missing values as `label`, staying categorical (cheap to group) if it was."""
    import pandas as pd

    if not column.isna().any():
        return column
    if isinstance(column.dtype, pd.CategoricalDtype):
        if label not in column.cat.categories:
            column = column.cat.add_categories([label])
        return column.fillna(label)
    return column.astype(object).fillna(label)


def _quality(df) -> dict:
    out = {}
    for column, key in (("relevance_score", "relevance"), ("context_precision", "context_precision"),
                        ("time_to_first_token", "time_to_first_token")):
        values = df[column].to_numpy()
        p50, p95, _ = _quantiles(values)
        measured = int((values == values).sum())
        out[key] = {"measured": measured, "mean": _f(df[column].mean()) if measured else None,
                    "p50": p50, "p95": p95}
    return out


def _errors(df) -> list[dict]:
    failed = df["status"] != "success"
    if not failed.any():
        return []
    types = _fill_missing(df.loc[failed, "error_type"]).value_counts()
    types = types[types > 0]
    n_failed = int(failed.sum())
    return [{"error_type": str(k), "count": int(v), "share_of_failures": int(v) / n_failed,
             "share_of_requests": int(v) / len(df)} for k, v in types.items()]


def _groups(df, column: str) -> list[dict]:
    values = df[column]
    if values.isna().all():
        return []
    frame = df[[column, "total_time", "status"]]
    grouped = frame.groupby(column, observed=True, sort=False)
    sizes = grouped.size()
    p95 = grouped["total_time"].quantile(0.95)
    errors = (frame["status"] == "error").groupby(frame[column], observed=True).sum()
    return sorted(({"value": str(k), "requests": int(sizes[k]), "p95_latency": _f(p95[k]),
                    "error_rate": int(errors.get(k, 0)) / int(sizes[k])} for k in sizes.index),
                  key=lambda g: g["requests"], reverse=True)


def _attribute(df, name: str) -> dict:
    """Breakdown of one attribute: numbers get a distribution; strings (and other scalars) the
    top values with their latency and success rate; lists (entities) the count per element."""
    import numpy as np
    import pandas as pd

    column = df[ATTR_PREFIX + name]
    present = column.notna()
    n_present = int(present.sum())
    if column.dtype.kind in "fiu":
        values = column.to_numpy(dtype="float64")
        values = values[~np.isnan(values)]
        p50, p95, _ = _quantiles(values)
        return {"kind": "number", "requests": n_present,
                "mean": _f(values.mean()) if len(values) else None, "p50": p50, "p95": p95,
                "max": _f(values.max()) if len(values) else None,
                "sum": _f(values.sum()) if len(values) else None}
    if not isinstance(column.dtype, pd.CategoricalDtype):
        sample = column[present].head(1000)
        if len(sample) and all(isinstance(v, (tuple, list)) for v in sample):
            return _list_attribute(column[present], n_present)
        column = column.map(lambda v: v if v is None or isinstance(v, str) else str(v),
                            na_action="ignore")
    frame = pd.DataFrame({"value": column, "total_time": df["total_time"],
                          "ok": (df["status"] == "success").to_numpy()})[present.to_numpy()]
    grouped = frame.groupby("value", observed=True, sort=False)
    sizes = grouped.size().sort_values(ascending=False)
    shown = sizes.index[:TOP_VALUES]
    p95 = grouped["total_time"].quantile(0.95)
    ok = grouped["ok"].mean()
    values = [{"value": str(k), "requests": int(sizes[k]), "share": int(sizes[k]) / len(df),
               "p95_latency": _f(p95[k]), "success_rate": _f(ok[k])} for k in shown]
    return {"kind": "category", "requests": n_present, "distinct": int(len(sizes)),
            "values": values, "other": int(sizes.iloc[TOP_VALUES:].sum())}


def _list_attribute(column, n_present: int) -> dict:
    counts: Counter = Counter()
    # Lists are shared tuples (ragmon.report.reader), so counting distinct lists first is cheap.
    try:
        distinct = column.value_counts()
    except TypeError:  # lists, or items such as dicts, that cannot be hashed
        distinct = column.map(lambda v: tuple(map(str, v))).value_counts()
    for value, times in distinct.items():
        for item in value:
            counts[str(item)] += int(times)
    top = counts.most_common(TOP_VALUES)
    return {"kind": "list", "requests": n_present, "distinct": len(counts),
            "values": [{"value": k, "requests": v} for k, v in top],
            "other": sum(counts.values()) - sum(v for _, v in top)}


def _slowest(df, top: int) -> list[dict]:
    if top <= 0:
        return []
    rows = df.nlargest(top, "total_time")
    stages = stage_names(df)
    out = []
    for _, row in rows.iterrows():
        slowest_stage, slowest_duration = None, None
        for name in stages:
            d = row[STAGE_PREFIX + name]
            if d == d and (slowest_duration is None or d > slowest_duration):
                slowest_stage, slowest_duration = name, float(d)
        out.append({"request_id": None if row["request_id"] is None else str(row["request_id"]),
                    "timestamp": _iso(row["timestamp"]), "total_time": _f(row["total_time"]),
                    "status": None if row["status"] != row["status"] else str(row["status"]),
                    "error_type": None if row["error_type"] != row["error_type"] else str(row["error_type"]),
                    "model": None if row["model"] != row["model"] else str(row["model"]),
                    "operation": None if row["operation"] != row["operation"] else str(row["operation"]),
                    "slowest_stage": slowest_stage, "slowest_stage_duration": slowest_duration})
    return out


# --- time series (stats and plot) --------------------------------------------------------------

# Rows of a time table at most: a 1min bucket over records years apart would build millions.
MAX_BUCKETS = 10_000


def check_bucket_count(df, bucket: str) -> None:
    """Raises ValueError when `bucket` cuts the span of `df`'s records into more than
    MAX_BUCKETS rows, naming the span and the smallest bucket that fits."""
    import pandas as pd

    if len(df) < 2:
        return
    seconds = pd.Timedelta(pd.tseries.frequencies.to_offset(bucket)).total_seconds()
    span = (df["timestamp"].max() - df["timestamp"].min()).total_seconds()
    if seconds <= 0 or span / seconds > MAX_BUCKETS:
        raise ValueError(f"bucket {bucket!r} cuts the records' span of {span / 3600:,.1f} h into "
                         f"more than {MAX_BUCKETS:,} rows; choose a bucket of at least "
                         f"{span / MAX_BUCKETS:,.0f} s (e.g. 1h or 1D) or a shorter --hours")


def choose_bucket(df, bucket: str | None = None) -> str:
    """A pandas frequency for time buckets: given, or about 24-100 buckets over the data."""
    if bucket:
        return bucket
    if len(df) < 2:
        return "1h"
    span = (df["timestamp"].iloc[-1] - df["timestamp"].iloc[0]).total_seconds()
    for seconds, freq in ((2 * 3600, "5min"), (8 * 3600, "15min"), (72 * 3600, "1h"),
                          (14 * 86400, "6h")):
        if span <= seconds:
            return freq
    return "1D"


def time_series(df, bucket: str) -> "object":
    """Per time bucket: requests, errors, latency p50/p95/p99, cost, cost per hour, tokens, and
    each stage's share of the time (sum of the stage / sum of total_time)."""
    import pandas as pd

    check_bucket_count(df, bucket)
    indexed = df.set_index("timestamp")
    resampler = indexed["total_time"].resample(bucket)
    out = pd.DataFrame({
        "requests": resampler.count(),
        "p50": resampler.quantile(0.5), "p95": resampler.quantile(0.95),
        "p99": resampler.quantile(0.99), "max": resampler.max(),
        "errors": (indexed["status"] == "error").resample(bucket).sum(),
        "cost": indexed["cost"].resample(bucket).sum(min_count=1),
        "input_tokens": indexed["input_tokens"].resample(bucket).sum(),
        "output_tokens": indexed["output_tokens"].resample(bucket).sum(),
    })
    seconds = pd.Timedelta(pd.tseries.frequencies.to_offset(bucket)).total_seconds()
    out["cost_per_hour"] = out["cost"] * (3600.0 / seconds)
    out["error_rate"] = out["errors"] / out["requests"].where(out["requests"] > 0)
    total_sum = indexed["total_time"].resample(bucket).sum()
    for name in stage_names(df):
        out[f"share_{name}"] = (indexed[STAGE_PREFIX + name].resample(bucket).sum()
                                / total_sum.where(total_sum > 0))
    return out


def cost_by_model_series(df, bucket: str):
    """Cost per hour (dollars/hour) per time bucket and model."""
    import pandas as pd

    seconds = pd.Timedelta(pd.tseries.frequencies.to_offset(bucket)).total_seconds()
    frame = df[["timestamp", "model", "cost"]].copy()
    frame["model"] = _fill_missing(frame["model"])
    table = (frame.set_index("timestamp").groupby("model")["cost"].resample(bucket).sum()
             .unstack(level=0).fillna(0.0))
    return table * (3600.0 / seconds)


def build_stats(df, settings=None, *, hours: float | None = None, bucket: str | None = None,
                read_stats=None, now: float | None = None) -> dict:
    """Detailed statistics: the report plus distributions of latency and every stage, and a
    per-time-bucket table (requests, error rate, latency percentiles, cost)."""
    import numpy as np

    report = build_report(df, settings, hours=hours, read_stats=read_stats, top=5, now=now)
    if report["empty"]:
        return report
    qs = (0, 50, 90, 95, 99, 100)
    distributions = {}
    for label, column in [("total_time", "total_time")] + [
            (f"stage {name}", STAGE_PREFIX + name) for name in stage_names(df)]:
        values = df[column].to_numpy()
        values = values[~np.isnan(values)]
        if not len(values):
            continue
        mn, p50, p90, p95, p99, mx = (_f(v) for v in np.percentile(values, qs))
        distributions[label] = {"count": int(len(values)), "mean": _f(values.mean()),
                                "std": _f(values.std()), "min": mn, "p50": p50, "p90": p90,
                                "p95": p95, "p99": p99, "max": mx}
    bucket = choose_bucket(df, bucket)
    series = time_series(df, bucket)
    rows = []
    for ts, row in series.iterrows():
        rows.append({"bucket_start": ts.isoformat(), "requests": int(row["requests"]),
                     "error_rate": _f(row["error_rate"]), "p50": _f(row["p50"]),
                     "p95": _f(row["p95"]), "p99": _f(row["p99"]), "cost": _f(row["cost"]),
                     "cost_per_hour": _f(row["cost_per_hour"])})
    report["distributions"] = distributions
    report["bucket"] = bucket
    report["series"] = rows
    return report
