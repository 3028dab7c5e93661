"""Reading the request log (LOG_DIR/YYYYMMDD_performance.jsonl) into records or a DataFrame.

The log is shared by many writers and may be read while they append, so a reader must expect a
torn last line (a write in progress, or a crash mid-write) and lines that are not records at all
(a hand edit, a disk error). Such lines are skipped and counted in ``ReadStats``, never fatal;
callers print ``read_problems(stats)`` so a skipped line is never silent.

Speed matters: a busy service writes a million records a day, and a report over them should
take seconds. With msgspec installed, each line is decoded straight into a typed struct that
skips what reports never read (stage metadata), checking types as it goes; a line that does not
fit (an older or hand-written record, a string where a number belongs) takes the lenient path,
which keeps what it can and counts what it cannot. Without msgspec the lenient path (stdlib json)
reads everything, correctly but several times slower. Big logs are parsed by several processes.
"""
from __future__ import annotations

import gc
import json
import math
import operator
import os
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from ..instrument.records import LOG_FILE_GLOB, LOG_FILE_SUFFIX

try:
    import msgspec
except ImportError:  # the lenient path alone still reads everything
    msgspec = None

_FILE_RE = re.compile(r"^(\d{8})" + re.escape(LOG_FILE_SUFFIX) + "$")
_READ_BLOCK = 1 << 24  # bytes of lines read at a time: large enough to amortise, small in memory
_NUM = (int, float)

# Reasons a line is skipped, as counted in ReadStats.skipped.
TORN = "torn_last_line"
CORRUPT = "corrupt_json"
NOT_OBJECT = "not_an_object"
BAD_FIELDS = "bad_fields"
_REASON_WORDS = {TORN: "torn last line (a write in progress or cut short)",
                 CORRUPT: "not valid JSON", NOT_OBJECT: "JSON but not an object",
                 BAD_FIELDS: "missing or invalid start_time/total_time, or malformed stages"}


class LogDirNotFound(FileNotFoundError):
    """The log directory does not exist; the message says where we looked and how to point
    elsewhere."""

    def __init__(self, log_dir: Path):
        self.log_dir = log_dir
        super().__init__(
            f"log directory {str(log_dir)!r} does not exist (looked at {log_dir.resolve()}); "
            "pass --log-dir DIR (or log_dir=...) or set LOG_DIR to where the service writes "
            "its *_performance.jsonl files")


@dataclass
class ReadStats:
    """What a read saw: files, lines, records kept, and lines skipped by reason."""

    log_dir: str
    files: list[str] = field(default_factory=list)
    lines: int = 0
    records: int = 0  # valid records in the period
    outside_period: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[tuple] = field(default_factory=list)  # (file name, line, reason), first few
    ignored_names: set = field(default_factory=set)  # stage names/attribute keys past the limits
    bad_values: int = 0  # numeric fields that held something else, read as missing
    parser: str = field(default_factory=lambda: "msgspec" if msgspec is not None else "json")

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def skip(self, path: Path, lineno: int, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < 5:
            self.examples.append((path.name, lineno, reason))

    def example_texts(self) -> list[str]:
        return [f"{name}:{line}: {_REASON_WORDS[reason]}" for name, line, reason in self.examples]

    def as_dict(self) -> dict:
        return {"log_dir": self.log_dir, "files": list(self.files), "lines": self.lines,
                "records": self.records, "outside_period": self.outside_period,
                "skipped_lines": self.skipped_total, "skipped_by_reason": dict(self.skipped),
                "skipped_examples": self.example_texts(), "bad_values": self.bad_values,
                "ignored_names": sorted(self.ignored_names),
                "parser": self.parser}


def file_date(path: Path) -> datetime | None:
    """The UTC date in a log file's name, or None if the name is not a valid log file name."""
    match = _FILE_RE.match(path.name)
    if not match:
        return None
    try:
        return datetime.strptime(match.group(1), "%Y%m%d").replace(tzinfo=timezone.utc)
    except ValueError:  # 20261399_performance.jsonl matches the glob but is no date
        return None


def log_files(log_dir: str | Path, since: float | None = None, until: float | None = None
              ) -> list[Path]:
    """Log files in `log_dir` (not its subdirectories) that can hold records ending in
    [since, until), oldest first. Raises LogDirNotFound if the directory is missing."""
    log_dir = Path(log_dir).expanduser()
    if not log_dir.is_dir():
        raise LogDirNotFound(log_dir)
    found = []
    for path in log_dir.glob(LOG_FILE_GLOB):
        day = file_date(path)
        if day is None or not path.is_file():
            continue
        start = day.timestamp()
        # A file holds records whose end falls on its UTC day: [start, start + 1 day).
        if since is not None and start + 86400 <= since:
            continue
        if until is not None and start >= until:
            continue
        found.append((start, path))
    return [path for _, path in sorted(found)]


def _loads_any(line: bytes):
    """Untyped decode. The stdlib parser is the last resort because it also accepts the NaN
    and Infinity that json.dumps writes for float('nan')."""
    if msgspec is not None:
        try:
            return msgspec.json.decode(line)
        except msgspec.DecodeError:
            pass
    return json.loads(line)  # raises ValueError (JSONDecodeError, UnicodeDecodeError)


def _end_time(record: dict) -> float | None:
    """End of the request in epoch seconds from start_time + total_time (or the ISO timestamp),
    or None if total_time is not a finite number >= 0 or neither time is usable."""
    start, total = record.get("start_time"), record.get("total_time")
    if type(total) not in _NUM or not math.isfinite(total) or total < 0:
        return None
    if type(start) in _NUM and math.isfinite(start):
        return start + total
    stamp = record.get("timestamp")
    if isinstance(stamp, str):
        try:
            parsed = datetime.fromisoformat(stamp)
        except ValueError:
            return None
        if parsed.tzinfo is None:  # records without a zone (older writers) are taken as UTC
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return None


def _parse_line(line: bytes, path, lineno: int, stats) -> dict | None:
    """The record on one line, or None after counting why it was skipped (a blank line is not
    counted: it is no record at all)."""
    try:
        record = _loads_any(line)
    except ValueError:
        if line.strip():
            stats.skip(path, lineno, CORRUPT if line.endswith(b"\n") else TORN)
        return None
    problem = _record_problem(record)
    if problem is not None:
        stats.skip(path, lineno, problem)
        return None
    return record


def _record_problem(record) -> str | None:
    """Why `record` (decoded JSON) cannot be used as a request record, or None."""
    if type(record) is not dict:
        return NOT_OBJECT
    if _end_time(record) is None:
        return BAD_FIELDS
    stages = record.get("stages")
    if stages is None:
        return None
    if type(stages) is not dict:
        return BAD_FIELDS
    for entry in stages.values():
        if type(entry) is not dict:
            return BAD_FIELDS
        duration = entry.get("duration")
        if type(duration) not in _NUM or not math.isfinite(duration):
            return BAD_FIELDS
    return None


def iter_records(log_dir: str | Path, since: float | None = None, until: float | None = None,
                 stats: ReadStats | None = None) -> Iterator[dict]:
    """Each valid record ending in [since, until), file by file, as the dict that was written
    (for exports and small reads; read_columns() is the fast path for analysis). Pass a
    ReadStats to learn what was skipped."""
    stats = stats if stats is not None else ReadStats(str(log_dir))
    for path in log_files(log_dir, since, until):
        stats.files.append(str(path))
        with open(path, "rb") as f:
            for lineno, line in enumerate(f, start=1):
                stats.lines += 1
                record = _parse_line(line, path, lineno, stats)
                if record is None:
                    continue
                end = _end_time(record)
                if (since is not None and end < since) or (until is not None and end >= until):
                    stats.outside_period += 1
                    continue
                stats.records += 1
                yield record


# --- columnar reading --------------------------------------------------------------------------
#
# The per-line work is kept to C calls: msgspec decodes a line into a struct built for the stage
# names and attribute keys seen so far (skipping stage metadata without building it), and three
# attrgetters pull every needed value into tuples. Checking, filtering by time and conversion to
# numpy happen once per block of lines. A line the typed decoder refuses - a new stage name or
# attribute key, an older or hand-written record, a wrong type - takes the lenient path, which
# learns new names (the next struct knows them) and reads what it can.

STRING_COLUMNS = ("status", "error_type", "operation", "model", "service", "env")
FLOAT_COLUMNS = ("cost", "relevance_score", "context_precision", "time_to_first_token")
COUNT_COLUMNS = ("input_tokens", "output_tokens", "cached_input_tokens", "cache_hits",
                 "cache_misses")
STAGE_PREFIX = "stage_"
ATTR_PREFIX = "attr_"
# Stage names and attribute keys are read into columns up to these many; further ones are
# counted and ignored. Like metric labels they must be bounded: a key per user or document
# would make a column per user.
MAX_STAGE_NAMES = 100
MAX_ATTRIBUTE_KEYS = 100

_COUNT_PATHS = ("tokens.input", "tokens.output", "tokens.cached_input", "cache.hits",
                "cache.misses")
_N_FIXED = 2 + len(FLOAT_COLUMNS) + len(COUNT_COLUMNS)  # numbers before the stage durations
_strings_of = operator.attrgetter("request_id", *STRING_COLUMNS)


class _Schema:
    """The stage names and attribute keys known so far, and the decoder and getters for them."""

    def __init__(self):
        self.stages: list[str] = []
        self.attributes: list[str] = []
        self._build()

    def knows(self, stage_names, attribute_keys) -> bool:
        """False if a name is new and there is room for it (learn() would change the schema)."""
        return (all(n in self.stages for n in stage_names) or len(self.stages) >= MAX_STAGE_NAMES) \
            and (all(k in self.attributes for k in attribute_keys)
                 or len(self.attributes) >= MAX_ATTRIBUTE_KEYS)

    def learn(self, stage_names, attribute_keys, stats: ReadStats) -> bool:
        """Adds unseen names (up to the limits); True if the schema changed."""
        added = False
        for names, known, limit, kind in ((stage_names, self.stages, MAX_STAGE_NAMES, "stage"),
                                          (attribute_keys, self.attributes, MAX_ATTRIBUTE_KEYS,
                                           "attribute")):
            for name in names:
                if name in known:
                    continue
                if len(known) < limit:
                    known.append(name)
                    added = True
                elif len(stats.ignored_names) < 20:
                    stats.ignored_names.add(f"{kind} {name}")
        if added:
            self._build()
        return added

    def _build(self) -> None:
        stage_paths = tuple(f"stages.s{i}.duration" for i in range(len(self.stages)))
        self.numbers_of = operator.attrgetter("start_time", "total_time", *FLOAT_COLUMNS,
                                              *_COUNT_PATHS, *stage_paths)
        self.attributes_of = (operator.attrgetter(*(f"attributes.a{i}"
                                                     for i in range(len(self.attributes))))
                              if self.attributes else None)
        decoder = _typed_decoder(self.stages, self.attributes)
        self.decode = decoder.decode if decoder is not None else None
        self.decode_lines = decoder.decode_lines if decoder is not None else None

    def row(self, record: dict, c: "Columns"):
        """An object with the typed struct's attributes, from a record dict (lenient path).
        Values of the wrong type are read as missing and counted in c.bad_values."""
        def number(value):
            if value is None or (type(value) in _NUM and math.isfinite(value)):
                return value
            c.bad_values += 1
            return None

        def count(mapping, key):
            value = mapping.get(key) if type(mapping) is dict else None
            if value is None:
                return 0
            if type(value) is int or (type(value) is float and value.is_integer()):
                return int(value)
            c.bad_values += 1
            return 0

        def text(value):
            return value if value is None or type(value) is str else str(value)

        get = record.get
        end = _end_time(record)
        total = float(get("total_time"))
        row = _Namespace(start_time=end - total, total_time=total,
                         request_id=text(get("request_id")))
        for name in STRING_COLUMNS:
            setattr(row, name, text(get(name)))
        for name in FLOAT_COLUMNS:
            setattr(row, name, number(get(name)))
        tokens, cache = get("tokens"), get("cache")
        row.tokens = _Namespace(input=count(tokens, "input"), output=count(tokens, "output"),
                                cached_input=count(tokens, "cached_input"))
        row.cache = _Namespace(hits=count(cache, "hits"), misses=count(cache, "misses"))
        stages = get("stages") or {}
        row.stages = _Namespace(**{
            f"s{i}": _Namespace(duration=float(stages[name]["duration"]) if name in stages
                                else math.nan) for i, name in enumerate(self.stages)})
        attributes = get("attributes")
        if attributes is not None and type(attributes) is not dict:
            c.bad_values += 1
            attributes = None
        attributes = attributes or {}
        row.attributes = _Namespace(**{f"a{i}": attributes.get(key)
                                       for i, key in enumerate(self.attributes)})
        return row


class _Namespace:
    """A plain object for the lenient path's rows (attrgetter needs attributes)."""

    def __init__(self, **values):
        self.__dict__.update(values)


def _typed_decoder(stage_names: list[str], attribute_keys: list[str]):
    """A msgspec decoder for records with exactly these stage names and attribute keys (an
    unknown one fails, so the lenient path can learn it); None without msgspec."""
    if msgspec is None:
        return None
    stage = msgspec.defstruct("Stage", [("duration", float)], gc=False)
    missing = stage(duration=math.nan)
    stages = msgspec.defstruct(
        "Stages", [(f"s{i}", stage, msgspec.field(default_factory=lambda: missing, name=name))
                   for i, name in enumerate(stage_names)], forbid_unknown_fields=True, gc=False)
    attributes = msgspec.defstruct(
        "Attributes", [(f"a{i}", Any, msgspec.field(default=None, name=key))
                       for i, key in enumerate(attribute_keys)], forbid_unknown_fields=True)
    tokens = msgspec.defstruct("Tokens", [("input", int, 0), ("output", int, 0),
                                          ("cached_input", int, 0)], gc=False)
    cache = msgspec.defstruct("Cache", [("hits", int, 0), ("misses", int, 0)], gc=False)
    record = msgspec.defstruct("Record", [
        ("start_time", float), ("total_time", float),
        ("request_id", str | None, None),
        *((name, str | None, None) for name in STRING_COLUMNS),
        *((name, float | None, None) for name in FLOAT_COLUMNS),
        ("tokens", tokens, msgspec.field(default_factory=tokens)),
        ("cache", cache, msgspec.field(default_factory=cache)),
        ("stages", stages, msgspec.field(default_factory=stages)),
        ("attributes", attributes, msgspec.field(default_factory=attributes)),
    ], gc=False)
    return msgspec.json.Decoder(record)


class Columns:
    """Blocks of column arrays, one block per run of lines read with one schema; concatenated
    by column name at the end (a column missing from a block is NaN/None there)."""

    def __init__(self):
        self.n = 0
        self.schema = _Schema()
        self.blocks: list[dict] = []
        self.categories: list[dict[str, int]] = [{} for _ in STRING_COLUMNS]
        self.interned: dict = {}
        self.attr_categories: dict[str, dict[str, int]] = {}
        self.bad_values = 0  # fields holding a value of the wrong type, read as missing

    def add_block(self, numbers: list, strings: list, attributes: list, linenos: list,
                  path: Path, since, until, stats: ReadStats) -> None:
        """Checks, filters by time and converts rows read with the current schema."""
        import numpy as np

        if not numbers:
            return
        schema = self.schema
        matrix = np.array(numbers, dtype="float64")  # None (no cost, no score) becomes NaN
        start, total = matrix[:, 0], matrix[:, 1]
        end = start + total
        valid = np.isfinite(end) & (total >= 0)
        if not valid.all():
            if callable(linenos):
                linenos = linenos()
            for k in np.flatnonzero(~valid):
                stats.skip(path, linenos[k], BAD_FIELDS)
        keep = valid
        if since is not None:
            keep = keep & (end >= since)
        if until is not None:
            keep = keep & (end < until)
        stats.outside_period += int((valid & ~keep).sum())
        if not keep.any():
            return
        everything = bool(keep.all())
        index = None if everything else np.flatnonzero(keep)
        if not everything:
            matrix, end = matrix[index], end[index]
        block: dict = {"n": len(matrix), "end": end, "start_time": matrix[:, 0].copy(),
                       "total_time": matrix[:, 1].copy()}
        for i, name in enumerate(FLOAT_COLUMNS, start=2):
            block[name] = matrix[:, i].copy()
        for i, name in enumerate(COUNT_COLUMNS, start=2 + len(FLOAT_COLUMNS)):
            block[name] = matrix[:, i].astype("int64")
        block["stages"] = {name: matrix[:, _N_FIXED + i].copy()
                           for i, name in enumerate(schema.stages)}
        columns = list(zip(*strings))
        if not everything:
            columns = [[col[k] for k in index] for col in columns]
        block["request_id"] = np.array(columns[0], dtype=object)
        block["codes"] = [_codes(np.array(col, dtype=object), cats)
                          for col, cats in zip(columns[1:], self.categories)]
        block["attrs"] = {}
        if schema.attributes:
            attr_columns = (list(zip(*attributes)) if len(schema.attributes) > 1
                            else [tuple(attributes)])
            for key, values in zip(schema.attributes, attr_columns):
                if not everything:
                    values = [values[k] for k in index]
                block["attrs"][key] = self._attribute(key, values)
        self.blocks.append(block)
        self.n += block["n"]

    def _attribute(self, key: str, values):
        """One block of an attribute: float64 when every value is a number (or missing);
        category codes when every value is a string (or missing); else objects, lists as
        shared tuples so they can be counted and cost one pointer a row."""
        import numpy as np

        kinds = set(map(type, values))
        if kinds <= {int, float, type(None)}:
            return np.array(values, dtype="float64")
        if kinds <= {str, type(None)}:
            categories = self.attr_categories.setdefault(key, {})
            return _Codes(_codes(np.array(values, dtype=object), categories), categories)
        if list in kinds:
            intern = self.interned.setdefault
            if kinds == {list}:
                try:  # C-level maps: one shared tuple per distinct list
                    tuples = list(map(tuple, values))
                    values = list(map(intern, tuples, tuples))
                except TypeError:  # unhashable items (a list of dicts): keep the lists
                    pass
            else:
                converted = []
                for value in values:
                    if type(value) is list:
                        try:
                            value = tuple(value)
                            value = intern(value, value)
                        except TypeError:
                            pass
                    converted.append(value)
                values = converted
        # fromiter keeps each tuple one object; np.array would make a 2-D array of them.
        return np.fromiter(values, dtype=object, count=len(values))

    def frame(self):
        """The columns as a pandas DataFrame, one row per record, ordered by end time."""
        import numpy as np
        import pandas as pd

        blocks = self.blocks
        data: dict = {}
        for name in ("request_id", "end", "start_time", "total_time", *FLOAT_COLUMNS):
            parts = [b[name] for b in blocks]
            data[name] = (np.concatenate(parts) if parts else
                          np.empty(0, dtype=object if name == "request_id" else "float64"))
        for name in COUNT_COLUMNS:
            parts = [b[name] for b in blocks]
            data[name] = np.concatenate(parts) if parts else np.empty(0, dtype="int64")
        for i, name in enumerate(STRING_COLUMNS):
            parts = [b["codes"][i] for b in blocks]
            codes = np.concatenate(parts) if parts else np.empty(0, dtype="int32")
            data[name] = pd.Categorical.from_codes(codes, categories=list(self.categories[i]))
        end = data.pop("end")
        for name in sorted({name for b in blocks for name in b["stages"]}):
            data[STAGE_PREFIX + name] = np.concatenate(
                [b["stages"].get(name, np.full(b["n"], np.nan)) for b in blocks])
        for key in sorted({key for b in blocks for key in b["attrs"]}):
            data[ATTR_PREFIX + key] = _join_attribute([(b["n"], b["attrs"].get(key)) for b in blocks])
        df = pd.DataFrame(data, copy=False)
        df.insert(1, "timestamp", pd.to_datetime(end, unit="s", utc=True))
        if len(df) and not df["timestamp"].is_monotonic_increasing:
            df = df.sort_values("timestamp", kind="stable", ignore_index=True)
        return df


class _Codes:
    """A block of a string attribute as codes into a categories dict shared by all blocks."""

    __slots__ = ("codes", "categories")
    dtype = "codes"

    def __init__(self, codes, categories: dict):
        self.codes, self.categories = codes, categories

    def objects(self):
        import numpy as np
        names = np.array(list(self.categories) + [None], dtype=object)
        return names[self.codes]  # code -1 picks the trailing None


def _join_attribute(parts: list):
    """Concatenates one attribute's blocks; a block without it is NaN (numbers) or None.
    Strings become a categorical when they repeat."""
    import numpy as np
    import pandas as pd

    present = [part for _, part in parts if part is not None]
    if all(isinstance(part, np.ndarray) and part.dtype != object for part in present):
        return np.concatenate([part if part is not None else np.full(n, np.nan) for n, part in parts])
    if all(isinstance(part, _Codes) for part in present):
        categories = present[0].categories  # one dict per attribute, shared by every block
        codes = np.concatenate([part.codes if part is not None else np.full(n, -1, dtype="int32")
                                for n, part in parts])
        if len(categories) <= max(100, len(codes) // 2):
            return pd.Categorical.from_codes(codes, categories=list(categories))
        return np.array(list(categories) + [None], dtype=object)[codes]
    pieces = []
    for n, part in parts:
        if part is None:
            pieces.append(np.full(n, None, dtype=object))
        elif isinstance(part, _Codes):
            pieces.append(part.objects())
        elif part.dtype != object:
            pieces.append(np.array([None if v != v else v for v in part.tolist()], dtype=object))
        else:
            pieces.append(part)
    return np.concatenate(pieces)


def _codes(values, categories: dict[str, int]):
    """Codes into the shared `categories` (str -> code); None is -1."""
    import numpy as np
    import pandas as pd

    codes, uniques = pd.factorize(values)
    translate = np.array([categories.setdefault(name, len(categories)) for name in uniques]
                         + [-1], dtype="int32")
    return translate[codes]  # code -1 picks the trailing -1


def _scan(lines: list, start_lineno: int, path: Path, since, until, c: Columns,
          stats: ReadStats) -> None:
    """Parses one block of lines into `c`. The loop body is C calls bound to locals: it runs a
    million times for a day of a busy service."""
    schema = c.schema
    numbers: list = []
    strings: list = []
    attributes: list = []
    linenos: list = []

    def bind():
        return (schema.decode, schema.numbers_of, _strings_of, schema.attributes_of)

    def flush():
        c.add_block(numbers, strings, attributes, linenos, path, since, until, stats)
        numbers.clear(), strings.clear(), attributes.clear(), linenos.clear()

    decode, numbers_of, strings_of, attributes_of = bind()
    typed_errors = (msgspec.DecodeError,) if msgspec is not None else ()
    n_append, s_append, a_append, l_append = (numbers.append, strings.append, attributes.append,
                                              linenos.append)
    lineno = start_lineno
    for line in lines:
        lineno += 1
        if decode is not None:
            try:
                r = decode(line)
            except typed_errors:
                r = None
        else:
            r = None
        if r is None:
            record = _parse_line(line, path, lineno, stats)
            if record is None:
                continue
            stages, attrs = record.get("stages") or {}, record.get("attributes")
            attrs = attrs if type(attrs) is dict else ()
            if not schema.knows(stages, attrs):
                flush()  # the rows so far have the old layout
            if schema.learn(stages, attrs, stats):
                decode, numbers_of, strings_of, attributes_of = bind()
            r = schema.row(record, c)
        n_append(numbers_of(r))
        s_append(strings_of(r))
        if attributes_of is not None:
            a_append(attributes_of(r))
        l_append(lineno)
    flush()


# Below this many bytes one process reads everything: starting workers would cost more.
PARALLEL_MIN_BYTES = 48 << 20


def _plan(paths: list[Path], workers: int) -> list[list[tuple[Path, int, int]]]:
    """Splits the files into `workers` shares of about equal bytes: (path, start, end) ranges."""
    sizes = [(path, path.stat().st_size) for path in paths]
    total = sum(size for _, size in sizes)
    share = -(-total // workers) if total else 1
    plans: list[list] = [[] for _ in range(workers)]
    worker, room = 0, share
    for path, size in sizes:
        pos = 0
        while pos < size:
            take = min(room, size - pos)
            plans[worker].append((path, pos, pos + take))
            pos += take
            room -= take
            if room == 0 and worker < workers - 1:
                worker, room = worker + 1, share
    return [plan for plan in plans if plan]


def _blocks(path: Path, start: int, end: int):
    """Blocks of the whole lines that begin in [start, end), as (buffer, length): the lines are
    buffer[:length]. The buffer is reused, so use a block before asking for the next. The last
    line of a file may lack its newline. A line straddling `start` belongs to the range before,
    which reads past its end to finish it."""
    with open(path, "rb", buffering=0) as f:
        pos = 0  # file offset of buf[0]
        if start > 0:
            f.seek(start - 1)
            first = f.read(1 << 16)
            while b"\n" not in first and first:
                first += f.read(1 << 16)
            skip = first.find(b"\n") + 1 if b"\n" in first else len(first)
            pos = start - 1 + skip
            f.seek(pos)
        buf = bytearray(_READ_BLOCK)
        view = memoryview(buf)
        kept = 0  # bytes carried over at the front of buf: a line not finished yet
        while pos < end:
            if kept == len(buf):  # one line longer than the buffer: grow it
                view.release()
                buf.extend(bytes(len(buf)))
                view = memoryview(buf)
            got = f.readinto(view[kept:])
            size = kept + got
            if not got:
                if kept:
                    yield buf, kept
                return
            limit = end - pos  # lines starting before buf[limit] are ours
            if size >= limit:
                cut = buf.find(b"\n", limit - 1, size)
                if cut >= 0:
                    yield buf, cut + 1
                    return
                kept = size
                continue
            cut = buf.rfind(b"\n", 0, size)
            if cut < 0:
                kept = size
                continue
            yield buf, cut + 1
            kept = size - cut - 1
            buf[:kept] = buf[cut + 1:size]
            pos += cut + 1


def _line_count(buf, length: int) -> int:
    if not length:
        return 0
    return buf.count(b"\n", 0, length) + (0 if buf[length - 1] == 0x0A else 1)


def _scan_block(buf, length: int, first_lineno: int, path: Path, since, until, c: Columns,
                stats: ReadStats) -> None:
    """Decodes a block of lines with one C call when every line fits the current schema (the
    usual case); otherwise line by line, learning new names for the blocks after it."""
    schema = c.schema
    if schema.decode_lines is not None:
        try:
            with memoryview(buf) as view, view[:length] as block:
                records = schema.decode_lines(block)
        except msgspec.DecodeError:
            records = None
        if records is not None:
            numbers = list(map(schema.numbers_of, records))
            strings = list(map(_strings_of, records))
            attributes = (list(map(schema.attributes_of, records))
                          if schema.attributes_of is not None else [])
            del records

            def linenos():  # only needed to name a bad record; decode_lines skips blank lines
                lines = bytes(buf[:length]).split(b"\n")
                return [first_lineno + k + 1 for k, line in enumerate(lines) if line.strip()]
            c.add_block(numbers, strings, attributes, linenos, path, since, until, stats)
            return
    _scan(bytes(buf[:length]).splitlines(keepends=True), first_lineno, path, since, until, c,
          stats)


def _read_ranges(ranges, since, until):
    """Reads (path, start, end) ranges in this process: (Columns, ReadStats, lines per range)."""
    columns = Columns()
    stats = ReadStats("")
    lines_per_range = []
    collecting = gc.isenabled()
    gc.disable()  # the loop makes no reference cycles; collections would only cost time
    try:
        for path, start, end in ranges:
            lineno = 0
            first_example = len(stats.examples)
            for buf, length in _blocks(path, start, end):
                _scan_block(buf, length, lineno, path, since, until, columns, stats)
                lineno += _line_count(buf, length)
            lines_per_range.append((first_example, lineno))
            stats.lines += lineno
    finally:
        if collecting:
            gc.enable()
    stats.records = columns.n
    stats.bad_values = columns.bad_values
    return columns, stats, lines_per_range


def _worker(ranges, since, until):
    columns, stats, per_range = _read_ranges(ranges, since, until)
    return columns.frame(), stats, per_range


def read_columns(log_dir: str | Path, since: float | None = None, until: float | None = None,
                 workers: int | None = None):
    """(DataFrame, ReadStats) of every valid record ending in [since, until).

    ``workers``: processes to parse with; default one per CPU (at most 4) when the files
    hold more than PARALLEL_MIN_BYTES and this process may fork (see _can_fork), else 1.
    Parsing is CPU-bound Python, so processes, not threads.
    """
    paths = log_files(log_dir, since, until)
    total = sum(path.stat().st_size for path in paths)
    if workers is None:
        big = total > PARALLEL_MIN_BYTES
        workers = min(os.cpu_count() or 1, 4) if big and _can_fork() else 1
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers={workers!r} must be a whole number >= 1 (None: automatic)")
    plans = _plan(paths, workers) if paths else []
    if len(plans) <= 1:
        columns, stats, _ = _read_ranges([(p, 0, p.stat().st_size) for p in paths], since, until)
        stats.log_dir, stats.files = str(log_dir), [str(p) for p in paths]
        return columns.frame(), stats
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(len(plans), mp_context=mp.get_context("fork")) as pool:
        results = list(pool.map(_worker, plans, [since] * len(plans), [until] * len(plans)))
    return _merge(results, plans, str(log_dir), [str(p) for p in paths])


def _can_fork() -> bool:
    """Forking is cheap and safe only from a single-threaded process: a fork copies locks that
    other threads may hold. Notebook kernels and servers have threads, so they read serially;
    the CLI is single-threaded. (forkserver/spawn would re-run an unguarded __main__ script.)"""
    import multiprocessing as mp
    import threading
    return "fork" in mp.get_all_start_methods() and threading.active_count() == 1


def _merge(results, plans, log_dir: str, files: list[str]):
    """One DataFrame and ReadStats from the workers' parts, with line numbers made file-wide."""
    import pandas as pd

    stats = ReadStats(log_dir, files=files)
    lines_before: Counter = Counter()  # lines of each file in earlier ranges
    frames = []
    for (frame, part, per_range), plan in zip(results, plans):
        frames.append(frame)
        stats.lines += part.lines
        stats.records += part.records
        stats.outside_period += part.outside_period
        stats.bad_values += part.bad_values
        stats.skipped.update(part.skipped)
        stats.ignored_names |= part.ignored_names
        bounds = [first for first, _ in per_range] + [len(part.examples)]
        for k, ((path, _, _), (first, lines)) in enumerate(zip(plan, per_range)):
            for name, line, reason in part.examples[bounds[k]:bounds[k + 1]]:
                if len(stats.examples) < 5:
                    stats.examples.append((name, line + lines_before[path], reason))
            lines_before[path] += lines
    categorical = {name for frame in frames for name, dtype in frame.dtypes.items()
                   if isinstance(dtype, pd.CategoricalDtype)}
    df = pd.concat(frames, ignore_index=True)
    for name in categorical:  # concat turns categoricals with different categories to objects
        if not isinstance(df[name].dtype, pd.CategoricalDtype):
            df[name] = df[name].astype("category")
    if len(df) and not df["timestamp"].is_monotonic_increasing:
        df = df.sort_values("timestamp", kind="stable", ignore_index=True)
    return df, stats


def since_hours(hours: float | None, now: float | None = None) -> float | None:
    """The epoch second `hours` hours before `now` (None: no lower bound)."""
    if hours is None:
        return None
    return (time.time() if now is None else now) - hours * 3600.0


def read_problems(read: dict) -> list[str]:
    """What a read skipped or could not use, in words, from ``ReadStats.as_dict()`` (the
    ``read_stats`` of a DataFrame or a report's ``read``). Empty when the read was clean."""
    problems = []
    if read.get("skipped_lines"):
        reasons = ", ".join(f"{n} {_REASON_WORDS.get(r, r.replace('_', ' '))}"
                            for r, n in sorted(read.get("skipped_by_reason", {}).items()))
        problems.append(f"skipped {read['skipped_lines']} unreadable line(s): {reasons}")
    if read.get("bad_values"):
        problems.append(f"{read['bad_values']} field value(s) had the wrong type and were read as missing")
    if read.get("ignored_names"):
        problems.append(f"more than {MAX_STAGE_NAMES} stage names or {MAX_ATTRIBUTE_KEYS} attribute "
                        f"keys: ignored {', '.join(sorted(read['ignored_names'])[:5])}")
    return problems
