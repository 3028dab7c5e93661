"""The one client for the HTTP APIs of the stack's engines: Prometheus (and every engine that
answers its query API: VictoriaMetrics, vmalert's /api/v1/rules and /api/v1/alerts) and
Alertmanager (API v2).

Plain JSON in and out, standard library only: the runner, the tests, the benchmark and the
notebook (``ragmon.course`` turns the answers into pandas tables) all talk through it.

    prom = PrometheusAPI("http://127.0.0.1:9090")
    prom.query('sum(rate(rag_queries_total[5m]))')   # the `result` list of /api/v1/query
    prom.value('sum(up)')                            # one number, or the default when empty
    AlertmanagerAPI("http://127.0.0.1:9093").alerts()
"""
from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from .process import StackError


class APIError(StackError):
    """The engine rejected a request or could not be reached; the message carries the URL, the
    expression and the engine's own error."""


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """True when GET `url` answers 200 (a readiness or health endpoint)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def http_json(url: str, *, timeout: float, form: dict | None = None,
              headers: dict | None = None) -> Any:
    """GET `url` (POST with a form body when `form` is given) and parse the JSON answer."""
    data = urllib.parse.urlencode(form).encode() if form is not None else None
    request = urllib.request.Request(url, data=data, headers=dict(headers or {}))
    if data is not None:
        request.add_header("Content-Type", "application/x-www-form-urlencoded")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            body = json.load(exc)
            reason = body.get("error", body) if isinstance(body, dict) else body
        except ValueError:  # not JSON: quote the status only
            reason = exc.reason
        raise APIError(f"{url.split('?')[0]} answered HTTP {exc.code}: {reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise APIError(f"{url.split('?')[0]} cannot be reached: "
                       f"{getattr(exc, 'reason', exc)}") from None
    except ValueError as exc:
        raise APIError(f"{url.split('?')[0]} did not answer JSON: {exc}") from None


def _clean(params: dict) -> dict:
    return {key: value for key, value in params.items() if value is not None}


class PrometheusAPI:
    """Prometheus's HTTP API (/api/v1/...), also answered by VictoriaMetrics and vmalert."""

    def __init__(self, url: str, timeout: float = 15.0):
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"url={url!r} is not an http(s) URL; expected e.g. "
                             "http://127.0.0.1:9090")
        self.url = str(url).rstrip("/")
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"PrometheusAPI({self.url!r})"

    def body(self, path: str, params: dict | None = None, *, post: bool = False) -> dict:
        """The whole JSON answer of `path` (status, data, warnings, stats); APIError unless the
        status is success."""
        params = _clean(params or {})
        if post:
            body = http_json(self.url + path, timeout=self.timeout, form=params)
        else:
            query = urllib.parse.urlencode(params)
            body = http_json(self.url + path + (f"?{query}" if query else ""), timeout=self.timeout)
        if not isinstance(body, dict) or body.get("status") != "success":
            error = body.get("error") if isinstance(body, dict) else body
            raise APIError(f"{self.url}{path} {params.get('query', '')!r}: {error}")
        return body

    def data(self, path: str, params: dict | None = None, *, post: bool = False) -> Any:
        return self.body(path, params, post=post)["data"]

    # queries
    def raw_query(self, expr: str, at: float | None = None, stats: bool = False) -> dict:
        """The whole answer of /api/v1/query (with query statistics when `stats`)."""
        try:
            return self.body("/api/v1/query", {"query": expr, "time": at,
                                               "stats": "all" if stats else None}, post=True)
        except APIError as exc:
            raise APIError(f"query {expr!r} failed: {exc}") from None

    def query(self, expr: str, at: float | None = None) -> list[dict]:
        """An instant query: the `result` list ({"metric": {...}, "value": [t, "v"]} each; a
        scalar or string result comes back as one row without labels)."""
        return self.result(expr, at)

    def result(self, expr: str, at: float | None = None) -> list[dict]:
        data = self.raw_query(expr, at)["data"]
        if data["resultType"] in ("scalar", "string"):
            return [{"metric": {}, "value": data["result"]}]
        return data["result"]

    def value(self, expr: str, default: float | None = None, at: float | None = None) -> float | None:
        """The value of a query that returns one series (or a scalar); `default` when empty."""
        result = self.result(expr, at)
        if not result:
            return default
        if len(result) > 1:
            raise APIError(f"{expr!r} returned {len(result)} series; expected one. "
                           "Aggregate it (sum, max) first.")
        return float(result[0]["value"][1])

    def raw_query_range(self, expr: str, start: float, end: float, step: float,
                        stats: bool = False) -> dict:
        """The whole answer of /api/v1/query_range (with query statistics when `stats`)."""
        try:
            return self.body("/api/v1/query_range",
                             {"query": expr, "start": start, "end": end, "step": step,
                              "stats": "all" if stats else None}, post=True)
        except APIError as exc:
            raise APIError(f"range query {expr!r} failed: {exc}") from None

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        """A range query: the `result` list ({"metric": {...}, "values": [[t, "v"], ...]} each)."""
        return self.range_result(expr, start, end, step)

    def range_result(self, expr: str, start: float, end: float, step: float) -> list[dict]:
        return self.raw_query_range(expr, start, end, step)["data"]["result"]

    def query_exemplars(self, expr: str, start: float, end: float) -> list[dict]:
        """Exemplars stored for the series `expr` selects: [{"seriesLabels", "exemplars"}]."""
        return self.data("/api/v1/query_exemplars", {"query": expr, "start": start, "end": end},
                         post=True)

    # state
    def alerts(self) -> list[dict]:
        """Alerts the rule evaluator holds (pending or firing)."""
        return self.data("/api/v1/alerts")["alerts"]

    def targets(self) -> list[dict]:
        return self.data("/api/v1/targets")["activeTargets"]

    def rule_groups(self) -> list[dict]:
        return self.data("/api/v1/rules")["groups"]

    def ready(self) -> bool:
        return http_ok(f"{self.url}/-/ready", timeout=min(self.timeout, 5.0))

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/-/healthy", timeout=min(self.timeout, 5.0))


class AlertmanagerAPI:
    """Alertmanager's HTTP API v2."""

    def __init__(self, url: str, timeout: float = 10.0):
        if not str(url).startswith(("http://", "https://")):
            raise ValueError(f"url={url!r} is not an http(s) URL; expected e.g. "
                             "http://127.0.0.1:9093")
        self.url = str(url).rstrip("/")
        self.timeout = float(timeout)

    def __repr__(self) -> str:
        return f"AlertmanagerAPI({self.url!r})"

    def alerts(self, filter: str | None = None) -> list[dict]:  # noqa: A002 (the API's name)
        """Alerts Alertmanager holds and has not resolved; `filter` is a matcher such as
        'job="rag-service"'."""
        query = "?" + urllib.parse.urlencode({"filter": filter}) if filter else ""
        return http_json(f"{self.url}/api/v2/alerts{query}", timeout=self.timeout)

    def status(self) -> dict:
        """Version, configuration and cluster state (peers and their status)."""
        return http_json(f"{self.url}/api/v2/status", timeout=self.timeout)

    def cluster_peers(self) -> list[str]:
        """Names of the cluster's members this peer sees (itself included)."""
        return [peer["name"] for peer in self.status().get("cluster", {}).get("peers") or []]

    def ready(self) -> bool:
        return http_ok(f"{self.url}/-/ready", timeout=min(self.timeout, 5.0))

    def healthy(self) -> bool:
        return http_ok(f"{self.url}/-/healthy", timeout=min(self.timeout, 5.0))
