"""ASGI middleware for FastAPI / Starlette: HTTP metrics, request ids, /metrics, abandoned streams.

    app = FastAPI()
    app.add_middleware(RAGMonitoringMiddleware)

Per request it
- counts ``rag_http_requests_total{method, route, status_class}``: the route *template*
  ("/items/{item_id}", never the raw path), the method (other methods become "other") and the
  status class ("2xx"...), so a client cannot create series;
- times the response up to its headers in ``rag_http_request_duration_seconds``, and a streamed
  body separately in ``rag_http_response_stream_duration_seconds`` (a slow reader or a long
  generation does not inflate request latency);
- binds the request id: a well-formed incoming ``X-Request-ID`` is used, otherwise one is made;
  every @monitored_query inside records it, log lines carry it, and the response returns it;
- attributes the request's queries to the keys named by ATTRIBUTION_HEADERS (``X-Tenant-Id``
  -> ``tenant``, ...; values checked as ``ragmon.attribution`` checks them; ``attribution_headers``
  overrides the setting);
- finishes monitored streams the server abandoned (client gone) as soon as the response ends:
  recorded ``cancelled``, in-flight decremented, generator closed, instead of at garbage
  collection;
- serves ``/metrics`` (``metrics_path``; None turns it off): every worker's metrics merged in
  multiprocess mode, prometheus_client's registry otherwise.

It is plain ASGI: nothing from Starlette is needed except to name routes of a Starlette app
that are not FastAPI routes.
"""
from __future__ import annotations

import asyncio
import re
import time
from typing import Any

from ..instrument.catalog import HTTP_METHODS, RAGMetrics
from ..instrument.context import _BOUND_REQUEST_ID, OPEN_STREAMS, new_request_id
from ..instrument.keys import CURRENT_KEYS, bind
from ..instrument.runtime import default_metrics, recording_failed
from ..instrument.streams import close_abandoned_streams

REQUEST_ID_HEADER = "x-request-id"
UNMATCHED_ROUTE = "unmatched"
# What an incoming X-Request-ID may look like; anything else (too long, odd characters) is
# replaced, so the id is safe to echo in a header and to write in a log line.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:@/+=-]{1,128}")
_perf = time.perf_counter


class RAGMonitoringMiddleware:
    """See the module docstring. ``metrics``: the catalog to record into (default: the global
    one); ``registry``: what /metrics serves (default: all workers in multiprocess mode, else
    the global registry)."""

    def __init__(self, app, *, metrics: RAGMetrics | None = None,
                 metrics_path: str | None = "/metrics", registry=None,
                 attribution_headers: dict[str, str] | None = None):
        if metrics is not None and not isinstance(metrics, RAGMetrics):
            raise ValueError(f"metrics={metrics!r} is not a RAGMetrics catalog; pass "
                             "RAGMetrics(registry=...) or leave it out for the global one")
        if metrics_path is not None and (not isinstance(metrics_path, str)
                                         or not metrics_path.startswith("/")):
            raise ValueError(f"metrics_path={metrics_path!r} must be a path such as '/metrics', "
                             "or None to serve no metrics route")
        self.app = app
        self.metrics_path = metrics_path
        self._metrics = metrics
        self._registry = registry
        self._children: dict[tuple[str, str, str], tuple[Any, Any, Any]] = {}
        if attribution_headers is not None and not (
                isinstance(attribution_headers, dict)
                and all(isinstance(k, str) and isinstance(v, str) and v
                        for k, v in attribution_headers.items())):
            raise ValueError(f"attribution_headers={attribution_headers!r} must map attribution "
                             "keys to header names, e.g. {'tenant': 'X-Tenant-Id'}")
        # header name (lower-case bytes) -> attribution key; read from the settings on first use
        self._key_headers: dict[bytes, str] | None = None if attribution_headers is None else {
            header.lower().encode("latin-1"): key for key, header in attribution_headers.items()}

    @property
    def metrics(self) -> RAGMetrics:
        return self._metrics or default_metrics()

    @property
    def registry(self):
        if self._registry is None:
            from .workers import metrics_registry
            self._registry = metrics_registry()
        return self._registry

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = _perf()
        request_id = _incoming_request_id(scope) or new_request_id()
        id_header = (b"x-request-id", request_id.encode("ascii"))
        response: dict[str, Any] = {"status": 500, "headers_at": None, "chunks": 0,
                                    "last_chunk_at": None, "route": None}

        async def send_monitored(message) -> None:
            kind = message["type"]
            if kind == "http.response.start":
                response["status"] = message["status"]
                response["headers_at"] = _perf()
                headers = list(message.get("headers") or ())
                if not any(name.lower() == b"x-request-id" for name, _ in headers):
                    message = {**message, "headers": headers + [id_header]}
            elif kind == "http.response.body":
                response["chunks"] += 1
            await send(message)
            if kind == "http.response.body":
                response["last_chunk_at"] = _perf()

        id_token = _BOUND_REQUEST_ID.set(request_id)
        keys_token = self._bind_keys(scope)
        streams: list = []
        streams_token = OPEN_STREAMS.set(streams)
        try:
            if self.metrics_path is not None and scope["path"] == self.metrics_path:
                response["route"] = self.metrics_path
                await self._serve_metrics(scope, send_monitored)
            else:
                await self.app(scope, receive, send_monitored)
        finally:
            OPEN_STREAMS.reset(streams_token)
            if keys_token is not None:
                CURRENT_KEYS.reset(keys_token)
            _BOUND_REQUEST_ID.reset(id_token)
            end = _perf()
            if streams:
                try:
                    await close_abandoned_streams(streams)
                except BaseException as failure:  # cancelled while closing, or worse
                    recording_failed(self.metrics, "recording",
                                      "closing abandoned streams failed: %r", failure)
            self._observe(scope, response, start, end)

    def _bind_keys(self, scope):
        """Binds the attribution keys the request's headers carry; the token to reset, or None."""
        try:
            headers = self._key_headers
            if headers is None:
                headers = self._key_headers = {
                    header.lower().encode("latin-1"): key
                    for key, header in self.metrics.settings.ATTRIBUTION_HEADERS.items()}
            if not headers:
                return None
            found = None
            for name, value in scope.get("headers") or ():
                key = headers.get(name)
                if key is not None:
                    if found is None:
                        found = {}
                    found[key] = value.decode("latin-1")
            return bind(found, "middleware") if found else None
        except Exception as failure:
            recording_failed(self._metrics or default_metrics(), "recording",
                             "reading attribution headers failed: %r", failure)
            return None

    def _observe(self, scope, response: dict, start: float, end: float) -> None:
        try:
            method = scope.get("method", "GET")
            method = method if method in HTTP_METHODS else "other"
            status = response["status"]
            status_class = f"{status // 100}xx" if 100 <= status <= 599 else "other"
            route = response["route"] or _route_template(scope)
            key = (method, route, status_class)
            children = self._children.get(key)
            if children is None:
                m = self.metrics
                children = self._children[key] = (
                    m.http_requests.labels(method, route, status_class),
                    m.http_latency.labels(method, route), m.http_stream.labels(method, route))
            count, latency, stream = children
            count.inc()
            headers_at = response["headers_at"]
            latency.observe((headers_at if headers_at is not None else end) - start)
            if headers_at is not None and response["chunks"] > 1:  # a streamed body
                stream.observe((response["last_chunk_at"] or end) - headers_at)
        except Exception as failure:
            recording_failed(self._metrics or default_metrics(), "recording",
                              "recording an HTTP request failed: %r", failure)

    async def _serve_metrics(self, scope, send) -> None:
        from prometheus_client.exposition import choose_encoder
        accept = ""
        for name, value in scope.get("headers") or ():
            if name == b"accept":
                accept = value.decode("latin-1")
        encoder, content_type = choose_encoder(accept)
        registry = self.registry
        # Reading every worker's files is blocking work: keep it off the event loop.
        body = await asyncio.get_running_loop().run_in_executor(None, encoder, registry)
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", content_type.encode("latin-1")),
                                (b"content-length", str(len(body)).encode("ascii"))]})
        await send({"type": "http.response.body", "body": body})


def _incoming_request_id(scope) -> str | None:
    for name, value in scope.get("headers") or ():
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


def _route_template(scope) -> str:
    """The template of the route that answered ("/items/{item_id}"), never the raw path."""
    route = scope.get("route")  # set by FastAPI's router
    if route is None and scope.get("endpoint") is not None:
        route = _starlette_route(scope)
    path = getattr(route, "path_format", None) or getattr(route, "path", None)
    if isinstance(path, str) and path:
        return path
    return UNMATCHED_ROUTE


def _starlette_route(scope):
    try:
        from starlette.routing import Match
    except ImportError:
        return None
    for route in getattr(scope.get("app"), "routes", None) or ():
        try:
            if route.matches(scope)[0] == Match.FULL:
                return route
        except Exception:
            continue
    return None
