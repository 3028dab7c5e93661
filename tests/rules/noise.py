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

Answer quality, drawn from its own seeded generator (so the series above stay as they were):
- two scores per answer on every operation: `faithfulness` (Beta(8, 2), mean 0.8) and
  `answer_correct`, a pass/fail judge (1 for 80% of answers): over the quiet operation's ten
  answers in 5 minutes a pass/fail mean swings by 0.13, so only the volume guard keeps a 20% drop
  from paging on it;
- retrieval on 2 of rag_search's 4 queries/s (the cache misses), on every stream and every
  `admin_reindex` query: 2% come back empty; the newest document a query uses is hours old
  (log-normal, median 3 hours);
- feedback on 5% of answers (20% of the quiet operation's), 10% of it negative.
The degraded index (the quality fault, on rag_search): scores Beta(4, 5) and 45% pass, 30% of
retrievals empty, half the feedback negative, the newest document 5-12 days old.
"""
from __future__ import annotations

import math
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


def _arrivals(rng: random.Random, rate_per_s: float) -> int:
    """Poisson arrivals within one scrape interval."""
    arrivals, t = 0, rng.expovariate(rate_per_s)
    while t < STEP_S:
        arrivals += 1
        t += rng.expovariate(rate_per_s)
    return arrivals


def _draws(rng: random.Random, rate_per_s: float, steps: int, draw, fault_draw=None,
           fault_step: int | None = None) -> list[list]:
    """Per scrape interval, the values drawn for that interval's arrivals."""
    out = []
    for step in range(steps):
        faulty = fault_step is not None and step >= fault_step
        out.append([(fault_draw if faulty else draw)(rng)
                    for _ in range(_arrivals(rng, rate_per_s))])
    return out


def _cumulative(per_step) -> str:
    total, values = 0.0, []
    for value in per_step:
        total += value
        values.append(f"{total:.3f}".rstrip("0").rstrip("."))
    return " ".join(values)


def _labels(operation: str, **more: str) -> str:
    extra = "".join(f',{k}="{v}"' for k, v in more.items())
    return f'job="{JOB}",instance="{INSTANCE}",operation="{operation}"{extra}'


AGE_BUCKETS = (60, 300, 900, 3600, 21600, 86400, 259200, 604800, 2592000, 7776000)


def _quality_series(rng, operation, rate, retrieval_share, feedback_share, steps,
                    degraded_step: int | None = None) -> list[dict]:
    """The answer-quality series of one operation; degraded from `degraded_step` on."""
    def answer(degraded: bool):
        def draw(rng):
            retrieves = rng.random() < retrieval_share
            feedback = None
            if rng.random() < feedback_share:
                negative = rng.random() < (0.5 if degraded else 0.1)
                feedback = "negative" if negative else rng.choice(("positive",) * 5 + ("neutral",))
            return {
                "faithfulness": min(1.0, rng.betavariate(4, 5) if degraded else rng.betavariate(8, 2)),
                "answer_correct": float(rng.random() < (0.45 if degraded else 0.8)),
                "retrieval": retrieves,
                "empty": retrieves and rng.random() < (0.3 if degraded else 0.02),
                "age": (rng.uniform(5, 12) * 86400 if degraded
                        else rng.lognormvariate(math.log(3 * 3600), 1.0)) if retrieves else None,
                "feedback": feedback,
            }
        return draw
    steps_drawn = _draws(rng, rate, steps, answer(False), answer(True), degraded_step)
    series = []

    def add(name: str, labels: str, per_step) -> None:
        series.append({"series": f"{name}{{{labels}}}", "values": _cumulative(per_step)})
    for score in ("faithfulness", "answer_correct"):
        labels = _labels(operation, score=score)
        add("rag_evaluation_score_sum", labels, [sum(a[score] for a in s) for s in steps_drawn])
        add("rag_evaluation_score_count", labels, [len(s) for s in steps_drawn])
    add("rag_retrieval_queries_total", _labels(operation),
        [sum(a["retrieval"] for a in s) for s in steps_drawn])
    add("rag_empty_retrievals_total", _labels(operation),
        [sum(a["empty"] for a in s) for s in steps_drawn])
    for feedback in ("positive", "negative", "neutral"):
        add("rag_feedback_total", _labels(operation, feedback=feedback),
            [sum(a["feedback"] == feedback for a in s) for s in steps_drawn])
    for le in (*map(str, AGE_BUCKETS), "+Inf"):
        bound = math.inf if le == "+Inf" else float(le)
        add("rag_retrieval_newest_document_age_seconds_bucket", _labels(operation, le=le),
            [sum(a["age"] is not None and a["age"] <= bound for a in s) for s in steps_drawn])
    add("rag_retrieval_newest_document_age_seconds_count", _labels(operation),
        [sum(a["age"] is not None for a in s) for s in steps_drawn])
    return series


def quality_noise(degraded: bool) -> list[dict]:
    """rag_search, rag_stream and the quiet admin_reindex; rag_search degraded half-way when
    `degraded`."""
    steps = HOURS * 3600 // STEP_S + 1
    rng = random.Random(SEED + 21)
    fault_step = FAULT_AT_H * 3600 // STEP_S if degraded else None
    return (_quality_series(rng, "rag_search", 4.0, 0.5, 0.05, steps, fault_step)
            + _quality_series(rng, "rag_stream", 1.0, 1.0, 0.05, steps)
            + _quality_series(rng, "admin_reindex", 2 / 60, 1.0, 0.2, steps))


QUALITY_ALERTS = ("RagQualityScoreDrop", "RagEmptyRetrievalRateHigh",
                  "RagNegativeFeedbackRateHigh", "RagIndexStale")


def _firing(alertname: str, severity: str, **labels: str) -> dict:
    names = {"alertname": alertname, "alertstate": "firing", "job": JOB, **labels,
             "severity": severity}
    return {"labels": "ALERTS{" + ",".join(f'{k}="{v}"' for k, v in sorted(names.items())) + "}",
            "value": 1}


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
    quality_at = f"{FAULT_AT_H}h45m"
    return {
        "rule_files": ["../../recording_rules.yml", "../../alert_rules.yml"],
        "evaluation_interval": "1m",
        "group_eval_order": ["rag-service-recording", "rag-quality-recording", "rag-slo-sli",
                             "rag-slo-objectives", "rag-alert-thresholds", "host-recording",
                             "rag-service", "rag-quality", "rag-monitoring", "rag-slo",
                             "rag-host"],
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
            {"name": "healthy answer-quality noise pages nobody",
             "interval": f"{STEP_S}s", "input_series": quality_noise(degraded=False),
             "promql_expr_test": [_never(name, HOURS) for name in QUALITY_ALERTS]},
            {"name": "a degraded index in the same noise fires the quality alerts for that "
                     "operation only",
             "interval": f"{STEP_S}s", "input_series": quality_noise(degraded=True),
             "promql_expr_test": [
                 *({"expr": f'count_over_time(ALERTS{{alertname="{name}"}}[{FAULT_AT_H}h])',
                    "eval_time": f"{FAULT_AT_H}h", "exp_samples": []} for name in QUALITY_ALERTS),
                 # the feedback ratio needs half its 30m window degraded, then 15m of `for`
                 {"expr": 'ALERTS{alertname=~"Rag(QualityScoreDrop|EmptyRetrievalRateHigh|'
                          'NegativeFeedbackRateHigh|IndexStale)",alertstate="firing"}',
                  "eval_time": quality_at,
                  "exp_samples": [
                      _firing("RagEmptyRetrievalRateHigh", "warning", operation="rag_search"),
                      _firing("RagIndexStale", "warning", operation="rag_search"),
                      _firing("RagNegativeFeedbackRateHigh", "warning", operation="rag_search"),
                      _firing("RagQualityScoreDrop", "critical", operation="rag_search",
                              score="answer_correct"),
                      _firing("RagQualityScoreDrop", "critical", operation="rag_search",
                              score="faithfulness")]}]},
        ],
    }


HEADER = """\
# Generated by `python -m tests.rules.noise` (seeded: edit that file, not this one).
# Healthy noise at production windows stays silent; the same noise with a fault fires. Removing
# the volume guard of RagHighErrorRate, RagLowCacheHitRate, RagQualityScoreDrop,
# RagEmptyRetrievalRateHigh or RagNegativeFeedbackRateHigh makes the healthy cases fail
# (tests/stack/test_alert_noise.py shows it).
"""


def render() -> str:
    import yaml
    return HEADER + yaml.safe_dump(build(), sort_keys=False, width=1 << 30)


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}")
