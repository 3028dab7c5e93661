"""Per-day rollups of the Parquet history: the report over a long history reads these few
rows per day instead of every record again.

Beside each compacted day (``history/day=YYYY-MM-DD/records.parquet``) ``compact`` writes
``rollup/``: small Parquet tables computed from that file, and ``rollup.json``, which names the
records file's size and modification time. A rollup whose fingerprint does not match its
records file (a rewrite: ``reprice``, a hand edit) is not used; the day is then read raw.

What merges exactly (a SUM or MIN/MAX over days): request counts by operation, model, status,
error type and price match; sums of time, cost and every token kind (ragmon.instrument.tokens);
cache hits and misses; min/max; quality sums; per-stage sums and bottleneck counts; attribute
value counts; the top ROLLUP_TOP requests by total time and by cost (the merged top-N of
per-day top-Ns is the exact top-N).

What merges approximately: quantiles, from a DDSketch-style sketch. A value x > 0 falls in
bucket i = ceil(log_gamma(x)) with gamma = (1 + a) / (1 - a), a = RELATIVE_ERROR; the bucket
stands for 2 gamma^i / (gamma + 1), within a relative a of every value in it. Negative values
use the buckets of |x| with sign -1, zero has a bucket of its own (sign 0). A sketch is rows of
(metric, group, sign, bucket, count): merging days is a SUM GROUP BY, a quantile is a cumulative
sum over the bucket order. The estimate of a quantile (numpy's linear interpolation between two
order statistics, like DuckDB's quantile_cont) is within a relative `a` of the exact one for
values > 0.

Thresholds (slow seconds, bottleneck share, stage budgets) are counted at compaction and named
in rollup.json; a report with other thresholds reads that day raw.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .analysis import TOP_VALUES
from .reader import TOKEN_KEYS, sql_list, sql_quote
from .sources import PARQUET_NAME

ROLLUP_DIR = "rollup"
ROLLUP_META = "rollup.json"
ROLLUP_VERSION = 1
RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
ROLLUP_TOP = 100  # requests kept per day by total time and by cost (the report shows --top)
TABLES = ("groups", "sketch", "stages", "attributes", "top")
QUALITY_COLUMNS = ("relevance_score", "context_precision", "time_to_first_token")
_NUMBER_KINDS = "('BIGINT', 'UBIGINT', 'DOUBLE')"


class NeedsRecords(Exception):
    """A figure the rollups cannot give (e.g. an attribute of mixed value types): the report
    reads the records instead."""


def thresholds(settings) -> dict:
    """The settings the rollup's counts depend on (a report with others reads the day raw)."""
    return {"slow_seconds": float(settings.SLOW_QUERY_SECONDS),
            "very_slow_seconds": float(settings.VERY_SLOW_QUERY_SECONDS),
            "bottleneck_share": float(settings.BOTTLENECK_SHARE),
            "stage_budgets": {k: float(v) for k, v in sorted(dict(settings.STAGE_BUDGETS).items())}}


def bucket_sql(x: str) -> tuple[str, str]:
    """(sign, bucket) of the value `x` as two SQL expressions."""
    return (f"sign({x})::TINYINT",
            f"CASE WHEN {x} = 0 THEN 0 ELSE ceil(ln(abs({x})) / ln({GAMMA!r}))::INTEGER END")


def bucket_value_sql(sign: str, bucket: str) -> str:
    """The value a bucket stands for (within RELATIVE_ERROR of every value in it)."""
    return f"({sign} * 2 * pow({GAMMA!r}, {bucket}) / ({GAMMA!r} + 1))"


def _sketch_rows(metric: str, group: str, value: str, source: str) -> str:
    sign, bucket = bucket_sql("x")
    return f"""
        SELECT {sql_quote(metric)} AS metric, grp, {sign} AS sign, {bucket} AS bucket,
               count(*)::BIGINT AS count
        FROM (SELECT {group} AS grp, {value} AS x FROM {source}) WHERE x IS NOT NULL
        GROUP BY ALL"""


def rollup_queries(source: str, settings, top: int = ROLLUP_TOP,
                   work: str = "rollup_work_") -> tuple[list[str], dict[str, str]]:
    """(statements creating the working tables `work`*, the rollup tables as one SELECT each)
    of the rows `source` (a FROM item with the columns of reader's ``all_rows``). The working
    tables hold each stage and attribute entry once, and latency by model and operation, so
    that the rows are unnested and bucketed once, not per table."""
    limits = thresholds(settings)
    budgets = limits["stage_budgets"]
    budget = ("CASE stage " + " ".join(f"WHEN {sql_quote(k)} THEN {v!r}" for k, v in budgets.items())
              + " END" if budgets else "NULL::DOUBLE")
    share = limits["bottleneck_share"]
    tokens = ", ".join(f"sum({k}_tokens)::BIGINT AS {k}_tokens" for k in TOKEN_KEYS)
    quality = ", ".join(f"count({c}) AS {c}_n, coalesce(fsum({c}), 0) AS {c}_sum"
                        for c in QUALITY_COLUMNS)
    groups = f"""
        SELECT operation, model, status, error_type, price_match,
               count(*) AS n, min(end_time) AS first_end, max(end_time) AS last_end,
               fsum(total_time) AS time_sum, max(total_time) AS time_max,
               count(*) FILTER (total_time > {limits['slow_seconds']!r}) AS slow,
               count(*) FILTER (total_time > {limits['very_slow_seconds']!r}) AS very_slow,
               count(cost) AS n_cost, coalesce(fsum(cost), 0) AS cost_sum, {tokens},
               sum(cache_hits)::BIGINT AS cache_hits, sum(cache_misses)::BIGINT AS cache_misses,
               count(cost_original) AS n_cost_original,
               coalesce(fsum(cost_original), 0) AS cost_original_sum,
               coalesce(fsum(coalesce(cost, 0)) FILTER (cost_original IS NOT NULL), 0)
                   AS cost_repriced_sum,
               {quality}
        FROM {source} GROUP BY ALL"""
    prepare = [f"""CREATE OR REPLACE TABLE {work}stages AS
        SELECT entry.key AS stage, entry.value.duration AS d, total_time AS t
        FROM (SELECT unnest(map_entries(stage_map)) AS entry, total_time FROM {source})"""]
    entries = f"{work}stages"
    stages = f"""
        SELECT stage, count(d) AS n, fsum(d) AS d_sum, max(d) AS d_max,
               fsum(share) FILTER (d IS NOT NULL) AS share_sum,
               fsum(t) FILTER (d IS NOT NULL) AS t_sum,
               count(*) FILTER (share > {share!r} OR coalesce(d > budget, false)) AS bottlenecks,
               count(*) FILTER (share > {share!r}) AS by_share,
               count(*) FILTER (coalesce(d > budget, false)) AS by_budget
        FROM (SELECT stage, d, t, CASE WHEN t > 0 THEN d / t ELSE 0.0 END AS share,
                     {budget} AS budget FROM {entries})
        GROUP BY stage"""
    prepare.append(f"""CREATE OR REPLACE TABLE {work}attributes AS
        SELECT key, kind, total_time, status, end_time,
               CASE WHEN kind IN {_NUMBER_KINDS} THEN TRY_CAST(v AS DOUBLE) END AS x,
               CASE WHEN kind NOT IN {_NUMBER_KINDS} AND kind <> 'NULL' THEN v::VARCHAR END AS text
        FROM (SELECT entry.key AS key, entry.value AS v, json_type(entry.value) AS kind,
                     total_time, status, end_time
              FROM (SELECT unnest(map_entries(attributes)) AS entry, total_time, status, end_time
                    FROM {source}))""")
    attribute_entries = f"{work}attributes"
    sign, bucket = bucket_sql("total_time")
    prepare.append(f"""CREATE OR REPLACE TABLE {work}latency AS
        SELECT coalesce(model, '(none)') AS model, operation, {sign} AS sign, {bucket} AS bucket,
               count(*) AS count
        FROM {source} WHERE total_time IS NOT NULL GROUP BY ALL""")
    attributes = f"""
        SELECT key, text, any_value(kind) FILTER (text IS NOT NULL) AS kind, count(*) AS n,
               count(x) AS xn, fsum(x) AS xsum, max(x) AS xmax,
               count(*) FILTER (status = 'success') AS ok, min(end_time) AS first_end
        FROM {attribute_entries} GROUP BY key, text"""
    sketch = " UNION ALL ".join(
        [f"""SELECT {sql_quote(metric)} AS metric, {group} AS grp, sign, bucket,
                    sum(count)::BIGINT AS count
             FROM {work}latency {where} GROUP BY ALL"""
         for metric, group, where in (("total_time", "''", ""), ("model", "model", ""),
                                      ("operation", "operation",
                                       "WHERE operation IS NOT NULL"))]
        + [_sketch_rows("stage", "stage", "d", entries)]
        + [_sketch_rows(c, "''", c, source) for c in QUALITY_COLUMNS]
        + [_sketch_rows("attribute", "key", "x", attribute_entries),
           _sketch_rows("attribute_value", "key || chr(0) || text", "total_time",
                        f"(SELECT * FROM {attribute_entries} WHERE text IS NOT NULL "
                        "AND kind <> 'ARRAY')")])
    columns = "request_id, end_time, total_time, cost, status, error_type, model, operation, stage_map"
    top_rows = f"""
        SELECT 'total_time' AS ranking, {columns}, seq FROM (
            SELECT * FROM {source} ORDER BY total_time DESC, end_time, seq LIMIT {int(top)})
        UNION ALL
        SELECT 'cost' AS ranking, {columns}, seq FROM (
            SELECT * FROM {source} WHERE cost IS NOT NULL ORDER BY cost DESC, end_time, seq
            LIMIT {int(top)})"""
    return prepare, {"groups": groups, "sketch": sketch, "stages": stages,
                     "attributes": attributes, "top": top_rows}


def _fingerprint(records: Path) -> dict:
    info = records.stat()
    return {"records_size": info.st_size, "records_mtime_ns": info.st_mtime_ns}


def write_rollup(partition: Path, settings, records_name: str = PARQUET_NAME) -> None:
    """Writes ``partition/rollup`` from ``partition/records_name``: into a scratch directory,
    renamed over the old one, so a reader sees the old rollup, none, or the new one. A reader
    checks the fingerprint anyway (see usable())."""
    from .reader import load_rows
    from .sources import LogFile, Sources, partition_date

    records = partition / records_name
    scratch = partition / f".{ROLLUP_DIR}-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir()
    # The partition may still be compaction's scratch directory: the day is not needed here.
    day = LogFile(records, partition_date(partition), "parquet", partition)
    # Every row, records dated in the future too (a report whose period they fall outside
    # reads that day raw, see usable()).
    con, inside, _ = load_rows(Sources([partition], [day]), count_history=False,
                               skip_future=False)
    try:
        stats = con.execute(f"SELECT count(*), min(end_time), max(end_time) FROM all_rows "
                            f"WHERE {inside}").fetchone()
        prepare, queries = rollup_queries(f"(SELECT * FROM all_rows WHERE {inside})", settings)
        for statement in prepare:
            con.execute(statement)
        for name, sql in queries.items():
            target = str(scratch / f"{name}.parquet").replace("'", "''")
            con.execute(f"COPY ({sql}) TO '{target}' (FORMAT parquet)")
    finally:
        con.close()
    meta = {"version": ROLLUP_VERSION, "relative_error": RELATIVE_ERROR, "top": ROLLUP_TOP,
            "rows": int(stats[0]), "first_end": stats[1], "last_end": stats[2],
            "thresholds": thresholds(settings), **_fingerprint(records)}
    (scratch / ROLLUP_META).write_text(json.dumps(meta))
    for path in scratch.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())
    invalidate(partition)
    os.rename(scratch, partition / ROLLUP_DIR)


def own_files(rollup: Path) -> list[Path] | None:
    """The files of a partition's rollup directory, or None when it holds anything else (or is
    a symlink): cleanup deletes only what the log wrote."""
    if rollup.is_symlink() or not rollup.is_dir():
        return None
    names = {f"{name}.parquet" for name in TABLES} | {ROLLUP_META}
    files = list(rollup.iterdir())
    if all(f.name in names and f.is_file() and not f.is_symlink() for f in files):
        return files
    return None


def invalidate(partition: Path) -> None:
    """Removes a day's rollup (its records are about to change, or have)."""
    old = partition / ROLLUP_DIR
    if old.exists():
        doomed = partition / f".{ROLLUP_DIR}-old-{os.getpid()}"
        os.rename(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)


def usable(partition: Path, settings, since: float | None, until: float | None,
           top: int) -> dict | None:
    """The rollup.json of `partition` when its rollup holds exactly the day's records as they
    are now, for these thresholds, and every record of it falls inside [since, until)."""
    try:
        meta = json.loads((partition / ROLLUP_DIR / ROLLUP_META).read_text())
        current = _fingerprint(partition / PARQUET_NAME)
    except (OSError, ValueError):
        return None
    if (meta.get("version") != ROLLUP_VERSION or meta.get("relative_error") != RELATIVE_ERROR
            or meta.get("top", 0) < top
            or any(meta.get(k) != v for k, v in current.items())
            or meta.get("thresholds") != thresholds(settings)):
        return None
    if meta["rows"] and ((since is not None and meta["first_end"] < since)
                         or (until is not None and meta["last_end"] >= until)):
        return None  # a partial day of the period: its rows are read raw
    return meta


def quantile_sql(table: str, qs) -> str:
    """(metric, grp, q, value) of every sketch group of `table` at each of `qs`: the linear
    interpolation between the order statistics at floor and ceil of (n - 1) q, as
    quantile_cont does, each taken as its bucket's value."""
    quantiles = "[" + ", ".join(f"{float(q)!r}::DOUBLE" for q in qs) + "]"
    return f"""
        WITH merged AS (SELECT metric, grp, sign, bucket, sum(count) AS c FROM {table}
                        GROUP BY ALL),
        cumulative AS (
            SELECT metric, grp, {bucket_value_sql('sign', 'bucket')} AS v,
                   sum(c) OVER (PARTITION BY metric, grp ORDER BY sign, sign * bucket
                                ROWS UNBOUNDED PRECEDING) AS cum,
                   sum(c) OVER (PARTITION BY metric, grp) AS n
            FROM merged),
        ranks AS (
            SELECT metric, grp, q, (n - 1) * q AS h FROM
                (SELECT DISTINCT metric, grp, n FROM cumulative), (SELECT unnest({quantiles}) AS q))
        SELECT r.metric, r.grp, r.q,
               (1 - (h - floor(h))) * arg_min(v, cum) FILTER (cum > floor(h))
               + (h - floor(h)) * arg_min(v, cum) FILTER (cum > ceil(h)) AS value
        FROM ranks r JOIN cumulative c USING (metric, grp)
        GROUP BY r.metric, r.grp, r.q, r.h"""


def merge_rollups(con, partitions: list[Path], raw_rows: str | None, settings) -> None:
    """Creates on `con` the tables m_<table> for each of TABLES: the rollups of `partitions`
    merged with the rollup of `raw_rows` (a FROM item of rows as reader's ``all_rows``, or
    None), computed here."""
    if raw_rows is not None:
        prepare, queries = rollup_queries(raw_rows, settings)
        for statement in prepare:
            con.execute(statement)
        for name, sql in queries.items():
            con.execute(f"CREATE TABLE raw_{name} AS {sql}")
    for name in TABLES:
        files = sql_list([partition / ROLLUP_DIR / f"{name}.parquet" for partition in partitions])
        parts = [f"SELECT * FROM read_parquet({files}, union_by_name=true)"]
        if raw_rows is not None:
            parts.append(f"SELECT * FROM raw_{name}")
        con.execute(f"CREATE TABLE m_{name} AS " + " UNION ALL BY NAME ".join(parts))


def merged_results(con, top: int, history_in_period: int) -> dict:
    """The rows of each report query (as ragmon.report.summary assembles them), computed from
    the merged rollup tables m_* that merge_rollups() made; `history_in_period`: the history
    rows they cover."""
    def run(sql: str, params=None):
        return con.execute(sql, params or []).fetchall()

    quantiles: dict = {}
    for metric, grp, q, value in run(quantile_sql("m_sketch", (0.5, 0.95, 0.99))):
        quantiles.setdefault((metric, grp), {})[round(float(q), 4)] = value

    def q(metric, grp, *levels):
        found = quantiles.get((metric, grp), {})
        return [found.get(level) for level in levels]

    token = {k: f"coalesce(sum({k}_tokens), 0)" for k in ("input", "output", "cached_input")}
    [main] = run(f"""
        SELECT coalesce(sum(n), 0), min(first_end), max(last_end),
               coalesce(sum(n) FILTER (status = 'success'), 0),
               coalesce(sum(n) FILTER (status = 'error'), 0),
               coalesce(sum(n) FILTER (status = 'cancelled'), 0),
               sum(time_sum) / sum(n), NULL, max(time_max), sum(slow), sum(very_slow),
               coalesce(sum(cost_sum), 0), sum(n_cost),
               {token['input']}, {token['output']}, {token['cached_input']},
               coalesce(sum(cache_hits), 0), coalesce(sum(cache_misses), 0),
               sum(n_cost_original), coalesce(sum(cost_original_sum), 0),
               coalesce(sum(cost_repriced_sum), 0),
               coalesce(sum(n) FILTER (model IS NOT NULL), 0),
               coalesce(sum(n) FILTER (operation IS NOT NULL), 0), ?
        FROM m_groups""", [history_in_period])
    main = list(main)
    main[7] = q("total_time", "", 0.5, 0.95, 0.99)
    [quality] = run("SELECT " + ", ".join(
        f"sum({c}_n), sum({c}_sum) / nullif(sum({c}_n), 0)" for c in QUALITY_COLUMNS)
        + " FROM m_groups")
    quality_row = []
    for i, column in enumerate(QUALITY_COLUMNS):
        measured, mean = quality[2 * i: 2 * i + 2]
        quality_row += [measured, mean, q(column, "", 0.5, 0.95) if measured else None]
    stages = [(stage, n, d_sum / n if n else None, q("stage", stage, 0.5, 0.95, 0.99), d_max,
               d_sum, share / n if n else None, t_sum, bottlenecks, by_share, by_budget)
              for stage, n, d_sum, d_max, share, t_sum, bottlenecks, by_share, by_budget in run(
                  "SELECT stage, sum(n), sum(d_sum), max(d_max), sum(share_sum), sum(t_sum), "
                  "sum(bottlenecks), sum(by_share), sum(by_budget) FROM m_stages GROUP BY stage")]
    models = [(m, n, cost, priced, tin, tout, tcached, q("model", m, 0.95)[0], errors, unnamed,
               *rest)
              for m, n, cost, priced, tin, tout, tcached, errors, unnamed, *rest in run(f"""
        SELECT coalesce(model, '(none)') AS m, sum(n), coalesce(sum(cost_sum), 0), sum(n_cost),
               {token['input']}, {token['output']}, {token['cached_input']},
               coalesce(sum(n) FILTER (status = 'error'), 0), model IS NULL AS unnamed,
               coalesce(sum(n_cost) FILTER (price_match = 'default'), 0),
               coalesce(sum(cost_sum) FILTER (price_match = 'default'), 0),
               coalesce(sum(n_cost) FILTER (price_match IS NULL), 0),
               coalesce(sum(cost_sum) FILTER (price_match IS NULL), 0)
        FROM m_groups GROUP BY m, unnamed ORDER BY min(first_end), m""")]
    operations = [(op, n, q("operation", op, 0.95)[0], errors) for op, n, errors in run("""
        SELECT operation, sum(n), coalesce(sum(n) FILTER (status = 'error'), 0) FROM m_groups
        WHERE operation IS NOT NULL GROUP BY operation
        ORDER BY sum(n) DESC, min(first_end), operation""")]
    errors = run("""
        SELECT coalesce(error_type, '(none)') AS e, sum(n) FROM m_groups
        WHERE status IS DISTINCT FROM 'success' GROUP BY e
        ORDER BY sum(n) DESC, min(first_end), e""")
    attributes = []
    for key, text, kind, xn, xsum, xmax, n, ok, distinct, present in run(f"""
        WITH groups AS (
            SELECT key, text, any_value(kind) FILTER (text IS NOT NULL) AS kind, sum(n) AS n,
                   sum(xn) AS xn, sum(xsum) AS xsum, max(xmax) AS xmax, sum(ok) AS ok,
                   min(first_end) AS first_end
            FROM m_attributes GROUP BY key, text),
        ranked AS (
            SELECT *, row_number() OVER (PARTITION BY key ORDER BY text IS NULL, n DESC,
                                                   first_end, text) AS rank,
                   count(text) OVER (PARTITION BY key) AS distinct_texts,
                   sum(CASE WHEN text IS NOT NULL THEN n END) OVER (PARTITION BY key) AS present,
                   bool_and(text IS NULL OR kind = 'VARCHAR') OVER (PARTITION BY key) AS strings
            FROM groups)
        SELECT key, text, kind, xn, xsum, xmax, n, ok / n, distinct_texts, present
        FROM ranked WHERE text IS NULL OR rank <= {TOP_VALUES} OR NOT strings
        ORDER BY key, rank"""):
        numbers = q("attribute", key, 0.5, 0.95) if text is None and xn else None
        p95 = q("attribute_value", f"{key}\0{text}", 0.95)[0] if text is not None else None
        attributes.append((key, text, kind, xn, xsum, numbers, xmax, n, p95, ok, distinct,
                           present))
    slowest = run("""
        SELECT total_time, end_time, request_id, status, error_type, model, operation, stage_map
        FROM m_top WHERE ranking = 'total_time' ORDER BY total_time DESC, end_time, seq
        LIMIT ?""", [max(0, int(top))])
    return {"main": [main], "quality": [quality_row], "stages": stages, "models": models,
            "operations": operations, "errors": errors, "attributes": attributes,
            "slowest": slowest}
