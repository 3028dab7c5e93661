"""Who spends it, exactly: spend, tokens, queries, p95 latency and quality per value of an
attribution key (tenant, team, feature, ...), from the records.

    python m2_3_report.py report --by tenant [--hours 24 | --since 2026-12-01 --until 2026-12-08]

The metrics name only the heaviest values and fold the rest into ``other``; the records carry
every query's keys (``attribution``), so this report answers for every value, over any period,
from the JSONL files and the Parquet history alike (compaction keeps ``attribution`` as a map
column). It is one GROUP BY in DuckDB: the rows never reach Python, only the listed values do,
so millions of distinct values cost the engine's memory (bounded, spilling past it), not ours.

Figures follow the main report's rules: sums are compensated (``fsum``), percentiles exact
(``quantile_cont``). The listed values, the ``rest`` (every other value) and ``without_key``
(queries that did not carry the key) add up to the period's totals, to the cent.
"""
from __future__ import annotations

import re
from datetime import datetime, timezone

from ..instrument.tokens import KINDS as TOKEN_KINDS
from .formatting import duration, money, percent
from .reader import sql_quote

KEY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")
TOKEN_COLUMNS = tuple(kind.column for kind in TOKEN_KINDS if kind.metric_label is not None)
# How many values of each configured key the HTML page's "Who spends it" section lists.
SECTION_TOP = 10


def check_key(key: object) -> str:
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise ValueError(f"--by {key!r} is not an attribution key; expected a lower-case name "
                         "such as tenant, team or feature (ATTRIBUTION_KEYS)")
    return key


def _figures(value_sql: str) -> str:
    tokens = ", ".join(f"sum({c})::BIGINT AS {c}" for c in TOKEN_COLUMNS)
    return (f"{value_sql} AS value, count(*) AS queries, "
            "count(*) FILTER (status = 'error') AS errors, "
            "coalesce(fsum(cost), 0) AS spend, count(cost) AS priced, "
            f"{tokens}, quantile_cont(total_time, 0.95) AS p95_latency, "
            "avg(relevance_score) AS relevance, avg(context_precision) AS context_precision")


def _row(names, values) -> dict:
    row = dict(zip(names, values))
    row["tokens"] = {c[:-len("_tokens")]: int(row.pop(c) or 0) for c in TOKEN_COLUMNS}
    row["queries"] = int(row["queries"])
    row["errors"] = int(row["errors"])
    row["priced"] = int(row["priced"])
    row["spend"] = float(row["spend"] or 0.0)
    return row


def by_key(con, inside: str, key: str, top: int = 10) -> dict:
    """The figures per value of `key` over the rows of ``all_rows`` matching `inside`: the
    `top` values by spend (``values``; top 0 lists every value), the rest together, the
    queries without the key, the totals and how many distinct values there were."""
    check_key(key)
    value = f"attribution[{sql_quote(key)}]"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE by_value AS
        SELECT {_figures('value_of')} FROM (SELECT *, {value} AS value_of FROM all_rows
                                             WHERE {inside})
        GROUP BY value_of""")

    def rows(sql: str) -> list[dict]:
        result = con.execute(sql)
        names = [d[0] for d in result.description]
        return [_row(names, r) for r in result.fetchall()]

    distinct, = con.execute("SELECT count(*) FROM by_value WHERE value IS NOT NULL").fetchone()
    limit = f"LIMIT {int(top)}" if top else ""
    listed = rows("SELECT * FROM by_value WHERE value IS NOT NULL "
                  f"ORDER BY spend DESC, queries DESC, value {limit}")
    names = [r["value"] for r in listed]
    listed_sql = "[" + ", ".join(sql_quote(n) for n in names) + "]::VARCHAR[]"
    # The rest, the rows without the key and the total need their own percentiles: one more
    # scan, grouped by part, and over every row (the empty grouping set).
    parts = {r["value"]: r for r in rows(f"""
        SELECT {_figures('part')} FROM (
            SELECT *, CASE WHEN value_of IS NULL THEN 'without'
                           WHEN list_contains({listed_sql}, value_of) THEN 'listed'
                           ELSE 'rest' END AS part
            FROM (SELECT *, {value} AS value_of FROM all_rows WHERE {inside}))
        GROUP BY GROUPING SETS ((part), ())""")}
    empty = _row(["value", "queries", "errors", "spend", "priced", *TOKEN_COLUMNS,
                  "p95_latency", "relevance", "context_precision"],
                 [None, 0, 0, 0.0, 0, *([0] * len(TOKEN_COLUMNS)), None, None, None])
    rest, without, total = (parts.get(name, dict(empty, tokens=dict(empty["tokens"])))
                            for name in ("rest", "without", None))
    for row in (*listed, rest, without, total):
        row["share_of_spend"] = row["spend"] / total["spend"] if total["spend"] else None
    for row in (rest, without, total):
        row.pop("value", None)
    return {"key": key, "distinct_values": int(distinct), "values": listed,
            "rest": {**rest, "values": int(distinct) - len(listed)}, "without_key": without,
            "total": total}


def every_value(con, inside: str, key: str):
    """(column names, batches of rows) of every value of `key`, heaviest first: for CSV."""
    check_key(key)
    value = f"attribution[{sql_quote(key)}]"
    result = con.execute(f"""SELECT {_figures('value_of')} FROM (
        SELECT *, {value} AS value_of FROM all_rows WHERE {inside} AND {value} IS NOT NULL)
        GROUP BY value_of ORDER BY spend DESC, queries DESC, value""")
    names = [d[0] for d in result.description]

    def batches():
        while True:
            chunk = result.fetchmany(50_000)
            if not chunk:
                return
            yield chunk
    return names, batches()


def keys_present(con, inside: str, limit: int = 20) -> list[str]:
    """The attribution keys the period's records carry, most used first."""
    return [k for k, in con.execute(
        f"SELECT k FROM (SELECT unnest(map_keys(attribution)) AS k FROM all_rows "
        f"WHERE {inside} AND attribution IS NOT NULL) GROUP BY k ORDER BY count(*) DESC, k "
        f"LIMIT {int(limit)}").fetchall()]


def who_spends(con, inside: str, keys, top: int = SECTION_TOP) -> list[dict]:
    """by_key() of each of `keys` the period's records carry (the HTML page's section)."""
    present = keys_present(con, inside)
    return [by_key(con, inside, key, top) for key in keys if key in present]


def parse_time(text: str) -> float:
    """Epoch seconds of an ISO date or date-time (UTC unless it names an offset)."""
    try:
        moment = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r} is not a date or time; expected e.g. 2026-12-01 or "
                         "2026-12-01T08:00 (UTC)") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return moment.timestamp()


def report_by(log_dir, key: str, *, since: float | None = None, until: float | None = None,
              top: int = 10, workers: int | None = None, progress: bool = False) -> dict:
    """by_key() over the records of `log_dir` that ended in [since, until) (None: open), with
    the period and what was read."""
    from .reader import ReadStats, find_sources, load_rows
    import os
    import tempfile
    from pathlib import Path

    check_key(key)
    sources = find_sources(log_dir, since, until)
    stats = ReadStats(str(log_dir) if isinstance(log_dir, (str, os.PathLike))
                      else ", ".join(str(d) for d in sources.dirs))
    with tempfile.TemporaryDirectory(prefix="ragmon-report-") as spill:
        con, inside, stats = load_rows(sources, since, until, workers=workers,
                                       progress="reading" if progress else None, stats=stats,
                                       spill_dir=Path(spill), count_history=False)
        try:
            if con is None:
                figures = None
            else:
                con.execute("SET preserve_insertion_order = false")
                figures = by_key(con, inside, key, top)
        finally:
            if con is not None:
                con.close()
    report = {"title": f"Who spends it, by {key}",
              "generated_at": datetime.now(timezone.utc).isoformat(),
              "period": {"since": _iso(since), "until": _iso(until)},
              "read": stats.as_dict()}
    if figures is None or not figures["total"]["queries"]:
        report.update({"empty": True, "key": key,
                       "message": f"no requests in this period in {stats.log_dir}"})
        return report
    report["empty"] = False
    report.update(figures)
    return report


def _iso(epoch: float | None) -> str | None:
    return None if epoch is None else datetime.fromtimestamp(epoch, timezone.utc).isoformat()


# --- formats --------------------------------------------------------------------------------------

HEADERS = ("value", "queries", "errors", "spend", "share", "input tokens", "output tokens",
           "p95 latency", "relevance")


def table_rows(figures: dict) -> list[list[str]]:
    """The rows of a by_key() table as text: the listed values, the rest, the queries without
    the key and the total."""
    def cells(label: str, row: dict) -> list[str]:
        return [label, f"{row['queries']:,}", f"{row['errors']:,}", money(row["spend"]),
                percent(row.get("share_of_spend")), f"{row['tokens'].get('input', 0):,}",
                f"{row['tokens'].get('output', 0):,}", duration(row["p95_latency"]),
                "-" if row["relevance"] is None else f"{row['relevance']:.3f}"]

    out = [cells(row["value"], row) for row in figures["values"]]
    rest = figures["rest"]
    if rest["queries"]:
        out.append(cells(f"({rest['values']:,} other values)", rest))
    if figures["without_key"]["queries"]:
        out.append(cells(f"(no {figures['key']})", figures["without_key"]))
    out.append(cells("total", figures["total"]))
    return out


def format_text(report: dict) -> str:
    lines = [report["title"], "=" * len(report["title"]),
             f"period: {report['period']['since'] or 'start of the log'} to "
             f"{report['period']['until'] or 'now'}"]
    if report.get("empty"):
        return "\n".join(lines + [report["message"], ""])
    lines.append(f"{report['distinct_values']:,} distinct values of {report['key']}; "
                 "exact figures from the records")
    rows = [list(HEADERS)] + table_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(HEADERS))]
    for n, row in enumerate(rows):
        lines.append("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


CSV_COLUMNS = ("value", "queries", "errors", "spend", "priced", *TOKEN_COLUMNS, "p95_latency",
               "relevance", "context_precision")


def write_csv(log_dir, key: str, out, *, since=None, until=None, workers=None) -> int:
    """Every value of `key` as CSV rows to `out` (a text stream), heaviest first; returns how
    many values."""
    import csv
    import os
    import tempfile
    from pathlib import Path

    from .reader import ReadStats, find_sources, load_rows

    sources = find_sources(log_dir, since, until)
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    count = 0
    with tempfile.TemporaryDirectory(prefix="ragmon-report-") as spill:
        con, inside, _ = load_rows(sources, since, until, workers=workers, spill_dir=Path(spill),
                                   count_history=False,
                                   stats=ReadStats(str(log_dir) if isinstance(
                                       log_dir, (str, os.PathLike)) else "log"))
        if con is None:
            return 0
        try:
            names, batches = every_value(con, inside, key)
            order = [names.index(c) for c in CSV_COLUMNS]
            for batch in batches:
                writer.writerows([row[i] for i in order] for row in batch)
                count += len(batch)
        finally:
            con.close()
    return count
