"""Reports on the request log (LOG_DIR/YYYYMMDD_performance.jsonl).

    python m2_3_report.py report  [--hours 1] [--format text|json|csv|html] [--top 10] [--output FILE]
    python m2_3_report.py stats   [--hours 24] [--bucket 1h] [--format text|json]
    python m2_3_report.py export  --output FILE.json|FILE.jsonl|FILE.csv [--hours 48]
    python m2_3_report.py config  [--format text|json]
    python m2_3_report.py cleanup [--days N] [--dry-run]
    python m2_3_report.py plot    [--output trends.png] [--hours 24] [--bucket 1h]
    python m2_3_report.py show    REQUEST_ID [--hours H] [--format text|json]
    python m2_3_report.py quality [--hours 24] [--top 10] [--format text|json]
    python m2_3_report.py compact                  # whole past days -> LOG_DIR/history (Parquet)
    python m2_3_report.py reprice   --prices FILE [--since DATE] [--dry-run]
    python m2_3_report.py reconcile --invoice FILE.csv [--tolerance 0.02] [--since DATE]

Every command takes --log-dir DIR [DIR ...] (default: LOG_DIR from the settings): several
directories or quoted glob patterns, e.g. one per replica or host, read as one log. Exit status: 0 done
(an empty period is not an error; it is said plainly), 1 nothing to plot or files cleanup could
not delete, 2 bad usage, bad settings or a missing log directory.

The same functions, for notebooks::

    from m2_3_report import load_records, build_report, format_text
    df = load_records(hours=24)            # one row per request
    print(format_text(build_report(df)))
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

from ..checks import check_positive
from .timeline import MAX_BUCKETS
from .reader import LogDirNotFound, iter_records, read_columns, read_problems, since_hours
from .sources import as_dir_list
from .formatting import format_csv, format_stats_text, format_text
from .retention import check_days, cleanup_logs

__all__ = ["load_records", "build_report", "build_stats", "format_text", "format_csv",
           "format_stats_text", "export_records", "cleanup_logs", "plot_trends", "main",
           "EXPORT_FORMATS", "quality_report", "format_quality_text"]

EXPORT_FORMATS = (".json", ".jsonl", ".csv")


def quality_report(log_dir=None, hours: float | None = 24.0, *, top: int = 10, settings=None,
                   now: float | None = None) -> dict:
    """Answer quality of the requests that ended in the last `hours` hours: scores by
    operation, model and day, feedback joined to its requests, the worst-rated requests
    (ragmon.report.quality; docs/quality.md)."""
    from .quality import quality_report as build
    return build(_log_dirs(log_dir, settings), _settings(settings), hours=_check_hours(hours),
                 top=top, now=now)


def format_quality_text(report: dict) -> str:
    from .quality import format_quality_text as render
    return render(report)


def _settings(settings=None):
    if settings is not None:
        return settings
    from ..settings import get_settings
    return get_settings()


def _check_hours(hours) -> float | None:
    if hours is None:
        return None
    return check_positive("hours", hours, "hours=24 (or None for the whole log)")


def _log_dirs(log_dir, settings):
    """`log_dir` as given (one path or pattern, or a list of them), else LOG_DIR."""
    if log_dir is None:
        return _settings(settings).log_dir
    if isinstance(log_dir, (str, os.PathLike)):
        return Path(log_dir).expanduser()
    return [os.path.expanduser(str(entry)) for entry in as_dir_list(log_dir)]


def load_records(log_dir=None, hours: float | None = None, *, settings=None,
                 now: float | None = None, workers: int | None = None,
                 progress: bool = False):
    """The records of requests that ended in the last `hours` hours (None: all) as a DataFrame,
    one row per request, oldest first.

    Columns: request_id, timestamp (UTC), start_time, total_time, status, error_type,
    operation, model, service, env, cost, relevance_score, context_precision,
    time_to_first_token, input_tokens, output_tokens, cached_input_tokens, cache_hits,
    cache_misses, stage_<name> (seconds, NaN where the request had no such stage) and
    attr_<key> for each free-form attribute. Stage metadata is not loaded (export keeps it).

    ``df.attrs["read_stats"]`` says which files were read and how many lines were skipped
    (torn or corrupt); ``df.attrs["hours"]`` and ``df.attrs["log_dir"]`` the period and
    directory. A missing directory raises LogDirNotFound (a FileNotFoundError) naming it.
    ``log_dir`` may be a list of directories or glob patterns (every replica's log at once);
    the JSONL files and the Parquet history (see ``compact``) are read together.
    ``cost_original`` is the cost before a reprice (NaN if never repriced) and ``price_match``
    how the record says it was priced (exact, pattern, default) when it says so.
    """
    hours = _check_hours(hours)
    log_dir = _log_dirs(log_dir, settings)
    df, stats = read_columns(log_dir, since_hours(hours, now), None, workers=workers,
                             progress="reading" if progress else None)
    df.attrs["read_stats"] = stats.as_dict()
    df.attrs["hours"] = hours
    df.attrs["log_dir"] = str(log_dir)
    return df


def build_report(df, settings=None, *, hours: float | None = None, top: int = 10,
                 read_stats=None, now: float | None = None) -> dict:
    """The performance report of the records in `df` (a load_records() DataFrame) as a
    JSON-able dict: the same SQL, figure for figure, as ``m2_3_report.py report`` over the log.

    ``settings``: thresholds (SLOW_QUERY_SECONDS, VERY_SLOW_QUERY_SECONDS, BOTTLENECK_SHARE,
    STAGE_BUDGETS); default the environment's. ``hours``: the period, for the header (default
    the one load_records() was called with). ``read_stats``: what was read and skipped (default
    ``df.attrs["read_stats"]``). ``top``: how many slowest requests to list."""
    from .summary import report_from_frame
    if hours is None:
        hours = df.attrs.get("hours")
    return report_from_frame(df, _settings(settings), hours=hours, top=top, now=now,
                             read_stats=read_stats)


def build_stats(df, settings=None, *, hours: float | None = None, bucket: str | None = None,
                now: float | None = None) -> dict:
    """The report plus the distributions of latency and of each stage, and a table per time
    `bucket` (a pandas frequency, default from the span): requests, error rate, latency
    percentiles, cost."""
    from .summary import stats_from_frame
    if hours is None:
        hours = df.attrs.get("hours")
    return stats_from_frame(df, _settings(settings), hours=hours, bucket=bucket, now=now)


def plot_trends(df, output="trends.png", settings=None, bucket: str | None = None) -> Path:
    """Writes the trend charts (latency percentiles, stage share, cost per hour by model)."""
    from .plots import plot_trends as _plot
    return _plot(df, output, bucket=bucket, slow_seconds=_settings(settings).SLOW_QUERY_SECONDS)


def export_records(output, log_dir=None, hours: float | None = None, *, settings=None,
                   now: float | None = None, progress: bool = False) -> dict:
    """Writes the records of the period to `output`: .json (an object with the records as
    written, stage metadata included), .jsonl (the same lines as the log) or .csv (the
    load_records() columns). Written to a temporary file and renamed, so a reader never sees
    half a file. Returns {"output", "records", "read"}."""
    output = Path(output)
    suffix = output.suffix.lower()
    if suffix not in EXPORT_FORMATS:
        raise ValueError(f"cannot export to {str(output)!r}: the extension {suffix or '(none)'!r} "
                         f"is not one of {', '.join(EXPORT_FORMATS)}; name the file e.g. "
                         "export.json or export.csv")
    hours = _check_hours(hours)
    log_dir = _log_dirs(log_dir, settings)
    since = since_hours(hours, now)
    output.parent.mkdir(parents=True, exist_ok=True)
    # A fresh name made with O_EXCL in the target directory: never a file someone placed there
    # (or a symlink to follow), and the rename below stays on one file system.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".csv":
            from .reader import export_csv
            count, stats = export_csv(log_dir, tmp, since,
                                      progress="export" if progress else None)
            read = stats.as_dict()
        else:
            from .reader import ReadStats
            from ..instrument.records import encode
            stats = ReadStats(str(log_dir))
            records = iter_records(log_dir, since, None, stats)
            if progress:
                from tqdm import tqdm
                records = tqdm(records, desc="export", unit=" records", leave=False)
            count = 0
            with open(tmp, "wb") as f:
                if suffix == ".json":
                    head = {"exported_at": _now_iso(now), "log_dir": str(log_dir), "hours": hours}
                    f.write(json.dumps(head)[:-1].encode() + b', "records": [\n')
                for record in records:
                    line = encode(record)
                    if suffix == ".json":
                        line = (b",\n" if count else b"") + line[:-1]
                    f.write(line)
                    count += 1
                if suffix == ".json":
                    tail = {"count": count, "read": stats.as_dict()}
                    f.write(b"\n], " + json.dumps(tail)[1:].encode() + b"\n")
            read = stats.as_dict()
        os.replace(tmp, output)
    finally:
        tmp.unlink(missing_ok=True)
    return {"output": str(output), "records": count, "read": read}


def _write_atomically(output: Path, text: str) -> None:
    """`text` to `output` through a fresh temporary file renamed over it: a reader never sees
    half a page."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    umask = os.umask(0o022)
    os.umask(umask)
    os.fchmod(fd, 0o666 & ~umask)  # a page to share: the mode open() would give, not mkstemp's 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp_name, output)
    finally:
        Path(tmp_name).unlink(missing_ok=True)


def _now_iso(now: float | None = None) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).isoformat()




def _check_bucket(bucket: str, hours: float) -> None:
    """A bucket must be a time span that cuts the period into at most MAX_BUCKETS rows: a 1us
    bucket over a day would build billions of empty rows."""
    import pandas as pd
    try:
        width = pd.tseries.frequencies.to_offset(bucket)
        seconds = pd.Timedelta(width).total_seconds()
    except (ValueError, TypeError):
        raise UsageError(f"--bucket {bucket!r} is not a time span; expected a pandas frequency "
                         "such as 5min, 1h or 1D") from None
    if seconds <= 0 or hours * 3600 / seconds > MAX_BUCKETS:
        raise UsageError(f"--bucket {bucket!r} cuts {hours:g} h into more than {MAX_BUCKETS:,} "
                         f"rows; choose a bucket of at least {hours * 3600 / MAX_BUCKETS:g} s, "
                         "e.g. 5min or 1h")


# --- command line ----------------------------------------------------------------------------

class UsageError(Exception):
    """Bad input on the command line or in the settings: printed, exit status 2."""


def _hours_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours > 0; e.g. --hours 24")
    return value


def _days_arg(text: str) -> int:
    try:
        return check_days(int(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days >= 1; "
                                         "e.g. --days 30") from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0")
    return value


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--log-dir", metavar="DIR", nargs="+", action="extend",
                        help="directories of the *_performance.jsonl files and their history/, "
                        "or quoted glob patterns, e.g. 'logs/*' (default: LOG_DIR)")
    parser = argparse.ArgumentParser(
        prog="m2_3_report.py", description="Reports on the request log (one JSON record per "
        "request, written by @monitored_query and PerformanceMonitor).",
        epilog="Exit status: 0 done, 1 nothing to plot or files cleanup could not delete, 2 bad usage/settings/missing log dir.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("report", parents=[common], help="summary of the last hours")
    p.add_argument("--hours", type=_hours_arg, default=1.0, help="period (default 1)")
    p.add_argument("--format", choices=("text", "json", "csv", "html"), default="text",
                   help="html: one self-contained page (charts inline, no network) to open "
                   "in a browser or send on")
    p.add_argument("--top", type=_positive_int, default=10, help="slowest requests to list")
    p.add_argument("--output", metavar="FILE", help="write the report to FILE (default: stdout)")
    p.add_argument("--exact", action="store_true",
                   help="read every record, also of the history's whole days (by default "
                   "those are read from their rollups: quantiles within 1%%, see docs/reports.md)")

    p = sub.add_parser("stats", parents=[common], help="detailed statistics with a time table")
    p.add_argument("--hours", type=_hours_arg, default=24.0, help="period (default 24)")
    p.add_argument("--bucket", help="time bucket, a pandas frequency such as 5min, 1h, 1D "
                   "(default: chosen from the span)")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("export", parents=[common], help="write the records to JSON, JSONL or CSV")
    p.add_argument("--output", required=True, metavar="FILE",
                   help="file to write; the extension picks the format: .json, .jsonl, .csv")
    p.add_argument("--hours", type=_hours_arg, default=48.0, help="period (default 48)")

    p = sub.add_parser("config", parents=[common], help="the settings in force")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("cleanup", parents=[common], help="delete log files older than N days")
    p.add_argument("--days", type=_days_arg, help="retention (default LOG_RETENTION_DAYS)")
    p.add_argument("--dry-run", action="store_true", help="only list what would be deleted")

    p = sub.add_parser("show", parents=[common],
                       help="one request's whole record (stages, tokens, cost, error) by its id")
    p.add_argument("request_id", metavar="REQUEST_ID",
                   help="from an exemplar of the latency panel, a log line or a response header")
    p.add_argument("--hours", type=_hours_arg, default=None,
                   help="only look this far back (default: the whole log)")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("quality", parents=[common],
                       help="answer quality: scores by operation, model and day, feedback "
                       "joined to its requests, the worst-rated requests")
    p.add_argument("--hours", type=_hours_arg, default=24.0, help="period (default 24)")
    p.add_argument("--top", type=_positive_int, default=10,
                   help="feedback entries and worst-rated requests to list")
    p.add_argument("--format", choices=("text", "json"), default="text")

    p = sub.add_parser("plot", parents=[common], help="trend charts to an image file")
    p.add_argument("--output", default="trends.png", metavar="FILE",
                   help="image to write, .png/.svg/.pdf (default trends.png)")
    p.add_argument("--hours", type=_hours_arg, default=24.0, help="period (default 24)")
    p.add_argument("--bucket", help="time bucket, a pandas frequency (default: from the span)")

    sub.add_parser("compact", parents=[common],
                   help="move whole past days from JSONL to Parquet (LOG_DIR/history/day=...)")

    p = sub.add_parser("reprice", parents=[common],
                       help="recompute the cost of past records with a corrected price file")
    p.add_argument("--prices", required=True, metavar="FILE", help="JSON price file")
    p.add_argument("--since", type=_date_arg, metavar="DATE", help="first day, YYYY-MM-DD (UTC)")
    p.add_argument("--dry-run", action="store_true", help="only print the change by day and model")

    p = sub.add_parser("reconcile", parents=[common],
                       help="compare spend by day and model with a provider's cost export (CSV)")
    p.add_argument("--invoice", required=True, metavar="FILE",
                   help="CSV: date,model,cost, or OpenAI's or Anthropic's cost export")
    p.add_argument("--tolerance", type=_fraction_arg, default=0.02,
                   help="relative difference to ignore (default 0.02 = 2%%)")
    return parser


def find_request(request_id: str, log_dir=None, hours: float | None = None, *,
                 settings=None) -> list[dict]:
    """Every record of `request_id` in the request log (usually one), oldest file first. The id
    comes from an exemplar on the latency histogram, a log line or a response header: the path
    from a p99 spike to the exact request. A plain scan: one id, read once."""
    if not isinstance(request_id, str) or not request_id.strip():
        raise ValueError(f"request_id={request_id!r} is empty; pass the id shown by the exemplar "
                         "or the log line, e.g. 3f2a9c1e-...")
    settings = _settings(settings)
    log_dir = Path(log_dir).expanduser() if log_dir is not None else settings.log_dir
    return [record for record in iter_records(log_dir, since_hours(_check_hours(hours)))
            if record.get("request_id") == request_id.strip()]


def format_request(record: dict) -> str:
    """One request record for a person: what happened, stage by stage, then the whole record."""
    tokens, stages = record.get("tokens") or {}, record.get("stages") or {}
    lines = [f"request {record.get('request_id')}  {record.get('timestamp')}",
             f"  operation  {record.get('operation')}  service {record.get('service')} "
             f"env {record.get('env')}  model {record.get('model')}",
             f"  status     {record.get('status')}"
             + (f"  error {record['error_type']}" if record.get("error_type") else ""),
             f"  total      {record.get('total_time', 0):.3f} s"]
    if record.get("trace_id"):  # written when OpenTelemetry output is on: the query's span
        lines.append(f"  trace      {record['trace_id']}  span {record.get('span_id')}")
    for name, stage in stages.items():
        lines.append(f"    {name:<20} {stage.get('duration', 0):8.3f} s"
                     + (f"  {json.dumps(stage['metadata'], sort_keys=True)}" if stage.get("metadata") else ""))
    cost = record.get("cost")
    lines.append(f"  tokens     in {tokens.get('input', 0)}  out {tokens.get('output', 0)}  "
                 f"cached {tokens.get('cached_input', 0)}  cost "
                 + ("unknown" if cost is None else f"${cost:.6f}"))
    lines.append("  record     " + json.dumps(record, sort_keys=True))
    return "\n".join(lines) + "\n"


def _date_arg(text: str):
    from datetime import date
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; e.g. --since 2026-11-01") from None


def _fraction_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a fraction in [0, 1); e.g. 0.02 for 2%")
    return value


def _warn_skipped(df_or_stats, err) -> None:
    stats = df_or_stats.attrs["read_stats"] if hasattr(df_or_stats, "attrs") else df_or_stats
    problems = read_problems(stats)
    if problems:
        print(f"m2_3_report: note: {'; '.join(problems)} in {stats.get('log_dir')}", file=err)


def main(argv=None, out=None, err=None) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    args = build_parser().parse_args(argv)
    try:
        return _run(args, out, err)
    except (UsageError, ValueError, LogDirNotFound) as exc:
        print(f"m2_3_report {args.command}: {exc}", file=err)
        return 2


def _run(args, out, err) -> int:
    try:
        settings = _settings()
    except ValueError as exc:  # config.ConfigError
        raise UsageError(f"bad settings: {exc}") from None
    log_dir = _log_dirs(args.log_dir, settings)
    if isinstance(log_dir, list) and len(log_dir) == 1:
        log_dir = Path(log_dir[0])
    shown = log_dir if not isinstance(log_dir, list) else ", ".join(log_dir)
    tty = err.isatty() if hasattr(err, "isatty") else False
    command = args.command

    if command == "show":
        found = find_request(args.request_id, log_dir, args.hours, settings=settings)
        if not found:
            period = f"the last {args.hours:g} h of " if args.hours else ""
            print(f"m2_3_report show: no request {args.request_id!r} in {period}{log_dir}; check "
                  "the id, --log-dir (each replica of the demo logs to LOG_DIR/INSTANCE) and "
                  "--hours", file=err)
            return 1
        if args.format == "json":
            json.dump(found[0] if len(found) == 1 else found, out, indent=2)
            out.write("\n")
        else:
            out.write("".join(format_request(record) for record in found))
        return 0

    if command == "config":
        from ..settings import describe
        values = describe(settings)
        values["(log directory in use)"] = (str(log_dir.resolve()) if isinstance(log_dir, Path)
                                            else shown)
        if args.format == "json":
            json.dump(values, out, indent=2, default=str)
            out.write("\n")
        else:
            width = max(map(len, values))
            for name, value in values.items():
                out.write(f"{name.ljust(width)} = {value}\n")
        return 0

    if command == "cleanup":
        from .sources import resolve_dirs
        days = args.days if args.days is not None else settings.LOG_RETENTION_DAYS
        failed = 0
        for directory in resolve_dirs(log_dir):
            result = cleanup_logs(directory, days, dry_run=args.dry_run)
            verb = "would delete" if args.dry_run else "deleted"
            out.write(f"{verb} {len(result.deleted)} log file(s) older than {days} day(s) in "
                      f"{directory} ({result.freed_bytes / 2**20:,.1f} MiB); kept {len(result.kept)}\n")
            for name in result.deleted:
                out.write(f"  {name}\n")
            for failure in result.failed:
                print(f"m2_3_report cleanup: could not delete {failure}", file=err)
            failed += len(result.failed)
        return 1 if failed else 0

    if command == "compact":
        from .compact import compact_logs
        for result in compact_logs(log_dir, progress=tty, settings=settings):
            out.write(f"compacted {len(result.compacted)} day(s), {result.records:,} records, "
                      f"into {result.log_dir}/history")
            if result.rejected_lines:
                out.write(f"; kept {result.rejected_lines} unreadable line(s) in rejected.jsonl")
            out.write("\n")
            for name in result.compacted:
                out.write(f"  {name}\n")
            for name in result.finished:
                out.write(f"  {name} (already in the history: deleted)\n")
            for problem in result.skipped:
                print(f"m2_3_report compact: skipped {problem}", file=err)
        return 0

    if command == "reprice":
        return _reprice(args, log_dir, settings, out, err)

    if command == "reconcile":
        return _reconcile(args, log_dir, settings, out, err)

    if command == "export":
        result = export_records(args.output, log_dir, args.hours, settings=settings, progress=tty)
        _warn_skipped(result["read"], err)
        if result["records"]:
            out.write(f"exported {result['records']:,} records from the last {args.hours:g} h "
                      f"in {shown} to {result['output']}\n")
        else:
            out.write(f"no requests in the last {args.hours:g} h in {shown}; wrote an empty "
                      f"export to {result['output']}\n")
        return 0

    if command in ("stats", "plot") and args.bucket:
        _check_bucket(args.bucket, args.hours)

    if command == "stats":
        from .summary import stats_from_log
        stats = stats_from_log(log_dir, settings, hours=args.hours, bucket=args.bucket,
                               progress=tty)
        _warn_skipped(stats["read"], err)
        if args.format == "json":
            json.dump(stats, out, indent=2)
            out.write("\n")
        else:
            out.write(format_stats_text(stats))
        return 0

    if command == "plot":
        from .plots import log_trends, trends_figure
        trends, read = log_trends(log_dir, args.hours, args.bucket)
        _warn_skipped(read, err)
        if not trends:
            print(f"m2_3_report plot: no requests in the last {args.hours:g} h in {shown}; "
                  "nothing to plot (no file written)", file=err)
            return 1
        output = Path(args.output)
        fig = trends_figure(trends=trends, slow_seconds=settings.SLOW_QUERY_SECONDS)
        output.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(output, dpi=110)
        out.write(f"wrote {output} ({trends['requests']:,} requests, last {args.hours:g} h)\n")
        return 0

    if command == "quality":
        report = quality_report(log_dir, args.hours, top=args.top, settings=settings)
        _warn_skipped(report["read"], err)
        out.write(json.dumps(report, indent=2) + "\n" if args.format == "json"
                  else format_quality_text(report))
        return 0

    if command == "report":
        # Aggregated in the engine: only the figures reach Python, whatever the log's size.
        from .summary import html_from_log, report_from_log
        if args.format == "html":
            text = html_from_log(log_dir, settings, hours=args.hours, top=args.top, progress=tty)
        else:
            report = report_from_log(log_dir, settings, hours=args.hours, top=args.top,
                                     progress=tty, exact=args.exact)
            _warn_skipped(report["read"], err)
            text = (json.dumps(report, indent=2) + "\n" if args.format == "json"
                    else format_csv(report) if args.format == "csv" else format_text(report))
        if args.output:
            _write_atomically(Path(args.output), text)
            out.write(f"wrote {args.output}\n")
        else:
            out.write(text)
        return 0

    raise UsageError(f"unknown command {command!r}")  # argparse prevents this


def _reprice(args, log_dir, settings, out, err) -> int:
    from .costs import reprice_logs
    try:
        result = reprice_logs(log_dir, args.prices, settings, since=args.since,
                              dry_run=args.dry_run)
    except FileNotFoundError as exc:
        raise UsageError(str(exc).replace("MODEL_PRICES_FILE=", "--prices ")) from None
    verb = "would reprice" if args.dry_run else "repriced"
    out.write(f"{verb} {result.records:,} records in {len(result.files)} file(s) with "
              f"{args.prices}\n")
    if result.rows:
        out.write(f"{'day':<10}  {'model':<28} {'requests':>9} {'before':>12} {'after':>12} "
                  f"{'delta':>12}\n")
        for row in result.rows:
            out.write(f"{row['day']:<10}  {row['model'][:28]:<28} {row['requests']:>9,} "
                      f"{row['old']:>12.4f} {row['new']:>12.4f} {row['delta']:>+12.4f}\n")
        total = sum(r["delta"] for r in result.rows)
        out.write(f"{'total':<10}  {'':<28} {sum(r['requests'] for r in result.rows):>9,} "
                  f"{sum(r['old'] for r in result.rows):>12.4f} "
                  f"{sum(r['new'] for r in result.rows):>12.4f} {total:>+12.4f}\n")
    if result.skipped_today:
        print(f"m2_3_report reprice: left {result.skipped_today:,} records of the day in progress "
              "as they are (writers still append to it); run reprice again tomorrow", file=err)
    for note in result.notes:
        print(f"m2_3_report reprice: {note}", file=err)
    return 0


def _reconcile(args, log_dir, settings, out, err) -> int:
    from ..instrument.pricing import PriceTable
    from .costs import read_invoice, reconcile
    try:
        invoice, shape = read_invoice(args.invoice)
    except FileNotFoundError as exc:
        raise UsageError(str(exc)) from None
    df = load_records(log_dir, None, settings=settings)
    _warn_skipped(df, err)
    days = sorted({day for day, _ in invoice})
    differences = reconcile(df, invoice, PriceTable.from_settings(settings), args.tolerance)
    out.write(f"invoice {args.invoice} ({shape} shape): {len(invoice)} day/model rows, "
              f"{days[0] if days else '-'} to {days[-1] if days else '-'}; "
              f"{len(differences)} difference(s) beyond {args.tolerance:.0%}\n")
    for d in differences:
        out.write(f"  {d.day}  {d.model:<28} computed {d.computed:>10.4f}  invoiced "
                  f"{d.invoiced:>10.4f}  delta {d.delta:>+10.4f}  {d.cause}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
