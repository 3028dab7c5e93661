"""A FastAPI app traced by OpenTelemetry's own instrumentation, on a real uvicorn: the RAG spans
of its queries are children of its request span, in the trace the client started."""
from __future__ import annotations

import httpx
import pytest
from fastapi import FastAPI
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

import ragmon
from ragmon.instrument.runtime import STATE, otel_flush
from ragmon.settings import set_settings
from ragmon.testing.otlp_receiver import OTLPReceiver
from tests.conftest import ListSink
from tests.serving.test_streams import Served

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"


@pytest.fixture
def receiver():
    with OTLPReceiver() as running:
        ragmon.configure(OTEL_ENABLED=True, OTEL_EXPORTER_OTLP_ENDPOINT=running.url,
                         REQUEST_LOG_DESTINATION="none", LOG_DESTINATION="none",
                         PRICE_DATABASE="none")
        try:
            yield running
        finally:
            ragmon.configure(OTEL_ENABLED=False, REQUEST_LOG_DESTINATION="none")
            set_settings(None)


def make_app(metrics, sink, host_provider) -> FastAPI:
    app = FastAPI()

    @ragmon.monitored_query("ask", model="gpt-4o-mini", metrics=metrics, request_log=sink)
    async def answer(question: str) -> dict:
        async with ragmon.stage("retrieval"):
            documents = [question]
        ragmon.record_tokens(input_tokens=100, output_tokens=20)
        return {"answer": f"{len(documents)} document(s)"}

    @app.get("/ask")
    async def ask(q: str):
        return await answer(q)

    FastAPIInstrumentor.instrument_app(app, tracer_provider=host_provider)
    return app


def test_rag_spans_are_children_of_the_fastapi_request_span(receiver, metrics):
    host = TracerProvider()
    exporter = OTLPSpanExporter(endpoint=receiver.url + "/v1/traces")
    host.add_span_processor(SimpleSpanProcessor(exporter))
    sink = ListSink()
    app = make_app(metrics, sink, host)
    try:
        with Served(app) as served:
            response = httpx.get(f"http://127.0.0.1:{served.port}/ask", params={"q": "why"},
                                 headers={"traceparent": f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"})
            assert response.status_code == 200
        assert otel_flush()
        host.force_flush()
    finally:
        FastAPIInstrumentor.uninstrument_app(app)
        host.shutdown()
    assert STATE.otel is not None
    spans = {span.span_id: (resource, span) for resource, span in receiver.spans()}
    query = next(span for _, span in spans.values() if span.name == "rag.query ask")
    request_resource, request_span = spans[query.parent_span_id]
    assert request_span.kind == request_span.SPAN_KIND_SERVER
    assert request_span.name == "GET /ask"
    assert request_span.parent_span_id.hex() == CLIENT_SPAN
    assert query.trace_id.hex() == request_span.trace_id.hex() == CLIENT_TRACE
    stage = next(span for _, span in spans.values() if span.name == "rag.stage retrieval")
    assert stage.parent_span_id == query.span_id
    record = sink.records[0]
    assert (record["trace_id"], record["span_id"]) == (CLIENT_TRACE, query.span_id.hex())
    # The RAG spans come from ragmon's own provider (its resource), the request span from the app's.
    assert spans[query.span_id][0]["service.name"] == "rag-service"
    assert request_resource["service.name"].startswith("unknown_service")
