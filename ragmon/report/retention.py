"""Retention: deleting request-log files older than N days.

The Parquet history's day partitions (``history/day=YYYY-MM-DD/``, see ``compact``) follow the
same rule, and a partition is removed only when it holds nothing but the files compaction writes.

Only regular files directly in the log directory whose names match LOG_FILE_GLOB or
QUALITY_FILE_GLOB and parse as a date (``YYYYMMDD_performance.jsonl``, and the evaluations and
feedback of ``YYYYMMDD_quality.jsonl``) are ever considered; anything else - other files, a
misnamed file, a symlink, a subdirectory - is left alone, so pointing LOG_DIR at a shared
directory by mistake cannot delete other data.

A file holds the records that ended on its UTC day, so it is deleted only when the whole day is
older than the cut-off: no record younger than N days is ever deleted (a record up to one day
older than N days may survive until the next run).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .sources import (HISTORY_DIR, LogDirNotFound, file_date, own_regular_file, parquet_files)
from ..checks import check_positive_int
from .rollups import ROLLUP_DIR, own_files
from ..instrument.records import LOG_FILE_GLOB, QUALITY_FILE_GLOB

# The only files a history partition may hold (besides its rollup directory, see
# ragmon.report.rollups); a partition holding anything else is left alone.
_PARTITION_FILES = {"records.parquet", "source.json", "rejected.jsonl"}


@dataclass
class CleanupResult:
    log_dir: str
    days: int
    cutoff: float  # epoch seconds: records that ended before this may be deleted
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "name: error"
    dry_run: bool = False
    freed_bytes: int = 0

    def as_dict(self) -> dict:
        return {"log_dir": self.log_dir, "days": self.days, "cutoff": self.cutoff,
                "deleted": self.deleted, "kept": self.kept, "failed": self.failed,
                "dry_run": self.dry_run, "freed_bytes": self.freed_bytes}


def check_days(days: object) -> int:
    return check_positive_int("days", days, "--days 30 (LOG_RETENTION_DAYS)")


def cleanup_logs(log_dir: str | Path, days: int, *, now: float | None = None,
                 dry_run: bool = False) -> CleanupResult:
    """Deletes log files all of whose records are older than `days` days (see module doc).
    With ``dry_run`` nothing is deleted; the result says what would be."""
    days = check_days(days)
    log_dir = Path(log_dir).expanduser()
    if not log_dir.is_dir():
        raise LogDirNotFound(log_dir)
    now = time.time() if now is None else now
    cutoff = now - days * 86400
    result = CleanupResult(str(log_dir), days, cutoff, dry_run=dry_run)
    for path in sorted([*log_dir.glob(LOG_FILE_GLOB), *log_dir.glob(QUALITY_FILE_GLOB)]):
        day = file_date(path)
        if day is None or path.is_symlink() or not path.is_file():
            continue
        if day.timestamp() + 86400 > cutoff:
            result.kept.append(path.name)
            continue
        size = path.stat().st_size
        if not dry_run:
            try:
                path.unlink()
            except OSError as exc:
                result.failed.append(f"{path.name}: {exc}")
                continue
        result.deleted.append(path.name)
        result.freed_bytes += size
    for entry in parquet_files(log_dir):
        partition = entry.path.parent
        name = f"{HISTORY_DIR}/{partition.name}"
        if entry.start + 86400 > cutoff:
            result.kept.append(name)
            continue
        files = [f for f in partition.iterdir() if f.name != ROLLUP_DIR]
        rollup = own_files(partition / ROLLUP_DIR) if (partition / ROLLUP_DIR).exists() else []
        if rollup is None or not all(f.name in _PARTITION_FILES and own_regular_file(f, partition)
                                     for f in files):
            result.failed.append(f"{name}: holds files that are not the log's own; left alone")
            continue
        size = sum(f.stat().st_size for f in files + rollup)
        if not dry_run:
            try:
                for f in files + rollup:
                    f.unlink()
                if rollup:
                    (partition / ROLLUP_DIR).rmdir()
                partition.rmdir()
            except OSError as exc:
                result.failed.append(f"{name}: {exc}")
                continue
        result.deleted.append(name)
        result.freed_bytes += size
    return result
