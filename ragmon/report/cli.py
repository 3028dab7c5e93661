"""Reports on the request log (LOG_DIR/YYYYMMDD_performance.jsonl).

    python m2_3_report.py report  [--hours 1] [--format text|json|csv] [--top 10]
    python m2_3_report.py stats   [--hours 24] [--bucket 1h] [--format text|json]
    python m2_3_report.py export  --output FILE.json|FILE.jsonl|FILE.csv [--hours 48]
    python m2_3_report.py config  [--format text|json]
    python m2_3_report.py cleanup [--days N] [--dry-run]
    python m2_3_report.py plot    [--output trends.png] [--hours 24] [--bucket 1h]
    python m2_3_report.py show    REQUEST_ID [--hours H] [--format text|json]

Every command takes --log-dir DIR (default: LOG_DIR from the settings). Exit status: 0 done
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

from .analysis import build_report as _build_report
from .analysis import build_stats as _build_stats
from .reader import LogDirNotFound, iter_records, read_columns, read_problems, since_hours
from .formatting import format_csv, format_stats_text, format_text
from .retention import check_days, cleanup_logs

__all__ = ["load_records", "build_report", "build_stats", "format_text", "format_csv",
           "format_stats_text", "export_records", "cleanup_logs", "plot_trends", "main",
           "EXPORT_FORMATS"]

EXPORT_FORMATS = (".json", ".jsonl", ".csv")


def _settings(settings=None):
    if settings is not None:
        return settings
    from ..settings import get_settings
    return get_settings()


def _check_hours(hours) -> float | None:
    if hours is None:
        return None
    if (isinstance(hours, bool) or not isinstance(hours, (int, float)) or not math.isfinite(hours)
            or hours <= 0):
        raise ValueError(f"hours={hours!r} is not a period; expected a number of hours > 0, "
                         "e.g. hours=24 (or None for the whole log)")
    return float(hours)


def load_records(log_dir=None, hours: float | None = None, *, settings=None,
                 now: float | None = None, workers: int | None = None):
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
    """
    hours = _check_hours(hours)
    log_dir = Path(log_dir).expanduser() if log_dir is not None else _settings(settings).log_dir
    df, stats = read_columns(log_dir, since_hours(hours, now), None, workers=workers)
    df.attrs["read_stats"] = stats.as_dict()
    df.attrs["hours"] = hours
    df.attrs["log_dir"] = str(log_dir)
    return df


def build_report(df, settings=None, *, hours: float | None = None, top: int = 10,
                 read_stats=None, now: float | None = None) -> dict:
    """The report dict for `df` (see ragmon.report.analysis.build_report); the period defaults to the
    one load_records() was called with."""
    if hours is None:
        hours = df.attrs.get("hours")
    return _build_report(df, _settings(settings), hours=hours, top=top, read_stats=read_stats,
                         now=now)


def build_stats(df, settings=None, *, hours: float | None = None, bucket: str | None = None,
                now: float | None = None) -> dict:
    if hours is None:
        hours = df.attrs.get("hours")
    return _build_stats(df, _settings(settings), hours=hours, bucket=bucket, now=now)


def plot_trends(df, output="trends.png", settings=None, bucket: str | None = None) -> Path:
    """Writes the trend charts (latency percentiles, stage share, cost per hour by model)."""
    from .plots import plot_trends as _plot
    return _plot(df, output, bucket=bucket, slow_seconds=_settings(settings).SLOW_QUERY_SECONDS)


def export_records(output, log_dir=None, hours: float | None = None, *, settings=None,
                   now: float | None = None) -> dict:
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
    log_dir = Path(log_dir).expanduser() if log_dir is not None else _settings(settings).log_dir
    since = since_hours(hours, now)
    output.parent.mkdir(parents=True, exist_ok=True)
    # A fresh, unpredictable name created exclusively (O_EXCL): a symlink planted at a guessable
    # temporary name cannot redirect the export into another file.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if suffix == ".csv":
            df, stats = read_columns(log_dir, since, None)
            _csv_ready(df).to_csv(tmp, index=False)
            count, read = len(df), stats.as_dict()
        else:
            from .reader import ReadStats
            from ..instrument.records import encode
            stats = ReadStats(str(log_dir))
            count = 0
            with open(tmp, "wb") as f:
                if suffix == ".json":
                    head = {"exported_at": _now_iso(now), "log_dir": str(log_dir), "hours": hours}
                    f.write(json.dumps(head)[:-1].encode() + b', "records": [\n')
                for record in iter_records(log_dir, since, None, stats):
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


def _csv_ready(df):
    """Lists (entities) as JSON arrays, so a CSV cell reads back unambiguously."""
    out = df.copy()
    for column in out.columns:
        if out[column].dtype == object and column != "request_id":
            out[column] = out[column].map(
                lambda v: json.dumps(list(v)) if isinstance(v, (tuple, list)) else v,
                na_action="ignore")
    return out


def _now_iso(now: float | None = None) -> str:
    from datetime import datetime, timezone
    return datetime.fromtimestamp(time.time() if now is None else now, timezone.utc).isoformat()


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
    common.add_argument("--log-dir", metavar="DIR",
                        help="directory of the *_performance.jsonl files (default: LOG_DIR)")
    parser = argparse.ArgumentParser(
        prog="m2_3_report.py", description="Reports on the request log (one JSON record per "
        "request, written by @monitored_query and PerformanceMonitor).",
        epilog="Exit status: 0 done, 1 nothing to plot or files cleanup could not delete, 2 bad usage/settings/missing log dir.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("report", parents=[common], help="summary of the last hours")
    p.add_argument("--hours", type=_hours_arg, default=1.0, help="period (default 1)")
    p.add_argument("--format", choices=("text", "json", "csv"), default="text")
    p.add_argument("--top", type=_positive_int, default=10, help="slowest requests to list")

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

    p = sub.add_parser("plot", parents=[common], help="trend charts to an image file")
    p.add_argument("--output", default="trends.png", metavar="FILE",
                   help="image to write, .png/.svg/.pdf (default trends.png)")
    p.add_argument("--hours", type=_hours_arg, default=24.0, help="period (default 24)")
    p.add_argument("--bucket", help="time bucket, a pandas frequency (default: from the span)")
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
    for name, stage in stages.items():
        lines.append(f"    {name:<20} {stage.get('duration', 0):8.3f} s"
                     + (f"  {json.dumps(stage['metadata'], sort_keys=True)}" if stage.get("metadata") else ""))
    cost = record.get("cost")
    lines.append(f"  tokens     in {tokens.get('input', 0)}  out {tokens.get('output', 0)}  "
                 f"cached {tokens.get('cached_input', 0)}  cost "
                 + ("unknown" if cost is None else f"${cost:.6f}"))
    lines.append("  record     " + json.dumps(record, sort_keys=True))
    return "\n".join(lines) + "\n"


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
    log_dir = Path(args.log_dir).expanduser() if args.log_dir else settings.log_dir
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
        values["(log directory in use)"] = str(log_dir.resolve())
        if args.format == "json":
            json.dump(values, out, indent=2, default=str)
            out.write("\n")
        else:
            width = max(map(len, values))
            for name, value in values.items():
                out.write(f"{name.ljust(width)} = {value}\n")
        return 0

    if command == "cleanup":
        days = args.days if args.days is not None else settings.LOG_RETENTION_DAYS
        result = cleanup_logs(log_dir, days, dry_run=args.dry_run)
        verb = "would delete" if args.dry_run else "deleted"
        out.write(f"{verb} {len(result.deleted)} log file(s) older than {days} day(s) in "
                  f"{log_dir} ({result.freed_bytes / 2**20:,.1f} MiB); kept {len(result.kept)}\n")
        for name in result.deleted:
            out.write(f"  {name}\n")
        for failure in result.failed:
            print(f"m2_3_report cleanup: could not delete {failure}", file=err)
        return 1 if result.failed else 0

    if command == "export":
        result = export_records(args.output, log_dir, args.hours, settings=settings)
        _warn_skipped(result["read"], err)
        if result["records"]:
            out.write(f"exported {result['records']:,} records from the last {args.hours:g} h "
                      f"in {log_dir} to {result['output']}\n")
        else:
            out.write(f"no requests in the last {args.hours:g} h in {log_dir}; wrote an empty "
                      f"export to {result['output']}\n")
        return 0

    df = load_records(log_dir, args.hours, settings=settings)
    _warn_skipped(df, err)

    if command == "report":
        report = build_report(df, settings, hours=args.hours, top=args.top)
        if args.format == "json":
            json.dump(report, out, indent=2)
            out.write("\n")
        elif args.format == "csv":
            out.write(format_csv(report))
        else:
            out.write(format_text(report))
        return 0

    if command == "stats":
        stats = build_stats(df, settings, hours=args.hours, bucket=args.bucket)
        if args.format == "json":
            json.dump(stats, out, indent=2)
            out.write("\n")
        else:
            out.write(format_stats_text(stats))
        return 0

    if command == "plot":
        if len(df) == 0:
            print(f"m2_3_report plot: no requests in the last {args.hours:g} h in {log_dir}; "
                  "nothing to plot (no file written)", file=err)
            return 1
        path = plot_trends(df, args.output, settings, bucket=args.bucket)
        out.write(f"wrote {path} ({len(df):,} requests, last {args.hours:g} h)\n")
        return 0
    raise UsageError(f"unknown command {command!r}")  # argparse prevents this


if __name__ == "__main__":
    sys.exit(main())
