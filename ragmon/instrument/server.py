"""The /metrics endpoint: prometheus_client's own HTTP server, on loopback unless told otherwise."""
from __future__ import annotations

import errno

from prometheus_client import REGISTRY, CollectorRegistry

from .exposition import start_safe_http_server

from ..checks import check_port


def start_metrics_server(port: int | None = None, addr: str | None = None,
                         registry: CollectorRegistry | None = None):
    """Serves /metrics on addr:port (defaults: METRICS_ADDR=127.0.0.1, METRICS_PORT=8000).

    Port 0 picks a free port; read it back from ``server.server_port``. Returns the server;
    ``server.shutdown()`` stops it. A port in use raises OSError naming the port.
    """
    from ..settings import check_startup, get_settings
    settings = check_startup(get_settings())  # a broken price file stops the server here
    port = settings.METRICS_PORT if port is None else port
    addr = settings.METRICS_ADDR if addr is None else addr
    check_port("port", port)
    try:
        server, _thread = start_safe_http_server(port, addr=addr, registry=registry or REGISTRY)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise OSError(exc.errno, f"cannot serve /metrics: port {port} on {addr} is already in "
                          f"use. Stop the other process or choose another port (METRICS_PORT=... "
                          f"or --port)") from exc
        raise OSError(exc.errno, f"cannot serve /metrics on {addr}:{port}: {exc.strerror}") from exc
    return server
