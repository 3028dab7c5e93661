"""Streams the client abandons, served by a real uvicorn: the middleware finishes them when the
response ends (recorded cancelled, in-flight back to 0, the generator's cleanup run), with the
garbage collector off, so nothing here waits for a collection."""
from __future__ import annotations

import asyncio
import gc
import socket
import threading
import time

import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import StreamingResponse

from ragmon import monitored_query
from ragmon.serving.asgi import RAGMonitoringMiddleware
from ragmon.stack.process import wait_until

CHUNK = b"x" * 65536


def make_app(metrics, sink, cleanups: list):
    app = FastAPI()
    app.add_middleware(RAGMonitoringMiddleware, metrics=metrics, registry=metrics.registry)

    @monitored_query(operation="sync_stream", metrics=metrics, request_log=sink)
    def sync_answer():
        try:
            for _ in range(100_000):
                time.sleep(0.001)
                yield CHUNK
        finally:
            cleanups.append("sync")

    @monitored_query(operation="async_stream", metrics=metrics, request_log=sink)
    async def async_answer():
        try:
            for _ in range(100_000):
                await asyncio.sleep(0)
                yield CHUNK
        finally:
            cleanups.append("async")

    @app.get("/sync")
    def sync_route():
        return StreamingResponse(sync_answer())

    @app.get("/async")
    async def async_route():
        return StreamingResponse(async_answer())

    return app


class Served:
    def __init__(self, app):
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                   log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        assert wait_until(lambda: self.server.started, timeout=30)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(30)


def hang_up_after_first_chunk(port: int, path: str) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        received = b""
        while b"\r\n\r\n" not in received or len(received) < 1000:
            received += sock.recv(4096)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")


@pytest.fixture
def no_gc():
    gc.collect()
    gc.disable()
    yield
    gc.enable()


@pytest.mark.parametrize("path, operation", [("/sync", "sync_stream"), ("/async", "async_stream")])
def test_an_abandoned_stream_is_finished_when_the_response_ends(metrics, registry, sink, no_gc,
                                                                path, operation):
    cleanups = []
    with Served(make_app(metrics, sink, cleanups)) as served:
        hang_up_after_first_chunk(served.port, path)
        assert wait_until(lambda: len(sink.records) == 1, timeout=20), "no record"
        in_flight = registry.get_sample_value("rag_queries_in_flight", {"operation": operation})
        assert wait_until(lambda: cleanups, timeout=20), "the generator was never closed"
    [record] = sink.records
    assert record["status"] == "cancelled" and record["operation"] == operation
    assert in_flight == 0
    assert registry.get_sample_value("rag_queries_total",
                                     {"operation": operation, "status": "cancelled"}) == 1
    assert registry.get_sample_value("rag_http_response_stream_duration_seconds_count",
                                     {"method": "GET", "route": path}) == 1
