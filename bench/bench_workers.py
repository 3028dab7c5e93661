"""Multiprocess mode, measured: the per-query cost of @monitored_query when every metric is backed
by an mmap file (as under gunicorn), and what a /metrics scrape costs as workers come and go.

1. @monitored_query (no record) with prometheus_client's in-memory values vs its file-backed
   multiprocess values, built side by side in this one process and interleaved so machine noise
   hits both alike. Target: multiprocess within 2x of single-process.
2. A scrape (full text exposition of every worker merged) with 4 live workers, for a typical
   service and with every label filled to the default limit (MAX_LABEL_VALUES=100 values per
   label); then with 40 dead workers' files (200 files) left behind, as prometheus_client's
   recipe leaves them; then after ragmon retires them (merged into one archive file per kind).
   Target: < 100 ms with 4 workers.

    python bench/bench_workers.py [--calls 30000] [--repeats 5] [--scrapes 15]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

# The scrape side needs the directory in the environment; the query side picks the value class
# per catalog below, so both modes live in this process.
WORKDIR = Path(tempfile.mkdtemp(prefix="ragmon-bench-workers-"))
os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(WORKDIR / "queries")
(WORKDIR / "queries").mkdir()
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from prometheus_client import CollectorRegistry, generate_latest, values  # noqa: E402
from prometheus_client.multiprocess import MultiProcessCollector  # noqa: E402

from ragmon.instrument.catalog import RAGMetrics  # noqa: E402
from ragmon import monitored_query, stage  # noqa: E402
from ragmon.serving import workers  # noqa: E402
from ragmon.settings import load_settings  # noqa: E402

RESULT = {"answer": "ok", "input_tokens": 500, "output_tokens": 150, "relevance_score": 0.85}
SETTINGS = load_settings({"REQUEST_LOG_DESTINATION": "none",
                          "LOG_DESTINATION": "none"}, dotenv_path=os.devnull)
LIMIT = SETTINGS.MAX_LABEL_VALUES
DEAD_WORKERS = 40  # 5 files each (counter, histogram, 3 gauge modes): 200 files
perf = time.perf_counter


def catalog(file_backed: bool, warm_up=None) -> RAGMetrics:
    """A catalog whose values live in memory, or in mmap files as in multiprocess mode.
    Labelled children take the value class in force when first made: `warm_up` makes them."""
    saved = values.ValueClass
    values.ValueClass = values.MultiProcessValue() if file_backed else values.MutexValue
    try:
        metrics = RAGMetrics(registry=CollectorRegistry(), settings=SETTINGS)
        if warm_up is not None:
            warm_up(metrics)
        return metrics
    finally:
        values.ValueClass = saved


def monitored(file_backed: bool):
    made = {}

    def warm_up(metrics):
        @monitored_query(operation="rag_search", model="gpt-4o-mini", metrics=metrics,
                         request_log=False)
        def query(question):
            with stage("retrieval"):
                pass
            return RESULT
        query("warm up")
        made["query"] = query

    catalog(file_backed, warm_up)
    return made["query"]


def time_per_call(fn, calls: int) -> float:
    start = perf()
    for _ in range(calls):
        fn("q")
    return (perf() - start) / calls


def bench_queries(calls: int, repeats: int) -> None:
    variants = {"no monitoring": lambda q: RESULT,
                "@monitored_query, single-process values": monitored(False),
                "@monitored_query, multiprocess (mmap) values": monitored(True)}
    runs = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            runs[name].append(time_per_call(fn, calls))
    median = {name: statistics.median(times) for name, times in runs.items()}
    bare = median["no monitoring"]
    single = median["@monitored_query, single-process values"] - bare
    multi = median["@monitored_query, multiprocess (mmap) values"] - bare
    print(f"Per-query cost, median of {repeats} runs x {calls:,} calls (one stage, tokens, "
          "cost, relevance; no record)\n")
    print(f"| {'variant':46} | {'us/call':>8} | {'overhead us':>11} |")
    print(f"|{'-' * 48}|{'-' * 10}|{'-' * 13}|")
    for name, value in median.items():
        print(f"| {name:46} | {value * 1e6:8.2f} | {(value - bare) * 1e6:11.2f} |")
    ratio = multi / single
    print(f"\nTarget: multiprocess overhead within 2x of single-process: {ratio:.2f}x "
          f"{'met' if ratio <= 2 else 'MISSED'}\n")


# --- scrapes ---------------------------------------------------------------------------------

# (operations, stages per operation, models, error types per operation, cache types,
#  providers, routes): a typical service, and every label at the default limit.
TYPICAL = (5, 4, 3, 3, 2, 2, 6)
AT_LIMIT = (LIMIT, 1, LIMIT, 1, LIMIT, LIMIT, LIMIT)


def populate(metrics: RAGMetrics, salt: int, shape: tuple) -> None:
    operations, stages, models, errors, caches, providers, routes = shape
    for i in range(operations):
        op = f"operation_{i}"
        metrics.query_latency.labels(op).observe(0.2 + i / 100)
        metrics.queries.labels(op, "success").inc(salt + 1)
        metrics.queries.labels(op, "error").inc()
        metrics.in_flight.labels(op).set(0)
        metrics.relevance.labels(op).observe(0.8)
        metrics.context_precision.labels(op).observe(0.7)
        for j in range(stages):
            metrics.stage_latency.labels(op, f"stage_{(i + j) % LIMIT}").observe(0.05)
        for j in range(errors):
            metrics.errors.labels(op, f"Error{(i + j) % LIMIT}").inc()
        for j in range(models if operations < LIMIT else 1):
            metrics.time_to_first_token.labels(op, f"model_{(i + j) % models}").observe(0.3)
    for i in range(models):
        model = f"model_{i}"
        for kind in ("input", "output", "cached_input"):
            metrics.tokens.labels(model, kind).inc(100)
        metrics.query_cost.labels(model).observe(0.001)
        metrics.spend.labels(model).inc(0.001)
    for i in range(caches):
        metrics.cache_operations.labels(f"cache_{i}", "hit").inc()
        metrics.cache_operations.labels(f"cache_{i}", "miss").inc()
    for i in range(providers):
        metrics.rate_limit_requests.labels(f"provider_{i}").set(1000 - salt)
        metrics.rate_limit_tokens.labels(f"provider_{i}").set(100000 - salt)
    for i in range(routes):
        metrics.http_requests.labels("POST", f"/route/{i}", "2xx").inc()
        metrics.http_latency.labels("POST", f"/route/{i}").observe(0.1)
        metrics.http_stream.labels("POST", f"/route/{i}").observe(1.0)
    metrics.service_info.labels("rag-service", "production").set(1)


def worker(salt: int, shape: tuple, ready, stop) -> None:
    catalog(True, lambda metrics: populate(metrics, salt, shape))
    ready.set()
    if stop is not None:
        stop.wait()
    os._exit(0)


def time_scrapes(collector_classes: list, path: Path, scrapes: int) -> list[tuple[float, int]]:
    """Median seconds and bytes per scrape for each collector, interleaved scrape by scrape."""
    times = [[] for _ in collector_classes]
    sizes = [0] * len(collector_classes)
    for _ in range(scrapes):
        for index, collector_class in enumerate(collector_classes):
            registry = CollectorRegistry()
            collector_class(registry, path=str(path))
            start = perf()
            body = generate_latest(registry)
            times[index].append(perf() - start)
            sizes[index] = len(body)
    return [(statistics.median(t), size) for t, size in zip(times, sizes)]


def bench_scrapes(scrapes: int, name: str, shape: tuple) -> None:
    path = WORKDIR / name.replace(" ", "-")
    path.mkdir()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)  # where the workers below write
    fork = multiprocessing.get_context("fork")
    stop = fork.Event()
    live = []
    for salt in range(4):
        ready = fork.Event()
        process = fork.Process(target=worker, args=(salt, shape, ready, stop))
        process.start()
        ready.wait(60)
        live.append(process)
    rows = []

    def rows_for(labels_and_collectors):
        files = len(list(path.glob("*.db")))
        results = time_scrapes([c for _label, c in labels_and_collectors], path, scrapes)
        for (label, _c), (median, size) in zip(labels_and_collectors, results):
            rows.append((label, files, median, size))

    rows_for([("4 live workers, prometheus_client collector", MultiProcessCollector),
              ("4 live workers, ragmon collector (checks for dead)", workers.WorkersCollector)])
    dead = []
    for salt in range(4, 4 + DEAD_WORKERS):
        process = fork.Process(target=worker, args=(salt, shape, fork.Event(), None))
        process.start()
        process.join(60)
        dead.append(process.pid)
    rows_for([(f"+ {DEAD_WORKERS} dead workers' files left behind", MultiProcessCollector)])
    start = perf()
    merged = workers.retire_workers(dead, path)
    retire_seconds = perf() - start
    rows_for([(f"+ {DEAD_WORKERS} dead workers, retired into archive files",
               workers.WorkersCollector)])
    stop.set()
    for process in live:
        process.join(30)

    print(f"/metrics scrape, {name}: text exposition of all workers merged, median of "
          f"{scrapes}\n")
    print(f"| {'directory':52} | {'files':>5} | {'ms/scrape':>9} | {'bytes':>9} |")
    print(f"|{'-' * 54}|{'-' * 7}|{'-' * 11}|{'-' * 11}|")
    for label, files, median, size in rows:
        print(f"| {label:52} | {files:5d} | {median * 1e3:9.1f} | {size:9,d} |")
    live_ms = rows[1][2] * 1e3
    print(f"\nRetiring {DEAD_WORKERS} dead workers ({merged} files merged, their live gauges "
          f"dropped) took {retire_seconds * 1e3:.0f} ms, "
          "once, in gunicorn's master (child_exit) or the first scrape after they died.")
    print(f"Target: scrape with 4 live workers < 100 ms: {live_ms:.1f} ms "
          f"{'met' if live_ms < 100 else 'MISSED'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=30_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--scrapes", type=int, default=15)
    args = parser.parse_args()
    bench_queries(args.calls, args.repeats)
    bench_scrapes(args.scrapes, "typical service (5 operations x 4 stages, 3 models, 6 routes)",
                  TYPICAL)
    print()
    bench_scrapes(max(3, args.scrapes // 5),
                  f"every label at the default limit ({LIMIT} values each)", AT_LIMIT)


if __name__ == "__main__":
    main()
