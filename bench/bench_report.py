"""Benchmark: write N realistic request records, then analyze them with `m2_3_report.py report`.

    .venv/bin/python bench/bench_report.py [--records 1000000] [--keep DIR]

Records are written through the real path (ragmon.instrument.records.make_record + DailyFileSink, one
os.write per line) with 3 stages with metadata, 3 models, errors, cache, quality scores and
seed-004 attributes. The analysis runs as a subprocess - the CLI exactly as an operator runs it -
so its peak memory is measured alone (ru_maxrss of the child) and includes interpreter and
imports. Targets (issue 4): analysis < 10 s and < 2 GB peak on a 2-core machine.
"""
from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragmon.instrument.records import DailyFileSink, make_record  # noqa: E402

MODELS = (("gpt-4o-mini", 0.00015, 0.0006, 0.55), ("claude-3-5-haiku", 0.0008, 0.004, 0.35),
          ("gpt-4o", 0.0025, 0.01, 0.10))
ERRORS = ("TimeoutError", "RateLimitError", "ContextLengthError")
ENTITIES = ("customers", "bills", "payments", "plans", "devices", "tickets")


def synthetic_records(n: int, end: float, seed: int = 7):
    """(record, end_time) pairs spread evenly over the 23 hours before `end`."""
    rng = random.Random(seed)
    span = 23 * 3600.0
    names = [m[0] for m in MODELS]
    weights = [m[3] for m in MODELS]
    prices = {m[0]: (m[1], m[2]) for m in MODELS}
    for i in range(n):
        model = rng.choices(names, weights)[0]
        retrieval = rng.lognormvariate(-1.8, 0.5)
        reranking = rng.lognormvariate(-2.5, 0.4)
        generation = rng.lognormvariate(-0.3, 0.6)
        total = retrieval + reranking + generation + rng.random() * 0.01
        finish = end - span + span * i / n
        failed = rng.random() < 0.02
        tokens_in, tokens_out = rng.randint(200, 3000), rng.randint(20, 800)
        in_price, out_price = prices[model]
        agent = "crewai" if rng.random() < 0.3 else "simple"
        record = make_record(
            request_id=f"{i:08x}-{rng.getrandbits(64):016x}", service="rag-service",
            env="production", operation="rag_search", model=model,
            status="error" if failed else "success",
            error_type=rng.choice(ERRORS) if failed else None,
            start_time=finish - total, total_time=total,
            stages={
                "retrieval": {"duration": retrieval, "metadata": {
                    "documents_retrieved": rng.randint(10, 100), "strategy": "hybrid", "top_k": 10}},
                "reranking": {"duration": reranking, "metadata": {
                    "documents_kept": rng.randint(3, 10), "reranker": "bge-reranker"}},
                "generation": {"duration": generation, "metadata": {
                    "model": model, "streamed": rng.random() < 0.5}},
            },
            input_tokens=tokens_in, output_tokens=tokens_out,
            cost=(tokens_in * in_price + tokens_out * out_price) / 1000,
            relevance_score=round(rng.random(), 3), context_precision=round(rng.random(), 3),
            time_to_first_token=round(retrieval + reranking + 0.1, 4),
            cache_hits=int(rng.random() < 0.5), cache_misses=int(rng.random() < 0.5),
            attributes={"agent_type": agent, "complexity_score": round(rng.random(), 3),
                        "entities": rng.sample(ENTITIES, rng.randint(0, 3)),
                        "tool_calls": rng.randint(0, 5), "graphql_queries": rng.randint(0, 3)})
        yield record, finish


def write(log_dir: Path, n: int, end: float) -> tuple[float, float]:
    """(seconds generating and writing, seconds inside DailyFileSink.write alone)."""
    sink = DailyFileSink(log_dir)
    clock = time.perf_counter
    in_sink = 0.0
    start = clock()
    for record, finish in synthetic_records(n, end):
        t = clock()
        sink.write(record, at=finish)
        in_sink += clock() - t
    sink.close()
    return clock() - start, in_sink


def analyze(log_dir: Path, fmt: str) -> dict:
    """Runs `m2_3_report.py report --hours 24` as a child process and measures it: wall time,
    CPU time, the largest single-process peak RSS (ru_maxrss, exact) and the peak of the summed
    RSS of the child and its parse workers (sampled every 20 ms with psutil: the whole tree's
    memory at its worst moment, which ru_maxrss cannot tell)."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "m2_3_report.py"), "report", "--hours", "24",
                             "--format", fmt, "--log-dir", str(log_dir)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT)
    tree_peak = 0
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = parent.memory_info().rss + sum(
                child.memory_info().rss for child in parent.children(recursive=True))
        except psutil.Error:  # a worker exited between listing and reading it
            rss = 0
        tree_peak = max(tree_peak, rss)
        time.sleep(0.02)
    out, errors = proc.communicate()
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"report failed ({proc.returncode}):\n{errors.decode()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": seconds,
            "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "maxrss_mib": after.ru_maxrss / 1024,  # KiB on Linux; the largest process
            "tree_peak_mib": tree_peak / 2**20, "output": out.decode()}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", metavar="DIR", help="write into DIR and keep it (default: a temp dir)")
    parser.add_argument("--show-report", action="store_true", help="print the text report too")
    args = parser.parse_args(argv)
    log_dir = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_report_"))
    try:
        if not any(log_dir.glob("*_performance.jsonl")):
            write_s, sink_s = write(log_dir, args.records, time.time())
        else:  # --keep DIR with records already there: analysis only
            write_s = sink_s = float("nan")
        size = sum(p.stat().st_size for p in log_dir.glob("*_performance.jsonl"))
        result = analyze(log_dir, "text")
        rows = [("records", f"{args.records:,}"),
                ("log files", str(len(list(log_dir.glob("*_performance.jsonl"))))),
                ("file size", f"{size / 2**20:,.0f} MiB"),
                ("generate + write time", f"{write_s:.1f} s"),
                ("  of which DailyFileSink.write (encode + os.write)",
                 f"{sink_s:.1f} s ({args.records / sink_s:,.0f} records/s)"),
                ("analysis wall time (report --hours 24)", f"{result['seconds']:.2f} s (target < 10 s)"),
                ("analysis CPU time (all processes)", f"{result['cpu']:.2f} s"),
                ("analysis peak RSS, largest process", f"{result['maxrss_mib']:,.0f} MiB"),
                ("analysis peak RSS, whole tree (sampled)",
                 f"{result['tree_peak_mib']:,.0f} MiB (target < 2048 MiB)"),
                ("cpus", str(os.cpu_count()))]
        out = result["output"]
        width = max(len(k) for k, _ in rows)
        print(f"{'measure'.ljust(width)} | value")
        print(f"{'-' * width}-+-{'-' * 30}")
        for key, value in rows:
            print(f"{key.ljust(width)} | {value}")
        if args.show_report:
            print(out)
        else:
            print("\n" + "\n".join(out.splitlines()[:12]))
    finally:
        if not args.keep:
            shutil.rmtree(log_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
