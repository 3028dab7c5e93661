"""Model prices and the cost of a query.

Prices are dollars per 1K tokens, one per token kind, each billed separately and never twice:

- ``input``: uncached prompt tokens;
- ``cached_input``: prompt tokens read from the provider's prompt cache;
- ``cache_write``: prompt tokens written to the cache (Anthropic's 5-minute writes; OpenAI does
  not bill writes, so its entries leave it at the input price, which is never used);
- ``cache_write_1h``: Anthropic's 1-hour cache writes;
- ``output``: completion tokens, reasoning tokens included (they are a part of output).

The price file maps names to prices; a name is found in this order (the first match wins):

1. **exact**: the name as the provider returned it, or an entry's ``aliases``;
2. **alias**: the name without a provider prefix (``openai/``, ``anthropic/``, ``azure/``...)
   and without a dated snapshot suffix (``-2024-07-18``, ``-20241022``), looked up again exactly;
   the file's ``"_aliases"`` map (Azure deployment names and the like) counts here too;
3. **pattern**: an entry's ``patterns`` (shell globs such as ``"claude-sonnet-4*"``), the longest
   matching pattern winning;
4. **default**: the COST_PER_1K_* settings; the model is counted as default-priced.

An entry may carry ``versions``: ``[{"effective_from": "2025-06-01", "input": ...}, ...]``. A
request is priced with the newest version in force on its (UTC) day; before the first version
the entry's own prices apply. Each price carries an id (``gpt-4o-mini`` or
``gpt-4o-mini@2025-06-01``) that the request record keeps, so a cost can be traced to its prices.
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

# "openai/gpt-4o", "azure/my-deployment", "bedrock/anthropic.claude-..." (LiteLLM-style routes).
_PROVIDER_PREFIX = re.compile(r"^(?:[a-z0-9_-]+/)+")
# A dated snapshot: gpt-4o-mini-2024-07-18, claude-3-5-haiku-20241022, o3-2025-04-16.
_SNAPSHOT_SUFFIX = re.compile(r"-(?:20\d\d-\d\d-\d\d|20\d{6})$")
# Bedrock / Vertex spellings: anthropic.claude-3-5-haiku-20241022-v1:0, claude-3-5-haiku@20241022.
_VENDOR_DOT = re.compile(r"^(?:[a-z]{2}\.)?(?:anthropic|openai|meta|mistral|cohere)\.")
_VERSION_TAIL = re.compile(r"(?:-v\d+(?::\d+)?|@\d{8}|:\d+)$")


@dataclass(frozen=True)
class ModelPrice:
    """Dollars per 1K tokens of each kind. ``cache_write`` defaults to the input price and
    ``cache_write_1h`` to ``cache_write``; ``id`` names the entry (and version) it came from."""

    input: float
    output: float
    cached_input: float
    cache_write: float | None = None
    cache_write_1h: float | None = None
    id: str = field(default="default", compare=False)

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
        """Dollars for these tokens. Reasoning tokens are part of ``output_tokens``."""
        return (input_tokens * self.input + output_tokens * self.output
                + cached_input_tokens * self.cached_input + cache_write_tokens * self.cache_write
                + cache_write_1h_tokens * self.cache_write_1h) / 1000.0

    def unit_prices(self) -> dict[str, float]:
        return {kind: getattr(self, kind) for kind in PRICE_KINDS}


@dataclass(frozen=True)
class PriceMatch:
    """What priced a request: the price (with its id) and how the model name matched."""

    price: ModelPrice
    match: str  # one of MATCH_KINDS
    entry: str | None  # the price-file entry's name; None for the default

    @property
    def known(self) -> bool:
        return self.match != "default"

    def describe(self) -> dict:
        """The record's ``pricing`` field."""
        return {"match": self.match, "entry": self.entry, "price_id": self.price.id,
                "per_1k": self.price.unit_prices()}


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


class PriceTable:
    """Per-model prices with aliases, patterns, dated versions and a default."""

    def __init__(self, default: ModelPrice, models: Mapping[str, ModelPrice | PriceEntry] | None = None,
                 aliases: Mapping[str, str] | None = None,
                 patterns: Mapping[str, str] | None = None):
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
        self._resolved: dict[str, tuple[str | None, str]] = {}
        self._lock = threading.Lock()

    @property
    def models(self) -> dict[str, ModelPrice]:
        """Each entry's undated price (kept for callers that read the plain mapping)."""
        return {name: entry.base for name, entry in self.entries.items()}

    @classmethod
    def from_settings(cls, settings, path: str | Path | None = None) -> "PriceTable":
        """The settings' default prices with their MODEL_PRICES_FILE, or with `path` instead."""
        default = ModelPrice(settings.COST_PER_1K_INPUT_TOKENS, settings.COST_PER_1K_OUTPUT_TOKENS,
                             settings.COST_PER_1K_CACHED_INPUT_TOKENS)
        path = settings.MODEL_PRICES_FILE if path is None else path
        if not path:
            return cls(default)
        return cls.from_file(path, default)

    @classmethod
    def from_file(cls, path: str | Path, default: ModelPrice) -> "PriceTable":
        entries, aliases, patterns = _read_price_file(path, default)
        try:
            return cls(default, entries, aliases, patterns)
        except ValueError as exc:
            raise ValueError(f"price file {str(path)!r}: {exc}") from None

    # --- finding a model -----------------------------------------------------------------------
    def resolve(self, model: str | None) -> tuple[str | None, str]:
        """(entry name or None, match kind) for a model name; cached per name."""
        if model is None:
            return None, "default"
        found = self._resolved.get(model)
        if found is None:
            found = self._resolve(model)
            with self._lock:
                if len(self._resolved) < 10_000:  # names come from outside: bound the cache
                    self._resolved[model] = found
        return found

    def _resolve(self, model: str) -> tuple[str | None, str]:
        if model in self.entries:
            return model, "exact"
        if model in self.aliases:
            return self.aliases[model], "exact"
        lowered = model.strip().lower()
        for candidate in dict.fromkeys((lowered, _PROVIDER_PREFIX.sub("", lowered),
                                        normalize_model_name(model))):
            if candidate in self.entries:
                return candidate, "alias"
            if candidate in self.aliases:
                return self.aliases[candidate], "alias"
        bare = _PROVIDER_PREFIX.sub("", lowered)
        for pattern, target in self.patterns:
            if fnmatch.fnmatchcase(bare, pattern) or fnmatch.fnmatchcase(lowered, pattern):
                return target, "pattern"
        return None, "default"

    def match(self, model: str | None, day: _dt.date | None = None) -> PriceMatch:
        """The price in force for `model` on `day` (UTC; default today) and how it matched."""
        entry_name, how = self.resolve(model)
        if entry_name is None:
            return PriceMatch(self.default, "default", None)
        return PriceMatch(self.entries[entry_name].price_on(day), how, entry_name)

    def lookup(self, model: str | None) -> tuple[ModelPrice, bool]:
        """(price, known). An unknown model gets the default price; no model is not unknown."""
        found = self.match(model)
        return found.price, found.known or model is None

    def cost(self, price: ModelPrice, input_tokens: int, output_tokens: int,
             cached_input_tokens: int = 0, cache_write_tokens: int = 0,
             cache_write_1h_tokens: int = 0) -> float:
        return price.cost(input_tokens, output_tokens, cached_input_tokens, cache_write_tokens,
                          cache_write_1h_tokens)


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


def _read_price_file(path: str | Path, default: ModelPrice):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"MODEL_PRICES_FILE={str(path)!r} does not exist; point it at a "
                                "JSON price file or set it empty to use only the default prices")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"price file {str(path)!r} is not valid JSON ({exc}); expected "
                         f"{_EXAMPLE}") from None
    if not isinstance(raw, dict):
        raise ValueError(f"price file {str(path)!r} holds a {type(raw).__name__}; expected an "
                         "object mapping model names to prices")
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
