"""A /metrics endpoint that cannot be silenced by one bad family.

prometheus_client renders the whole registry in one go: if any family raises while it renders
(a custom collector that fails, a value that cannot be encoded), every scrape answers HTTP 500,
Prometheus marks the target down and every alert on it goes quiet. ``make_metrics_app`` renders
as prometheus_client does; only if that raises does it render again family by family, leaving
out the ones that fail and counting each in rag_instrumentation_errors_total{reason="exposition"}.
The usual scrape pays nothing for the safety net.
"""
from __future__ import annotations

import logging
import threading
import weakref
from typing import Callable, Iterable

from prometheus_client import REGISTRY, generate_latest, make_wsgi_app

log = logging.getLogger("ragmon")

# The catalog registered in each registry, so a failed render is counted where it belongs.
_catalogs: "weakref.WeakKeyDictionary[object, object]" = weakref.WeakKeyDictionary()


def register_catalog(registry, catalog) -> None:
    try:
        _catalogs[registry] = weakref.ref(catalog)  # the catalog holds the registry, not back
    except TypeError:  # a registry that cannot be weakly referenced is simply not counted
        pass


def _count_failure(registry, what: str, exc: BaseException) -> None:
    try:
        log.warning("monitoring: %s failed to render and was left out of /metrics: %r "
                    "(counted in rag_instrumentation_errors_total{reason=\"exposition\"})", what, exc)
        ref = _catalogs.get(registry)
        catalog = ref() if ref is not None else None  # every RAGMetrics registers itself
        if catalog is not None:
            catalog.count_instrumentation_error("exposition")
    except Exception:  # counting must not break the scrape either
        pass


class _OneFamily:
    __slots__ = ("family",)

    def __init__(self, family):
        self.family = family

    def collect(self):
        return [self.family]


class RenderableFamilies:
    """A view of `registry` whose ``collect()`` yields only the families that render."""

    def __init__(self, registry):
        self.registry = registry

    def _collectors(self) -> Iterable:
        lock = getattr(self.registry, "_lock", None)
        names = getattr(self.registry, "_collector_to_names", None)
        if lock is None or names is None:
            return [self.registry]
        with lock:
            return list(names)

    def collect(self):
        for collector in self._collectors():
            try:
                families = list(collector.collect())
            except Exception as exc:
                _count_failure(self.registry, f"collector {type(collector).__name__}", exc)
                continue
            for family in families:
                try:
                    generate_latest(_OneFamily(family))
                except Exception as exc:
                    _count_failure(self.registry, f"metric family {getattr(family, 'name', '?')!r}", exc)
                    continue
                yield family

    def restricted_registry(self, names):
        restricted = self.registry.restricted_registry(names)
        return RenderableFamilies(restricted)


def make_metrics_app(registry=None) -> Callable:
    """prometheus_client's WSGI app for `registry`, falling back to family-by-family rendering."""
    registry = REGISTRY if registry is None else registry
    plain = make_wsgi_app(registry)
    careful = make_wsgi_app(RenderableFamilies(registry))

    def metrics_app(environ, start_response):
        try:
            return plain(environ, start_response)
        except Exception:  # start_response was not called: the output is baked first
            return careful(environ, start_response)

    return metrics_app


def start_safe_http_server(port: int, addr: str = "127.0.0.1", registry=None):
    """prometheus_client.start_http_server with make_metrics_app; returns (server, thread)."""
    from wsgiref.simple_server import make_server
    from prometheus_client.exposition import ThreadingWSGIServer, _get_best_family, _SilentHandler

    class Server(ThreadingWSGIServer):
        pass

    Server.address_family, addr = _get_best_family(addr, port)
    httpd = make_server(addr, port, make_metrics_app(registry), Server, handler_class=_SilentHandler)
    thread = threading.Thread(target=httpd.serve_forever, name="ragmon-metrics", daemon=True)
    thread.start()
    return httpd, thread
