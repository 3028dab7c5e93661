"""The quality report: evaluation scores by operation, model and day; user feedback joined to its
requests; the worst-rated requests with their ids.

It reads two kinds of records, joined by request id:

- the request records (``YYYYMMDD_performance.jsonl`` and the Parquet history), through the
  report's own reader: ``relevance_score``, ``context_precision``, the named ``scores`` and the
  ``retrieval`` health of each request;
- the evaluation and feedback records written after the answer (``YYYYMMDD_quality.jsonl``
  beside them, see ragmon.instrument.quality): a late score of a name replaces the score of the
  same name the request carried; feedback is counted and listed with its request.

Records of evaluations and feedback whose request is not in the period read (or in no log read,
say another replica's) are counted as unmatched, never guessed. A request's *feedback value* is
the mean of its feedback (thumbs up 1, down 0; a rating r of 1..5 as (r - 1) / 4); its *score*
is the mean of its scores. The worst-rated requests are those with the lowest feedback value,
then the lowest score; requests with neither are not ranked.
"""
from __future__ import annotations

import math
import time
from datetime import datetime, timezone
from pathlib import Path

from ..instrument.records import QUALITY_FILE_GLOB
from .reader import ReadStats, load_rows, since_hours, sql_list, sql_quote
from .sources import file_date, find_sources, own_regular_file

# Score names shown as columns, the most frequent first; like metric labels they are bounded.
MAX_SCORE_COLUMNS = 20


def _number(x: str) -> str:
    """A JSON value as a finite DOUBLE, else NULL (a string of digits is no number)."""
    return (f"(CASE WHEN json_type({x}) IN ('BIGINT', 'UBIGINT', 'DOUBLE') "
            f"AND isfinite(TRY_CAST({x} AS DOUBLE)) THEN TRY_CAST({x} AS DOUBLE) END)")


def _score(x: str) -> str:
    value = _number(x)
    return f"(CASE WHEN {value} BETWEEN 0 AND 1 THEN {value} END)"


def quality_files(dirs, since: float | None) -> list[Path]:
    """The evaluation and feedback files of `dirs` that can hold records about requests ending
    after `since` (they are written after the request, so from its day on)."""
    found = []
    for directory in dirs:
        for path in Path(directory).glob(QUALITY_FILE_GLOB):
            day = file_date(path)
            if day is None or not own_regular_file(path, Path(directory)):
                continue
            if since is None or day.timestamp() + 86400 > since:
                found.append(path)
    return sorted(found)


_QUALITY_COLUMNS = ("kind VARCHAR, request_id VARCHAR, written_at DOUBLE, scores JSON, feedback VARCHAR, "
                    "thumbs VARCHAR, rating DOUBLE, reason VARCHAR")


def _load_quality_records(con, files: list[Path]) -> None:
    if not files:
        con.execute(f"CREATE TABLE qrec ({_QUALITY_COLUMNS})")
        return
    con.execute(f"""
        CREATE TABLE qrec AS
        SELECT json_extract_string(j, '$.kind') AS kind,
               json_extract_string(j, '$.request_id') AS request_id,
               {_number("json_extract(j, '$.start_time')")} AS written_at,
               CASE WHEN json_type(json_extract(j, '$.scores')) = 'OBJECT'
                    THEN json_extract(j, '$.scores') END AS scores,
               json_extract_string(j, '$.feedback') AS feedback,
               json_extract_string(j, '$.thumbs') AS thumbs,
               {_number("json_extract(j, '$.rating')")} AS rating,
               json_extract_string(j, '$.reason') AS reason
        FROM read_ndjson_objects({sql_list(files)}, ignore_errors=true) t(j)
        WHERE json_valid(j) AND json_type(j) = 'OBJECT'
          AND json_extract_string(j, '$.kind') IN ('evaluation', 'feedback')
          AND json_extract_string(j, '$.request_id') IS NOT NULL""")


def _build_tables(con, inside: str) -> None:
    con.execute(f"""
        CREATE TABLE req AS
        SELECT request_id, end_time, operation, model, status, total_time,
               relevance_score, context_precision,
               CASE WHEN json_type(json_extract(extra_json, '$.scores')) = 'OBJECT'
                    THEN json_extract(extra_json, '$.scores') END AS scores,
               {_number("json_extract(extra_json, '$.retrieval.documents')")} AS documents,
               {_score("json_extract(extra_json, '$.retrieval.top_score')")} AS top_score
        FROM all_rows WHERE {inside} AND request_id IS NOT NULL""")
    # Every score of every request: what it carried, then what came later (the latest wins).
    con.execute(f"""
        CREATE TABLE score_rows AS
        WITH carried AS (
            SELECT request_id, 'relevance_score' AS name, relevance_score AS value,
                   end_time AS written_at FROM req WHERE relevance_score BETWEEN 0 AND 1
            UNION ALL
            SELECT request_id, 'context_precision', context_precision, end_time
            FROM req WHERE context_precision BETWEEN 0 AND 1
            UNION ALL
            SELECT request_id, e.key, {_score('e.value')}, end_time
            FROM (SELECT request_id, end_time,
                         unnest(map_entries(TRY_CAST(scores AS MAP(VARCHAR, JSON)))) AS e
                  FROM req WHERE scores IS NOT NULL)
        ), late AS (
            SELECT q.request_id, e.key AS name, {_score('e.value')} AS value,
                   coalesce(q.written_at, 'infinity'::DOUBLE) AS written_at
            FROM (SELECT request_id, written_at,
                         unnest(map_entries(TRY_CAST(scores AS MAP(VARCHAR, JSON)))) AS e
                  FROM qrec WHERE kind = 'evaluation' AND scores IS NOT NULL) q
            JOIN req USING (request_id)
        )
        SELECT request_id, name, arg_max(value, written_at) AS value
        FROM (SELECT * FROM carried UNION ALL SELECT * FROM late)
        WHERE value IS NOT NULL AND name IS NOT NULL
        GROUP BY request_id, name""")
    con.execute("""
        CREATE TABLE fb AS
        SELECT q.request_id, q.written_at, q.feedback, q.thumbs, q.rating, q.reason,
               CASE WHEN q.thumbs = 'up' THEN 1.0 WHEN q.thumbs = 'down' THEN 0.0
                    WHEN q.rating BETWEEN 1 AND 5 THEN (q.rating - 1) / 4.0
                    WHEN q.feedback = 'positive' THEN 1.0 WHEN q.feedback = 'negative' THEN 0.0
                    WHEN q.feedback = 'neutral' THEN 0.5 END AS value
        FROM qrec q JOIN req USING (request_id) WHERE q.kind = 'feedback'""")
    con.execute("""
        CREATE TABLE per_request AS
        SELECT r.request_id, r.end_time, r.operation, r.model, r.status, r.total_time,
               r.documents, r.top_score, s.score, s.scores, f.feedback_value, f.feedback_count,
               f.positive, f.negative, f.neutral, f.reasons
        FROM req r
        LEFT JOIN (SELECT request_id, avg(value) AS score,
                          map_from_entries(list({'key': name, 'value': value} ORDER BY name))
                              AS scores
                   FROM score_rows GROUP BY request_id) s USING (request_id)
        LEFT JOIN (SELECT request_id, avg(value) AS feedback_value, count(*) AS feedback_count,
                          count(*) FILTER (feedback = 'positive') AS positive,
                          count(*) FILTER (feedback = 'negative') AS negative,
                          count(*) FILTER (feedback = 'neutral') AS neutral,
                          list(DISTINCT reason) FILTER (reason IS NOT NULL) AS reasons
                   FROM fb GROUP BY request_id) f USING (request_id)""")


def _groups(con, key_sql: str, names: list[str]) -> list[dict]:
    """Requests, mean of each score, feedback and retrieval health per value of `key_sql`."""
    means = "".join(f", avg(value) FILTER (name = {sql_quote(n)}) AS s{i}"
                    f", count(value) FILTER (name = {sql_quote(n)}) AS c{i}"
                    for i, n in enumerate(names))
    rows = con.execute(f"""
        WITH keyed AS (SELECT *, {key_sql} AS k FROM per_request),
        counts AS (
            SELECT k, count(*) AS requests, sum(coalesce(positive, 0)) AS positive,
                   sum(coalesce(negative, 0)) AS negative, sum(coalesce(neutral, 0)) AS neutral,
                   count(documents) AS retrievals,
                   count(*) FILTER (documents = 0) AS empty_retrievals,
                   avg(top_score) AS mean_top_score, avg(score) AS mean_score
            FROM keyed GROUP BY k),
        scored AS (
            SELECT k{means} FROM keyed JOIN score_rows USING (request_id) GROUP BY k)
        SELECT * FROM counts LEFT JOIN scored USING (k) ORDER BY k NULLS LAST""").fetchall()
    out = []
    for row in rows:
        (key, requests, positive, negative, neutral, retrievals, empty, top, mean), rest = \
            row[:9], row[9:]
        feedback = int(positive) + int(negative) + int(neutral)
        scores = {}
        for i, name in enumerate(names):
            value, count = (rest[2 * i], rest[2 * i + 1]) if rest else (None, 0)
            if count:
                scores[name] = {"mean": _r(value), "count": int(count)}
        out.append({"key": key, "requests": int(requests), "mean_score": _r(mean),
                    "scores": scores,
                    "feedback": {"positive": int(positive), "negative": int(negative),
                                 "neutral": int(neutral)},
                    "negative_share": _r(negative / feedback) if feedback else None,
                    "retrievals": int(retrievals), "empty_retrievals": int(empty),
                    "empty_retrieval_share": _r(empty / retrievals) if retrievals else None,
                    "mean_top_score": _r(top)})
    return out


def _r(value):
    """A mean or share to 6 decimals: the engine adds in parallel, in no fixed order, and the
    last bits of a float sum follow the order; the report must not."""
    return None if value is None else round(float(value), 6)


def _iso(epoch) -> str | None:
    if epoch is None or not math.isfinite(epoch):
        return None
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat(timespec="seconds")


def quality_report(log_dir, settings=None, *, hours: float | None = None, top: int = 10,
                   now: float | None = None, workers: int | None = None) -> dict:
    """The quality report of the requests that ended in the last `hours` hours (None: all) in
    `log_dir` (one directory, a pattern or a list, as the other reports take)."""
    if isinstance(top, bool) or not isinstance(top, int) or top < 0:
        raise ValueError(f"top={top!r} must be a whole number >= 0, e.g. top=10")
    now = time.time() if now is None else now
    since = since_hours(hours, now)
    sources = find_sources(log_dir, since, None)
    stats = ReadStats(str(log_dir) if isinstance(log_dir, (str, Path))
                      else ", ".join(str(d) for d in sources.dirs))
    files = quality_files(sources.dirs, since)
    report = {"period_hours": hours, "generated_at": _iso(now), "log_dir": stats.log_dir,
              "quality_files": [str(f) for f in files]}
    con, inside, stats = load_rows(sources, since, None, full=True, workers=workers,
                                   stats=stats)
    if con is None:
        from .reader import connect
        con, inside = connect(workers), "false"
        con.execute("CREATE TABLE all_rows (request_id VARCHAR, end_time DOUBLE, "
                    "operation VARCHAR, model VARCHAR, status VARCHAR, total_time DOUBLE, "
                    "relevance_score DOUBLE, context_precision DOUBLE, extra_json VARCHAR)")
    try:
        _load_quality_records(con, files)
        _build_tables(con, inside)
        report.update(_figures(con, top))
    finally:
        con.close()
    report["read"] = stats.as_dict()
    return report


def _figures(con, top: int) -> dict:
    names = [row[0] for row in con.execute(
        "SELECT name FROM score_rows GROUP BY name ORDER BY count(*) DESC, name "
        f"LIMIT {MAX_SCORE_COLUMNS}").fetchall()]
    [(n_requests, scored, with_feedback)] = con.execute(
        "SELECT count(*), count(score), count(feedback_value) FROM per_request").fetchall()
    [(evaluations, evaluations_matched, feedback, feedback_matched)] = con.execute("""
        SELECT count(*) FILTER (kind = 'evaluation'),
               count(*) FILTER (kind = 'evaluation' AND request_id IN (SELECT request_id FROM req)),
               count(*) FILTER (kind = 'feedback'),
               count(*) FILTER (kind = 'feedback' AND request_id IN (SELECT request_id FROM req))
        FROM qrec""").fetchall()
    entries = con.execute(f"""
        SELECT f.request_id, f.written_at, f.feedback, f.thumbs, f.rating, f.reason, r.operation,
               r.model, r.status, r.total_time, r.end_time
        FROM fb f JOIN req r USING (request_id)
        ORDER BY f.written_at DESC NULLS LAST, f.request_id LIMIT {top}""").fetchall()
    worst = con.execute(f"""
        SELECT request_id, end_time, operation, model, status, feedback_value, feedback_count,
               negative, reasons, score, scores
        FROM per_request WHERE feedback_value IS NOT NULL OR score IS NOT NULL
        ORDER BY feedback_value ASC NULLS LAST, score ASC NULLS LAST, end_time DESC,
                 request_id LIMIT {top}""").fetchall()
    return {
        "requests": int(n_requests), "scored_requests": int(scored),
        "requests_with_feedback": int(with_feedback), "score_names": names,
        "by_operation": _groups(con, "operation", names),
        "by_model": _groups(con, "model", names),
        "by_day": _groups(con, "strftime(make_timestamp((end_time * 1e6)::BIGINT), '%Y-%m-%d')",
                          names),
        "evaluations": {"late": int(evaluations), "matched": int(evaluations_matched),
                        "unmatched": int(evaluations) - int(evaluations_matched)},
        "feedback": {
            "total": int(feedback), "matched": int(feedback_matched),
            "unmatched": int(feedback) - int(feedback_matched),
            "latest": [{"request_id": rid, "at": _iso(at), "feedback": cls, "thumbs": thumbs,
                        "rating": None if rating is None else int(rating), "reason": reason,
                        "operation": op, "model": model, "status": status,
                        "total_time": total, "request_at": _iso(end)}
                       for rid, at, cls, thumbs, rating, reason, op, model, status, total, end
                       in entries]},
        "worst": [{"request_id": rid, "at": _iso(end), "operation": op, "model": model,
                   "status": status, "feedback_value": _r(value),
                   "feedback_count": int(count or 0), "negative_feedback": int(negative or 0),
                   "reasons": sorted(reasons or []), "score": _r(score),
                   "scores": dict(scores or {})}
                  for rid, end, op, model, status, value, count, negative, reasons, score, scores
                  in worst],
    }


# --- text --------------------------------------------------------------------------------------

def _fmt(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _share(value) -> str:
    return "-" if value is None else f"{value * 100:.1f}%"


def _table(title: str, label: str, groups: list[dict], names: list[str]) -> list[str]:
    shown = names[:6]  # a readable width; the JSON format has every name
    lines = [title]
    header = (f"  {label:<24} {'requests':>8} {'score':>6} "
              + " ".join(f"{n[:14]:>14}" for n in shown)
              + f" {'feedback +/-/=':>15} {'neg':>6} {'empty':>6} {'top':>5}")
    lines.append(header)
    for g in groups:
        fb = g["feedback"]
        lines.append(
            f"  {str(g['key'] if g['key'] is not None else '(none)')[:24]:<24} "
            f"{g['requests']:>8} {_fmt(g['mean_score']):>6} "
            + " ".join(f"{_fmt(g['scores'].get(n, {}).get('mean')):>14}" for n in shown)
            + f" {str(fb['positive']) + '/' + str(fb['negative']) + '/' + str(fb['neutral']):>15}"
            f" {_share(g['negative_share']):>6} {_share(g['empty_retrieval_share']):>6}"
            f" {_fmt(g['mean_top_score']):>5}")
    return lines


def format_quality_text(report: dict) -> str:
    """The quality report for a person."""
    period = (f"the last {report['period_hours']:g} h" if report.get("period_hours")
              else "the whole log")
    lines = [f"Answer quality, {period} ({report['log_dir']})",
             f"  {report['requests']} requests, {report['scored_requests']} scored, "
             f"{report['requests_with_feedback']} with feedback; "
             f"{report['evaluations']['late']} late evaluation(s) "
             f"({report['evaluations']['unmatched']} for requests not in this period/log), "
             f"{report['feedback']['total']} feedback record(s) "
             f"({report['feedback']['unmatched']} unmatched)"]
    if not report["requests"]:
        return "\n".join(lines + ["  no requests in the period"]) + "\n"
    names = report["score_names"]
    if len(names) > 6:
        lines.append(f"  scores shown: {', '.join(names[:6])} (all {len(names)} in --format json)")
    for title, label, key in (("By operation", "operation", "by_operation"),
                              ("By model", "model", "by_model"), ("By day (UTC)", "day", "by_day")):
        lines.append("")
        lines.extend(_table(title, label, report[key], names))
    lines += ["", "Latest feedback, joined to its request"]
    for f in report["feedback"]["latest"]:
        given = f["thumbs"] and f"thumbs {f['thumbs']}" or (
            f"rating {f['rating']}" if f["rating"] is not None else f["feedback"])
        lines.append(f"  {f['at'] or '-':<25} {f['request_id']:<24} {given:<12} "
                     f"{f['reason'] or '':<16} {f['operation']} {f['model'] or ''} "
                     f"{f['status']} {_fmt(f['total_time'], 3)} s")
    if not report["feedback"]["latest"]:
        lines.append("  (none)")
    lines += ["", "Worst-rated requests (lowest feedback, then lowest score)"]
    for w in report["worst"]:
        scores = ", ".join(f"{k} {v:.2f}" for k, v in sorted(w["scores"].items()))
        lines.append(f"  {w['request_id']:<24} {w['at'] or '-':<25} {w['operation']} "
                     f"{w['model'] or ''}  feedback {_fmt(w['feedback_value'])}"
                     f" ({w['feedback_count']})  score {_fmt(w['score'])}"
                     + (f"  [{', '.join(w['reasons'])}]" if w["reasons"] else "")
                     + (f"  {scores}" if scores else ""))
    if not report["worst"]:
        lines.append("  (no request has a score or feedback)")
    lines.append("")
    lines.append("  python m2_3_report.py show REQUEST_ID   # a request's whole record")
    return "\n".join(lines) + "\n"
