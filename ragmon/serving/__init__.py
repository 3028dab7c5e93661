"""Serving a monitored application: the multi-worker recipe (workers) and the ASGI middleware
(asgi). Neither is imported by ``import ragmon``; import the module you use."""
