"""Bounded answer-quality labels: 100,000 distinct score names (a name per user, the classic
mistake) and 100,000 distinct feedback reasons, against their budgets.

Prints, for each: the series the metric ends with, how many values were refused or folded into
"other", the memory still allocated afterwards and the peak while running (tracemalloc), and the
time per call. Target: at most the configured bound of series and a few MB of memory.

    python bench/bench_quality_cardinality.py [--distinct 100000]
"""
from __future__ import annotations

import argparse
import gc
import time
import tracemalloc

from prometheus_client import CollectorRegistry

from ragmon import RAGMetrics, monitored_query, record_feedback, record_scores
from ragmon.settings import load_settings

SETTINGS = {"MODEL_PRICES_FILE": "", "PRICE_DATABASE": "none", "REQUEST_LOG_DESTINATION": "none"}


def label_values(metrics, family: str, label: str) -> set[str]:
    return {sample.labels[label] for metric in metrics.registry.collect() if metric.name == family
            for sample in metric.samples if label in sample.labels}


def measured(run) -> tuple[int, int, float]:
    """(bytes still allocated after `run`, peak bytes while it ran, seconds)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    run()
    seconds = time.perf_counter() - start
    gc.collect()
    current, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return current - before, peak - before, seconds


def score_names(distinct: int, bound: int) -> dict:
    settings = load_settings({**SETTINGS, "MAX_SCORE_NAMES": str(bound)}, dotenv_path="/dev/null")
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=settings)

    @monitored_query(operation="rag_search", metrics=metrics, request_log=False)
    def answer(n):
        record_scores({f"judge_user_{n}": 0.5})

    grown, peak, seconds = measured(lambda: [answer(n) for n in range(distinct)])
    refused = metrics.registry.get_sample_value("rag_evaluation_scores_refused_total",
                                                {"reason": "too_many_names"}) or 0
    return {"what": f"score names (MAX_SCORE_NAMES={bound})",
            "series": len(label_values(metrics, "rag_evaluation_score", "score")),
            "bound": bound, "refused": int(refused), "grown": grown, "peak": peak,
            "per_call": seconds / distinct}


def feedback_reasons(distinct: int, bound: int) -> dict:
    settings = load_settings({**SETTINGS, "MAX_FEEDBACK_REASONS": str(bound)},
                             dotenv_path="/dev/null")
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=settings)

    def run():
        for n in range(distinct):
            record_feedback(f"req-{n}", thumbs="down", reason=f"reason_{n}", operation="rag_search",
                            metrics=metrics, request_log=False)

    grown, peak, seconds = measured(run)
    other = metrics.registry.get_sample_value("rag_feedback_reasons_total", {"reason": "other"})
    return {"what": f"feedback reasons (MAX_FEEDBACK_REASONS={bound})",
            "series": len(label_values(metrics, "rag_feedback_reasons", "reason")),
            "bound": bound + 1, "refused": int(other or 0), "grown": grown, "peak": peak,
            "per_call": seconds / distinct}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--distinct", type=int, default=100_000)
    args = parser.parse_args()
    rows = [score_names(args.distinct, 20), feedback_reasons(args.distinct, 20)]
    print(f"{args.distinct:,} distinct values each (memory: tracemalloc, Python objects)\n")
    print(f"| {'values':42} | {'series':>6} | {'bound':>5} | {'refused/other':>13} | "
          f"{'kept MB':>7} | {'peak MB':>7} | {'us/call':>7} |")
    print(f"|{'-' * 44}|{'-' * 8}|{'-' * 7}|{'-' * 15}|{'-' * 9}|{'-' * 9}|{'-' * 9}|")
    for row in rows:
        print(f"| {row['what']:42} | {row['series']:>6} | {row['bound']:>5} | "
              f"{row['refused']:>13,} | {row['grown'] / 2**20:7.3f} | {row['peak'] / 2**20:7.3f} | "
              f"{row['per_call'] * 1e6:7.1f} |")
    ok = all(row["series"] <= row["bound"] and row["grown"] < 4 << 20 for row in rows)
    print(f"\nTarget: series <= bound and < 4 MB kept: {'met' if ok else 'MISSED'} "
          "(score names: relevance_score and context_precision hold two of the places)")


if __name__ == "__main__":
    main()
