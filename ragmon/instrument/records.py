"""One JSON record per request, appended to daily JSONL files (or a stream).

The record format is shared by ``@monitored_query`` and ``PerformanceMonitor`` so that both land
in one log that ``m2_3_report.py`` reads::

    {"timestamp": "2026-11-21T10:00:01.234567+00:00",   # end of the request, UTC
     "start_time": 1795255201.0, "total_time": 1.234,    # epoch seconds, seconds
     "request_id": "...", "service": "rag-service", "env": "development",
     "operation": "rag_search", "model": "gpt-4o-mini",
     "status": "success" | "error" | "cancelled", "error_type": null | "TimeoutError",
     "stages": {"retrieval": {"duration": 0.2, "metadata": {...}}, ...},
     "tokens": {"input": 500, "output": 150, "cached_input": 0}, "cost": 0.000165,
     "relevance_score": 0.85, "context_precision": null, "time_to_first_token": null,
     "cache": {"hits": 1, "misses": 0}, "attributes": {...}}

Files are named ``YYYYMMDD_performance.jsonl`` by the UTC date of the record's end. Each record
is one ``os.write`` of one line to a file opened with O_APPEND, so several threads or processes
can share a file without interleaving lines.

A record whose token counts or cost pass the sane bounds (``checks.MAX_TOKENS``,
``checks.MAX_COST_DOLLARS``) carries them raw under ``"out_of_bounds"`` (e.g.
``{"input_tokens": 10**30}``) while ``tokens`` holds 0 and ``cost`` null for them, so reports
that add records up stay right. Strings in ``attributes`` and stage ``metadata`` are redacted
(API keys, passwords, tokens, card numbers) and made valid Unicode before they are written.
"""
from __future__ import annotations

import asyncio
import errno
import json
import math
import os
import sys
import threading
import time
import weakref
from datetime import datetime, timezone
from pathlib import Path
from typing import Protocol, TextIO

from ..checks import safe_text, text_of
from .redaction import scrub
from .tokens import record_tokens_field

STATUSES = ("success", "error", "cancelled")
# Ending a request this way is the caller's choice (a cancelled task, an abandoned stream,
# Ctrl-C), not a failure of the service.
CANCELLED_EXCEPTIONS = (asyncio.CancelledError, GeneratorExit, KeyboardInterrupt)


def status_of(exc: BaseException) -> str:
    """The record status of a request that ended with `exc`."""
    return "cancelled" if isinstance(exc, CANCELLED_EXCEPTIONS) else "error"


LOG_FILE_SUFFIX = "_performance.jsonl"
LOG_FILE_GLOB = "[0-9]" * 8 + LOG_FILE_SUFFIX
# Late evaluations and user feedback (ragmon.instrument.quality) go to a file of their own per
# day beside the requests', so no reader of request records ever meets them.
QUALITY_FILE_SUFFIX = "_quality.jsonl"
QUALITY_FILE_GLOB = "[0-9]" * 8 + QUALITY_FILE_SUFFIX
_SEPARATORS = (",", ":")


_second_cache: tuple[int, str] = (-1, "")  # (second, its "YYYY-MM-DDTHH:MM:SS." prefix)
# "000" .. "999": the microseconds as two table lookups, about twice as fast as f"{n:06d}".
_THREE_DIGITS = tuple(f"{n:03d}" for n in range(1000))


def iso_utc(epoch: float) -> str:
    """ISO-8601 UTC with microseconds, as datetime.isoformat() writes it. The formatted second is
    cached because records arrive many per second and formatting is most of the cost."""
    global _second_cache
    second = int(epoch // 1)
    micros = round((epoch - second) * 1e6)  # datetime's own rounding, carry included
    if micros >= 1_000_000:
        second, micros = second + 1, micros - 1_000_000
    cached = _second_cache
    if second != cached[0]:
        cached = _second_cache = (
            second, datetime.fromtimestamp(second, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S."))
    high, low = divmod(micros, 1000)
    return f"{cached[1]}{_THREE_DIGITS[high]}{_THREE_DIGITS[low]}+00:00"


_orjson = None  # the orjson module once imported; False when it is not installed


def encode(record: dict) -> bytes:
    """One record as one JSON line (UTF-8, compact, newline-terminated).

    orjson, when installed (it is in requirements.txt), encodes about ten times faster than the
    json module, which matters on a per-query path; it is imported on first use, not at import.
    """
    orjson = _orjson
    if orjson is None:
        orjson = _import_orjson()
    if orjson:
        try:
            return _orjson_dumps(record, option=_APPEND_NEWLINE)
        except (TypeError, ValueError):
            # A key that is not a string or a value orjson does not know (attributes or
            # metadata): OPT_NON_STR_KEYS writes such keys as JSON would and default=str the
            # values, but they double orjson's time, so only these records pay for them.
            try:
                return orjson.dumps(record, default=str,
                                    option=orjson.OPT_APPEND_NEWLINE | orjson.OPT_NON_STR_KEYS)
            except (TypeError, ValueError):  # e.g. integers beyond 64 bits: json copes
                pass
    return _json_dumps(record)


_orjson_dumps = _APPEND_NEWLINE = None  # orjson.dumps and its option, once imported


def _import_orjson():
    global _orjson, _orjson_dumps, _APPEND_NEWLINE
    try:
        import orjson
        _orjson_dumps, _APPEND_NEWLINE = orjson.dumps, orjson.OPT_APPEND_NEWLINE
        _orjson = orjson
    except ImportError:
        _orjson = False
    return _orjson


# ensure_ascii=False: a lone surrogate then fails the UTF-8 encoding below and is replaced, where
# an ASCII escape of it ("\udc80") would make the line unreadable to the report.
_encoder = json.JSONEncoder(separators=_SEPARATORS, default=str, allow_nan=False, ensure_ascii=False)


def _json_dumps(record: dict) -> bytes:
    try:
        text = _encoder.encode(record)
        return (text + "\n").encode("utf-8")
    except (ValueError, UnicodeEncodeError):
        # NaN or infinity (not JSON: written as null, as orjson does), lone surrogates (not
        # UTF-8: replaced), or an object whose str() fails (named by its type).
        return (_encoder.encode(_safe_json(record)) + "\n").encode("utf-8")


def _safe_json(value, depth: int = 0):
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int)):
        return value
    if depth > 20:
        return safe_text(text_of(value))
    if isinstance(value, dict):
        return {safe_text(text_of(key)): _safe_json(item, depth + 1) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_safe_json(item, depth + 1) for item in value]
    return safe_text(text_of(value))


def make_record(*, request_id: str, service: str, env: str, operation: str, model: str | None,
                status: str, error_type: str | None, start_time: float, total_time: float,
                stages: dict, input_tokens: int = 0, output_tokens: int = 0,
                cached_input_tokens: int = 0, cost: float | None = None,
                relevance_score: float | None = None, context_precision: float | None = None,
                time_to_first_token: float | None = None, cache_hits: int = 0,
                cache_misses: int = 0, attributes: dict | None = None,
                cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0,
                reasoning_tokens: int = 0, pricing: dict | None = None,
                out_of_bounds: dict | None = None, tokens: dict | None = None) -> dict:
    """The one definition of a request record. `stages` maps name -> {"duration", "metadata"}.

    ``tokens`` holds the billed kinds (they never overlap; ``input`` is the uncached prompt)
    and the parts only shown (``reasoning``, a part of ``output``), under the record keys of
    ``tokens.KINDS``: pass them as ``tokens={record key: count}`` (a Settlement's
    ``record_tokens()``), or as the keyword counts. ``pricing`` says what priced the request:
    how the model matched the price table (exact / alias / pattern / default), the price id
    (entry or dated version), the unit prices, the provider and whether the usage is partial (a
    stream that ended before its final usage). ``out_of_bounds`` keeps raw values that were
    outside the sane bounds or refused, left out of metrics. Attributes and stage metadata are
    scrubbed of secrets.
    """
    if tokens is None:
        tokens = record_tokens_field({
            "input": input_tokens, "output": output_tokens, "cached_input": cached_input_tokens,
            "cache_write_5m": cache_write_tokens, "cache_write_1h": cache_write_1h_tokens,
            "reasoning": reasoning_tokens})
    return build_record(request_id, service, env, operation, model, status, error_type,
                        start_time, total_time, stages, tokens, cost, relevance_score,
                        context_precision, time_to_first_token, cache_hits, cache_misses,
                        attributes, pricing, out_of_bounds)


def build_record(request_id, service, env, operation, model, status, error_type, start_time,
                 total_time, stages, tokens, cost, relevance_score, context_precision,
                 time_to_first_token, cache_hits, cache_misses, attributes, pricing,
                 out_of_bounds) -> dict:
    """make_record with every argument positional, in make_record's order, for the per-query
    path: binding 20 keywords costs about as much as building the record itself."""
    if attributes:
        attributes = scrub(attributes)
    if stages:
        for entry in stages.values():
            if entry.get("metadata"):  # only then is a copy needed, with the metadata scrubbed
                stages = {name: _scrubbed_stage(entry) for name, entry in stages.items()}
                break
    record = {
        "timestamp": iso_utc(start_time + total_time),
        "start_time": start_time,
        "total_time": total_time,
        "request_id": request_id,
        "service": service,
        "env": env,
        "operation": operation,
        "model": model,
        "status": status,
        "error_type": error_type,
        "stages": stages,
        "tokens": tokens,
        "cost": cost,
        "relevance_score": relevance_score,
        "context_precision": context_precision,
        "time_to_first_token": time_to_first_token,
        "cache": {"hits": cache_hits, "misses": cache_misses},
        "attributes": attributes or {},
        "pricing": pricing,
    }
    if out_of_bounds:
        record["out_of_bounds"] = out_of_bounds
    return record


def _scrubbed_stage(entry: dict) -> dict:
    if not entry.get("metadata"):
        return entry
    return {"duration": entry["duration"], "metadata": scrub(entry["metadata"])}


def add_stage(stages: dict, name: str, duration: float, metadata: dict | None) -> None:
    """Adds a stage to a record's ``stages``; a stage run twice in one request (two retrieval
    rounds, say) adds up its durations and merges its metadata."""
    entry = stages.get(name)
    if entry is None:
        stages[name] = {"duration": duration, "metadata": dict(metadata) if metadata else {}}
    else:
        entry["duration"] += duration
        if metadata:
            entry["metadata"].update(metadata)


def log_file_name(epoch: float, suffix: str = LOG_FILE_SUFFIX) -> str:
    return time.strftime("%Y%m%d", time.gmtime(epoch)) + suffix


class RecordSink(Protocol):
    def write(self, record: dict, at: float | None = None) -> None: ...


class _DayFile:
    """One open day file: its descriptor, the identity of the file it was opened on, whether its
    last line was cut off (the next record must then start on a line of its own) and when its
    path was last compared with it (time.monotonic())."""

    __slots__ = ("fd", "ident", "torn", "path", "path_checked_at")

    def __init__(self, fd: int, ident: tuple[int, int], torn: bool, path: str, checked_at: float):
        self.fd, self.ident, self.torn, self.path = fd, ident, torn, path
        self.path_checked_at = checked_at


_live_sinks: "weakref.WeakSet[DailyFileSink]" = weakref.WeakSet()
_fstat, _os_write, _monotonic = os.fstat, os.write, time.monotonic


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork() stays held forever in the child.
    for sink in list(_live_sinks):
        sink._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


class DailyFileSink:
    """Appends records to LOG_DIR/YYYYMMDD_performance.jsonl, by the UTC day each record ends.

    Every record is either written whole or counted as lost (``written``, ``lost``; a lost
    record also raises, which the decorator counts in rag_instrumentation_errors_total
    {reason="record_write"} without disturbing the application):

    - Writes and closes happen under one lock, so no thread ever writes through a descriptor
      another thread closed (which the kernel may have handed to a file of the application).
    - Before each write the sink makes sure the open file still has a name: a file that was
      deleted or replaced, alone or with its directory, is recreated, not written into the
      void. The directory is read first (one fstat of its descriptor): while it exists and no
      entry of it was added, removed or renamed since the open files were last seen linked (its
      modification and change times as they were, and at least two seconds old, since
      timestamps are as coarse as a clock tick, or two seconds on FAT), the files are as they
      were. Otherwise each open file's link count is read (fstat), which costs twice as much
      right after a write.
    - A file renamed away (log rotation) keeps its records whole under its new name; the path is
      compared with the open file (device and inode) at most every ``path_check_interval``
      seconds (default 1), and the next write after that goes to a new file at the path.
    - A short write is finished; if the disk refuses the rest, the cut-off line is fenced with a
      newline before the next record, so the reader skips one torn line and loses nothing else.
      A file that already ends in a cut-off line when opened is fenced the same way.

    The files of the last two days stay open, so around midnight queries that end on either side
    write without reopening. After a fork the inherited descriptors keep working (O_APPEND), so
    worker processes can share the files.
    """

    _OPEN_DAYS = 2
    _QUIET_NS = 2_000_000_000  # how old LOG_DIR's times must be before they stand for its files

    def __init__(self, log_dir: str | os.PathLike, path_check_interval: float = 1.0, *,
                 file_suffix: str = LOG_FILE_SUFFIX):
        if file_suffix not in (LOG_FILE_SUFFIX, QUALITY_FILE_SUFFIX):
            raise ValueError(f"file_suffix={file_suffix!r} is not {LOG_FILE_SUFFIX!r} (request "
                             f"records) or {QUALITY_FILE_SUFFIX!r} (evaluations and feedback)")
        if (type(path_check_interval) not in (int, float) or not path_check_interval >= 0
                or path_check_interval == math.inf):
            raise ValueError(f"path_check_interval={path_check_interval!r} must be a finite "
                             "number of seconds >= 0, e.g. 1.0 (0 compares before every write)")
        self.log_dir = Path(log_dir).expanduser()
        self.path_check_interval = float(path_check_interval)
        self.file_suffix = file_suffix
        self._files: dict[int, _DayFile] = {}
        self._dir_fd: int | None = None  # LOG_DIR, opened with the first file
        # LOG_DIR's (mtime, ctime) when every open file was last seen linked; None: not trusted.
        self._dir_stamp: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self.written = 0
        self.lost = 0
        _live_sinks.add(self)

    def write(self, record: dict, at: float | None = None) -> None:
        data = encode(record)
        at = time.time() if at is None else at
        with self._lock:
            try:
                # The usual write, inlined: the directory unchanged since its files were last
                # seen linked (one fstat), the day's file open, its path checked within the
                # interval, the whole line written at once.
                stamp = self._dir_stamp
                if stamp is not None:
                    st = _fstat(self._dir_fd)
                    if st.st_nlink > 0 and (st.st_mtime_ns, st.st_ctime_ns) == stamp:
                        file = self._files.get(int(at // 86400))
                        if (file is not None and not file.torn
                                and _monotonic() - file.path_checked_at
                                < self.path_check_interval):
                            done = _os_write(file.fd, data)
                            if done != len(data):
                                self._write_rest(file, data, done)
                            self.written += 1
                            return
                self._write(int(at // 86400), at, data)
            except BaseException:
                self.lost += 1
                raise
            self.written += 1

    def _write(self, day: int, at: float, data: bytes) -> None:
        if self._files and not self._directory_unchanged():
            self._forget_unlinked()
        file = self._files.get(day)
        if file is not None and not self._path_is_current(file):
            self._forget(day)  # rotated or replaced: write to the file at the path
            file = None
        if file is None:
            file = self._open(day, str(self.log_dir / log_file_name(at, self.file_suffix)))
        if file.torn:
            data = b"\n" + data
        done = os.write(file.fd, data)  # the usual case: the whole line at once
        if done == len(data):
            file.torn = False
            return
        self._write_rest(file, data, done)

    @staticmethod
    def _write_rest(file: _DayFile, data: bytes, done: int) -> None:
        """Finishes a short write of `data` (`done` bytes of it written), or raises with the
        cut-off line fenced before the next record."""
        path = file.path
        view = memoryview(data)
        while done < len(data):
            try:
                written = os.write(file.fd, view[done:])
            except OSError:
                file.torn = file.torn or done > 0
                raise
            if written <= 0:
                file.torn = file.torn or done > 0
                raise OSError(errno.ENOSPC, f"short write to {path}: {done} of {len(data)} bytes")
            done += written
        file.torn = False

    def _directory_unchanged(self) -> bool:
        """Whether LOG_DIR still exists with no entry added, removed or renamed since every open
        file was last seen linked: then none of them can have lost its name."""
        if self._dir_stamp is None:
            return False
        try:
            st = os.fstat(self._dir_fd)
        except OSError:
            return False
        return st.st_nlink > 0 and (st.st_mtime_ns, st.st_ctime_ns) == self._dir_stamp

    def _forget_unlinked(self) -> None:
        """Closes the open files that have no name left (a record written there is lost), then
        remembers LOG_DIR's times if they are old enough to tell the next change apart."""
        try:
            st = os.fstat(self._dir_fd) if self._dir_fd is not None else None
        except OSError:
            st = None
        for day, file in list(self._files.items()):
            try:
                linked = os.fstat(file.fd).st_nlink > 0
            except OSError:
                linked = False
            if not linked:
                self._forget(day)
        # A change within the same timestamp granule (a clock tick; two seconds on FAT) would
        # leave the times as they were, so they are trusted only once older than that.
        old_enough = (st is not None and st.st_nlink > 0
                      and max(st.st_mtime_ns, st.st_ctime_ns) < time.time_ns() - self._QUIET_NS)
        self._dir_stamp = (st.st_mtime_ns, st.st_ctime_ns) if old_enough else None

    def _path_is_current(self, file: _DayFile) -> bool:
        """Whether the path still names the open file; looked up at most once per interval,
        since records written to a file renamed away still land whole in it."""
        now = time.monotonic()
        if now - file.path_checked_at < self.path_check_interval:
            return True
        file.path_checked_at = now
        try:
            st = os.stat(file.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == file.ident

    def _open(self, day: int, path: str) -> _DayFile:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._open_directory()
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o640)
        try:
            st = os.fstat(fd)
            torn = st.st_size > 0 and os.pread(fd, 1, st.st_size - 1) != b"\n"
        except OSError:
            os.close(fd)
            raise
        file = _DayFile(fd, (st.st_dev, st.st_ino), torn, path, time.monotonic())
        # Keep the day just opened (its record is about to be written) and the most recent of
        # the others; a late record for an old day may evict yesterday, reopened on demand.
        others = sorted(d for d in self._files if d != day)
        for old_day in others[:len(others) - (self._OPEN_DAYS - 1)]:
            self._forget(old_day)
        self._files[day] = file
        return file

    def _open_directory(self) -> None:
        """(Re)opens LOG_DIR, which may have been recreated; where directories cannot be opened
        (Windows) every write reads the files' link counts instead."""
        self._close_directory()
        try:
            self._dir_fd = os.open(self.log_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                                   | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self._dir_fd = None

    def _close_directory(self) -> None:
        self._dir_stamp = None
        if self._dir_fd is not None:
            try:
                os.close(self._dir_fd)
            except OSError:
                pass
            self._dir_fd = None

    def _forget(self, day: int) -> None:
        file = self._files.pop(day)
        try:
            os.close(file.fd)
        except OSError:
            pass

    def close(self) -> None:
        """Closes the files. A later write reopens them."""
        with self._lock:
            for day in list(self._files):
                self._forget(day)
            self._close_directory()


class StreamSink:
    """Writes each record as one line to a text stream (stderr by default)."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream

    def write(self, record: dict, at: float | None = None) -> None:
        stream = self.stream or sys.stderr
        stream.write(encode(record).decode("utf-8"))
        stream.flush()


def sink_for(destination: str, log_dir: str | os.PathLike) -> RecordSink | None:
    """The sink for a REQUEST_LOG_DESTINATION value; None means records are not built at all."""
    if destination == "file":
        return DailyFileSink(log_dir)
    if destination == "stderr":
        return StreamSink()
    if destination == "none":
        return None
    raise ValueError(f"destination={destination!r} is not one of file, stderr, none")


def sink_from_settings(settings) -> RecordSink | None:
    return sink_for(settings.REQUEST_LOG_DESTINATION, settings.log_dir)
