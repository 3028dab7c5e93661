"""A monitored stream that only the garbage collector finds abandoned (a server dropped it inside a
reference cycle, as Starlette does when a client hangs up) is finalized by a collection, which
starts at an allocation in whichever thread makes it: possibly inside a lock the application's
cleanup needs too (httpx's connection pool lock, around its bookkeeping). The application's
``finally`` and the recording then run in ragmon's finisher thread, never inside the collection.

Each scenario runs in a child interpreter with a deadline: on failure it would deadlock for good.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCENARIO = textwrap.dedent('''
    import gc, json, threading, time
    from prometheus_client import CollectorRegistry
    from ragmon import monitored_query
    from ragmon.instrument.catalog import RAGMetrics
    from ragmon.settings import load_settings
    import os

    settings = load_settings({"REQUEST_LOG_DESTINATION": "none", "LOG_DESTINATION": "none"},
                             dotenv_path=os.devnull)
    registry = CollectorRegistry()
    metrics = RAGMetrics(registry=registry, settings=settings)

    class Sink:
        def __init__(self):
            self.records, self.lock = [], threading.Lock()
        def write(self, record, at=None):
            with self.lock:
                self.records.append(record)

    sink = Sink()
    pool = threading.Lock()  # as an HTTP client's connection pool
    cleanups = []

    @monitored_query(operation="answer", metrics=metrics, request_log=sink)
    def answer():
        try:
            for word in ("Prometheus", "scrapes", "workers"):
                yield word
        finally:
            with pool:  # gives the connection back
                cleanups.append(threading.current_thread().name)

    def abandon(locked):
        stream = answer()
        next(stream)
        cycle = [stream]
        cycle.append(cycle)  # only a collection finds it now
        del stream, cycle
        gc.disable()
        with locked:  # a collection that starts inside the lock, as an allocation there would
            gc.collect()
        gc.enable()

    abandon(pool)           # the application's lock
    abandon(sink.lock)      # the record sink's lock
    deadline = time.monotonic() + 30
    while len(sink.records) < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    print(json.dumps({
        "cleanups": cleanups,
        "statuses": [r["status"] for r in sink.records],
        "in_flight": registry.get_sample_value("rag_queries_in_flight", {"operation": "answer"}),
        "cancelled": registry.get_sample_value("rag_queries_total",
                                               {"operation": "answer", "status": "cancelled"}),
    }))
''')


def test_a_stream_finalized_by_a_collection_inside_a_lock_its_cleanup_needs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        result = subprocess.run([sys.executable, "-c", SCENARIO], env=env, cwd=tmp_path,
                                capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:  # run() has killed it
        raise AssertionError("the collection deadlocked: the stream's cleanup or its recording "
                             "ran inside the lock the collection interrupted") from None
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    assert out["cleanups"] == ["ragmon-finisher", "ragmon-finisher"]
    assert out["statuses"] == ["cancelled", "cancelled"]
    assert out["in_flight"] == 0 and out["cancelled"] == 2
    assert "Exception ignored" not in result.stderr
