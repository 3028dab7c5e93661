"""The /metrics endpoint: prometheus_client's own HTTP server, on loopback unless told otherwise."""
from __future__ import annotations

import errno

from prometheus_client import CollectorRegistry

from ..checks import check_port
from .exposition import start_safe_http_server


def start_metrics_server(port: int | None = None, addr: str | None = None,
                         registry: CollectorRegistry | None = None):
    """Serves /metrics on addr:port (defaults: METRICS_ADDR=127.0.0.1, METRICS_PORT=8000).

    Port 0 picks a free port; read it back from ``server.server_port``. Returns the server;
    ``server.shutdown()`` stops it.

    In multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set before prometheus_client was
    imported, as under gunicorn) it serves every worker's metrics merged, whichever process
    calls it. A port that cannot be bound (in use, often by a sibling worker that got there
    first) never stops the application: it is logged, counted in
    ``rag_instrumentation_errors_total{reason="metrics_port_in_use"}`` and None is returned.
    """
    from ..settings import check_startup, get_settings
    settings = check_startup(get_settings())  # a broken price file stops the server here
    port = settings.METRICS_PORT if port is None else port
    addr = settings.METRICS_ADDR if addr is None else addr
    check_port("port", port)
    if registry is None:
        from ..serving.workers import metrics_registry
        registry = metrics_registry()
    try:
        server, _thread = start_safe_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        from .runtime import default_metrics, recording_failed
        if exc.errno == errno.EADDRINUSE:
            recording_failed(default_metrics(), "metrics_port_in_use",
                              "cannot serve /metrics: port %d on %s is already in use (by another "
                              "worker of this server, or another program). Under gunicorn serve "
                              "/metrics from the master or the application's route (see "
                              "docs/production.md); otherwise choose another METRICS_PORT",
                              port, addr)
        else:
            recording_failed(default_metrics(), "metrics_server",
                              "cannot serve /metrics on %s:%d: %s", addr, port,
                              exc.strerror or exc)
        return None
    return server
