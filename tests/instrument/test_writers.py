"""The value-level writers update exactly what prometheus_client's public methods update."""
import math

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ragmon.instrument.exemplars import sampled_observer
from ragmon.instrument.writers import adder, observer, subtracter

BOUNDS = (0.1, 0.25, 1.0, 5.0)
AMOUNTS = (0.0, 0.05, 0.1, 0.1000001, 0.25, 0.7, 1.0, 4.99, 5.0, 5.01, 1e9, -1.0, math.inf)


def samples(registry):
    return sorted((s.name, tuple(sorted(s.labels.items())), repr(s.value))
                  for metric in registry.collect() for s in metric.samples
                  if not s.name.endswith("_created"))


def twin(make):
    """The same metric in two registries: one written the public way, one by the writers."""
    public, ours = CollectorRegistry(), CollectorRegistry()
    return (make(public).labels("op"), public), (make(ours).labels("op"), ours)


def test_a_histogram_observer_fills_the_same_buckets_and_sum_as_observe():
    (pub, r1), (mine, r2) = twin(lambda r: Histogram("h", "", ["o"], registry=r, buckets=BOUNDS))
    write = observer(mine)
    assert write != mine.observe  # the value-level writer, not the public method
    for amount in AMOUNTS:
        pub.observe(amount)
        write(amount)
    assert samples(r1) == samples(r2)


def test_nan_falls_in_no_bucket_as_with_observe():
    (pub, r1), (mine, r2) = twin(lambda r: Histogram("h", "", ["o"], registry=r, buckets=BOUNDS))
    pub.observe(math.nan)
    observer(mine)(math.nan)
    assert samples(r1) == samples(r2)
    assert r2.get_sample_value("h_count", {"o": "op"}) == 0


def test_counter_and_gauge_writers_add_as_inc_and_dec():
    (pub, r1), (mine, r2) = twin(lambda r: Counter("c", "", ["o"], registry=r))
    for amount in (1, 500, 0.000165, 0):
        pub.inc(amount)
        adder(mine)(amount)
    assert samples(r1) == samples(r2)
    (gpub, g1), (gmine, g2) = twin(lambda r: Gauge("g", "", ["o"], registry=r))
    gpub.inc(3), gpub.dec(2), gpub.dec()
    adder(gmine)(3), subtracter(gmine)(2), adder(gmine)(-1)
    assert samples(g1) == samples(g2) and g2.get_sample_value("g", {"o": "op"}) == 0


def test_a_child_unlike_prometheus_clients_gets_its_public_methods():
    class Foreign:
        def inc(self, amount=1): ...
        def dec(self, amount=1): ...
        def observe(self, amount): ...

    child = Foreign()
    assert adder(child) == child.inc and observer(child) == child.observe
    assert subtracter(child) == child.dec


def test_a_most_recent_gauge_keeps_its_public_method_and_its_error():
    gauge = Gauge("g", "", ["o"], registry=CollectorRegistry(), multiprocess_mode="mostrecent")
    child = gauge.labels("op")
    assert adder(child) == child.inc


class Query:
    request_id = "req-1"


def test_the_latency_observer_attaches_one_exemplar_per_bucket_and_interval():
    (pub, r1), (mine, r2) = twin(lambda r: Histogram("h", "", ["o"], registry=r, buckets=BOUNDS))
    write = sampled_observer(mine, interval=1.0)
    for now, amount in ((0.0, 0.2), (0.5, 0.2), (0.6, 3.0), (1.2, 0.2), (1.3, 0.05)):
        pub.observe(amount)
        write(amount, now, Query())
    assert samples(r1) == samples(r2)
    exemplars = {s.labels["le"]: s.exemplar for metric in r2.collect() for s in metric.samples
                 if s.name == "h_bucket" and s.exemplar is not None}
    assert set(exemplars) == {"0.1", "0.25", "5.0"}
    assert all(e.labels == {"request_id": "req-1"} for e in exemplars.values())
    assert exemplars["0.25"].timestamp is not None


@pytest.mark.parametrize("amount", [math.nan])
def test_the_latency_observer_counts_nan_as_observe_does(amount):
    (pub, r1), (mine, r2) = twin(lambda r: Histogram("h", "", ["o"], registry=r, buckets=BOUNDS))
    pub.observe(amount)
    sampled_observer(mine)(amount, 0.0, Query())
    assert samples(r1) == samples(r2)
