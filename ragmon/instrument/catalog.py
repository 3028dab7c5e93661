"""The metric catalog: every metric the workspace exposes, defined once, in one class.

Names follow Prometheus conventions: one prefix (``rag_``), snake_case, base units as suffixes,
``_total`` on counters. Rules, dashboard and tests refer to these names; a contract test checks
that they agree with this file.

Each labelled metric is wrapped in a ``GuardedMetric``: ``.labels(...)`` first makes every value
safe (``checks.safe_label``: text, no unprintable characters, at most 128 characters), then
passes it through a ``LabelGuard`` with two budgets: at most MAX_LABEL_VALUES distinct values per
label (default 100) and at most MAX_SERIES_PER_METRIC label combinations per metric (default
1,000; 250 for histograms, MAX_SERIES_PER_HISTOGRAM; SERIES_LIMITS overrides it per metric). Past either budget the values become
``__other__`` (labels with a fixed vocabulary, such as ``status``, keep theirs), so totals stay
right and every overflow is counted in rag_label_overflow_total. Everything else is forwarded to
the plain prometheus_client metric underneath, so multiprocess mode keeps working.
"""
from __future__ import annotations

import logging
import os
import threading
from typing import Callable, Iterable

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram

from ..checks import MAX_LABEL_LENGTH, check_count, safe_label
from .notices import WarningLimiter
from .pricing import ModelPrice, PriceTable
from .tokens import billed_labels

log = logging.getLogger("ragmon")

PREFIX = "rag_"
OTHER = "__other__"

# LLM calls take from tens of milliseconds (cache hits) to a minute (long generations); the 2 s
# bucket is the latency alert's threshold, so p95 > 2 s is judged on a bucket edge.
QUERY_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 7.5,
                         10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0)
STAGE_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0,
                         30.0, 60.0)
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)
COST_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                0.5, 1.0, 5.0)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)
# Documents one retrieval returned: 0 is its own bucket (an empty retrieval), then top-k sizes.
RETRIEVED_DOCUMENT_BUCKETS = (0, 1, 2, 3, 5, 8, 13, 20, 50, 100)
# Age of the newest document a query used: a minute to three months; the stale-index alert
# compares against an hour-to-week edge.
DOCUMENT_AGE_BUCKETS = (60, 300, 900, 3600, 21600, 86400, 259200, 604800, 2592000, 7776000)

# Billed token kinds; they never overlap, so sum() over rag_tokens_total is what was billed.
# "cached_input" is prompt tokens read from the provider's cache; cache writes are split by the
# cache lifetime Anthropic bills differently. Reasoning tokens are a part of "output" and have
# their own counter (rag_reasoning_tokens_total) so that no sum counts them twice.
TOKEN_TYPES = billed_labels()  # from tokens.KINDS, the one table of token kinds
RATE_LIMIT_KINDS = ("requests", "tokens")
# The HTTP methods the middleware names; any other becomes "other", so a client cannot mint labels.
HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


# Labels whose values the library chooses from a fixed list; an overflowing series keeps them, so
# rag_queries_total{status="error"} still adds up when the operations past the budget are merged.
FIXED_VOCABULARY_LABELS = frozenset({"status", "token_type", "result", "feedback"})


def tokens_help() -> str:
    """rag_tokens_total's help text, naming the billed kinds of tokens.KINDS (the one table)."""
    return (f"LLM tokens billed, by model and type ({', '.join(billed_labels())}); the types "
            "never overlap.")


def _label_value(value: object) -> str:
    if type(value) is str and len(value) <= MAX_LABEL_LENGTH and value.isprintable():
        return value
    return safe_label(value)


class LabelGuard:
    """Bounds each metric's series: at most `limit(metric)` distinct values per label, at most
    `series_limit(metric)` label combinations per metric; what passes a budget becomes OTHER.

    The admitted sets only grow and hold only safe, length-capped values, so memory is bounded
    by the budgets and the hot path is one dict lookup and one set lookup.
    """

    def __init__(self, limit: Callable[[str], int], on_overflow: Callable[[str, str, str], None],
                 series_limit: Callable[[str], int] | None = None):
        self._limit = limit
        self._series_limit = series_limit or (lambda metric: 1_000)
        self._on_overflow = on_overflow
        self._seen: dict[tuple[str, str], set[str]] = {}
        self._series: dict[str, set[tuple[str, ...]]] = {}
        self._lock = threading.Lock()

    def admit(self, metric: str, label: str, value: object) -> str:
        """One label value on its own: safe, and OTHER once the label passed its budget."""
        value = _label_value(value)
        seen = self._seen.get((metric, label))
        if seen is not None and value in seen:
            return value
        with self._lock:
            seen = self._seen.setdefault((metric, label), set())
            if value in seen:
                return value
            if len(seen) < self._limit(metric):
                seen.add(value)
                return value
        self._on_overflow(metric, label, value)
        return OTHER

    def admit_series(self, metric: str, labelnames: tuple[str, ...],
                     values: tuple) -> tuple[str, ...]:
        """A whole label combination: each value admitted, then the combination counted against
        the metric's series budget. Past it, every caller-chosen label becomes OTHER."""
        values = tuple(self.admit(metric, label, value) for label, value in zip(labelnames, values))
        series = self._series.get(metric)
        if series is not None and values in series:
            return values
        with self._lock:
            series = self._series.setdefault(metric, set())
            if values in series:
                return values
            overflow = tuple(value if label in FIXED_VOCABULARY_LABELS else OTHER
                             for label, value in zip(labelnames, values))
            if values == overflow or len(series) < self._series_limit(metric):
                series.add(values)
                return values
        collapsed = "+".join(label for label in labelnames if label not in FIXED_VOCABULARY_LABELS)
        self._on_overflow(metric, collapsed, "")
        return overflow


class GuardedMetric:
    """A prometheus_client metric whose ``labels()`` passes each value through a LabelGuard."""

    __slots__ = ("metric", "_name", "_labelnames", "_guard")

    def __init__(self, metric, guard: LabelGuard):
        self.metric = metric
        # The name as exposed and as users write it in LABEL_LIMITS (counters end in _total).
        self._name = metric._name + ("_total" if metric._type == "counter" else "")
        self._labelnames = tuple(metric._labelnames)
        self._guard = guard

    def labels(self, *values: object, **kwvalues: object):
        if kwvalues and not values:
            if set(kwvalues) != set(self._labelnames):
                raise ValueError(f"{self._name} takes labels {list(self._labelnames)}; got "
                                 f"{sorted(kwvalues)}. Pass exactly those label names.")
            values = tuple(kwvalues[name] for name in self._labelnames)
        elif kwvalues or len(values) != len(self._labelnames):
            raise ValueError(f"{self._name} takes labels {list(self._labelnames)}; got "
                             f"{values or ''}{kwvalues or ''}. Pass one value per label.")
        return self.metric.labels(*self._guard.admit_series(self._name, self._labelnames, values))

    def __getattr__(self, item):
        return getattr(self.metric, item)

    def __repr__(self):
        return f"GuardedMetric({self.metric!r})"


CHILD_CACHE_SIZE = 4096


class BoundedCache(dict):
    """A dict that empties itself when full: a cache of values that are cheap to look up again,
    bounded in count (and, with length-capped keys, in memory) whatever callers pass."""

    __slots__ = ("max_size",)

    def __init__(self, max_size: int):
        super().__init__()
        self.max_size = max_size

    def __setitem__(self, key, value):
        if len(self) >= self.max_size and key not in self:
            self.clear()
        super().__setitem__(key, value)


def _make_multiprocess_dir() -> None:
    """In multiprocess mode metric files are opened as metrics are made (at import): a missing
    PROMETHEUS_MULTIPROC_DIR would make `import ragmon` fail, so it is created."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if path and not os.path.isdir(path):
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            log.error("cannot create PROMETHEUS_MULTIPROC_DIR=%s: %s; metrics will fail to "
                      "record until it exists and is writable", path, exc)


class RAGMetrics:
    """Every metric of a RAG service, registered in one registry.

    ``registry`` defaults to prometheus_client's global REGISTRY; tests pass their own.
    ``settings`` (ragmon Settings) supplies label limits and prices; without it the process-wide
    settings are read on first use (so importing the library reads no configuration) and read
    again after ``ragmon.configure(...)``.
    """

    def __init__(self, registry: CollectorRegistry | None = None, settings=None,
                 price_table: PriceTable | None = None):
        self.registry = REGISTRY if registry is None else registry
        _make_multiprocess_dir()
        from .exposition import register_catalog
        register_catalog(self.registry, self)
        self._settings = settings
        self._price_table = price_table
        self._follows_process_settings = settings is None
        self._own_price_table = price_table is not None
        self._warned_models: set[str] = set()
        self.warnings = WarningLimiter(log)  # the library's warnings about this catalog's data
        self._warned_overflow: set[tuple[str, str]] = set()
        self.guard = LabelGuard(self._label_limit, self._record_overflow, self._series_limit)
        # Labelled children looked up by the helpers in decorator.py, keyed by purpose+labels.
        # Keys are safe label values; the cache is emptied when it reaches CHILD_CACHE_SIZE.
        self.child_cache: dict[tuple, object] = BoundedCache(CHILD_CACHE_SIZE)
        # The admitted score names and feedback reasons (quality.QualityState), made on first use.
        self.quality_state = None

        def histogram(name, doc, labels, buckets, **kw):
            return Histogram(name, doc, labels, registry=self.registry, buckets=buckets, **kw)

        def counter(name, doc, labels=()):
            return Counter(name, doc, labels, registry=self.registry)

        def gauge(name, doc, labels, mode):
            return Gauge(name, doc, labels, registry=self.registry, multiprocess_mode=mode)

        P = PREFIX
        self.query_latency = histogram(
            f"{P}query_duration_seconds", "End-to-end query latency.", ["operation"],
            QUERY_LATENCY_BUCKETS)
        self.stage_latency = histogram(
            f"{P}stage_duration_seconds", "Latency of one stage (retrieval, generation, ...) of a query.",
            ["operation", "stage"], STAGE_LATENCY_BUCKETS)
        self.time_to_first_token = histogram(
            f"{P}time_to_first_token_seconds", "Time from query start to the first streamed chunk.",
            ["operation", "model"], TTFT_BUCKETS)
        self.queries = counter(
            f"{P}queries_total", "Queries finished, by outcome (success, error, cancelled).",
            ["operation", "status"])
        self.errors = counter(
            f"{P}errors_total", "Failed queries by exception type.", ["operation", "error_type"])
        self.tokens = counter(
            f"{P}tokens_total", tokens_help(), ["model", "token_type"])
        self.reasoning_tokens = counter(
            f"{P}reasoning_tokens_total", "Reasoning tokens by model: a part of the output tokens "
            "already counted in rag_tokens_total{token_type=\"output\"}, never to be added to them.",
            ["model"])
        self.partial_usage = counter(
            f"{P}partial_usage_total", "LLM calls whose final usage never arrived (stream "
            "abandoned or cut); their tokens are what was known: input and output so far.",
            ["model"])
        self.query_cost = histogram(
            f"{P}query_cost_dollars", "Cost of one query in dollars.", ["model"], COST_BUCKETS)
        self.spend = counter(
            f"{P}spend_dollars_total", "Money spent on LLM calls, in dollars.", ["model"])
        self.relevance = histogram(
            f"{P}relevance_score", "Relevance of the answer's context, 0..1.", ["operation"],
            SCORE_BUCKETS)
        self.context_precision = histogram(
            f"{P}context_precision", "Share of retrieved context that was relevant, 0..1.",
            ["operation"], SCORE_BUCKETS)
        self.evaluation_score = histogram(
            f"{P}evaluation_score", "Named quality scores 0..1 (an LLM judge, a heuristic, ragas; "
            "relevance_score and context_precision among them), observed when the query ends or, "
            "for a late evaluation, when the score arrives.", ["operation", "score"], SCORE_BUCKETS)
        self.evaluation_scores_refused = counter(
            f"{P}evaluation_scores_refused_total", "Scores left out of the metrics and the records, "
            "by reason (too_many_names, bad_name, bad_value, unknown_request, no_active_query).",
            ["reason"])
        self.late_evaluations = counter(
            f"{P}late_evaluations_total", "Evaluations attached to a request by its id after the "
            "answer (an asynchronous judge, a batch evaluation), one per record_scores call.",
            ["operation"])
        self.feedback = counter(
            f"{P}feedback_total", "User feedback accepted, by operation and class (positive, "
            "negative, neutral).", ["operation", "feedback"])
        self.feedback_reasons = counter(
            f"{P}feedback_reasons_total", "Reasons given with user feedback; past MAX_FEEDBACK_"
            "REASONS distinct reasons new ones are counted as other.", ["reason"])
        self.feedback_rejected = counter(
            f"{P}feedback_rejected_total", "User feedback refused, by reason (malformed_request_id, "
            "unknown_request, too_old, bad_value).", ["reason"])
        self.retrieved_documents = histogram(
            f"{P}retrieved_documents", "Documents one retrieval returned to the query.",
            ["operation"], RETRIEVED_DOCUMENT_BUCKETS)
        self.empty_retrievals = counter(
            f"{P}empty_retrievals_total", "Queries whose retrieval returned no document.",
            ["operation"])
        self.retrieval_queries = counter(
            f"{P}retrieval_queries_total", "Queries that reported their retrieval health (the "
            "denominator of the empty-retrieval ratio).", ["operation"])
        self.retrieval_top_score = histogram(
            f"{P}retrieval_top_score", "Similarity score 0..1 of the best document a query "
            "retrieved.", ["operation"], SCORE_BUCKETS)
        self.retrieval_document_age = histogram(
            f"{P}retrieval_newest_document_age_seconds", "Age of the newest document a query "
            "retrieved (index freshness), in seconds.", ["operation"], DOCUMENT_AGE_BUCKETS)
        self.cache_operations = counter(
            f"{P}cache_operations_total", "Cache lookups by cache type and result (hit, miss).",
            ["cache_type", "result"])
        self.in_flight = gauge(
            f"{P}queries_in_flight", "Queries currently being processed.", ["operation"], "livesum")
        self.rate_limit_requests = gauge(
            f"{P}rate_limit_remaining_requests", "Requests left in the provider's rate-limit window.",
            ["provider"], "mostrecent")
        self.rate_limit_tokens = gauge(
            f"{P}rate_limit_remaining_tokens", "Tokens left in the provider's rate-limit window.",
            ["provider"], "mostrecent")
        self.rate_limit_reset = gauge(
            f"{P}rate_limit_reset_timestamp_seconds", "When the provider's rate-limit window "
            "resets (Unix time); subtract time() for the seconds left.", ["provider", "limit"],
            "mostrecent")
        self.llm_errors = counter(
            f"{P}llm_errors_total", "Failed LLM SDK calls by provider and error type "
            "(RateLimitError, APITimeoutError, ...; other types are counted as APIError or other).",
            ["provider", "error_type"])
        self.unreadable_responses = counter(
            f"{P}unreadable_responses_total", "Returned LLM responses whose token usage could not "
            "be read (not recorded as zero tokens), by response shape.", ["shape"])
        self.instrumentation_errors = counter(
            f"{P}instrumentation_errors_total",
            "Monitoring failures that were logged and swallowed so the application kept running.",
            ["reason"])
        self.label_overflow = counter(
            f"{P}label_overflow_total",
            "Label values mapped to __other__ because a label passed its cardinality limit.",
            ["metric", "label"])
        self.duplicate_usage = counter(
            f"{P}duplicate_usage_total", "LLM usages reported twice within one query (by an "
            "instrumented client and again by hand, or the same response twice); counted once.",
            ["operation"])
        self.queries_without_usage = counter(
            f"{P}queries_without_usage_total", "Successful queries that name a model but received "
            "no token usage (an uninstrumented client whose text was returned): their tokens "
            "and cost are missing.", ["operation", "model"])
        self.unknown_model = counter(
            f"{P}unknown_model_total", "Cost calculations for models missing from the price table "
            "(priced at the default).")
        self.http_requests = counter(
            f"{P}http_requests_total",
            "HTTP requests answered, by method, route template and status class (2xx, 4xx, ...).",
            ["method", "route", "status_class"])
        self.http_latency = histogram(
            f"{P}http_request_duration_seconds",
            "Time from an HTTP request's arrival to its response headers; a streamed body is "
            "timed separately in rag_http_response_stream_duration_seconds.",
            ["method", "route"], QUERY_LATENCY_BUCKETS)
        self.http_stream = histogram(
            f"{P}http_response_stream_duration_seconds",
            "Time spent sending a streamed response body, from the headers to its last chunk or "
            "the client's disconnect.", ["method", "route"], QUERY_LATENCY_BUCKETS)
        self.service_info = gauge(
            f"{P}service_info", "Constant 1; labels name the service and environment.",
            ["service", "env"], "max")

        self._histograms = frozenset(value._name for value in vars(self).values()
                                     if isinstance(value, Histogram))
        # Guarded wrappers for every metric whose label values come from callers.
        for attr in ("query_latency", "stage_latency", "time_to_first_token", "queries", "errors",
                     "tokens", "query_cost", "spend", "relevance", "context_precision",
                     "cache_operations", "in_flight", "rate_limit_requests", "rate_limit_tokens",
                     "reasoning_tokens", "partial_usage", "rate_limit_reset", "llm_errors",
                     "unreadable_responses", "duplicate_usage", "queries_without_usage",
                     "http_requests", "http_latency", "http_stream", "evaluation_score",
                     "late_evaluations", "feedback", "feedback_reasons", "retrieved_documents",
                     "empty_retrievals", "retrieval_queries", "retrieval_top_score",
                     "retrieval_document_age"):
            setattr(self, attr, GuardedMetric(getattr(self, attr), self.guard))

    # --- catalog facts -----------------------------------------------------------------------
    def exposed_series_names(self) -> set[str]:
        """Every sample name Prometheus will see: ``_bucket``, ``_sum``, ``_count``, ``_total``..."""
        suffixes = {"histogram": ("_bucket", "_sum", "_count", "_created"),
                    "counter": ("_total", "_created"), "gauge": ("",)}
        out = set()
        for family in self._families():
            out.update(family.name + s for s in suffixes.get(family.type, ("",)))
        return out

    def _families(self) -> Iterable:
        for attr, value in vars(self).items():
            metric = value.metric if isinstance(value, GuardedMetric) else value
            if hasattr(metric, "describe") and hasattr(metric, "_labelnames"):
                yield from metric.describe()

    # --- settings-driven behaviour ----------------------------------------------------------
    @property
    def settings(self):
        if self._settings is None:
            from ..settings import get_settings
            self._settings = get_settings()
        return self._settings

    def settings_changed(self) -> None:
        """Forgets settings and prices read from the process-wide settings (after configure())."""
        if self._follows_process_settings:
            self._settings = None
        if not self._own_price_table:
            self._price_table = None

    @property
    def price_table(self) -> PriceTable:
        """Read once. A price file that cannot be read (servers check it at start, see
        settings.check_startup) is logged and counted once, and the default prices are used:
        the file is not read again per query and no cost calculation raises into the host."""
        if self._price_table is None:
            try:
                self._price_table = PriceTable.from_settings(self.settings)
            except (OSError, ValueError) as exc:
                settings = self.settings
                self._price_table = PriceTable(ModelPrice(
                    settings.COST_PER_1K_INPUT_TOKENS, settings.COST_PER_1K_OUTPUT_TOKENS,
                    settings.COST_PER_1K_CACHED_INPUT_TOKENS))
                self.count_instrumentation_error("price_file")
                log.error("monitoring: the price file cannot be used, so every model is priced at "
                          "the defaults until the settings change: %s (counted in "
                          "rag_instrumentation_errors_total{reason=\"price_file\"})", exc)
        return self._price_table

    def _label_limit(self, metric_name: str) -> int:
        return self.settings.label_limit(metric_name)

    def _series_limit(self, metric_name: str) -> int:
        return self.settings.series_limit(metric_name, metric_name in self._histograms)

    def _record_overflow(self, metric: str, label: str, value: str) -> None:
        self.label_overflow.labels(metric, label).inc()
        if (metric, label) not in self._warned_overflow:
            self._warned_overflow.add((metric, label))
            if not value:  # the series budget, not one label's
                log.warning("%s passed its budget of %d label combinations; further new "
                            "combinations are recorded with %s=%r. Raise SERIES_LIMITS=%s=N only "
                            "if every label is bounded.", metric, self._series_limit(metric),
                            label, OTHER, metric)
                return
            log.warning("label %r of %s passed its limit of %d distinct values; further new values "
                        "are recorded as %r. Is an unbounded value (user id, query text, request "
                        "id) being used as a label? Raise LABEL_LIMITS=%s=N only if the label is "
                        "bounded.", label, metric, self._label_limit(metric), OTHER, metric)

    # --- cost ------------------------------------------------------------------------------------
    def calculate_cost(self, input_tokens: int = 0, output_tokens: int = 0, model: str | None = None,
                       cached_input_tokens: int = 0, cache_write_tokens: int = 0,
                       cache_write_1h_tokens: int = 0) -> float:
        """Dollars for one call. Token counts must be whole numbers >= 0 (ValueError otherwise);
        ``input_tokens`` are the uncached ones, reasoning tokens are inside ``output_tokens``.

        An unknown model is priced at the configured default, warned about once and counted in
        ``rag_unknown_model_total``.
        """
        counts = [check_count(name, value) for name, value in (
            ("input_tokens", input_tokens), ("output_tokens", output_tokens),
            ("cached_input_tokens", cached_input_tokens), ("cache_write_tokens", cache_write_tokens),
            ("cache_write_1h_tokens", cache_write_1h_tokens))]
        found = self.price_table.match(model)
        if not found.known and model is not None:
            self.note_unknown_model(model)
        return found.price.cost(*counts)

    def note_unknown_model(self, model: str) -> None:
        self.unknown_model.inc()
        model = _label_value(model)
        if model not in self._warned_models:
            if len(self._warned_models) < 1000:
                self._warned_models.add(model)
            self.warnings.warn("unknown_model", "model %r is not in the price table; priced at the "
                               "default (input $%s, output $%s per 1K tokens), counted in "
                               "rag_unknown_model_total. Add it to MODEL_PRICES_FILE.", model,
                               self.price_table.default.input, self.price_table.default.output)

    def count_instrumentation_error(self, reason: str) -> None:
        self.instrumentation_errors.labels(reason).inc()
