"""A local OTLP/HTTP receiver for tests and the notebook: it accepts what an OpenTelemetry
exporter sends to ``/v1/metrics`` and ``/v1/traces`` (protobuf), decodes it with the official
``opentelemetry-proto`` messages and keeps it, so a test can check names, units, attributes,
bucket boundaries and values without a vendor or a Collector.

    with OTLPReceiver() as receiver:
        ragmon.configure(OTEL_ENABLED=True, OTEL_EXPORTER_OTLP_ENDPOINT=receiver.url)
        ...
        receiver.histogram("gen_ai.client.token.usage")   # [(attributes, point), ...]

Binds 127.0.0.1 on a free port; ``stop()`` (or leaving the ``with``) shuts it down.
"""
from __future__ import annotations

import gzip
import threading
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def attributes_of(key_values) -> dict:
    """An OTLP KeyValue list as a plain dict."""
    found = {}
    for item in key_values:
        value = item.value
        kind = value.WhichOneof("value")
        found[item.key] = getattr(value, kind) if kind else None
    return found


class OTLPReceiver:
    """Receives OTLP/HTTP protobuf exports on 127.0.0.1; every request decoded and kept."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, keep: bool = True):
        from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
            ExportMetricsServiceRequest, ExportMetricsServiceResponse)
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest, ExportTraceServiceResponse)
        self.metric_requests: list = []
        self.trace_requests: list = []
        self.received = 0  # export requests decoded
        self._lock = threading.Lock()
        receiver = self
        messages = {"/v1/metrics": (ExportMetricsServiceRequest, ExportMetricsServiceResponse,
                                    self.metric_requests),
                    "/v1/traces": (ExportTraceServiceRequest, ExportTraceServiceResponse,
                                   self.trace_requests)}

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - the http.server interface
                found = messages.get(self.path)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if found is None or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_error(404 if found is None else 415)
                    return
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    body = gzip.decompress(body)
                elif encoding == "deflate":
                    body = zlib.decompress(body)
                request_type, response_type, kept = found
                request = request_type()
                request.ParseFromString(body)
                with receiver._lock:
                    receiver.received += 1
                    if keep:
                        kept.append(request)
                reply = response_type().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):  # quiet
                pass

        self._server = ThreadingHTTPServer((host, port), Handler)
        self._server.daemon_threads = True
        self.url = f"http://{host}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="otlp-receiver")
        self._thread.start()

    def stop(self) -> None:
        """Stops serving; a second call does nothing."""
        if not self._thread.is_alive():
            return
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> "OTLPReceiver":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- reading what arrived ----------------------------------------------------------------

    def metrics(self) -> list[tuple[dict, object]]:
        """(resource attributes, Metric) of every metric received, in arrival order."""
        with self._lock:
            requests = list(self.metric_requests)
        found = []
        for request in requests:
            for resource_metrics in request.resource_metrics:
                resource = attributes_of(resource_metrics.resource.attributes)
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        found.append((resource, metric))
        return found

    def latest(self, name: str) -> dict:
        """The last export of metric `name` per service.instance.id: {instance: Metric}.
        Cumulative exports carry the totals so far, so the last one holds them all."""
        latest = {}
        for resource, metric in self.metrics():
            if metric.name == name:
                latest[resource.get("service.instance.id")] = metric
        return latest

    def points(self, name: str) -> list[tuple[dict, object]]:
        """(attributes, data point) of metric `name`, from the last export of each process."""
        found = []
        for metric in self.latest(name).values():
            data = getattr(metric, metric.WhichOneof("data"))
            for point in data.data_points:
                found.append((attributes_of(point.attributes), point))
        return found

    def spans(self) -> list[tuple[dict, object]]:
        """(resource attributes, Span) of every span received."""
        with self._lock:
            requests = list(self.trace_requests)
        found = []
        for request in requests:
            for resource_spans in request.resource_spans:
                resource = attributes_of(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for span in scope.spans:
                        found.append((resource, span))
        return found


def main() -> None:
    """``python -m ragmon.testing.otlp_receiver``: a receiver in its own process (benchmarks),
    printing its URL; it counts what arrives and keeps nothing."""
    import sys

    receiver = OTLPReceiver(keep=False)
    print(receiver.url, flush=True)
    try:
        sys.stdin.read()  # until the parent closes our stdin
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
