"""Import cost of the public API, against importing prometheus_client alone, in fresh processes.

    python bench/bench_import.py [--runs 15]

Each run is a new interpreter that times its own import (time.perf_counter around `import X`), so
interpreter start-up is left out. Target: `import ragmon` under 150 ms with no pandas, numpy,
matplotlib, yaml, genai_prices or pydantic loaded.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

PROBE = """
import sys, time
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & {{"pandas", "numpy", "matplotlib", "yaml",
                                                    "genai_prices", "pydantic", "opentelemetry"}})
print(elapsed, ",".join(heavy) or "-")
"""


def measure(module: str, runs: int, env: dict | None = None) -> tuple[float, str]:
    times, heavy = [], "-"
    for _ in range(runs):
        out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], capture_output=True,
                             text=True, check=True,
                             env={**os.environ, **env} if env else None).stdout.split()
        times.append(float(out[0]) * 1000)
        heavy = out[1]
    return statistics.median(times), heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    args = parser.parse_args()
    rows = [(module, *measure(module, args.runs))
            for module in ("prometheus_client", "ragmon", "m2_3_monitoring")]
    # OpenTelemetry output on: the setting is read at the first query, never at import.
    rows.append(("ragmon, OTEL_ENABLED", *measure("ragmon", args.runs, {"OTEL_ENABLED": "true"})))
    print(f"\nImport time, median of {args.runs} fresh interpreters\n")
    print("| module               | ms (median) | heavy modules loaded |")
    print("|----------------------|-------------|----------------------|")
    for module, ms, heavy in rows:
        print(f"| {module:20} | {ms:11.1f} | {heavy:20} |")
    ragmon_ms = rows[1][1]
    print(f"\nTarget: import ragmon < 150 ms: {ragmon_ms:.1f} ms "
          f"{'met' if ragmon_ms < 150 and rows[1][2] == '-' else 'MISSED'}")


if __name__ == "__main__":
    main()
