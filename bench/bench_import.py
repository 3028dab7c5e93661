"""Import cost of the public API, against importing prometheus_client alone, in fresh processes.

    python bench/bench_import.py [--runs 15]

Each run is a new interpreter that times its own import (time.perf_counter around `import X`, and
the CPU time it took, time.process_time, which other processes on a shared machine do not
inflate), so interpreter start-up is left out. The modules are imported in turn, run after run,
so load hits them alike. Target: `import ragmon` under 150 ms with no pandas, numpy, matplotlib,
yaml, genai_prices or pydantic loaded.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

PROBE = """
import sys, time
start, cpu = time.perf_counter(), time.process_time()
import {module}
elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{"pandas", "numpy", "matplotlib", "yaml",
                                                    "genai_prices", "pydantic", "opentelemetry"}})
print(elapsed, cpu, ",".join(heavy) or "-")
"""


# The rows: a label, the module imported, environment variables set for it. OTEL_ENABLED is read
# at the first query, never at import: its row must match plain `ragmon`.
ROWS = {"prometheus_client": ("prometheus_client", None), "ragmon": ("ragmon", None),
        "m2_3_monitoring": ("m2_3_monitoring", None),
        "ragmon, OTEL_ENABLED": ("ragmon", {"OTEL_ENABLED": "true"})}


def probe(module: str, env: dict | None = None) -> tuple[float, float, str]:
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True,
                         text=True, check=True,
                         env={**os.environ, **env} if env else None).stdout.split()
    return float(out[0]) * 1000, float(out[1]) * 1000, out[2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    modules = tuple(ROWS)
    wall: dict[str, list[float]] = {m: [] for m in modules}
    cpu: dict[str, list[float]] = {m: [] for m in modules}
    heavy: dict[str, str] = {}
    for _ in range(args.runs):
        for module in modules:
            w, c, h = probe(*ROWS[module])
            wall[module].append(w)
            cpu[module].append(c)
            heavy[module] = h
    print(f"\nImport time, median (range) of {args.runs} fresh interpreters\n")
    print("| module               | wall ms (median) | CPU ms (median) | CPU ms range  | heavy modules loaded |")
    print("|----------------------|------------------|-----------------|---------------|----------------------|")
    for module in modules:
        print(f"| {module:20} | {statistics.median(wall[module]):16.1f} | "
              f"{statistics.median(cpu[module]):15.1f} | "
              f"{min(cpu[module]):5.1f}-{max(cpu[module]):6.1f} | {heavy[module]:20} |")
    ragmon_wall, ragmon_cpu = statistics.median(wall["ragmon"]), statistics.median(cpu["ragmon"])
    met = min(ragmon_wall, ragmon_cpu) < 150 and heavy["ragmon"] == "-"
    print(f"\nTarget: import ragmon < 150 ms: {ragmon_wall:.1f} ms wall, {ragmon_cpu:.1f} ms CPU "
          f"{'met' if met else 'MISSED'} (CPU time counts on a loaded machine; wall on a quiet one)")


if __name__ == "__main__":
    main()
