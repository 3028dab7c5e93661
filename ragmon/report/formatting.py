"""Rendering report dicts (ragmon.report.analysis) as text for people and CSV rows for spreadsheets."""
from __future__ import annotations

import csv
import io
import math

from .reader import read_problems


def duration(seconds) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.2f} s"


def percent(share) -> str:
    return "-" if share is None else f"{share * 100:.1f}%"


def money(dollars) -> str:
    """Dollars to the cent from $1, to four places below; a cost under a hundredth of a cent (a
    typical request) keeps two significant digits instead of reading as $0.0000."""
    if dollars is None:
        return "-"
    if abs(dollars) >= 1:
        return f"${dollars:,.2f}"
    if dollars == 0 or not 1e-12 <= abs(dollars) < 1e-4:
        return f"${dollars:,.4f}"
    return f"${dollars:.{1 - math.floor(math.log10(abs(dollars)))}f}"


def _table(headers: list[str], rows: list[list], indent: str = "  ") -> list[str]:
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h)
              for i, h in enumerate(headers)]
    out = [indent + "  ".join(h.ljust(w) if i == 0 else h.rjust(w)
                              for i, (h, w) in enumerate(zip(headers, widths)))]
    for row in cells:
        out.append(indent + "  ".join(c.ljust(w) if i == 0 else c.rjust(w)
                                      for i, (c, w) in enumerate(zip(row, widths))))
    return out


def _read_note(report: dict) -> list[str]:
    read = report.get("read") or {}
    lines = []
    if read:
        lines.append(f"Read {read.get('records', 0):,} records from {len(read.get('files', []))} "
                     f"file(s), {read.get('lines', 0):,} lines, in {read.get('log_dir')}")
        lines += [problem[0].upper() + problem[1:] for problem in read_problems(read)]
        lines += [f"  e.g. {example}" for example in read.get("skipped_examples", [])[:3]]
    note = rollup_note(report)
    if note:
        lines.append(note)
    return lines


def rollup_note(report: dict) -> str | None:
    """What the report read from rollups and how exact that is (None: every record read)."""
    rollups = report.get("rollups")
    if not rollups:
        return None
    return (f"{rollups['days']} whole day(s) of history read from their rollups: "
            f"percentiles within {rollups['quantile_relative_error']:.0%}, counts and "
            "sums exact (--exact reads every record)")


def format_text(report: dict) -> str:
    """The report for a terminal: headline numbers first, then tables."""
    period = report.get("period", {})
    hours = period.get("hours")
    title = (f"Performance report - last {hours:g} h" if hours is not None
             else "Performance report - whole log")
    out = [title, "=" * len(title), f"Generated {report.get('generated_at')}"]
    out += _read_note(report)
    if report.get("empty"):
        out += ["", report.get("message", "no requests in this period")]
        return "\n".join(out) + "\n"
    out.append(f"Requests from {period.get('first')} to {period.get('last')}")
    t, lat, th = report["totals"], report["latency"], report["thresholds"]
    out += ["", "Requests",
            f"  total {t['requests']:,}  ({t['requests_per_hour']:,.1f}/h)   success rate "
            f"{percent(t['success_rate'])}   errors {t['error']:,}   cancelled {t['cancelled']:,}",
            "", "Latency",
            f"  p50 {duration(lat['p50'])}   p95 {duration(lat['p95'])}   p99 {duration(lat['p99'])}   "
            f"max {duration(lat['max'])}   mean {duration(lat['mean'])}",
            f"  slow (> {th['slow_seconds']:g} s): {lat['slow']:,}   very slow "
            f"(> {th['very_slow_seconds']:g} s): {lat['very_slow']:,}"]
    if report["stages"]:
        budgets = th["stage_budgets"]
        rule = f"share > {th['bottleneck_share']:g}"
        if budgets:
            rule += " or over budget (" + ", ".join(f"{k} {v:g} s" for k, v in budgets.items()) + ")"
        out += ["", f"Stages (bottleneck: {rule})"]
        out += _table(["stage", "requests", "mean", "p50", "p95", "max", "time share",
                       "bottlenecks", "by share", "by budget"],
                      [[s["stage"], f"{s['requests']:,}", duration(s["mean"]), duration(s["p50"]),
                        duration(s["p95"]), duration(s["max"]), percent(s["time_share"]),
                        f"{s['bottlenecks']:,}", f"{s['bottlenecks_by_share']:,}",
                        f"{s['bottlenecks_by_budget']:,}"] for s in report["stages"]])
    cost, tokens, cache = report["cost"], report["tokens"], report["cache"]
    out += ["", "Cost and tokens",
            f"  total {money(cost['total'])}   per request {money(cost['per_request'])}   "
            f"tokens in {tokens['input']:,} / out {tokens['output']:,} / cached "
            f"{tokens['cached_input']:,}"
            + (f"   ({cost['requests_without_cost']:,} requests without a cost)"
               if cost["requests_without_cost"] else "")]
    default = cost.get("default_priced")
    if default and default["requests"]:
        out.append(f"  default-priced (model not in the price table): {money(default['cost'])} "
                   f"over {default['requests']:,} requests ({', '.join(default['models'][:5])}); "
                   f"table-priced {money(cost.get('table_priced'))}")
    repriced = cost.get("repriced")
    if repriced and repriced["requests"]:
        out.append(f"  repriced: {repriced['requests']:,} requests, {money(repriced['cost_before'])}"
                   f" before, {money(repriced['cost_after'])} now (see cost_original)")
    if report["models"]:
        out += _table(["model", "requests", "cost", "per request", "input tok", "output tok",
                       "cached tok", "p95", "error rate"],
                      [[m["model"], f"{m['requests']:,}", money(m["cost"]), money(m["mean_cost"]),
                        f"{m['input_tokens']:,}", f"{m['output_tokens']:,}",
                        f"{m['cached_input_tokens']:,}", duration(m["p95_latency"]),
                        percent(m["error_rate"])] for m in report["models"]])
    out += ["", "Cache",
            f"  hit rate {percent(cache['hit_rate'])}   hits {cache['hits']:,}   "
            f"misses {cache['misses']:,}"]
    q = report["quality"]
    out += ["", "Quality",
            f"  relevance mean {_num(q['relevance']['mean'])} ({q['relevance']['measured']:,} "
            f"measured)   context precision mean {_num(q['context_precision']['mean'])}   "
            f"time to first token p50 {duration(q['time_to_first_token']['p50'])} "
            f"p95 {duration(q['time_to_first_token']['p95'])}"]
    out += ["", "Errors"]
    if report["errors"]:
        out += _table(["error type", "count", "of failures", "of requests"],
                      [[e["error_type"], f"{e['count']:,}", percent(e["share_of_failures"]),
                        percent(e["share_of_requests"])] for e in report["errors"]])
    else:
        out.append("  none")
    if len(report["operations"]) > 1:
        out += ["", "Operations"]
        out += _table(["operation", "requests", "p95", "error rate"],
                      [[g["value"], f"{g['requests']:,}", duration(g["p95_latency"]),
                        percent(g["error_rate"])] for g in report["operations"]])
    for name, attr in report["attributes"].items():
        out += ["", f"Attribute {name}"]
        if attr["kind"] == "number":
            out.append(f"  {attr['requests']:,} requests   mean {_num(attr['mean'])}   "
                       f"p50 {_num(attr['p50'])}   p95 {_num(attr['p95'])}   "
                       f"max {_num(attr['max'])}   sum {_num(attr['sum'])}")
        elif attr["kind"] == "list":
            out += _table(["item", "requests"],
                          [[v["value"], f"{v['requests']:,}"] for v in attr["values"]])
            if attr["other"]:
                out.append(f"  ... and {attr['other']:,} more in {attr['distinct'] - len(attr['values'])} other items")
        else:
            out += _table(["value", "requests", "share", "p95", "success rate"],
                          [[v["value"], f"{v['requests']:,}", percent(v["share"]),
                            duration(v["p95_latency"]), percent(v["success_rate"])]
                           for v in attr["values"]])
            if attr["other"]:
                out.append(f"  ... and {attr['other']:,} requests with "
                           f"{attr['distinct'] - len(attr['values'])} other values")
    if report["slowest"]:
        out += ["", "Slowest requests"]
        out += _table(["request id", "total", "status", "model", "slowest stage", "at"],
                      [[r["request_id"], duration(r["total_time"]),
                        (r["status"] or "-") + (f" ({r['error_type']})" if r["error_type"] else ""),
                        r["model"] or "-",
                        f"{r['slowest_stage']} {duration(r['slowest_stage_duration'])}"
                        if r["slowest_stage"] else "-", r["timestamp"]]
                       for r in report["slowest"]])
    return "\n".join(out) + "\n"


def _num(value) -> str:
    if value is None:
        return "-"
    return f"{value:,.3f}" if abs(value) < 1000 else f"{value:,.0f}"


def format_stats_text(stats: dict) -> str:
    """`stats`: the report's text plus distributions and the per-bucket table."""
    text = format_text(stats)
    if stats.get("empty"):
        return text
    out = [text.rstrip("\n"), "", "Distributions"]
    out += _table(["series", "count", "mean", "std", "min", "p50", "p90", "p95", "p99", "max"],
                  [[name, f"{d['count']:,}", duration(d["mean"]), duration(d["std"]), duration(d["min"]),
                    duration(d["p50"]), duration(d["p90"]), duration(d["p95"]), duration(d["p99"]), duration(d["max"])]
                   for name, d in stats["distributions"].items()])
    out += ["", f"Per {stats['bucket']}"]
    out += _table(["bucket start", "requests", "error rate", "p50", "p95", "p99", "cost",
                   "cost/hour"],
                  [[r["bucket_start"], f"{r['requests']:,}", percent(r["error_rate"]), duration(r["p50"]),
                    duration(r["p95"]), duration(r["p99"]), money(r["cost"]), money(r["cost_per_hour"])]
                   for r in stats["series"] if r["requests"]])
    return "\n".join(out) + "\n"


def report_rows(report: dict) -> list[tuple]:
    """The report as long-form rows (section, item, metric, value): one CSV for every section."""
    rows: list[tuple] = []

    def add(section, item, metrics: dict):
        for metric, value in metrics.items():
            if isinstance(value, (dict, list)):
                continue
            rows.append((section, item, metric, "" if value is None else value))

    add("period", "", report.get("period", {}))
    read = report.get("read") or {}
    add("read", "", {k: v for k, v in read.items() if not isinstance(v, (list, dict))})
    for reason, count in (read.get("skipped_by_reason") or {}).items():
        rows.append(("read", "skipped", reason, count))
    if report.get("empty"):
        rows.append(("totals", "", "requests", 0))
        rows.append(("message", "", "text", report.get("message", "")))
        return rows
    add("totals", "", report["totals"])
    add("latency", "", report["latency"])
    for stage in report["stages"]:
        add("stage", stage["stage"], {k: v for k, v in stage.items() if k != "stage"})
    for model in report["models"]:
        add("model", model["model"], {k: v for k, v in model.items() if k != "model"})
    add("cost", "", report["cost"])
    add("tokens", "", report["tokens"])
    add("cache", "", report["cache"])
    for key, values in report["quality"].items():
        add("quality", key, values)
    for error in report["errors"]:
        add("error", error["error_type"], {k: v for k, v in error.items() if k != "error_type"})
    for group in report["operations"]:
        add("operation", group["value"], {k: v for k, v in group.items() if k != "value"})
    for name, attr in report["attributes"].items():
        if attr["kind"] == "number":
            add(f"attribute {name}", "", attr)
        else:
            for value in attr["values"]:
                add(f"attribute {name}", value["value"],
                    {k: v for k, v in value.items() if k != "value"})
            if attr["other"]:
                rows.append((f"attribute {name}", "(other)", "requests", attr["other"]))
    for rank, slow in enumerate(report["slowest"], start=1):
        add("slowest", slow["request_id"] or f"#{rank}",
            {k: v for k, v in slow.items() if k != "request_id"})
    return rows


def format_csv(report: dict) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("section", "item", "metric", "value"))
    writer.writerows(report_rows(report))
    return buffer.getvalue()
