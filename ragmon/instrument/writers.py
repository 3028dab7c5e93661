"""Value-level writers: one labelled child's update as one plain function, made once.

A query updates about ten labelled children. prometheus_client's public ``inc()`` and
``observe()`` check on every call what cannot change for a cached child (that it has its label
values, that a counter's amount is >= 0: the callers here pass counts and durations) and a
histogram walks its bucket bounds one by one. The writers made here do the same updates to the
same values (``child._value``, a histogram's ``_sum`` and ``_buckets``: the same locks, the same
multiprocess files) without those checks, found once per child when the per-operation bundle is
built. A client whose children do not look like that (another major version) gets the public
methods instead: slower, never wrong. ``tests/instrument/test_writers.py`` holds the writers to
the public methods' samples.

Exemplars are not written here: an observation that carries one goes through the public
``observe(amount, exemplar)``.
"""
from __future__ import annotations

import math
from bisect import bisect_left
from typing import Callable

Writer = Callable[[float], None]


def adder(child) -> Writer:
    """``add(amount)`` of a Counter or Gauge child: its value's ``inc`` (a counter is never given
    a negative amount here; a gauge's ``dec()`` is ``add(-1)``)."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    if inc is None or not _is_plain_child(child):
        return child.inc
    return inc


def subtracter(child) -> Writer:
    """``dec(amount)`` of a Gauge child."""
    value = getattr(child, "_value", None)
    inc = getattr(value, "inc", None)
    if inc is None or not _is_plain_child(child):
        return child.dec

    def dec(amount: float = 1) -> None:
        inc(-amount)
    return dec


def histogram_parts(child) -> tuple | None:
    """(bucket upper bounds, each bucket's ``inc``, the sum's ``inc``) of a Histogram child, or
    None when it does not look like prometheus_client's."""
    try:
        bounds = tuple(float(b) for b in child._upper_bounds)
        bucket_incs = tuple(bucket.inc for bucket in child._buckets)
        sum_inc = child._sum.inc
    except (AttributeError, TypeError, ValueError):
        return None
    if (len(bounds) != len(bucket_incs) or not bounds or bounds[-1] != math.inf
            or list(bounds) != sorted(bounds) or not _is_plain_child(child)):
        return None
    return bounds, bucket_incs, sum_inc


def observer(child) -> Writer:
    """``observe(amount)`` of a Histogram child: the sum and the one bucket it falls in (the
    first whose bound is >= amount, found by bisection; none for NaN, as prometheus_client)."""
    parts = histogram_parts(child)
    if parts is None:
        return child.observe
    bounds, bucket_incs, sum_inc = parts

    def observe(amount: float, _bisect=bisect_left, _bounds=bounds, _incs=bucket_incs,
                _sum=sum_inc, _last=len(bounds) - 1) -> None:
        _sum(amount)
        i = _bisect(_bounds, amount)
        if i <= _last and amount <= _bounds[i]:  # NaN falls in no bucket
            _incs[i](1)
    return observe


def _is_plain_child(child) -> bool:
    """A labelled child (label values set) of a plain, not most-recent-gauge, metric."""
    return bool(getattr(child, "_labelvalues", ())) and not getattr(child, "_is_most_recent", False)
