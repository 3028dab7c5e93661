"""/metrics render time and size in the worst case of label cardinality.

One process runs 100 operations x 100 models x 100 stages through @monitored_query and stage()
(every operation calls every model once, and times every stage once), with the label values a
runaway caller would pass. Compared in the same process:
  (a) per-label limits only (MAX_LABEL_VALUES=100, series budget out of the way): what the
      cardinality guard bounded before metrics had a series budget
  (b) a series budget of 1,000 label combinations for every metric
  (c) the defaults: MAX_SERIES_PER_METRIC=1000, MAX_SERIES_PER_HISTOGRAM=250
Target for (c): /metrics renders in under 100 ms and under 2 MB.

    python bench/bench_cardinality.py [--operations 100] [--models 100] [--stages 100] [--repeats 5]
"""
from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402

from ragmon.instrument.catalog import RAGMetrics  # noqa: E402
from ragmon import monitored_query, stage  # noqa: E402
from ragmon.settings import load_settings  # noqa: E402


def populate(metrics: RAGMetrics, operations: int, models: int, stages: int) -> None:
    for o in range(operations):
        model_of_call = iter(range(models))

        @monitored_query(f"operation_{o:03d}", metrics=metrics, request_log=False)
        def query(stream: bool):
            for s in range(stages):
                with stage(f"stage_{s:03d}"):
                    pass
            return {"model": f"model_{next(model_of_call):03d}", "input_tokens": 500,
                    "output_tokens": 150, "relevance_score": 0.8}

        for m in range(models):
            query(False)


def render(registry, repeats: int) -> tuple[float, int, int]:
    """(median seconds per render, bytes, sample lines)."""
    times, body = [], b""
    for _ in range(repeats):
        start = time.perf_counter()
        body = generate_latest(registry)
        times.append(time.perf_counter() - start)
    lines = sum(1 for line in body.splitlines() if line and not line.startswith(b"#"))
    return statistics.median(times), len(body), lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--operations", type=int, default=100)
    parser.add_argument("--models", type=int, default=100)
    parser.add_argument("--stages", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    logging.getLogger("ragmon").setLevel(logging.ERROR)  # one warning per unknown model otherwise
    base = {"MODEL_PRICES_FILE": "", "REQUEST_LOG_DESTINATION": "none", "LOG_DESTINATION": "none"}
    variants = [
        ("(a) per-label limits only", {**base, "MAX_SERIES_PER_METRIC": "1000000",
                                       "MAX_SERIES_PER_HISTOGRAM": "1000000"}),
        ("(b) series budget 1,000 for every metric", {**base, "MAX_SERIES_PER_HISTOGRAM": "1000"}),
        ("(c) defaults: 1,000; 250 for histograms", base),
    ]
    print(f"{args.operations} operations x {args.models} models x {args.stages} stages, "
          f"median of {args.repeats} renders, python {sys.version.split()[0]}, {os.cpu_count()} cpus")
    print(f"{'variant':44} {'samples':>9} {'MB':>7} {'render ms':>10}")
    for name, values in variants:
        registry = CollectorRegistry()
        metrics = RAGMetrics(registry=registry, settings=load_settings(values, dotenv_path=os.devnull))
        populate(metrics, args.operations, args.models, args.stages)
        seconds, size, lines = render(registry, args.repeats)
        print(f"{name:44} {lines:>9,} {size / 1e6:>7.2f} {seconds * 1000:>10.1f}")


if __name__ == "__main__":
    main()
