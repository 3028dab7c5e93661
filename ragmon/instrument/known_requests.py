"""Which requests this server served: the ids that feedback and late scores are checked against.

A request is *known* when its record is in the request log this process writes to: the daily
files in LOG_DIR, which every worker of one server (gunicorn, uvicorn --workers) appends to. So
feedback for a request another worker answered is found; feedback for one another replica with
its own LOG_DIR answered is not (pass ``verify=False`` to record_feedback there, and the report,
reading every replica's logs, joins it).

Nothing is kept on the per-query path: the ids are read from the files when a lookup misses,
from where the last read stopped, so every byte of the log is read at most once per process and
a flood of unknown ids costs one ``stat`` per file each. The index holds the ids of the last
FEEDBACK_MAX_AGE_HOURS (and a day more, so that a request just past the age is told "too old",
not "unknown"), at most INDEX_LIMIT of them (dropping the oldest first) and at most the last
INITIAL_READ_BYTES of each file on its first read. When ids that are still young enough have been
dropped or skipped, a missing id cannot be told unknown: it is accepted as unverified.

Days already compacted into the Parquet history are not read: an id missing from them is
accepted as unverified too.

With records going to stderr, to no file or to a sink of the application's own, nothing can be
checked: every well-formed id is accepted as unverified.
"""
from __future__ import annotations

import calendar
import json
import os
import threading
import time
from pathlib import Path

from .records import LOG_FILE_SUFFIX, DailyFileSink, log_file_name
from .runtime import safe_name

INDEX_LIMIT = 100_000
INITIAL_READ_BYTES = 64 << 20


def _loads(line: bytes):
    try:
        import orjson
    except ImportError:
        return json.loads(line)
    return orjson.loads(line)


class RequestIndex:
    """The request ids found in one LOG_DIR's daily files: id -> (end time, operation)."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        self.entries: dict[str, tuple[float, str | None]] = {}
        self.read_to: dict[str, tuple[tuple[int, int], int]] = {}  # name -> (file id, offset)
        # The end time of the newest request that was dropped or skipped: below it the index is
        # not complete, so a missing id may have been served.
        self.complete_after = float("-inf")
        self.operations: dict[str, str] = {}  # one string per operation name, shared
        self.lock = threading.Lock()

    def refresh(self, oldest: float) -> None:
        """Reads what was appended to the files of the days from `oldest` on."""
        with self.lock:
            try:
                names = sorted(entry.name for entry in os.scandir(self.log_dir)
                               if entry.name.endswith(LOG_FILE_SUFFIX))
            except OSError:
                return
            first = log_file_name(oldest)
            for name in names:
                if name >= first:
                    self._read(name)
            self._compacted_days()

    def _compacted_days(self) -> None:
        """Days moved to the Parquet history (``m2_3_report.py compact``) are not read here: a
        missing id of such a day cannot be told unknown."""
        try:
            # ragmon.report.compact's layout: LOG_DIR/history/day=YYYY-MM-DD/
            days = [entry.name[len("day="):] for entry in os.scandir(self.log_dir / "history")
                    if entry.name.startswith("day=")]
        except OSError:
            return
        for day in days:
            try:
                end = calendar.timegm(time.strptime(day, "%Y-%m-%d")) + 86400
            except ValueError:
                continue
            if end > self.complete_after:
                self.complete_after = end

    def _read(self, name: str) -> None:
        path = self.log_dir / name
        try:
            with open(path, "rb") as file:
                st = os.fstat(file.fileno())
                ident = (st.st_dev, st.st_ino)
                known, offset = self.read_to.get(name, (None, 0))
                if known != ident or offset > st.st_size:  # a new or truncated file
                    offset = 0
                    if st.st_size > INITIAL_READ_BYTES:
                        offset = st.st_size - INITIAL_READ_BYTES
                skipped_head = offset > 0 and known != ident
                file.seek(offset)
                data = file.read(st.st_size - offset)
        except OSError:
            return
        if skipped_head:  # start at the first whole line
            cut = data.find(b"\n")
            data, offset = (b"", offset) if cut < 0 else (data[cut + 1:], offset + cut + 1)
        end = data.rfind(b"\n")  # a line still being written is read next time
        if end < 0:
            self.read_to[name] = (ident, offset)
            return
        first_end = None
        for line in data[:end].split(b"\n"):
            found = self._parse(line)
            if found is not None:
                if first_end is None:
                    first_end = found[1]
                self._add(*found)
        if skipped_head and first_end is not None:
            self.complete_after = max(self.complete_after, first_end)
        self.read_to[name] = (ident, offset + end + 1)

    def _parse(self, line: bytes):
        if b'"request_id"' not in line:
            return None
        try:
            record = _loads(line)
            if type(record) is not dict or "kind" in record:  # evaluations, feedback
                return None
            rid = record["request_id"]
            end = float(record["start_time"]) + float(record.get("total_time") or 0.0)
        except (ValueError, KeyError, TypeError):
            return None  # a torn or foreign line
        if type(rid) is not str:
            return None
        operation = record.get("operation")
        if type(operation) is str:
            operation = self.operations.get(operation) or self._operation(operation)
        else:
            operation = None
        return rid, end, operation

    def _operation(self, name: str) -> str | None:
        if len(self.operations) >= 1000:
            return None
        name = safe_name(name)
        self.operations[name] = name
        return name

    def _add(self, rid: str, end: float, operation: str | None) -> None:
        entries = self.entries
        entries[rid] = (end, operation)
        if len(entries) > INDEX_LIMIT:
            oldest = next(iter(entries))
            dropped_end = entries.pop(oldest)[0]
            self.complete_after = max(self.complete_after, dropped_end)


_indexes: dict[str, RequestIndex] = {}
_indexes_lock = threading.Lock()


def _after_fork_in_child() -> None:
    # A lock another thread held at fork() stays held forever in the child; the index is
    # read again from the files on the child's first lookup.
    global _indexes_lock
    _indexes_lock = threading.Lock()
    _indexes.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def index_for(log_dir: Path) -> RequestIndex:
    key = str(log_dir)
    with _indexes_lock:
        index = _indexes.get(key)
        if index is None:
            if len(_indexes) >= 8:
                _indexes.clear()
            index = _indexes[key] = RequestIndex(log_dir)
    return index


def lookup(request_id: str, metrics, sink):
    """A quality.FoundRequest for `request_id`, as this server's request log knows it."""
    from .quality import UNVERIFIED, FoundRequest
    if not isinstance(sink, DailyFileSink):
        return UNVERIFIED
    max_age = metrics.settings.FEEDBACK_MAX_AGE_HOURS * 3600.0
    now = time.time()
    index = index_for(sink.log_dir)
    found = index.entries.get(request_id)
    if found is None:
        index.refresh(now - max_age - 86400.0)
        found = index.entries.get(request_id)
    hours = f"{metrics.settings.FEEDBACK_MAX_AGE_HOURS:g}"
    if found is None:
        if index.complete_after > now - max_age:
            return UNVERIFIED  # too many requests to remember: it may have been served
        return FoundRequest(refusal="unknown_request", message=(
            f"was not found among this server's requests of the last {hours} hours (the "
            f"request log in {sink.log_dir}); if another replica served it, record the "
            "feedback there or pass verify=False"))
    end, operation = found
    if now - end > max_age:
        return FoundRequest(operation=operation, refusal="too_old", message=(
            f"ended {(now - end) / 3600:.0f} hours ago, more than FEEDBACK_MAX_AGE_HOURS="
            f"{hours}"))
    return FoundRequest(verified=True, operation=operation)
