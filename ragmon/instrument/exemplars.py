"""Exemplars: the request id (and the trace id, when the caller traces with OpenTelemetry) that
rides along with a query latency observation, so a point on the p99 panel leads to the exact
request (`m2_3_report.py show REQUEST_ID`) and trace.

An exemplar is not a label: it adds no series, whatever the number of request ids. Prometheus
stores them when it scrapes OpenMetrics with `--enable-feature=exemplar-storage`.

A histogram keeps one exemplar per bucket, the latest, and a scrape sees only that one; so each
bucket takes a new exemplar at most once a second (ExemplarSampler): the slow tail's rare
buckets still get every request, while a busy bucket does not pay for exemplars nobody scrapes.

prometheus_client drops exemplars in multiprocess mode (PROMETHEUS_MULTIPROC_DIR): its mmap
files hold values only. Observations still count; only the exemplar is lost (docs/metrics.md).
"""
from __future__ import annotations

import sys
from bisect import bisect_left
from typing import Sequence

from .writers import histogram_parts

# OpenMetrics allows 128 UTF-8 characters for an exemplar's label names and values together;
# prometheus_client raises beyond that, so a longer custom request id goes without exemplar.
MAX_EXEMPLAR_CHARS = 128


def _trace_id() -> str | None:
    """The current OpenTelemetry trace id, when the application already imported the API (never
    imported here: monitoring must not pull in a tracing stack)."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return None
    try:
        context = trace.get_current_span().get_span_context()
        return format(context.trace_id, "032x") if context.is_valid else None
    except Exception:  # noqa: BLE001 - a tracing problem never breaks the query
        return None


_MAX_REQUEST_ID = MAX_EXEMPLAR_CHARS - len("request_id")


def latency_exemplar(request_id: str) -> dict[str, str] | None:
    """{"request_id": ..., "trace_id": ...} for one observation, or None when it would not fit."""
    if "opentelemetry.trace" not in sys.modules:  # no tracing: the cheap path, once per query
        return {"request_id": request_id} if len(request_id) <= _MAX_REQUEST_ID else None
    exemplar = {"request_id": request_id}
    trace_id = _trace_id()
    if trace_id is not None:
        exemplar["trace_id"] = trace_id
    if sum(len(k) + len(v) for k, v in exemplar.items()) > MAX_EXEMPLAR_CHARS:
        exemplar.pop("trace_id", None)
        if len("request_id") + len(request_id) > MAX_EXEMPLAR_CHARS:
            return None
    return exemplar


class ExemplarSampler:
    """Says whether an observation should carry an exemplar: the first one in its bucket after
    `interval` seconds. Races between threads at worst attach one exemplar more."""

    def __init__(self, upper_bounds: Sequence[float], interval: float = 1.0):
        self.bounds = tuple(float(b) for b in upper_bounds)
        self.interval = float(interval)
        self._due = [float("-inf")] * (len(self.bounds) + 1)  # the +Inf bucket last

    def due(self, value: float, now: float) -> bool:
        index = bisect_left(self.bounds, value)
        if now < self._due[index]:
            return False
        self._due[index] = now + self.interval
        return True


def sampled_observer(child, interval: float = 1.0):
    """``observe(amount, now, query)`` of a latency histogram child, as ExemplarSampler and
    writers.observer together with one bisection: the query's request id rides along as the
    exemplar when the bucket is due, else the plain value-level write."""
    parts = histogram_parts(child)
    with_exemplar = child.observe
    if parts is None:
        due = ExemplarSampler(child._upper_bounds[:-1], interval).due

        def observe_public(amount: float, now: float, query) -> None:
            if due(amount, now):
                with_exemplar(amount, latency_exemplar(query.request_id))
            else:
                with_exemplar(amount)
        return observe_public
    bounds, bucket_incs, sum_inc = parts
    due_at = [float("-inf")] * len(bounds)

    def observe(amount: float, now: float, query, _bisect=bisect_left, _bounds=bounds,
                _incs=bucket_incs, _sum=sum_inc, _last=len(bounds) - 1) -> None:
        i = _bisect(_bounds, amount)
        if i <= _last and amount <= _bounds[i]:
            if now >= due_at[i]:  # races between threads at worst attach one exemplar more
                due_at[i] = now + interval
                with_exemplar(amount, latency_exemplar(query.request_id))
                return
            _sum(amount)
            _incs[i](1)
        else:
            with_exemplar(amount)  # NaN: as prometheus_client has it
    return observe
