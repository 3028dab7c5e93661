"""Cost of monitoring real SDK calls, side by side in one run against the local LLM server.

Part 1, per call (openai and anthropic SDKs against ragmon.testing.LLMTestServer on loopback):
  bare SDK call                         the baseline
  instrumented client                   instrument_openai / instrument_anthropic, no query
  instrumented client in @monitored_query
  bare client in @monitored_query returning the SDK object (the decorator reads it by shape)
and the same for a stream read to its end. Variants are interleaved in short rounds so machine
noise hits all alike; overhead = median per-call time minus the bare call's. Wall time on a
shared machine swings by more than the overhead, so CPU time of the process (client and the
in-process server thread; the server's share is the same for every variant) is shown as well.

Part 2, per response: reading usage from each response shape (read_usage / StreamUsage.feed),
against reading the same two numbers by hand (`response.usage.prompt_tokens`), which is the
floor any reader pays.

    python bench/bench_sdk.py [--calls 300] [--repeats 5] [--reads 20000]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import anthropic  # noqa: E402
import openai  # noqa: E402
from langchain_core.messages import AIMessage  # noqa: E402
from prometheus_client import CollectorRegistry  # noqa: E402

import ragmon  # noqa: E402
from ragmon.instrument.catalog import RAGMetrics  # noqa: E402
from ragmon.instrument.usage import StreamUsage, read_usage  # noqa: E402
from ragmon.settings import SHIPPED_PRICES_FILE, load_settings  # noqa: E402
from ragmon.testing import LLMTestServer  # noqa: E402

perf = time.perf_counter
MESSAGES = [{"role": "user", "content": "Which city is the capital of France"}]


def catalog() -> RAGMetrics:
    settings = load_settings({"MODEL_PRICES_FILE": str(SHIPPED_PRICES_FILE),
                              "REQUEST_LOG_DESTINATION": "none", "LOG_DESTINATION": "none"},
                             dotenv_path="/dev/null")
    return RAGMetrics(registry=CollectorRegistry(), settings=settings)


def call_variants(server: LLMTestServer) -> dict:
    m = catalog()

    def oa(instrument: bool):
        client = openai.OpenAI(base_url=server.openai_base_url, api_key="bench", max_retries=0)
        return ragmon.instrument_openai(client, metrics=m) if instrument else client

    def ac(instrument: bool):
        client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="bench", max_retries=0)
        return ragmon.instrument_anthropic(client, metrics=m) if instrument else client

    def chat(client):
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)

    def chat_stream(client):
        for _ in client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                stream_options={"include_usage": True}):
            pass

    def message(client):
        return client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES)

    def message_stream(client):
        for _ in client.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES,
                                        stream=True):
            pass

    def in_query(fn):
        return ragmon.monitored_query("bench", metrics=m, request_log=False)(fn)

    variants = {}
    for sdk, make, call, streamed in (("openai chat", oa, chat, chat_stream),
                                      ("anthropic messages", ac, message, message_stream)):
        bare, wired = make(False), make(True)
        variants[(sdk, "bare SDK call")] = lambda c=bare, f=call: f(c)
        variants[(sdk, "instrumented client")] = lambda c=wired, f=call: f(c)
        variants[(sdk, "instrumented client in @monitored_query")] = in_query(lambda c=wired, f=call: f(c))
        variants[(sdk, "bare client, query reads the returned object")] = in_query(lambda c=bare, f=call: f(c))
        variants[(sdk + " stream", "bare SDK call")] = lambda c=bare, f=streamed: f(c)
        variants[(sdk + " stream", "instrumented client")] = lambda c=wired, f=streamed: f(c)
        variants[(sdk + " stream", "instrumented client in @monitored_query")] = in_query(
            lambda c=wired, f=streamed: f(c))
    return variants


def time_calls(fn, calls: int) -> float:
    start = perf()
    for _ in range(calls):
        fn()
    return (perf() - start) / calls


def time_calls_both(fn, calls: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds) per call."""
    cpu, start = time.process_time(), perf()
    for _ in range(calls):
        fn()
    return (perf() - start) / calls, (time.process_time() - cpu) / calls


def shapes(server: LLMTestServer) -> dict:
    client = openai.OpenAI(base_url=server.openai_base_url, api_key="bench", max_retries=0)
    aclient = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="bench", max_retries=0)
    completion = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    response = client.responses.create(model="gpt-4o-mini", input="hello")
    message = aclient.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES)
    chunks = list(client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, stream=True,
                                                 stream_options={"include_usage": True}))
    events = list(aclient.messages.create(model="claude-haiku-4-5", max_tokens=50, messages=MESSAGES,
                                          stream=True))
    lc = AIMessage(content="x", usage_metadata={"input_tokens": 10, "output_tokens": 5, "total_tokens": 15,
                                                "input_token_details": {"cache_read": 3}})

    def feed_all(items):
        def run():
            tracker = StreamUsage(0.0)
            for item in items:
                tracker.feed(item)
            return tracker.snapshot()
        return run

    return {
        "by hand: completion.usage.prompt_tokens + completion_tokens":
            (lambda: completion.usage.prompt_tokens + completion.usage.completion_tokens, 1),
        "ChatCompletion": (lambda: read_usage(completion), 1),
        "ChatCompletion.model_dump() dict": (lambda d=completion.model_dump(): read_usage(d), 1),
        "Responses API Response": (lambda: read_usage(response), 1),
        "Anthropic Message": (lambda: read_usage(message), 1),
        "Anthropic Message.model_dump() dict": (lambda d=message.model_dump(): read_usage(d), 1),
        "LangChain AIMessage": (lambda: read_usage(lc), 1),
        "not a response (a str)": (lambda: read_usage("Paris"), 1),
        f"OpenAI stream, {len(chunks)} chunks (per chunk)": (feed_all(chunks), len(chunks)),
        f"Anthropic stream, {len(events)} events (per event)": (feed_all(events), len(events)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--reads", type=int, default=20000)
    args = parser.parse_args()

    with LLMTestServer(cached_tokens=1000, reasoning_tokens=20) as server:
        variants = call_variants(server)
        for fn in variants.values():  # warm up: connections, children, price lookups
            for _ in range(20):
                fn()
        rounds, per_round = args.repeats * 10, max(args.calls // 10, 1)
        wall: dict = {key: [] for key in variants}
        cpu: dict = {key: [] for key in variants}
        for _ in range(rounds):
            for key, fn in variants.items():
                w, c = time_calls_both(fn, per_round)
                wall[key].append(w)
                cpu[key].append(c)
        wall_median = {key: statistics.median(values) for key, values in wall.items()}
        cpu_median = {key: statistics.median(values) for key, values in cpu.items()}

        print(f"Per-call cost against the local server (loopback HTTP), median of {rounds} "
              f"rounds x {per_round} calls, variants interleaved")
        print(f"| {'call':26} | {'variant':44} | {'wall us':>8} | {'+wall us':>8} | "
              f"{'CPU us':>8} | {'+CPU us':>8} |")
        print(f"|{'-' * 28}|{'-' * 46}|{'-' * 10}|{'-' * 10}|{'-' * 10}|{'-' * 10}|")
        for (sdk, name) in variants:
            w, c = wall_median[(sdk, name)], cpu_median[(sdk, name)]
            w0, c0 = wall_median[(sdk, "bare SDK call")], cpu_median[(sdk, "bare SDK call")]
            print(f"| {sdk:26} | {name:44} | {w * 1e6:8.0f} | {(w - w0) * 1e6:8.0f} | "
                  f"{c * 1e6:8.0f} | {(c - c0) * 1e6:8.0f} |")

        readers = shapes(server)
        print(f"\nReading usage per response shape, median of {args.repeats} runs x {args.reads:,} reads")
        print(f"| {'shape':58} | {'us/read':>8} |")
        print(f"|{'-' * 60}|{'-' * 10}|")
        for name, (fn, per) in readers.items():
            reads = max(args.reads // per, 100)
            values = [time_calls(fn, reads) / per for _ in range(args.repeats)]
            print(f"| {name:58} | {statistics.median(values) * 1e6:8.3f} |")


if __name__ == "__main__":
    main()
