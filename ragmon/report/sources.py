"""Where the request log lives: directories (one per replica or host), their daily JSONL files
and their Parquet history.

One log directory holds::

    YYYYMMDD_performance.jsonl                   # written by the service, one file per UTC day
    history/day=YYYY-MM-DD/records.parquet       # whole past days, moved there by `compact`

``--log-dir`` takes several directories or glob patterns (quoted, so the shell leaves them
alone), so one report covers every replica and host whose directory is copied, mounted or synced
to one place. Only the log's own files are read: regular files with a log file's name, directly
in the directory (or in a day partition of its history). A symlink is followed only when it
resolves to a regular file inside the same log directory; one pointing elsewhere is skipped and
counted, so a link named like a log file cannot make the report read (or cleanup delete)
anything outside the log.
"""
from __future__ import annotations

import glob
import json
import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable

from ..instrument.records import LOG_FILE_GLOB, LOG_FILE_SUFFIX, QUALITY_FILE_SUFFIX

HISTORY_DIR = "history"
PARTITION_PREFIX = "day="
PARQUET_NAME = "records.parquet"
# Beside a partition: the JSONL file it was made of and that file's size (see compact).
SOURCE_NAME = "source.json"
# Request records, and the evaluations and feedback written beside them (same days, same rules).
_FILE_RE = re.compile(r"^(\d{8})(?:" + re.escape(LOG_FILE_SUFFIX) + "|"
                      + re.escape(QUALITY_FILE_SUFFIX) + ")$")
_PARTITION_RE = re.compile(r"^day=(\d{4}-\d{2}-\d{2})$")
_GLOB_CHARS = re.compile(r"[*?[]")


class LogDirNotFound(FileNotFoundError):
    """The log directory does not exist; the message says where we looked and how to point
    elsewhere."""

    def __init__(self, log_dir: Path | str):
        self.log_dir = log_dir
        looked = Path(log_dir).resolve() if not _GLOB_CHARS.search(str(log_dir)) else "no match"
        super().__init__(
            f"log directory {str(log_dir)!r} does not exist (looked at {looked}); "
            "pass --log-dir DIR (or log_dir=...) or set LOG_DIR to where the service writes "
            "its *_performance.jsonl files")


def file_date(path: Path) -> datetime | None:
    """The UTC date in a JSONL log file's name (requests or quality records), or None if it is
    not a valid log file name."""
    match = _FILE_RE.match(path.name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=timezone.utc)
    except ValueError:  # 20261399_performance.jsonl matches the glob but is no date
        return None


def partition_date(path: Path) -> datetime | None:
    """The UTC date of a history partition directory (``day=YYYY-MM-DD``), or None."""
    match = _PARTITION_RE.match(path.name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        return None


def partition_name(day: datetime) -> str:
    return f"{PARTITION_PREFIX}{day:%Y-%m-%d}"


def as_dir_list(log_dir) -> list:
    """`log_dir` as a list of entries: one path or pattern, or an iterable of them."""
    if isinstance(log_dir, (str, os.PathLike)):
        return [log_dir]
    entries = list(log_dir)
    if not entries:
        raise ValueError("log_dir=[] names no directory; pass at least one log directory")
    return entries


def resolve_dirs(log_dir) -> list[Path]:
    """The log directories named by `log_dir` (a path, a glob pattern, or a list of them), in
    the order given, each once. A path that is not a directory, or a pattern that matches no
    directory, raises LogDirNotFound naming it."""
    found: list[Path] = []
    for entry in as_dir_list(log_dir):
        text = os.path.expanduser(str(entry))
        if _GLOB_CHARS.search(text):
            matches = [Path(m) for m in sorted(glob.glob(text)) if Path(m).is_dir()]
            if not matches:
                raise LogDirNotFound(text)
        else:
            matches = [Path(text)]
            if not matches[0].is_dir():
                raise LogDirNotFound(Path(text))
        for path in matches:
            if path not in found:
                found.append(path)
    return found


def describe_dirs(dirs: Iterable[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


def own_regular_file(path: Path, log_dir: Path) -> bool:
    """True for a regular file that belongs to `log_dir`: not a symlink, or a symlink resolving
    to a regular file inside `log_dir` itself."""
    try:
        info = path.lstat()
    except OSError:
        return False
    if stat.S_ISREG(info.st_mode):
        return True
    if not stat.S_ISLNK(info.st_mode):
        return False
    try:
        target = path.resolve(strict=True)
        inside = target.is_relative_to(log_dir.resolve(strict=True))
        return inside and stat.S_ISREG(target.stat().st_mode)
    except (OSError, RuntimeError):  # dangling link or a loop
        return False


@dataclass
class LogFile:
    path: Path
    day: datetime
    kind: str  # "jsonl" or "parquet"
    log_dir: Path

    @property
    def start(self) -> float:
        return self.day.timestamp()

    def name(self) -> str:
        """A short name for messages: the file's name, with its directory when several are read."""
        return str(self.path)


@dataclass
class Sources:
    """The files a read will use, and what was passed over."""

    dirs: list[Path]
    files: list[LogFile] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # symlinks out of the log, non-regular files

    @property
    def jsonl(self) -> list[LogFile]:
        return [f for f in self.files if f.kind == "jsonl"]

    @property
    def parquet(self) -> list[LogFile]:
        return [f for f in self.files if f.kind == "parquet"]


def _in_window(day: datetime, since: float | None, until: float | None) -> bool:
    # A file holds records whose end falls on its UTC day: [start, start + 1 day).
    start = day.timestamp()
    if since is not None and start + 86400 <= since:
        return False
    return until is None or start < until


def jsonl_files(log_dir: Path, ignored: list[str] | None = None) -> list[LogFile]:
    """The JSONL log files directly in `log_dir` (not its subdirectories), oldest first."""
    found = []
    for path in log_dir.glob(LOG_FILE_GLOB):
        day = file_date(path)
        if day is None:
            continue
        if not own_regular_file(path, log_dir):
            if ignored is not None:
                ignored.append(str(path))
            continue
        found.append(LogFile(path, day, "jsonl", log_dir))
    return sorted(found, key=lambda f: f.day)


def parquet_files(log_dir: Path, ignored: list[str] | None = None) -> list[LogFile]:
    """The history's day partitions of `log_dir`, oldest first (one file per day)."""
    history = log_dir / HISTORY_DIR
    if history.is_symlink() or not history.is_dir():
        return []
    found = []
    for part in history.iterdir():
        day = partition_date(part)
        if day is None or part.is_symlink() or not part.is_dir():
            continue
        path = part / PARQUET_NAME
        if not path.exists() and not path.is_symlink():
            continue
        if not own_regular_file(path, part):
            if ignored is not None:
                ignored.append(str(path))
            continue
        found.append(LogFile(path, day, "parquet", log_dir))
    return sorted(found, key=lambda f: f.day)


def leftover_jsonl(jsonl: Path) -> bool:
    """True when `jsonl` was already moved into the history by a compaction interrupted before
    it deleted the file (the partition's source.json records this very file and size)."""
    day = file_date(jsonl)
    if day is None:
        return False
    marker = jsonl.parent / HISTORY_DIR / partition_name(day) / SOURCE_NAME
    try:
        source = json.loads(marker.read_text())
        return source.get("file") == jsonl.name and source.get("size") == jsonl.stat().st_size
    except (OSError, ValueError):
        return False


def find_sources(log_dir, since: float | None = None, until: float | None = None) -> Sources:
    """The JSONL and Parquet files of every directory in `log_dir` that can hold records ending
    in [since, until). Raises LogDirNotFound for a missing directory."""
    sources = Sources(resolve_dirs(log_dir))
    for directory in sources.dirs:
        for entry in jsonl_files(directory, sources.ignored) + parquet_files(directory, sources.ignored):
            if entry.kind == "jsonl" and leftover_jsonl(entry.path):
                continue  # already in the history: a compaction stopped before deleting it
            if _in_window(entry.day, since, until):
                sources.files.append(entry)
    sources.files.sort(key=lambda f: (f.day, f.kind, str(f.path)))
    return sources
