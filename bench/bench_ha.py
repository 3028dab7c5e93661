"""Benchmark: 1, 4 and 16 replicas of the demo service feeding the high-availability stack
(`m2_3_stack.py up --ha --fast`: two Prometheus replicas, two Alertmanager peers,
VictoriaMetrics receiving remote write from both).

    .venv/bin/python bench/bench_ha.py [--replicas 1 4 16] [--seconds 60] [--qps 2]

For each replica count, after --seconds of 1 s scrapes: the series each engine holds, the
resident memory of each Prometheus replica and of VictoriaMetrics, and the median time of the
heaviest dashboard panel (p95 query latency per job and operation over the run) computed from
the raw histogram and read from its recording rule, on both engines. The same process runs every
configuration, one after another, so the rows compare with each other.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragmon.stack.process import free_port, wait_until  # noqa: E402
from ragmon.stack.runner import Stack  # noqa: E402
from tests.conftest import make_settings  # noqa: E402
from tests.stack_demo import Demo  # noqa: E402

RAW = ("histogram_quantile(0.95, sum by (job, operation, le) "
       "(rate(rag_query_duration_seconds_bucket[20s])))")  # 20s: the fast-mode "5m"
RECORDED = "job_operation:rag_query_duration_seconds:p95_rate5m"
ENGINES = ("prometheus", "victoria_metrics")


def median_ms(api, expr: str, start: float, end: float, repeats: int = 7) -> float:
    timings = []
    for _ in range(repeats):
        began = time.perf_counter()
        api.query_range(expr, start, end, 1)
        timings.append(time.perf_counter() - began)
    return 1000 * statistics.median(timings)


def rss_mib(stack: Stack, name: str) -> float:
    process = stack._pid_file(name).process()
    return process.memory_info().rss / 2**20 if process else float("nan")


def run(replicas: int, seconds: float, qps: float, workdir: Path) -> dict:
    demos = [Demo(free_port(), workdir, qps=qps, instance=f"replica-{n}") for n in range(replicas)]
    stack = Stack(workdir / "stack", app_targets={"rag-service": [d.target for d in demos]},
                  fast=True, ha=True, settings=make_settings(),
                  ports={"prometheus": 0, "alertmanager": 0, "pushgateway": 0, "node_exporter": 0})
    try:
        stack.up()
        for demo in demos:
            demo.start()
        started = time.time()
        prometheus, victoria = stack.api("prometheus"), stack.api("victoria_metrics")
        wait_until(lambda: len(prometheus.query('up{job="rag-service"} == 1')) == replicas, 120,
                   what=f"all {replicas} replicas to be scraped")
        time.sleep(max(0.0, started + seconds - time.time()))
        end = time.time() - 2  # VictoriaMetrics answers up to its 1 s latency offset
        row = {"replicas": replicas,
               "series prometheus": prometheus.value("count({__name__!=\"\"})"),
               "series victoria": victoria.value("count({__name__!=\"\"})"),
               "MiB prometheus a": rss_mib(stack, "prometheus"),
               "MiB prometheus b": rss_mib(stack, "prometheus_2"),
               "MiB victoria": rss_mib(stack, "victoria_metrics")}
        for engine in ENGINES:
            api = stack.api(engine)
            row[f"{engine} raw ms"] = median_ms(api, RAW, started, end)
            row[f"{engine} recorded ms"] = median_ms(api, RECORDED, started, end)
        return row
    finally:
        for demo in demos:
            demo.stop()
        stack.down()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, nargs="+", default=[1, 4, 16])
    parser.add_argument("--seconds", type=float, default=60.0, help="run time per configuration")
    parser.add_argument("--qps", type=float, default=2.0, help="queries per second per replica")
    args = parser.parse_args()
    if any(n < 1 for n in args.replicas) or args.seconds < 20:
        parser.error("--replicas must be >= 1 and --seconds >= 20 (one fast-mode rate window)")
    rows = []
    for replicas in args.replicas:
        with tempfile.TemporaryDirectory(prefix=f"bench-ha-{replicas}-") as tmp:
            rows.append(run(replicas, args.seconds, args.qps, Path(tmp)))
            print(f"  {replicas} replica(s) done", file=sys.stderr, flush=True)
    columns = list(rows[0])
    widths = [max(len(c), 8) for c in columns]
    print(f"HA stack, {args.seconds:g} s of 1 s scrapes per configuration, {args.qps:g} q/s per "
          f"replica; query = p95 panel over the run, step 1 s, median of 7")
    print(" | ".join(c.rjust(w) for c, w in zip(columns, widths)))
    print("-+-".join("-" * w for w in widths))
    for row in rows:
        print(" | ".join((f"{row[c]:.0f}" if isinstance(row[c], (int, float)) and c.startswith(("series", "MiB", "replicas"))
                          else f"{row[c]:.2f}").rjust(w) for c, w in zip(columns, widths)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
