"""Helpers for the course notebook (M2_3_Production_Monitoring_Dashboard.ipynb).

The concerns kept out of the notebook so its cells stay short enough to read:

* ``Processes`` -- the stack's process registry (ragmon.stack.process): everything the notebook
  starts is stopped by PID (never by name), from the last cell, from ``atexit`` when the kernel
  shuts down after a failed cell, and from SIGTERM. With ``RAGMON_NOTEBOOK_PID_LOG`` set it
  appends every PID it owns to a JSONL file so a test can prove that nothing survived the kernel.
* ``PromAPI`` / ``AlertmanagerAPI`` -- the stack's API client (ragmon.stack.api) as pandas.
* ``wait_until`` -- the stack's polling with a deadline and an error that says what never happened.
* ``draw_dashboard`` -- renders every panel of a Grafana dashboard JSON with matplotlib from the
  panel's own PromQL, placed by ``gridPos``, so the dashboard can be seen without Grafana.
* ``start_course`` -- the one call that starts the stack and the demo workload (``CourseStack``).
* ``yaml_item`` / ``text_between`` -- the shipped files' own text, verbatim, for the notebook.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import pandas as pd

from .stack.api import AlertmanagerAPI as _AlertmanagerAPI
from .stack.api import APIError, PrometheusAPI
from .stack.process import PID_LOG_ENV, free_port  # noqa: F401 (free_port: for the notebook)
from .stack.process import Processes as _Processes
from .stack.process import wait_until as _wait_until
from .stack.webhook import WebhookReceiver as StackWebhookReceiver


# --- small utilities --------------------------------------------------------------------------

def docker_engine_answers(timeout: float = 10.0) -> bool:
    """True when a Docker CLI is installed *and* its engine answers ``docker info``."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, timeout=timeout).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def docker_bridge_address() -> str:
    """The host's address on Docker's default bridge (docker0), where containers reach the host
    as host.docker.internal (host-gateway). Listening there instead of on 0.0.0.0 serves the
    containers without exposing the webhook receiver or /metrics to the network. Without a
    docker0 interface (Docker Desktop forwards host.docker.internal to the host's loopback), it
    is 127.0.0.1."""
    import socket

    import psutil
    for address in psutil.net_if_addrs().get("docker0", []):
        if address.family == socket.AF_INET:
            return address.address
    return "127.0.0.1"


def wait_until(check: Callable[[], Any], *, timeout: float, what: str, interval: float = 0.5):
    """The stack's wait_until (ragmon.stack.process) with the notebook's patience: an engine
    that is still starting (refused connection, HTTP error) counts as "not yet"."""
    return _wait_until(check, timeout, what=what, interval=interval, retry_on=(OSError, APIError))


# --- processes --------------------------------------------------------------------------------

class Processes(_Processes):
    """The stack's process registry (ragmon.stack.process.Processes) with its table as pandas."""

    def running(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows(), columns=["name", "pid", "alive", "log"])


# --- Prometheus and Alertmanager HTTP APIs, as pandas ---------------------------------------------

PromQLError = APIError  # the notebook's name for the client's error


def _labels_frame(rows: list[dict], value_cols: Iterable[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    labels = sorted(c for c in frame.columns if c not in value_cols)
    return frame[labels + [c for c in value_cols if c in frame.columns]]


class PromAPI(PrometheusAPI):
    """The stack's Prometheus client (ragmon.stack.api) answering with pandas DataFrames (one
    column per label). The raw_* methods return the parsed JSON."""

    def query(self, expr: str, at: float | None = None) -> pd.DataFrame:
        """An instant query: one row per series, label columns then ``value`` (float)."""
        rows = [{**s["metric"], "value": float(s["value"][1])} for s in self.result(expr, at)]
        return _labels_frame(rows, ["value"])

    def query_range(self, expr: str, start: float, end: float, step: float) -> pd.DataFrame:
        """A range query: long format, label columns then ``time`` (UTC) and ``value``."""
        rows = [{**s["metric"], "time": float(t), "value": float(v)}
                for s in self.range_result(expr, start, end, step) for t, v in s["values"]]
        frame = _labels_frame(rows, ["time", "value"])
        if not frame.empty:
            frame["time"] = pd.to_datetime(frame["time"], unit="s", utc=True)
        return frame

    def samples_touched(self, expr: str, start: float, end: float, step: float) -> int | None:
        """How many stored samples a range query read (Prometheus's totalQueryableSamples)."""
        body = self.raw_query_range(expr, start, end, step, stats=True)
        return body["data"].get("stats", {}).get("samples", {}).get("totalQueryableSamples")

    def alerts(self) -> pd.DataFrame:
        """Alerts Prometheus currently holds (pending or firing)."""
        rows = [{"alertname": a["labels"].get("alertname"), "state": a["state"],
                 "severity": a["labels"].get("severity"), "active_at": a.get("activeAt"),
                 "value": a.get("value"), "labels": a["labels"]} for a in super().alerts()]
        return pd.DataFrame(rows, columns=["alertname", "state", "severity", "active_at", "value", "labels"])

    def targets(self) -> pd.DataFrame:
        rows = [{"job": t["labels"].get("job"), "instance": t["labels"].get("instance"),
                 "health": t["health"], "last_error": t.get("lastError", "")}
                for t in super().targets()]
        return pd.DataFrame(rows, columns=["job", "instance", "health", "last_error"])

    def rules(self) -> pd.DataFrame:
        rows = [{"group": g["name"], "type": r["type"], "name": r["name"], "health": r.get("health"),
                 "state": r.get("state"), "for_seconds": r.get("duration"), "query": r["query"]}
                for g in self.rule_groups() for r in g["rules"]]
        return pd.DataFrame(rows, columns=["group", "type", "name", "health", "state", "for_seconds",
                                           "query"])


class AlertmanagerAPI(_AlertmanagerAPI):
    """The stack's Alertmanager client (ragmon.stack.api) answering with pandas DataFrames."""

    def alerts(self, filter: str | None = None) -> pd.DataFrame:  # noqa: A002
        """Alerts Alertmanager holds and has not resolved (API v2)."""
        rows = [{"alertname": a["labels"].get("alertname"), "state": a["status"]["state"],
                 "severity": a["labels"].get("severity"), "starts_at": a.get("startsAt"),
                 "ends_at": a.get("endsAt"), "receivers": [r["name"] for r in a.get("receivers", [])],
                 "summary": a.get("annotations", {}).get("summary"), "labels": a["labels"]}
                for a in super().alerts(filter)]
        return pd.DataFrame(rows, columns=["alertname", "state", "severity", "starts_at", "ends_at",
                                           "receivers", "summary", "labels"])


class WebhookReceiver(StackWebhookReceiver):
    """The stack's Alertmanager webhook receiver (a thread in this process on 127.0.0.1),
    started at once, with its notifications as a table."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.start()

    def table(self) -> pd.DataFrame:
        """One row per alert per notification: alertname, status (firing|resolved), the
        alert's labels, and when the notification arrived (``received``, UTC)."""
        rows = [{"alertname": a.get("labels", {}).get("alertname"), "status": a.get("status"),
                 "receiver": n.get("receiver"), "group_status": n.get("status"),
                 "labels": a.get("labels", {}), "received": n.get("_received")}
                for n in list(self.notifications) for a in n.get("alerts", [])]
        frame = pd.DataFrame(rows, columns=["alertname", "status", "receiver", "group_status",
                                            "labels", "received"])
        frame["received"] = pd.to_datetime(frame["received"], unit="s", utc=True)
        return frame

    def close(self) -> None:
        self.stop()


# --- Grafana dashboard preview ----------------------------------------------------------------

GRID_COLUMNS = 24  # Grafana's grid is 24 columns wide; gridPos.h is in rows of ~30 px


def load_dashboard(path: str | os.PathLike) -> dict:
    """Reads a dashboard JSON, either bare or wrapped as {"dashboard": {...}} (API export)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if "panels" not in data and isinstance(data.get("dashboard"), dict):
        data = data["dashboard"]
    if not isinstance(data.get("panels"), list):
        raise ValueError(f"{path}: no 'panels' list; expected a Grafana dashboard JSON "
                         "(the file exported from or imported into Grafana)")
    return data


def iter_panels(dashboard: dict) -> list[dict]:
    """Every panel in grid order, rows included, collapsed rows' panels unfolded after them."""
    out = []
    for panel in dashboard.get("panels", []):
        out.append(panel)
        if panel.get("type") == "row":
            out.extend(panel.get("panels") or [])
    return sorted(out, key=lambda p: (p.get("gridPos", {}).get("y", 0), p.get("gridPos", {}).get("x", 0)))


def panel_queries(panel: dict) -> list[dict]:
    """The panel's PromQL targets (hidden ones too are skipped like Grafana does)."""
    return [t for t in panel.get("targets") or [] if t.get("expr") and not t.get("hide")]


def grafana_rate_interval(step: float, scrape_interval: float) -> float:
    """What Grafana substitutes for $__rate_interval: max($__interval + scrape, 4 * scrape)."""
    return max(step + scrape_interval, 4 * scrape_interval)


def _duration(seconds: float) -> str:
    seconds = max(1, int(math.ceil(seconds)))
    return f"{seconds // 60}m" if seconds % 60 == 0 and seconds >= 60 else f"{seconds}s"


_VAR_RE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\[\[(\w+)\]\]|\$(\w+)")


def substitute(expr: str, variables: dict[str, str | list[str]], *, step: float,
               scrape_interval: float, range_seconds: float) -> str:
    """Replaces Grafana's variables in a PromQL expression the way Grafana would.

    Built-ins: $__rate_interval, $__interval, $__range (and ${...} forms). A list value becomes
    a regex alternation (``a|b``), as Grafana formats multi-value variables inside ``=~``.
    Unknown variables raise, naming the variable, so a dashboard typo does not pass silently.
    """
    builtins = {"__rate_interval": _duration(grafana_rate_interval(step, scrape_interval)),
                "__interval": _duration(step), "__range": _duration(range_seconds),
                "__range_s": str(int(range_seconds)), "__interval_ms": str(int(step * 1000))}

    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(3) or match.group(4)
        if name in builtins:
            return builtins[name]
        if name not in variables:
            raise KeyError(f"dashboard variable ${name} in {expr!r} has no value; known: "
                           f"{sorted(variables)}. Define it under templating.list.")
        value = variables[name]
        if isinstance(value, (list, tuple)):
            return "|".join(re.escape(str(v)) for v in value) if value else ".*"
        return str(value)

    return _VAR_RE.sub(replace, expr)


def dashboard_variables(dashboard: dict, prom: PromAPI | None = None) -> dict[str, str | list[str]]:
    """Values for the dashboard's template variables, as Grafana would pick them on load.

    ``query`` variables with ``label_values(...)`` ask Prometheus for their values (the
    "All"/``.*`` choice when the variable allows it); ``custom``/``constant``/``textbox`` take
    their current or first value; ``datasource`` variables are not used inside PromQL.
    """
    values: dict[str, str | list[str]] = {}
    for var in (dashboard.get("templating") or {}).get("list", []):
        name, kind = var.get("name"), var.get("type")
        current = (var.get("current") or {}).get("value")
        if kind == "datasource":
            values[name] = current if isinstance(current, str) else "prometheus"
            continue
        if kind == "query":
            if var.get("includeAll") or var.get("multi"):
                values[name] = var.get("allValue") or ".*"
                continue
            options = _label_values(var, prom, values)
            values[name] = options[0] if options else (current if isinstance(current, str) else ".*")
            continue
        if isinstance(current, list):
            current = current[0] if current else ""
        if current in (None, "", "$__all") and var.get("options"):
            current = var["options"][0].get("value", "")
        if current == "$__all":
            current = var.get("allValue") or ".*"
        values[name] = "" if current is None else str(current)
    return values


def _label_values(var: dict, prom: PromAPI | None, known: dict) -> list[str]:
    query = var.get("query")
    if isinstance(query, dict):
        query = query.get("query", "")
    match = re.fullmatch(r"\s*label_values\((?:(.*),\s*)?(\w+)\)\s*", query or "")
    if prom is None or not match:
        return []
    selector, label = match.group(1), match.group(2)
    selector = _VAR_RE.sub(lambda m: str(known.get(m.group(1) or m.group(3) or m.group(4), ".*")),
                           selector) if selector else None
    selector = selector or "{" + label + '!=""}'
    frame = prom.query(f"group by ({label}) ({selector})")
    return sorted(frame[label].dropna().unique().tolist()) if label in frame else []


def legend(fmt: str | None, labels: dict) -> str:
    """Grafana's legendFormat: ``{{label}}`` replaced by the series' label values."""
    if not fmt or fmt == "__auto":
        inner = ", ".join(f'{k}="{v}"' for k, v in labels.items() if k != "__name__")
        return f"{{{inner}}}" if inner else "value"
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: str(labels.get(m.group(1), "")), fmt)


# Grafana unit id -> (scale, prefix, suffix). Values are multiplied by scale before formatting.
_UNITS = {
    "percentunit": (100.0, "", "%"), "percent": (1.0, "", "%"), "currencyUSD": (1.0, "$", ""),
    "reqps": (1.0, "", " req/s"), "ops": (1.0, "", " ops/s"), "ms": (1.0, "", " ms"),
    "bytes": (1.0, "", " B"), "short": (1.0, "", ""), "none": (1.0, "", ""),
}


def format_value(value: float | None, unit: str | None, decimals: int | None = None) -> str:
    """A value as Grafana would print it for `unit` (seconds shown as ms below 1 s)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no data"
    value = float(value)
    if unit == "s":
        if value != 0 and abs(value) < 1:
            return f"{value * 1000:.{0 if decimals is None else max(0, decimals - 3)}f} ms"
        return f"{value:.{2 if decimals is None else decimals}f} s"
    scale, prefix, suffix = _UNITS.get(unit or "short", (1.0, "", ""))
    scaled = value * scale
    if decimals is None:
        decimals = 0 if scaled == 0 or abs(scaled) >= 100 else max(0, 2 - int(math.floor(math.log10(abs(scaled)))))
    return f"{prefix}{scaled:,.{min(decimals, 6)}f}{suffix}"


def _tick_decimals(lo: float, hi: float, unit: str | None) -> int:
    """Enough decimals that ticks over [lo, hi] are told apart (about five ticks)."""
    scale = _UNITS.get(unit or "short", (1.0, "", ""))[0] if unit != "s" else 1.0
    span = abs(hi - lo) * scale
    if span == 0 or not math.isfinite(span):
        return 2
    return max(0, 1 - int(math.floor(math.log10(span / 5))))


@dataclass
class Series:
    name: str
    ref_id: str
    values: pd.Series  # indexed by time


@dataclass
class PanelData:
    panel_id: Any
    title: str
    type: str
    unit: str | None
    grid: dict
    field_config: dict = field(default_factory=dict)
    queries: list[str] = field(default_factory=list)
    series: list[Series] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def has_data(self) -> bool:
        return any(not s.values.dropna().empty for s in self.series)

    def overrides_for(self, series: Series) -> dict:
        """The override properties (id -> value) that apply to one series, Grafana-style."""
        out = {}
        for override in self.field_config.get("overrides") or []:
            matcher = override.get("matcher") or {}
            kind, option = matcher.get("id"), matcher.get("options")
            if (kind == "byFrameRefID" and option == series.ref_id) \
                    or (kind == "byName" and option == series.name) \
                    or (kind == "byRegexp" and option and re.search(option, series.name)):
                out.update({prop["id"]: prop.get("value") for prop in override.get("properties", [])})
        return out


def fetch_panels(dashboard: dict, prom: PromAPI, *, start: float, end: float, step: float,
                 scrape_interval: float, variables: dict | None = None) -> list[PanelData]:
    """Runs every panel's own queries as range queries over [start, end]."""
    variables = dashboard_variables(dashboard, prom) if variables is None else variables
    out = []
    for panel in iter_panels(dashboard):
        field_config = panel.get("fieldConfig") or {}
        data = PanelData(panel.get("id"), panel.get("title", ""), panel.get("type", ""),
                         (field_config.get("defaults") or {}).get("unit"),
                         panel.get("gridPos") or {"x": 0, "y": 0, "w": 12, "h": 8}, field_config)
        for target in panel_queries(panel):
            expr = substitute(target["expr"], variables, step=step, scrape_interval=scrape_interval,
                              range_seconds=end - start)
            data.queries.append(expr)
            try:
                frame = prom.query_range(expr, start, end, step)
            except PromQLError as exc:
                data.errors.append(str(exc))
                continue
            if frame.empty:
                continue
            label_cols = [c for c in frame.columns if c not in ("time", "value")]
            groups = frame.groupby(label_cols, dropna=False, sort=True) if label_cols else [((), frame)]
            for key, group in groups:
                key = key if isinstance(key, tuple) else (key,)
                labels = {c: v for c, v in zip(label_cols, key) if isinstance(v, str)}
                data.series.append(Series(legend(target.get("legendFormat"), labels),
                                          target.get("refId", ""),
                                          group.set_index("time")["value"].sort_index()))
        out.append(data)
    return out


def _last(series: Series) -> float:
    values = series.values.dropna()
    return float(values.iloc[-1]) if not values.empty else float("nan")


def _draw_timeseries(ax, panel: PanelData) -> None:
    import matplotlib.dates as mdates
    from matplotlib.ticker import FuncFormatter

    defaults = panel.field_config.get("defaults") or {}
    right = None
    axes_series: dict[Any, list] = {ax: []}
    colors = iter(f"C{i}" for i in range(100))
    for series in panel.series[:16]:
        props = panel.overrides_for(series)
        target = ax
        if props.get("custom.axisPlacement") == "right":
            right = right or ax.twinx()
            target = right
            axes_series.setdefault(right, [])
        axes_series[target].append((series, props))
        target.plot(series.values.index, series.values.values, label=series.name, linewidth=1.2,
                    color=next(colors))
    for axis, members in axes_series.items():
        if not members:
            continue
        unit = next((p.get("unit") for _, p in members if p.get("unit")), panel.unit)
        decimals = next((p.get("decimals") for _, p in members if p.get("decimals") is not None),
                        defaults.get("decimals"))
        values = pd.concat([s.values for s, _ in members]).dropna()
        lo, hi = (float(values.min()), float(values.max())) if not values.empty else (0.0, 1.0)
        if defaults.get("min") is not None or ((defaults.get("custom") or {}).get("axisSoftMin") == 0 and lo >= 0):
            lo = float(defaults.get("min", 0))
            axis.set_ylim(bottom=lo)
        if defaults.get("max") is not None:
            hi = float(defaults["max"])
            axis.set_ylim(top=hi)
        # The panel's decimals, or more when they would print every tick alike.
        places = max(decimals or 0, _tick_decimals(lo, hi if hi != lo else lo + 1, unit))
        axis.yaxis.set_major_formatter(FuncFormatter(
            lambda v, _pos, unit=unit, places=places: format_value(v, unit, places)))
        axis.tick_params(labelsize=7)
    ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S"))
    ax.grid(alpha=0.3)
    handles, labels = [], []
    for axis in axes_series:
        h, l = axis.get_legend_handles_labels()
        handles += h
        labels += [name + (" (right axis)" if axis is right else "") for name in l]
    if len(labels) > 1 or (labels and labels[0] != "value"):
        ax.legend(handles, labels, fontsize=6, loc="upper left", ncol=2 if len(labels) > 4 else 1,
                  framealpha=0.6)


def draw_panel(ax, panel: PanelData) -> None:
    """Draws one fetched panel into a matplotlib Axes, as Grafana would show it."""
    ax.set_title(panel.title, fontsize=9, loc="left")
    if panel.type == "text":
        ax.axis("off")
    elif panel.errors:
        ax.text(0.5, 0.5, "query error:\n" + panel.errors[0][:200], ha="center", va="center",
                fontsize=7, color="crimson", wrap=True, transform=ax.transAxes)
        ax.set_xticks([]), ax.set_yticks([])
    elif not panel.has_data:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", color="gray", transform=ax.transAxes)
        ax.set_xticks([]), ax.set_yticks([])
    elif panel.type in ("stat", "gauge"):
        ax.axis("off")
        shown = [s for s in panel.series if not s.values.dropna().empty][:6]
        size = 22 if len(shown) == 1 else max(9, 18 - 2 * len(shown))
        for i, series in enumerate(shown):
            label = format_value(_last(series), panel.unit) + (f"  {series.name}" if len(shown) > 1 else "")
            ax.text(0.5, 1 - (i + 0.5) / len(shown), label, ha="center", va="center", fontsize=size,
                    fontweight="bold", transform=ax.transAxes, color="#1f77b4")
    elif panel.type in ("bargauge", "barchart", "piechart"):
        shown = [s for s in panel.series if not s.values.dropna().empty]
        lasts = [_last(s) for s in shown]
        if panel.type == "piechart" and sum(v for v in lasts if v > 0) > 0:
            ax.pie([max(v, 0) for v in lasts], labels=[s.name for s in shown], textprops={"fontsize": 7})
        else:
            ax.barh([s.name for s in shown], lasts, color="#2ca02c")
            ax.tick_params(labelsize=7)
    elif panel.type == "table":
        ax.axis("off")
        cells = [[s.name, format_value(_last(s), panel.unit)] for s in panel.series
                 if not s.values.dropna().empty][:12]
        table = ax.table(cellText=cells, colLabels=["series", "last"], loc="upper center")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
    else:  # timeseries, graph, heatmap and anything else: one line per series
        _draw_timeseries(ax, panel)


def draw_dashboard(dashboard: dict, panels: list[PanelData], *, width_inches: float = 18.0,
                   row_height_inches: float = 0.45, max_height_inches: float = 42.0,
                   title: str | None = None):
    """Draws the fetched panels on one matplotlib figure laid out by each panel's gridPos.

    Grid rows become `row_height_inches` each, or less when the dashboard would be taller than
    `max_height_inches` (a picture a notebook can still store and a screen can still scroll);
    every panel keeps room inside its cell for its title above and its time axis below, as
    Grafana does.
    """
    import matplotlib.pyplot as plt

    bottom = max((p.grid.get("y", 0) + p.grid.get("h", 1)) for p in panels) if panels else 1
    header = 0.7  # inches for the dashboard title
    row_height_inches = min(row_height_inches, (max_height_inches - header) / bottom)
    height = bottom * row_height_inches + header
    fig = plt.figure(figsize=(width_inches, height))
    fig.suptitle(title or dashboard.get("title", "dashboard"), fontsize=15, y=1 - 0.25 / height)
    inch_x, inch_y = 1 / width_inches, 1 / height
    for panel in panels:
        g = panel.grid
        x, y, w = g.get("x", 0), g.get("y", 0), g.get("w", 12)
        h = g.get("h", 1 if panel.type == "row" else 8)
        cell_top = 1 - (header + y * row_height_inches) * inch_y
        cell_bottom = 1 - (header + (y + h) * row_height_inches) * inch_y
        left = x / GRID_COLUMNS + 0.55 * inch_x
        width = w / GRID_COLUMNS - 0.85 * inch_x
        if panel.type == "row":
            ax = fig.add_axes((left, cell_bottom, width, cell_top - cell_bottom))
            ax.axis("off")
            ax.text(0, 0.3, panel.title, fontsize=12, fontweight="bold", va="center")
            continue
        lower = cell_bottom + 0.4 * inch_y   # time-axis labels
        ax = fig.add_axes((left, lower, width, max(cell_top - 0.3 * inch_y - lower, 0.01)))
        draw_panel(ax, panel)
    return fig


def panels_table(panels: list[PanelData]) -> pd.DataFrame:
    """One row per panel: its title, type, unit, how many queries and series, and any error."""
    return pd.DataFrame([{"title": p.title, "type": p.type, "unit": p.unit,
                          "queries": len(p.queries), "series": len(p.series),
                          "has_data": p.has_data or p.type in ("row", "text"),
                          "error": p.errors[0] if p.errors else ""} for p in panels])


# --- showing the shipped files as they are -----------------------------------------------------

def yaml_item(path: str | os.PathLike, first_line: str) -> str:
    """The verbatim text of one list item of a YAML file (comments included): from the line
    that contains `first_line` (e.g. ``- alert: RagHighErrorRate``) to the next item at the same
    indentation or the end of the enclosing block. Trailing blank lines are dropped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    start = next((i for i, line in enumerate(lines) if first_line in line), None)
    if start is None:
        raise ValueError(f"{first_line!r} is not in {path}; expected a line such as "
                         f"'- alert: <name>' or '- record: <name>' as written in the file")
    indent = len(lines[start]) - len(lines[start].lstrip())
    end = start + 1
    while end < len(lines):
        line = lines[end]
        stripped = line.lstrip()
        if stripped and not stripped.startswith("#"):
            depth = len(line) - len(stripped)
            if depth < indent or (depth == indent and stripped.startswith("- ")):
                break
        end += 1
    while end > start and not lines[end - 1].strip():
        end -= 1
    while end > start + 1 and lines[end - 1].lstrip().startswith("#"):
        end -= 1  # a comment right before the next item belongs to that item
    return "\n".join(lines[start:end])


def text_between(path: str | os.PathLike, start: str, stop: str) -> str:
    """The verbatim lines of a file from the first line containing `start` up to (not including)
    the next line containing `stop`; trailing blank lines dropped."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    first = next((i for i, line in enumerate(lines) if start in line), None)
    if first is None:
        raise ValueError(f"{start!r} is not in {path}")
    end = next((i for i in range(first + 1, len(lines)) if stop in lines[i]), len(lines))
    while end > first and not lines[end - 1].strip():
        end -= 1
    return "\n".join(lines[first:end])


# --- the course's stack and workload -----------------------------------------------------------

@dataclass
class CourseStack:
    """What `start_course()` started: the API clients, the endpoints, the timing of the stack,
    and the demo workload, which the course stops and restarts (with faults) by PID."""
    procs: Processes
    workspace: Path
    workdir: Path
    use_docker: bool
    prom: PromAPI
    alertmanager: AlertmanagerAPI
    receiver: WebhookReceiver
    endpoints: dict[str, str]
    scrape_interval: float
    scrape_timeout: float
    window_seconds: int
    wait_scale: float
    demo_addr: str
    demo_port: int
    app_instance: str
    qps: int
    stack: Any = None
    demo: subprocess.Popen | None = None
    demo_runs: list[dict] = field(default_factory=list)

    @property
    def log_dir(self) -> Path:
        """The demo's request records and JSON log lines."""
        return self.workdir / "demo_logs"

    def start_demo(self, *extra: str, name: str = "demo") -> subprocess.Popen:
        """Starts `m2_3_monitoring.py` in the background on the demo port (output to a log file)."""
        argv = [sys.executable, "m2_3_monitoring.py", "--addr", self.demo_addr,
                "--port", str(self.demo_port), "--qps", str(self.qps),
                "--log-dir", str(self.log_dir), *extra]
        self.demo = self.procs.start(name, argv, log_path=self.workdir / f"{name}.out",
                                     cwd=self.workspace)
        self.demo_runs.append({"name": name, "args": " ".join(extra), "started": time.time(),
                               "stopped": None, "exited": None})
        return self.demo

    def stop_demo(self) -> None:
        """Stops the running demo by PID and notes when it was told to stop and when it exited.

        Between the two it still serves /metrics while queries in progress finish."""
        if self.demo is not None:
            self.demo_runs[-1]["stopped"] = time.time()
            self.procs.stop(self.demo)
            self.demo_runs[-1]["exited"] = time.time()
            self.demo = None

    def restart_demo(self, *extra: str, name: str = "demo") -> subprocess.Popen:
        """Stops the demo and starts it again on the same port, e.g. with ``--fault errors``."""
        self.stop_demo()
        return self.start_demo(*extra, name=name)

    def runs(self) -> pd.DataFrame:
        """One row per demo run: its name, extra arguments, start, stop and exit (UTC)."""
        frame = pd.DataFrame(self.demo_runs, columns=["name", "args", "started", "stopped", "exited"])
        for column in ("started", "stopped", "exited"):
            frame[column] = pd.to_datetime(frame[column], unit="s", utc=True)
        return frame


def start_course(procs: Processes, workdir: str | os.PathLike, *,
                 workspace: str | os.PathLike | None = None, qps: int = 10,
                 use_docker: bool | None = None) -> CourseStack:
    """Starts the monitoring stack and the demo workload for the course; returns what it started.

    1. A webhook receiver in this process, where Alertmanager delivers notifications.
    2. The stack. With Docker (the engine answers and GRAFANA_ADMIN_PASSWORD is set):
       ``docker compose -f docker-compose.monitoring.yml up -d`` on the standard ports with the
       production rule windows. Otherwise ``m2_3_stack.Stack(fast=True)``: Prometheus,
       Alertmanager, the Pushgateway and node-exporter from the local binaries, on free ports of
       127.0.0.1, with 1 s scrapes and short windows and ``for`` durations.
    3. The demo (``m2_3_monitoring.py --qps <qps>``) in the background, scraped by Prometheus.

    Everything is registered in `procs`, which stops it by PID (``procs.stop_all()``, or when the
    kernel shuts down).
    """
    from .stack.render import find_workspace

    workspace = Path(workspace) if workspace is not None else find_workspace()
    workdir = Path(workdir)
    if use_docker is None:
        use_docker = docker_engine_answers() and _grafana_password_configured(workspace)
    # In Docker, alertmanager.yml's webhook is host.docker.internal:5001: listen there.
    receiver = WebhookReceiver(docker_bridge_address(), 5001) if use_docker else WebhookReceiver()
    procs.on_cleanup("webhook receiver", receiver.close)
    stack = None
    if use_docker:
        compose = ["docker", "compose", "-f", str(workspace / "docker-compose.monitoring.yml")]
        subprocess.run(compose + ["up", "-d"], check=True)
        procs.on_cleanup("docker compose", lambda: subprocess.run(compose + ["down"], check=False))
        endpoints = {"prometheus": "http://127.0.0.1:9090", "alertmanager": "http://127.0.0.1:9093"}
        # The containers reach the demo as host.docker.internal:8000 (prometheus.yml).
        demo_addr, demo_port, app_instance = docker_bridge_address(), 8000, "host.docker.internal:8000"
        timing = {"scrape_interval": 15.0, "window_seconds": 60, "wait_scale": 12.0}
    else:
        from .stack.runner import Stack

        demo_addr, demo_port = "127.0.0.1", free_port()
        app_instance = f"{demo_addr}:{demo_port}"
        stack = Stack(workdir=workdir / "stack", app_targets=[app_instance], fast=True,
                      ports={"prometheus": 0, "alertmanager": 0, "pushgateway": 0, "node_exporter": 0},
                      extra_receiver_url=receiver.url)  # port 0: a free port each
        procs.on_cleanup("local stack", stack.down)
        stack.up(wait=True)
        procs.adopt_descendants("stack")  # every server the stack started, by PID
        endpoints = dict(stack.urls)
        # 20 s: the fast copy of the rules' 5m window.
        timing = {"scrape_interval": 1.0, "window_seconds": 20, "wait_scale": 1.0}
    config_file = workspace / "prometheus.yml" if stack is None else stack.config_dir / "prometheus.yml"
    timing["scrape_timeout"] = scrape_timeout_seconds(config_file)
    course = CourseStack(procs=procs, workspace=workspace, workdir=workdir, use_docker=use_docker,
                         prom=PromAPI(endpoints["prometheus"]),
                         alertmanager=AlertmanagerAPI(endpoints["alertmanager"]),
                         receiver=receiver, endpoints=endpoints, demo_addr=demo_addr,
                         demo_port=demo_port, app_instance=app_instance, qps=qps, stack=stack,
                         **timing)
    course.start_demo()
    course.endpoints["demo /metrics"] = f"http://127.0.0.1:{demo_port}/metrics"
    return course


def scrape_timeout_seconds(prometheus_yml: str | os.PathLike) -> float:
    """The global scrape_timeout of a prometheus.yml in seconds (Prometheus's default: 10 s)."""
    config = yaml_load(prometheus_yml)
    text = str((config.get("global") or {}).get("scrape_timeout", "10s"))
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts:
        raise ValueError(f"scrape_timeout {text!r} in {prometheus_yml} is not a duration like 10s")
    return sum(float(number) * units[unit] for number, unit in parts)


def yaml_load(path: str | os.PathLike) -> dict:
    import yaml
    return yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}


def _grafana_password_configured(workspace: Path) -> bool:
    """Compose refuses to start Grafana without GRAFANA_ADMIN_PASSWORD (no default password)."""
    if os.environ.get("GRAFANA_ADMIN_PASSWORD"):
        return True
    env_file = workspace / ".env"
    if not env_file.is_file():
        return False
    from dotenv import dotenv_values
    return bool(dotenv_values(env_file).get("GRAFANA_ADMIN_PASSWORD"))
