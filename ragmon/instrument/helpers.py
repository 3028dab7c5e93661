"""What a query's own code reports while it runs: tokens (``record_tokens``), quality scores,
cache lookups and free-form attributes. Inside a ``@monitored_query`` each adds to that query;
``record_tokens`` and ``track_cache_operation`` also work outside one."""
from __future__ import annotations

from typing import Any

from ..checks import check_count, check_name, check_score, safe_label
from . import tokens
from .accounting import record_usage, refused
from .catalog import RAGMetrics
from .context import CURRENT_QUERY
from .providers.fields import PLAIN
from .runtime import (cached_child, default_metrics, note_unreadable, recording_failed,
                      safe_name)
from .tokens import PartsExceedWhole, Usage
from .usage import Unreadable, read_usage


def record_tokens(input_tokens: Any = 0, output_tokens: int = 0, cached_input_tokens: int = 0, *,
                  cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0,
                  reasoning_tokens: int = 0, model: str | None = None,
                  metrics: RAGMetrics | None = None, **other_kinds: int) -> float | None:
    """Reports token usage, as counts or as an SDK response: ``record_tokens(completion)``
    reads a ChatCompletion, Responses ``Response``, Anthropic ``Message``, Gemini
    ``GenerateContentResponse``, LangChain message or their ``model_dump()`` (by shape).

    Counts follow OpenAI's convention (and the OpenTelemetry GenAI one): ``input_tokens`` is
    the whole prompt, cache reads (``cached_input_tokens``) and cache writes
    (``cache_write_tokens`` 5-minute, ``cache_write_1h_tokens``) included; ``output_tokens`` is
    the whole completion, ``reasoning_tokens`` included. So ``usage.prompt_tokens`` goes in
    ``input_tokens`` as it is. A part larger than its whole raises ValueError (and is counted).

    Inside a monitored query (e.g. from a streaming generator) it adds to that query, which
    counts tokens and cost when it ends; outside one it counts them now and returns the cost.
    The same usage reported again in one query (say, by hand after an instrumented client
    already read it) is counted once. A response whose usage cannot be read is counted in
    rag_unreadable_responses_total.
    """
    query = CURRENT_QUERY.get()
    if model is not None:
        model = safe_name(check_name("model", model, "gpt-4o-mini"))
    m = metrics or (query.owner.metrics if query is not None else None)
    if type(input_tokens) not in PLAIN:  # an SDK response or its model_dump()
        found = read_usage(input_tokens)
        m = m or default_metrics()
        if found is None or isinstance(found, Unreadable):
            note_unreadable(m, found.shape if found is not None else type(input_tokens).__name__)
            return None
        if model is not None:
            found.model = model
        usage = found
    else:
        counts = {"input_tokens": input_tokens, "output_tokens": output_tokens,
                  "cached_input_tokens": cached_input_tokens,
                  "cache_write_tokens": cache_write_tokens,
                  "cache_write_1h_tokens": cache_write_1h_tokens,
                  "reasoning_tokens": reasoning_tokens}
        for name, value in other_kinds.items():
            if tokens.by_field(name) is None:
                raise TypeError(f"record_tokens() got an unknown token kind {name}={value!r}; "
                                f"the kinds are {', '.join(tokens.fields())}")
            counts[name] = value
        counts = {name: check_count(name, value) for name, value in counts.items()}
        try:
            usage = Usage.reported(counts, model=model, by_hand=True)
        except PartsExceedWhole as problem:
            refused(m or default_metrics(), "record_tokens", problem)
            raise
    if query is not None and (metrics is None or metrics is query.owner.metrics):
        query.extras().add_usage(usage)
        if model is not None:
            query.model = model
        return None
    if not any(usage.tokens.values()):
        return 0.0
    m = m or default_metrics()
    try:
        return record_usage(usage, metrics=m)
    except Exception as failure:  # a recording failure never reaches the host
        recording_failed(m, "recording", "record_tokens(model=%r) failed: %r", model, failure)
        return None


def record_quality(relevance_score: float | None = None, context_precision: float | None = None) -> None:
    """Sets the current query's quality scores (0..1) when they are not in its return value.

    The two are named scores (``record_scores(relevance_score=..., context_precision=...)``):
    observed in rag_relevance_score / rag_context_precision and in rag_evaluation_score.
    Unlike record_scores it raises on a bad value or outside a query, as it always has."""
    relevance = None if relevance_score is None else check_score("relevance_score", relevance_score)
    precision = None if context_precision is None else check_score("context_precision", context_precision)
    query = CURRENT_QUERY.get()
    if query is None:
        raise RuntimeError("record_quality() was called outside a @monitored_query function; call "
                           "it inside one, or observe metrics.relevance directly")
    if relevance is not None:
        query.extras().relevance_score = relevance
    if precision is not None:
        query.extras().context_precision = precision


def set_attributes(**attributes: object) -> bool:
    """Adds free-form attributes (agent type, tool calls, ...) to the current query's record.
    Returns False, and counts it, when no monitored query is running."""
    query = CURRENT_QUERY.get()
    if query is None:
        recording_failed(default_metrics(), "no_active_query", "set_attributes(%s) outside a monitored query",
                         ", ".join(safe_label(name) for name in attributes))
        return False
    extra = query.extras()
    if extra.attributes is None:
        extra.attributes = {}
    extra.attributes.update(attributes)
    return True


def track_cache_operation(hit: bool = True, cache_type: str = "semantic", *,
                          metrics: RAGMetrics | None = None) -> None:
    """Counts one cache lookup as a hit or a miss (and in the current query's record)."""
    if type(hit) is not bool:
        raise ValueError(f"hit={hit!r} must be True (a cache hit) or False (a miss)")
    cache_type = safe_name(check_name("cache_type", cache_type, "semantic"))
    query = CURRENT_QUERY.get()
    m = metrics or (query.owner.metrics if query is not None else default_metrics())
    cached_child(m, ("cache", cache_type, hit),
                 lambda: m.cache_operations.labels(cache_type, "hit" if hit else "miss")).inc()
    if query is not None and m is query.owner.metrics:
        if hit:
            query.extras().cache_hits += 1
        else:
            query.extras().cache_misses += 1
