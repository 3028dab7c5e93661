"""The report computed inside DuckDB: every aggregate of ragmon.report.analysis.build_report in
SQL over the log's rows, so that only small result sets reach Python.

``build_report(load_records())`` holds one pandas row per request: fine for a notebook's day,
not for a history of ten million records. ``report_from_log()`` reads the same files with the
same rules (ragmon.report.reader.load_rows: torn lines skipped and named, wrong types counted)
and returns the same dict, figure for figure: percentiles are exact (``quantile_cont``, the
linear interpolation of numpy's percentile), sums are compensated (``fsum``), and ties are
broken by first appearance, as pandas' groupby does. The rows never leave the engine, whose
memory is bounded (``memory_limit``, spilling to a temporary directory past it).
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from .analysis import TOP_VALUES, _f
from .analysis import _iso as _analysis_iso
from .reader import (MAX_ATTRIBUTE_KEYS, MAX_STAGE_NAMES, ReadStats, _Progress, _decode,
                     _hashable, _keys, _quote, find_sources, load_rows, since_hours)

# DuckDB's share of the report's memory; past it, large aggregates spill to a temporary directory.
MEMORY_LIMIT = "1GB"
_NUMBER_TYPES = {"BIGINT", "UBIGINT", "DOUBLE"}
# Which row came first: load_records() orders by end time, ties in read order; pandas' groups
# and counts then list values by first appearance.
FIRST_SEEN = "min({'e': end_time, 'p': part, 'f': file_pos, 'r': row_in_file})"
_QUALITY = (("relevance_score", "relevance"), ("context_precision", "context_precision"),
            ("time_to_first_token", "time_to_first_token"))


def _timestamp(epoch: float):
    """The pandas Timestamp that load_records() makes of an end time (same conversion)."""
    import numpy as np
    import pandas as pd

    return pd.to_datetime(np.array([epoch], dtype="float64"), unit="s", utc=True)[0]


def _iso(epoch) -> str | None:
    return None if epoch is None else _analysis_iso(_timestamp(float(epoch)))


def _sql_in(values) -> str:
    return "(" + ", ".join(_quote(str(v)) for v in values) + ")" if values else "(NULL)"


class _Steps:
    """One progress bar over the report's queries (each query moves it by its share)."""

    def __init__(self, progress: _Progress, steps: int):
        self.progress, self.steps, self.done = progress, steps, 0
        progress.scale = 1.0 / steps

    def run(self, sql: str, params=None):
        con = self.progress.con
        result = con.execute(sql, params or []).fetchall()
        self.done += 1
        self.progress.base = 100.0 * min(self.done, self.steps) / self.steps
        return result


def report_from_log(log_dir, settings, *, hours: float | None = None, top: int = 10,
                    now: float | None = None, workers: int | None = None,
                    progress: bool = False, memory_limit: str = MEMORY_LIMIT) -> dict:
    """The performance report (the dict of ragmon.report.analysis.build_report) of the requests
    that ended in the last `hours` hours in `log_dir`, aggregated in DuckDB."""
    since = since_hours(hours, now)
    sources = find_sources(log_dir, since, None)
    stats = ReadStats(str(log_dir) if not isinstance(log_dir, (list, tuple))
                      else ", ".join(str(d) for d in sources.dirs))
    with tempfile.TemporaryDirectory(prefix="ragmon-report-") as spill:
        con, inside, stats = load_rows(sources, since, None, workers=workers,
                                       progress="reading" if progress else None, stats=stats,
                                       spill_dir=Path(spill), memory_limit=memory_limit)
        if con is None:
            return _header(settings, hours, now, stats, 0)
        try:
            with _Progress(con, "summarising", delay=1.0 if progress else 1e9) as bar:
                return _report(con, inside, settings, hours, top, now, stats, _Steps(bar, 11))
        finally:
            con.close()


def _header(settings, hours, now, stats: ReadStats, n: int) -> dict:
    generated = (datetime.now(timezone.utc) if now is None
                 else datetime.fromtimestamp(now, timezone.utc))
    stats.records = n
    read = stats.as_dict()
    report: dict = {
        "generated_at": generated.isoformat(),
        "period": {"hours": hours,
                   "since": (_analysis_iso(generated.timestamp() - hours * 3600) if hours is not None
                             else None),
                   "until": generated.isoformat(), "first": None, "last": None},
        "read": read,
        "thresholds": {"slow_seconds": settings.SLOW_QUERY_SECONDS,
                       "very_slow_seconds": settings.VERY_SLOW_QUERY_SECONDS,
                       "bottleneck_share": settings.BOTTLENECK_SHARE,
                       "stage_budgets": dict(settings.STAGE_BUDGETS)},
    }
    if n == 0:
        where = read.get("log_dir", "the log directory")
        period = f"the last {hours:g} h" if hours is not None else "the log"
        report["empty"] = True
        report["message"] = f"no requests in {period} in {where}"
    else:
        report["empty"] = False
    return report


def _default_models(steps: _Steps, inside: str, settings) -> list | None:
    """The models the price table prices at the default (None: no readable price file)."""
    try:
        from ..instrument.pricing import PriceTable
        table = PriceTable.from_settings(settings)
    except (OSError, ValueError):
        return None
    models = steps.run(f"SELECT DISTINCT model FROM all_rows WHERE {inside} AND model IS NOT NULL")
    return [m for (m,) in models if table.match(m).match == "default"]


def _report(con, inside, settings, hours, top, now, stats: ReadStats, steps: _Steps) -> dict:
    stage_keys = _keys(con, "stage_map", inside, MAX_STAGE_NAMES, "stage", stats)
    attribute_keys = _keys(con, "attributes", inside, MAX_ATTRIBUTE_KEYS, "attribute", stats)
    defaulted = _default_models(steps, inside, settings)
    default = (f"(CASE WHEN price_match IS NOT NULL THEN price_match = 'default' "
               f"ELSE coalesce(model IN {_sql_in(defaulted)}, false) END)")
    quality = ", ".join(f"count({c}), fsum({c}) / count({c}), quantile_cont({c}, [0.5, 0.95])"
                        for c, _ in _QUALITY)
    pricing = (f"count(*) FILTER ({default} AND cost IS NOT NULL), "
               f"coalesce(fsum(cost) FILTER ({default}), 0), "
               f"coalesce(fsum(cost) FILTER (NOT {default}), 0), "
               f"list(DISTINCT model::VARCHAR) FILTER ({default} AND cost IS NOT NULL "
               "AND model IS NOT NULL)" if defaulted is not None else "NULL, NULL, NULL, NULL")
    [row] = steps.run(f"""
        SELECT count(*), min(end_time), max(end_time),
               count(*) FILTER (status = 'success'), count(*) FILTER (status = 'error'),
               count(*) FILTER (status = 'cancelled'),
               fsum(total_time) / count(*), quantile_cont(total_time, [0.5, 0.95, 0.99]),
               max(total_time), count(*) FILTER (total_time > ?), count(*) FILTER (total_time > ?),
               coalesce(fsum(cost), 0), count(cost),
               coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
               coalesce(sum(cached_input_tokens), 0), coalesce(sum(cache_hits), 0),
               coalesce(sum(cache_misses), 0), {quality},
               count(cost_original), coalesce(fsum(cost_original), 0),
               coalesce(fsum(coalesce(cost, 0)) FILTER (cost_original IS NOT NULL), 0),
               count(model), count(operation), {pricing}
        FROM all_rows WHERE {inside}""",
        [settings.SLOW_QUERY_SECONDS, settings.VERY_SLOW_QUERY_SECONDS])
    values = list(row)
    n, first, last, success, error, cancelled = values[:6]
    report = _header(settings, hours, now, stats, int(n))
    if not n:
        return report
    mean, (p50, p95, p99), longest, slow, very_slow = values[6:11]
    cost_sum, priced, tok_in, tok_out, tok_cached, hits, misses = values[11:18]
    quality = values[18:27]
    repriced, before, after, with_model, with_operation = values[27:32]
    default_count, default_cost, table_cost, default_list = values[32:36]

    report["period"]["first"], report["period"]["last"] = _iso(first), _iso(last)
    span_hours = hours if hours else max(
        (_timestamp(last) - _timestamp(first)).total_seconds() / 3600, 1 / 60)
    report["totals"] = {
        "requests": n, "success": success, "error": error, "cancelled": cancelled,
        "other": n - success - error - cancelled, "success_rate": success / n,
        "error_rate": error / n, "requests_per_hour": n / span_hours}
    report["latency"] = {"mean": _f(mean), "p50": _f(p50), "p95": _f(p95), "p99": _f(p99),
                         "max": _f(longest), "slow": slow, "very_slow": very_slow,
                         "slow_share": slow / n}
    report["stages"] = _stages(steps, inside, stage_keys, settings)
    report["models"] = _models(steps, inside) if with_model else []
    cost = {"total": _f(cost_sum) if priced else 0.0,
            "per_request": _f(cost_sum / priced) if priced else None,
            "requests_without_cost": n - priced}
    if defaulted is not None:
        cost["default_priced"] = {"requests": default_count,
                                  "cost": _f(default_cost) if default_count else 0.0,
                                  "models": sorted(default_list or [])}
        cost["table_priced"] = _f(table_cost) if priced - default_count else 0.0
    cost["repriced"] = {"requests": repriced, "cost_before": _f(before) if repriced else 0.0,
                        "cost_after": _f(after) if repriced else 0.0}
    report["cost"] = cost
    report["tokens"] = {"input": int(tok_in), "output": int(tok_out), "cached_input": int(tok_cached)}
    hits, misses = int(hits), int(misses)
    report["cache"] = {"hits": hits, "misses": misses,
                       "hit_rate": hits / (hits + misses) if hits + misses else None}
    report["quality"] = {}
    for i, (_, key) in enumerate(_QUALITY):
        measured, average, quantiles = quality[3 * i: 3 * i + 3]
        q50, q95 = quantiles if quantiles is not None else (None, None)
        report["quality"][key] = {"measured": measured, "mean": _f(average) if measured else None,
                                  "p50": _f(q50), "p95": _f(q95)}
    report["errors"] = _errors(steps, inside, n)
    report["operations"] = _operations(steps, inside) if with_operation else []
    report["attributes"] = _attributes(steps, inside, attribute_keys, n)
    report["slowest"] = _slowest(steps, inside, stage_keys, top)
    return report


def _stages(steps: _Steps, inside: str, keys: list[str], settings) -> list[dict]:
    if not keys:
        return []
    budgets = dict(settings.STAGE_BUDGETS)
    budget = ("CASE stage " + " ".join(f"WHEN {_quote(k)} THEN {float(v)!r}"
                                       for k, v in budgets.items()) + " END"
              if budgets else "NULL::DOUBLE")
    rows = steps.run(f"""
        WITH entries AS (
            SELECT entry.key AS stage, entry.value.duration AS d, total_time AS t
            FROM (SELECT unnest(map_entries(stage_map)) AS entry, total_time
                  FROM all_rows WHERE {inside})),
        shares AS (
            SELECT stage, d, t, CASE WHEN t > 0 THEN d / t ELSE 0.0 END AS share,
                   {budget} AS budget
            FROM entries WHERE d IS NOT NULL AND stage IN {_sql_in(keys)})
        SELECT stage, count(*), fsum(d) / count(*), quantile_cont(d, [0.5, 0.95, 0.99]), max(d),
               fsum(d), fsum(share) / count(*), fsum(t),
               count(*) FILTER (share > ? OR coalesce(d > budget, false)),
               count(*) FILTER (share > ?), count(*) FILTER (coalesce(d > budget, false))
        FROM shares GROUP BY stage""",
        [settings.BOTTLENECK_SHARE, settings.BOTTLENECK_SHARE])
    out = []
    for (stage, requests, mean, quantiles, longest, total, mean_share, total_t, bottlenecks,
         by_share, by_budget) in sorted(rows, key=lambda r: r[0]):
        p50, p95, p99 = quantiles
        out.append({
            "stage": stage, "requests": requests, "mean": _f(mean), "p50": _f(p50),
            "p95": _f(p95), "p99": _f(p99), "max": _f(longest), "total_time": _f(total),
            "mean_share": _f(mean_share), "time_share": _f(total / total_t) if total_t else None,
            "budget": budgets.get(stage), "bottlenecks": bottlenecks,
            "bottlenecks_by_share": by_share, "bottlenecks_by_budget": by_budget})
    out.sort(key=lambda s: s["total_time"] or 0, reverse=True)
    return out


def _models(steps: _Steps, inside: str) -> list[dict]:
    rows = steps.run(f"""
        SELECT coalesce(model, '(none)') AS m, count(*), coalesce(fsum(cost), 0), count(cost),
               sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
               quantile_cont(total_time, 0.95), count(*) FILTER (status = 'error'), {FIRST_SEEN}
        FROM all_rows WHERE {inside} GROUP BY m ORDER BY {FIRST_SEEN}, m""")
    out = [{"model": str(model), "requests": requests, "cost": _f(cost),
            "mean_cost": _f(cost / priced) if priced else None,
            "input_tokens": int(tok_in), "output_tokens": int(tok_out),
            "cached_input_tokens": int(tok_cached), "p95_latency": _f(p95),
            "error_rate": errors / requests}
           for model, requests, cost, priced, tok_in, tok_out, tok_cached, p95, errors, _ in rows]
    out.sort(key=lambda m: (m["cost"] or 0, m["requests"]), reverse=True)
    return out


def _errors(steps: _Steps, inside: str, n: int) -> list[dict]:
    rows = steps.run(f"""
        SELECT coalesce(error_type, '(none)') AS e, count(*) FROM all_rows
        WHERE {inside} AND status IS DISTINCT FROM 'success'
        GROUP BY e ORDER BY count(*) DESC, {FIRST_SEEN}, e""")
    failed = sum(count for _, count in rows)
    return [{"error_type": str(kind), "count": count, "share_of_failures": count / failed,
             "share_of_requests": count / n} for kind, count in rows]


def _operations(steps: _Steps, inside: str) -> list[dict]:
    rows = steps.run(f"""
        SELECT operation, count(*), quantile_cont(total_time, 0.95),
               count(*) FILTER (status = 'error')
        FROM all_rows WHERE {inside} AND operation IS NOT NULL
        GROUP BY operation ORDER BY count(*) DESC, {FIRST_SEEN}, operation""")
    return [{"value": str(value), "requests": requests, "p95_latency": _f(p95),
             "error_rate": errors / requests} for value, requests, p95, errors in rows]


def _attribute_entries(inside: str, keys: list[str]) -> str:
    """One row per (request, attribute) of `keys` with a value that is not JSON null."""
    return f"""
        SELECT entry.key AS key, entry.value AS v, total_time, status, end_time, part, file_pos,
               row_in_file
        FROM (SELECT unnest(map_entries(attributes)) AS entry, total_time, status, end_time, part,
                     file_pos, row_in_file
              FROM all_rows WHERE {inside})
        WHERE entry.key IN {_sql_in(keys)} AND entry.value IS NOT NULL
          AND json_type(entry.value) <> 'NULL'"""


def _attributes(steps: _Steps, inside: str, keys: list[str], n: int) -> dict:
    """Each attribute as analysis._attribute() describes it: numbers get a distribution,
    strings (and other scalars) the top values, lists the count per item."""
    if not keys:
        return {}
    entries = _attribute_entries(inside, keys)
    types: dict[str, set] = {key: set() for key in keys}
    for key, kind in steps.run(f"SELECT DISTINCT key, json_type(v) FROM ({entries})"):
        types[key].add(kind)
    numbers = [k for k in keys if types[k] <= _NUMBER_TYPES]
    strings = [k for k in keys if types[k] and types[k] <= {"VARCHAR"}]
    lists = [k for k in keys if types[k] and types[k] <= {"ARRAY"}]
    for key in keys:  # mixed: a list attribute when its first 1,000 values are all lists
        if key not in numbers + strings + lists and "ARRAY" in types[key]:
            [(all_lists,)] = steps.progress.con.execute(
                f"SELECT bool_and(json_type(v) = 'ARRAY') FROM ({entries}) WHERE key = ? "
                "ORDER BY end_time, part, file_pos, row_in_file LIMIT 1000", [key]).fetchall()
            if all_lists:
                lists.append(key)
    others = [k for k in keys if k not in numbers + strings + lists]
    out: dict = {}
    for key, present, mean, quantiles, largest, total in steps.run(f"""
            SELECT key, count(x), fsum(x) / count(x), quantile_cont(x, [0.5, 0.95]), max(x), fsum(x)
            FROM (SELECT key, TRY_CAST(v AS DOUBLE) AS x FROM ({_attribute_entries(inside, numbers)}))
            GROUP BY key""" if numbers else "SELECT NULL, 0, NULL, NULL, NULL, NULL WHERE false"):
        q50, q95 = quantiles if quantiles is not None else (None, None)
        out[key] = {"kind": "number", "requests": present, "mean": _f(mean) if present else None,
                    "p50": _f(q50), "p95": _f(q95), "max": _f(largest) if present else None,
                    "sum": _f(total) if present else None}
    out.update(_categories(steps, inside, strings, others, n))
    out.update(_lists(steps, inside, lists))
    for key in keys:
        if key not in out:  # no value at all: as pandas sees an all-missing column
            out[key] = {"kind": "number", "requests": 0, "mean": None, "p50": None,
                        "p95": None, "max": None, "sum": None}
    return {key: out[key] for key in keys}


def _categories(steps: _Steps, inside: str, strings: list[str], others: list[str], n: int) -> dict:
    """Top values with latency and success rate. A value that is not a string is named as
    Python prints it (True, 3, ('a', 'b')), through a table of labels for its distinct texts."""
    keys = strings + others
    if not keys:
        return {}
    con = steps.progress.con
    label = "json_extract_string(v, '$')"
    if others:
        texts = con.execute(f"SELECT DISTINCT key, v::VARCHAR FROM "
                            f"({_attribute_entries(inside, others)})").fetchall()
        con.execute("CREATE OR REPLACE TEMP TABLE attribute_labels "
                    "(key VARCHAR, text VARCHAR, label VARCHAR)")
        con.executemany("INSERT INTO attribute_labels VALUES (?, ?, ?)",
                        [(key, text, _label(text)) for key, text in texts])
        label = (f"CASE WHEN key IN {_sql_in(others)} THEN (SELECT label FROM attribute_labels l "
                 f"WHERE l.key = e.key AND l.text = e.v::VARCHAR) ELSE {label} END")
    rows = steps.run(f"""
        SELECT key, value, count(*), quantile_cont(total_time, 0.95),
               count(*) FILTER (status = 'success') / count(*), {FIRST_SEEN}
        FROM (SELECT key, {label} AS value, total_time, status, end_time, part, file_pos,
                     row_in_file
              FROM ({_attribute_entries(inside, keys)}) e)
        GROUP BY key, value ORDER BY key, count(*) DESC, {FIRST_SEEN}, value""")
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row[1:])
    out = {}
    for key, groups in grouped.items():
        shown = groups[:TOP_VALUES]
        out[key] = {"kind": "category", "requests": sum(g[1] for g in groups),
                    "distinct": len(groups),
                    "values": [{"value": str(value), "requests": size, "share": size / n,
                                "p95_latency": _f(p95), "success_rate": _f(ok)}
                               for value, size, p95, ok, _ in shown],
                    "other": sum(g[1] for g in groups[TOP_VALUES:])}
    return out


def _label(text: str) -> str:
    value = _decode(text)
    return value if isinstance(value, str) else str(_hashable(value))


def _lists(steps: _Steps, inside: str, keys: list[str]) -> dict:
    """Items of list attributes (entities), counted over the distinct lists, most common first
    in the order pandas' value_counts hands the lists over (count, then first seen)."""
    if not keys:
        return {}
    rows = steps.run(f"""
        SELECT key, v::VARCHAR AS text, count(*), {FIRST_SEEN}
        FROM ({_attribute_entries(inside, keys)}) GROUP BY key, text
        ORDER BY key, count(*) DESC, {FIRST_SEEN}, text""")
    out = {}
    for key in keys:
        distinct = [(text, times) for k, text, times, _ in rows if k == key]
        counts: Counter = Counter()
        for text, times in distinct:
            value = _decode(text)
            for item in (value if isinstance(value, list) else [value]):
                counts[str(_hashable(item))] += times
        top = counts.most_common(TOP_VALUES)
        out[key] = {"kind": "list", "requests": sum(times for _, times in distinct),
                    "distinct": len(counts),
                    "values": [{"value": k, "requests": v} for k, v in top],
                    "other": sum(counts.values()) - sum(v for _, v in top)}
    return out


def _slowest(steps: _Steps, inside: str, stage_keys: list[str], top: int) -> list[dict]:
    if top <= 0:
        return []
    rows = steps.run(f"""
        SELECT request_id, end_time, total_time, status, error_type, model, operation, stage_map
        FROM all_rows WHERE {inside}
        ORDER BY total_time DESC, end_time, part, file_pos, row_in_file LIMIT ?""", [int(top)])
    known = set(stage_keys)
    out = []
    for request_id, end, total, status, error_type, model, operation, stage_map in rows:
        slowest_stage, slowest_duration = None, None
        durations = {k: (v or {}).get("duration") for k, v in (stage_map or {}).items()}
        for name in sorted(durations):
            d = durations[name]
            if name in known and d is not None and d == d and (
                    slowest_duration is None or d > slowest_duration):
                slowest_stage, slowest_duration = name, float(d)
        out.append({"request_id": None if request_id is None else str(request_id),
                    "timestamp": _iso(end), "total_time": _f(total),
                    "status": status, "error_type": error_type, "model": model,
                    "operation": operation, "slowest_stage": slowest_stage,
                    "slowest_stage_duration": slowest_duration})
    return out
