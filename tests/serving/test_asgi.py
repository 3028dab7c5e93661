"""The ASGI middleware on a real uvicorn: bounded HTTP labels, request ids in and out, /metrics."""
from __future__ import annotations

import asyncio

import httpx
import pytest
from fastapi import FastAPI
from fastapi.responses import StreamingResponse
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from ragmon import monitored_query
from ragmon.serving.asgi import RAGMonitoringMiddleware
from tests.serving.test_streams import Served


def fastapi_app(metrics, sink):
    app = FastAPI()
    app.add_middleware(RAGMonitoringMiddleware, metrics=metrics, registry=metrics.registry)

    @monitored_query(operation="lookup", metrics=metrics, request_log=sink)
    async def lookup(item_id: int) -> dict:
        return {"item": item_id}

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return await lookup(item_id)

    @app.get("/boom")
    async def boom():
        raise RuntimeError("broken handler")

    @app.get("/stream")
    async def stream():
        async def chunks():
            for _ in range(3):
                await asyncio.sleep(0.05)
                yield b"chunk"
        return StreamingResponse(chunks())

    return app


def sample(registry, name, **labels):
    return registry.get_sample_value(name, labels) or 0


def test_requests_are_counted_by_route_template_method_and_status_class(metrics, registry, sink):
    with Served(fastapi_app(metrics, sink)) as served, httpx.Client(
            base_url=f"http://127.0.0.1:{served.port}") as client:
        for item_id in range(30):
            assert client.get(f"/items/{item_id}").status_code == 200
        assert client.get("/no/such/path").status_code == 404
        assert client.get("/items/not-a-number").status_code == 422
        assert client.request("BREW", "/items/1").status_code == 405
        assert client.get("/stream").content == b"chunk" * 3
        assert client.get("/boom").status_code == 500  # last: uvicorn closes this connection
    count = lambda method, route, status: sample(  # noqa: E731
        registry, "rag_http_requests_total", method=method, route=route, status_class=status)
    assert count("GET", "/items/{item_id}", "2xx") == 30
    assert count("GET", "/items/{item_id}", "4xx") == 1
    assert count("GET", "unmatched", "4xx") == 1
    assert count("GET", "/boom", "5xx") == 1
    assert count("other", "/items/{item_id}", "4xx") == 1
    routes = {s.labels["route"] for f in registry.collect() if f.name == "rag_http_requests"
              for s in f.samples}
    assert routes == {"/items/{item_id}", "unmatched", "/boom", "/stream"}  # never a raw path
    # Only the streamed response has a body duration; its latency stops at the headers.
    assert sample(registry, "rag_http_response_stream_duration_seconds_count",
                  method="GET", route="/stream") == 1
    assert sample(registry, "rag_http_response_stream_duration_seconds_count",
                  method="GET", route="/items/{item_id}") == 0
    assert (sample(registry, "rag_http_request_duration_seconds_sum", method="GET", route="/stream")
            < sample(registry, "rag_http_response_stream_duration_seconds_sum", method="GET",
                     route="/stream"))


def test_the_request_id_comes_in_goes_out_and_is_the_records(metrics, sink):
    with Served(fastapi_app(metrics, sink)) as served, httpx.Client(
            base_url=f"http://127.0.0.1:{served.port}") as client:
        given = client.get("/items/1", headers={"X-Request-ID": "trace-abc.123"})
        made = client.get("/items/2")
        refused = client.get("/items/3", headers={"X-Request-ID": "bad id\twith spaces"})
    assert given.headers["x-request-id"] == "trace-abc.123"
    assert made.headers["x-request-id"] and refused.headers["x-request-id"] != "bad id\twith spaces"
    assert [r["request_id"] for r in sink.records] == [
        "trace-abc.123", made.headers["x-request-id"], refused.headers["x-request-id"]]


def test_metrics_route_serves_the_registry_in_single_process_mode(metrics, sink):
    with Served(fastapi_app(metrics, sink)) as served, httpx.Client(
            base_url=f"http://127.0.0.1:{served.port}") as client:
        client.get("/items/7")
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'rag_queries_total{operation="lookup",status="success"} 1.0' in response.text


def test_plain_starlette_routes_are_named_by_template(metrics, registry):
    async def hello(request):
        return PlainTextResponse("hi " + request.path_params["name"])
    app = RAGMonitoringMiddleware(Starlette(routes=[Route("/hello/{name}", hello)]),
                                  metrics=metrics, metrics_path=None)
    with Served(app) as served, httpx.Client(base_url=f"http://127.0.0.1:{served.port}") as client:
        assert client.get("/hello/ada").text == "hi ada"
        assert client.get("/metrics").status_code == 404  # metrics_path=None: not served
    assert sample(registry, "rag_http_requests_total", method="GET", route="/hello/{name}",
                  status_class="2xx") == 1


@pytest.mark.parametrize("kwargs, expected", [
    ({"metrics_path": "metrics"}, "metrics_path='metrics'"),
    ({"metrics": "default"}, "metrics='default'"),
])
def test_bad_arguments_are_named(kwargs, expected):
    with pytest.raises(ValueError, match=expected):
        RAGMonitoringMiddleware(lambda *a: None, **kwargs)
