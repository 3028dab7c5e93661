"""The report as one self-contained HTML page: headline figures, latency and spend over time,
the bottleneck stage, quality (and feedback attributes) when recorded, and the slowest and most
expensive requests with their ids. Everything is inline - the charts are SVG drawn by
matplotlib with their text as paths, the style is one <style> block - so the page opens from a
file or an e-mail attachment with no network at all.
"""
from __future__ import annotations

import html
import io
import re

from .formatting import duration, money, percent, rollup_note
from .reader import read_problems
from .timeline import bucket_seconds


def _svg(fig) -> str:
    import matplotlib

    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "ragmon"}):
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
    text = buffer.getvalue()
    text = text[text.index("<svg"):]  # the XML prolog and doctype belong to a file, not a page
    return re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)


def _chart(trends: dict, keys: list[tuple[str, str]], title: str, ylabel: str,
           scale: float = 1.0) -> str:
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = trends["rows"]
    times = (np.array([r["bucket_start"] for r in rows], dtype="float64") * 1000).astype(
        "int64").astype("datetime64[ms]")
    fig = Figure(figsize=(9, 3), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for key, label in keys:
        values = np.array([np.nan if r[key] is None else r[key] * scale for r in rows])
        ax.plot(times, values, marker=".", label=label)
    # The axis spans the buckets drawn, half a bucket either side: matplotlib would stretch a
    # single point over years.
    half = np.timedelta64(int(bucket_seconds(trends["bucket"]) * 500), "ms")
    if len(times):
        ax.set_xlim(times.min() - half, times.max() + half)
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.autofmt_xdate()
    return _svg(fig)


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>"
                   for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


_STYLE = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1000px;
     color:#1d2430;padding:0 1em}
h1{font-size:1.5em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #d8dde6}
.cards{display:flex;flex-wrap:wrap;gap:.8em}
.card{border:1px solid #d8dde6;border-radius:6px;padding:.6em 1em;min-width:9em}
.card b{display:block;font-size:1.3em}.card span{color:#5a6475;font-size:.85em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border-bottom:1px solid #e6e9ef;padding:.25em .7em;text-align:right}
th:first-child,td:first-child{text-align:left}
.note{color:#8a5a00}.chart svg{width:100%;height:auto}
"""


def format_html(report: dict, trends: dict | None = None, costliest: list[dict] | None = None,
                title: str | None = None, who_spends: list[dict] | None = None) -> str:
    """The page for a report dict (report_from_log / build_report), with the charts of
    `trends` (timeline.trends), the table of `costliest` requests and the "Who spends it"
    tables (report.attribution.who_spends) when given."""
    period = report.get("period", {})
    hours = period.get("hours")
    title = title or (f"Performance report - last {hours:g} h" if hours is not None
                      else "Performance report - whole log")
    header = f"Generated {html.escape(str(report.get('generated_at')))}"
    read = report.get("read") or {}
    if read:
        header += (f"; {read.get('records', 0):,} records from {len(read.get('files', []))} "
                   f"file(s) in {html.escape(str(read.get('log_dir')))}")
    out = [f"<h1>{html.escape(title)}</h1>", f"<p>{header}</p>"]
    out += [f'<p class="note">{html.escape(p)}</p>' for p in read_problems(read)]
    if report.get("empty"):
        out.append(f"<p>{html.escape(report.get('message', 'no requests in this period'))}</p>")
        return _page(title, out)
    t, lat, cost, cache = report["totals"], report["latency"], report["cost"], report["cache"]
    cards = [("requests", f"{t['requests']:,}"), ("success rate", percent(t["success_rate"])),
             ("p50 latency", duration(lat["p50"])), ("p95 latency", duration(lat["p95"])),
             ("p99 latency", duration(lat["p99"])), ("spend", money(cost["total"])),
             ("per request", money(cost["per_request"])), ("cache hit rate", percent(cache["hit_rate"]))]
    out.append(f"<p>Requests from {html.escape(str(period.get('first')))} to "
               f"{html.escape(str(period.get('last')))}</p>")
    if rollup_note(report):
        out.append(f'<p class="note">{html.escape(rollup_note(report))}</p>')
    out.append('<div class="cards">' + "".join(
        f'<div class="card"><span>{html.escape(k)}</span><b>{html.escape(v)}</b></div>'
        for k, v in cards) + "</div>")
    if trends:
        bucket = trends["bucket"]
        out.append("<h2>Latency over time</h2>")
        out.append('<div class="chart" id="latency-chart">' + _chart(
            trends, [("p50", "p50"), ("p95", "p95"), ("p99", "p99")],
            f"Latency percentiles per {bucket}", "seconds") + "</div>")
        out.append("<h2>Spend over time</h2>")
        out.append('<div class="chart" id="spend-chart">' + _chart(
            trends, [("cost_per_hour", "dollars per hour")], f"Spend per hour (per {bucket})",
            "$ / hour") + "</div>")
        if any(r["relevance"] is not None for r in trends["rows"]):
            out.append('<div class="chart" id="quality-chart">' + _chart(
                trends, [("relevance", "mean relevance")], f"Relevance per {bucket}",
                "score") + "</div>")
    stages = report["stages"]
    if stages:
        top = stages[0]
        out.append("<h2>Bottleneck stage</h2>")
        out.append(f"<p><b>{html.escape(top['stage'])}</b> takes {percent(top['time_share'])} of the "
                   f"request time (p95 {duration(top['p95'])}); it was the bottleneck of "
                   f"{top['bottlenecks']:,} requests.</p>")
        out.append(_table(["stage", "requests", "p50", "p95", "time share", "bottlenecks"],
                          [[s["stage"], f"{s['requests']:,}", duration(s["p50"]), duration(s["p95"]),
                            percent(s["time_share"]), f"{s['bottlenecks']:,}"] for s in stages]))
    quality = report["quality"]
    feedback = {k: v for k, v in report["attributes"].items() if "feedback" in k.lower()}
    if any(q["measured"] for q in quality.values()) or feedback:
        out.append("<h2>Quality and feedback</h2>")
        rows = [[name.replace("_", " "), f"{q['measured']:,}", _num(q["mean"]), _num(q["p50"]),
                 _num(q["p95"])] for name, q in quality.items() if q["measured"]]
        if rows:
            out.append(_table(["measure", "measured", "mean", "p50", "p95"], rows))
        for key, value in feedback.items():
            if value["kind"] == "number":
                out.append(_table([key, "requests", "mean", "p50", "p95"],
                                  [["", f"{value['requests']:,}", _num(value["mean"]),
                                    _num(value["p50"]), _num(value["p95"])]]))
            else:
                out.append(_table([key, "requests"], [[v["value"], f"{v['requests']:,}"]
                                                      for v in value["values"]]))
    if report["models"]:
        out.append("<h2>Spend by model</h2>")
        out.append(_table(["model", "requests", "cost", "per request", "p95", "error rate"],
                          [[m["model"], f"{m['requests']:,}", money(m["cost"]),
                            money(m["mean_cost"]), duration(m["p95_latency"]), percent(m["error_rate"])]
                           for m in report["models"]]))
    if who_spends:
        out += _who_spends(who_spends)
    if report["slowest"]:
        out.append("<h2>Slowest requests</h2>")
        out.append(_table(["request id", "ended", "total", "status", "model", "slowest stage"],
                          [[s["request_id"], s["timestamp"], duration(s["total_time"]), s["status"],
                            s["model"], s["slowest_stage"] or "-"] for s in report["slowest"]]))
    if costliest:
        out.append("<h2>Most expensive requests</h2>")
        out.append(_table(["request id", "ended", "cost", "model", "total", "status"],
                          [[c["request_id"], c["timestamp"], money(c["cost"]), c["model"],
                            duration(c["total_time"]), c["status"]] for c in costliest]))
    if report["errors"]:
        out.append("<h2>Errors</h2>")
        out.append(_table(["error type", "count", "of requests"],
                          [[e["error_type"], f"{e['count']:,}", percent(e["share_of_requests"])]
                           for e in report["errors"]]))
    return _page(title, out)


def _who_spends(sections: list[dict]) -> list[str]:
    from .attribution import HEADERS, table_rows
    out = ['<h2 id="who-spends-it">Who spends it</h2>']
    for figures in sections:
        out.append(f"<h3>By {html.escape(figures['key'])}</h3><p>{figures['distinct_values']:,} "
                   "distinct values; exact figures from the records.</p>")
        out.append(_table(list(HEADERS), table_rows(figures)))
    return out


def format_who_spends(report: dict) -> str:
    """The page of ``report --by KEY --format html`` (report.attribution.report_by)."""
    title = report["title"]
    out = [f"<h1>{html.escape(title)}</h1>",
           f"<p>Generated {html.escape(str(report.get('generated_at')))}; period "
           f"{html.escape(str(report['period']['since'] or 'start of the log'))} to "
           f"{html.escape(str(report['period']['until'] or 'now'))}</p>"]
    out += [f'<p class="note">{html.escape(p)}</p>' for p in read_problems(report.get("read") or {})]
    if report.get("empty"):
        out.append(f"<p>{html.escape(report['message'])}</p>")
    else:
        out += _who_spends([report])
    return _page(title, out)


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _page(title: str, body: list[str]) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
