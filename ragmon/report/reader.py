"""Reading the request log - daily JSONL files and their Parquet history - into a DataFrame.

The engine is DuckDB (embedded, no server): it reads the JSONL files and the Parquet day
partitions in one query, on every core, and hands back Arrow columns that become the pandas
DataFrame of ``load_records()``. What it cannot use is never fatal and never silent:

* A line DuckDB cannot parse (a torn last line, a write cut short, a hand edit, a line nested
  too deep) comes back as an all-NULL row; a parsed record without usable times or with malformed
  stages fails the validity test in the query. Both are counted per file. For a file with such
  rows a second pass reads that file line by line (bounded line length, no recursion) and names
  each skipped line with its file, line number and reason.
* A line longer than MAX_LINE_BYTES stops DuckDB's JSON reader outright, so such a file is
  copied once to a temporary file without its over-long lines (each counted with its line
  number), and the copy is read instead. A hostile 1 GB line costs one linear pass.
* A value of the wrong type (a string where a number belongs, NaN) is read as missing and
  counted in ``bad_values``.

Records are read leniently: any stage names, any ``attributes`` keys, records from older versions
of the format (only ``timestamp`` and ``total_time``; naive timestamps taken as UTC).
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

# LogDirNotFound and file_date are imported from here by the CLI, retention and notebooks.
from ..checks import check_positive_int
from ..instrument.tokens import KINDS as TOKEN_KINDS
from .progress import QueryProgress
from .sources import LogDirNotFound, Sources, file_date, find_sources  # noqa: F401

# A record is one line of about 1 KB; 16 MiB (DuckDB's largest JSON object by default) leaves
# room for big metadata while bounding what one line may cost.
MAX_LINE_BYTES = 16 << 20
STRING_COLUMNS = ("status", "error_type", "operation", "model", "service", "env")
FLOAT_COLUMNS = ("cost", "relevance_score", "context_precision", "time_to_first_token")
# Every token kind (ragmon.instrument.tokens, the one table): its key under the record's
# "tokens" and its column. The kinds not always recorded are in a record only when non-zero.
TOKEN_KEYS = tuple(kind.record_key for kind in TOKEN_KINDS)
EXTRA_TOKEN_KINDS = tuple(kind.record_key for kind in TOKEN_KINDS if not kind.always_recorded)
COUNT_COLUMNS = tuple(kind.column for kind in TOKEN_KINDS) + ("cache_hits", "cache_misses")
# How a record was priced and what it cost before a reprice (see ragmon.report.costs).
PRICING_COLUMNS = ("cost_original", "price_match")
STAGE_PREFIX = "stage_"
ATTR_PREFIX = "attr_"
# Stage names and attribute keys become columns up to these many; further ones are counted and
# ignored. Like metric labels they must be bounded: a key per user would make a column per user.
MAX_STAGE_NAMES = 100
MAX_ATTRIBUTE_KEYS = 100
# A record ending this long after the clock is a writer's wrong clock or a bad time field: a
# period open to the present skips it (counted in ReadStats.future), or one record 50 years
# ahead would stretch every time axis over 50 years. Replicas' clocks disagree by seconds.
FUTURE_SLACK_SECONDS = 86400.0
# Read order (column seq): history rows are (file number << 40) + row, JSONL rows come after.
HISTORY_END = 1 << 62

# Reasons a line is skipped, as counted in ReadStats.skipped.
TORN = "torn_last_line"
CORRUPT = "corrupt_json"
NOT_OBJECT = "not_an_object"
BAD_FIELDS = "bad_fields"
TOO_LONG = "line_too_long"
UNEXPLAINED = "rejected_by_engine"
_REASON_WORDS = {TORN: "torn last line (a write in progress or cut short)",
                 CORRUPT: "not valid JSON", NOT_OBJECT: "JSON but not an object",
                 BAD_FIELDS: "missing or invalid start_time/total_time, or malformed stages",
                 TOO_LONG: f"longer than {MAX_LINE_BYTES >> 20} MiB",
                 UNEXPLAINED: "rejected by the engine"}
_MAX_EXAMPLES = 10


@dataclass
class ReadStats:
    """What a read saw: files, lines, records kept, and lines skipped by reason."""

    log_dir: str
    files: list[str] = field(default_factory=list)
    lines: int = 0
    records: int = 0  # valid records in the period
    outside_period: int = 0
    skipped: Counter = field(default_factory=Counter)
    examples: list[tuple] = field(default_factory=list)  # (file, line, reason), first few
    ignored_names: set = field(default_factory=set)  # stage names/attribute keys past the limits
    ignored_files: list[str] = field(default_factory=list)  # symlinks out of the log, not regular
    bad_values: int = 0  # numeric fields that held something else, read as missing
    history_rows: int = 0  # rows of the Parquet history partitions read
    future: int = 0  # records ending more than FUTURE_SLACK_SECONDS after the clock, skipped
    parser: str = "duckdb"

    @property
    def skipped_total(self) -> int:
        return sum(self.skipped.values())

    def skip(self, path, lineno: int, reason: str) -> None:
        self.skipped[reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append((Path(path).name, lineno, reason))

    def example_texts(self) -> list[str]:
        return [f"{name}:{line}: {_REASON_WORDS[reason]}" for name, line, reason in self.examples]

    @classmethod
    def of(cls, log_dir, sources: Sources) -> "ReadStats":
        """The empty stats of a read of `log_dir` (a directory, or several: named by `sources`)."""
        return cls(str(log_dir) if isinstance(log_dir, (str, os.PathLike))
                   else ", ".join(str(d) for d in sources.dirs))

    def as_dict(self) -> dict:
        return {"log_dir": self.log_dir, "files": list(self.files), "lines": self.lines,
                "records": self.records, "outside_period": self.outside_period,
                "skipped_lines": self.skipped_total, "skipped_by_reason": dict(self.skipped),
                "skipped_examples": self.example_texts(), "bad_values": self.bad_values,
                "future_records": self.future,
                "ignored_names": sorted(self.ignored_names),
                "ignored_files": list(self.ignored_files), "parser": self.parser}


def future_bound(since: float | None = None) -> float:
    """The end time from which a record of a period open to the present is skipped as dated in
    the future (see FUTURE_SLACK_SECONDS)."""
    return max(time.time(), since if since is not None else -math.inf) + FUTURE_SLACK_SECONDS


def since_hours(hours: float | None, now: float | None = None) -> float | None:
    """The epoch second `hours` hours before `now` (None: no lower bound)."""
    if hours is None:
        return None
    return (time.time() if now is None else now) - hours * 3600.0


# --- the query ------------------------------------------------------------------------------------

_STAGE_MAP = "MAP(VARCHAR, STRUCT(duration DOUBLE))"
# The record's attribution keys ({"tenant": "acme"}): every row has the column, NULL when none.
ATTRIBUTION_TYPE = "MAP(VARCHAR, VARCHAR)"


def _parse_number(x: str) -> str:
    """The DOUBLE a JSON value's text spells, else NULL. The engine hands a JSON value over as
    its minified text, so a number is the only value that parses: a string holding digits keeps
    its quotes, and true, null, lists and objects are no number. Computed once per field (in
    the scan's first projection) and used by the tests below, instead of parsing each value
    again for its JSON type and once more per use."""
    return f"TRY_CAST({x}::VARCHAR AS DOUBLE)"


def _num(d: str) -> str:
    """A parsed number (_parse_number) as a finite DOUBLE, else NULL."""
    return f"(CASE WHEN isfinite({d}) THEN {d} END)"


def _present(x: str) -> str:
    """The field holds a value other than JSON null."""
    return f"({x} IS NOT NULL AND {x}::VARCHAR <> 'null')"


def _bad_num(x: str, d: str) -> str:
    return f"({_present(x)} AND NOT coalesce(isfinite({d}), false))::INT"


def _count(d: str) -> str:
    return f"coalesce(CASE WHEN {d} = floor({d}) THEN TRY_CAST({d} AS BIGINT) END, 0)"


def _bad_count(x: str, d: str) -> str:
    return (f"({_present(x)} AND "
            f"coalesce({d} <> floor({d}) OR TRY_CAST({d} AS BIGINT) IS NULL, true))::INT")


def _iso_epoch(x: str) -> str:
    """Epoch seconds of an ISO-8601 text; a naive one is UTC. The offset is applied here because
    DuckDB's TIMESTAMP cast ignores it (TIMESTAMPTZ needs the ICU extension)."""
    offset = r"'([+-])(\d{2}):?(\d{2})$'"
    return (f"(epoch(TRY_CAST(regexp_replace({x}, '(Z|[+-]\\d{{2}}:?\\d{{2}})$', '') AS TIMESTAMP)) - "
            f"coalesce(CASE regexp_extract({x}, {offset}, 1) WHEN '-' THEN -1 WHEN '+' THEN 1 END * "
            f"(TRY_CAST(regexp_extract({x}, {offset}, 2) AS INT) * 3600 + "
            f"TRY_CAST(regexp_extract({x}, {offset}, 3) AS INT) * 60), 0))")


def _price_match() -> str:
    """The record's own word on how it was priced, from ``price_match`` or ``pricing``
    (a string, or an object with a ``match`` key)."""
    return ("coalesce(price_match, CASE WHEN json_type(pricing) = 'VARCHAR' "
            "THEN json_extract_string(pricing, '$') ELSE json_extract_string(pricing, '$.match') END)")


def _jsonl_columns(typed: bool, full: bool) -> dict:
    """The type each top-level field is read as. Numbers are read as JSON, whose text tells a
    number from a string of digits; `typed` reads the objects of fixed shape (tokens, cache) as
    structs and the attributes as a map, which is what makes the scan fast; a line that does
    not fit those types comes back as a rejected row, and the second pass reads it untyped."""
    container = lambda members: (  # noqa: E731
        "STRUCT(" + ", ".join(f"{m} JSON" for m in members) + ")" if typed else "JSON")
    return {
        "timestamp": "VARCHAR", "start_time": "JSON", "total_time": "JSON",
        "request_id": "VARCHAR", **{name: "VARCHAR" for name in STRING_COLUMNS},
        **{name: "JSON" for name in FLOAT_COLUMNS},
        "tokens": container(TOKEN_KEYS), "cache": container(("hits", "misses")),
        "stages": _STAGE_MAP if typed else "JSON",
        "attributes": "MAP(VARCHAR, JSON)" if typed and not full else "JSON",
        # Full readings keep it in extra_json, as written (exports, compaction's ``extra``).
        **({} if full else {"attribution": ATTRIBUTION_TYPE if typed else "JSON"}),
        "cost_original": "JSON", "price_match": "VARCHAR", "pricing": "JSON",
        "repriced_at": "VARCHAR"}


def _whole_lines(files_sql: str, types: dict) -> str:
    """Each line as read_json reads it with the columns `types`, from the line's whole JSON
    object, plus ``extra_json``: the top-level keys the format does not know, kept as they
    were (so that compaction and exports lose nothing a writer added)."""
    known = "[" + ", ".join(sql_quote(k) for k in types) + "]"
    fields = ", ".join(
        (f"json_extract_string(j, '$.{k}')" if v == "VARCHAR" else f"json_extract(j, '$.{k}')")
        + f" AS {k}" for k, v in types.items())
    unknown = f"list_filter(json_keys(j), k -> NOT list_contains({known}, k))"
    pointer = "'/' || replace(replace(k, '~', '~0'), '/', '~1')"
    return f"""(
        SELECT filename, {fields},
               CASE WHEN json_type(j) = 'OBJECT' AND len({unknown}) > 0 THEN
                   to_json(map_from_entries(list_transform({unknown},
                       k -> {{'key': k, 'value': json_extract(j, {pointer})}}))) END AS extra_json
        FROM read_ndjson_objects({files_sql}, filename=true, ignore_errors=true,
                                 maximum_object_size={MAX_LINE_BYTES}) t(j))"""


def _jsonl_select(files_sql: str, full: bool, typed: bool = True) -> str:
    """The JSONL files as normalized rows (one builder for both readings, see _jsonl_columns).
    ``full`` reads each line whole (for compaction and exports: stage metadata, pricing and
    unknown top-level keys survive), always untyped.

    ``stages`` must be an object of {duration: finite number} entries, or absent/null; any
    other JSON value (a list, a string) is read as no stages and counted in bad_values, as is
    a number field holding anything but a number, and non-object attributes."""
    typed = typed and not full
    types = _jsonl_columns(typed, full)
    columns = "{" + ", ".join(f"'{k}': '{v}'" for k, v in types.items()) + "}"
    source = (_whole_lines(files_sql, types) if full else
              f"""read_json({files_sql}, format='newline_delimited', columns={columns},
                       ignore_errors=true, filename=true, maximum_object_size={MAX_LINE_BYTES})""")
    member = ((lambda obj, key: f"{obj}.{key}") if typed
              else (lambda obj, key: f"json_extract({obj}, '$.{key}')"))
    counts = {**{f"{key}_tokens": member("tokens", key) for key in TOKEN_KEYS},
              "cache_hits": member("cache", "hits"), "cache_misses": member("cache", "misses")}
    attributes = ("attributes" if types["attributes"] != "JSON"
                  else "TRY_CAST(attributes AS MAP(VARCHAR, JSON))")
    bad_attributes = ("(attributes IS NOT NULL AND json_type(attributes) NOT IN ('OBJECT', 'NULL'))"
                      "::INT + " if types["attributes"] == "JSON" else "")
    # Every numeric field parsed once, in the first projection (d_<name>), tested below.
    numbers = {"start_time": "start_time", "total_time": "total_time",
               **{n: n for n in FLOAT_COLUMNS}, "cost_original": "cost_original", **counts}
    parsed = ", ".join(f"{_parse_number(x)} AS d_{n}" for n, x in numbers.items())
    bad = " + ".join([_bad_num(n, f"d_{n}") for n in FLOAT_COLUMNS]
                     + [_bad_count(x, f"d_{n}") for n, x in counts.items()])
    extra = (", stages AS stages_json, attributes AS attributes_json, timestamp AS timestamp_text, "
             "pricing, repriced_at, extra_json" if full else "")
    if full:
        attribution = (f"TRY_CAST(json_extract(extra_json::JSON, '$.attribution') "
                       f"AS {ATTRIBUTION_TYPE})")
    elif typed:
        attribution = "attribution"
    else:
        attribution = f"TRY_CAST(attribution AS {ATTRIBUTION_TYPE})"
    if typed:
        # The typed scan builds the map while parsing (reading stages as JSON text and casting
        # it costs the scan twice over), but reads a non-object value as NULL, like an absent
        # one: such rows are rejected here, and the second pass reads their lines untyped,
        # where a non-object is told from no stages and counted. The library always writes
        # stages, so only foreign or older records take that path.
        stages = "true AS stages_object, stages AS stage_map"
        bad_stages = ""
    else:
        stages = (f"coalesce(json_type(stages) = 'OBJECT', false) AS stages_object, "
                  f"CASE WHEN json_type(stages) = 'OBJECT' THEN TRY_CAST(stages AS {_STAGE_MAP}) "
                  "END AS stage_map")
        bad_stages = "(stages IS NOT NULL AND json_type(stages) NOT IN ('OBJECT', 'NULL'))::INT + "
    return f"""
    WITH raw AS (
        SELECT *, {parsed} FROM {source}
    ), shaped AS (
        SELECT *, {_num('d_start_time')} AS st, {_num('d_total_time')} AS tt, {stages} FROM raw
    ), timed AS (
        SELECT *, CASE WHEN tt IS NULL OR tt < 0 THEN NULL WHEN st IS NOT NULL THEN st + tt
                       ELSE {_iso_epoch('timestamp')} END AS end_time
        FROM shaped
    )
    SELECT filename AS file,
           end_time IS NOT NULL AND (NOT stages_object OR (stage_map IS NOT NULL AND
               coalesce(list_bool_and(list_transform(map_values(stage_map),
                   v -> coalesce(isfinite(v.duration), false))), true))) AS valid,
           end_time, end_time - tt AS start_time, tt AS total_time, request_id,
           {", ".join(STRING_COLUMNS)},
           {", ".join(f"{_num(f'd_{n}')} AS {n}" for n in FLOAT_COLUMNS)},
           {", ".join(f"{_count(f'd_{n}')} AS {n}" for n in counts)},
           stage_map, {attributes} AS attributes,
           {bad_attributes}{bad_stages}{bad} AS bad_values,
           {_num('d_cost_original')} AS cost_original, {_price_match()} AS price_match,
           {attribution} AS attribution{extra}
    FROM timed"""


def _parquet_select(files_sql: str, full: bool, token_kinds=TOKEN_KEYS, has_extra: bool = True,
                    has_attribution: bool = False) -> str:
    """The history partitions as normalized rows. `token_kinds`: the token kinds the
    partitions' ``tokens`` struct has (partitions written before a kind existed lack it);
    `has_extra`: whether they have the ``extra`` column (unknown top-level keys);
    `has_attribution`: whether they have the ``attribution`` column (older ones hold it in
    ``extra``)."""
    if has_attribution:
        attribution = "attribution"
    elif has_extra:
        attribution = f"TRY_CAST(json_extract(extra, '$.attribution') AS {ATTRIBUTION_TYPE})"
    else:
        attribution = f"NULL::{ATTRIBUTION_TYPE}"
    tokens = ", ".join(f"tokens.{kind} AS {kind}_tokens" if kind in token_kinds
                       else f"0::BIGINT AS {kind}_tokens" for kind in TOKEN_KEYS)
    extra_json = "extra::VARCHAR" if has_extra else "NULL::VARCHAR"
    extra = (", stages AS stages_json, to_json(attributes) AS attributes_json, "
             f"timestamp AS timestamp_text, pricing, repriced_at, {extra_json} AS extra_json"
             if full else "")
    return f"""
    SELECT filename AS file, true AS valid, start_time + total_time AS end_time, start_time,
           total_time, request_id, {", ".join(STRING_COLUMNS)}, {", ".join(FLOAT_COLUMNS)},
           {tokens},
           cache.hits AS cache_hits,
           cache.misses AS cache_misses, stage_durations AS stage_map, attributes, 0 AS bad_values,
           cost_original, price_match, {attribution} AS attribution,
           (list_position({files_sql}, filename)::BIGINT << 40) + file_row_number AS seq{extra}
    FROM read_parquet({files_sql}, filename=true, union_by_name=true, file_row_number=true)"""


def token_kinds(struct_type: str) -> list[str]:
    """The token kinds a Parquet ``tokens`` STRUCT type has (older partitions lack newer
    kinds): STRUCT("input" BIGINT, output BIGINT, ...), a keyword quoted."""
    present = set(re.findall(r'[(,]\s*"?(\w+)"? ', struct_type))
    return [k for k in TOKEN_KEYS if k in present]


def sql_list(paths) -> str:
    return "[" + ", ".join("'" + str(p).replace("'", "''") + "'" for p in paths) + "]"


def connect(threads: int | None = None, spill_dir: Path | None = None,
            memory_limit: str = "1GB"):
    """A DuckDB connection set up for the log: UTC, no progress bar of its own (ours is tqdm),
    and `threads` threads (default: every core). With `spill_dir`, DuckDB's memory is bounded
    by `memory_limit` and what does not fit spills there."""
    import duckdb

    con = duckdb.connect()
    # Progress is tracked (our bar reads it) but DuckDB prints none of its own. Inside Jupyter
    # DuckDB refuses to track it without ipywidgets: the report then runs without a bar.
    try:
        con.execute("SET enable_progress_bar_print = false; SET enable_progress_bar = true")
    except duckdb.Error:
        pass
    if spill_dir is not None:  # big writes (compaction) spill here instead of growing in RAM
        con.execute(f"SET temp_directory = {sql_quote(str(spill_dir))}; "
                    f"SET memory_limit = {sql_quote(memory_limit)}")
    if threads is not None:
        check_positive_int("workers", threads, "workers=2 (None: every core)")
        con.execute(f"SET threads = {threads}")
    return con


# --- over-long lines ------------------------------------------------------------------------------

def bounded_lines(path: Path, limit: int = MAX_LINE_BYTES) -> Iterator[tuple[int, bytes | None]]:
    """(line number, line) for each line of `path`; a line longer than `limit` bytes is
    (number, None), read past in pieces so it never sits in memory whole."""
    with open(path, "rb") as f:
        lineno = 0
        while True:
            line = f.readline(limit + 1)
            if not line:
                return
            lineno += 1
            if len(line) > limit:
                while line and not line.endswith(b"\n"):
                    line = f.readline(1 << 20)
                yield lineno, None
            else:
                yield lineno, line


def copy_line(path: Path, number: int, out) -> None:
    """Copies line `number` of `path` to `out` in pieces (it may be any length)."""
    with open(path, "rb") as f:
        for _ in range(number - 1):
            while True:
                piece = f.readline(1 << 20)
                if not piece or piece.endswith(b"\n"):
                    break
        while True:
            piece = f.readline(1 << 20)
            out.write(piece)
            if not piece or piece.endswith(b"\n"):
                break
        if piece and not piece.endswith(b"\n"):
            out.write(b"\n")


def _without_long_lines(path: Path, into: Path, stats: ReadStats, counted: Counter,
                        keep_rejected=None) -> Path:
    """A copy of `path` without its over-long lines (each counted, and kept in `keep_rejected`
    when given), for DuckDB to read."""
    copy = into / f"{len(list(into.iterdir()))}_{path.name}"
    with open(copy, "wb") as out:
        for lineno, line in bounded_lines(path):
            if line is None:
                stats.skip(path, lineno, TOO_LONG)
                counted[str(path)] += 1
                if keep_rejected is not None:
                    copy_line(path, lineno, keep_rejected)
            else:
                out.write(line)
    return copy


# --- naming the skipped lines ----------------------------------------------------------------------

def line_problem(line: bytes) -> tuple[str | None, dict | None]:
    """(reason, None) for a line that is not a usable record, (None, record) for one that is.
    The same rules as the query's: this is how a skipped line gets its name."""
    try:
        record = json.loads(line)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
        return (CORRUPT if line.endswith(b"\n") else TORN), None
    if type(record) is not dict:
        return NOT_OBJECT, None
    if end_time(record) is None:
        return BAD_FIELDS, None
    stages = record.get("stages")
    if type(stages) is dict:  # any other value is read as no stages (and counted)
        for entry in stages.values():
            duration = entry.get("duration") if type(entry) is dict else None
            if type(duration) not in (int, float) or not math.isfinite(duration):
                return BAD_FIELDS, None
    return None, record


def end_time(record: dict) -> float | None:
    """End of the request in epoch seconds from start_time + total_time (or the ISO timestamp),
    or None if total_time is not a finite number >= 0 or neither time is usable."""
    from datetime import datetime, timezone

    start, total = record.get("start_time"), record.get("total_time")
    if type(total) not in (int, float) or not math.isfinite(total) or total < 0:
        return None
    if type(start) in (int, float) and math.isfinite(start):
        return start + total
    stamp = record.get("timestamp")
    if isinstance(stamp, str):
        try:
            parsed = datetime.fromisoformat(stamp)
        except ValueError:
            return None
        if parsed.tzinfo is None:  # older records wrote naive timestamps: taken as UTC
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    return None


def second_pass(path: Path, rejected: set[int], rows: int, stats: ReadStats, recovered,
                keep_rejected=None, cut_out: bool = False) -> int:
    """Reads the lines of `path` behind the engine's rejected rows (`rejected`: ordinals among
    the file's non-blank lines, counted from 1, over-long lines left out as in the engine's
    copy when `cut_out`). Each is named with its line number and reason, or - when it is a record after all
    (a value of an unexpected type; or a good line the engine's error recovery swallowed after a
    bad one) - written to `recovered` to be read leniently. Returns the file's line count."""
    ordinal = lines = 0
    for lineno, line in bounded_lines(path):
        lines = lineno
        if line is None and cut_out:
            continue  # counted when it was cut out of the engine's copy
        if line is not None and not line.strip():
            continue  # a blank line is no record (and no row)
        ordinal += 1
        if ordinal not in rejected:
            continue
        if line is None:
            stats.skip(path, lineno, TOO_LONG)
            if keep_rejected is not None:
                copy_line(path, lineno, keep_rejected)
            continue
        reason, _ = line_problem(line)
        if reason is not None:
            stats.skip(path, lineno, reason)
            if keep_rejected is not None:
                keep_rejected.write(line if line.endswith(b"\n") else line + b"\n")
        else:
            recovered.write(line if line.endswith(b"\n") else line + b"\n")
    if ordinal != rows:  # the engine's rows and the lines no longer pair up: say so
        stats.skipped[UNEXPLAINED] += abs(rows - ordinal)
    return lines


# --- reading ----------------------------------------------------------------------------------------

def parquet_rows(con, parquet, full: bool = False) -> str:
    """The SELECT of the rows of the history partitions `parquet` (LogFiles), normalized as
    ``all_rows`` has them (the partitions' columns are looked up on `con`)."""
    files = sql_list([f.path for f in parquet])
    described = {name: kind for name, kind, *_ in con.execute(
        f"DESCRIBE SELECT * FROM read_parquet({files}, union_by_name=true)").fetchall()}
    return _parquet_select(files, full, token_kinds(described.get("tokens", "")),
                           "extra" in described, "attribution" in described)


def load_rows(sources: Sources, since: float | None = None, until: float | None = None, *,
              full: bool = False, workers: int | None = None, progress: str | None = None,
              stats: ReadStats | None = None, keep_rejected=None, spill_dir: Path | None = None,
              memory_limit: str = "1GB", count_history: bool = True, skip_future: bool = True):
    """(DuckDB connection with the view ``all_rows``, SQL condition for the valid rows of the
    period, ReadStats); the connection is None when there is no file to read.

    ``seq`` is each row's place in the read order (the history first, then the JSONL rows):
    with end_time it tells which of two rows came first. `count_history`: count the history's
    rows outside the period here (a scan); without it, ``stats.outside_period`` leaves them to
    the caller, who counts the rows inside (``seq < HISTORY_END``).

    The connection's database is its own, in memory; the views and tables live in it (not
    TEMP), so that cursors of the connection on other threads see them.
    The JSONL files are read once into the table ``log_rows`` (their rejected rows need a
    second look); the Parquet history is scanned in place by the view, column by column.
    `keep_rejected`: a binary file that receives every skipped line as it was. `skip_future`:
    a period open to the present leaves out records dated in the future (compaction keeps
    them: it moves records, it does not judge them)."""
    stats = stats if stats is not None else ReadStats(", ".join(str(d) for d in sources.dirs))
    stats.files = [str(f.path) for f in sources.files]
    stats.ignored_files = list(sources.ignored)
    future = future_bound(since) if until is None and skip_future else None
    inside = "valid" + (f" AND end_time >= {since!r}" if since is not None else "") + (
        f" AND end_time < {until!r}" if until is not None else "") + (
        f" AND end_time < {future!r}" if future is not None else "")
    in_future = f"valid AND end_time >= {future!r}" if future is not None else "false"
    if not sources.files:
        return None, inside, stats
    con = connect(workers, spill_dir, memory_limit)
    parts = []
    if sources.parquet:
        files = sql_list([f.path for f in sources.parquet])
        con.execute(f"CREATE VIEW history_rows AS {parquet_rows(con, sources.parquet, full)}")
        parts.append("SELECT * FROM history_rows")
        if count_history:
            rows, outside, ahead = con.execute(
                f"SELECT count(*), count(*) FILTER (NOT ({inside})), count(*) FILTER ({in_future}) "
                "FROM history_rows").fetchone()
            stats.outside_period += outside - ahead
            stats.future += ahead
        else:  # from the files' footers, no scan
            [(rows,)] = con.execute(
                f"SELECT coalesce(sum(num_rows), 0) FROM parquet_file_metadata({files})").fetchall()
        stats.lines += rows
        stats.history_rows += rows
    if sources.jsonl:
        _load_jsonl(con, sources, inside, in_future, full, progress, stats, keep_rejected)
        parts.append(f"SELECT *, {HISTORY_END} + rowid AS seq FROM log_rows")
    con.execute("CREATE VIEW all_rows AS " + " UNION ALL BY NAME ".join(parts))
    return con, inside, stats


def _load_jsonl(con, sources: Sources, inside: str, in_future: str, full: bool, progress,
                stats: ReadStats, keep_rejected) -> None:
    cut = Counter()  # over-long lines cut out of each file
    with tempfile.TemporaryDirectory(prefix="ragmon-read-") as scratch:
        readable = {str(f.path): f.path for f in sources.jsonl}
        while True:
            sql = _jsonl_select(sql_list(list(readable.values())), full)
            try:
                with QueryProgress(con, progress or "reading", delay=1.0 if progress else 1e9):
                    con.execute(f"CREATE OR REPLACE TABLE log_rows AS {sql}")
                break
            except Exception as exc:  # duckdb.InvalidInputException: a line past the limit
                original = _file_over_limit(exc, readable)
                if original is None:
                    raise
                readable[original] = _without_long_lines(Path(original), Path(scratch), stats, cut,
                                                         keep_rejected)
        names = {str(v): k for k, v in readable.items()}
        _count_rows(con, inside, in_future, names, stats, cut, Path(scratch), full,
                    keep_rejected)


def read_table(log_dir, since: float | None = None, until: float | None = None, *,
               full: bool = False, workers: int | None = None, progress: str | None = None):
    """(pyarrow.Table of the valid records ending in [since, until), oldest first, ReadStats).

    Columns: end_time, the load_records() columns with stage_<name> durations and attr_<key>
    values as JSON text; ``full`` adds the whole stages (metadata included), attributes and
    pricing as JSON, for exports, compaction and repricing."""
    import pyarrow.compute as pc

    sources = find_sources(log_dir, since, until)
    stats = ReadStats.of(log_dir, sources)
    con, inside, stats = load_rows(sources, since, until, full=full, workers=workers,
                                   progress=progress, stats=stats)
    if con is None:
        return _empty_table(full), stats
    stages = _keys(con, "stage_map", inside, MAX_STAGE_NAMES, "stage", stats)
    attributes = _keys(con, "attributes", inside, MAX_ATTRIBUTE_KEYS, "attribute", stats)
    columns = ["end_time", "request_id", "start_time", "total_time", *STRING_COLUMNS,
               *FLOAT_COLUMNS, *COUNT_COLUMNS, *PRICING_COLUMNS]
    if full:
        columns += ["stages_json", "attributes_json", "timestamp_text", "pricing", "repriced_at",
                    "extra_json"]
    select = ", ".join(columns + [f"stage_map[{sql_quote(k)}].duration AS {_ident(STAGE_PREFIX + k)}"
                                  for k in stages]
                       + [f"attributes[{sql_quote(k)}]::VARCHAR AS {_ident(ATTR_PREFIX + k)}"
                          for k in attributes])
    table = con.execute(f"SELECT {select} FROM all_rows WHERE {inside}").to_arrow_table()
    con.close()
    ends = table["end_time"].to_numpy(zero_copy_only=False)
    if len(ends) > 1 and not (ends[1:] >= ends[:-1]).all():
        table = table.take(pc.sort_indices(table["end_time"]))  # stable: ties keep read order
    stats.records = table.num_rows
    return table, stats


def export_csv(log_dir, target: Path, since: float | None = None, *,
               workers: int | None = None, progress: str | None = None) -> tuple[int, ReadStats]:
    """Writes the valid records ending in [since, now] to `target` as CSV, in the engine
    (DuckDB COPY: no DataFrame, no Python object per record), oldest first: the load_records()
    columns, the timestamp as UTC time, one stage_<name> and attr_<key> column each. An
    attribute cell holds a string as it is and any other value as JSON (a list reads back
    with json.loads). Returns (records written, ReadStats)."""
    sources = find_sources(log_dir, since, None)
    stats = ReadStats.of(log_dir, sources)
    with tempfile.TemporaryDirectory(prefix="ragmon-export-") as spill:
        con, inside, stats = load_rows(sources, since, None, workers=workers, progress=progress,
                                       stats=stats, spill_dir=Path(spill))
        columns = ["request_id", "strftime(make_timestamp((end_time * 1e6)::BIGINT), "
                   "'%Y-%m-%d %H:%M:%S.%f') || '+00:00' AS timestamp", "start_time",
                   "total_time", *FLOAT_COLUMNS, *STRING_COLUMNS, *COUNT_COLUMNS,
                   *PRICING_COLUMNS]
        if con is None:
            Path(target).write_text(",".join(c.split(" AS ")[-1] for c in columns) + "\n")
            return 0, stats
        try:
            stages = _keys(con, "stage_map", inside, MAX_STAGE_NAMES, "stage", stats)
            attributes = _keys(con, "attributes", inside, MAX_ATTRIBUTE_KEYS, "attribute", stats)
            value = "attributes[{0}]"
            columns += [f"stage_map[{sql_quote(k)}].duration AS {_ident(STAGE_PREFIX + k)}"
                        for k in stages]
            columns += [f"CASE json_type({value.format(sql_quote(k))}) "
                        f"WHEN 'VARCHAR' THEN json_extract_string({value.format(sql_quote(k))}, '$') "
                        f"WHEN 'NULL' THEN NULL ELSE {value.format(sql_quote(k))}::VARCHAR END "
                        f"AS {_ident(ATTR_PREFIX + k)}" for k in attributes]
            out = str(target).replace("'", "''")
            [(written,)] = con.execute(
                f"COPY (SELECT {', '.join(columns)} FROM all_rows WHERE {inside} "
                f"ORDER BY end_time, seq) TO '{out}' (FORMAT csv, HEADER)").fetchall()
        finally:
            con.close()
    stats.records = int(written)
    return int(written), stats


def sql_quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def _keys(con, column: str, inside: str, limit: int, kind: str, stats: ReadStats) -> list[str]:
    """The distinct keys of a map column, sorted, at most `limit` (the rest are named in
    stats.ignored_names: like metric labels, columns must be bounded)."""
    keys = [row[0] for row in con.execute(
        f"SELECT DISTINCT unnest(map_keys({column})) AS k FROM all_rows WHERE {inside} "
        "ORDER BY k").fetchall() if row[0] is not None]
    for key in keys[limit:]:
        if len(stats.ignored_names) < 20:
            stats.ignored_names.add(f"{kind} {key}")
    return keys[:limit]


def _file_over_limit(exc: Exception, readable: dict) -> str | None:
    message = str(exc)
    if "maximum_object_size" not in message:
        return None
    for original, path in readable.items():
        if f'"{path}"' in message and Path(path) == Path(original):
            return original
    return None


def _count_rows(con, inside: str, in_future: str, names: dict, stats: ReadStats, cut: Counter,
                scratch: Path, full: bool, keep_rejected=None) -> None:
    """Per-file lines, outside the period and bad values; the rejected rows of a file are
    named or recovered by second_pass(), and recovered records are read into log_rows."""
    per_file = con.execute(
        "SELECT file, count(*), count(*) FILTER (NOT valid) FROM log_rows GROUP BY file "
        "ORDER BY file").fetchall()
    recovered_files = []
    seen = set()
    for name, rows, rejected in per_file:
        original = names.get(name, name)
        seen.add(original)
        if not rejected and not cut.get(original):
            stats.lines += int(rows)  # a clean file: one row per (non-blank) line
            continue
        ordinals = {row[0] for row in con.execute(
            "SELECT ordinal FROM (SELECT valid, row_number() OVER (ORDER BY rowid) AS ordinal "
            "FROM log_rows WHERE file = ?) WHERE NOT valid", [name]).fetchall()}
        target = scratch / f"recovered-{len(recovered_files)}.jsonl"
        with open(target, "wb") as recovered:
            stats.lines += second_pass(Path(original), ordinals, int(rows), stats, recovered,
                                       keep_rejected, cut_out=bool(cut.get(original)))
        if target.stat().st_size:
            recovered_files.append(target)
    for original in cut:
        if original not in seen:
            with open(scratch / "recovered-none.jsonl", "wb") as recovered:
                stats.lines += second_pass(Path(original), set(), 0, stats, recovered,
                                           keep_rejected, cut_out=True)
    if recovered_files:
        con.execute(f"INSERT INTO log_rows BY NAME "
                    f"{_jsonl_select(sql_list(recovered_files), full, typed=False)}")
        # What the line rules call a record but the query does not: counted, never silent.
        lost = con.execute("SELECT count(*) FROM log_rows WHERE NOT valid AND file IN "
                           f"{tuple(map(str, recovered_files)) + ('',)}").fetchone()[0]
        if lost:
            stats.skipped[UNEXPLAINED] += lost
    for outside, ahead, bad in con.execute(
            f"SELECT count(*) FILTER (valid AND NOT ({inside})), count(*) FILTER ({in_future}), "
            f"coalesce(sum(bad_values) FILTER ({inside}), 0) FROM log_rows").fetchall():
        stats.outside_period += int(outside) - int(ahead)
        stats.future += int(ahead)
        stats.bad_values += int(bad)


def _empty_table(full: bool):
    import pyarrow as pa

    fields = [("end_time", pa.float64()), ("request_id", pa.string()),
              ("start_time", pa.float64()), ("total_time", pa.float64()),
              *((n, pa.string()) for n in STRING_COLUMNS),
              *((n, pa.float64()) for n in FLOAT_COLUMNS), *((n, pa.int64()) for n in COUNT_COLUMNS),
              ("cost_original", pa.float64()), ("price_match", pa.string())]
    if full:
        fields += [("stages_json", pa.string()), ("attributes_json", pa.string()),
                   ("extra_json", pa.string()),
                   ("timestamp_text", pa.string()), ("pricing", pa.string()),
                   ("repriced_at", pa.string())]
    return pa.schema(fields).empty_table()


def read_columns(log_dir, since: float | None = None, until: float | None = None,
                 workers: int | None = None, progress: str | None = None):
    """(DataFrame, ReadStats) of every valid record ending in [since, until), oldest first.
    ``workers``: DuckDB threads (default every core)."""
    import pyarrow as pa

    holder = list(read_table(log_dir, since, until, workers=workers, progress=progress))
    stats = holder.pop()
    df = to_frame(holder, stats)
    pa.default_memory_pool().release_unused()  # Arrow's allocator keeps freed memory otherwise
    return df, stats


# --- Arrow to the DataFrame ---------------------------------------------------------------------

def to_frame(table, stats: ReadStats | None = None):
    """The load_records() DataFrame from read_table()'s columns. Pass the table inside a list
    to let each Arrow column go as soon as it is converted (the peak is then about one copy of
    the data, not two)."""
    import pandas as pd
    import pyarrow.compute as pc

    holder = table if isinstance(table, list) else [table]
    n = holder[0].num_rows

    def take(name):
        column = holder[0][name]
        holder[0] = holder[0].drop_columns([name])
        return column

    def floats(name):
        return pc.cast(take(name), "float64").to_numpy(zero_copy_only=False)

    # Arrow-backed strings (pandas' str dtype): no Python object per request. Records of older
    # formats may lack an id; that column stays objects so a missing id reads as None.
    ids = take("request_id")
    data: dict = {"request_id": ids.to_pandas().array if not ids.null_count
                  else ids.to_numpy(zero_copy_only=False).astype(object)}
    data["timestamp"] = pd.to_datetime(floats("end_time"), unit="s", utc=True)
    for name in ("start_time", "total_time", *FLOAT_COLUMNS):
        data[name] = floats(name)
    for name in STRING_COLUMNS:
        data[name] = _categorical(take(name))
    for name in COUNT_COLUMNS:
        data[name] = pc.fill_null(pc.cast(take(name), "int64"), 0).to_numpy(zero_copy_only=False)
    data["cost_original"] = floats("cost_original")
    data["price_match"] = _categorical(take("price_match"))
    for name in list(holder[0].column_names):
        if name.startswith(STAGE_PREFIX):
            data[name] = floats(name)
        elif name.startswith(ATTR_PREFIX):
            data[name] = _attribute_column(take(name), n)
    return pd.DataFrame(data, copy=False)


def _categorical(column):
    import pyarrow.compute as pc

    return pc.dictionary_encode(column).to_pandas().array


def _attribute_column(texts, n: int):
    """One attribute from its JSON texts (an Arrow column): float64 when every value is a
    number (or missing), a categorical when every value is a string, else objects (lists as
    shared tuples, so they can be counted). Each distinct text is decoded once, and no Python
    object is made per row except in the last case."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(texts).combine_chunks() if isinstance(
        texts, pa.ChunkedArray) else pc.dictionary_encode(texts)
    codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype("int64")
    decoded = [decode_json(u) for u in encoded.dictionary.to_pylist()]
    kinds = {type(v) for v in decoded}
    if kinds <= {int, float, type(None)}:
        lookup = np.array([np.nan if v is None else v for v in decoded] + [np.nan], dtype="float64")
        return lookup[codes]
    if kinds <= {str, type(None)}:
        names = sorted({v for v in decoded if v is not None})
        index = {name: i for i, name in enumerate(names)}
        lookup = np.array([index.get(v, -1) if v is not None else -1 for v in decoded] + [-1],
                          dtype="int32")
        full = lookup[codes]
        if len(names) <= max(100, n // 2):
            return pd.Categorical.from_codes(full, categories=names)
        return np.array(names + [None], dtype=object)[full]
    objects = np.empty(len(decoded) + 1, dtype=object)
    for i, value in enumerate(decoded):
        objects[i] = hashable(value)
    return objects[codes]


def decode_json(text):
    if text is None:
        return None
    try:
        return json.loads(text)
    except (ValueError, RecursionError):
        return text


def hashable(value):
    return tuple(value) if type(value) is list else value


# --- records as written, for exports ----------------------------------------------------------------

def record_from_row(row: dict) -> dict:
    """A record dict (the format of ragmon.instrument.records) from a read_table(full=True) row."""
    stages = decode_json(row.get("stages_json")) if row.get("stages_json") is not None else None
    attributes = decode_json(row.get("attributes_json")) if row.get("attributes_json") else None
    record = {
        "timestamp": row.get("timestamp_text"),
        "start_time": row["start_time"], "total_time": row["total_time"],
        "request_id": row["request_id"], "service": row["service"], "env": row["env"],
        "operation": row["operation"], "model": row["model"], "status": row["status"],
        "error_type": row["error_type"], "stages": stages if stages is not None else {},
        "tokens": {kind.record_key: row[kind.column] for kind in TOKEN_KINDS
                   if kind.always_recorded or row.get(kind.column)},
        "cost": row["cost"], "relevance_score": row["relevance_score"],
        "context_precision": row["context_precision"],
        "time_to_first_token": row["time_to_first_token"],
        "cache": {"hits": row["cache_hits"], "misses": row["cache_misses"]},
        "attributes": attributes if attributes is not None else {},
    }
    if record["timestamp"] is None:
        from ..instrument.records import iso_utc
        record["timestamp"] = iso_utc(row["end_time"])
    if row.get("cost_original") is not None:
        record["cost_original"] = row["cost_original"]
    if row.get("repriced_at") is not None:
        record["repriced_at"] = row["repriced_at"]
    if row.get("price_match") is not None:
        record["price_match"] = row["price_match"]
    if row.get("pricing") is not None:
        record["pricing"] = decode_json(row["pricing"])
    extra = decode_json(row.get("extra_json"))
    if isinstance(extra, dict):  # keys a writer added that the format does not know
        for key, value in extra.items():
            record.setdefault(key, value)
    return record


def iter_records(log_dir, since: float | None = None, until: float | None = None,
                 stats: ReadStats | None = None, batch_rows: int = 50_000) -> Iterator[dict]:
    """Each valid record ending in [since, until), oldest first, as a record dict with its stage
    metadata (for exports). Pass a ReadStats to learn what was read and skipped."""
    table, read = read_table(log_dir, since, until, full=True)
    table = table.drop_columns([c for c in table.column_names
                                if c.startswith((STAGE_PREFIX, ATTR_PREFIX))])
    if stats is not None:
        stats.__dict__.update(read.__dict__)
    for batch in table.to_batches(batch_rows):
        for row in batch.to_pylist():
            yield record_from_row(row)


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
    if read.get("future_records"):
        problems.append(f"skipped {read['future_records']} record(s) ending more than "
                        f"{FUTURE_SLACK_SECONDS / 3600:g} h after this machine's clock (a writer's "
                        "clock or a bad start_time/total_time; fix the clock, or remove the "
                        "records with export and a filter)")
    if read.get("ignored_names"):
        problems.append(f"more than {MAX_STAGE_NAMES} stage names or {MAX_ATTRIBUTE_KEYS} attribute "
                        f"keys: ignored {', '.join(sorted(read['ignored_names'])[:5])}")
    if read.get("ignored_files"):
        problems.append(f"did not read {len(read['ignored_files'])} file(s) that are not the log's "
                        f"own regular files (symlinks out of the log directory, devices, pipes): "
                        f"{', '.join(read['ignored_files'][:3])}")
    return problems
