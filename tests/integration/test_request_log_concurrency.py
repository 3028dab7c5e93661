"""Several processes append to one request log at once: no line may be torn, lost or mixed.

Each record is one os.write of one line to a file opened with O_APPEND (ragmon.instrument.records), which
Linux keeps whole on a local filesystem even past PIPE_BUF (4 KiB). Records here range from a
few hundred bytes to over 20 KiB so that large writes are covered.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

WORKERS = 4
PER_WORKER = 2000
SIZES = (10, 300, 1500, 4000, 4097, 6000, 12000, 20000)  # bytes of stage metadata


def blob(worker: int, n: int) -> str:
    size = SIZES[n % len(SIZES)]
    unit = f"<{worker}:{n}>"
    return (unit * (size // len(unit) + 1))[:size]


def append_records(log_dir: str, worker: int, start) -> None:
    """Runs in a child process: writes PER_WORKER requests through PerformanceMonitor."""
    from prometheus_client import CollectorRegistry

    from ragmon.settings import load_settings
    from ragmon.instrument.catalog import RAGMetrics
    from ragmon.instrument.performance import PerformanceMonitor

    settings = load_settings({"MODEL_PRICES_FILE": "", "REQUEST_LOG_DESTINATION": "none"},
                             dotenv_path=os.devnull)
    metrics = RAGMetrics(registry=CollectorRegistry(), settings=settings)
    start.wait()  # all writers begin together, so their appends interleave
    with PerformanceMonitor(log_dir=log_dir, metrics=metrics, settings=settings) as monitor:
        for n in range(PER_WORKER):
            rid = monitor.start_request(f"w{worker}-{n}")
            monitor.log_stage(rid, "retrieval", 0.001, {"blob": blob(worker, n), "n": n})
            monitor.end_request(rid, attributes={"worker": worker})


def test_concurrent_appends_from_several_processes_stay_whole(tmp_path, settings):
    ctx = mp.get_context("spawn")  # a clean interpreter per writer, as separate services are
    start = ctx.Event()
    procs = [ctx.Process(target=append_records, args=(str(tmp_path), w, start))
             for w in range(WORKERS)]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(timeout=300)
    assert [proc.exitcode for proc in procs] == [0] * WORKERS

    seen = set()
    long_lines = 0
    for path in sorted(Path(tmp_path).glob("*_performance.jsonl")):
        raw = path.read_bytes()
        assert raw.endswith(b"\n"), f"{path.name} ends in a torn line"
        for line in raw.split(b"\n")[:-1]:
            record = json.loads(line)  # a torn or interleaved line would not parse
            worker, n = record["attributes"]["worker"], record["stages"]["retrieval"]["metadata"]["n"]
            assert record["request_id"] == f"w{worker}-{n}"
            assert record["stages"]["retrieval"]["metadata"]["blob"] == blob(worker, n)
            assert record["request_id"] not in seen, "a record was written twice"
            seen.add(record["request_id"])
            long_lines += len(line) > 4096
    assert len(seen) == WORKERS * PER_WORKER  # none lost
    assert long_lines >= WORKERS * PER_WORKER * 4 // len(SIZES)  # writes past PIPE_BUF included

    from m2_3_report import load_records
    df = load_records(tmp_path, settings=settings)
    assert len(df) == WORKERS * PER_WORKER
    assert df.attrs["read_stats"]["skipped_lines"] == 0
