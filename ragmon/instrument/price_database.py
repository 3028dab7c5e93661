"""List prices from the maintained database (pydantic's `genai-prices`), as ragmon's own table.

genai-prices (MIT) knows some 2,300 models of 47 providers, with price history, long-context
tiers and service tiers, updated monthly. Importing it costs about half a second and one
``calc_price`` about 200 µs, so it never runs per query: its data is turned, once, into a plain
JSON **snapshot** in ragmon's own shape, which this module reads in milliseconds and matches with
a dict lookup per model name (cached).

Two ways to a snapshot:

* ``ragmon/price_database.json`` is shipped in the package, generated from the genai-prices
  version it names (``version``, ``generated``): prices work without genai-prices installed.
* With genai-prices installed (``pip install 'ragmon[prices]'``), the table follows the
  installed version: when it is the shipped snapshot's version the snapshot is used as is (it is
  the same data), otherwise its data is converted when the table is built (once per process).

Regenerate the shipped snapshot after upgrading genai-prices::

    python -m ragmon.instrument.price_database            # writes ragmon/price_database.json
    python -m ragmon.instrument.price_database --out my_prices.json

Matching follows genai-prices: a provider (named by the SDK, the response headers or a
``provider/`` prefix, else found from the model name) and the first of its models whose match
rule accepts the lower-cased name, then the models of the providers it resells (Azure: OpenAI's;
Vertex: Anthropic's). Bedrock (``us.anthropic.claude-...-v1:0``) and Vertex (``claude-...@date``)
spellings find their provider from the name. Prices by date (the last one in force on the
request's UTC day wins), by time of day (DeepSeek's off-peak hours; a date without a time is
taken at noon UTC), by service tier (``service_tier`` flex / priority / ..., ``batch``) and by
prompt size (a tier's price for *all* tokens once the whole prompt passes its threshold) are
applied as genai-prices applies them. Only token prices are used: per-request fees, web
searches, audio hours and pages are not tokens; a model priced only by those is unknown here.
"""
from __future__ import annotations

import datetime as _dt
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

SHIPPED_DATABASE_FILE = Path(__file__).resolve().parents[1] / "price_database.json"
FORMAT = "ragmon-price-database/1"

# genai-prices' price keys (dollars per million tokens) -> this snapshot's keys. Every other key
# (audio, images, searches, requests, pages) is not a token price ragmon records.
_GENAI_KEYS = {"input_mtok": "input", "cache_read_mtok": "cached_input",
               "cache_write_mtok": "cache_write", "cache_write_5m_mtok": "cache_write_5m",
               "cache_write_1h_mtok": "cache_write_1h", "output_mtok": "output"}
TOKEN_KEYS = tuple(_GENAI_KEYS.values())

# A Bedrock model id: [region.]vendor.model[-vN[:N]] (us.anthropic.claude-sonnet-4-5-...-v1:0).
_BEDROCK_SPELLING = re.compile(
    r"^(?:[a-z]{2,8}\.)?(?:anthropic|amazon|meta|mistral|cohere|openai|deepseek|qwen|writer|"
    r"google|nvidia|moonshotai|zai|ai21)\.")
_COMPACT_DATE = re.compile(r"(-)(20\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(?=-|:|$)")
_NOON = _dt.time(12, 0)


# --- match rules ----------------------------------------------------------------------------------

def compile_rule(rule: Mapping) -> Callable[[str], bool]:
    """A predicate over lower-cased names from a genai-prices match rule (equals, starts_with,
    ends_with, contains, regex, or, and). An ``or`` of plain names becomes one set lookup."""
    (kind, value), = rule.items()
    if kind == "equals":
        value = value.lower()
        return value.__eq__
    if kind == "starts_with":
        value = value.lower()
        return lambda text: text.startswith(value)
    if kind == "ends_with":
        value = value.lower()
        return lambda text: text.endswith(value)
    if kind == "contains":
        value = value.lower()
        return lambda text: value in text
    if kind == "regex":
        return re.compile(value).search
    if kind in ("or", "and"):
        names = [part["equals"].lower() for part in value if set(part) == {"equals"}]
        if kind == "or" and len(names) == len(value):
            return frozenset(names).__contains__
        parts = [compile_rule(part) for part in value]
        combine = any if kind == "or" else all
        return lambda text: combine(part(text) for part in parts)
    raise ValueError(f"price database: unknown match rule {kind!r} in {rule!r}; expected equals, "
                     "starts_with, ends_with, contains, regex, or, and")


def _names_of(rule: Mapping) -> set[str]:
    """The plain names a rule accepts by equality (to tell an exact match from a pattern)."""
    (kind, value), = rule.items()
    if kind == "equals":
        return {value.lower()}
    if kind == "or":
        return set().union(*(_names_of(part) for part in value))
    return set()


# --- one model's prices ---------------------------------------------------------------------------

def _day_of(raw: str | None) -> _dt.date | None:
    return None if raw is None else _dt.date.fromisoformat(raw)


def _hours_of(raw) -> tuple[_dt.time, _dt.time] | None:
    return None if raw is None else (_dt.time.fromisoformat(raw[0]), _dt.time.fromisoformat(raw[1]))


@dataclass(frozen=True)
class _Condition:
    """Prices in force from a day on, or in a daily window of UTC time, or always."""

    since: _dt.date | None
    hours: tuple[_dt.time, _dt.time] | None
    prices: Mapping[str, Any]

    def active(self, day: _dt.date, time: _dt.time) -> bool:
        if self.since is not None:
            return day >= self.since
        if self.hours is not None:
            start, end = self.hours
            return (time >= start or time < end) if end < start else start <= time < end
        return True


@dataclass(frozen=True)
class _Variant:
    """Partial prices for a request context such as {"service_tier": "flex"}."""

    when: Mapping[str, str]
    since: _dt.date | None
    prices: Mapping[str, Any]


class DatabaseModel:
    __slots__ = ("provider", "id", "rule", "names", "conditions", "variants", "token_priced",
                 "by_time_of_day")

    def __init__(self, provider: str, raw: Mapping):
        self.provider = provider
        self.id = raw["id"]
        self.rule = compile_rule(raw["match"])
        self.names = frozenset(_names_of(raw["match"]) | {self.id.lower()})
        self.conditions = tuple(_Condition(_day_of(c.get("from")), _hours_of(c.get("hours")),
                                           {k: c[k] for k in TOKEN_KEYS if k in c})
                                for c in raw["prices"])
        self.variants = tuple(_Variant(v["when"], _day_of(v.get("from")),
                                       {k: v[k] for k in TOKEN_KEYS if k in v})
                              for v in raw.get("variants", ()))
        self.token_priced = not raw.get("not_tokens", False)
        self.by_time_of_day = any(c.hours is not None for c in self.conditions)

    @property
    def entry(self) -> str:
        return f"{self.provider}/{self.id}"

    def prices_at(self, day: _dt.date, time: _dt.time,
                  context: Mapping[str, str] | None) -> tuple[int, tuple[int, ...], dict]:
        """(condition index, variants applied, raw prices) in force, as genai-prices picks them:
        the last condition in force (else the first); then, for a request context, each price
        key from the first variant in force that matches the context and sets it."""
        chosen = 0
        for index in range(len(self.conditions) - 1, -1, -1):
            if self.conditions[index].active(day, time):
                chosen = index
                break
        prices = dict(self.conditions[chosen].prices)
        applied = []
        if context:
            overrides: dict = {}
            for index, variant in enumerate(self.variants):
                if variant.since is not None and day < variant.since:
                    continue
                if all(context.get(key) == value for key, value in variant.when.items()):
                    new = {k: v for k, v in variant.prices.items() if k not in overrides}
                    if new:
                        applied.append(index)
                        overrides.update(new)
            prices.update(overrides)
        return chosen, tuple(applied), prices


# --- providers and the database -----------------------------------------------------------------

class _Provider:
    """A provider; its models are compiled when it is first searched (most never are)."""

    __slots__ = ("id", "model_rule", "provider_rule", "fallback", "_raw_models", "_models")

    def __init__(self, raw: Mapping):
        self.id = raw["id"]
        self.model_rule = compile_rule(raw["model_match"]) if raw.get("model_match") else None
        self.provider_rule = compile_rule(raw["provider_match"]) if raw.get("provider_match") else None
        self.fallback = tuple(raw.get("fallback") or ())
        self._raw_models = raw["models"]
        self._models: list[DatabaseModel] | None = None

    @property
    def models(self) -> list[DatabaseModel]:
        if self._models is None:
            self._models = [DatabaseModel(self.id, model) for model in self._raw_models]
        return self._models


@dataclass(frozen=True)
class Found:
    """A model the database knows: its entry, whether by a plain name or a pattern, and whether
    it was reached through a reseller (then service-tier prices do not apply, as in
    genai-prices)."""

    model: DatabaseModel
    exact: bool
    resold: bool


class PriceDatabase:
    """A price snapshot read into memory: providers, their models and match rules."""

    def __init__(self, raw: Mapping, source: str):
        if raw.get("format") != FORMAT or not isinstance(raw.get("providers"), list):
            raise ValueError(f"not a ragmon price database (expected \"format\": \"{FORMAT}\" and "
                             "a \"providers\" list); regenerate it with "
                             "`python -m ragmon.instrument.price_database --out FILE`")
        self.source = source
        self.version = raw.get("version")
        self.generated = raw.get("generated")
        self.providers = [_Provider(p) for p in raw["providers"]]
        self._by_id = {p.id: p for p in self.providers}
        self._provider_cache: dict[str, _Provider | None] = {}

    @classmethod
    def from_file(cls, path: str | Path, source: str) -> "PriceDatabase":
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f), source)

    # genai-prices' find_provider_by_id: the id, else the first provider whose rule accepts it.
    def provider(self, name: str | None) -> _Provider | None:
        if not name:
            return None
        key = name.strip().lower()
        if key in self._provider_cache:
            return self._provider_cache[key]
        found = self._by_id.get(key) or next(
            (p for p in self.providers if p.provider_rule is not None and p.provider_rule(key)), None)
        if len(self._provider_cache) < 1000:
            self._provider_cache[key] = found
        return found

    def _provider_of_model(self, ref: str) -> _Provider | None:
        return next((p for p in self.providers if p.model_rule is not None and p.model_rule(ref)),
                    None)

    def _in(self, provider: _Provider, ref: str) -> Found | None:
        """genai-prices' Provider.find_model: its own models in order, then (one step) those of
        the providers it resells; then the same with a compact date spelled out."""
        for candidate in dict.fromkeys((ref, _COMPACT_DATE.sub(_spelled_date, ref))):
            for model in provider.models:
                if model.rule(candidate):
                    return Found(model, candidate in model.names, False)
            for other in provider.fallback:
                seller = self._by_id.get(other)
                for model in seller.models if seller is not None else ():
                    if model.rule(candidate):
                        return Found(model, candidate in model.names, True)
        return None

    def find(self, model: str, provider: str | None = None) -> tuple[Found | None, str]:
        """(the model, "exact" / "alias" / "pattern") or (None, "default"). Tried in order: the
        named provider; a ``provider/`` prefix; the provider a Bedrock or Vertex spelling
        implies; the provider found from the model name (genai-prices' own rule)."""
        ref = model.strip().lower()
        head, slash, rest = ref.partition("/")
        tries: list[tuple[_Provider | None, str, bool]] = []
        named = self.provider(provider)
        if named is not None:
            tries.append((named, ref, True))
            if slash:
                tries.append((named, rest, False))
        if slash:
            tries.append((self.provider(head), rest, False))
        for name, is_given in ((ref, True), (rest, False)) if slash else ((ref, True),):
            if _BEDROCK_SPELLING.match(name):
                tries.append((self._by_id.get("aws"), name, is_given))
            elif "@" in name:
                tries.append((self._by_id.get("google"), name, is_given))
            tries.append((self._provider_of_model(name), name, is_given))
        seen = set()
        for where, name, is_given in tries:
            if where is None or (where.id, name) in seen:
                continue
            seen.add((where.id, name))
            found = self._in(where, name)
            if found is not None:
                how = "pattern" if not found.exact else ("exact" if is_given and name == model else "alias")
                return found, how
        return None, "default"


def _spelled_date(match: re.Match) -> str:
    year, month, day = (int(match.group(i)) for i in range(2, 5))
    try:
        _dt.date(year, month, day)
    except ValueError:
        return match.group(0)
    return f"-{year:04d}-{month:02d}-{day:02d}"


# --- which database ------------------------------------------------------------------------------

DATABASE_CHOICES = ("auto", "genai-prices", "shipped", "none")
_loaded: dict[tuple, PriceDatabase] = {}
_load_lock = threading.Lock()


def installed_genai_prices() -> str | None:
    """The installed genai-prices version, or None (without importing it)."""
    import importlib.util
    try:
        if importlib.util.find_spec("genai_prices") is None:
            return None
    except (ImportError, ValueError):  # blocked (sys.modules entry None) or broken
        return None
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("genai-prices")
    except PackageNotFoundError:
        return None


def shipped_version() -> str | None:
    """The genai-prices version the shipped snapshot was generated from."""
    with open(SHIPPED_DATABASE_FILE, encoding="utf-8") as f:
        head = f.read(600)
    found = re.search(r'"version":\s*"([^"]+)"', head)
    return found.group(1) if found else None


def load_database(choice: str) -> PriceDatabase | None:
    """The database for PRICE_DATABASE=`choice`, read once per process and shared by every
    table (the metrics, the report, startup checks). ``auto``: genai-prices when installed,
    else the shipped snapshot."""
    if choice not in DATABASE_CHOICES:
        raise ValueError(f"PRICE_DATABASE={choice!r} is not one of {', '.join(DATABASE_CHOICES)}")
    if choice == "none":
        return None
    installed = installed_genai_prices() if choice in ("auto", "genai-prices") else None
    if choice == "genai-prices" and installed is None:
        raise ValueError("PRICE_DATABASE=genai-prices but genai-prices is not installed; "
                         "pip install 'ragmon[prices]', or set PRICE_DATABASE=shipped")
    key = ("genai-prices", installed) if installed else ("shipped",)
    with _load_lock:
        found = _loaded.get(key)
        if found is None:
            if installed is None:
                found = PriceDatabase.from_file(SHIPPED_DATABASE_FILE, "shipped")
            elif installed == shipped_version():  # the same data, already converted
                found = PriceDatabase.from_file(SHIPPED_DATABASE_FILE, f"genai-prices {installed}")
            else:
                found = PriceDatabase(snapshot_from_genai_prices(), f"genai-prices {installed}")
            _loaded[key] = found
    return found


# --- conversion from genai-prices (never on the query path) ---------------------------------------

def _number(value) -> float | int:
    number = float(value)
    return int(number) if number.is_integer() else number


def _price_value(value):
    from genai_prices.types import TieredPrices
    if isinstance(value, TieredPrices):
        return {"base": _number(value.base),
                "tiers": [[tier.start, _number(tier.price)] for tier in value.tiers]}
    return _number(value)


def _token_prices(model_price) -> tuple[dict, list[str]]:
    """(token prices in this snapshot's keys, other price keys left out)."""
    prices, others = {}, []
    for key, value in model_price.__dict__.items():
        if value is None or key.startswith("_"):
            continue
        if key in _GENAI_KEYS:
            prices[_GENAI_KEYS[key]] = _price_value(value)
        else:
            others.append(key)
    return prices, others


def _rule(clause) -> dict:
    from genai_prices import types
    if isinstance(clause, types.ClauseOr):
        return {"or": [_rule(part) for part in clause.or_]}
    if isinstance(clause, types.ClauseAnd):
        return {"and": [_rule(part) for part in clause.and_]}
    (kind, value), = clause.__dict__.items()
    return {kind: value}


def _constraint(constraint) -> dict:
    from genai_prices import types
    if constraint is None:
        return {}
    if isinstance(constraint, types.StartDateConstraint):
        return {"from": constraint.start_date.isoformat()}
    if isinstance(constraint, types.TimeOfDateConstraint):
        return {"hours": [_utc(constraint.start_time), _utc(constraint.end_time)]}
    raise ValueError(f"genai-prices constraint {constraint!r} is not known to ragmon")


def _utc(value: _dt.time) -> str:
    if value.tzinfo is not None:
        value = _dt.datetime.combine(_dt.date(1970, 1, 1), value).astimezone(_dt.timezone.utc).time()
    return value.replace(tzinfo=None).isoformat()


def snapshot_from_genai_prices(today: _dt.date | None = None) -> dict:
    """The installed genai-prices data in this module's snapshot shape (about a second)."""
    import genai_prices
    from genai_prices import data_snapshot, types

    providers = []
    for provider in data_snapshot.get_snapshot().providers:
        models = []
        for model in provider.models:
            conditions = ([types.ConditionalPrice(prices=model.prices)]
                          if isinstance(model.prices, types.ModelPrice) else model.prices)
            prices, left_out = [], set()
            for condition in conditions:
                tokens, others = _token_prices(condition.prices)
                left_out.update(others)
                prices.append({**_constraint(condition.constraint), **tokens})
            entry = {"id": model.id, "match": _rule(model.match), "prices": prices}
            if left_out and not any(set(p) & set(TOKEN_KEYS) for p in prices):
                entry["not_tokens"] = True  # priced by pages, hours or characters only
            variants = []
            for variant in model.price_variants or ():
                tokens, _ = _token_prices(variant.prices)
                variants.append({"when": dict(variant.when), **_constraint(variant.constraint),
                                 **tokens})
            if variants:
                entry["variants"] = variants
            models.append(entry)
        providers.append({
            "id": provider.id,
            "model_match": _rule(provider.model_match) if provider.model_match else None,
            "provider_match": _rule(provider.provider_match) if provider.provider_match else None,
            "fallback": list(provider.fallback_model_providers or ()),
            "models": models})
    return {"format": FORMAT, "database": "genai-prices", "version": genai_prices.__version__,
            "generated": (today or _dt.date.today()).isoformat(),
            "units": "dollars per million tokens",
            "providers": providers}


def write_snapshot(path: str | Path, snapshot: Mapping) -> None:
    """One provider per line block, one model per line: small, and diffs read well."""
    head = {k: v for k, v in snapshot.items() if k != "providers"}
    lines = ["{" + json.dumps(head, separators=(",", ":"))[1:-1] + ',"providers":[']
    for p_index, provider in enumerate(snapshot["providers"]):
        meta = {k: v for k, v in provider.items() if k != "models"}
        lines.append("{" + json.dumps(meta, separators=(",", ":"))[1:-1] + ',"models":[')
        models = provider["models"]
        for m_index, model in enumerate(models):
            lines.append(json.dumps(model, separators=(",", ":"))
                         + ("," if m_index < len(models) - 1 else ""))
        lines.append("]}" + ("," if p_index < len(snapshot["providers"]) - 1 else ""))
    lines.append("]}")
    Path(path).write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    import argparse
    parser = argparse.ArgumentParser(
        prog="python -m ragmon.instrument.price_database",
        description="Write a ragmon price snapshot from the installed genai-prices.")
    parser.add_argument("--out", default=str(SHIPPED_DATABASE_FILE),
                        help="where to write it (default: the package's shipped snapshot)")
    args = parser.parse_args(argv)
    if installed_genai_prices() is None:
        parser.error("genai-prices is not installed: pip install 'ragmon[prices]'")
    snapshot = snapshot_from_genai_prices()
    try:
        write_snapshot(args.out, snapshot)
    except OSError as exc:
        parser.error(f"cannot write {args.out} ({exc.strerror}); pass --out FILE somewhere "
                     "writable and point MODEL_PRICES_FILE at it")
    count = sum(len(p["models"]) for p in snapshot["providers"])
    print(f"wrote {args.out}: genai-prices {snapshot['version']}, {len(snapshot['providers'])} "
          f"providers, {count} models, generated {snapshot['generated']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
