"""With OpenTelemetry output off, the per-query path costs what it did: this checkout's
@monitored_query against another checkout's (say, main before the OTel output was added), both
loaded into this one process and timed interleaved, so machine noise hits both alike.

    python bench/bench_otel_off.py --against /path/to/other/checkout [--calls 10000] [--repeats 15]

The other checkout's package is loaded as `ragmon_other`; each side gets its own registry.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import statistics
import sys
import time

import prometheus_client
from prometheus_client import CollectorRegistry

RESULT = {"answer": "ok", "input_tokens": 500, "output_tokens": 150, "relevance_score": 0.85}


def load_other(path: str):
    spec = importlib.util.spec_from_file_location(
        "ragmon_other", f"{path}/ragmon/__init__.py", submodule_search_locations=[f"{path}/ragmon"])
    module = importlib.util.module_from_spec(spec)
    sys.modules["ragmon_other"] = module
    spec.loader.exec_module(module)
    # Its default catalog took the global registry's names: free them for this checkout's.
    for collector in list(prometheus_client.REGISTRY._collector_to_names):
        prometheus_client.REGISTRY.unregister(collector)
    return module


def make_query(package):
    """The benchmark query of bench_overhead.py (one stage, tokens, cost, relevance), no record."""
    def sub(name):
        return importlib.import_module(f"{package.__name__}.{name}")
    settings = sub("settings").load_settings({
        "MODEL_PRICES_FILE": "", "PRICE_DATABASE": "none", "COST_PER_1K_INPUT_TOKENS": "0.00015",
        "COST_PER_1K_OUTPUT_TOKENS": "0.0006"})
    pricing = sub("instrument.pricing")
    prices = pricing.PriceTable(pricing.ModelPrice(0.00015, 0.0006, 0.00015),
                                {"gpt-4o-mini": pricing.ModelPrice(0.00015, 0.0006, 0.000075)})
    metrics = sub("instrument.catalog").RAGMetrics(registry=CollectorRegistry(),
                                                    settings=settings, price_table=prices)

    @package.monitored_query(operation="rag_search", model="gpt-4o-mini", metrics=metrics,
                             request_log=False)
    def query(question):
        with package.stage("retrieval"):
            pass
        return RESULT
    return query


def time_per_call(fn, calls: int) -> float:
    """CPU seconds per call (time.thread_time: other processes on a shared machine do not count)."""
    start = time.thread_time()
    for _ in range(calls):
        fn("q")
    return (time.thread_time() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--against", required=True, help="the other checkout's directory")
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    other = load_other(args.against)
    import ragmon
    variants = {f"{args.against} (OTel off)": make_query(other),
                "this checkout (OTel off)": make_query(ragmon)}
    for fn in variants.values():
        time_per_call(fn, 3000)
    samples = {name: [] for name in variants}
    order = list(variants.items())
    for _ in range(args.repeats):
        for name, fn in order:
            samples[name].append(time_per_call(fn, args.calls))
        order.reverse()  # neither side always runs first
    median = {name: statistics.median(values) for name, values in samples.items()}
    (first, a), (second, b) = median.items()
    print(f"Per-query CPU time, median of {args.repeats} interleaved runs x {args.calls:,} calls\n")
    print(f"| {'checkout':44} | {'CPU us/query':>12} |")
    print(f"|{'-' * 46}|{'-' * 14}|")
    for name, value in median.items():
        print(f"| {name:44} | {value * 1e6:12.2f} |")
    print(f"\nDifference: {(b - a) * 1e6:+.2f} us per query ({(b / a - 1) * 100:+.1f}%)")


if __name__ == "__main__":
    main()
