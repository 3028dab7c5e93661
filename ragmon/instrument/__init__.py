"""Measuring: the metric catalog, @monitored_query and stage(), pricing, request context, the
per-request records, the structured logger, PerformanceMonitor and the /metrics server.

Only the standard library and prometheus_client are imported here."""
