"""The token kinds: one table, read by every way usage comes in and every place it goes out.

Each row names one kind once: the keyword every way in accepts (``record_tokens``, a returned
dict, ``PerformanceMonitor``), where each SDK shape reports it, the request record's key under
``tokens``, the ``token_type`` label of ``rag_tokens_total``, the ``ModelPrice`` field that
prices it and the report's column. Adding a kind is one row here plus its tests.

One input convention holds at every way in, the one OpenAI, the OpenTelemetry GenAI conventions
and genai-prices share: ``input_tokens`` is the *whole* prompt, cache reads and cache writes
included; ``output_tokens`` is the whole completion, reasoning included. A kind that is a part
of a whole (``part_of``) is either billed at its own price (then it is taken out of the whole,
so that the billed kinds never overlap and their sum is what the provider billed) or only shown
(reasoning: no price field, no subtraction). A part larger than its whole is refused.

The stored kinds never overlap: the record's ``tokens.input`` and ``token_type="input"`` are the
*uncached* prompt tokens, as they always were.
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping, NamedTuple


class TokenKind(NamedTuple):
    name: str  # the kind's one name inside the library (Usage.tokens key)
    field: str  # the keyword every way in accepts: record_tokens(...), a returned dict, ...
    record_key: str  # key under the request record's "tokens"
    metric_label: str | None  # token_type of rag_tokens_total; None: not a billed series
    price_field: str | None  # ModelPrice attribute (dollars per 1K); None: not billed apart
    part_of: str | None  # the kind whose reported count includes this one
    always_recorded: bool  # written in every record, even when 0
    sdk_fields: Mapping[str, str]  # SDK shape -> where that shape reports it (dotted path)
    # The RAGMetrics counter that counts it: "tokens" (rag_tokens_total{model, token_type}) for
    # billed kinds; a part that is only shown has its own {model} counter so no sum counts it twice.
    counter: str = "tokens"

    @property
    def column(self) -> str:
        """The report's (and Parquet history's) column for this kind."""
        return f"{self.record_key}_tokens"


KINDS: tuple[TokenKind, ...] = (
    TokenKind("input", "input_tokens", "input", "input", "input", None, True, {
        "openai_chat": "prompt_tokens", "openai_responses": "input_tokens",
        "anthropic": "input_tokens + cache_read_input_tokens + cache_creation_input_tokens",
        "gemini": "prompt_token_count", "langchain": "input_tokens"}),
    TokenKind("output", "output_tokens", "output", "output", "output", None, True, {
        "openai_chat": "completion_tokens", "openai_responses": "output_tokens",
        "anthropic": "output_tokens", "gemini": "candidates_token_count + thoughts_token_count",
        "langchain": "output_tokens"}),
    TokenKind("cached_input", "cached_input_tokens", "cached_input", "cached_input",
              "cached_input", "input", True, {
                  "openai_chat": "prompt_tokens_details.cached_tokens",
                  "openai_responses": "input_tokens_details.cached_tokens",
                  "anthropic": "cache_read_input_tokens",
                  "gemini": "cached_content_token_count",
                  "langchain": "input_token_details.cache_read"}),
    TokenKind("cache_write_5m", "cache_write_tokens", "cache_write_5m", "cache_write_5m",
              "cache_write", "input", False, {
                  "openai_chat": "prompt_tokens_details.cache_write_tokens",
                  "openai_responses": "input_tokens_details.cache_write_tokens",
                  "anthropic": "cache_creation.ephemeral_5m_input_tokens",
                  "langchain": "input_token_details.cache_creation"}),
    TokenKind("cache_write_1h", "cache_write_1h_tokens", "cache_write_1h", "cache_write_1h",
              "cache_write_1h", "input", False, {
                  "anthropic": "cache_creation.ephemeral_1h_input_tokens",
                  "langchain": "input_token_details.ephemeral_1h_input_tokens"}),
    TokenKind("reasoning", "reasoning_tokens", "reasoning", None, None, "output", False, {
        "openai_chat": "completion_tokens_details.reasoning_tokens",
        "openai_responses": "output_tokens_details.reasoning_tokens",
        "anthropic": "output_tokens_details.thinking_tokens",
        "gemini": "thoughts_token_count", "langchain": "output_token_details.reasoning"},
        "reasoning_tokens"),
)


class Plan(NamedTuple):
    """What the per-query path needs of the table, derived once per table (``plan()``)."""
    kinds: tuple
    fields: tuple[str, ...]  # way-in keywords, in table order
    field_set: frozenset  # the same, for `dict.keys() & field_set`
    name_of: dict[str, str]  # way-in keyword -> kind name
    parts: tuple[tuple[str, str, bool], ...]  # (part, whole, billed apart) of each part kind
    always: tuple[tuple[str, str], ...]  # (kind name, record key) of the kinds always recorded
    always_names: frozenset
    # {record key: 0} of the kinds always recorded, in table order, when each is recorded under
    # its own name (then a record's usual ``tokens`` is a copy of it updated with the counts).
    always_zero: dict | None


_plan: Plan | None = None


def plan() -> Plan:
    """The table's Plan, remade when the table changed (a test that adds a row)."""
    global _plan
    found = _plan
    if found is None or found.kinds is not KINDS:
        found = _plan = Plan(KINDS, tuple(kind.field for kind in KINDS),
                             frozenset(kind.field for kind in KINDS),
                             {kind.field: kind.name for kind in KINDS},
                             tuple((kind.name, kind.part_of, kind.price_field is not None)
                                   for kind in KINDS if kind.part_of is not None),
                             tuple((kind.name, kind.record_key) for kind in KINDS
                                   if kind.always_recorded),
                             frozenset(kind.name for kind in KINDS if kind.always_recorded),
                             {kind.record_key: 0 for kind in KINDS if kind.always_recorded}
                             if all(kind.record_key == kind.name for kind in KINDS) else None)
    return found


def kinds() -> tuple[TokenKind, ...]:
    """The kinds in force (read at call time, so one patched row reaches every reader)."""
    return KINDS


def kind_names() -> tuple[str, ...]:
    return tuple(kind.name for kind in KINDS)


def fields() -> tuple[str, ...]:
    """The keywords every way in accepts, in table order."""
    return tuple(kind.field for kind in KINDS)


def billed_labels() -> tuple[str, ...]:
    """The token_type label values of rag_tokens_total."""
    return tuple(kind.metric_label for kind in KINDS if kind.metric_label is not None)


def by_field(field: str) -> TokenKind | None:
    for kind in KINDS:
        if kind.field == field:
            return kind
    return None


class PartsExceedWhole(ValueError):
    """Reported parts (cache reads and writes, reasoning) larger than the whole they are in."""

    def __init__(self, whole: str, total: int, parts: dict[str, int]):
        self.whole, self.total, self.parts = whole, total, parts
        listed = " + ".join(f"{name}={count}" for name, count in parts.items())
        meaning = {"input": "the whole prompt, cache reads and writes included, as OpenAI's "
                            "prompt_tokens is",
                   "output": "the whole completion; reasoning tokens are a part of the output "
                             "tokens"}.get(whole, "the whole they are a part of")
        super().__init__(f"{listed} exceeds {whole}_tokens={total}; {whole}_tokens is {meaning}: "
                         f"pass {whole}_tokens={sum(parts.values())} or more")


class Usage:
    """Tokens of one LLM response (or of several, added up), by kind name; the billed kinds
    never overlap (``tokens["input"]`` is the uncached prompt)."""

    # No __slots__: the class attributes are the defaults, so the per-query path (reported())
    # sets only what it knows.
    FIELDS = ("tokens", "model", "provider", "response_id", "partial", "by_hand", "service_tier")
    model: str | None = None
    provider: str | None = None
    service_tier: str | None = None  # the one the response says applied ("flex", "priority"...)
    response_id: str | None = None
    partial = False
    by_hand = False

    def __init__(self, tokens: Mapping[str, int] | None = None, *, model: str | None = None,
                 provider: str | None = None, response_id: str | None = None,
                 partial: bool = False, by_hand: bool = False, service_tier: str | None = None,
                 **counts: int):
        found = dict.fromkeys(kind_names(), 0)
        if tokens:
            found.update(tokens)
        if counts:
            unknown = set(counts) - set(found)
            if unknown:
                raise TypeError(f"Usage() got unknown token kind(s) {sorted(unknown)}; the kinds "
                                f"are {', '.join(found)} (the way-in names such as input_tokens "
                                "go through Usage.reported())")
            found.update(counts)
        self.tokens = found
        self.model = model
        self.provider = provider
        self.response_id = response_id
        self.partial = partial
        self.by_hand = by_hand  # reported by the application (record_tokens, a returned dict)
        if service_tier is not None:
            self.service_tier = service_tier

    @classmethod
    def reported(cls, counts: Mapping[str, int], model: str | None = None,
                 provider: str | None = None, by_hand: bool = False) -> "Usage":
        """A Usage from counts under the way-in names (``input_tokens`` the whole prompt,
        ``output_tokens`` the whole completion, parts inside them); kinds without a count are
        left out of ``tokens`` (read them with ``usage[name]``). Raises PartsExceedWhole."""
        name_of = plan().name_of
        tokens = {}
        for field, value in counts.items():
            if value:
                tokens[name_of[field]] = value
        return cls.of_kinds(tokens, model, provider, by_hand)

    @classmethod
    def of_kinds(cls, tokens: dict[str, int], model: str | None = None,
                 provider: str | None = None, by_hand: bool = False) -> "Usage":
        """``reported`` for counts already keyed by kind name (each > 0, wholes including
        their parts): the dict is taken, not copied. Raises PartsExceedWhole. The usual
        usage (input and output only) is made without looking at the parts."""
        if len(tokens) > 2 or not tokens.keys() <= _WHOLES:
            p = plan()
            wholes: dict[str, int] = {}
            for part, whole, _ in p.parts:
                value = tokens.get(part)
                if value:
                    wholes[whole] = wholes.get(whole, 0) + value
            for whole, total in wholes.items():
                if total > tokens.get(whole, 0):
                    raise PartsExceedWhole(whole, tokens.get(whole, 0), {
                        by_name(part).field: tokens[part] for part, of, _ in p.parts
                        if of == whole and tokens.get(part)})
            for part, whole, billed in p.parts:
                if billed and tokens.get(part):
                    tokens[whole] -= tokens[part]
                    if not tokens[whole]:
                        del tokens[whole]
        usage = _new(cls)  # without __init__'s frame and table defaults: every query makes one
        usage.tokens = tokens
        if model is not None:
            usage.model = model
        if provider is not None:
            usage.provider = provider
        if by_hand:
            usage.by_hand = True
        return usage

    def as_reported(self) -> dict[str, int]:
        """The way-in spelling of these tokens: the inverse of ``reported``."""
        out = {kind.field: self.tokens.get(kind.name, 0) for kind in KINDS}
        for kind in KINDS:
            if kind.part_of is not None and kind.price_field is not None:
                out[by_name(kind.part_of).field] += self.tokens.get(kind.name, 0)
        return out

    def whole(self, name: str) -> int:
        """The reported whole of kind `name` (``whole("input")``: the prompt, cache included)."""
        tokens = self.tokens
        return tokens.get(name, 0) + sum(tokens.get(kind.name, 0) for kind in KINDS
                                         if kind.part_of == name and kind.price_field is not None)

    def __getitem__(self, name: str) -> int:
        return self.tokens.get(name, 0)

    def add(self, other: "Usage") -> None:
        mine = self.tokens
        for name, count in other.tokens.items():
            mine[name] = mine.get(name, 0) + count

    @property
    def billed_tokens(self) -> int:
        """Every billed token once (parts shown only, like reasoning, are inside their whole)."""
        return sum(self.tokens.get(kind.name, 0) for kind in KINDS if kind.price_field is not None)

    def as_dict(self) -> dict:
        return {kind.record_key: self.tokens.get(kind.name, 0) for kind in KINDS}

    def __eq__(self, other):
        return isinstance(other, Usage) and all(
            getattr(self, k) == getattr(other, k) for k in self.FIELDS[1:]) and all(
            self.tokens.get(name, 0) == other.tokens.get(name, 0)
            for name in {*self.tokens, *other.tokens})

    def __repr__(self):
        counts = ", ".join(f"{k}={v}" for k, v in self.tokens.items() if v)
        extra = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.FIELDS[1:]
                          if getattr(self, k) not in (None, False))
        return f"Usage({', '.join(part for part in (counts, extra) if part)})"


_WHOLES = frozenset(("input", "output"))
_new = object.__new__


def by_name(name: str) -> TokenKind:
    for kind in KINDS:
        if kind.name == name:
            return kind
    raise KeyError(name)


def record_tokens_field(usage_tokens: Mapping[str, int]) -> dict[str, int]:
    """The request record's ``tokens``: the kinds always recorded, and every kind when any of
    the others has a count (most records carry only the first three; readers take a missing
    kind as 0)."""
    p = _plan
    if p is None or p.kinds is not KINDS:
        p = plan()
    if usage_tokens.keys() <= p.always_names:  # the usual record: no other kind has a count
        if p.always_zero is not None:
            found = p.always_zero.copy()
            found.update(usage_tokens)
            return found
        return {key: usage_tokens.get(name, 0) for name, key in p.always}
    every = any(usage_tokens.get(kind.name) for kind in KINDS if not kind.always_recorded)
    return {kind.record_key: usage_tokens.get(kind.name, 0) for kind in KINDS
            if every or kind.always_recorded}


def total(usages: Iterable[Usage]) -> dict[str, int]:
    """Tokens by kind name, summed over `usages`."""
    out = dict.fromkeys(kind_names(), 0)
    for usage in usages:
        for name, count in usage.tokens.items():
            out[name] = out.get(name, 0) + count
    return out


def read_path(obj: Any, path: str, get) -> Any:
    """The value at a dotted `path` of an SDK object or dict (None when any step is absent),
    read with `get(obj, name)`."""
    for step in path.split("."):
        if obj is None:
            return None
        obj = get(obj, step)
    return obj
