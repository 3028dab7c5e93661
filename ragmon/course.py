"""Helpers for the course notebook (M2_3_Production_Monitoring_Dashboard.ipynb).

Four concerns, kept out of the notebook so its cells stay short enough to read:

* ``Processes`` -- a registry of everything the notebook starts. It stops them by PID (never by
  name), from the last cell, from ``atexit`` when the kernel shuts down after a failed cell, and
  from SIGTERM. With ``RAGMON_NOTEBOOK_PID_LOG`` set it appends every PID it owns to a JSONL
  file so a test can prove that nothing survived the kernel.
* ``PromAPI`` / ``AlertmanagerAPI`` -- Prometheus's and Alertmanager's HTTP APIs as pandas.
* ``wait_until`` -- polling with a deadline and an error that says what never happened.
* ``draw_dashboard`` -- renders every panel of a Grafana dashboard JSON with matplotlib from the
  panel's own PromQL, placed by ``gridPos``, so the dashboard can be seen without Grafana.
"""
from __future__ import annotations

import atexit
import json
import math
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from .stack.process import free_port, owned_process, terminate  # noqa: F401 (free_port: for the notebook)
from .stack.webhook import WebhookReceiver as StackWebhookReceiver

PID_LOG_ENV = "RAGMON_NOTEBOOK_PID_LOG"


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
    """Calls `check` until it returns something truthy and returns that.

    Exceptions from `check` count as "not yet" (a server that is still starting refuses
    connections); the last one is quoted if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    while True:
        try:
            last = check()
            if _truthy(last):
                return last
        except Exception as exc:  # noqa: BLE001 - reported below if it never recovers
            last = exc
        if time.monotonic() >= deadline:
            raise TimeoutError(f"waited {timeout:.0f} s for {what}; the last check returned {last!r}")
        time.sleep(interval)


def _truthy(value: Any) -> bool:
    if isinstance(value, (pd.DataFrame, pd.Series)):
        return not value.empty
    return bool(value)


# --- processes --------------------------------------------------------------------------------

@dataclass
class _Owned:
    name: str
    pid: int
    create_time: float
    popen: subprocess.Popen | None = None
    log_path: Path | None = None


class Processes:
    """Starts processes for the notebook and guarantees they are stopped, by PID.

    ``start()`` runs a command in its own session with output to a log file (a notebook cell
    must not block on a pipe). ``on_cleanup()`` registers a callable such as ``stack.down``.
    ``adopt_descendants()`` records the PIDs of every process below this one (e.g. the servers
    ``Stack.up()`` started) so even a runner that forgets one cannot leak it.
    ``stop_all()`` is idempotent; it also runs from atexit and on SIGTERM.
    """

    def __init__(self, pid_log: str | os.PathLike | None = None, *, stop_timeout: float = 5.0):
        pid_log = pid_log if pid_log is not None else os.environ.get(PID_LOG_ENV) or None
        self.pid_log = Path(pid_log) if pid_log else None
        self.stop_timeout = stop_timeout
        self._owned: dict[int, _Owned] = {}
        self._cleanups: list[tuple[str, Callable[[], Any]]] = []
        self._lock = threading.RLock()
        atexit.register(self.stop_all)
        self._install_sigterm()

    # registration
    def start(self, name: str, argv: Sequence[str], *, log_path: str | os.PathLike,
              env: dict | None = None, cwd: str | os.PathLike | None = None) -> subprocess.Popen:
        log_path = Path(log_path)
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            popen = subprocess.Popen(list(map(str, argv)), stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=cwd, start_new_session=True,
                                     env={**os.environ, **(env or {})})
        self._remember(_Owned(name, popen.pid, _create_time(popen.pid), popen, log_path))
        return popen

    def on_cleanup(self, name: str, func: Callable[[], Any]) -> None:
        with self._lock:
            self._cleanups.append((name, func))

    def adopt_descendants(self, name: str = "child") -> list[int]:
        """Records every live descendant of this process not yet owned; returns their PIDs."""
        import psutil
        adopted = []
        for proc in psutil.Process().children(recursive=True):
            try:
                if proc.pid in self._owned:
                    continue
                label = f"{name}:{proc.name()}"
                self._remember(_Owned(label, proc.pid, proc.create_time()))
                adopted.append(proc.pid)
            except psutil.NoSuchProcess:
                continue
        return adopted

    def _remember(self, owned: _Owned) -> None:
        with self._lock:
            self._owned[owned.pid] = owned
            if self.pid_log is not None:
                line = json.dumps({"name": owned.name, "pid": owned.pid,
                                   "create_time": owned.create_time}) + "\n"
                fd = os.open(self.pid_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
                try:
                    os.write(fd, line.encode())
                finally:
                    os.close(fd)

    # state
    def running(self) -> pd.DataFrame:
        rows = [{"name": o.name, "pid": o.pid, "alive": _alive(o.pid, o.create_time),
                 "log": str(o.log_path) if o.log_path else ""} for o in list(self._owned.values())]
        return pd.DataFrame(rows, columns=["name", "pid", "alive", "log"])

    def alive(self) -> list[int]:
        return [o.pid for o in list(self._owned.values()) if _alive(o.pid, o.create_time)]

    # stopping
    def stop(self, proc: subprocess.Popen | int, timeout: float | None = None) -> int | None:
        """SIGTERM, wait, then SIGKILL one owned process. Returns its exit code if known."""
        pid = proc.pid if isinstance(proc, subprocess.Popen) else int(proc)
        owned = self._owned.get(pid)
        if owned is None:
            raise ValueError(f"pid {pid} was not started or adopted by this registry; "
                             "only processes the notebook owns are stopped")
        return _terminate(owned, self.stop_timeout if timeout is None else timeout)

    def stop_all(self) -> list[str]:
        """Runs cleanups (newest first), then stops every owned process still alive.

        Returns a list of problems (empty when everything stopped); never raises, because it is
        called from atexit and from the notebook's last cell after failures.
        """
        problems: list[str] = []
        with self._lock:
            cleanups, self._cleanups = self._cleanups[::-1], []
        for name, func in cleanups:
            try:
                func()
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                problems.append(f"cleanup {name}: {exc!r}")
        for owned in sorted(self._owned.values(), key=lambda o: -o.create_time):
            try:
                _terminate(owned, self.stop_timeout)
            except Exception as exc:  # noqa: BLE001
                problems.append(f"stop {owned.name} (pid {owned.pid}): {exc!r}")
        for owned in self._owned.values():
            if _alive(owned.pid, owned.create_time):
                problems.append(f"{owned.name} (pid {owned.pid}) is still alive")
        return problems

    def _install_sigterm(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame):
            self.stop_all()
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
            if callable(previous):
                previous(signum, frame)
            else:
                os.kill(os.getpid(), signal.SIGTERM)

        try:
            signal.signal(signal.SIGTERM, on_sigterm)
        except ValueError:  # not the main thread of the main interpreter
            pass


def _create_time(pid: int) -> float:
    import psutil
    try:
        return psutil.Process(pid).create_time()
    except psutil.NoSuchProcess:
        return 0.0


def _alive(pid: int, create_time: float) -> bool:
    """True if `pid` still names the process we started (not a reused PID) and it is not a zombie."""
    return owned_process(pid, create_time) is not None


def _terminate(owned: _Owned, timeout: float) -> int | None:
    if owned.popen is not None:
        if owned.popen.poll() is None:
            owned.popen.terminate()
            try:
                return owned.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                owned.popen.kill()
                return owned.popen.wait(timeout)
        return owned.popen.returncode
    process = owned_process(owned.pid, owned.create_time)
    return None if process is None else terminate(process, timeout)


# --- Prometheus and Alertmanager HTTP APIs -----------------------------------------------------

class PromQLError(RuntimeError):
    """Prometheus rejected a request; the message carries the expression and Prometheus's error."""


def _http_json(url: str, timeout: float, data: bytes | None = None) -> Any:
    request = urllib.request.Request(url, data=data)
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
        except Exception:  # noqa: BLE001 - not JSON: quote the status only
            body = {"error": exc.reason}
        raise PromQLError(f"{url.split('?')[0]} answered HTTP {exc.code}: "
                          f"{body.get('error', body)}") from None


def _labels_frame(rows: list[dict], value_cols: Iterable[str]) -> pd.DataFrame:
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    labels = sorted(c for c in frame.columns if c not in value_cols)
    return frame[labels + [c for c in value_cols if c in frame.columns]]


class PromAPI:
    """Prometheus's HTTP API, answering with pandas DataFrames (one column per label)."""

    def __init__(self, url: str, timeout: float = 15.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def _get(self, path: str, **params) -> Any:
        query = urllib.parse.urlencode({k: v for k, v in params.items() if v is not None})
        body = _http_json(f"{self.url}{path}", self.timeout, query.encode() if query else None) \
            if path in ("/api/v1/query", "/api/v1/query_range") else \
            _http_json(f"{self.url}{path}" + (f"?{query}" if query else ""), self.timeout)
        if body.get("status") != "success":
            raise PromQLError(f"{path} {params.get('query', '')!r}: {body.get('error')}")
        return body["data"], body

    def raw_query(self, expr: str, at: float | None = None, stats: bool = False) -> dict:
        """The parsed JSON answer of /api/v1/query (with query statistics when `stats`)."""
        try:
            _, body = self._get("/api/v1/query", query=expr, time=at,
                                stats="all" if stats else None)
        except PromQLError as exc:
            raise PromQLError(f"query {expr!r} failed: {exc}") from None
        return body

    def query(self, expr: str, at: float | None = None) -> pd.DataFrame:
        """An instant query: one row per series, label columns then ``value`` (float)."""
        data = self.raw_query(expr, at)["data"]
        if data["resultType"] in ("scalar", "string"):
            return pd.DataFrame([{"value": float(data["result"][1])}])
        rows = [{**s["metric"], "value": float(s["value"][1])} for s in data["result"]]
        return _labels_frame(rows, ["value"])

    def value(self, expr: str, default: float | None = None) -> float | None:
        """The value of a query that returns one series (or a scalar); `default` when empty."""
        frame = self.query(expr)
        if frame.empty:
            return default
        if len(frame) > 1:
            raise PromQLError(f"{expr!r} returned {len(frame)} series; expected one. "
                              "Aggregate it (sum, max) first.")
        return float(frame["value"].iloc[0])

    def raw_query_range(self, expr: str, start: float, end: float, step: float,
                        stats: bool = False) -> dict:
        """The parsed JSON answer of /api/v1/query_range (with query statistics when `stats`)."""
        try:
            _, body = self._get("/api/v1/query_range", query=expr, start=start, end=end, step=step,
                                stats="all" if stats else None)
        except PromQLError as exc:
            raise PromQLError(f"range query {expr!r} failed: {exc}") from None
        return body

    def query_range(self, expr: str, start: float, end: float, step: float) -> pd.DataFrame:
        """A range query: long format, label columns then ``time`` (UTC) and ``value``."""
        data = self.raw_query_range(expr, start, end, step)["data"]
        rows = [{**s["metric"], "time": float(t), "value": float(v)}
                for s in data["result"] for t, v in s["values"]]
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
        data, _ = self._get("/api/v1/alerts")
        rows = [{"alertname": a["labels"].get("alertname"), "state": a["state"],
                 "severity": a["labels"].get("severity"), "active_at": a.get("activeAt"),
                 "value": a.get("value"), "labels": a["labels"]} for a in data["alerts"]]
        return pd.DataFrame(rows, columns=["alertname", "state", "severity", "active_at", "value", "labels"])

    def targets(self) -> pd.DataFrame:
        data, _ = self._get("/api/v1/targets")
        rows = [{"job": t["labels"].get("job"), "instance": t["labels"].get("instance"),
                 "health": t["health"], "last_error": t.get("lastError", "")}
                for t in data["activeTargets"]]
        return pd.DataFrame(rows, columns=["job", "instance", "health", "last_error"])

    def rules(self) -> pd.DataFrame:
        data, _ = self._get("/api/v1/rules")
        rows = [{"group": g["name"], "type": r["type"], "name": r["name"], "health": r.get("health"),
                 "state": r.get("state"), "for_seconds": r.get("duration"), "query": r["query"]}
                for g in data["groups"] for r in g["rules"]]
        return pd.DataFrame(rows, columns=["group", "type", "name", "health", "state", "for_seconds",
                                           "query"])

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=self.timeout) as response:
                return response.status == 200
        except OSError:
            return False


class AlertmanagerAPI:
    def __init__(self, url: str, timeout: float = 10.0):
        self.url = url.rstrip("/")
        self.timeout = timeout

    def alerts(self) -> pd.DataFrame:
        """Alerts Alertmanager holds and has not resolved (API v2)."""
        body = _http_json(f"{self.url}/api/v2/alerts", self.timeout)
        rows = [{"alertname": a["labels"].get("alertname"), "state": a["status"]["state"],
                 "severity": a["labels"].get("severity"), "starts_at": a.get("startsAt"),
                 "ends_at": a.get("endsAt"), "receivers": [r["name"] for r in a.get("receivers", [])],
                 "summary": a.get("annotations", {}).get("summary"), "labels": a["labels"]}
                for a in body]
        return pd.DataFrame(rows, columns=["alertname", "state", "severity", "starts_at", "ends_at",
                                           "receivers", "summary", "labels"])


class WebhookReceiver(StackWebhookReceiver):
    """The stack's Alertmanager webhook receiver (a thread in this process on 127.0.0.1),
    started at once, with its notifications as a table."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        super().__init__(host, port)
        self.start()

    def table(self) -> pd.DataFrame:
        """One row per alert per notification: alertname, status (firing|resolved)."""
        rows = [{"alertname": a.get("labels", {}).get("alertname"), "status": a.get("status"),
                 "receiver": n.get("receiver"), "group_status": n.get("status")}
                for n in list(self.notifications) for a in n.get("alerts", [])]
        return pd.DataFrame(rows, columns=["alertname", "status", "receiver", "group_status"])

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


def draw_dashboard(dashboard: dict, panels: list[PanelData], *, width_inches: float = 18.0,
                   row_height_inches: float = 0.45, title: str | None = None):
    """Draws the fetched panels on one matplotlib figure laid out by each panel's gridPos.

    Grid rows become `row_height_inches` each; every panel keeps room inside its cell for its
    title above and its time axis below, as Grafana does.
    """
    import matplotlib.pyplot as plt

    bottom = max((p.grid.get("y", 0) + p.grid.get("h", 1)) for p in panels) if panels else 1
    header = 0.7  # inches for the dashboard title
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
    return fig


def panels_table(panels: list[PanelData]) -> pd.DataFrame:
    """One row per panel: its title, type, unit, how many queries and series, and any error."""
    return pd.DataFrame([{"title": p.title, "type": p.type, "unit": p.unit,
                          "queries": len(p.queries), "series": len(p.series),
                          "has_data": p.has_data or p.type in ("row", "text"),
                          "error": p.errors[0] if p.errors else ""} for p in panels])
