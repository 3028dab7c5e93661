"""Writes tests/rules/noise_alerts.test.yml: promtool tests that feed the ratio alerts realistic
healthy noise at production windows (15 s scrapes, 5-minute windows, hours of traffic) drawn
from a seeded generator, beside the same traffic with a fault in it.

    python -m tests.rules.noise            # rewrite the file (tests/stack/test_alert_noise.py
                                           # checks that the committed file is this output)

Healthy traffic, as the demo makes it (ragmon/demo.py) and a quiet operation beside it:
- rag_search, 4 queries/s, 0.75% fail; rag_stream, 1 query/s, 1.5% fail (every stream calls
  the provider); and an `admin_reindex` operation at 2 queries a minute with the same 1.5%:
  one failure in its 5-minute window is 10%, over the 5% line, for the five minutes it stays
  there. Only the volume guard keeps that silent.
- the semantic cache: 3.2 lookups/s, 50% hits; a `rerank` cache at 4 lookups a minute, 50%
  hits: a window with 5 hits of 20 is 25%, under the 30% line.
The job as a whole fails ~0.9% of its queries, inside the availability SLO's 2% budget: the
burn-rate alerts stay silent too.
The fault cases: rag_stream failing 25% (the errors fault, at half the demo's severity) and the
semantic cache hitting 10% (the cache fault), each starting in the middle of the same noise.
"""
from __future__ import annotations

import random
from pathlib import Path

OUT = Path(__file__).with_name("noise_alerts.test.yml")
SEED = 20261207
STEP_S = 15             # production scrape interval (prometheus.yml)
HOURS = 6
FAULT_AT_H = 3          # fault cases: healthy until here, faulty after

JOB, INSTANCE = "rag-service", "10.0.0.1:8000"


def _counts(rng: random.Random, rate_per_s: float, share: float, steps: int,
            fault_share: float | None = None, fault_step: int | None = None):
    """Cumulative (all, bad) counters: Poisson arrivals per scrape, each bad with `share`."""
    total = bad = 0
    totals, bads = [], []
    for step in range(steps):
        p = fault_share if fault_step is not None and step >= fault_step else share
        # Poisson by counting exponential gaps within the step
        arrivals, t = 0, rng.expovariate(rate_per_s)
        while t < STEP_S:
            arrivals += 1
            t += rng.expovariate(rate_per_s)
        failed = sum(rng.random() < p for _ in range(arrivals))
        total += arrivals
        bad += failed
        totals.append(total)
        bads.append(bad)
    return totals, bads


def _values(series: list[int]) -> str:
    return " ".join(map(str, series))


def _query_series(rng, operation, rate, share, steps, **fault):
    totals, bads = _counts(rng, rate, share, steps, **fault)
    ok = [t - b for t, b in zip(totals, bads)]
    labels = f'job="{JOB}",instance="{INSTANCE}",operation="{operation}"'
    return [{"series": f'rag_queries_total{{{labels},status="success"}}', "values": _values(ok)},
            {"series": f'rag_queries_total{{{labels},status="error"}}', "values": _values(bads)}]


def _cache_series(rng, cache_type, rate, hit_share, steps, **fault):
    totals, misses = _counts(rng, rate, 1 - hit_share, steps, **fault)
    hits = [t - m for t, m in zip(totals, misses)]
    labels = f'job="{JOB}",instance="{INSTANCE}",cache_type="{cache_type}"'
    return [{"series": f'rag_cache_operations_total{{{labels},result="hit"}}', "values": _values(hits)},
            {"series": f'rag_cache_operations_total{{{labels},result="miss"}}', "values": _values(misses)}]


def _never(alertname: str, hours: int) -> dict:
    """No sample of the alert, pending or firing, at any evaluation of the whole run."""
    return {"expr": f'count_over_time(ALERTS{{alertname="{alertname}"}}[{hours}h])',
            "eval_time": f"{hours}h", "exp_samples": []}


def build() -> dict:
    steps = HOURS * 3600 // STEP_S + 1
    fault_step = FAULT_AT_H * 3600 // STEP_S
    rng = random.Random(SEED)
    healthy_queries = (_query_series(rng, "rag_search", 4.0, 0.0075, steps)
                       + _query_series(rng, "rag_stream", 1.0, 0.015, steps)
                       + _query_series(rng, "admin_reindex", 2 / 60, 0.015, steps))
    healthy_cache = (_cache_series(rng, "semantic", 3.2, 0.5, steps)
                     + _cache_series(rng, "rerank", 4 / 60, 0.5, steps))
    faulty_queries = (_query_series(rng, "rag_search", 4.0, 0.0075, steps)
                      + _query_series(rng, "rag_stream", 1.0, 0.015, steps,
                                      fault_share=0.25, fault_step=fault_step)
                      + _query_series(rng, "admin_reindex", 2 / 60, 0.015, steps))
    faulty_cache = (_cache_series(rng, "semantic", 3.2, 0.5, steps,
                                  fault_share=0.9, fault_step=fault_step)
                    + _cache_series(rng, "rerank", 4 / 60, 0.5, steps))
    firing = {"job": JOB, "severity": None}
    # RagHighErrorRate pends for 5m, RagLowCacheHitRate for 10m: both fire 20 minutes in
    at = f"{FAULT_AT_H}h20m"
    return {
        "rule_files": ["../../recording_rules.yml", "../../alert_rules.yml"],
        "evaluation_interval": "1m",
        "group_eval_order": ["rag-service-recording", "rag-slo-sli", "rag-slo-objectives",
                             "rag-alert-thresholds", "host-recording", "rag-service",
                             "rag-monitoring", "rag-slo", "rag-host"],
        "tests": [
            {"name": "healthy query noise pages nobody",
             "interval": f"{STEP_S}s", "input_series": healthy_queries,
             "promql_expr_test": [_never("RagHighErrorRate", HOURS),
                                  _never("RagAvailabilityBudgetBurn", HOURS)]},
            {"name": "healthy cache noise pages nobody",
             "interval": f"{STEP_S}s", "input_series": healthy_cache,
             "promql_expr_test": [_never("RagLowCacheHitRate", HOURS)]},
            {"name": "errors in the same noise fire for the failing operation only",
             "interval": f"{STEP_S}s", "input_series": faulty_queries,
             "promql_expr_test": [
                 {"expr": f'count_over_time(ALERTS{{alertname="RagHighErrorRate"}}[{FAULT_AT_H}h])',
                  "eval_time": f"{FAULT_AT_H}h", "exp_samples": []},
                 {"expr": 'ALERTS{alertname="RagHighErrorRate",alertstate="firing"}',
                  "eval_time": at,
                  "exp_samples": [{"labels": 'ALERTS{alertname="RagHighErrorRate",'
                                             'alertstate="firing",job="rag-service",'
                                             'operation="rag_stream",severity="critical"}',
                                   "value": 1}]}]},
            {"name": "a collapsed cache in the same noise fires for that cache only",
             "interval": f"{STEP_S}s", "input_series": faulty_cache,
             "promql_expr_test": [
                 {"expr": f'count_over_time(ALERTS{{alertname="RagLowCacheHitRate"}}[{FAULT_AT_H}h])',
                  "eval_time": f"{FAULT_AT_H}h", "exp_samples": []},
                 {"expr": 'ALERTS{alertname="RagLowCacheHitRate",alertstate="firing"}',
                  "eval_time": at,
                  "exp_samples": [{"labels": 'ALERTS{alertname="RagLowCacheHitRate",'
                                             'alertstate="firing",cache_type="semantic",'
                                             'job="rag-service",severity="warning"}',
                                   "value": 1}]}]},
        ],
    }


HEADER = """\
# Generated by `python -m tests.rules.noise` (seeded: edit that file, not this one).
# Healthy noise at production windows stays silent; the same noise with a fault fires. Removing
# the volume guard of RagHighErrorRate or RagLowCacheHitRate makes the healthy cases fail
# (tests/stack/test_alert_noise.py shows it).
"""


def render() -> str:
    import yaml
    return HEADER + yaml.safe_dump(build(), sort_keys=False, width=1 << 30)


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
