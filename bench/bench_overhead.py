"""Per-query overhead of @monitored_query around a no-op, against hand-written baselines.

Every variant does the same work per query: in-flight up/down, one timed stage, latency, status,
input and output tokens, cost (histogram and spend counter) and relevance. Baselines, in the same
process and interleaved with ours so machine noise hits all alike:
  (a) prometheus_client by hand, calling .labels() each time
  (b) prometheus_client by hand, label children cached
  (c) the OpenTelemetry SDK (in-memory reader; no export cost)
Overhead = time per call minus the bare no-op call. Targets: ours without the record <= 1.2x (b);
ours with one JSON record per query (daily JSONL file) <= 2.5x (b).

    python bench/bench_overhead.py [--calls 50000] [--repeats 7]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ragmon.instrument.catalog import (COST_BUCKETS, QUERY_LATENCY_BUCKETS, SCORE_BUCKETS,
                                       STAGE_LATENCY_BUCKETS, RAGMetrics)
from ragmon import monitored_query, stage
from ragmon.instrument.pricing import ModelPrice, PriceTable
from ragmon.instrument.records import DailyFileSink
from ragmon.settings import load_settings

RESULT = {"answer": "ok", "input_tokens": 500, "output_tokens": 150, "relevance_score": 0.85}
MODEL, OP = "gpt-4o-mini", "rag_search"
PRICE_IN, PRICE_OUT = 0.00015, 0.0006
perf = time.perf_counter


def noop(question):
    return RESULT


def hand_metrics():
    r = CollectorRegistry()
    return dict(
        latency=Histogram("q_seconds", "", ["operation"], registry=r, buckets=QUERY_LATENCY_BUCKETS),
        stage=Histogram("s_seconds", "", ["operation", "stage"], registry=r, buckets=STAGE_LATENCY_BUCKETS),
        queries=Counter("q_total", "", ["operation", "status"], registry=r),
        errors=Counter("e_total", "", ["operation", "error_type"], registry=r),
        tokens=Counter("t_total", "", ["model", "token_type"], registry=r),
        cost=Histogram("c_dollars", "", ["model"], registry=r, buckets=COST_BUCKETS),
        spend=Counter("sp_dollars_total", "", ["model"], registry=r),
        relevance=Histogram("r_score", "", ["operation"], registry=r, buckets=SCORE_BUCKETS),
        in_flight=Gauge("f", "", ["operation"], registry=r),
    )


def make_labels_each_time():
    m = hand_metrics()

    def query(question):
        m["in_flight"].labels(OP).inc()
        start = perf()
        try:
            with m["stage"].labels(OP, "retrieval").time():
                pass
            result = noop(question)
        except Exception as exc:
            m["queries"].labels(OP, "error").inc()
            m["errors"].labels(OP, type(exc).__name__).inc()
            raise
        finally:
            m["in_flight"].labels(OP).dec()
        m["latency"].labels(OP).observe(perf() - start)
        m["queries"].labels(OP, "success").inc()
        inp, out = result["input_tokens"], result["output_tokens"]
        m["tokens"].labels(MODEL, "input").inc(inp)
        m["tokens"].labels(MODEL, "output").inc(out)
        cost = (inp * PRICE_IN + out * PRICE_OUT) / 1000
        m["cost"].labels(MODEL).observe(cost)
        m["spend"].labels(MODEL).inc(cost)
        m["relevance"].labels(OP).observe(result["relevance_score"])
        return result
    return query


def make_cached_children():
    m = hand_metrics()
    in_flight, stage_child = m["in_flight"].labels(OP), m["stage"].labels(OP, "retrieval")
    latency, ok = m["latency"].labels(OP), m["queries"].labels(OP, "success")
    failed = m["queries"].labels(OP, "error")
    tok_in, tok_out = m["tokens"].labels(MODEL, "input"), m["tokens"].labels(MODEL, "output")
    cost_h, spend, relevance = m["cost"].labels(MODEL), m["spend"].labels(MODEL), m["relevance"].labels(OP)

    def query(question):
        in_flight.inc()
        start = perf()
        try:
            with stage_child.time():
                pass
            result = noop(question)
        except Exception as exc:
            failed.inc()
            m["errors"].labels(OP, type(exc).__name__).inc()
            raise
        finally:
            in_flight.dec()
        latency.observe(perf() - start)
        ok.inc()
        inp, out = result["input_tokens"], result["output_tokens"]
        tok_in.inc(inp)
        tok_out.inc(out)
        cost = (inp * PRICE_IN + out * PRICE_OUT) / 1000
        cost_h.observe(cost)
        spend.inc(cost)
        relevance.observe(result["relevance_score"])
        return result
    return query


def make_opentelemetry():
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    provider = MeterProvider(metric_readers=[InMemoryMetricReader()])
    meter = provider.get_meter("bench")
    latency = meter.create_histogram("q_seconds", unit="s")
    stage_h = meter.create_histogram("s_seconds", unit="s")
    queries = meter.create_counter("q_total")
    errors = meter.create_counter("e_total")
    tokens = meter.create_counter("t_total")
    cost_h = meter.create_histogram("c_dollars")
    spend = meter.create_counter("sp_dollars_total")
    relevance = meter.create_histogram("r_score")
    in_flight = meter.create_up_down_counter("f")
    op = {"operation": OP}
    op_stage = {"operation": OP, "stage": "retrieval"}
    ok = {"operation": OP, "status": "success"}
    tin, tout = {"model": MODEL, "token_type": "input"}, {"model": MODEL, "token_type": "output"}
    model = {"model": MODEL}

    def query(question):
        in_flight.add(1, op)
        start = perf()
        try:
            stage_start = perf()
            stage_h.record(perf() - stage_start, op_stage)
            result = noop(question)
        except Exception as exc:
            queries.add(1, {"operation": OP, "status": "error"})
            errors.add(1, {"operation": OP, "error_type": type(exc).__name__})
            raise
        finally:
            in_flight.add(-1, op)
        latency.record(perf() - start, op)
        queries.add(1, ok)
        inp, out = result["input_tokens"], result["output_tokens"]
        tokens.add(inp, tin)
        tokens.add(out, tout)
        cost = (inp * PRICE_IN + out * PRICE_OUT) / 1000
        cost_h.record(cost, model)
        spend.add(cost, model)
        relevance.record(result["relevance_score"], op)
        return result
    return query, provider


def make_ours(request_log):
    settings = load_settings({"MODEL_PRICES_FILE": "", "COST_PER_1K_INPUT_TOKENS": str(PRICE_IN),
                              "COST_PER_1K_OUTPUT_TOKENS": str(PRICE_OUT)})
    # A model of the price table, as in production: no unknown-model counting or warning.
    prices = PriceTable(ModelPrice(PRICE_IN, PRICE_OUT, PRICE_IN),
                        {MODEL: ModelPrice(PRICE_IN, PRICE_OUT, PRICE_IN / 2)})
    m = RAGMetrics(registry=CollectorRegistry(), settings=settings, price_table=prices)

    @monitored_query(operation=OP, model=MODEL, metrics=m, request_log=request_log)
    def query(question):
        with stage("retrieval"):
            pass
        return RESULT
    return query


def time_per_call(fn, calls: int) -> float:
    start = perf()
    for _ in range(calls):
        fn("q")
    return (perf() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as log_dir:
        sink = DailyFileSink(log_dir)
        otel, provider = make_opentelemetry()
        variants = {
            "no-op (bare call)": noop,
            "(a) prometheus_client, .labels() each call": make_labels_each_time(),
            "(b) prometheus_client, cached children": make_cached_children(),
            "(c) OpenTelemetry SDK": otel,
            "@monitored_query, no record": make_ours(False),
            "@monitored_query + JSON record (file)": make_ours(sink),
        }
        for fn in variants.values():  # warm up: first-call resolution, file open
            time_per_call(fn, 2000)
        # The sink trusts a log directory unchanged for two seconds to still hold its files (one
        # fstat of the directory per record instead of the file's); a directory in service is
        # older than that, this one was just made.
        time.sleep(2.1)
        samples: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                samples[name].append(time_per_call(fn, args.calls))
        sink.close()
        record_bytes = sum(p.stat().st_size for p in Path(log_dir).iterdir())
        provider.shutdown()

    median = {name: statistics.median(values) for name, values in samples.items()}
    base = median["no-op (bare call)"]
    overhead = {name: max(value - base, 0.0) for name, value in median.items()}
    ref = overhead["(b) prometheus_client, cached children"]
    print(f"Per-query overhead, median of {args.repeats} runs x {args.calls:,} calls "
          f"(Python {sys.version.split()[0]}, {sys.platform})\n")
    print(f"| {'variant':44} | {'us/call':>8} | {'overhead us':>11} | {'vs (b)':>6} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 13}|{'-' * 8}|")
    for name in variants:
        print(f"| {name:44} | {median[name] * 1e6:8.2f} | {overhead[name] * 1e6:11.2f} | "
              f"{overhead[name] / ref:5.2f}x |")
    ours, with_record = overhead["@monitored_query, no record"], overhead["@monitored_query + JSON record (file)"]
    print(f"\nTargets: no record <= 1.20x (b): {ours / ref:.2f}x {'met' if ours / ref <= 1.2 else 'MISSED'}; "
          f"with record <= 2.50x (b): {with_record / ref:.2f}x {'met' if with_record / ref <= 2.5 else 'MISSED'}")
    written = args.calls * args.repeats + 2000
    print(f"Records written: {written:,}, {record_bytes / written:.0f} bytes each on average")
    bench_opentelemetry(max(args.calls // 5, 1000), args.repeats)


# --- OpenTelemetry output on (OTEL_ENABLED) ------------------------------------------------------

def bench_opentelemetry(calls: int, repeats: int) -> None:
    """The added cost per query of OTel output (GenAI metrics, rag.* metrics, a query span and
    its stage span), exporting over OTLP/HTTP to a receiver in another process, against the
    same query with it off, interleaved in this process."""
    import subprocess

    from ragmon.instrument import otel
    from ragmon.instrument.runtime import STATE

    receiver = subprocess.Popen([sys.executable, "-m", "ragmon.testing.otlp_receiver"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        url = receiver.stdout.readline().strip()
        telemetry = otel.Telemetry("bench", "development", url)
        query = make_ours(False)
        states = {"@monitored_query, no record, OTel off": None,
                  "@monitored_query, no record, OTel on": telemetry}
        samples: dict[str, list[float]] = {name: [] for name in states}
        bare: list[float] = []
        for name, state in states.items():  # warm up
            STATE.otel = state
            time_per_call(query, 2000)
        for _ in range(repeats):
            bare.append(time_per_call(noop, calls))
            for name, state in states.items():
                STATE.otel = state
                samples[name].append(time_per_call(query, calls))
        STATE.otel = None
        telemetry.flush()
        telemetry.shutdown()
    finally:
        STATE.otel = None
        receiver.stdin.close()
        receiver.wait(timeout=30)
    base = statistics.median(bare)
    median = {name: statistics.median(values) for name, values in samples.items()}
    off = median["@monitored_query, no record, OTel off"] - base
    print(f"\nOpenTelemetry output, median of {repeats} runs x {calls:,} calls (export to an "
          "OTLP/HTTP receiver in another process)\n")
    print(f"| {'variant':44} | {'us/call':>8} | {'overhead us':>11} | {'added us':>8} |")
    print(f"|{'-' * 46}|{'-' * 10}|{'-' * 13}|{'-' * 10}|")
    for name, value in median.items():
        print(f"| {name:44} | {value * 1e6:8.2f} | {(value - base) * 1e6:11.2f} | "
              f"{(value - base - off) * 1e6:8.2f} |")


if __name__ == "__main__":
    main()
