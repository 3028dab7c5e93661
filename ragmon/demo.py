"""`python m2_3_monitoring.py`: a simulated RAG service that exercises every metric.

Queries arrive at random (Poisson, --qps on average) and run concurrently on asyncio: a semantic
cache lookup, then on a miss retrieval, reranking and generation with realistic spread, priced
per model, with occasional errors and a provider rate limit that drains and resets each minute.
``--fault`` makes one alert condition of the product design true within seconds.

Answer quality, as a service with an LLM judge and a feedback button reports it: every search
answer carries two judge scores (faithfulness, answer_relevance), a batch judge scores one answer
in five later by its request id (context_recall), every retrieval reports its documents, best
similarity and the age of its newest document, and half the answers get a thumbs up or down a
moment later (far more than real users give, so the fast stack's short windows hold enough).

"""
from __future__ import annotations

import argparse
import asyncio
import contextvars
import math
import os
import random
import re
import signal
import sys
import time
from dataclasses import dataclass

from .instrument.catalog import RAGMetrics
from .instrument.context import current_request_id
from .instrument.decorator import monitored_query
from .instrument.helpers import record_tokens, track_cache_operation
from .instrument.quality import record_feedback, record_scores
from .instrument.ratelimits import track_rate_limit
from .instrument.retrieval import record_retrieval
from .instrument.runtime import configure_request_log, default_metrics
from .instrument.stages import stage
from .instrument.sdk import record_llm_error
from .instrument.jsonlog import StructuredLogger
from .instrument.server import start_metrics_server

FAULTS = {
    "latency": "generation takes 2.5-4 s, so p95 query latency passes 2 s",
    "errors": "a quarter of queries fail, so the error rate passes 5%",
    "cache": "the semantic cache hits only ~10% of lookups, so its hit rate falls below 30%",
    # A normal run is on pace for about $25/day at 5 q/s.
    "cost": "uncached queries use gpt-4 with a huge prompt (~$2), so spend is on pace for >$100/day",
    "ratelimit": "the provider reports fewer than 100 requests left in the window",
    "quality": "a degraded index: judge scores fall by half, 60% of retrievals come back empty, "
               "~60% of feedback is negative and the newest document used is 5-12 days old",
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
    # Of provider calls: a provider fails ~1.5% of calls (recording_rules.yml's SLO note). A
    # search calls it on a cache miss only (~0.75% of searches fail); a stream on every query
    # (~1.5%). At 3% streams failed 3.1% of the time, within noise of the 5% page.
    error_rate: float = 0.015
    generation_median_s: float = 0.55
    slow_generation: bool = False
    expensive: bool = False
    rate_limit_per_minute: dict | None = None
    rate_limit_squeezed: bool = False
    degraded_index: bool = False

    @classmethod
    def with_fault(cls, fault: str | None) -> "Scenario":
        scenario = cls(rate_limit_per_minute={"openai": 10_000, "anthropic": 4_000})
        if fault == "latency":
            scenario.slow_generation = True
        elif fault == "errors":
            scenario.error_rate = 0.5  # of provider calls: ~25% of searches, half the streams
        elif fault == "cache":
            scenario.cache_hit_rate = 0.1
        elif fault == "cost":
            scenario.expensive = True
        elif fault == "ratelimit":
            scenario.rate_limit_squeezed = True
        elif fault == "quality":
            scenario.degraded_index = True
        return scenario


# Healthy answers score ~0.8 and retrieve from an index fed all day; a degraded index (stale,
# half its shards missing, a changed embedding model) retrieves less, older and worse context.
# The degraded shares are large on purpose: the fast stack judges 20-second windows, and each
# operation's window must hold the alerts' volume guards (10 empty retrievals, 10 negative
# feedbacks) for the whole fault, not flicker around them.
EMPTY_RETRIEVAL_SHARE = {False: 0.02, True: 0.60}
FEEDBACK_SHARE = 0.5            # answers that get a thumbs up or down
# A user presses thumbs down when the answer falls below a bar of their own, drawn from 0 to this:
# ~5% of healthy answers (quality ~0.8), ~60% of a degraded index's.
USER_BAR = 0.7
LATE_JUDGE_SHARE = 0.2          # answers the batch judge scores later, by request id
NEGATIVE_REASONS = {False: ("wrong_answer", "too_vague", "no_answer"),
                    True: ("outdated", "no_answer", "wrong_answer")}


class AnswerQuality:
    """What the simulated judge, retriever and users say about one answer."""

    def __init__(self, rnd: random.Random, degraded: bool):
        self.rnd, self.degraded = rnd, degraded
        self.request_id: str | None = None  # set inside the query
        self.empty = False
        self.faithfulness: float | None = None

    def score(self, good: tuple[float, float], bad: tuple[float, float]) -> float:
        a, b = bad if self.degraded else good
        value = self.rnd.betavariate(a, b)
        return min(1.0, value * 0.3 if self.empty else value)

    def retrieval(self) -> None:
        """Reports the retrieval of the query in progress (ragmon.record_retrieval)."""
        rnd = self.rnd
        self.empty = rnd.random() < EMPTY_RETRIEVAL_SHARE[self.degraded]
        if self.empty:
            record_retrieval(count=0)
            return
        age = (rnd.uniform(5, 12) * 86400 if self.degraded
               else rnd.lognormvariate(math.log(3 * 3600), 1.0))
        record_retrieval(count=rnd.randint(3, 8) if self.degraded else rnd.randint(8, 20),
                         top_score=self.score((8, 3), (4, 5)),
                         newest_document_time=time.time() - age)

    def judge(self) -> None:
        """The inline judge's scores for the answer in progress (ragmon.record_scores)."""
        self.faithfulness = self.score((8, 2), (3, 5))
        record_scores(faithfulness=self.faithfulness, answer_relevance=self.score((9, 2), (3, 4)))

    def follow_up(self) -> None:
        """After the answer: maybe a late judge score and a user's thumbs, a moment later and
        outside the query (a fresh context: they arrive as a later request would)."""
        request_id = self.request_id
        if request_id is None:
            return
        rnd, loop = self.rnd, asyncio.get_running_loop()
        if rnd.random() < LATE_JUDGE_SHARE:
            recall = self.score((7, 2), (3, 5))
            loop.call_later(rnd.uniform(0.5, 2.0), lambda: record_scores(
                {"context_recall": recall}, request_id=request_id), context=contextvars.Context())
        if rnd.random() < FEEDBACK_SHARE:
            quality = self.faithfulness if self.faithfulness is not None else self.score((8, 2), (3, 5))
            negative = rnd.uniform(0, USER_BAR) > quality
            reason = rnd.choice(NEGATIVE_REASONS[self.degraded]) if negative else None
            loop.call_later(rnd.uniform(0.5, 3.0), lambda: record_feedback(
                request_id, thumbs="down" if negative else "up", reason=reason),
                context=contextvars.Context())


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
        self.stream = monitored_query(operation="rag_stream", model="gpt-4o-mini",
                                      metrics=metrics)(self._stream)
        self.calls = 0

    async def _answer(self, query: str, quality: AnswerQuality) -> dict:
        s, rnd = self.scenario, self.random
        quality.request_id = current_request_id()
        async with stage("embedding"):
            await asyncio.sleep(rnd.uniform(0.008, 0.03))
        hit = rnd.random() < s.cache_hit_rate
        track_cache_operation(hit=hit, cache_type="semantic", metrics=self.metrics)
        if hit:
            quality.judge()
            return {"answer": "(cached)", "relevance_score": quality.score((8, 2), (3, 5))}

        async with stage("retrieval", top_k=20) as retrieval:
            await asyncio.sleep(rnd.lognormvariate(math.log(0.12), 0.4))
            quality.retrieval()
            retrieval.metadata["documents"] = 0 if quality.empty else rnd.randint(8, 20)
        embedding_hit = rnd.random() < 0.7
        track_cache_operation(hit=embedding_hit, cache_type="embedding", metrics=self.metrics)
        async with stage("reranking"):
            await asyncio.sleep(rnd.uniform(0.03, 0.08))

        model, provider = self._pick_model()
        self._rate_limit_headers(provider)

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
                record_llm_error(provider, error, metrics=self.metrics)
                raise error

        quality.judge()
        precision = rnd.uniform(0.2, 0.6) if s.degraded_index else rnd.uniform(0.55, 0.95)
        if s.expensive:
            input_tokens, output_tokens, cached = 40_000 + rnd.randint(0, 5000), 10_000, 0
            return {"answer": "...", "model": model, "input_tokens": input_tokens,
                    "output_tokens": output_tokens, "cached_input_tokens": cached,
                    "relevance_score": quality.score((8, 2), (3, 5)),
                    "context_precision": precision}
        # What the SDK would return (its model_dump()), read by shape like a real response.
        record_tokens(self._response(model, provider), metrics=self.metrics)
        return {"answer": "...", "relevance_score": quality.score((8, 2), (3, 5)),
                "context_precision": precision}

    def _pick_model(self) -> tuple[str, str]:
        draw = self.random.random()
        if self.scenario.expensive:
            return "gpt-4", "openai"
        if draw < 0.1:
            return "claude-3-haiku-20240307", "anthropic"  # the dated snapshot the API answers
        if draw < 0.15:
            return "o4-mini-2025-04-16", "openai"  # a reasoning model
        if draw < 0.17:
            return "llama-3.1-8b-local", "openai"  # not in the price table: default-priced
        return "gpt-4o-mini", "openai"

    def _rate_limit_headers(self, provider: str) -> None:
        """Headers as the providers send them, with the time left in the window."""
        remaining = self.windows[provider].take()
        left = 60 - time.time() % 60
        if provider == "openai":
            headers = {"x-ratelimit-remaining-requests": str(remaining),
                       "x-ratelimit-remaining-tokens": str(remaining * 150),
                       "x-ratelimit-reset-requests": f"{left:.3f}s",
                       "x-ratelimit-reset-tokens": f"{min(left, 6):.3f}s"}
        else:
            reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + left))
            headers = {"anthropic-ratelimit-requests-remaining": str(remaining),
                       "anthropic-ratelimit-tokens-remaining": str(remaining * 150),
                       "anthropic-ratelimit-requests-reset": reset,
                       "anthropic-ratelimit-tokens-reset": reset}
        track_rate_limit(provider, headers=headers, metrics=self.metrics)

    def _usage(self, provider: str, reasoning: bool) -> dict:
        """Token counts kept small so a normal run spends well under the $100/day alert line."""
        rnd = self.random
        uncached, output = rnd.randint(200, 500), rnd.randint(40, 120)
        cached = rnd.choice((0, 0, 128))
        if provider == "anthropic":
            write_5m, write_1h = rnd.choice(((0, 0), (0, 0), (300, 0), (0, 300)))
            return {"input_tokens": uncached, "output_tokens": output,
                    "cache_read_input_tokens": cached,
                    "cache_creation_input_tokens": write_5m + write_1h,
                    "cache_creation": {"ephemeral_5m_input_tokens": write_5m,
                                       "ephemeral_1h_input_tokens": write_1h}}
        return {"prompt_tokens": uncached + cached, "completion_tokens": output,
                "prompt_tokens_details": {"cached_tokens": cached},
                "completion_tokens_details": {"reasoning_tokens": output // 2 if reasoning else 0}}

    def _response(self, model: str, provider: str) -> dict:
        self.calls += 1
        usage = self._usage(provider, model.startswith("o4"))
        if provider == "anthropic":
            return {"id": f"msg_{self.calls}", "type": "message", "model": model, "usage": usage}
        return {"id": f"chatcmpl-{self.calls}", "object": "chat.completion", "model": model,
                "choices": [], "usage": usage}

    async def _stream(self, query: str, quality: AnswerQuality):
        """A streamed answer: SDK stream chunks/events, as a service relays them. Time to first
        token is the first chunk with content; some OpenAI streams are made without
        include_usage (counted as unreadable), and some clients hang up early (partial usage)."""
        rnd = self.random
        quality.request_id = current_request_id()
        async with stage("retrieval", top_k=20):
            await asyncio.sleep(rnd.lognormvariate(math.log(0.12), 0.4))
            quality.retrieval()
        model, provider = self._pick_model()
        self._rate_limit_headers(provider)
        self.calls += 1
        s = self.scenario
        first_token = (rnd.uniform(2.5, 4.0) if s.slow_generation
                       else rnd.lognormvariate(math.log(0.3), 0.4))
        if rnd.random() < s.error_rate:
            error = rnd.choice(ERRORS)(f"simulated {provider} failure")
            self.logger.log_error(error, context={"provider": provider, "model": model})
            record_llm_error(provider, error, metrics=self.metrics)
            raise error
        words = rnd.randint(8, 20)
        if provider == "anthropic":
            usage = self._usage(provider, False)
            yield {"type": "message_start", "message": {
                "id": f"msg_{self.calls}", "type": "message", "model": model,
                "usage": dict(usage, output_tokens=1)}}
            await asyncio.sleep(first_token)
            for _ in range(words):
                yield {"type": "content_block_delta", "delta": {"type": "text_delta", "text": "w "}}
                await asyncio.sleep(0.01)
            yield {"type": "message_delta", "usage": {"output_tokens": words}}
            yield {"type": "message_stop"}
            return
        chunk = {"id": f"chatcmpl-{self.calls}", "object": "chat.completion.chunk", "model": model}
        yield dict(chunk, choices=[{"delta": {"role": "assistant", "content": ""}}])
        await asyncio.sleep(first_token)
        for _ in range(words):
            yield dict(chunk, choices=[{"delta": {"content": "w "}}])
            await asyncio.sleep(0.01)
        if rnd.random() < 0.9:  # the rest were made without stream_options include_usage
            usage = self._usage(provider, model.startswith("o4"))
            usage["completion_tokens"] = words
            usage["completion_tokens_details"]["reasoning_tokens"] = 0
            yield dict(chunk, choices=[], usage=usage)

    async def handle(self, number: int) -> None:
        quality = AnswerQuality(self.random, self.scenario.degraded_index)
        try:
            if self.random.random() < 0.2 and not self.scenario.expensive:
                await self.relay(f"question {number}", quality)
            else:
                await self.answer(f"question {number}", quality)
        except ERRORS:
            return  # counted and logged by then; a real service would answer with an error
        quality.follow_up()

    async def relay(self, query: str, quality: AnswerQuality) -> None:
        """Reads a streamed answer as a client would; one in ten clients hangs up early."""
        stream = self.stream(query, quality)
        hang_up = self.random.random() < 0.1
        try:
            async for index, _ in _aenumerate(stream):
                if hang_up and index == 3:
                    break
        finally:
            await stream.aclose()


async def _aenumerate(items):
    index = 0
    async for item in items:
        yield index, item
        index += 1


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
    parser.add_argument("--instance", metavar="NAME",
                        help="run as one replica of the service: its request records and logs go "
                             "to LOG_DIR/NAME (replicas never share a file); give each replica its "
                             "own --port and add it with `m2_3_stack.py targets --add`")
    args = parser.parse_args(argv)
    if not 0 < args.qps <= 10_000:
        parser.error(f"--qps {args.qps} is out of range; give an average rate from 0.01 to 10000")
    if args.duration < 0:
        parser.error(f"--duration {args.duration} is negative; give seconds, or 0 to run until Ctrl-C")
    if not 0 <= args.port <= 65535:
        parser.error(f"--port {args.port} is not a TCP port; give 1-65535 (0 picks a free one)")
    if args.summary_every <= 0:
        parser.error(f"--summary-every {args.summary_every} must be > 0 seconds")
    if args.instance is not None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", args.instance):
            parser.error(f"--instance {args.instance!r} is not a replica name; use up to 63 "
                         "letters, digits, '_', '-' and '.', e.g. --instance replica-2")
        args.log_dir = os.path.join(args.log_dir, args.instance)
    return args


def _unwritable(log_dir: str) -> str | None:
    """Why records cannot be written to `log_dir`, or None when they can."""
    import tempfile
    try:
        os.makedirs(log_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=log_dir):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    from .settings import load_settings, settings_for_cli
    settings = settings_for_cli()
    args = parse_args(argv, settings)
    problem = _unwritable(args.log_dir)
    if problem:
        print(f"error: --log-dir {args.log_dir!r} cannot hold the request records: {problem}. "
              "Give a writable directory (--log-dir or LOG_DIR).", file=sys.stderr)
        return 2
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
        replica = f" (replica {args.instance})" if args.instance else ""
        print(f"Simulated RAG service{replica} at ~{args.qps:g} q/s{fault}.\n"
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
