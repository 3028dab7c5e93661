"""The ASGI middleware attributes a request's queries to the keys its headers carry."""
from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI

from ragmon import monitored_query, set_attribution
from ragmon.serving.asgi import RAGMonitoringMiddleware
from tests.serving.test_streams import Served


@pytest.fixture(autouse=True)
def leaves_the_query_path():
    """Attribution joins the query path on first use; each test leaves it as it found it."""
    yield
    from ragmon.instrument.attribution import stop_using
    stop_using()


def app_with(metrics, sink, **middleware):
    app = FastAPI()
    app.add_middleware(RAGMonitoringMiddleware, metrics=metrics, registry=metrics.registry,
                       **middleware)

    @monitored_query(operation="lookup", metrics=metrics, request_log=sink,
                     attribution={"feature": "lookup"})
    async def lookup(item_id: int) -> dict:
        if item_id == 7:
            set_attribution(team="vip")
        return {"item": item_id}

    @app.get("/items/{item_id}")
    async def item(item_id: int):
        return await lookup(item_id)

    return app


def test_headers_named_by_the_settings_attribute_the_request(metrics, sink):
    with Served(app_with(metrics, sink)) as served, httpx.Client(
            base_url=f"http://127.0.0.1:{served.port}") as client:
        assert client.get("/items/1", headers={"X-Tenant-Id": "acme", "X-Team": "search"}
                          ).status_code == 200
        assert client.get("/items/7", headers={"x-tenant-id": "globex"}).status_code == 200
        assert client.get("/items/2").status_code == 200
        assert client.get("/items/3", headers={"X-Tenant-Id": "a b" * 40}).status_code == 200
    assert [r["attribution"] for r in sink.records] == [
        {"feature": "lookup", "tenant": "acme", "team": "search"},
        {"feature": "lookup", "tenant": "globex", "team": "vip"},
        {"feature": "lookup"},
        {"feature": "lookup", "tenant": "invalid"}]
    assert metrics.registry.get_sample_value("rag_attribution_invalid_values_total",
                                             {"key": "tenant"}) == 1


def test_the_middleware_takes_its_own_header_names(metrics, sink):
    app = app_with(metrics, sink, attribution_headers={"tenant": "X-Org"})
    with Served(app) as served, httpx.Client(base_url=f"http://127.0.0.1:{served.port}") as client:
        client.get("/items/1", headers={"X-Org": "acme", "X-Tenant-Id": "ignored"})
    assert sink.records[0]["attribution"] == {"feature": "lookup", "tenant": "acme"}
