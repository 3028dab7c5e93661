"""Benchmark: the live alert matrix on the fast local stack (tests/alert_matrix.py).

    .venv/bin/python bench/bench_alerts.py [--healthy-seconds 240] [--fault errors ...] [--runs 1]

The demo runs healthy for --healthy-seconds, then with each --fault in turn (default: all six)
until its alert reached the webhook, then recovers. For every alert that fired it prints the
seconds from the fault to Prometheus firing, to Alertmanager and to the webhook, and from the
recovery to the resolution at the webhook; then what broke the promise (healthy quiet, each fault
its own alert within 60 s, the quality fault the other quality alerts within 90 s, and only the
alerts it implies, resolved within 120 s), if anything.
Several --runs run one after another in this process, so their tables compare.
"""
from __future__ import annotations

import argparse
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.alert_matrix import EXPECTED, HEALTHY_SECONDS, problems, run_matrix, table  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--healthy-seconds", type=float, default=HEALTHY_SECONDS)
    parser.add_argument("--fault", action="append", choices=sorted(EXPECTED),
                        help="a fault to run (repeat; default: all six)")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--qps", type=float, default=5.0)
    args = parser.parse_args()
    # SIGTERM unwinds like Ctrl-C, so the stack and the demos stop by PID on the way out
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    faults = tuple(args.fault or EXPECTED)
    failed = 0
    for run in range(1, args.runs + 1):
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="bench-alerts-") as workdir:
            phases = run_matrix(Path(workdir), healthy_seconds=args.healthy_seconds, faults=faults,
                                qps=args.qps, log=lambda text: print(f"  {text}", flush=True))
        print(f"\nrun {run}: {time.monotonic() - began:.0f} s, demo at {args.qps:g} q/s\n")
        print(table(phases))
        found = problems(phases)
        print("\n" + ("\n".join(f"PROBLEM: {p}" for p in found) if found else "no problems"),
              flush=True)
        failed += bool(found)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
