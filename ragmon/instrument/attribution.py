"""Who spends it: attribution keys (tenant, team, feature, ...) carried by queries, and spend,
tokens and queries counted per key without a series per value.

How keys reach a query (the nearest wins: ``set_attribution`` inside the query, then the
innermost ``attribution()`` block or ``request_context(..., **keys)``, then the middleware's
headers, then ``monitored_query(attribution=...)``)::

    with ragmon.attribution(tenant="acme", team="search"):
        answer(question)

    @ragmon.monitored_query(operation="rag_search", attribution={"feature": "chat"})
    def answer(question): ...

Values are checked once, where they come in (a string of 1..64 characters from letters,
digits and ``._:@/+=-``; whole numbers are taken as their text): a bad one becomes ``invalid``,
is counted in ``rag_attribution_invalid_values_total{key}`` when its query finishes, and never
raises. Each request record carries ``attribution``: {key: value}.

Bounded metrics (``AttributionLedger``): per key, at most ATTRIBUTION_TOP_K values are *named*
(their own ``value`` label); every other value is counted under ``value="other"``. So each key
exposes at most K+1 series per metric (times token types), whatever the number of tenants. The
named values are the heaviest by recent spend (``HeavyValues``); membership changes only when a
newcomer clearly outweighs the weakest member, and each change is counted in
``rag_attribution_membership_changes_total{key}``.

No dollar is lost to the cap: every dollar of an attributed query is in exactly one series of
each key, so the sum over ``value`` equals the query totals at every scrape. When a value leaves
the named set its series cannot just be dropped (its dollars would vanish from the sum) nor kept
(the cap): in one process its counts move into ``other`` and the series goes, atomically with
respect to a scrape (the ledger's lock is held while the three metrics are collected). In one
process a finished query is queued and applied in batches (grouped by key set: one update per
request's keys, one lock per batch); a scrape applies the queue first, so it sees every query
that finished before it. In multi-process mode (PROMETHEUS_MULTIPROC_DIR) each query is written
to the worker's files at once; they keep the frozen series of values that left, and the
``/metrics`` merge (``fold_top_k``) names the K values heaviest across all workers and folds the
rest into ``other``, exactly. ``increase()`` over a window that holds a membership change counts
the departed value's earlier spend once more under ``other``: that is why changes are rare and
counted; exact per-value figures for any period come from the records (``report --by KEY``).

Budgets (BUDGETS_FILE) are exact: ``rag_budget_spend_dollars_total{key, value}`` counts every
dollar of each budgeted value (never folded), ``rag_budget_dollars{key, value, period}`` holds
the budget; both exist for the budgeted values only, so the budget file bounds them.
"""
from __future__ import annotations

import collections
import functools
import inspect
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

from prometheus_client import values as _client_values
from prometheus_client.metrics_core import Metric

from . import tokens
from .context import CURRENT_QUERY
from .hooks import on_finish, on_start, remove
from .keys import (CURRENT_KEYS, FIRST_USE, KEY_PATTERN, MAX_VALUE_LENGTH, OTHER, VALUE_PATTERN, Keys,
                   checked)
from .runtime import default_metrics, recording_failed
from .writers import adder

log = logging.getLogger("ragmon")

MAX_BUDGETED_VALUES = 10_000
BUDGET_PERIODS = ("daily", "monthly")


class attribution:
    """Attributes the queries inside to the given keys: a context manager and a decorator.

        with ragmon.attribution(tenant="acme", feature="search"):
            answer(question)

        @ragmon.attribution(feature="summaries")
        def summarize(...): ...

    Nested blocks add to (and override) the outer ones. Values are checked; a bad one is
    recorded as ``invalid`` and counted, never raised."""

    def __init__(self, **keys: object):
        self.keys = checked(keys)
        self._tokens: list = []
        use()

    def __enter__(self) -> "attribution":
        keys = self.keys
        self._tokens.append(CURRENT_KEYS.set(keys.over(CURRENT_KEYS.get()) if keys is not None
                                             else CURRENT_KEYS.get()))
        return self

    def __exit__(self, *exc_info) -> None:
        CURRENT_KEYS.reset(self._tokens.pop())

    def __call__(self, fn: Callable) -> Callable:
        if not callable(fn):
            raise ValueError(f"@attribution(...) decorates functions; got {fn!r}")
        keys = self.keys
        if inspect.isasyncgenfunction(fn):
            @functools.wraps(fn)
            async def attributed_async_gen(*args, **kwargs):
                inner = fn(*args, **kwargs)
                step, arg = inner.asend, None
                while True:
                    token = CURRENT_KEYS.set(_over_current(keys))
                    try:
                        item = await step(arg)
                    except StopAsyncIteration:
                        return
                    finally:
                        CURRENT_KEYS.reset(token)
                    try:
                        arg = yield item
                        step = inner.asend
                    except GeneratorExit:
                        await inner.aclose()
                        raise
                    except BaseException as thrown:
                        step, arg = inner.athrow, thrown
            return attributed_async_gen
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def attributed_gen(*args, **kwargs):
                inner = fn(*args, **kwargs)
                step, arg = inner.send, None
                while True:
                    token = CURRENT_KEYS.set(_over_current(keys))
                    try:
                        item = step(arg)
                    except StopIteration as stop:
                        return stop.value
                    finally:
                        CURRENT_KEYS.reset(token)
                    try:
                        arg = yield item
                        step = inner.send
                    except GeneratorExit:
                        inner.close()
                        raise
                    except BaseException as thrown:
                        step, arg = inner.throw, thrown
            return attributed_gen
        if inspect.iscoroutinefunction(fn):
            @functools.wraps(fn)
            async def attributed_coroutine(*args, **kwargs):
                token = CURRENT_KEYS.set(_over_current(keys))
                try:
                    return await fn(*args, **kwargs)
                finally:
                    CURRENT_KEYS.reset(token)
            return attributed_coroutine

        @functools.wraps(fn)
        def attributed(*args, **kwargs):
            token = CURRENT_KEYS.set(_over_current(keys))
            try:
                return fn(*args, **kwargs)
            finally:
                CURRENT_KEYS.reset(token)
        return attributed


def _over_current(keys: Keys | None) -> Keys | None:
    current = CURRENT_KEYS.get()
    return keys.over(current) if keys is not None else current


def set_attribution(**keys: object) -> bool:
    """Sets attribution keys of the query in progress (e.g. the tenant, once the request is
    authenticated). Returns False, and counts it, when no monitored query is running."""
    query = CURRENT_QUERY.get()
    if query is None:
        recording_failed(default_metrics(), "no_active_query", "set_attribution(%s) outside a "
                         "monitored query", ", ".join(str(name)[:40] for name in keys))
        return False
    found = checked(keys, "set_attribution")
    use()
    if found is not None:
        extra = query.extras()
        extra.attribution = found.over(extra.attribution)
    return True


def fixed_keys(keys: Mapping[str, Any] | None) -> Keys | None:
    """``monitored_query(attribution=...)``: checked when the function is decorated, where a bad
    value is a programming error and raises ValueError naming it."""
    if keys is None:
        return None
    if not isinstance(keys, Mapping):
        raise ValueError(f"attribution={keys!r} must be a mapping of keys to values, e.g. "
                         "attribution={'feature': 'chat'}")
    for key, value in keys.items():
        if type(key) is not str or not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"attribution key {key!r} is not a lower-case name (letters, digits, "
                             "_), e.g. attribution={'feature': 'chat'}")
        text = str(value) if type(value) is int else value
        if type(text) is not str or not VALUE_PATTERN.fullmatch(text):
            raise ValueError(f"attribution={{{key!r}: {value!r}}}: the value must be 1 to "
                             f"{MAX_VALUE_LENGTH} letters, digits or ._:@/+=- characters, "
                             "e.g. 'chat'")
    found = checked(keys)
    if found is not None:
        use()
    return found


# --- the query path (hooks.py): registered on first use, never at import ---------------------------

def start_hook(ctx) -> None:
    """Gives a starting query the keys in force: those of the code around it over the fixed
    ones of its monitored_query."""
    keys = CURRENT_KEYS.get()
    fixed = ctx.owner.attribution
    if fixed is not None:
        keys = fixed if keys is None else keys.over(fixed)
    if keys is not None:
        ctx.extras().attribution = keys


def finish_hook(ctx, done) -> None:
    """Counts an attributed query and puts its keys in its record."""
    extra = ctx.extra
    keys = extra.attribution if extra is not None else None
    if keys is None:
        return
    metrics = ctx.owner.metrics
    ledger = metrics.attribution_ledger
    if ledger is None or ledger.stale:
        ledger = ledger_of(metrics)
    ledger.observe(keys, done.settlement)
    if done.record is not None:
        done.record["attribution"] = keys.values


def use() -> None:
    """Joins the query path (once): called when attribution is first used."""
    if not _registered:
        _register()


_registered = False


def _register() -> None:
    global _registered
    on_start(start_hook)
    on_finish(finish_hook)
    _registered = True


def stop_using() -> None:
    """Leaves the query path (tests; the next use joins it again)."""
    global _registered
    remove(start_hook)
    remove(finish_hook)
    _registered = False


FIRST_USE.activate = use  # request_context(**keys) and the middleware bind keys through keys.bind


# --- bounded metrics --------------------------------------------------------------------------

class HeavyValues:
    """Which values of one key are named: the heaviest by recent spend, with few changes.

    A weighted Misra–Gries sketch (the batch variant of space-saving) of at most 2×`capacity`
    counters estimates each value's spend from below, with an error of at most the total over
    `capacity`; it costs one dict update per query and a sort of 2×`capacity` numbers every
    `capacity` new values, so memory and time stay bounded for any number of distinct values.
    Every count and the total halve each `half_life` seconds, so the estimate is the spend over
    a sliding window of roughly the last few half-lives and a tenant that stopped spending
    fades.

    While fewer than `k` values are named, a value is named on first sight. After that a value
    replaces the weakest named one only when its estimate is at least 1/(2k) of the window's
    total (a heavy hitter, which an under-estimate cannot fake) and more than `hysteresis` times
    the weakest one's: a crowd of light values never churns the set, and two values of similar
    weight never swap back and forth.
    """

    def __init__(self, k: int, capacity: int | None = None, half_life: float = 1800.0,
                 hysteresis: float = 2.0, clock: Callable[[], float] = time.monotonic):
        self.k = k
        self.capacity = capacity or max(8 * k, 64)
        self.half_life = half_life
        self.hysteresis = hysteresis
        self.clock = clock
        self.scores: dict[str, float] = {}
        self.total = 0.0
        self.named: set[str] = set()
        self.updates = 0
        self.next_decay = clock() + half_life
        self.min_share = 1.0 / (2 * k)

    def add(self, value: str, weight: float) -> tuple[str, str | None] | None:
        """Counts `weight` for `value`; returns (named, replaced or None) when `value` joins the
        named set, else None."""
        self.updates += 1
        if not self.updates & 255 and self.clock() >= self.next_decay:
            self._decay()
        scores = self.scores
        score = scores.get(value, 0.0) + weight
        scores[value] = score
        self.total += weight
        if len(scores) > 2 * self.capacity:
            self._shrink()
            score = scores.get(value, 0.0)
        if value in self.named or value == OTHER:
            return None
        if len(self.named) < self.k:
            self.named.add(value)
            return value, None
        if score < self.total * self.min_share:
            return None
        weakest = min(self.named, key=lambda name: (scores.get(name, 0.0), name))
        if score <= self.hysteresis * scores.get(weakest, 0.0):
            return None
        self.named.discard(weakest)
        self.named.add(value)
        return value, weakest

    def _shrink(self) -> None:
        ordered = sorted(self.scores.values(), reverse=True)
        cut = ordered[self.capacity]
        self.scores = {value: score - cut for value, score in self.scores.items() if score > cut}

    def _decay(self) -> None:
        self.next_decay = self.clock() + self.half_life
        self.total /= 2
        self.scores = {value: score / 2 for value, score in self.scores.items()}


class _Tally:
    """The counts of one named value (or ``other``) of one key, in one process: plain numbers
    under the ledger's lock (one lock per query instead of one per series), exposed by the
    ledger's collection of the three attributed metrics."""

    __slots__ = ("value", "queries", "spend", "tokens")

    def __init__(self, value: str):
        self.value = value
        self.queries = 0
        self.spend = 0.0
        self.tokens: dict[str, int] = {}  # token_type -> tokens

    def add(self, queries: int, cost: float, labelled) -> None:
        """Queries, their cost and their billed tokens as (token_type, count) pairs."""
        self.queries += queries
        self.spend += cost
        if labelled:
            tokens = self.tokens
            for label, count in labelled:
                tokens[label] = tokens.get(label, 0) + count

    def absorb(self, other: "_Tally") -> None:
        """Takes a departing value's counts (into ``other``)."""
        self.queries += other.queries
        self.spend += other.spend
        for label, count in other.tokens.items():
            self.tokens[label] = self.tokens.get(label, 0) + count


class _Series:
    """The counts of one named value (or ``other``) of one key in multi-process mode: the
    metric children themselves (their values live in the worker's files), written through
    value-level writers (writers.py)."""

    __slots__ = ("metrics", "key", "value", "add_spend", "add_query", "token_adders")

    def __init__(self, metrics, key: str, value: str):
        self.metrics, self.key, self.value = metrics, key, value
        self.add_spend = adder(metrics.attributed_spend.labels(key, value))
        self.add_query = adder(metrics.attributed_queries.labels(key, value))
        self.token_adders: dict[str, Any] = {}  # token_type -> its child's writer

    def add(self, queries: int, cost: float, labelled) -> None:
        self.add_query(queries)
        if cost:
            self.add_spend(cost)
        adders = self.token_adders
        for label, count in labelled:
            add = adders.get(label)
            if add is None:
                add = adders[label] = adder(
                    self.metrics.attributed_tokens.labels(self.key, self.value, label))
            add(count)


def multiprocess_mode() -> bool:
    return bool(getattr(_client_values.ValueClass, "_multiprocess", False))


class AttributionLedger:
    """The attribution metrics of one catalog: per configured key its HeavyValues and the
    counts of the named values and ``other``; the budgets in force.

    In one process the counts are ``_Tally`` numbers under one lock, which also covers the
    collection of the three attributed metrics (``samples``), so a scrape never sees a dollar
    twice or not at all, even while a value's counts move into ``other``. In multi-process mode
    they are the metric children (``_Series``), whose values live in the worker's files."""

    BATCH = 256  # queued queries applied together (one process)
    stale = False  # the settings changed: ledger_of() makes a new one, which takes the counts

    def __init__(self, metrics, settings, clock: Callable[[], float] = time.monotonic,
                 previous: "AttributionLedger | None" = None):
        self.metrics = metrics
        self.keys = tuple(settings.ATTRIBUTION_KEYS)
        self.k = settings.ATTRIBUTION_TOP_K
        self.lock = threading.Lock()
        self.heavy = {key: HeavyValues(self.k, clock=clock) for key in self.keys}
        self.multiprocess = multiprocess_mode()
        make = ((lambda key, value: _Series(metrics, key, value)) if self.multiprocess
                else (lambda key, value: _Tally(value)))
        self.make = make
        self.slots: dict[str, dict[str, Any]] = {key: {} for key in self.keys}
        self.other = {key: make(key, OTHER) for key in self.keys}
        self.changes = {key: metrics.attribution_membership_changes.labels(key)
                        for key in self.keys}
        self.per_key = tuple((key, self.slots[key], self.heavy[key], self.other[key])
                             for key in self.keys)
        self.pending: collections.deque = collections.deque()
        self.previous = previous if not self.multiprocess else None
        # Multi-process mode keeps the frozen series of values that left (see the module
        # docstring); at most this many per key, after which the set stops changing.
        self.frozen: dict[str, int] = dict.fromkeys(self.keys, 0)
        self.max_frozen = 10 * self.k
        if previous is not None and not self.multiprocess:
            with previous.lock:  # its counts stay in the sums, under "other"
                previous._apply_pending()
                previous.previous = None
                for key in set(previous.keys) & set(self.keys):
                    for tally in (*previous.slots[key].values(), previous.other[key]):
                        self.other[key].absorb(tally)
        if not self.multiprocess:
            for metric, field in ((metrics.attributed_spend, "spend"),
                                  (metrics.attributed_queries, "queries"),
                                  (metrics.attributed_tokens, "tokens")):
                metric.samples_from = functools.partial(self.samples, field)
        self.budgets: dict[str, dict[str, dict[str, float]]] = {}
        self.budget_spend: dict[tuple[str, str], Any] = {}
        if settings.BUDGETS_FILE:
            try:
                self.set_budgets(load_budgets(settings.BUDGETS_FILE))
            except (OSError, ValueError) as exc:
                recording_failed(metrics, "budgets_file", "BUDGETS_FILE cannot be used, so no "
                                 "budget is exposed until the settings change: %s", exc)

    def set_budgets(self, budgets: dict[str, dict[str, dict[str, float]]]) -> None:
        m = self.metrics
        for key, by_value in budgets.items():
            for value, periods in by_value.items():
                for period, dollars in periods.items():
                    m.budget_dollars.labels(key, value, period).set(dollars)
                self.budget_spend[(key, value)] = adder(m.budget_spend.labels(key, value))
        self.budgets = budgets

    def samples(self, field: str) -> list[tuple[dict, float]]:
        """(labels, value) of every series of one attributed metric (`field`: spend, queries or
        tokens), read under the lock (one process)."""
        out = []
        with self.lock:
            self._apply_pending()
            for key in self.keys:
                for tally in (*self.slots[key].values(), self.other[key]):
                    if field == "tokens":
                        out.extend(({"key": key, "value": tally.value, "token_type": label}, n)
                                   for label, n in tally.tokens.items())
                    else:
                        out.append(({"key": key, "value": tally.value}, getattr(tally, field)))
        return out

    def observe(self, keys: Keys, settlement) -> None:
        """Counts one finished query of `keys` and its settlement (None: no usage)."""
        if keys.invalid:
            for key in keys.invalid:
                self.metrics.attribution_invalid_values.labels(
                    key if key in self.heavy else "unconfigured").inc()
        cost = 0.0
        counts = None  # billed tokens by kind name
        if settlement is not None:
            lines = settlement.lines
            if len(lines) == 1 and settlement.cost is not None:  # the usual query: one model
                cost, counts = settlement.cost, settlement.tokens
            else:
                counts = {}
                for line in lines.values():
                    if line.cost is None:  # past the cost bound: left out, as count() does
                        continue
                    cost += line.cost
                    for kind, value in line.tokens.items():
                        if value:
                            counts[kind] = counts.get(kind, 0) + value
        values = keys.values
        if self.multiprocess:  # the values live in the files: written now, for every scrape
            with self.lock:
                self._apply(values, 1, cost, _labelled(counts))
        else:
            # Queued (deque appends are atomic), applied in batches by whoever passes
            # BATCH queries or scrapes: a batch pays the lock once and updates each key set
            # it holds once, and a scrape applies every query that finished before it.
            pending = self.pending
            pending.append((values, cost, counts))
            if len(pending) >= self.BATCH:
                with self.lock:
                    self._apply_pending()
        if self.budgets and cost:
            for key, value in values.items():
                budget = self.budget_spend.get((key, value))
                if budget is not None:
                    budget(cost)

    def _apply_pending(self) -> None:
        """Applies the queued queries (under the lock), grouped by their key set: the queries
        of one request share its Keys (keys.checked keeps them), so a batch of a heavy tenant
        becomes one update."""
        pending = self.pending
        previous = self.previous
        if previous is not None and previous.pending:  # queued by a query that began before
            take = previous.pending.popleft            # configure(): counted here
            while previous.pending:
                try:
                    pending.append(take())
                except IndexError:
                    break
        pop = pending.popleft
        groups: dict[int, list] = {}
        while pending:
            try:
                values, cost, counts = pop()
            except IndexError:
                break
            group = groups.get(id(values))
            if group is None:
                groups[id(values)] = [values, 1, cost, dict(counts) if counts else {}]
            else:
                group[1] += 1
                group[2] += cost
                if counts:
                    tokens = group[3]
                    for kind, n in counts.items():
                        tokens[kind] = tokens.get(kind, 0) + n
        for values, queries, cost, tokens in groups.values():
            self._apply(values, queries, cost, _labelled(tokens))

    def _apply(self, values: dict, queries: int, cost: float, labelled) -> None:
        """Counts `queries` queries of the key set `values`, their cost and billed tokens."""
        for key, slots, heavy, other in self.per_key:
            value = values.get(key)
            if value is None:
                continue
            slot = slots.get(value)
            change = heavy.add(value, cost)
            if slot is None:
                if change is not None:
                    slot = self._admit(key, *change)
                if slot is None:
                    slot = other
            slot.add(queries, cost, labelled)

    def _admit(self, key: str, value: str, replaced: str | None):
        slots = self.slots[key]
        if replaced is not None:
            if self.multiprocess:
                if self.frozen[key] >= self.max_frozen:
                    heavy = self.heavy[key]  # the set stops changing: undo the swap
                    heavy.named.discard(value)
                    heavy.named.add(replaced)
                    return None
                self.frozen[key] += 1
                slots.pop(replaced, None)  # the worker's file keeps it; fold_top_k folds it
            else:
                self.other[key].absorb(slots.pop(replaced))
        self.changes[key].inc()
        slot = slots[value] = self.make(key, value)
        return slot


def _token_label(kind_name: str) -> str | None:
    """The token_type label of a billed kind (None: a kind only shown, such as reasoning)."""
    try:
        kind = tokens.by_name(kind_name)
    except KeyError:
        return None
    return kind.metric_label if kind.counter == "tokens" else None


def _labelled(counts: dict | None) -> list:
    """(token_type, count) of the billed kinds among `counts` (by kind name)."""
    if not counts:
        return []
    labels = _TOKEN_LABELS
    return [(labels[kind], n) for kind, n in counts.items() if n and labels[kind] is not None]


class _TokenLabels(dict):
    """kind name -> token_type label (None: not billed apart), filled on first sight."""

    def __missing__(self, kind_name: str):
        label = self[kind_name] = _token_label(kind_name)
        return label


_TOKEN_LABELS = _TokenLabels()


_ledger_lock = threading.Lock()


def ledger_of(metrics) -> AttributionLedger:
    """The catalog's ledger, made on first use from its settings (and again after configure())."""
    ledger = metrics.attribution_ledger
    if ledger is None or ledger.stale:
        with _ledger_lock:
            ledger = metrics.attribution_ledger
            if ledger is None or ledger.stale:
                ledger = metrics.attribution_ledger = AttributionLedger(
                    metrics, metrics.settings, previous=ledger)
    return ledger


# --- the multi-process merge ------------------------------------------------------------------

ATTRIBUTED_FAMILIES = ("rag_attributed_spend_dollars", "rag_attributed_queries",
                       "rag_attributed_tokens")


def fold_top_k(families: Iterable[Metric], k: int) -> list[Metric]:
    """Every worker's attributed series merged (MultiProcessCollector's output), with at most
    `k` named values per key (the heaviest by spend, ties by name) and the rest added into
    ``other``. Exact: each sample is kept or added once."""
    families = list(families)
    spend: dict[str, dict[str, float]] = {}
    for family in families:
        if family.name == ATTRIBUTED_FAMILIES[0]:
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    by_value = spend.setdefault(sample.labels["key"], {})
                    value = sample.labels["value"]
                    by_value[value] = by_value.get(value, 0.0) + sample.value
    named = {key: set(sorted((v for v in by_value if v != OTHER),
                             key=lambda v: (-by_value[v], v))[:k])
             for key, by_value in spend.items()}
    out = []
    for family in families:
        if family.name not in ATTRIBUTED_FAMILIES:
            out.append(family)
            continue
        merged: dict[tuple, float] = {}
        for sample in family.samples:
            if not sample.name.endswith("_total"):
                continue
            labels = dict(sample.labels)
            if labels["value"] not in named.get(labels["key"], ()):
                labels["value"] = OTHER
            identity = (sample.name, tuple(sorted(labels.items())))
            merged[identity] = merged.get(identity, 0.0) + sample.value
        folded = Metric(family.name, family.documentation, family.type, family.unit)
        for (name, labels), value in sorted(merged.items()):
            folded.add_sample(name, dict(labels), value)
        out.append(folded)
    return out


# --- budgets ----------------------------------------------------------------------------------

_BUDGET_EXAMPLE = '{"tenant": {"acme": {"daily": 50, "monthly": 1000}}}'


def load_budgets(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """{key: {value: {period: dollars}}} from a JSON or YAML budgets file; ValueError naming the
    bad entry (FileNotFoundError when the file is missing)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"BUDGETS_FILE={str(path)!r} does not exist; point it at a JSON "
                                f"or YAML budgets file such as {_BUDGET_EXAMPLE}, or set it empty")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:
            raise ValueError(f"budgets file {str(path)!r} is YAML, which needs PyYAML "
                             "(pip install 'ragmon[stack]'); or write it as JSON") from None
        try:
            raw = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValueError(f"budgets file {str(path)!r} is not valid YAML ({exc}); expected "
                             f"e.g. {_BUDGET_EXAMPLE} in YAML form") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"budgets file {str(path)!r} is not valid JSON ({exc}); expected "
                             f"e.g. {_BUDGET_EXAMPLE}") from None
    return parse_budgets(raw, str(path))


def parse_budgets(raw: object, where: str = "budgets") -> dict[str, dict[str, dict[str, float]]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"budgets file {where!r} holds a {type(raw).__name__}; expected an "
                         f"object of keys, e.g. {_BUDGET_EXAMPLE}")
    out: dict[str, dict[str, dict[str, float]]] = {}
    entries = 0
    for key, by_value in raw.items():
        if isinstance(key, str) and key.startswith("_"):  # "_comment" and similar
            continue
        if type(key) is not str or not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"budgets file {where!r}: key {key!r} is not an attribution key "
                             f"(a lower-case name such as tenant); expected e.g. {_BUDGET_EXAMPLE}")
        if not isinstance(by_value, dict):
            raise ValueError(f"budgets file {where!r}: {key!r} must map values to budgets, e.g. "
                             f"{{\"acme\": {{\"daily\": 50}}}}; got {by_value!r}")
        for value, periods in by_value.items():
            text = str(value) if type(value) is int else value
            if type(text) is not str or not VALUE_PATTERN.fullmatch(text) or text == OTHER:
                raise ValueError(f"budgets file {where!r}: {key} value {value!r} is not a valid "
                                 f"attribution value (1 to {MAX_VALUE_LENGTH} letters, digits or "
                                 "._:@/+=-, not 'other')")
            if not isinstance(periods, dict) or not periods or not set(periods) <= set(BUDGET_PERIODS):
                raise ValueError(f"budgets file {where!r}: {key} {text!r}: {periods!r} must hold "
                                 "daily and/or monthly dollars, e.g. {\"daily\": 50, "
                                 "\"monthly\": 1000}")
            checked_periods = {}
            for period, dollars in periods.items():
                if (isinstance(dollars, bool) or not isinstance(dollars, (int, float))
                        or not dollars > 0 or dollars == float("inf")):
                    raise ValueError(f"budgets file {where!r}: {key} {text!r} {period} budget "
                                     f"{dollars!r} is not a number of dollars > 0, e.g. 50")
                checked_periods[period] = float(dollars)
            out.setdefault(key, {})[text] = checked_periods
            entries += 1
            if entries > MAX_BUDGETED_VALUES:
                raise ValueError(f"budgets file {where!r} budgets more than "
                                 f"{MAX_BUDGETED_VALUES} values; each is a series: keep budgets "
                                 "for the values that need alerts")
    return out
