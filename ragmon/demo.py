"""`python m2_3_monitoring.py`: a simulated RAG service that exercises every metric.

Queries arrive at random (Poisson, --qps on average) and run concurrently on asyncio: a semantic
cache lookup, then on a miss retrieval, reranking and generation with realistic spread, priced
per model, with occasional errors and a provider rate limit that drains and resets each minute.
``--fault`` makes one alert condition of the product design true within seconds.

"""
from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass

from .instrument.catalog import RAGMetrics
from .instrument.decorator import (configure_request_log, default_metrics, monitored_query, stage,
                         track_cache_operation, track_rate_limit)
from .instrument.jsonlog import StructuredLogger
from .instrument.server import start_metrics_server

FAULTS = {
    "latency": "generation takes 2.5-4 s, so p95 query latency passes 2 s",
    "errors": "a quarter of queries fail, so the error rate passes 5%",
    "cache": "the semantic cache hits only ~10% of lookups, so its hit rate falls below 30%",
    # A normal run is on pace for about $25/day at 5 q/s.
    "cost": "uncached queries use gpt-4 with a huge prompt (~$2), so spend is on pace for >$100/day",
    "ratelimit": "the provider reports fewer than 100 requests left in the window",
}


class RateLimitError(Exception):
    pass


class ContextLengthError(Exception):
    pass


ERRORS = (TimeoutError, RateLimitError, ContextLengthError)  # the builtin TimeoutError


@dataclass
class Scenario:
    """The knobs of the simulated service; a fault changes one of them."""
    cache_hit_rate: float = 0.5
    error_rate: float = 0.03  # of cache misses, i.e. ~1.5% of all queries
    generation_median_s: float = 0.55
    slow_generation: bool = False
    expensive: bool = False
    rate_limit_per_minute: dict | None = None
    rate_limit_squeezed: bool = False

    @classmethod
    def with_fault(cls, fault: str | None) -> "Scenario":
        scenario = cls(rate_limit_per_minute={"openai": 10_000, "anthropic": 4_000})
        if fault == "latency":
            scenario.slow_generation = True
        elif fault == "errors":
            scenario.error_rate = 0.5  # of misses: ~25% of all queries
        elif fault == "cache":
            scenario.cache_hit_rate = 0.1
        elif fault == "cost":
            scenario.expensive = True
        elif fault == "ratelimit":
            scenario.rate_limit_squeezed = True
        return scenario


class RateLimitWindow:
    """What a provider reports in x-ratelimit-remaining-* headers: a per-minute budget."""

    def __init__(self, limit: int, squeezed: bool):
        self.limit = 90 if squeezed else limit  # squeezed: always under the 100-request alert line
        self.window = -1
        self.used = 0

    def take(self) -> int:
        window = int(time.time() // 60)
        if window != self.window:
            self.window, self.used = window, 0
        self.used += 1
        return max(0, self.limit - self.used)


class SimulatedRAG:
    def __init__(self, scenario: Scenario, metrics: RAGMetrics, logger: StructuredLogger):
        self.scenario = scenario
        self.metrics = metrics
        self.logger = logger
        self.random = random.Random()
        self.windows = {provider: RateLimitWindow(limit, scenario.rate_limit_squeezed)
                        for provider, limit in scenario.rate_limit_per_minute.items()}
        self.answer = monitored_query(operation="rag_search", model="gpt-4o-mini",
                                      metrics=metrics)(self._answer)

    async def _answer(self, query: str) -> dict:
        s, rnd = self.scenario, self.random
        async with stage("embedding"):
            await asyncio.sleep(rnd.uniform(0.008, 0.03))
        hit = rnd.random() < s.cache_hit_rate
        track_cache_operation(hit=hit, cache_type="semantic", metrics=self.metrics)
        if hit:
            return {"answer": "(cached)", "relevance_score": min(1.0, rnd.betavariate(8, 2))}

        async with stage("retrieval", top_k=20) as retrieval:
            await asyncio.sleep(rnd.lognormvariate(math.log(0.12), 0.4))
            retrieval.metadata["documents"] = rnd.randint(8, 20)
        embedding_hit = rnd.random() < 0.7
        track_cache_operation(hit=embedding_hit, cache_type="embedding", metrics=self.metrics)
        async with stage("reranking"):
            await asyncio.sleep(rnd.uniform(0.03, 0.08))

        model, provider = (("claude-3-haiku", "anthropic") if rnd.random() < 0.1
                           else ("gpt-4o-mini", "openai"))
        if s.expensive:
            model, provider = "gpt-4", "openai"
        remaining = self.windows[provider].take()
        headers = ({"x-ratelimit-remaining-requests": str(remaining),
                    "x-ratelimit-remaining-tokens": str(remaining * 150)} if provider == "openai" else
                   {"anthropic-ratelimit-requests-remaining": str(remaining),
                    "anthropic-ratelimit-tokens-remaining": str(remaining * 150)})
        track_rate_limit(provider, headers=headers, metrics=self.metrics)

        async with stage("generation", model=model):
            if s.slow_generation:
                delay = rnd.uniform(2.5, 4.0)
            else:
                delay = rnd.lognormvariate(math.log(s.generation_median_s), 0.35)
            await asyncio.sleep(delay)
            if rnd.random() < s.error_rate:
                error = rnd.choice(ERRORS)(f"simulated {provider} failure")
                # Logged inside the query, so the line carries the query's request_id.
                self.logger.log_error(error, context={"provider": provider, "model": model})
                raise error

        if s.expensive:
            input_tokens, output_tokens, cached = 40_000 + rnd.randint(0, 5000), 10_000, 0
        else:
            # Kept small so a normal run spends well under the $100/day alert line.
            input_tokens, output_tokens = rnd.randint(200, 500), rnd.randint(40, 120)
            cached = rnd.choice((0, 0, 128))
        return {"answer": "...", "model": model, "input_tokens": input_tokens,
                "output_tokens": output_tokens, "cached_input_tokens": cached,
                "relevance_score": min(1.0, rnd.betavariate(8, 2)),
                "context_precision": rnd.uniform(0.55, 0.95)}

    async def handle(self, number: int) -> None:
        try:
            await self.answer(f"question {number}")
        except ERRORS:
            pass  # counted and logged by then; a real service would answer with an error


class Summary:
    """The live one-line view: rates and percentiles over the last interval, read back from the
    metrics the service just recorded (the same numbers Prometheus will scrape)."""

    def __init__(self, metrics: RAGMetrics):
        self.metrics = metrics
        self.previous = self.read()
        self.started = time.monotonic()

    def read(self) -> dict:
        buckets: dict[float, float] = {}
        totals = {"queries": 0.0, "errors": 0.0, "hits": 0.0, "lookups": 0.0, "spend": 0.0}
        for family in self.metrics.registry.collect():
            for sample in family.samples:
                name, labels, value = sample.name, sample.labels, sample.value
                if name == "rag_query_duration_seconds_bucket":
                    le = float(labels["le"])
                    buckets[le] = buckets.get(le, 0.0) + value
                elif name == "rag_queries_total":
                    totals["queries"] += value
                    totals["errors"] += value if labels["status"] == "error" else 0.0
                elif name == "rag_cache_operations_total" and labels["cache_type"] == "semantic":
                    totals["lookups"] += value
                    totals["hits"] += value if labels["result"] == "hit" else 0.0
                elif name == "rag_spend_dollars_total":
                    totals["spend"] += value
        return {"at": time.monotonic(), "buckets": buckets, **totals}

    @staticmethod
    def quantile(q: float, buckets: dict[float, float]) -> float | None:
        """histogram_quantile over cumulative bucket counts, as PromQL computes it."""
        edges = sorted(buckets)
        if not edges or buckets[edges[-1]] <= 0:
            return None
        rank, lower, below = q * buckets[edges[-1]], 0.0, 0.0
        for edge in edges:
            count = buckets[edge]
            if count >= rank:
                if math.isinf(edge):
                    return lower
                return lower + (edge - lower) * (rank - below) / max(count - below, 1e-12)
            lower, below = edge, count
        return lower

    def line(self) -> str:
        now = self.read()
        prev, self.previous = self.previous, now
        elapsed = max(now["at"] - prev["at"], 1e-9)
        queries = now["queries"] - prev["queries"]
        delta = {le: now["buckets"].get(le, 0.0) - prev["buckets"].get(le, 0.0) for le in now["buckets"]}
        p95 = self.quantile(0.95, delta)
        lookups = now["lookups"] - prev["lookups"]
        pace = (now["spend"] - prev["spend"]) / elapsed * 86400
        return (f"[{now['at'] - self.started:6.0f}s] {queries / elapsed:5.1f} q/s | p95 "
                + (f"{p95:5.2f} s" if p95 is not None else "  n/a  ")
                + f" | errors {100 * (now['errors'] - prev['errors']) / queries if queries else 0:4.1f}%"
                + f" | cache hits {100 * (now['hits'] - prev['hits']) / lookups if lookups else 0:3.0f}%"
                + f" | spend ${now['spend']:.4f} (pace ${pace:,.0f}/day)")


async def run(args: argparse.Namespace, metrics: RAGMetrics, logger: StructuredLogger) -> None:
    service = SimulatedRAG(Scenario.with_fault(args.fault), metrics, logger)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if args.duration:
        loop.call_later(args.duration, stop.set)

    summary = Summary(metrics)
    tasks: set[asyncio.Task] = set()
    arrivals = random.Random()
    next_summary = time.monotonic() + args.summary_every
    number = 0
    while not stop.is_set():
        if len(tasks) < args.max_in_flight:
            number += 1
            task = asyncio.create_task(service.handle(number))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        try:
            await asyncio.wait_for(stop.wait(), timeout=arrivals.expovariate(args.qps))
        except asyncio.TimeoutError:
            pass
        if not args.quiet and time.monotonic() >= next_summary:
            next_summary += args.summary_every
            print(summary.line(), flush=True)

    if tasks:  # let queries in progress finish briefly; the rest are recorded as cancelled
        _done, pending = await asyncio.wait(tasks, timeout=2.0)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    if not args.quiet:
        print(summary.line(), flush=True)


def parse_args(argv: list[str] | None, settings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python m2_3_monitoring.py",
        description="Run a simulated RAG service that serves Prometheus metrics on /metrics.",
        epilog="Faults:\n" + "\n".join(f"  {name:10} {text}" for name, text in FAULTS.items()),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=0.0,
                        help="seconds to run; 0 runs until Ctrl-C or SIGTERM (default: 0)")
    parser.add_argument("--qps", type=float, default=5.0, help="average queries per second (default: 5)")
    parser.add_argument("--port", type=int, default=settings.METRICS_PORT,
                        help=f"port for /metrics (default: METRICS_PORT={settings.METRICS_PORT})")
    parser.add_argument("--addr", default=settings.METRICS_ADDR,
                        help=f"address to bind (default: METRICS_ADDR={settings.METRICS_ADDR})")
    parser.add_argument("--fault", choices=sorted(FAULTS), help="make one alert condition true")
    parser.add_argument("--log-dir", default=str(settings.log_dir),
                        help=f"where request records and logs go (default: LOG_DIR={settings.LOG_DIR})")
    parser.add_argument("--summary-every", type=float, default=5.0, help="seconds between summary lines")
    parser.add_argument("--max-in-flight", type=int, default=500, help=argparse.SUPPRESS)
    parser.add_argument("--quiet", action="store_true", help="no summary lines")
    args = parser.parse_args(argv)
    if not 0 < args.qps <= 10_000:
        parser.error(f"--qps {args.qps} is out of range; give an average rate from 0.01 to 10000")
    if args.duration < 0:
        parser.error(f"--duration {args.duration} is negative; give seconds, or 0 to run until Ctrl-C")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port; give 1-65535 (0 picks a free one)")
    if args.summary_every <= 0:
        parser.error(f"--summary-every {args.summary_every} must be > 0 seconds")
    return args


def main(argv: list[str] | None = None) -> int:
    from .settings import load_settings, settings_for_cli
    settings = settings_for_cli()
    args = parse_args(argv, settings)
    # Records and log lines go to files so the console shows only the summary.
    demo_settings = load_settings({**os.environ, "LOG_DIR": args.log_dir, "LOG_DESTINATION": "file",
                                   "REQUEST_LOG_DESTINATION": "file"})
    configure_request_log("file", args.log_dir)
    metrics = default_metrics()
    logger = StructuredLogger("m2_3_demo", settings=demo_settings)
    server = start_metrics_server(args.port, args.addr)
    if server is None:  # a service keeps running without its endpoint; the demo is pointless
        print(f"error: cannot serve /metrics: port {args.port} on {args.addr} is already in use "
              "or cannot be bound; choose another --port", file=sys.stderr)
        return 2
    if not args.quiet:
        fault = f" with fault '{args.fault}': {FAULTS[args.fault]}" if args.fault else ""
        print(f"Simulated RAG service at ~{args.qps:g} q/s{fault}.\n"
              f"Metrics: http://{args.addr}:{server.server_port}/metrics | request records: "
              f"{args.log_dir}/*_performance.jsonl | "
              + (f"stops after {args.duration:g} s" if args.duration else "Ctrl-C stops"), flush=True)
    try:
        asyncio.run(run(args, metrics, logger))
    except KeyboardInterrupt:  # a second Ctrl-C while finishing
        pass
    finally:
        server.shutdown()
    return 0
