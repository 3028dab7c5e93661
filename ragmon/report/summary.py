"""The performance report, computed inside DuckDB: only small result sets reach Python.

The rows come from the log (``log_rows``: the JSONL files and the Parquet history, read by
ragmon.report.reader with its rules: torn lines skipped and named, wrong types counted) or from
a load_records() DataFrame (``frame_rows``); the engine's memory is bounded (``memory_limit``,
spilling to a temporary directory past it). Percentiles are exact (``quantile_cont``, numpy's
linear interpolation), sums compensated (``fsum``), ties broken by first appearance. Over a
long history, whole days are read from their rollups (ragmon.report.rollups): counts and sums
exact, percentiles within the rollups' stated relative error; ``exact=True`` reads every record.

Adding a section to the report (e.g. ``report["quality_feedback"]``):

1. Its query over the rows: a ``_<name>_query(inside)`` returning (SQL, params) that reads
   ``all_rows WHERE {inside}``, added to the ``queries`` of ``_report`` (they run two at a time).
2. The same rows from the rollups: a rollup table or column in ragmon.report.rollups
   (``rollup_queries``, merged by ``merge_rollups``) and its entry in ``merged_results`` under the
   same name; or, for a figure no rollup can give, raise ``NeedsRecords`` there (the report then
   reads the records).
3. Its shape in the report: a few lines in ``_assemble`` taking ``results["<name>"]``, and its
   text in ragmon.report.formatting (and html.py for the page).

A section needing its own grouping (``report --by KEY``) takes the same path with the key in
its GROUP BY.
"""
from __future__ import annotations

import contextlib
import copy
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from collections import Counter
from pathlib import Path

from .analysis import TOP_VALUES, iso_time, json_float, report_header
from .progress import QueryProgress
from .reader import (HISTORY_END, MAX_ATTRIBUTE_KEYS, MAX_STAGE_NAMES, ReadStats, decode_json,
                     find_sources, hashable, load_rows, since_hours, sql_quote)
from .rollups import RELATIVE_ERROR, NeedsRecords, merge_rollups, merged_results, usable

# DuckDB's share of the report's memory; past it, large aggregates spill to a temporary directory.
MEMORY_LIMIT = "1GB"
# Seconds before the progress bar appears (on a terminal only): quick reports show none.
PROGRESS_DELAY = 1.0
# Which row came first: load_records() orders by end time, ties in read order; pandas' groups
# and counts then list values by first appearance.
# (Two groups both first seen at the same end time are told apart by the earliest row of each.)
FIRST_SEEN = "min(end_time), min(seq)"
_QUALITY = (("relevance_score", "relevance"), ("context_precision", "context_precision"),
            ("time_to_first_token", "time_to_first_token"))


def _timestamp(epoch: float):
    """The pandas Timestamp that load_records() makes of an end time (same conversion)."""
    import numpy as np
    import pandas as pd

    return pd.to_datetime(np.array([epoch], dtype="float64"), unit="s", utc=True)[0]


def _iso(epoch) -> str | None:
    return None if epoch is None else iso_time(_timestamp(float(epoch)))


def _sql_in(values) -> str:
    return "(" + ", ".join(sql_quote(str(v)) for v in values) + ")" if values else "(NULL)"


class _Steps:
    """Runs the report's queries, each on a cursor of its own (so that two may run at once),
    and moves one progress bar by each query's share."""

    def __init__(self, progress: QueryProgress, steps: int):
        self.progress, self.con, self.steps, self.done = progress, progress.con, steps, 0
        self.lock = threading.Lock()
        progress.scale = 1.0 / steps

    def expect(self, steps: int) -> None:
        self.steps, self.progress.scale = steps, 1.0 / steps

    def run(self, sql: str, params=None):
        with self.lock:
            cursor = self.con.cursor()
        try:
            result = cursor.execute(sql, params or []).fetchall()
        finally:
            cursor.close()
        with self.lock:
            self.done += 1
            self.progress.base = 100.0 * min(self.done, self.steps) / self.steps
        return result


@contextlib.contextmanager
def opened_rows(log_dir, sources, since: float | None, *, workers: int | None = None,
                progress: bool = False, memory_limit: str = MEMORY_LIMIT):
    """(connection with the view ``all_rows``, SQL condition of the period's valid rows,
    ReadStats) of `sources` (found in `log_dir`), read with the engine's memory bounded by
    `memory_limit` and spilling to a temporary directory past it. The connection is None when
    there is no file to read."""
    stats = ReadStats.of(log_dir, sources)
    with tempfile.TemporaryDirectory(prefix="ragmon-report-") as spill:
        con, inside, stats = load_rows(sources, since, None, workers=workers,
                                       progress="reading" if progress else None, stats=stats,
                                       spill_dir=Path(spill), memory_limit=memory_limit,
                                       count_history=False)
        try:
            if con is not None:
                # Every query orders what it returns: the scans need not keep the read order.
                con.execute("SET preserve_insertion_order = false")
            yield con, inside, stats
        finally:
            if con is not None:
                con.close()


@contextlib.contextmanager
def log_rows(log_dir, hours: float | None = None, *, now: float | None = None,
             workers: int | None = None, progress: bool = False,
             memory_limit: str = MEMORY_LIMIT):
    """(connection with the view ``all_rows`` or None when there is no file, SQL condition of
    the period's valid rows, ReadStats) of the requests that ended in the last `hours` hours in
    `log_dir` (the JSONL files and the Parquet history)."""
    since = since_hours(hours, now)
    with opened_rows(log_dir, find_sources(log_dir, since, None), since, workers=workers,
                     progress=progress, memory_limit=memory_limit) as opened:
        yield opened


@contextlib.contextmanager
def frame_rows(df):
    """(connection with the view ``all_rows`` over `df`, SQL condition, ReadStats): a
    load_records() DataFrame read by the same queries as the log."""
    from .frames import register_frame
    from .reader import connect

    con = connect()
    try:
        register_frame(con, df)
        yield con, "valid", ReadStats(str(df.attrs.get("log_dir", "(DataFrame)")))
    finally:
        con.close()


def report_from_log(log_dir, settings, *, hours: float | None = None, top: int = 10,
                    now: float | None = None, workers: int | None = None,
                    progress: bool = False, memory_limit: str = MEMORY_LIMIT,
                    exact: bool = False) -> dict:
    """The performance report of the requests that ended in the last `hours` hours in
    `log_dir`, aggregated in DuckDB. Whole days of the Parquet history are read from their
    rollups (ragmon.report.rollups: counts and sums exact, quantiles within a relative
    RELATIVE_ERROR); `exact` reads every record."""
    with period_rows(log_dir, settings, hours, now=now, top=top, exact=exact, workers=workers,
                     progress=progress, memory_limit=memory_limit) as period:
        return period.report(top)


class Period:
    """The log's rows of one period, open on a DuckDB connection: ``con`` (None: no file),
    ``inside`` (the SQL condition of the period's valid rows of ``all_rows``: every record,
    the history's too), ``stats``, and the history days whose rollups stand in for their
    records in the report's figures (``rolled``)."""

    def __init__(self, con, inside: str, stats: ReadStats, settings, hours, now, rolled,
                 raw_parquet, has_jsonl: bool, progress: bool):
        self.con, self.inside, self.stats, self.settings = con, inside, stats, settings
        self.hours, self.now, self.rolled, self.raw_parquet = hours, now, rolled, raw_parquet
        self.has_jsonl, self.progress = has_jsonl, progress

    def report(self, top: int) -> dict:
        """The report's figures: from the rollups and the rest's records when rollups apply
        (and can give every figure), else from every record."""
        if self.con is not None and self.rolled:
            read_so_far = copy.deepcopy(self.stats)
            try:
                return _rollup_report(self, top)
            except NeedsRecords:  # the stats as they were before the attempt
                self.stats.__dict__.update(read_so_far.__dict__)
        return figures(self.con, self.inside, self.settings, hours=self.hours, top=top,
                       now=self.now, stats=self.stats, progress=self.progress)


@contextlib.contextmanager
def period_rows(log_dir, settings, hours: float | None = None, *, now: float | None = None,
                top: int = 10, exact: bool = False, workers: int | None = None,
                progress: bool = False, memory_limit: str = MEMORY_LIMIT):
    """The Period of the requests that ended in the last `hours` hours in `log_dir`, its files
    read once (the JSONL into the engine; the Parquet history in place, where only the days
    without a usable rollup are scanned for the report's figures)."""
    since = since_hours(hours, now)
    sources = find_sources(log_dir, since, None)
    rolled = [] if exact else _rolled_days(sources, settings, since, top)
    rolled_paths = {str(f.path) for f, _ in rolled}
    raw_parquet = [f for f in sources.parquet if str(f.path) not in rolled_paths]
    with opened_rows(log_dir, sources, since, workers=workers, progress=progress,
                     memory_limit=memory_limit) as (con, inside, stats):
        yield Period(con, inside, stats, settings, hours, now, rolled, raw_parquet,
                     bool(sources.jsonl), progress)


def report_from_frame(df, settings, *, hours: float | None = None, top: int = 10,
                      now: float | None = None, read_stats=None) -> dict:
    """The same report of the records in a load_records() DataFrame (the same queries, over
    the frame). ``read_stats``: what was read and skipped, default ``df.attrs["read_stats"]``."""
    if read_stats is None:
        read_stats = df.attrs.get("read_stats")
    if read_stats is not None and not isinstance(read_stats, dict):
        read_stats = read_stats.as_dict()
    with frame_rows(df) as (con, inside, stats):
        report = figures(con, inside, settings, hours=hours, top=top, now=now, stats=stats)
    report["read"] = read_stats
    if report["empty"]:  # the message names the log directory the read stats name
        report.update(report_header(settings, hours, now, read_stats, 0))
    return report


def figures(con, inside: str, settings, *, hours=None, top: int = 10, now=None,
            stats: ReadStats, progress: bool = False) -> dict:
    """The report of the rows of ``all_rows`` matching `inside` (con None: no rows)."""
    if con is None:
        return _header(settings, hours, now, stats, 0)
    with QueryProgress(con, "summarising", delay=PROGRESS_DELAY if progress else 1e9) as bar:
        return _report(con, inside, settings, hours, top, now, stats, _Steps(bar, 1))


def runner(con):
    def run(sql: str, params=None):
        cursor = con.cursor()
        try:
            return cursor.execute(sql, params or []).fetchall()
        finally:
            cursor.close()
    return run


def stats_of(con, inside: str, settings, report: dict, bucket: str | None = None) -> dict:
    """The stats: the report (its top 5 slowest) plus the distributions of latency and of each
    stage, and the time table (bucket_start, requests, error_rate, p50, p95, p99, cost,
    cost_per_hour) per `bucket` (default: from the span)."""
    from . import timeline

    if report["empty"]:
        return report
    run = runner(con)
    first, last = timeline.span(run, inside)
    stage_keys = [s["stage"] for s in report["stages"]]
    bucket = timeline.choose_bucket(first, last, bucket)
    rows = timeline.series(run, inside, bucket, [], first, last)
    report["distributions"] = timeline.distributions(run, inside, sorted(stage_keys))
    report["bucket"] = bucket
    report["series"] = [{"bucket_start": timeline.iso(r["bucket_start"]),
                         "requests": r["requests"], "error_rate": json_float(r["error_rate"]),
                         "p50": json_float(r["p50"]), "p95": json_float(r["p95"]), "p99": json_float(r["p99"]),
                         "cost": json_float(r["cost"]), "cost_per_hour": json_float(r["cost_per_hour"])}
                        for r in rows]
    return report


def stats_from_log(log_dir, settings, *, hours: float | None = None, bucket: str | None = None,
                   now: float | None = None, progress: bool = False) -> dict:
    """The stats of the log's last `hours` hours: the report's figures as report_from_log()
    reads them (rollups for whole days of history), the time table and the distributions
    over every record."""
    with period_rows(log_dir, settings, hours, now=now, top=5, progress=progress) as period:
        return stats_of(period.con, period.inside, settings, period.report(5), bucket)


def stats_from_frame(df, settings, *, hours: float | None = None, bucket: str | None = None,
                     now: float | None = None, read_stats=None) -> dict:
    report = report_from_frame(df, settings, hours=hours, top=5, now=now, read_stats=read_stats)
    if report["empty"]:
        return report
    with frame_rows(df) as (con, inside, _):
        return stats_of(con, inside, settings, report, bucket)


def _header(settings, hours, now, stats: ReadStats, n: int) -> dict:
    stats.records = n
    return report_header(settings, hours, now, stats.as_dict(), n)


def _price_table(settings):
    """The price table that tells default-priced models (None: no readable price file)."""
    try:
        from ..instrument.pricing import PriceTable
        return PriceTable.from_settings(settings)
    except (OSError, ValueError):
        return None


def bounded_keys(keys, limit: int, kind: str, stats: ReadStats) -> list[str]:
    """The first `limit` of the sorted `keys`; the rest are named in stats.ignored_names (as
    reader._keys does: like metric labels, stage names and attribute keys must be bounded)."""
    keys = sorted(k for k in keys if k is not None)
    for key in keys[limit:]:
        if len(stats.ignored_names) < 20:
            stats.ignored_names.add(f"{kind} {key}")
    return keys[:limit]


def _report(con, inside, settings, hours, top, now, stats: ReadStats, steps: "_Steps") -> dict:
    quality = ", ".join(f"count({c}), fsum({c}) / count({c}), quantile_cont({c}, [0.5, 0.95])"
                        for c, _ in _QUALITY)
    main = (f"""
        SELECT count(*), min(end_time), max(end_time),
               count(*) FILTER (status = 'success'), count(*) FILTER (status = 'error'),
               count(*) FILTER (status = 'cancelled'),
               fsum(total_time) / count(*), quantile_cont(total_time, [0.5, 0.95, 0.99]),
               max(total_time), count(*) FILTER (total_time > ?), count(*) FILTER (total_time > ?),
               coalesce(fsum(cost), 0), count(cost),
               coalesce(sum(input_tokens), 0), coalesce(sum(output_tokens), 0),
               coalesce(sum(cached_input_tokens), 0), coalesce(sum(cache_hits), 0),
               coalesce(sum(cache_misses), 0),
               count(cost_original), coalesce(fsum(cost_original), 0),
               coalesce(fsum(coalesce(cost, 0)) FILTER (cost_original IS NOT NULL), 0),
               count(model), count(operation), count(*) FILTER (seq < {HISTORY_END})
        FROM all_rows WHERE {inside}""",
            [settings.SLOW_QUERY_SECONDS, settings.VERY_SLOW_QUERY_SECONDS])
    # Independent queries, two at a time, longest first: the last step of each (an exact
    # percentile over millions of values) runs on one core, so two keep both cores busy.
    queries = {"stages": _stages_query(inside, settings), "attributes": _attributes_query(inside),
               "quality": (f"SELECT {quality} FROM all_rows WHERE {inside}", None),
               "main": main, "models": _models_query(inside),
               "operations": _operations_query(inside), "slowest": _slowest_query(inside, top),
               "errors": _errors_query(inside)}
    steps.expect(len(queries) + 1)  # and the slowest requests' details
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(queries, pool.map(lambda q: steps.run(*q), queries.values())))
    return _assemble(
        results, settings, hours, now, stats,
        attributes=lambda rows, n: _attributes(steps, inside, rows, stats, n),
        slowest=lambda rows, keys: _slowest(steps, inside, rows, keys))


def _assemble(results: dict, settings, hours, now, stats: ReadStats, *, attributes,
              slowest) -> dict:
    """The report from its queries' rows (whether of the records or of their rollups).
    `attributes(rows, n)` and `slowest(rows, stage_keys)` finish those two figures."""
    [values] = results["main"]
    values = list(values)
    n, first, last, success, error, cancelled = values[:6]
    stage_rows = results["stages"]
    stage_keys = bounded_keys({r[0] for r in stage_rows}, MAX_STAGE_NAMES, "stage", stats)
    stats.outside_period += stats.history_rows - values[23]  # history rows not in the period
    report = _header(settings, hours, now, stats, int(n))
    if not n:
        return report
    mean, (p50, p95, p99), longest, slow, very_slow = values[6:11]
    cost_sum, priced, tok_in, tok_out, tok_cached, hits, misses = values[11:18]
    quality = results["quality"][0]
    repriced, before, after, with_model, with_operation = values[18:23]

    report["period"]["first"], report["period"]["last"] = _iso(first), _iso(last)
    span_hours = hours if hours else max(
        (_timestamp(last) - _timestamp(first)).total_seconds() / 3600, 1 / 60)
    report["totals"] = {
        "requests": n, "success": success, "error": error, "cancelled": cancelled,
        "other": n - success - error - cancelled, "success_rate": success / n,
        "error_rate": error / n, "requests_per_hour": n / span_hours}
    report["latency"] = {"mean": json_float(mean), "p50": json_float(p50), "p95": json_float(p95), "p99": json_float(p99),
                         "max": json_float(longest), "slow": slow, "very_slow": very_slow,
                         "slow_share": slow / n}
    report["stages"] = _stages(stage_rows, stage_keys, settings)
    report["models"] = _models(results["models"]) if with_model else []
    table = _price_table(settings)
    cost = {"total": json_float(cost_sum) if priced else 0.0,
            "per_request": json_float(cost_sum / priced) if priced else None,
            "requests_without_cost": n - priced}
    if table is not None:
        cost.update(_pricing(results["models"], table, priced))
    cost["repriced"] = {"requests": repriced, "cost_before": json_float(before) if repriced else 0.0,
                        "cost_after": json_float(after) if repriced else 0.0}
    report["cost"] = cost
    report["tokens"] = {"input": int(tok_in), "output": int(tok_out), "cached_input": int(tok_cached)}
    hits, misses = int(hits), int(misses)
    report["cache"] = {"hits": hits, "misses": misses,
                       "hit_rate": hits / (hits + misses) if hits + misses else None}
    report["quality"] = {}
    for i, (_, key) in enumerate(_QUALITY):
        measured, average, quantiles = quality[3 * i: 3 * i + 3]
        q50, q95 = quantiles if quantiles is not None else (None, None)
        report["quality"][key] = {"measured": measured, "mean": json_float(average) if measured else None,
                                  "p50": json_float(q50), "p95": json_float(q95)}
    report["errors"] = _errors(results["errors"], n)
    report["operations"] = _operations(results["operations"]) if with_operation else []
    report["attributes"] = attributes(results["attributes"], n)
    report["slowest"] = slowest(results["slowest"], stage_keys)
    return report


def _stages_query(inside: str, settings):
    budgets = dict(settings.STAGE_BUDGETS)
    budget = ("CASE stage " + " ".join(f"WHEN {sql_quote(k)} THEN {float(v)!r}"
                                       for k, v in budgets.items()) + " END"
              if budgets else "NULL::DOUBLE")
    return (f"""
        WITH entries AS (
            SELECT entry.key AS stage, entry.value.duration AS d, total_time AS t
            FROM (SELECT unnest(map_entries(stage_map)) AS entry, total_time
                  FROM all_rows WHERE {inside})),
        shares AS (
            SELECT stage, d, t, CASE WHEN t > 0 THEN d / t ELSE 0.0 END AS share,
                   {budget} AS budget
            FROM entries)
        SELECT stage, count(d), fsum(d) / count(d), quantile_cont(d, [0.5, 0.95, 0.99]), max(d),
               fsum(d), fsum(share) FILTER (d IS NOT NULL) / count(d),
               fsum(t) FILTER (d IS NOT NULL),
               count(*) FILTER (share > ? OR coalesce(d > budget, false)),
               count(*) FILTER (share > ?), count(*) FILTER (coalesce(d > budget, false))
        FROM shares GROUP BY stage""", [settings.BOTTLENECK_SHARE, settings.BOTTLENECK_SHARE])


def _stages(rows, keys: list[str], settings) -> list[dict]:
    budgets = dict(settings.STAGE_BUDGETS)
    known = set(keys)
    out = []
    for (stage, requests, mean, quantiles, longest, total, mean_share, total_t, bottlenecks,
         by_share, by_budget) in sorted(rows, key=lambda r: r[0] or ""):
        if stage not in known or not requests:
            continue
        p50, p95, p99 = quantiles
        out.append({
            "stage": stage, "requests": requests, "mean": json_float(mean), "p50": json_float(p50),
            "p95": json_float(p95), "p99": json_float(p99), "max": json_float(longest), "total_time": json_float(total),
            "mean_share": json_float(mean_share), "time_share": json_float(total / total_t) if total_t else None,
            "budget": budgets.get(stage), "bottlenecks": bottlenecks,
            "bottlenecks_by_share": by_share, "bottlenecks_by_budget": by_budget})
    out.sort(key=lambda s: s["total_time"] or 0, reverse=True)
    return out


def _models_query(inside: str):
    return (f"""
        SELECT coalesce(model, '(none)') AS m, count(*), coalesce(fsum(cost), 0), count(cost),
               sum(input_tokens), sum(output_tokens), sum(cached_input_tokens),
               quantile_cont(total_time, 0.95), count(*) FILTER (status = 'error'),
               model IS NULL AS unnamed,
               count(cost) FILTER (price_match = 'default'),
               coalesce(fsum(cost) FILTER (price_match = 'default'), 0),
               count(cost) FILTER (price_match IS NULL),
               coalesce(fsum(cost) FILTER (price_match IS NULL), 0)
        FROM all_rows WHERE {inside} GROUP BY m, unnamed ORDER BY {FIRST_SEEN}, m""", None)


def _models(rows) -> list[dict]:
    out = [{"model": str(model), "requests": requests, "cost": json_float(cost),
            "mean_cost": json_float(cost / priced) if priced else None,
            "input_tokens": int(tok_in), "output_tokens": int(tok_out),
            "cached_input_tokens": int(tok_cached), "p95_latency": json_float(p95),
            "error_rate": errors / requests}
           for model, requests, cost, priced, tok_in, tok_out, tok_cached, p95, errors, *_ in rows]
    out.sort(key=lambda m: (m["cost"] or 0, m["requests"]), reverse=True)
    return out


def _pricing(rows, table, priced: int) -> dict:
    """Spend priced at the default apart from spend priced by the table, from the models'
    rows: a record's own word (price_match) first, else whether the table knows its model."""
    import math

    requests, spend, total, models = 0, [], [], set()
    for row in rows:
        model, cost, unnamed = row[0], row[2], row[9]
        said, said_cost, unsaid, unsaid_cost = row[10:14]
        unknown = not unnamed and table.match(model).match == "default"
        count = said + (unsaid if unknown else 0)
        requests += count
        spend += [said_cost] + ([unsaid_cost] if unknown else [])
        total.append(cost)
        if count and not unnamed:
            models.add(str(model))
    default = math.fsum(spend)
    return {"default_priced": {"requests": requests, "cost": json_float(default) if requests else 0.0,
                               "models": sorted(models)},
            "table_priced": json_float(math.fsum(total) - default) if priced - requests else 0.0}


def _errors_query(inside: str):
    return (f"""
        SELECT coalesce(error_type, '(none)') AS e, count(*) FROM all_rows
        WHERE {inside} AND status IS DISTINCT FROM 'success'
        GROUP BY e ORDER BY count(*) DESC, {FIRST_SEEN}, e""", None)


def _errors(rows, n: int) -> list[dict]:
    failed = sum(count for _, count in rows)
    return [{"error_type": str(kind), "count": count, "share_of_failures": count / failed,
             "share_of_requests": count / n} for kind, count in rows]


def _operations_query(inside: str):
    return (f"""
        SELECT operation, count(*), quantile_cont(total_time, 0.95),
               count(*) FILTER (status = 'error')
        FROM all_rows WHERE {inside} AND operation IS NOT NULL
        GROUP BY operation ORDER BY count(*) DESC, {FIRST_SEEN}, operation""", None)


def _operations(rows) -> list[dict]:
    return [{"value": str(value), "requests": requests, "p95_latency": json_float(p95),
             "error_rate": errors / requests} for value, requests, p95, errors in rows]


_NUMBER_SQL = "('BIGINT', 'UBIGINT', 'DOUBLE')"


def _attributes_query(inside: str):
    """Every attribute in one pass: per key, the distribution of its numbers (all of them in the
    group whose text is NULL), and per distinct other value (a string, a list...) its requests,
    latency p95, successes and first appearance - for strings only the top TOP_VALUES."""
    return (f"""
        WITH entries AS (
            SELECT entry.key AS key, entry.value AS v, json_type(entry.value) AS kind,
                   total_time, status, end_time, seq
            FROM (SELECT unnest(map_entries(attributes)) AS entry, total_time, status, end_time,
                         seq
                  FROM all_rows WHERE {inside})),
        typed AS (
            SELECT *, CASE WHEN kind IN {_NUMBER_SQL} THEN TRY_CAST(v AS DOUBLE) END AS x,
                   CASE WHEN kind NOT IN {_NUMBER_SQL} AND kind <> 'NULL' THEN v::VARCHAR END AS text
            FROM entries),
        groups AS (
            SELECT key, text, any_value(kind) FILTER (text IS NOT NULL) AS kind, count(*) AS n,
                   count(x) AS xn, fsum(x) AS xsum, quantile_cont(x, [0.5, 0.95]) AS xq,
                   max(x) AS xmax,
                   quantile_cont(CASE WHEN text IS NOT NULL THEN total_time END, 0.95) AS p95,
                   count(*) FILTER (status = 'success') AS ok, min(end_time) AS first_end,
                   min(seq) AS first_seq
            FROM typed GROUP BY key, text),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY key ORDER BY text IS NULL, n DESC, first_end,
                                                           first_seq, text) AS rank,
                   count(text) OVER (PARTITION BY key) AS distinct_texts,
                   sum(CASE WHEN text IS NOT NULL THEN n END) OVER (PARTITION BY key) AS present,
                   bool_and(text IS NULL OR kind = 'VARCHAR') OVER (PARTITION BY key) AS strings
            FROM groups)
        SELECT key, text, kind, xn, xsum, xq, xmax, n, p95, ok / n, distinct_texts, present
        FROM ranked WHERE text IS NULL OR rank <= {TOP_VALUES} OR NOT strings
        ORDER BY key, rank""", None)


def _attributes(steps: "_Steps", inside: str, rows, stats: ReadStats, n: int) -> dict:
    """Each attribute as analysis._attribute() describes it: numbers get a distribution,
    strings (and other scalars) the top values with latency and success rate, lists the count
    per item. Which it is depends on every value's JSON type, as there."""
    by_key: dict[str, list] = {}
    for row in rows:
        by_key.setdefault(row[0], []).append(row[1:])
    keys = bounded_keys(by_key, MAX_ATTRIBUTE_KEYS, "attribute", stats)
    out: dict = {}
    mixed_lists, others = [], []
    for key in keys:
        numbers = next((g for g in by_key[key] if g[0] is None), None)
        texts = [g for g in by_key[key] if g[0] is not None]
        kinds = {g[1] for g in texts} | ({"DOUBLE"} if numbers and numbers[2] else set())
        if kinds <= {"DOUBLE"}:  # all missing, too: pandas reads that column as numbers
            _, _, present, total, quantiles, largest = numbers[:6] if numbers else [None] * 6
            present = present or 0
            q50, q95 = quantiles if quantiles is not None else (None, None)
            out[key] = {"kind": "number", "requests": present,
                        "mean": json_float(total / present) if present else None, "p50": json_float(q50),
                        "p95": json_float(q95), "max": json_float(largest) if present else None,
                        "sum": json_float(total) if present else None}
        elif kinds == {"VARCHAR"}:
            distinct, present = texts[0][9], texts[0][10]
            shown = texts[:TOP_VALUES]
            out[key] = {"kind": "category", "requests": present, "distinct": distinct,
                        "values": [{"value": _label(g[0]), "requests": g[6], "share": g[6] / n,
                                    "p95_latency": json_float(g[7]), "success_rate": json_float(g[8])}
                                   for g in shown],
                        "other": present - sum(g[6] for g in shown)}
        elif kinds == {"ARRAY"}:
            out[key] = _list_items([(g[0], g[6]) for g in texts])
        elif "ARRAY" in kinds:
            mixed_lists.append(key)
        else:
            others.append(key)
    for key in mixed_lists:  # a list attribute when its first 1,000 values are lists
        [(all_lists,)] = steps.run(
            f"SELECT bool_and(json_type(v) = 'ARRAY') FROM (SELECT v FROM "
            f"({_attribute_entries(inside, [key])}) "
            "ORDER BY end_time, seq LIMIT 1000)")
        if all_lists:
            rows = steps.run(f"SELECT v::VARCHAR AS text, count(*) FROM "
                             f"({_attribute_entries(inside, [key])}) GROUP BY text "
                             f"ORDER BY count(*) DESC, {FIRST_SEEN}, text")
            out[key] = _list_items(rows)
        else:
            others.append(key)
    out.update(_mixed_categories(steps, inside, others, n))
    return {key: out[key] for key in keys}


def _list_items(distinct) -> dict:
    """Items of a list attribute (entities) from its distinct lists (JSON text, requests), in
    the order pandas' value_counts hands them over (most frequent, then first seen), so that
    ties come out as they do there."""
    counts: Counter = Counter()
    for text, times in distinct:
        value = decode_json(text)
        for item in (value if isinstance(value, list) else [value]):
            counts[str(hashable(item))] += times
    top = counts.most_common(TOP_VALUES)
    return {"kind": "list", "requests": sum(times for _, times in distinct),
            "distinct": len(counts), "values": [{"value": k, "requests": v} for k, v in top],
            "other": sum(counts.values()) - sum(v for _, v in top)}


def _attribute_entries(inside: str, keys: list[str]) -> str:
    """One row per (request, attribute of `keys`) with a value that is not JSON null."""
    return f"""
        SELECT entry.key AS key, entry.value AS v, total_time, status, end_time, seq
        FROM (SELECT unnest(map_entries(attributes)) AS entry, total_time, status, end_time, seq
              FROM all_rows WHERE {inside})
        WHERE entry.key IN {_sql_in(keys)} AND entry.value IS NOT NULL
          AND json_type(entry.value) <> 'NULL'"""


def _mixed_categories(steps: "_Steps", inside: str, keys: list[str], n: int) -> dict:
    """Attributes of mixed scalar types, each value named as Python prints it (True, 3,
    ('a', 'b')) through a table of labels for the distinct texts: two texts may share a label."""
    if not keys:
        return {}
    texts = steps.run(f"SELECT DISTINCT key, v::VARCHAR FROM ({_attribute_entries(inside, keys)})")
    con = steps.con
    con.execute("CREATE OR REPLACE TABLE attribute_labels (key VARCHAR, text VARCHAR, label VARCHAR)")
    con.executemany("INSERT INTO attribute_labels VALUES (?, ?, ?)",
                    [(key, text, _label(text)) for key, text in texts])
    rows = steps.run(f"""
        SELECT e.key, l.label AS value, count(*), quantile_cont(total_time, 0.95),
               count(*) FILTER (status = 'success') / count(*)
        FROM ({_attribute_entries(inside, keys)}) e
        JOIN attribute_labels l ON l.key = e.key AND l.text = e.v::VARCHAR
        GROUP BY e.key, value ORDER BY e.key, count(*) DESC, {FIRST_SEEN}, value""")
    grouped: dict[str, list] = {}
    for row in rows:
        grouped.setdefault(row[0], []).append(row[1:])
    out = {}
    for key, groups in grouped.items():
        out[key] = {"kind": "category", "requests": sum(g[1] for g in groups),
                    "distinct": len(groups),
                    "values": [{"value": str(value), "requests": size, "share": size / n,
                                "p95_latency": json_float(p95), "success_rate": json_float(ok)}
                               for value, size, p95, ok in groups[:TOP_VALUES]],
                    "other": sum(g[1] for g in groups[TOP_VALUES:])}
    return out


def _label(text: str) -> str:
    value = decode_json(text)
    return value if isinstance(value, str) else str(hashable(value))


def _slowest_query(inside: str, top: int):
    return (f"""
        SELECT total_time, end_time, seq FROM all_rows WHERE {inside}
        ORDER BY total_time DESC, end_time, seq LIMIT ?""", [max(0, int(top))])


def _slowest(steps: "_Steps", inside: str, rows, stage_keys: list[str]) -> list[dict]:
    if not rows:
        return []
    # The rest of these few rows only, found by their place in the read order (an integer,
    # matched exactly). The bound on the total time lets the scan skip the other rows without
    # reading anything else of them; it is a bound-parameter DOUBLE, the very value read (a
    # float written into the SQL text would be read back as a DECIMAL, not always equal).
    shortest = min(float(total) for total, _, _ in rows)
    found = {row[0]: row[1:] for row in steps.run(
        f"SELECT seq, request_id, status, error_type, model, operation, stage_map "
        f"FROM all_rows WHERE {inside} AND total_time >= ? "
        f"AND seq IN ({', '.join(str(int(seq)) for _, _, seq in rows)})", [shortest])}
    return _slowest_entries([(total, end, *found[seq]) for total, end, seq in rows], stage_keys)


def _slowest_entries(rows, stage_keys: list[str]) -> list[dict]:
    """The slowest requests from rows (total_time, end_time, request_id, status, error_type,
    model, operation, stage_map), slowest first."""
    known = set(stage_keys)
    out = []
    for total, end, request_id, status, error_type, model, operation, stage_map in rows:
        slowest_stage, slowest_duration = None, None
        durations = {k: (v or {}).get("duration") for k, v in (stage_map or {}).items()}
        for name in sorted(durations):
            d = durations[name]
            if name in known and d is not None and d == d and (
                    slowest_duration is None or d > slowest_duration):
                slowest_stage, slowest_duration = name, float(d)
        out.append({"request_id": None if request_id is None else str(request_id),
                    "timestamp": _iso(end), "total_time": json_float(total),
                    "status": status, "error_type": error_type, "model": model,
                    "operation": operation, "slowest_stage": slowest_stage,
                    "slowest_stage_duration": slowest_duration})
    return out


def costliest(con, inside: str, top: int) -> list[dict]:
    """The `top` requests that cost the most (ties: the earlier first), with their ids."""
    rows = runner(con)(f"""
        SELECT request_id, end_time, cost, model, total_time, status FROM all_rows
        WHERE {inside} AND cost IS NOT NULL ORDER BY cost DESC, end_time, seq LIMIT ?""",
                     [max(0, int(top))])
    return [{"request_id": None if rid is None else str(rid), "timestamp": _iso(end),
             "cost": json_float(cost), "model": model, "total_time": json_float(total), "status": status}
            for rid, end, cost, model, total, status in rows]


def html_from_log(log_dir, settings, *, hours: float | None = None, top: int = 10,
                  now: float | None = None, bucket: str | None = None,
                  progress: bool = False) -> str:
    """The report of the log's last `hours` hours as one self-contained HTML page
    (ragmon.report.html): the same figures, plus latency and spend over time and the most
    expensive requests."""
    from .html import format_html
    from .timeline import trends

    with period_rows(log_dir, settings, hours, now=now, top=top, progress=progress) as period:
        report = period.report(top)
        if report["empty"]:
            return format_html(report)
        stages = sorted(s["stage"] for s in report["stages"])
        from .attribution import who_spends
        con, inside = period.con, period.inside
        return format_html(report, trends(runner(con), inside, bucket, stages),
                           costliest(con, inside, top),
                           who_spends=who_spends(con, inside, settings.ATTRIBUTION_KEYS))


# --- the report over rollups ---------------------------------------------------------------------

def _rolled_days(sources, settings, since, top) -> list:
    """[(LogFile, its rollup.json)] of the history days whose rollups cover whole days of the
    period."""
    from .reader import future_bound

    bound = future_bound(since)
    rolled = [(f, usable(f.path.parent, settings, since, bound, top)) for f in sources.parquet]
    return [(f, meta) for f, meta in rolled if meta]


def _rollup_report(period: Period, top: int) -> dict:
    """The report from the rollups of the whole days of history in the period plus the records
    of the rest (JSONL days, partial days, days without a valid rollup)."""
    from .reader import parquet_rows

    con, inside, stats = period.con, period.inside, period.stats
    parts = []
    if period.raw_parquet:
        con.execute(f"CREATE OR REPLACE VIEW raw_history AS "
                    f"{parquet_rows(con, period.raw_parquet)}")
        parts.append("SELECT * FROM raw_history")
    if period.has_jsonl:
        parts.append(f"SELECT *, {HISTORY_END} + rowid AS seq FROM log_rows")
    raw_rows, raw_history = None, 0
    if parts:
        con.execute("CREATE OR REPLACE VIEW raw_rows AS " + " UNION ALL BY NAME ".join(parts))
        raw_rows = f"(SELECT * FROM raw_rows WHERE {inside})"
        if period.raw_parquet:
            [(raw_history,)] = con.execute(
                f"SELECT count(*) FROM raw_rows WHERE {inside} AND seq < {HISTORY_END}").fetchall()
    merge_rollups(con, [f.path.parent for f, _ in period.rolled], raw_rows, period.settings)
    rows = sum(meta["rows"] for _, meta in period.rolled)
    report = _assemble(merged_results(con, top, rows + raw_history), period.settings,
                       period.hours, period.now, stats,
                       attributes=lambda found, n: _rollup_attributes(found, stats, n),
                       slowest=_slowest_entries)
    report["rollups"] = {"days": len(period.rolled),
                         "raw_files": len(stats.files) - len(period.rolled),
                         "quantile_relative_error": RELATIVE_ERROR}
    return report


def _rollup_attributes(rows, stats: ReadStats, n: int) -> dict:
    """The attributes from the rollups' value counts; one of mixed value types (a list here, a
    string there) needs the records (its values are labelled one by one)."""
    kinds: dict[str, set] = {}
    for key, text, kind, xn, *_ in rows:
        kinds.setdefault(key, set()).add(kind if text is not None else ("DOUBLE" if xn else None))
    for found in kinds.values():
        found.discard(None)
        if not (found <= {"DOUBLE"} or found == {"VARCHAR"} or found == {"ARRAY"}):
            raise NeedsRecords()
    return _attributes(None, "false", rows, stats, n)
