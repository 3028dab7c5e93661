"""Per-query hooks: the one place where a feature (named scores, attribution, tracing) joins the
query path of ``@monitored_query``.

A hook costs nothing until its feature is first used: the query path tests ``HOOKS.start`` and
``HOOKS.finish`` (empty tuples) and calls nothing else. To add a feature:

1. Put it in its own module. Keep what it learns during a query in a slot of its own on
   ``context.QueryExtras`` (``ctx.extras().<slot>``: made on first use, so a query that does not
   use the feature carries None), or in its own ContextVar.
2. The first time the feature is used (its public function is called, its setting is read as
   on), register it once: ``hooks.on_finish(fn)`` and/or ``hooks.on_start(fn)``. Registering
   twice is a no-op. Never register at import: every query of every user would pay for it.
3. ``start(ctx)`` runs as the query starts, in its context (the QueryContext is current).
   ``finish(ctx, done)`` runs once the query's metrics are counted and before its record is
   written; ``done`` is a ``Finished`` (status, error type, duration, model, settlement) whose
   ``record`` dict (None when the query writes no record) takes the feature's record fields.
   A hook must be quick, must not keep ``ctx``, and must not raise: a raise is counted in
   rag_instrumentation_errors_total{reason="hook"} and the query's record is still written.

``bench/bench_overhead.py`` keeps the features honest: each adds its own row, and the rows
without the feature must not move.
"""
from __future__ import annotations

import threading
from typing import Callable

from .runtime import recording_failed


class Hooks:
    """The hooks in force, as tuples (replaced, never changed in place: a query reading them
    while a feature registers sees the old or the new tuple, whole)."""

    __slots__ = ("start", "finish")

    def __init__(self):
        self.start: tuple[Callable, ...] = ()
        self.finish: tuple[Callable, ...] = ()


HOOKS = Hooks()
_lock = threading.Lock()


def on_start(fn: Callable) -> None:
    """Runs ``fn(ctx)`` as each monitored query starts, from now on."""
    with _lock:
        if fn not in HOOKS.start:
            HOOKS.start = (*HOOKS.start, fn)


def on_finish(fn: Callable) -> None:
    """Runs ``fn(ctx, done)`` as each monitored query finishes, from now on."""
    with _lock:
        if fn not in HOOKS.finish:
            HOOKS.finish = (*HOOKS.finish, fn)


def remove(fn: Callable) -> None:
    """Stops calling ``fn`` (tests; a feature switched off)."""
    with _lock:
        HOOKS.start = tuple(h for h in HOOKS.start if h is not fn)
        HOOKS.finish = tuple(h for h in HOOKS.finish if h is not fn)


class Finished:
    """What a finish hook is told about the query that ended."""

    __slots__ = ("status", "error_type", "duration", "model", "settlement", "record")

    def __init__(self, status: str, error_type: str | None, duration: float, model: str | None,
                 settlement, record: dict | None):
        self.status, self.error_type, self.duration = status, error_type, duration
        self.model, self.settlement = model, settlement
        self.record = record  # the record's fields so far; add the feature's own keys


def run_start_hooks(ctx) -> None:
    for hook in HOOKS.start:
        try:
            hook(ctx)
        except Exception as failure:
            _hook_failed(ctx.owner.metrics, hook, failure)


def run_finish_hooks(ctx, done: Finished, metrics) -> None:
    for hook in HOOKS.finish:
        try:
            hook(ctx, done)
        except Exception as failure:
            _hook_failed(metrics, hook, failure)


def _hook_failed(metrics, hook: Callable, failure: Exception) -> None:
    recording_failed(metrics, "hook", "the per-query hook %s failed: %r",
                     getattr(hook, "__qualname__", type(hook).__name__), failure)
