"""Costs over time: which spend was priced by the table and which by the default, repricing past
records with a corrected price file, and reconciling computed spend with a provider's export.

* ``price_for()`` is the one place a record's unit prices are looked up: the price table
  (ragmon.instrument.pricing: the user's file over the price database) at the record's own
  time, for the provider and service tier its ``pricing`` names and its whole prompt (for
  long-context tiers), so a past record gets the price that was in force when it ran.
* A record is **default-priced** when it says so (``price_match`` or ``pricing.match`` is
  "default") or, when it does not say, when its model is missing from the price table.
* ``reprice`` rewrites whole past days (JSONL files no writer appends to any more, and Parquet
  history partitions), each file to a temporary file in its own directory and renamed over it.
  A repriced record keeps what it cost before in ``cost_original`` (the first figure, if it is
  repriced again), and gains ``repriced_at`` and ``repriced_with`` (the price file's name). The
  day in progress is left alone and said so.
* ``reconcile`` compares spend by day and model with a provider's CSV (see read_invoice()).
"""
from __future__ import annotations

import csv
import json
import math
import os
import tempfile
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from pathlib import Path

from ..instrument.pricing import PriceMatch, PriceTable
from ..instrument.tokens import kinds

DEFAULT_TOLERANCE = 0.02
# A day is repriced once no writer appends to it any more (as for compaction).
GRACE_SECONDS = 3600


def billed_kinds() -> dict[str, str]:
    """The billed token kinds of a record (keys of its "tokens") and the price field of each,
    from the one table of token kinds."""
    return {kind.record_key: kind.price_field for kind in kinds() if kind.price_field is not None}


def prompt_kinds() -> tuple[str, ...]:
    """The billed kinds that together are the whole prompt, which long-context tiers go by."""
    return tuple(kind.record_key for kind in kinds() if kind.price_field is not None
                 and "input" in (kind.name, kind.part_of))


def price_table(prices_file: str | Path | None, settings) -> PriceTable:
    """The settings' price table, or one from `prices_file` (aliases, patterns and dated
    versions included) with the settings' default."""
    return PriceTable.from_settings(settings, prices_file)


def price_for(table: PriceTable, model: str | None, when: date | datetime | None, *,
              pricing=None, prompt_tokens: int | None = None) -> PriceMatch:
    """The price in force at `when` (the record's end, or its UTC day) for a request of
    `model`, with the provider and service tier its ``pricing`` field names."""
    pricing = pricing if isinstance(pricing, dict) else {}
    provider, tier = pricing.get("provider"), pricing.get("service_tier")
    return table.match(model, when, provider=provider if isinstance(provider, str) else None,
                       service_tier=tier if isinstance(tier, str) else None,
                       prompt_tokens=prompt_tokens)


def _ended_at(record: dict, day: date) -> date | datetime:
    """When a record's request ended (UTC), or its day when the record does not say."""
    start, total = record.get("start_time"), record.get("total_time")
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
           for v in (start, total)):
        ended = datetime.fromtimestamp(start + total, timezone.utc)
        if ended.date() == day:
            return ended
    return day


def default_priced_mask(df, table: PriceTable):
    """Per row: was it priced at the default? The record's own word first (price_match), else
    its model is missing from `table`."""
    import numpy as np

    said = df["price_match"].astype(object).to_numpy() if "price_match" in df else None
    models = df["model"].astype(object)
    defaulted = {m for m in models.dropna().unique() if table.match(m).match == "default"}
    unknown = models.isin(list(defaulted)).to_numpy()
    if said is None:
        return unknown
    has_word = np.array([value is not None and value == value for value in said])
    return np.where(has_word, said == "default", unknown)


# --- reprice --------------------------------------------------------------------------------------

@dataclass
class RepriceResult:
    rows: list[dict] = field(default_factory=list)  # by day and model: requests, old, new, delta
    files: list[str] = field(default_factory=list)  # files rewritten (or that would be)
    records: int = 0
    skipped_today: int = 0  # records of the day in progress, left alone
    dry_run: bool = True
    notes: list[str] = field(default_factory=list)


def _repriced(record: dict, table: PriceTable, prices_name: str, stamp: str, day: date):
    """(new record, old cost, new cost), or None for a record that had no cost and no tokens."""
    tokens = record.get("tokens") if isinstance(record.get("tokens"), dict) else {}
    billed = billed_kinds()
    counts = {k: tokens.get(k, 0) for k in billed}
    counts = {k: c if isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
              else 0 for k, c in counts.items()}
    old = record.get("cost")
    old = old if isinstance(old, (int, float)) and not isinstance(old, bool) else None
    if old is None and not any(counts.values()):
        return None
    pricing = record.get("pricing")
    found = price_for(table, record.get("model"), _ended_at(record, day), pricing=pricing,
                      prompt_tokens=int(sum(counts[k] for k in prompt_kinds())))
    new = found.price.cost_by_kind({billed[k]: c for k, c in counts.items()})
    out = dict(record)
    out.setdefault("cost_original", old)
    out["cost"] = new
    out["price_match"] = found.match
    out["pricing"] = {**(pricing if isinstance(pricing, dict) else {}), **found.describe()}
    out["repriced_at"] = stamp
    out["repriced_with"] = prices_name
    return out, old, new


def _decoded(pricing) -> dict | None:
    """A Parquet row's pricing (JSON text) as a dict, or None."""
    if isinstance(pricing, str):
        try:
            pricing = json.loads(pricing)
        except ValueError:
            return None
    return pricing if isinstance(pricing, dict) else None


def _add(summary: dict, day: date, model, old, new) -> None:
    row = summary.setdefault((day.isoformat(), str(model)), [0, 0.0, 0.0])
    row[0] += 1
    row[1] += old or 0.0
    row[2] += new


def _write_atomically(path: Path, write) -> None:
    """Writes through `write(file)` to a new temporary file beside `path`, then renames it over
    `path`: a reader sees the old file or the new one, never half of one."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(name, path.stat().st_mode & 0o777)
        os.replace(name, path)
    finally:
        if os.path.exists(name):
            os.unlink(name)


def reprice_logs(log_dir, prices_file, settings, *, since: date | None = None,
                 dry_run: bool = True, now: float | None = None) -> RepriceResult:
    """Recomputes the cost of the records of whole past days (from `since`, inclusive) with the
    prices of `prices_file`. With ``dry_run`` nothing is written."""
    from ..instrument.records import encode
    from .reader import bounded_lines, line_problem
    from .rollups import write_rollup
    from .sources import jsonl_files, parquet_files, resolve_dirs

    table = price_table(prices_file, settings)
    now = time.time() if now is None else now
    stamp = datetime.fromtimestamp(now, timezone.utc).isoformat()
    name = Path(prices_file).name
    result = RepriceResult(dry_run=dry_run)
    summary: dict = {}
    for directory in resolve_dirs(log_dir):
        for entry in jsonl_files(directory):
            day = entry.day.date()
            if since is not None and day < since:
                continue
            in_progress = entry.start + 86400 + GRACE_SECONDS > now
            changed = _reprice_jsonl(entry.path, table, name, stamp, day, summary, result,
                                     in_progress=in_progress, write=not dry_run)
            if changed and not in_progress:
                result.records += changed
                result.files.append(str(entry.path))
        for entry in parquet_files(directory):
            day = entry.day.date()
            if since is not None and day < since:
                continue
            changed = _reprice_parquet(entry.path, table, name, stamp, day, summary, dry_run)
            if changed and not dry_run:
                # The day's costs changed: its rollup is rebuilt from the new records (a
                # stale one would not be used anyway: its fingerprint no longer matches).
                write_rollup(entry.path.parent, settings)
            if changed:
                result.records += changed
                result.files.append(str(entry.path))
    result.rows = [{"day": d, "model": m, "requests": n, "old": old, "new": new,
                    "delta": new - old} for (d, m), (n, old, new) in sorted(summary.items())]
    return result


def _reprice_jsonl(path: Path, table: PriceTable, name: str, stamp: str, day: date,
                   summary: dict, result: RepriceResult, *, in_progress: bool, write: bool) -> int:
    """Reprices one day file line by line, into a temporary file renamed over it when `write`
    and a record changed. Every other line - blank, unreadable, longer than any record - is
    kept as it was. Records of the day in progress are only counted. Returns the records
    repriced (or that would be)."""
    from ..instrument.records import encode
    from .reader import copy_line, bounded_lines, line_problem

    write = write and not in_progress
    changed = 0
    tmp = None
    if write:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if write else open(os.devnull, "wb")) as out:
            for lineno, line in bounded_lines(path):
                if line is None:  # longer than any record: copied in pieces, as it was
                    if write:
                        copy_line(path, lineno, out)
                    continue
                reason, record = line_problem(line) if line.strip() else ("blank", None)
                done = _repriced(record, table, name, stamp, day) if reason is None else None
                if done is None:
                    out.write(line if line.endswith(b"\n") else line + b"\n")
                    continue
                if in_progress:
                    result.skipped_today += 1
                    continue
                new_record, old, new = done
                _add(summary, day, record.get("model"), old, new)
                changed += 1
                out.write(encode(new_record))
            if write:
                out.flush()
                os.fsync(out.fileno())
        if write and changed:
            os.chmod(tmp, path.stat().st_mode & 0o777)
            os.replace(tmp, path)
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return changed


def _reprice_parquet(path: Path, table: PriceTable, name: str, stamp: str, day: date,
                     summary: dict, dry_run: bool) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    data = pq.read_table(path)
    n = data.num_rows
    if not n:
        return 0
    tokens = data["tokens"].combine_chunks()
    present = {tokens.type.field(i).name for i in range(tokens.type.num_fields)}
    billed = billed_kinds()
    counts = {k: pc.fill_null(tokens.field(k), 0).to_numpy(zero_copy_only=False).astype(float)
              if k in present else np.zeros(n) for k in billed}
    old = pc.cast(data["cost"], "float64").to_numpy(zero_copy_only=False)
    models = data["model"].to_pylist()
    ends = np.full(n, np.nan)
    if {"start_time", "total_time"} <= set(data.column_names):
        ends = (pc.cast(data["start_time"], "float64").to_numpy(zero_copy_only=False)
                + pc.cast(data["total_time"], "float64").to_numpy(zero_copy_only=False))
    pricings = (data["pricing"].to_pylist() if "pricing" in data.column_names else [None] * n)
    prompts = sum(counts[k] for k in prompt_kinds())
    new = np.empty(n)
    match, described = [], []
    for i, model in enumerate(models):
        pricing = _decoded(pricings[i])
        ended = day
        if math.isfinite(ends[i]) and datetime.fromtimestamp(ends[i], timezone.utc).date() == day:
            ended = datetime.fromtimestamp(ends[i], timezone.utc)
        found = price_for(table, model, ended, pricing=pricing, prompt_tokens=int(prompts[i]))
        new[i] = found.price.cost_by_kind({billed[k]: float(counts[k][i]) for k in billed})
        match.append(found.match)
        described.append(json.dumps({**(pricing or {}), **found.describe()}))
    touched = ~np.isnan(old) | (sum(counts.values()) > 0)
    for i in np.flatnonzero(touched):
        _add(summary, day, models[i], None if np.isnan(old[i]) else old[i], new[i])
    if dry_run or not touched.any():
        return int(touched.sum())
    original = pc.cast(data["cost_original"], "float64").to_numpy(zero_copy_only=False) \
        if "cost_original" in data.column_names else np.full(n, np.nan)
    keep_original = np.where(np.isnan(original), old, original)
    columns = {
        "cost": pa.array(np.where(touched, new, old), mask=~touched & np.isnan(old)),
        "cost_original": pa.array(np.where(touched, keep_original, original),
                                  mask=np.isnan(np.where(touched, keep_original, original))),
        "price_match": pa.array([m if t else None for m, t in zip(match, touched)], pa.string()),
        "pricing": pa.array([d if t else p for d, p, t in zip(described, pricings, touched)],
                            pa.string()),
        "repriced_at": pa.array([stamp if t else None for t in touched], pa.string()),
        "repriced_with": pa.array([name if t else None for t in touched], pa.string()),
    }
    for column, values in columns.items():
        if column in data.column_names:
            data = data.set_column(data.schema.get_field_index(column), column, values)
        else:
            data = data.append_column(column, values)
    _write_atomically(path, lambda f: pq.write_table(data, f, compression="zstd"))
    return int(touched.sum())


# --- reconcile ----------------------------------------------------------------------------------

# The CSV shapes read_invoice() accepts, by their header. Amounts are dollars unless noted.
INVOICE_SHAPES = {
    # A plain table: one row per day and model.
    "simple": ("date", "model", "cost"),
    # OpenAI's Costs API (GET /v1/organization/costs, group_by=line_item) flattened to CSV: a
    # bucket's start_time (Unix seconds), amount_value (dollars) and line_item, e.g.
    # "gpt-4o-mini-2024-07-18, input"; the model is the line item before its comma.
    "openai": ("start_time", "amount_value", "line_item"),
    # Anthropic's Cost Report (GET /v1/organizations/cost_report, group_by=description) flattened
    # to CSV: starting_at (RFC 3339), amount (a decimal string in cents: "123.45" is $1.23),
    # model.
    "anthropic": ("starting_at", "amount", "model"),
}


def read_invoice(path: str | Path) -> tuple[dict, str]:
    """({(day ISO, model): dollars}, shape) from a provider's CSV (see INVOICE_SHAPES). Rows of
    one day and model (input, output, cache lines) are summed."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"invoice file {str(path)!r} does not exist")
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = {name.strip().lower() for name in reader.fieldnames or []}
        shape = next((s for s, cols in INVOICE_SHAPES.items() if set(cols) <= header), None)
        if shape is None:
            raise ValueError(
                f"invoice {str(path)!r} has columns {sorted(header)}; expected one of: "
                + "; ".join(f"{s}: {', '.join(c)}" for s, c in INVOICE_SHAPES.items()))
        totals: dict = {}
        for number, raw in enumerate(reader, start=2):
            row = {k.strip().lower(): (v or "").strip() for k, v in raw.items() if k}
            try:
                day, model, dollars = _invoice_row(shape, row)
            except (ValueError, KeyError) as exc:
                raise ValueError(f"invoice {str(path)!r} line {number}: {exc}; expected "
                                 f"{', '.join(INVOICE_SHAPES[shape])}") from None
            if model:
                key = (day, model)
                totals[key] = totals.get(key, 0.0) + dollars
    return totals, shape


def _invoice_row(shape: str, row: dict) -> tuple[str, str, float]:
    if shape == "simple":
        return date.fromisoformat(row["date"][:10]).isoformat(), row["model"], float(row["cost"])
    if shape == "openai":
        day = datetime.fromtimestamp(int(float(row["start_time"])), timezone.utc).date()
        model = row["line_item"].split(",")[0].strip()
        return day.isoformat(), model, float(row["amount_value"])
    stamp = datetime.fromisoformat(row["starting_at"].replace("Z", "+00:00"))
    return stamp.astimezone(timezone.utc).date().isoformat(), row["model"], float(row["amount"]) / 100


def _model_matches(invoice_model: str, model: str) -> bool:
    """Providers name dated snapshots (gpt-4o-mini-2024-07-18) where a service logs the alias."""
    return invoice_model == model or invoice_model.startswith(model + "-")


@dataclass
class Difference:
    day: str
    model: str
    computed: float
    invoiced: float
    cause: str

    @property
    def delta(self) -> float:
        return self.computed - self.invoiced


def reconcile(df, invoice: dict, table: PriceTable, tolerance: float = DEFAULT_TOLERANCE
              ) -> list[Difference]:
    """Each (day, model) whose computed spend differs from the invoice by more than
    `tolerance` (a fraction of the larger of the two), with the likely cause."""
    import pandas as pd

    if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < 1):
        raise ValueError(f"tolerance={tolerance!r} must be a fraction in [0, 1), e.g. 0.02")
    frame = pd.DataFrame({"day": df["timestamp"].dt.strftime("%Y-%m-%d"),
                          "model": df["model"].astype(object).fillna("(none)"),
                          "cost": df["cost"].fillna(0.0),
                          "default": default_priced_mask(df, table)})
    grouped = frame.groupby(["day", "model"]).agg(cost=("cost", "sum"), default=("default", "sum"),
                                                  requests=("cost", "size"))
    computed = {key: (row.cost, int(row.default)) for key, row in grouped.iterrows()}
    logged_days = set(frame["day"])
    out = []
    invoiced_keys = set()
    for (day, invoice_model), invoiced in sorted(invoice.items()):
        models = [m for (d, m) in computed if d == day and _model_matches(invoice_model, m)]
        ours = sum(computed[(day, m)][0] for m in models)
        defaults = sum(computed[(day, m)][1] for m in models)
        invoiced_keys.update((day, m) for m in models)
        if abs(ours - invoiced) <= tolerance * max(abs(ours), abs(invoiced)):
            continue
        if day not in logged_days:
            cause = "missing day: the log has no records of this day (not collected, or deleted)"
        elif not models:
            cause = ("unknown model: no logged request names this model (another service, or "
                     "the log names it differently)")
        elif defaults:
            cause = (f"default-priced records: {defaults} request(s) of this model were priced at "
                     "the default; add the model to the price file and run reprice")
        else:
            cause = "prices differ: check the price file against the provider's price list"
        out.append(Difference(day, invoice_model, ours, invoiced, cause))
    invoice_days = {day for day, _ in invoice}
    for (day, model), (ours, defaults) in sorted(computed.items()):
        if (day, model) in invoiced_keys or day not in invoice_days or ours <= 0:
            continue
        cause = ("not on the invoice: " + ("default-priced records of a model the provider "
                 "bills under another name" if defaults else "billed under another name, or "
                 "another account"))
        out.append(Difference(day, model, ours, 0.0, cause))
    return out
