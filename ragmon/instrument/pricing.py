"""Model prices and the cost of a query.

Prices are dollars per 1K tokens, one per price field, each billed separately and never twice:

- ``input``: uncached prompt tokens;
- ``cached_input``: prompt tokens read from the provider's prompt cache;
- ``cache_write``: prompt tokens written to the cache (Anthropic's 5-minute writes; a provider
  that does not bill writes leaves it at the input price);
- ``cache_write_1h``: Anthropic's 1-hour cache writes;
- ``output``: completion tokens, reasoning tokens included (they are a part of output).

Where a price comes from, first found wins (``PriceMatch.source`` says which):

1. **user file** (MODEL_PRICES_FILE): your negotiated prices and private models, by the name as
   the provider returned it or an entry's ``aliases`` (``exact``), or by the name without a
   provider prefix (``openai/``, ``azure/``...), vendor dots, version tails and snapshot date
   (``alias``; the file's ``"_aliases"`` map, e.g. Azure deployment names, counts here too);
2. **the price database** (PRICE_DATABASE): genai-prices' list prices, as the installed
   ``genai-prices <version>`` or the ``shipped`` snapshot of it (ragmon.instrument.price_database),
   matched by provider and the database's own rules, with its price history, service tiers and
   long-context tiers;
3. **user file patterns**: shell globs (``"claude-sonnet-4*"``), longest first, for models the
   database does not know. A glob never prices a model the database knows: a guess across model
   generations would look known and be wrong;
4. **default**: the COST_PER_1K_* settings; the model is counted as default-priced.

A user entry may carry ``versions``: ``[{"effective_from": "2025-06-01", "input": ...}, ...]``. A
request is priced with the newest version in force on its (UTC) day; before the first version
the entry's own prices apply. Each price carries an id (``gpt-4o-mini``,
``gpt-4o-mini@2025-06-01``, ``openai/gpt-5.5@2026-10-12+flex>272000``) that the request record
keeps, so a cost can be traced to its prices.
"""
from __future__ import annotations

import bisect
import datetime as _dt
import fnmatch
import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..checks import check_amount

PRICE_KINDS = ("input", "output", "cached_input", "cache_write", "cache_write_1h")
MATCH_KINDS = ("exact", "alias", "pattern", "default")
USER_FILE = "user file"
DEFAULT = "default"

# "openai/gpt-4o", "azure/my-deployment", "bedrock/anthropic.claude-..." (LiteLLM-style routes).
_PROVIDER_PREFIX = re.compile(r"^(?:[a-z0-9_-]+/)+")
# A dated snapshot: gpt-4o-mini-2024-07-18, claude-3-5-haiku-20241022, o3-2025-04-16.
_SNAPSHOT_SUFFIX = re.compile(r"-(?:20\d\d-\d\d-\d\d|20\d{6})$")
# Bedrock / Vertex spellings: anthropic.claude-3-5-haiku-20241022-v1:0, claude-3-5-haiku@20241022.
_VENDOR_DOT = re.compile(r"^(?:[a-z]{2}\.)?(?:anthropic|openai|meta|mistral|cohere)\.")
_VERSION_TAIL = re.compile(r"(?:-v\d+(?::\d+)?|@\d{8}|:\d+)$")


@dataclass(frozen=True)
class ModelPrice:
    """Dollars per 1K tokens of each price field. ``cache_write`` defaults to the input price and
    ``cache_write_1h`` to ``cache_write``; ``id`` names the entry (and version) it came from;
    ``tiers`` are the prices once the whole prompt passes a threshold, ``(threshold, price)``
    ascending (a long-context tier prices *all* the request's tokens)."""

    input: float
    output: float
    cached_input: float
    cache_write: float | None = None
    cache_write_1h: float | None = None
    id: str = field(default="default", compare=False)
    tiers: tuple = field(default=(), compare=False, repr=False)

    def __post_init__(self):
        if self.cache_write is None:
            object.__setattr__(self, "cache_write", self.input)
        if self.cache_write_1h is None:
            object.__setattr__(self, "cache_write_1h", self.cache_write)
        for kind in PRICE_KINDS:
            check_amount(f"price {kind}", getattr(self, kind),
                         "dollars per 1K tokens as a finite number >= 0, e.g. 0.003")

    def cost(self, input_tokens: int = 0, output_tokens: int = 0, cached_input_tokens: int = 0,
             cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0) -> float:
        """Dollars for these tokens (``input_tokens`` uncached). Reasoning is part of output."""
        return (input_tokens * self.input + output_tokens * self.output
                + cached_input_tokens * self.cached_input + cache_write_tokens * self.cache_write
                + cache_write_1h_tokens * self.cache_write_1h) / 1000.0

    def cost_by_kind(self, tokens: Mapping[str, int]) -> float:
        """Dollars for tokens keyed by price field (``{"input": uncached, "cached_input": ...,
        "cache_write": ..., "cache_write_1h": ..., "output": ...}``); a key that is not a price
        field raises KeyError naming it."""
        prices = self.__dict__
        total = 0.0
        for kind, count in tokens.items():
            if kind in _PRICE_FIELDS:
                total += count * prices[kind]
            else:
                raise KeyError(f"{kind!r} is not a price field; expected one of {PRICE_KINDS}")
        return total / 1000.0

    def for_prompt(self, prompt_tokens: int | None) -> "ModelPrice":
        """The price for a request whose whole prompt (cache reads and writes included) has
        `prompt_tokens` tokens: the highest tier whose threshold it passes, else this price."""
        chosen = self
        if prompt_tokens:
            for threshold, price in self.tiers:
                if prompt_tokens <= threshold:
                    break
                chosen = price
        return chosen

    def unit_prices(self) -> dict[str, float]:
        return {kind: getattr(self, kind) for kind in PRICE_KINDS}


_PRICE_FIELDS = frozenset(PRICE_KINDS)


@dataclass(frozen=True)
class PriceMatch:
    """What priced a request: the price (with its id), how the model name matched, where the
    price came from (``source``: "user file", "genai-prices 0.2.5", "shipped" or "default") and
    which tier applied (``tier``: a service tier such as "flex", "input>272000" for a
    long-context price, both joined by "+", or None)."""

    price: ModelPrice
    match: str  # one of MATCH_KINDS
    entry: str | None  # the price-file entry, or the database's "provider/model"; None: default
    source: str = DEFAULT
    tier: str | None = None
    service_tier: str | None = None  # as the response said, when it said

    @property
    def known(self) -> bool:
        return self.match != "default"

    def describe(self) -> dict:
        """The record's ``pricing`` field."""
        found = {"match": self.match, "entry": self.entry, "source": self.source,
                 "tier": self.tier, "price_id": self.price.id, "per_1k": self.price.unit_prices()}
        if self.service_tier is not None:
            found["service_tier"] = self.service_tier
        return found


class PriceEntry:
    """One model's prices: the undated ones and dated versions, oldest first."""

    __slots__ = ("name", "base", "dates", "versions")

    def __init__(self, name: str, base: ModelPrice,
                 versions: list[tuple[_dt.date, ModelPrice]] | None = None):
        self.name = name
        self.base = base
        versions = sorted(versions or [], key=lambda item: item[0])
        self.dates = [day for day, _ in versions]
        self.versions = [price for _, price in versions]

    def price_on(self, day: _dt.date | None) -> ModelPrice:
        if not self.versions:
            return self.base
        if day is None:
            day = _dt.datetime.now(_dt.timezone.utc).date()
        index = bisect.bisect_right(self.dates, day)
        return self.versions[index - 1] if index else self.base


def normalize_model_name(model: str) -> str:
    """The model name without provider prefix, vendor dots, version tails or snapshot date:
    ``openai/gpt-4o-mini-2024-07-18`` -> ``gpt-4o-mini``;
    ``anthropic.claude-3-5-haiku-20241022-v1:0`` -> ``claude-3-5-haiku``."""
    name = model.strip().lower()
    name = _PROVIDER_PREFIX.sub("", name)
    name = _VENDOR_DOT.sub("", name)
    name = _VERSION_TAIL.sub("", name)
    return _SNAPSHOT_SUFFIX.sub("", name)


_NOON = _dt.time(12, 0)


def _day_and_time(day) -> tuple[_dt.date, _dt.time]:
    """A request's UTC day and time of day: from a datetime (naive means UTC), or a date taken
    at noon UTC, or now."""
    if day is None:
        day = _dt.datetime.now(_dt.timezone.utc)
    if isinstance(day, _dt.datetime):
        if day.tzinfo is not None and day.tzinfo is not _dt.timezone.utc:
            day = day.astimezone(_dt.timezone.utc)
        return day.date(), day.time()
    return day, _NOON


def _service_context(service_tier: str | None) -> dict[str, str] | None:
    """genai-prices' request context: batch is a way of processing, the rest are service tiers."""
    if not service_tier:
        return None
    tier = str(service_tier).strip().lower()
    return {"processing": "batch"} if tier == "batch" else {"service_tier": tier}


class PriceTable:
    """Per-model prices: the user's file (entries, aliases, patterns, dated versions) over the
    price database, and a default."""

    def __init__(self, default: ModelPrice, models: Mapping[str, ModelPrice | PriceEntry] | None = None,
                 aliases: Mapping[str, str] | None = None,
                 patterns: Mapping[str, str] | None = None,
                 database=None, database_source: str | None = None):
        self.default = default
        self.entries: dict[str, PriceEntry] = {}
        for name, value in (models or {}).items():
            if isinstance(value, ModelPrice):
                if value.id == "default":
                    value = ModelPrice(value.input, value.output, value.cached_input,
                                       value.cache_write, value.cache_write_1h, id=name)
                value = PriceEntry(name, value)
            self.entries[name] = value
        self.aliases = dict(aliases or {})
        for alias, target in self.aliases.items():
            if target not in self.entries:
                raise ValueError(f"price alias {alias!r} points at {target!r}, which has no "
                                 f"entry; known entries: {sorted(self.entries)[:10]}")
        # Longest pattern first, so the most specific one wins.
        self.patterns = sorted((patterns or {}).items(), key=lambda item: (-len(item[0]), item[0]))
        for pattern, target in self.patterns:
            if target not in self.entries:
                raise ValueError(f"price pattern {pattern!r} points at {target!r}, which has no entry")
        self.database = database  # a price_database.PriceDatabase, or None
        self.database_source = database_source or (database.source if database is not None else None)
        self._resolved: dict[tuple, tuple] = {}
        self._database_prices: dict[tuple, ModelPrice] = {}
        self._matches: dict[tuple, tuple] = {}
        self._lock = threading.Lock()

    @property
    def models(self) -> dict[str, ModelPrice]:
        """Each user entry's undated price (kept for callers that read the plain mapping)."""
        return {name: entry.base for name, entry in self.entries.items()}

    @classmethod
    def from_settings(cls, settings, path: str | Path | None = None) -> "PriceTable":
        """The settings' default prices, their price database (PRICE_DATABASE) and, on top, their
        MODEL_PRICES_FILE or the file at `path` instead."""
        from .price_database import load_database

        default = ModelPrice(settings.COST_PER_1K_INPUT_TOKENS, settings.COST_PER_1K_OUTPUT_TOKENS,
                             settings.COST_PER_1K_CACHED_INPUT_TOKENS)
        database = load_database(getattr(settings, "PRICE_DATABASE", "auto"))
        path = settings.MODEL_PRICES_FILE if path is None else path
        if not path:
            return cls(default, database=database)
        return cls.from_file(path, default, database)

    @classmethod
    def from_file(cls, path: str | Path, default: ModelPrice, database=None) -> "PriceTable":
        """The price file at `path` over `database`. A database snapshot given as the file
        (``python -m ragmon.instrument.price_database --out FILE``) takes the database's place."""
        raw = _read_json(path)
        if "providers" in raw and "format" in raw:
            from .price_database import PriceDatabase
            try:
                return cls(default, database=PriceDatabase(raw, USER_FILE))
            except (ValueError, KeyError, TypeError) as exc:
                raise ValueError(f"price file {str(path)!r}: {exc}") from None
        entries, aliases, patterns = _read_price_file(path, default, raw)
        try:
            return cls(default, entries, aliases, patterns, database)
        except ValueError as exc:
            raise ValueError(f"price file {str(path)!r}: {exc}") from None

    # --- finding a model -----------------------------------------------------------------------
    def resolve(self, model: str | None, provider: str | None = None) -> tuple:
        """(layer, key, match kind) for a model name, cached per name and provider: layer "user"
        with the entry name, "database" with the database's model, or (None, None, "default")."""
        if model is None:
            return None, None, "default"
        key = (model, provider)
        found = self._resolved.get(key)
        if found is None:
            found = self._resolve(model, provider)
            with self._lock:
                if len(self._resolved) < 10_000:  # names come from outside: bound the cache
                    self._resolved[key] = found
        return found

    def _resolve(self, model: str, provider: str | None) -> tuple:
        if model in self.entries:
            return "user", model, "exact"
        if model in self.aliases:
            return "user", self.aliases[model], "exact"
        lowered = model.strip().lower()
        for candidate in dict.fromkeys((lowered, _PROVIDER_PREFIX.sub("", lowered),
                                        normalize_model_name(model))):
            if candidate in self.entries:
                return "user", candidate, "alias"
            if candidate in self.aliases:
                return "user", self.aliases[candidate], "alias"
        if self.database is not None:
            found, how = self.database.find(model, provider)
            if found is not None:
                if not found.model.token_priced:
                    return None, None, "default"  # priced by pages or hours, not tokens
                return "database", found, how
        bare = _PROVIDER_PREFIX.sub("", lowered)
        for pattern, target in self.patterns:
            if fnmatch.fnmatchcase(bare, pattern) or fnmatch.fnmatchcase(lowered, pattern):
                return "user", target, "pattern"
        return None, None, "default"

    def match(self, model: str | None, day: _dt.date | _dt.datetime | None = None, *,
              provider: str | None = None, service_tier: str | None = None,
              prompt_tokens: int | None = None) -> PriceMatch:
        """The price in force for `model` at `day` (a UTC date, or a datetime where prices vary
        by time of day; default now) and how it matched. `provider`: the provider the SDK or
        the response headers name; `service_tier`: the one the response says applied ("flex",
        "priority", "batch"...); `prompt_tokens`: the whole prompt, cache reads and writes
        included, for long-context tiers. Cached: a repeated question is one dict lookup."""
        if day.__class__ is _dt.date:
            date, time = day, _NOON
        else:
            date, time = _day_and_time(day)
        key = (model, provider, service_tier, date)
        found = self._matches.get(key)
        if found is None:  # the day's answer, at noon where prices vary by time of day
            found = self._match_uncached(model, date, _NOON, provider, service_tier)
            self._remember(key, found)
        if found[3] is not None and time is not _NOON:
            # Prices by time of day (DeepSeek's off-peak hours): one answer per set of windows
            # in force, so the rest of the day is a lookup too.
            windowed = key + (tuple(c.active(date, time) for c in found[3]),)
            found = self._matches.get(windowed)
            if found is None:
                found = self._match_uncached(model, date, time, provider, service_tier)
                self._remember(windowed, found)
        base, thresholds, tiered, _ = found
        if prompt_tokens and thresholds:
            passed = bisect.bisect_left(thresholds, prompt_tokens)  # thresholds below it
            if passed:
                return tiered[passed - 1]
        return base

    def _remember(self, key: tuple, found: tuple) -> None:
        with self._lock:
            if len(self._matches) >= 10_000:  # names come from outside: bound it
                self._matches.clear()
            self._matches[key] = found

    def _match_uncached(self, model, date, time, provider, service_tier) -> tuple:
        """(match at the base price, tier thresholds, match per tier, and the database model's
        conditions when its prices vary by time of day, else None)."""
        layer, key, how = self.resolve(model, provider)
        if layer is None:
            return PriceMatch(self.default, "default", None, DEFAULT, None, service_tier), (), (), None
        if layer == "user":
            price, source, tier_names, entry, hours = (
                self.entries[key].price_on(date), USER_FILE, [], key, None)
        else:
            context = None if key.resold else _service_context(service_tier)
            chosen, variants, raw = key.model.prices_at(date, time, context)
            cache_key = (key.model.entry, chosen, variants)
            price = self._database_prices.get(cache_key)
            if price is None:
                price = _database_price(key.model, chosen, variants, raw)
                with self._lock:
                    self._database_prices[cache_key] = price
            source, entry = self.database_source, key.model.entry
            tier_names = [str(service_tier).strip().lower()] if variants else []
            hours = key.model.conditions if key.model.by_time_of_day else None
        tier = "+".join(tier_names) or None
        base = PriceMatch(price, how, entry, source, tier, service_tier)
        tiered = tuple(PriceMatch(tier_price, how, entry, source,
                                  "+".join([*tier_names, f"input>{threshold}"]), service_tier)
                       for threshold, tier_price in price.tiers)
        return base, tuple(threshold for threshold, _ in price.tiers), tiered, hours

    def lookup(self, model: str | None) -> tuple[ModelPrice, bool]:
        """(price, known). An unknown model gets the default price; no model is not unknown."""
        found = self.match(model)
        return found.price, found.known or model is None

    def cost(self, price: ModelPrice, input_tokens: int, output_tokens: int,
             cached_input_tokens: int = 0, cache_write_tokens: int = 0,
             cache_write_1h_tokens: int = 0) -> float:
        return price.cost(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
                          cache_write_1h_tokens)


def _database_price(model, chosen: int, variants: tuple[int, ...], raw: Mapping) -> ModelPrice:
    """A database model's raw prices (dollars per million tokens, a value either a number or
    {"base", "tiers"}) as a ModelPrice per 1K tokens, with its long-context tiers. Derived as
    genai-prices bills: an unpriced cache read or write is billed as input; 5-minute and 1-hour
    writes fall back to the generic cache-write price."""
    condition = model.conditions[chosen]
    price_id = model.entry
    if condition.since is not None:
        price_id += f"@{condition.since.isoformat()}"
    elif condition.hours is not None:
        price_id += f"@{condition.hours[0].strftime('%H:%M')}-{condition.hours[1].strftime('%H:%M')}"
    if variants:
        price_id += "+" + "+".join("".join(model.variants[i].when.values()) for i in variants)
    thresholds = sorted({start for value in raw.values() if isinstance(value, dict)
                         for start, _ in value["tiers"]})

    def above(threshold: int | None) -> dict[str, float]:
        values = {}
        for key, value in raw.items():
            if isinstance(value, dict):
                amount = value["base"]
                for start, tier_price in sorted(value["tiers"]):
                    if threshold is not None and start <= threshold:
                        amount = tier_price
                values[key] = amount
            else:
                values[key] = value
        return values

    def build(values: Mapping[str, float], pid: str, tiers: tuple = ()) -> ModelPrice:
        per_1k = {key: value / 1000.0 for key, value in values.items()}
        input_price = per_1k.get("input", 0.0)
        cache_write = per_1k.get("cache_write", input_price)
        return ModelPrice(input_price, per_1k.get("output", 0.0),
                          per_1k.get("cached_input", input_price),
                          per_1k.get("cache_write_5m", cache_write),
                          per_1k.get("cache_write_1h", cache_write), id=pid, tiers=tiers)

    tiers = tuple((t, build(above(t), f"{price_id}>{t}")) for t in thresholds)
    return build(above(None), price_id, tiers)


def load_price_file(path: str | Path, default: ModelPrice) -> dict[str, ModelPrice]:
    """Each entry's undated price from a price file (see the module docstring for the format)."""
    entries, _, _ = _read_price_file(path, default)
    return {name: entry.base for name, entry in entries.items()}


_ENTRY_KEYS = set(PRICE_KINDS) | {"aliases", "patterns", "versions", "note"}
_EXAMPLE = ('{"gpt-4o-mini": {"input": 0.00015, "output": 0.0006, "cached_input": 0.000075, '
            '"patterns": ["gpt-4o-mini-*"]}}')


def _price(path, label: str, raw: Mapping, fallback: ModelPrice, price_id: str,
           cached_like_input: bool = False) -> ModelPrice:
    """`cached_like_input`: an entry that leaves out cache reads bills them like its own input,
    never at the default price (a free local model must not be charged for them); a version
    leaves them as its entry has them."""
    cached = raw.get("input", fallback.cached_input) if cached_like_input else fallback.cached_input
    try:
        return ModelPrice(raw.get("input", fallback.input), raw.get("output", fallback.output),
                          raw.get("cached_input", cached),
                          raw.get("cache_write"), raw.get("cache_write_1h"), id=price_id)
    except ValueError as exc:
        raise ValueError(f"price file {str(path)!r}, {label}: {exc}") from None


def _read_json(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MODEL_PRICES_FILE={str(path)!r} does not exist; point it at a "
                                "JSON price file or set it empty to use only the price database "
                                "and the default prices")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"price file {str(path)!r} is not valid JSON ({exc}); expected "
                         f"{_EXAMPLE}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"price file {str(path)!r} holds a {type(raw).__name__}; expected an "
                         "object mapping model names to prices")
    return raw


def _read_price_file(path: str | Path, default: ModelPrice, raw: dict | None = None):
    raw = _read_json(path) if raw is None else raw
    entries: dict[str, PriceEntry] = {}
    aliases: dict[str, str] = {}
    patterns: dict[str, str] = {}
    file_aliases = raw.get("_aliases", {})
    if not isinstance(file_aliases, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in file_aliases.items()):
        raise ValueError(f"price file {str(path)!r}: \"_aliases\" must map names to entry names, "
                         'e.g. {"my-azure-deployment": "gpt-4o"}')
    aliases.update(file_aliases)
    for model, entry in raw.items():
        if model.startswith("_"):  # "_comment", "_aliases" and similar keys
            continue
        if not isinstance(entry, dict) or not set(entry) <= _ENTRY_KEYS:
            raise ValueError(f"price file {str(path)!r}: entry {model!r}={entry!r} must be an "
                             "object with keys input, output, cached_input, cache_write, "
                             "cache_write_1h (dollars per 1K tokens) and optionally aliases, "
                             f"patterns, versions, note; e.g. {_EXAMPLE}")
        base = _price(path, f"model {model!r}", entry, default, model, cached_like_input=True)
        versions = []
        for version in entry.get("versions", []):
            day = version.get("effective_from") if isinstance(version, dict) else None
            try:
                day = _dt.date.fromisoformat(day)
            except (TypeError, ValueError):
                raise ValueError(f"price file {str(path)!r}, model {model!r}: version {version!r} "
                                 "needs \"effective_from\": \"YYYY-MM-DD\" (the first UTC day "
                                 "its prices apply)") from None
            if not set(version) <= set(PRICE_KINDS) | {"effective_from", "note"}:
                raise ValueError(f"price file {str(path)!r}, model {model!r}: version {version!r} "
                                 f"may hold only effective_from and {list(PRICE_KINDS)}")
            # A version names what changed; every other price is the entry's own, as written
            # (a derived cache-write price follows the version's input price).
            written = {kind: entry[kind] for kind in PRICE_KINDS if kind in entry}
            versions.append((day, _price(path, f"model {model!r} version {day}",
                                         {**written, **version}, base,
                                         f"{model}@{day.isoformat()}")))
        entries[model] = PriceEntry(model, base, versions)
        for key, target in (("aliases", aliases), ("patterns", patterns)):
            names = entry.get(key, [])
            if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
                raise ValueError(f"price file {str(path)!r}, model {model!r}: {key!r} must be a "
                                 f"list of names, e.g. [\"{model}-*\"]")
            for name in names:
                if name in target and target[name] != model:
                    raise ValueError(f"price file {str(path)!r}: {key[:-1]} {name!r} is claimed "
                                     f"by both {target[name]!r} and {model!r}; keep one")
                target[name] = model
    patterns = {pattern.lower(): target for pattern, target in patterns.items()}
    return entries, aliases, patterns
