"""Per-query overhead of @monitored_query around a no-op, against hand-written baselines.

Every variant does the same work per query: in-flight up/down, one timed stage, latency, status,
input and output tokens, cost (histogram and spend counter) and relevance: nine updates.
Baselines, in the same process and interleaved with ours so machine noise hits all alike:
  (a) prometheus_client by hand, calling .labels() each time
  (b) prometheus_client by hand, label children cached
  (c) the OpenTelemetry SDK (in-memory reader; no export cost)
  (d) an independent composite: each of the nine updates (cached children, public API) timed
      alone in its own loop, with the clock reads and arithmetic they need, then summed
  (e) the floor: (b) written against prometheus_client's values directly, as ragmon's
      writers do (instrument/writers.py): what the nine updates cost without the public API
Overhead = CPU time per call (time.thread_time, so other processes on a shared machine do not
count) minus the bare no-op call; wall-clock figures are printed too. Each ratio is taken per
repetition (the variants of one repetition ran side by side) and summarized as median and
range. Targets: ours without the record <= 1.2x (b) and (d); ours with one JSON record per
query (daily JSONL file) <= 2.5x (b) and (d).

    python bench/bench_overhead.py [--calls 20000] [--repeats 9] [--quality]

The answer-quality rows (``--quality`` alone): the same query also recording three named scores
and its retrieval health, against the query without them, CPU time per repetition. Target: within
1.10x.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ragmon.instrument.writers import adder, observer

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


def make_value_level():
    """(b) written against the values underneath the children: the floor of the nine updates."""
    m = hand_metrics()
    flight = adder(m["in_flight"].labels(OP))
    stage_obs, latency = observer(m["stage"].labels(OP, "retrieval")), observer(m["latency"].labels(OP))
    ok, failed = adder(m["queries"].labels(OP, "success")), m["queries"].labels(OP, "error")
    tok_in, tok_out = adder(m["tokens"].labels(MODEL, "input")), adder(m["tokens"].labels(MODEL, "output"))
    cost_h, spend = observer(m["cost"].labels(MODEL)), adder(m["spend"].labels(MODEL))
    relevance = observer(m["relevance"].labels(OP))

    def query(question):
        flight(1)
        start = perf()
        try:
            stage_start = perf()
            stage_obs(perf() - stage_start)
            result = noop(question)
        except Exception:
            failed.inc()
            raise
        finally:
            flight(-1)
        latency(perf() - start)
        ok(1)
        inp, out = result["input_tokens"], result["output_tokens"]
        tok_in(inp)
        tok_out(out)
        cost = (inp * PRICE_IN + out * PRICE_OUT) / 1000
        cost_h(cost)
        spend(cost)
        relevance(result["relevance_score"])
        return result
    return query


def composite_updates() -> dict:
    """The nine updates of (b), each alone as a function of its own (cached child, public API,
    with the clock reads and the arithmetic it needs), to be timed one by one and summed."""
    m = hand_metrics()
    in_flight, stage_child = m["in_flight"].labels(OP), m["stage"].labels(OP, "retrieval")
    latency, ok = m["latency"].labels(OP), m["queries"].labels(OP, "success")
    tok_in, tok_out = m["tokens"].labels(MODEL, "input"), m["tokens"].labels(MODEL, "output")
    cost_h, spend, relevance = m["cost"].labels(MODEL), m["spend"].labels(MODEL), m["relevance"].labels(OP)
    result = RESULT

    def flight(_):
        in_flight.inc()
        in_flight.dec()

    def stage_update(_):
        with stage_child.time():
            pass

    def latency_update(_):
        start = perf()
        latency.observe(perf() - start)

    def cost_update(_):
        cost_h.observe((result["input_tokens"] * PRICE_IN + result["output_tokens"] * PRICE_OUT) / 1000)

    def spend_update(_):
        spend.inc((result["input_tokens"] * PRICE_IN + result["output_tokens"] * PRICE_OUT) / 1000)

    return {"in-flight up and down": flight, "stage timer": stage_update,
            "latency": latency_update, "status": lambda _: ok.inc(),
            "input tokens": lambda _: tok_in.inc(result["input_tokens"]),
            "output tokens": lambda _: tok_out.inc(result["output_tokens"]),
            "cost": cost_update, "spend": spend_update,
            "relevance": lambda _: relevance.observe(result["relevance_score"])}


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


# Per-query features add their rows here, each in a function of its own decorated with
# @feature_rows: it gets the file sink and returns {row name: query function}; the rows run
# interleaved with the others and are compared with (b) and (d) like ours.
FEATURE_ROWS: list = []


def feature_rows(make):
    FEATURE_ROWS.append(make)
    return make


def make_ours_with_quality(request_log, documents: bool = False):
    """The same query, also recording three named scores and its retrieval health: as figures
    (count, top score, newest document time), or read from five LangChain-shaped documents."""
    from ragmon import record_retrieval, record_scores
    settings = load_settings({"MODEL_PRICES_FILE": "", "COST_PER_1K_INPUT_TOKENS": str(PRICE_IN),
                              "COST_PER_1K_OUTPUT_TOKENS": str(PRICE_OUT)})
    prices = PriceTable(ModelPrice(PRICE_IN, PRICE_OUT, PRICE_IN),
                        {MODEL: ModelPrice(PRICE_IN, PRICE_OUT, PRICE_IN / 2)})
    m = RAGMetrics(registry=CollectorRegistry(), settings=settings, price_table=prices)
    newest = time.time() - 3600

    class Document:  # langchain_core's shape, without importing it
        def __init__(self, score):
            self.page_content, self.metadata = "text", {"score": score, "timestamp": newest}

    docs = [Document(0.9 - n / 10) for n in range(5)]

    @monitored_query(operation=OP, model=MODEL, metrics=m, request_log=request_log)
    def query(question):
        with stage("retrieval"):
            if documents:
                record_retrieval(docs)
            else:
                record_retrieval(count=5, top_score=0.9, newest_document_time=newest)
        record_scores(faithfulness=0.9, answer_relevancy=0.8, context_recall=0.7)
        return RESULT
    return query


def quality_rows(calls: int, repeats: int) -> None:
    """Three scores and retrieval health against the same query without them, in one process,
    interleaved; CPU time per call, each ratio taken within one repetition. Target: within 1.10x
    of the query without them (with its record)."""
    with tempfile.TemporaryDirectory() as log_dir:
        sink = DailyFileSink(log_dir)
        variants = {
            "@monitored_query, no record": make_ours(False),
            "  + 3 scores + retrieval figures": make_ours_with_quality(False),
            "@monitored_query + JSON record (file)": make_ours(sink),
            "  + 3 scores + retrieval figures ": make_ours_with_quality(sink),
            "  + 3 scores + 5 documents read": make_ours_with_quality(sink, documents=True),
        }
        for fn in variants.values():
            time_per_call(fn, 2000)
        time.sleep(2.1)  # see main(): the sink's directory check
        cpu: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(repeats):
            for name, fn in variants.items():
                cpu[name].append(time_per_call(fn, calls)[0])
        sink.close()
    pairs = {"  + 3 scores + retrieval figures": "@monitored_query, no record",
             "  + 3 scores + retrieval figures ": "@monitored_query + JSON record (file)",
             "  + 3 scores + 5 documents read": "@monitored_query + JSON record (file)"}
    print(f"\nAnswer quality: three named scores and retrieval health per query, CPU time, "
          f"median of {repeats} repetitions x {calls:,} calls\n")
    print(f"| {'variant':44} | {'CPU us':>6} | {'vs without':>18} |")
    print(f"|{'-' * 46}|{'-' * 8}|{'-' * 20}|")
    verdict = {}
    for name, times in cpu.items():
        against = pairs.get(name)
        shown = ""
        if against:
            ratios = [v / r for v, r in zip(times, cpu[against]) if r > 0]
            verdict[name] = statistics.median(ratios)
            shown = f"{verdict[name]:5.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        print(f"| {name:44} | {statistics.median(times) * 1e6:6.2f} | {shown:>18} |")
    with_record = verdict["  + 3 scores + retrieval figures "]
    print(f"\nTarget: a query with 3 scores + retrieval health (record written) within 1.10x of "
          f"one without: {with_record:.2f}x {'met' if with_record <= 1.10 else 'MISSED'}")

# Answer quality is not a @feature_rows row: its finish hook, registered on first use, would
# then run for the base rows measured after it. Its rows come after the main table (quality_rows).


def time_per_call(fn, calls: int) -> tuple[float, float]:
    """(CPU seconds, wall seconds) per call."""
    cpu, wall = time.thread_time(), perf()
    for _ in range(calls):
        fn("q")
    return (time.thread_time() - cpu) / calls, (perf() - wall) / calls


COMPOSITE = "(d) composite: the nine updates one by one"
FLOOR = "(e) floor: (b) on prometheus_client's values"
OURS, OURS_RECORD = "@monitored_query, no record", "@monitored_query + JSON record (file)"
B = "(b) prometheus_client, cached children"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--quality", action="store_true",
                        help="only the answer-quality rows (three scores and retrieval health)")
    parser.add_argument("--otel", action="store_true",
                        help="only the OpenTelemetry rows (OTel output off and on)")
    args = parser.parse_args()
    if args.quality:
        quality_rows(args.calls, args.repeats)
        return
    if args.otel:
        bench_opentelemetry(max(args.calls // 5, 1000), args.repeats)
        return

    with tempfile.TemporaryDirectory() as log_dir:
        sink = DailyFileSink(log_dir)
        otel, provider = make_opentelemetry()
        variants = {
            "no-op (bare call)": noop,
            "(a) prometheus_client, .labels() each call": make_labels_each_time(),
            B: make_cached_children(),
            "(c) OpenTelemetry SDK": otel,
            FLOOR: make_value_level(),
            OURS: make_ours(False),
            OURS_RECORD: make_ours(sink),
        }
        for make in FEATURE_ROWS:
            variants.update(make(sink))
        parts = composite_updates()
        for fn in (*variants.values(), *parts.values()):  # warm up: first-call resolution, file open
            time_per_call(fn, 2000)
        # The sink trusts a log directory unchanged for two seconds to still hold its files (one
        # fstat of the directory per record instead of the file's); a directory in service is
        # older than that, this one was just made.
        time.sleep(2.1)
        cpu: dict[str, list[float]] = {name: [] for name in (*variants, COMPOSITE)}
        wall: dict[str, list[float]] = {name: [] for name in (*variants, COMPOSITE)}
        part_cpu: dict[str, list[float]] = {name: [] for name in parts}
        for _ in range(args.repeats):
            for name, fn in variants.items():
                c, w = time_per_call(fn, args.calls)
                cpu[name].append(c)
                wall[name].append(w)
            noop_cpu, noop_wall = cpu["no-op (bare call)"][-1], wall["no-op (bare call)"][-1]
            total_cpu = total_wall = 0.0
            for name, fn in parts.items():
                c, w = time_per_call(fn, args.calls)
                part_cpu[name].append(max(c - noop_cpu, 0.0))
                total_cpu += c - noop_cpu
                total_wall += w - noop_wall
            # stored like a variant's time per call: the bare call plus the sum of the updates
            cpu[COMPOSITE].append(noop_cpu + total_cpu)
            wall[COMPOSITE].append(noop_wall + total_wall)
        sink.close()
        record_bytes = sum(p.stat().st_size for p in Path(log_dir).iterdir())
        provider.shutdown()

    def overheads(times: dict[str, list[float]]) -> dict[str, list[float]]:
        base = times["no-op (bare call)"]
        return {name: [max(v - b, 0.0) for v, b in zip(values, base)] for name, values in times.items()}

    over, over_wall = overheads(cpu), overheads(wall)

    def ratios(name: str, ref: str) -> list[float]:
        return [v / r for v, r in zip(over[name], over[ref]) if r > 0]

    def spread(values: list[float], scale: float = 1e6, fmt: str = ".2f") -> str:
        return f"{min(values) * scale:{fmt}}-{max(values) * scale:{fmt}}"

    print(f"Per-query overhead, CPU time, median (range) of {args.repeats} repetitions x "
          f"{args.calls:,} calls (Python {sys.version.split()[0]}, {sys.platform})\n")
    print(f"| {'variant':44} | {'CPU us':>6} | {'range us':>11} | {'wall us':>7} | "
          f"{'vs (b)':>16} | {'vs (d)':>16} |")
    print(f"|{'-' * 46}|{'-' * 8}|{'-' * 13}|{'-' * 9}|{'-' * 18}|{'-' * 18}|")
    summary = {}
    for name in (*variants, COMPOSITE):
        vs_b, vs_d = ratios(name, B), ratios(name, COMPOSITE)
        summary[name] = (statistics.median(vs_b), statistics.median(vs_d), max(vs_b), max(vs_d))
        print(f"| {name:44} | {statistics.median(over[name]) * 1e6:6.2f} | {spread(over[name]):>11} | "
              f"{statistics.median(over_wall[name]) * 1e6:7.2f} | "
              f"{statistics.median(vs_b):5.2f}x ({spread(vs_b, 1, '.2f')}) | "
              f"{statistics.median(vs_d):5.2f}x ({spread(vs_d, 1, '.2f')}) |")
    print(f"\n(d) by update, CPU us (median): " + ", ".join(
        f"{name} {statistics.median(values) * 1e6:.2f}" for name, values in part_cpu.items()))
    for name, target in ((OURS, 1.2), (OURS_RECORD, 2.5)):
        b, d, b_max, d_max = summary[name]
        verdict = "met" if max(b, d) <= target else "MISSED"
        print(f"Target {name} <= {target:.2f}x (b) and (d): {b:.2f}x (b), {d:.2f}x (d) "
              f"(worst repetition {b_max:.2f}x, {d_max:.2f}x): {verdict}")
    written = (args.calls * args.repeats) + 2000
    print(f"Records written: {written:,}, {record_bytes / written:.0f} bytes each on average")
    quality_rows(args.calls, args.repeats)
    bench_opentelemetry(max(args.calls // 5, 1000), args.repeats)


# --- OpenTelemetry output on (OTEL_ENABLED) ------------------------------------------------------

def bench_opentelemetry(calls: int, repeats: int) -> None:
    """The added cost per query of OTel output (GenAI metrics, rag.* metrics, a query span and
    its stage span), exporting over OTLP/HTTP to a receiver in another process, against the
    same query with it off, interleaved in this process. Wall time leads: the SDK's exporter
    threads (encoding, sending) work beside the query and their CPU time is not the query's
    thread's."""
    import subprocess

    from ragmon.instrument import hooks, otel
    from ragmon.instrument.runtime import STATE

    receiver = subprocess.Popen([sys.executable, "-m", "ragmon.testing.otlp_receiver"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    telemetry = None
    try:
        url = receiver.stdout.readline().strip()
        telemetry = otel.Telemetry("bench", "development", url)
        query = make_ours(False)
        off, on = "@monitored_query, no record, OTel off", "@monitored_query, no record, OTel on"

        def switch(enabled: bool) -> None:
            STATE.otel = telemetry if enabled else None
            (hooks.on_finish if enabled else hooks.remove)(telemetry.finish_hook)

        states = {off: False, on: True}
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in states}
        bare: list[tuple[float, float]] = []
        for name, enabled in states.items():  # warm up
            switch(enabled)
            time_per_call(query, 2000)
        for _ in range(repeats):
            bare.append(time_per_call(noop, calls))
            for name, enabled in states.items():
                switch(enabled)
                samples[name].append(time_per_call(query, calls))
        switch(False)
        telemetry.flush()
    finally:
        if telemetry is not None:
            STATE.otel = None
            telemetry.shutdown()
        receiver.stdin.close()
        receiver.wait(timeout=30)
    base_cpu = statistics.median(c for c, _ in bare)
    base_wall = statistics.median(w for _, w in bare)
    cpu = {name: statistics.median(c for c, _ in values) - base_cpu for name, values in samples.items()}
    wall = {name: statistics.median(w for _, w in values) - base_wall for name, values in samples.items()}
    print(f"\nOpenTelemetry output, median of {repeats} runs x {calls:,} calls (export to an "
          "OTLP/HTTP receiver in another process)\n")
    print(f"| {'variant':44} | {'wall us':>7} | {'added wall us':>13} | {'CPU us':>6} | "
          f"{'added CPU us':>12} |")
    print(f"|{'-' * 46}|{'-' * 9}|{'-' * 15}|{'-' * 8}|{'-' * 14}|")
    for name in samples:
        print(f"| {name:44} | {wall[name] * 1e6:7.2f} | {(wall[name] - wall[off]) * 1e6:13.2f} | "
              f"{cpu[name] * 1e6:6.2f} | {(cpu[name] - cpu[off]) * 1e6:12.2f} |")


if __name__ == "__main__":
    main()
