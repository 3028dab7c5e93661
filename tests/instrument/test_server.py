import logging
import socket
import urllib.request

import pytest
from prometheus_client import REGISTRY

from m2_3_monitoring import start_metrics_server


def test_serves_metrics_on_loopback(registry, metrics):
    metrics.queries.labels("op", "success").inc()
    server = start_metrics_server(port=0, registry=registry)
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert 'rag_queries_total{operation="op",status="success"} 1.0' in body
    finally:
        server.shutdown()
        server.server_close()


def test_a_taken_port_is_logged_and_counted_not_raised(registry, caplog):
    from ragmon import default_metrics
    counted = lambda: REGISTRY.get_sample_value(  # noqa: E731
        "rag_instrumentation_errors_total", {"reason": "metrics_port_in_use"}) or 0
    default_metrics()
    before = counted()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.WARNING, logger="ragmon"):
            assert start_metrics_server(port=port, registry=registry) is None
    assert f"port {port} on 127.0.0.1 is already in use" in caplog.text
    assert counted() == before + 1


@pytest.mark.parametrize("port", [-1, 70000, "8000", True])
def test_bad_ports_are_rejected(registry, port):
    with pytest.raises(ValueError, match="not a TCP port"):
        start_metrics_server(port=port, registry=registry)
