"""Compaction: whole past days move from JSONL to Parquet, partitioned by day.

    LOG_DIR/20261128_performance.jsonl  ->  LOG_DIR/history/day=2026-11-28/records.parquet

Parquet is what the engines a growing team already has read directly (DuckDB, pandas/pyarrow,
Spark, Trino, BigQuery external tables), about ten times smaller than the JSONL, and typed.
Free-form parts keep their shape: ``stages`` (with metadata) as JSON text, ``stage_durations``
as a map of {duration}, ``attributes`` as a map of JSON values, and top-level keys the format
does not know (a writer's own fields) in ``extra`` as a JSON object. The record's
``attribution`` ({key: value}) is also a map column of its own, which ``report --by KEY``
groups by without parsing JSON (``extra`` keeps it too, so exports give the record as written).

Atomic, so a crash at any moment loses and duplicates nothing:

1. the day is written into ``history/.compacting-day=.../`` (a name no reader looks at), with
   ``source.json`` naming the JSONL file and its size, and fsynced;
2. the directory is renamed to ``history/day=...`` (one atomic rename);
3. the JSONL file is deleted.

A crash before 2 leaves a scratch directory that the next run removes; a crash between 2 and 3
leaves both, and readers then skip the JSONL file whose size ``source.json`` records (it is
already in the history); the next run deletes it. Lines the engine could not read are kept
beside the Parquet file in ``rejected.jsonl``, as they were. The day's rollup
(ragmon.report.rollups) is written in the scratch directory too, so it appears with the records. A day is compacted only once it
has been over for GRACE_SECONDS, so no writer is still appending to it.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from .reader import TOKEN_KEYS, load_rows
from .rollups import write_rollup
from .sources import (HISTORY_DIR, PARQUET_NAME, SOURCE_NAME, LogFile, Sources, file_date,
                      jsonl_files, leftover_jsonl, partition_name, resolve_dirs)

GRACE_SECONDS = 3600
SCRATCH_PREFIX = ".compacting-"
REJECTED_NAME = "rejected.jsonl"


@dataclass
class CompactResult:
    log_dir: str
    compacted: list[str] = field(default_factory=list)  # JSONL file names moved to history
    records: int = 0
    rejected_lines: int = 0
    finished: list[str] = field(default_factory=list)  # leftovers of an interrupted run removed
    skipped: list[str] = field(default_factory=list)  # "name: why"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def compact_logs(log_dir, *, now: float | None = None, progress: bool = False,
                 settings=None) -> list[CompactResult]:
    """Moves every whole past day of each log directory into its Parquet history, with the
    day's rollup (ragmon.report.rollups; its counts use the thresholds of `settings`, default
    the configured ones)."""
    if settings is None:
        from ..settings import get_settings
        settings = get_settings()
    results = []
    for directory in resolve_dirs(log_dir):
        results.append(_compact_dir(directory, time.time() if now is None else now, progress,
                                    settings))
    return results


def _compact_dir(directory: Path, now: float, progress: bool, settings) -> CompactResult:
    result = CompactResult(str(directory))
    history = directory / HISTORY_DIR
    history.mkdir(exist_ok=True)
    with open(history / ".compact.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one compaction per directory at a time
        for scratch in history.glob(SCRATCH_PREFIX + "*"):
            shutil.rmtree(scratch, ignore_errors=True)  # a run that died before its rename
        days = [f for f in jsonl_files(directory) if f.start + 86400 + GRACE_SECONDS <= now]
        if progress and days:
            from tqdm import tqdm
            days = tqdm(days, desc="compact", unit="day", leave=False)
        for entry in days:
            target = history / partition_name(entry.day)
            if target.exists():
                if leftover_jsonl(entry.path):
                    entry.path.unlink()
                    result.finished.append(entry.path.name)
                else:
                    result.skipped.append(f"{entry.path.name}: {target} exists and holds other "
                                          "records; move one of them aside")
                continue
            records, rejected = _compact_day(entry.path, history, target, settings)
            result.compacted.append(entry.path.name)
            result.records += records
            result.rejected_lines += rejected
    return result


def _compact_day(jsonl: Path, history: Path, target: Path, settings) -> tuple[int, int]:
    size = jsonl.stat().st_size
    scratch = history / f"{SCRATCH_PREFIX}{target.name}-{os.getpid()}"
    scratch.mkdir()
    out = scratch / PARQUET_NAME
    # The report's own reading (validity rules, recovery, line numbers); lines it skips are
    # kept as they were in rejected.jsonl.
    sources = Sources([jsonl.parent], [LogFile(jsonl, file_date(jsonl), "jsonl", jsonl.parent)])
    with open(scratch / REJECTED_NAME, "wb") as keep:
        con, inside, stats = load_rows(sources, full=True, keep_rejected=keep, skip_future=False,
                                       spill_dir=scratch / ".spill")
        keep.flush()
        os.fsync(keep.fileno())
    written = 0
    tokens = ", ".join(f"'{key}': {key}_tokens" for key in TOKEN_KEYS)
    if con is not None:
        written = con.execute(f"""
            COPY (SELECT timestamp_text AS timestamp, start_time, total_time, request_id, status,
                         error_type, operation, model, service, env, cost, relevance_score,
                         context_precision, time_to_first_token,
                         {{{tokens}}} AS tokens,
                         {{'hits': cache_hits, 'misses': cache_misses}} AS cache,
                         stages_json::JSON AS stages, stage_map AS stage_durations,
                         coalesce(attributes, MAP {{}}::MAP(VARCHAR, JSON)) AS attributes,
                         cost_original, price_match, pricing, repriced_at,
                         extra_json::JSON AS extra, attribution
                  FROM all_rows WHERE {inside} ORDER BY end_time)
            TO '{str(out).replace("'", "''")}' (FORMAT parquet, COMPRESSION zstd)""").fetchone()[0]
        con.close()
    shutil.rmtree(scratch / ".spill", ignore_errors=True)
    write_rollup(scratch, settings)  # renamed with the day: records and rollup appear together
    rejected = stats.skipped_total
    if not (scratch / REJECTED_NAME).stat().st_size:
        (scratch / REJECTED_NAME).unlink()
    (scratch / SOURCE_NAME).write_text(json.dumps(
        {"file": jsonl.name, "size": size, "records": written, "rejected_lines": rejected}))
    for path in scratch.iterdir():
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(scratch)
    os.rename(scratch, target)
    _fsync_dir(history)
    jsonl.unlink()
    _fsync_dir(jsonl.parent)
    return int(written), rejected
