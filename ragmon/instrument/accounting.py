"""One settlement path: a query's usages, its model and its day turned into tokens by kind,
dollars, the price match and what was left out, then counted in the metrics.

Every way usage comes in ends here: ``@monitored_query`` (its returned dict, ``record_tokens``
and SDK responses and streams read during the query), ``record_tokens`` and instrumented clients
outside a query, and ``PerformanceMonitor``. The request record is built from the Settlement.

``settle()`` computes; ``count()`` puts a Settlement into the metrics. Nothing in a settlement is
silent: a usage reported twice in one query (the same response id, or a count reported by hand
equal to one an SDK reported) is settled once and the duplicate counted; token counts past
MAX_TOKENS and costs past MAX_COST_DOLLARS are left out of the metrics, counted and kept raw.
"""
from __future__ import annotations

import datetime
import functools
import logging
import time
from typing import Any, Callable

from ..checks import MAX_COST_DOLLARS, MAX_TOKENS
from . import tokens
from .catalog import RAGMetrics
from .runtime import (STATE, cached_child, default_metrics, note_unreadable, recording_failed,
                      safe_name)
from .tokens import PartsExceedWhole, Usage
from .writers import adder, observer

log = logging.getLogger("ragmon")

STREAM_WITHOUT_USAGE_HINT = ("Pass stream_options={'include_usage': True} to OpenAI streams so "
                             "the final chunk reports usage. ")


def today() -> int:
    """Days since the epoch, UTC: prices change at midnight."""
    return int(time.time() // 86400)


@functools.lru_cache(maxsize=8)
def day_date(day: int) -> datetime.date:
    """The date of a day number; one object per day, however many models are priced on it."""
    return datetime.date(1970, 1, 1) + datetime.timedelta(days=day)


_rates: dict = {}


def rates_of(price) -> dict[str, float]:
    """{kind name: dollars per 1K} for every billed kind, from a ModelPrice's price fields;
    shared by the models priced alike (every default-priced model, for one)."""
    key = (id(price), id(tokens.KINDS))
    found = _rates.get(key)
    if found is None or found[0] is not price or found[2] is not tokens.KINDS:
        if len(_rates) >= 1000:
            _rates.clear()
        found = _rates[key] = (price, {kind.name: getattr(price, kind.price_field)
                                       for kind in tokens.KINDS if kind.price_field is not None},
                               tokens.KINDS)
    return found[1]


_described: dict = {}


def described(match) -> dict:
    """A PriceMatch's record ``pricing``, made once per match and shared by the models it priced
    (every default-priced model, for one): serialized, never changed."""
    found = _described.get(id(match))
    if found is None or found[0] is not match:
        if len(_described) >= 1000:
            _described.clear()
        found = _described[id(match)] = (match, match.describe())
    return found[1]


def dollars(counts: dict, rates: dict) -> float:
    total = 0.0
    for name, count in counts.items():
        rate = rates.get(name)
        if rate is not None:
            total += count * rate
    return total / 1000.0


class ModelSeries:
    """One model's price in force and its metric children, made on first use, for one
    operation: a model that never streamed has no time-to-first-token series, one without
    cached tokens no cached series."""

    __slots__ = ("metrics", "operation", "label", "model", "incs", "cost", "spend", "ttft",
                 "partial", "match", "rates", "known", "pricing", "day", "tiered",
                 "observe_cost", "inc_spend", "provider", "service_tier", "terms")

    def __init__(self, metrics: RAGMetrics, operation: str, model: str | None,
                 provider: str | None = None, service_tier: str | None = None):
        self.metrics, self.operation, self.model = metrics, operation, model
        # The terms the price is matched on, as the usage named them: the provider the SDK or
        # the response names, the service tier the response says applied.
        self.provider, self.service_tier = provider, service_tier
        self.terms: dict | None = None  # (provider, service tier) -> this model's series on them
        self.label = model if model is not None else "unknown"
        # Bound methods of the children, looked up once: count() calls them for every query.
        self.incs: dict[str, Any] = {}  # kind name -> its token counter child's inc
        self.cost = self.spend = self.ttft = self.partial = None
        self.observe_cost = self.inc_spend = None
        self.day = None

    def reprice(self, day: int) -> None:
        """Prices in force on `day` (days since the epoch, UTC)."""
        self.match = self.metrics.price_table.match(self.model, day_date(day),
                                                     provider=self.provider,
                                                     service_tier=self.service_tier)
        self.rates = rates_of(self.match.price)
        # Long-context tiers (a price with `tiers` and `for_prompt`): each usage is priced by
        # its own whole prompt, so a query's calls on either side of a threshold are right.
        self.tiered = bool(getattr(self.match.price, "tiers", ()))
        self.known = self.match.known or self.model is None
        self.pricing = described(self.match)
        self.day = day

    def on_terms(self, provider: str | None, service_tier: str | None) -> "ModelSeries":
        """This model's series priced for the provider and service tier a usage names; the same
        metric children."""
        if provider == self.provider and service_tier == self.service_tier:
            return self
        terms = self.terms
        if terms is None:
            terms = self.terms = {}
        key = (provider, service_tier)
        found = terms.get(key)
        if found is None:
            if len(terms) >= 16:  # tiers come from responses: bound them
                terms.clear()
            found = terms[key] = ModelSeries(self.metrics, self.operation, self.model, provider,
                                             service_tier)
            found.incs = self.incs
        if found.day != self.day:
            found.reprice(self.day)
        return found

    def for_prompt(self, prompt_tokens: int):
        """The PriceMatch of a usage whose whole prompt has `prompt_tokens` tokens (its
        long-context tier, when one applies)."""
        return self.metrics.price_table.match(self.model, day_date(self.day),
                                              provider=self.provider,
                                              service_tier=self.service_tier,
                                              prompt_tokens=prompt_tokens)

    def kind_inc(self, name: str):
        """The ``inc`` of kind `name`'s token counter child."""
        inc = self.incs.get(name)
        if inc is None:
            kind = tokens.by_name(name)
            counter = getattr(self.metrics, kind.counter)
            child = (counter.labels(self.label, kind.metric_label)
                     if kind.metric_label is not None else counter.labels(self.label))
            inc = self.incs[name] = adder(child)
        return inc

    def child(self, name: str):
        found = getattr(self, name)
        if found is None:
            m = self.metrics
            if name == "cost":
                found = m.query_cost.labels(self.label)
                self.observe_cost = observer(found)
            elif name == "spend":
                found = m.spend.labels(self.label)
                self.inc_spend = adder(found)
            elif name == "partial":
                found = m.partial_usage.labels(self.label)
            else:
                found = m.time_to_first_token.labels(self.operation, self.label)
            setattr(self, name, found)
        return found


def series_for(metrics: RAGMetrics, operation: str, model: str | None, day: int) -> ModelSeries:
    """The ModelSeries of (operation, model) kept in the catalog's bounded child cache, priced
    for `day`."""
    series = cached_child(metrics, ("series", operation, model),
                          lambda: ModelSeries(metrics, operation, model))
    if series.day != day:
        series.reprice(day)
    return series


_new = object.__new__


class Line:
    """One answering model's share of a settlement: its series (price and children), tokens
    by kind, dollars (None past the cost bound) and whether its usage is partial."""

    cost: float | None = 0.0
    partial = False
    # Dollars so far, when its usages are priced one by one (long-context tiers, or usages of
    # one model on other terms), and the tier-priced match that applied last.
    tiered_cost: float | None = None
    applied = None

    @property
    def pricing(self) -> dict:
        """The record's pricing of this model: its series', or the tier that applied."""
        return self.series.pricing if self.applied is None else described(self.applied)

    def __init__(self, series: ModelSeries, tokens: dict[str, int]):
        self.series = series
        self.tokens = tokens


class Settlement:
    """What a query used and cost: ``tokens`` by kind name (all lines), ``cost`` in dollars
    (None when nothing was priced), the ``model`` that answered last, one ``Line`` per model,
    the ``duplicates`` dropped, ``out_of_bounds`` raw values left out of the metrics."""

    # No __slots__: the class attributes are the defaults, set per query only when they change.
    tokens: dict[str, int] | None = None
    cost: float | None = None
    duplicates = 0
    out_of_bounds: dict | None = None
    provider: str | None = None
    partial = False

    def __init__(self, model: str | None):
        self.model = model
        self.lines: dict[str | None, Line] = {}

    @property
    def received(self) -> bool:
        """Whether any usage reached the settlement (kept or left out)."""
        return bool(self.lines) or bool(self.out_of_bounds) or self.duplicates > 0

    def pricing(self) -> dict | None:
        """The record's ``pricing``: how the answering model was priced (and every model's, when
        several answered), whether the usage is partial, the provider."""
        line = self.lines.get(self.model)
        if line is None:
            return None
        if len(self.lines) == 1 and not self.partial and self.provider is None:
            return line.pricing  # shared by the model's records: serialized, never changed
        found = dict(line.pricing)
        if len(self.lines) > 1:
            found["by_model"] = {name: each.pricing for name, each in self.lines.items()}
        if self.partial or self.provider is not None or len(self.lines) > 1 or found.get("partial"):
            found["partial"] = self.partial
        if self.provider:
            found["provider"] = self.provider
        return found

    def record_tokens(self) -> dict:
        return tokens.record_tokens_field(self.tokens or {})


def unique(usages: list[Usage]) -> tuple[list[Usage], int]:
    """`usages` with each usage once, and how many duplicates were dropped: a response id seen
    before, or a usage reported by hand whose whole input and output equal those of a usage an
    SDK reported in the same query (the same call reported twice)."""
    if len(usages) < 2:
        return usages, 0
    kept: list[Usage] = []
    seen: set = set()
    from_sdk = [(u.whole("input"), u.whole("output")) for u in usages if not u.by_hand]
    dropped = 0
    for usage in usages:
        rid = usage.response_id
        if rid is not None:
            if rid in seen:
                dropped += 1
                continue
            seen.add(rid)
        if usage.by_hand and from_sdk and (usage.whole("input"), usage.whole("output")) in from_sdk:
            dropped += 1
            continue
        kept.append(usage)
    return kept, dropped


def settle(usages: list[Usage], model: str | None, day: int,
           series: Callable[[str | None, int], ModelSeries]) -> Settlement:
    """Tokens by kind and dollars of a query's `usages`; a usage without a model is the query's
    `model`'s. `series(model, day)` gives the priced ModelSeries of a model."""
    if len(usages) == 1:  # the usual query: one usage, within bounds, one price
        usage = usages[0]
        s = series(usage.model or model, day)
        if usage.provider is not None or usage.service_tier is not None:
            s = s.on_terms(usage.provider, usage.service_tier)
        if not s.tiered and not usage.partial:
            counts = usage.tokens
            rates = s.rates
            one = 0.0
            for kind, value in counts.items():
                if value > MAX_TOKENS:
                    break
                rate = rates.get(kind)
                if rate is not None:
                    one += value * rate
            else:
                one /= 1000.0
                if one <= MAX_COST_DOLLARS:
                    # Settlement(...) and Line(...) without their __init__ frames: this runs for
                    # every query.
                    line = _new(Line)
                    line.series, line.tokens, line.cost = s, counts, one
                    result = _new(Settlement)
                    result.model, result.lines = s.model, {s.model: line}
                    result.cost = one
                    result.tokens = counts
                    if usage.provider is not None:
                        result.provider = usage.provider
                    return result
    result = Settlement(model)
    if len(usages) > 1:
        usages, result.duplicates = unique(usages)
    lines = result.lines
    for usage in usages:
        counts = usage.tokens
        if counts and max(counts.values()) > MAX_TOKENS:  # one return of 10**30 would add $1e23
            over = {tokens.by_name(name).field: value for name, value in counts.items()
                    if value > MAX_TOKENS}
            result.out_of_bounds = {**(result.out_of_bounds or {}), **over}
            counts = {name: value for name, value in counts.items() if value <= MAX_TOKENS}
        name = usage.model or model
        s = series(name, day)
        if usage.provider is not None or usage.service_tier is not None:
            s = s.on_terms(usage.provider, usage.service_tier)
        line = lines.get(name)
        if line is None:
            line = lines[name] = Line(s, dict(counts))
        else:
            if s is not line.series and line.tiered_cost is None:
                # Priced on other terms than the model's usages so far: each is priced on its own.
                line.tiered_cost = dollars(line.tokens, line.series.rates)
            mine = line.tokens
            for kind, count in counts.items():
                if count:
                    mine[kind] = mine.get(kind, 0) + count
        if s.tiered:
            prompt = usage.whole("input")
            price = s.match.price.for_prompt(prompt)
            if price is not s.match.price:  # a long-context tier applied: the record says which
                found = s.for_prompt(prompt)
                if found.tier != s.match.tier:
                    line.applied = found
            line.tiered_cost = (line.tiered_cost or 0.0) + dollars(counts, rates_of(price))
        elif line.tiered_cost is not None:
            line.tiered_cost += dollars(counts, s.rates)
        if usage.partial:
            line.partial = result.partial = True
        if usage.provider:
            result.provider = usage.provider
        result.model = name
    if len(lines) == 1:
        result.tokens = next(iter(lines.values())).tokens
    else:
        total: dict[str, int] = {}
        for line in lines.values():
            for kind, count in line.tokens.items():
                total[kind] = total.get(kind, 0) + count
        result.tokens = total
    cost = None
    for line in lines.values():
        rates = line.series.rates  # dollars(), inlined: this runs for every query
        one = 0.0
        for kind, value in line.tokens.items():
            rate = rates.get(kind)
            if rate is not None:
                one += value * rate
        one /= 1000.0
        if line.tiered_cost is not None:
            one = line.tiered_cost
        if one > MAX_COST_DOLLARS:
            result.out_of_bounds = {**(result.out_of_bounds or {}), "cost": one}
            line.cost = None
            continue
        line.cost = one
        cost = one if cost is None else cost + one
    result.cost = cost
    return result


def settle_plain(counts: dict[str, int], series: ModelSeries,
                 metrics: RAGMetrics) -> Settlement | None:
    """``settle()`` and ``count()`` of the usual query in one pass: one usage of wholes alone
    (``{"input": n, "output": m}``, counts > 0, as a returned dict gives them) at `series`'
    price. None, with nothing counted, when that price has long-context tiers or a count or the
    cost is past its bound: the caller then takes the whole way, which prices tiers, keeps such
    values out of the metrics and counts them."""
    if series.tiered:
        return None
    rates = series.rates
    one = 0.0
    for kind, value in counts.items():
        if value > MAX_TOKENS:
            return None
        rate = rates.get(kind)
        if rate is not None:
            one += value * rate
    one /= 1000.0
    if one > MAX_COST_DOLLARS:
        return None
    incs = series.incs
    for kind, value in counts.items():
        (incs.get(kind) or series.kind_inc(kind))(value)
    (series.observe_cost or series.child("cost").observe)(one)
    if one:
        (series.inc_spend or series.child("spend").inc)(one)
    if not series.known:
        metrics.note_unknown_model(series.model)
    line = _new(Line)  # Settlement(...) and Line(...) without their __init__ frames
    line.series, line.tokens, line.cost = series, counts, one
    result = _new(Settlement)
    result.model, result.lines = series.model, {series.model: line}
    result.cost = one
    result.tokens = counts
    return result


def count(settlement: Settlement, metrics: RAGMetrics, operation: str,
          first_token: float | None = None) -> None:
    """Puts a settlement into the metrics: tokens by kind, cost, spend, partial usage, the
    first token's time (under the answering model), unknown models, duplicates and bounds."""
    for name, line in settlement.lines.items():
        series = line.series
        cost = line.cost
        if cost is None:  # past the cost bound: no tokens or dollars of it counted
            continue
        incs = series.incs
        for kind, value in line.tokens.items():
            if value:
                (incs.get(kind) or series.kind_inc(kind))(value)
        if line.partial:
            series.child("partial").inc()
        (series.observe_cost or series.child("cost").observe)(cost)
        if cost:
            (series.inc_spend or series.child("spend").inc)(cost)
        if not series.known:
            metrics.note_unknown_model(name)
    if first_token is not None:
        line = settlement.lines.get(settlement.model)
        if line is not None:
            line.series.child("ttft").observe(first_token)
    if settlement.duplicates:
        metrics.duplicate_usage.labels(operation).inc(settlement.duplicates)
        recording_failed(None, "duplicate_usage", "%r reported the same LLM usage twice; counted "
                         "once (rag_duplicate_usage_total). An instrumented client already "
                         "records its calls: drop the record_tokens() or returned token counts "
                         "for them", operation)
    if settlement.out_of_bounds:
        recording_failed(metrics, "out_of_bounds", "%r reported %s above the bound of %d tokens "
                         "or $%s per call; left out of the metrics, kept in the record under "
                         "out_of_bounds", operation, ", ".join(settlement.out_of_bounds),
                         MAX_TOKENS, MAX_COST_DOLLARS)


def refused(metrics: RAGMetrics | None, operation: str, problem: PartsExceedWhole) -> dict:
    """Counts a usage refused because a part exceeds its whole; returns its raw counts for the
    record's out_of_bounds."""
    recording_failed(metrics, "parts_exceed_whole", "%r reported a usage whose parts exceed its "
                     "whole and was refused: %s", operation, problem)
    return {**problem.parts, f"{problem.whole}_tokens": problem.total}


def record_usage(usage: Usage, *, metrics: RAGMetrics | None = None, operation: str = "none",
                 first_token: float | None = None,
                 incomplete_stream: bool = False) -> float | None:
    """Counts one LLM call's usage now, outside any monitored query; returns its cost (None when
    it is past the sane bounds: counted, nothing recorded)."""
    m = metrics or default_metrics()
    model = safe_name(usage.model) if usage.model is not None else None
    usage.model = model
    settlement = settle([usage], model, today(),
                        lambda name, day: series_for(m, operation, name, day))
    count(settlement, m, operation, first_token)
    if STATE.otel is not None and not settlement.out_of_bounds:
        STATE.otel.usage_counted(usage, operation, settlement.cost)
    if incomplete_stream:
        note_unreadable(m, "stream_without_usage", STREAM_WITHOUT_USAGE_HINT)
    if settlement.out_of_bounds:
        return None
    return settlement.cost if settlement.cost is not None else 0.0
