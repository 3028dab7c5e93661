"""Benchmark: write N realistic request records, then analyze them with `m2_3_report.py report`.

    .venv/bin/python bench/bench_report.py [--records 1000000] [--keep DIR] [--old-ref COMMIT]
                                           [--history 10000000] [--compact] [--no-day]

Records are written through the real path (ragmon.instrument.records.make_record + DailyFileSink, one
os.write per line) with 3 stages with metadata, 3 models, errors, cache, quality scores and
attributes. Every analysis runs as a subprocess - the CLI exactly as an operator runs it - so
its peak memory is measured alone and includes interpreter and imports. In the same run:

* a bare DuckDB scan of the same JSONL files (the floor for the engine; target: the report
  within 1.5x of it, peak under 1 GB), and with --old-ref COMMIT the report of an older commit
  on the same files (in both tables);
* the report over --history records (default 10M) written straight to the Parquet history
  layout, with the rollups `compact` writes beside each day, plus the JSONL day (target: under
  10 s, under 2 GB, within 1.5x the bare scan of the JSONL day), and once with --exact (every
  record read);
* with --compact, `compact` of one past day of --records records.

Each table gives wall and CPU seconds, the peak RSS of the process tree, the mean 1-minute load
average while the run lasted, and the ratio to the bare scan run in the same process: on a
shared machine the CPU ratio is the steadier one.
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


def measure(command: list[str]) -> dict:
    """Runs `command` as a child process and measures it: wall time, CPU time, the largest
    single-process peak RSS (ru_maxrss, exact) and the peak of the summed RSS of the child and
    its own children (sampled every 20 ms with psutil: the whole tree at its worst moment)."""
    import psutil

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    # Files, not pipes: a child writing more than a pipe holds would block until the end.
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, cwd=ROOT)
    tree_peak = 0
    loads = [os.getloadavg()[0]]
    parent = psutil.Process(proc.pid)
    while proc.poll() is None:
        loads.append(os.getloadavg()[0])
        try:
            rss = parent.memory_info().rss + sum(
                child.memory_info().rss for child in parent.children(recursive=True))
        except psutil.Error:  # a worker exited between listing and reading it
            rss = 0
        tree_peak = max(tree_peak, rss)
        time.sleep(0.02)
    proc.wait()
    seconds = time.perf_counter() - start
    stdout.seek(0), stderr.seek(0)
    out, errors = stdout.read(), stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{command} failed ({proc.returncode}):\n{errors.decode()}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"seconds": seconds,
            "cpu": (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime),
            "maxrss_mib": after.ru_maxrss / 1024,  # KiB on Linux; the largest process
            "tree_peak_mib": tree_peak / 2**20, "load": sum(loads) / len(loads),
            "output": out.decode()}


def report_command(log_dir: Path, hours: float, tree: Path = ROOT, exact: bool = False) -> list[str]:
    return [sys.executable, str(tree / "m2_3_report.py"), "report", "--hours", str(hours),
            "--format", "text", "--log-dir", str(log_dir)] + (["--exact"] if exact else [])


def bare_scan_command(log_dir: Path) -> list[str]:
    """DuckDB alone reading the same JSONL files into Arrow, schema auto-detected: the floor
    for any engine built on it."""
    code = ("import duckdb, glob, sys; files = sorted(glob.glob(sys.argv[1] + '/*_performance.jsonl')); "
            "con = duckdb.connect(); con.execute('SET enable_progress_bar = false'); "
            "t = con.execute('SELECT * FROM read_json(?, format=\\'newline_delimited\\')', "
            "[files]).to_arrow_table(); print(t.num_rows)")
    return [sys.executable, "-c", code, str(log_dir)]


def old_reader_tree(ref: str) -> Path:
    """The package as of `ref` (a commit that still has the hand-built reader), unpacked into a
    temporary directory, so the old reader runs in the same benchmark as the new engine."""
    target = Path(tempfile.mkdtemp(prefix="bench_old_reader_"))
    archive = subprocess.run(["git", "archive", ref], cwd=ROOT, check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def write_parquet_history(log_dir: Path, records: int, days: int, end_day: float) -> None:
    """`records` records over the `days` UTC days before `end_day`, written straight to the
    history layout that `compact` writes (one records.parquet per day partition)."""
    import duckdb

    per_day = records // days
    con = duckdb.connect()
    for d in range(days):
        day_start = end_day - (days - d) * 86400
        folder = log_dir / "history" / time.strftime("day=%Y-%m-%d", time.gmtime(day_start))
        folder.mkdir(parents=True, exist_ok=True)
        con.execute(f"""
            COPY (
              WITH r AS (
                SELECT i, {day_start} + i * (86400.0 / {per_day}) AS finish, hash(i, {d}) AS h,
                       ['gpt-4o-mini', 'claude-3-5-haiku', 'gpt-4o'][1 + (hash(i, {d}) % 3)::INT] AS model,
                       0.05 + (hash(i, 1) % 1000) / 4000.0 AS retrieval,
                       0.03 + (hash(i, 2) % 1000) / 8000.0 AS reranking,
                       0.3 + (hash(i, 3) % 1000) / 700.0 AS generation
                FROM range({per_day}) t(i))
              SELECT strftime(to_timestamp(finish), '%Y-%m-%dT%H:%M:%S.%f+00:00') AS timestamp,
                     finish - (retrieval + reranking + generation) AS start_time,
                     retrieval + reranking + generation AS total_time,
                     printf('%08x-%016x', i, h) AS request_id,
                     CASE WHEN h % 50 = 0 THEN 'error' ELSE 'success' END AS status,
                     CASE WHEN h % 50 = 0 THEN 'TimeoutError' END AS error_type,
                     'rag_search' AS operation, model, 'rag-service' AS service,
                     'production' AS env, (h % 1000) / 100000.0 AS cost,
                     (h % 997) / 997.0 AS relevance_score, (h % 991) / 991.0 AS context_precision,
                     retrieval + reranking + 0.1 AS time_to_first_token,
                     {{'input': (200 + h % 2800)::BIGINT, 'output': (20 + h % 780)::BIGINT,
                       'cached_input': 0::BIGINT}} AS tokens,
                     {{'hits': (h % 2)::BIGINT, 'misses': ((h >> 1) % 2)::BIGINT}} AS cache,
                     json_object('retrieval', json_object('duration', retrieval, 'metadata',
                                   json_object('strategy', 'hybrid')),
                                 'reranking', json_object('duration', reranking, 'metadata', json_object()),
                                 'generation', json_object('duration', generation, 'metadata',
                                   json_object('model', model))) AS stages,
                     MAP {{'retrieval': {{'duration': retrieval}}, 'reranking': {{'duration': reranking}},
                          'generation': {{'duration': generation}}}} AS stage_durations,
                     MAP {{'agent_type': (CASE WHEN h % 10 < 3 THEN '"crewai"' ELSE '"simple"' END)::JSON,
                          'tool_calls': ((h % 6)::VARCHAR)::JSON}} AS attributes,
                     NULL::DOUBLE AS cost_original, NULL::VARCHAR AS price_match,
                     NULL::JSON AS pricing, NULL::VARCHAR AS repriced_at
              FROM r ORDER BY finish)
            TO '{folder / "records.parquet"}' (FORMAT parquet, COMPRESSION zstd)""")
    con.close()


def write_history_rollups(log_dir: Path) -> None:
    """The rollup of every history partition, as `compact` writes it beside the records."""
    from ragmon.report.rollups import write_rollup
    from ragmon.settings import get_settings

    settings = get_settings()
    for partition in sorted((log_dir / "history").glob("day=*")):
        write_rollup(partition, settings)


def table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [f"{'measure'.ljust(width)} | value", f"{'-' * width}-+-{'-' * 34}"]
    lines += [f"{key.ljust(width)} | {value}" for key, value in rows]
    return "\n".join(lines)


def median_run(results: list[dict]) -> dict:
    """The median of each measure over repeated runs (the report text of the first)."""
    import statistics
    return {key: statistics.median(r[key] for r in results) if key != "output" else results[0][key]
            for key in results[0]}


def results_table(rows: list[tuple[str, dict]], bare: dict) -> str:
    """One line per run: wall and CPU seconds, peak RSS of the process tree, the mean 1-minute
    load average while it ran, and its wall and CPU time over the bare scan's in the same run
    (CPU time is the steadier figure when other work shares the cores)."""
    head = ("run", "wall s", "CPU s", "peak MiB", "load", "x bare wall", "x bare CPU")
    lines = [[label, f"{r['seconds']:.2f}", f"{r['cpu']:.2f}", f"{r['tree_peak_mib']:,.0f}",
              f"{r['load']:.1f}", f"{r['seconds'] / bare['seconds']:.2f}",
              f"{r['cpu'] / bare['cpu']:.2f}"] for label, r in rows]
    widths = [max(len(str(c)) for c in column) for column in zip(head, *lines)]
    fmt = lambda cells: " | ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), "-+-".join("-" * w for w in widths)] + [fmt(c) for c in lines])


def history_report_row(log_dir: Path) -> tuple[str, list[str]]:
    return "report --hours 288 (rollups + JSONL)", report_command(log_dir, 24 * 12)


# The history benchmark's rows besides the bare scan, each measured as often as the scan and
# interleaved with it: a function of the log directory giving (label, command). A new report
# option adds its own function here.
HISTORY_ROWS = [history_report_row]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--keep", metavar="DIR", help="write into DIR and keep it (default: a temp dir)")
    parser.add_argument("--old-ref", metavar="COMMIT",
                        help="also run the report of this commit on the same files, side by side "
                        "(both tables)")
    parser.add_argument("--history", type=int, default=10_000_000,
                        help="records in the Parquet history benchmark (0: skip it)")
    parser.add_argument("--compact", action="store_true", help="also time compacting one day of "
                        "--records records")
    parser.add_argument("--repeat", type=int, default=3,
                        help="runs of each 1M measurement, interleaved (default 3; medians)")
    parser.add_argument("--show-report", action="store_true", help="print the text report too")
    parser.add_argument("--no-day", action="store_true",
                        help="skip the report of the JSONL day alone (the first table)")
    args = parser.parse_args(argv)
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_report_"))
    log_dir = base / "jsonl"
    log_dir.mkdir(parents=True, exist_ok=True)
    cleanup = [] if args.keep else [base]
    try:
        if not any(log_dir.glob("*_performance.jsonl")):
            write_s, sink_s = write(log_dir, args.records, time.time())
        else:  # --keep DIR with records already there: analysis only
            write_s = sink_s = float("nan")
        size = sum(p.stat().st_size for p in log_dir.glob("*_performance.jsonl"))
        rows = [("records", f"{args.records:,}"),
                ("log files", str(len(list(log_dir.glob("*_performance.jsonl"))))),
                ("file size", f"{size / 2**20:,.0f} MiB"),
                ("generate + write time", f"{write_s:.1f} s"),
                ("  of which DailyFileSink.write (encode + os.write)",
                 f"{sink_s:.1f} s ({args.records / sink_s:,.0f} records/s)")]
        old_tree = None
        if args.old_ref:
            old_tree = old_reader_tree(args.old_ref)
            cleanup.append(old_tree)
        if args.no_day:
            print(table(rows))
        else:
            # Interleaved and repeated, medians reported: the machine may be shared.
            commands = {"bare": bare_scan_command(log_dir), "new": report_command(log_dir, 24)}
            if old_tree:
                commands["old"] = report_command(log_dir, 24, old_tree)
            runs: dict = {name: [] for name in commands}
            for _ in range(args.repeat):
                for name, command in commands.items():
                    runs[name].append(measure(command))
            bare, new = median_run(runs["bare"]), median_run(runs["new"])
            rows.append(("runs of each (interleaved; medians below)", str(args.repeat)))
            rows.append(("cpus", str(os.cpu_count())))
            print(table(rows))
            runs_24 = [("bare DuckDB scan (read_json -> Arrow)", bare),
                       ("report --hours 24 (every record)", new)]
            if args.old_ref:
                runs_24.append((f"report --hours 24, reader of {args.old_ref}", median_run(runs["old"])))
            print()
            print(results_table(runs_24, bare))
            print("targets: the report <= 1.5x the bare scan, peak < 1024 MiB")
            out = new["output"]
            print("\n" + ("\n".join(out.splitlines()[:12]) if not args.show_report else out))

        if args.history:
            start = time.perf_counter()
            today = time.time() // 86400 * 86400
            kept = args.keep and list((log_dir / "history").glob("day=*/records.parquet"))
            if not kept:  # --keep DIR with a history already there: reused as it is
                write_parquet_history(log_dir, args.history, 10, today - 86400)
            gen = time.perf_counter() - start
            start = time.perf_counter()
            partitions = list((log_dir / "history").glob("day=*"))
            if kept and all((d / "rollup" / "rollup.json").exists() for d in partitions):
                rollup_s = float("nan")  # reused (a report checks each one's fingerprint)
            else:
                write_history_rollups(log_dir)
                rollup_s = time.perf_counter() - start
            size = sum(p.stat().st_size for p in (log_dir / "history").rglob("records.parquet"))
            rollup_size = sum(p.stat().st_size for p in (log_dir / "history").rglob("rollup/*"))
            rows_of = [row(log_dir) for row in HISTORY_ROWS]
            if old_tree:
                rows_of.append((f"report --hours 288 of {args.old_ref}",
                                report_command(log_dir, 24 * 12, old_tree)))
            bare_runs: list = []
            hist_runs: dict = {label: [] for label, _ in rows_of}
            for _ in range(args.repeat):  # interleaved, medians: the machine may be shared
                bare_runs.append(measure(bare_scan_command(log_dir)))
                for label, command in rows_of:
                    hist_runs[label].append(measure(command))
            bare = median_run(bare_runs)
            measured = [(label, median_run(hist_runs[label])) for label, _ in rows_of]
            hist = measured[0][1]
            exact = measure(report_command(log_dir, 24 * 12, exact=True))  # once: it is long
            print()
            print(table([("Parquet history", f"{args.history:,} records, 10 day partitions, "
                                             f"{size / 2**20:,.0f} MiB "
                                             + ("(reused)" if kept else f"(generated in {gen:.1f} s)")),
                         ("rollups (compact writes them)", f"{rollup_size / 2**20:,.1f} MiB, "
                                                           f"built in {rollup_s:.1f} s"),
                         ("plus JSONL", f"{args.records:,} records"),
                         ("runs of each (interleaved; medians)", str(args.repeat))]))
            print()
            print(results_table([("bare DuckDB scan of the JSONL day", bare), *measured,
                                 ("report --hours 288 --exact (every record), once", exact)],
                                bare))
            print("targets: the report over rollups + JSONL < 10 s wall, < 2048 MiB, "
                  "<= 1.5x the bare scan")
            print("\n".join(hist["output"].splitlines()[3:8]))
            if not args.keep:
                shutil.rmtree(log_dir / "history", ignore_errors=True)

        if args.compact:
            day_dir = base / "compact"
            day_dir.mkdir(exist_ok=True)
            end = time.time() // 86400 * 86400 - 2 * 86400 - 1800  # within one past UTC day
            write(day_dir, args.records, end)
            size = sum(p.stat().st_size for p in day_dir.glob("*_performance.jsonl"))
            result = measure([sys.executable, str(ROOT / "m2_3_report.py"), "compact",
                              "--log-dir", str(day_dir)])
            parquet = sum(p.stat().st_size for p in (day_dir / "history").rglob("*.parquet"))
            print()
            print(table([("compact: one day", f"{args.records:,} records, {size / 2**20:,.0f} MiB "
                                              f"JSONL -> {parquet / 2**20:,.0f} MiB Parquet"),
                         ("compact", f"{result['seconds']:.2f} s wall, {result['cpu']:.1f} s CPU, "
                                     f"peak {result['tree_peak_mib']:,.0f} MiB, "
                                     f"load {result['load']:.1f}")]))
            shutil.rmtree(day_dir, ignore_errors=True)
    finally:
        for path in cleanup:
            shutil.rmtree(path, ignore_errors=True)


if __name__ == "__main__":
    main()
