"""Answer quality: named evaluation scores and user feedback.

``record_scores`` takes any number of named scores 0..1 (an LLM judge, a heuristic, ragas).
Inside a monitored query they are attached to it (record field ``scores``) and observed in
``rag_evaluation_score{operation, score}`` when the query ends; with ``request_id=`` (a judge
that runs after the answer, a batch evaluation) they are observed at once, counted in
``rag_late_evaluations_total`` and written as their own record ``{"kind": "evaluation", ...}``
that the report joins to its request by id.

``record_feedback`` takes a user's thumbs or rating and a short reason for a request id, counts
it in ``rag_feedback_total{operation, feedback}`` and writes ``{"kind": "feedback", ...}``.
Both kinds of record go to LOG_DIR/YYYYMMDD_quality.jsonl beside the day's requests (no request
reader meets them); a request id is checked against the server's request log (known_requests).

Score names and feedback reasons are label values, so both are bounded per catalog
(MAX_SCORE_NAMES, MAX_FEEDBACK_REASONS): a name past the budget is refused and counted, a
reason past it is counted as ``other``. Nothing here raises into the host application: bad
input is counted (rag_evaluation_scores_refused_total, rag_feedback_rejected_total) and told
in the return value.
"""
from __future__ import annotations

import re
import threading
import time
import weakref
from dataclasses import dataclass
from typing import Mapping

from .catalog import RAGMetrics
from .context import CURRENT_QUERY
from .hooks import HOOKS, on_finish
from .records import QUALITY_FILE_SUFFIX, DailyFileSink, iso_utc
from .runtime import cached_child, current_request_log, default_metrics, recording_failed, safe_name
from .writers import observer

# The two scores the library had first: they keep their own record fields and histograms
# (rag_relevance_score, rag_context_precision) and are also named scores.
BUILT_IN_SCORES = ("relevance_score", "context_precision")
# A score name or feedback reason is an identifier, not text: "faithfulness", "answer_relevancy",
# "wrong-source". Anything else (a sentence, a user id with spaces, 200 characters) is refused.
NAME_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
MAX_REQUEST_ID_LENGTH = 128
OTHER_REASON = "other"
UNKNOWN_OPERATION = "unknown"
_THUMBS = {"up": "positive", "down": "negative", True: "positive", False: "negative"}
_REAL = (int, float)


class NameBudget:
    """At most `limit()` distinct names, admitted first come first served; bounded in memory
    whatever callers pass (names are length-capped by NAME_PATTERN)."""

    def __init__(self, limit, preset: tuple[str, ...] = ()):
        self._limit = limit
        self.names: set[str] = set(preset)  # only grows; read without the lock
        self._lock = threading.Lock()

    def admit(self, name: str) -> bool:
        if name in self.names:
            return True
        with self._lock:
            if name in self.names:
                return True
            if len(self.names) < self._limit():
                self.names.add(name)
                return True
        return False

    def __len__(self) -> int:
        return len(self.names)


class QualityState:
    """What one catalog remembers for quality: its admitted score names and feedback reasons,
    and the reasons already warned about."""

    def __init__(self, metrics: RAGMetrics):
        self.score_names = NameBudget(lambda: metrics.settings.MAX_SCORE_NAMES, BUILT_IN_SCORES)
        self.reasons = NameBudget(lambda: metrics.settings.MAX_FEEDBACK_REASONS)
        self.warned: set[str] = set()


_states_lock = threading.Lock()


def state_of(metrics: RAGMetrics) -> QualityState:
    state = metrics.quality_state
    if state is None:
        with _states_lock:
            state = metrics.quality_state
            if state is None:
                state = metrics.quality_state = QualityState(metrics)
    return state


class QueryQuality:
    """The scores and retrieval health one query reported, observed when it ends. Made on the
    first record_scores / record_retrieval call, so a query that reports none costs nothing."""

    __slots__ = ("scores", "retrieval")

    def __init__(self):
        self.scores: dict[str, float] | None = None
        self.retrieval = None  # retrieval.RetrievalHealth

    def add_to(self, record: dict, now: float) -> None:
        if self.scores:
            record["scores"] = self.scores  # the query has ended: nothing adds to it now
        if self.retrieval is not None:
            record["retrieval"] = self.retrieval.record_field(now)


def query_quality(query) -> QueryQuality:
    """The query's QueryQuality, made on first use; the first use in the process registers
    the finish hook that observes it (hooks.py: nothing is paid before)."""
    extra = query.extras()
    quality = extra.quality
    if quality is None:
        quality = extra.quality = QueryQuality()
        if finish_query not in HOOKS.finish:
            on_finish(finish_query)
    return quality


def finish_query(ctx, done) -> None:
    """The finish hook: the named scores and retrieval health the query reported, into the
    metrics and its record."""
    extra = ctx.extra
    if extra is None:
        return
    quality = extra.quality
    if quality is None:
        return
    observe_query(ctx.owner.metrics, ctx.operation, quality)
    if done.record is not None:
        quality.add_to(done.record, time.time())


def built_in_score(metrics: RAGMetrics, operation: str, name: str):
    """``observe`` of relevance_score or context_precision for one operation: its own histogram
    and its rag_evaluation_score series, together."""
    own = observer((metrics.relevance if name == "relevance_score"
                    else metrics.context_precision).labels(operation))
    named = score_writer(metrics, operation, name)

    def observe(value: float) -> None:
        own(value)
        named(value)
    return observe


def score_writers(metrics: RAGMetrics, operation: str) -> dict:
    """``observe`` of each rag_evaluation_score child of one operation, by score name (at most
    MAX_SCORE_NAMES of them: only admitted names are looked up)."""
    return cached_child(metrics, ("evaluation_score", operation), dict)


def score_writer(metrics: RAGMetrics, operation: str, name: str):
    writers = score_writers(metrics, operation)
    writer = writers.get(name)
    if writer is None:
        writer = writers[name] = observer(metrics.evaluation_score.labels(operation, name))
    return writer


def observe_query(metrics: RAGMetrics, operation: str, quality: QueryQuality) -> None:
    """The named scores and retrieval health of a finished query, into the metrics."""
    scores = quality.scores
    if scores:
        writers = score_writers(metrics, operation)
        for name, value in scores.items():
            writer = writers.get(name)
            if writer is None:
                writer = writers[name] = observer(metrics.evaluation_score.labels(operation,
                                                                                  name))
            writer(value)
    if quality.retrieval is not None:
        quality.retrieval.observe(metrics, operation)


# --- scores ----------------------------------------------------------------------------------

def _refuse(metrics: RAGMetrics, reason: str, message: str, *args) -> None:
    try:
        metrics.evaluation_scores_refused.labels(reason).inc()
        state = state_of(metrics)
        if reason not in state.warned:
            state.warned.add(reason)
            metrics.warnings.warn("score_" + reason, "monitoring: " + message + " (counted in "
                                  "rag_evaluation_scores_refused_total{reason=%r})", *args, reason)
    except Exception:
        pass


def _checked_scores(metrics: RAGMetrics, scores, named: dict) -> dict[str, float]:
    """The valid, admitted scores; each refused one counted by reason. Names are never logged:
    a name that should not be one may carry a user id or text."""
    items = []
    if scores is not None:
        if isinstance(scores, Mapping):
            items.extend(scores.items())
        else:
            _refuse(metrics, "bad_value", "record_scores() got %s instead of a mapping of names "
                    "to scores; pass record_scores({'faithfulness': 0.9}) or faithfulness=0.9",
                    type(scores).__name__)
    items.extend(named.items())
    budget = state_of(metrics).score_names
    admitted = budget.names
    accepted: dict[str, float] = {}
    for name, value in items:
        if type(value) is float and 0.0 <= value <= 1.0 and name in admitted:
            accepted[name] = value  # the usual score: a known name, a float in range
            continue
        if type(name) is not str or NAME_PATTERN.fullmatch(name) is None:
            _refuse(metrics, "bad_name", "a score name is not an identifier (letters, digits, "
                    "_ . -, at most 64 characters, starting with a letter); refused")
            continue
        if isinstance(value, bool) or not isinstance(value, _REAL) or not 0 <= value <= 1:
            _refuse(metrics, "bad_value", "a score is not a number from 0 to 1; refused")
            continue
        if not budget.admit(name):
            _refuse(metrics, "too_many_names", "a new score name would pass MAX_SCORE_NAMES=%d "
                    "distinct names; refused. Is a per-user or per-query value used as a score "
                    "name? (The name is not logged: it may hold one.)",
                    metrics.settings.MAX_SCORE_NAMES)
            continue
        accepted[name] = float(value)
    return accepted


def record_scores(scores: Mapping[str, float] | None = None, /, *, request_id: str | None = None,
                  operation: str | None = None, metrics: RAGMetrics | None = None,
                  request_log=None, **named: float) -> bool:
    """Records named quality scores, each a number from 0 to 1::

        ragmon.record_scores(faithfulness=0.92, answer_relevancy=0.81)       # inside a query
        ragmon.record_scores(judge_scores, request_id=rid)                   # later, by id

    Inside a ``@monitored_query``: attached to that query (record field ``scores``) and observed
    in ``rag_evaluation_score{operation, score}`` when it ends. ``relevance_score`` and
    ``context_precision`` also keep their own record fields and histograms.

    With ``request_id=`` (an asynchronous judge or a batch evaluation): observed now under
    ``operation`` (or the request's, when known), counted in ``rag_late_evaluations_total`` and
    written as a record ``{"kind": "evaluation", "request_id": ..., "scores": {...}}``.

    Returns True when at least one score was taken. Never raises: a bad name or value, a name
    past MAX_SCORE_NAMES, or scores outside a query without a request id are counted in
    ``rag_evaluation_scores_refused_total{reason}``.
    """
    try:
        query = CURRENT_QUERY.get()
        if (query is not None and scores is None and request_id is None and metrics is None
                and named):
            # The usual call: keyword scores inside a query. Names already admitted with float
            # values in range take no other check; anything else goes the long way.
            admitted = state_of(query.owner.metrics).score_names.names
            for name, value in named.items():
                if (type(value) is not float or not 0.0 <= value <= 1.0 or name not in admitted
                        or name in BUILT_IN_SCORES):
                    break
            else:
                quality = query_quality(query)
                if quality.scores is None:
                    quality.scores = named
                else:
                    quality.scores.update(named)
                return True
        return _record_scores(scores, request_id, operation, metrics, request_log, named)
    except Exception as failure:
        query = CURRENT_QUERY.get()
        owner = query.owner.metrics if query is not None and query.owner.ready else None
        recording_failed(metrics or owner or default_metrics(), "recording",
                         "record_scores() failed: %r", failure)
        return False


def _record_scores(scores, request_id, operation, metrics, request_log, named) -> bool:
    query = CURRENT_QUERY.get()
    in_query = query is not None and (request_id is None or request_id == query.request_id) \
        and (metrics is None or metrics is query.owner.metrics)
    m = metrics or (query.owner.metrics if query is not None else None) or default_metrics()
    accepted = _checked_scores(m, scores, named)
    if not accepted:
        return False
    if in_query:
        extra = query.extras()
        for name in BUILT_IN_SCORES:
            if name in accepted:
                setattr(extra, name, accepted.pop(name))
        if accepted:
            quality = query_quality(query)
            if quality.scores is None:
                quality.scores = accepted
            else:
                quality.scores.update(accepted)
        return True
    if request_id is None:
        _refuse(m, "no_active_query", "record_scores() was called outside a monitored query "
                "without request_id=; pass the id of the request the scores are about")
        return False
    problem = request_id_problem(request_id)
    if problem is not None:
        _refuse(m, "unknown_request", "record_scores(request_id=...) got a request id that %s",
                problem)
        return False
    found = find_request(request_id, m, request_log)
    if found.refusal is not None:
        _refuse(m, found.refusal, "record_scores(request_id=...): the request %s", found.message)
        return False
    operation = _operation(operation, found)
    now = time.time()
    for name, value in accepted.items():
        score_writer(m, operation, name)(value)
    m.late_evaluations.labels(operation).inc()
    _write(m, request_log, {"kind": "evaluation", "request_id": request_id,
                            "operation": operation, "scores": accepted,
                            "verified": found.verified}, now)
    return True


# --- feedback --------------------------------------------------------------------------------

@dataclass(frozen=True)
class FeedbackResult:
    """What became of one record_feedback call. ``accepted`` is False with a ``reason``
    (malformed_request_id, unknown_request, too_old, bad_value) and a ``message`` saying why.
    ``verified`` says whether the request was found among this server's recent requests."""

    accepted: bool
    reason: str | None = None
    message: str = ""
    feedback: str | None = None
    operation: str | None = None
    verified: bool = False

    def __bool__(self) -> bool:
        return self.accepted


def _reject(metrics: RAGMetrics, reason: str, message: str) -> FeedbackResult:
    try:
        metrics.feedback_rejected.labels(reason).inc()
        metrics.warnings.warn("feedback_" + reason, "monitoring: feedback refused: %s (counted "
                              "in rag_feedback_rejected_total{reason=%r})", message, reason)
    except Exception:
        pass
    return FeedbackResult(False, reason, message)


def _feedback_class(thumbs, rating) -> tuple[str | None, str | None]:
    """(positive|negative|neutral, None) or (None, what is wrong)."""
    if thumbs is None and rating is None:
        return None, "neither thumbs nor rating was given; pass thumbs='up'/'down' or rating=1..5"
    if thumbs is not None:
        key = thumbs.strip().lower() if type(thumbs) is str else thumbs
        if type(key) not in (str, bool) or key not in _THUMBS:
            return None, "thumbs must be 'up', 'down', True or False"
    if rating is not None and (type(rating) is not int or not 1 <= rating <= 5):
        return None, "rating must be a whole number from 1 to 5"
    if thumbs is not None:
        return _THUMBS[key], None
    return ("negative" if rating <= 2 else "neutral" if rating == 3 else "positive"), None


def _reason_label(metrics: RAGMetrics, reason) -> str | None:
    """A reason as counted and recorded: a short identifier (case and spaces folded) admitted
    within MAX_FEEDBACK_REASONS, else "other". User text never reaches a label or a log."""
    if reason is None:
        return None
    if type(reason) is str:
        folded = "_".join(reason.strip().lower().split())
        if NAME_PATTERN.fullmatch(folded) and state_of(metrics).reasons.admit(folded):
            return folded
    return OTHER_REASON


def record_feedback(request_id: str, *, thumbs=None, rating: int | None = None,
                    reason: str | None = None, operation: str | None = None,
                    metrics: RAGMetrics | None = None, request_log=None,
                    verify: bool = True) -> FeedbackResult:
    """Records a user's feedback on one answer, by the request id the answer carried::

        result = ragmon.record_feedback(request_id, thumbs="down", reason="outdated")
        if not result:
            return {"error": result.message}

    ``thumbs`` is "up"/"down" (or True/False), ``rating`` 1..5 (4-5 positive, 3 neutral,
    1-2 negative; thumbs wins when both are given). ``reason`` is a short identifier such as
    "wrong_answer"; past MAX_FEEDBACK_REASONS distinct reasons, and for anything that is not an
    identifier, it is counted as "other".

    Counted in ``rag_feedback_total{operation, feedback}`` and written as a record
    ``{"kind": "feedback", ...}``. Returns a FeedbackResult, false when refused: a malformed id,
    a request not found among this server's requests (see docs/quality.md: "unknown requests"),
    one older than FEEDBACK_MAX_AGE_HOURS, or bad values. ``verify=False`` takes feedback for
    requests this server cannot look up (another replica's). Never raises.
    """
    m = metrics or default_metrics()
    try:
        return _record_feedback(m, request_id, thumbs, rating, reason, operation, request_log,
                                verify)
    except Exception as failure:
        recording_failed(m, "recording", "record_feedback() failed: %r", failure)
        return FeedbackResult(False, "recording_failed", "monitoring failed to record the "
                              "feedback; see the log")


def _record_feedback(m, request_id, thumbs, rating, reason, operation, request_log,
                     verify) -> FeedbackResult:
    problem = request_id_problem(request_id)
    if problem is not None:
        return _reject(m, "malformed_request_id", f"the request id {problem}")
    feedback, problem = _feedback_class(thumbs, rating)
    if problem is not None:
        return _reject(m, "bad_value", problem)
    if operation is not None and (type(operation) is not str or not operation.strip()):
        return _reject(m, "bad_value", "operation must be a non-empty string")
    found = find_request(request_id, m, request_log)
    if found.refusal is not None and (verify or found.refusal == "too_old"):
        return _reject(m, found.refusal, f"request {request_id!r} {found.message}")
    operation = _operation(operation, found)
    reason_label = _reason_label(m, reason)
    m.feedback.labels(operation, feedback).inc()
    if reason_label is not None:
        m.feedback_reasons.labels(reason_label).inc()
    if type(thumbs) is str:
        thumbs = thumbs.strip().lower()
    elif type(thumbs) is bool:
        thumbs = "up" if thumbs else "down"
    _write(m, request_log, {"kind": "feedback", "request_id": request_id,
                            "operation": operation, "feedback": feedback, "thumbs": thumbs,
                            "rating": rating, "reason": reason_label,
                            "verified": found.verified}, time.time())
    return FeedbackResult(True, None, "feedback recorded", feedback, operation, found.verified)


# --- the request a late score or feedback is about ---------------------------------------------

def request_id_problem(request_id: object) -> str | None:
    """What is wrong with a request id given by a caller, or None."""
    if type(request_id) is not str:
        return f"must be a string, not {type(request_id).__name__}"
    if not request_id or len(request_id) > MAX_REQUEST_ID_LENGTH:
        return f"must be 1 to {MAX_REQUEST_ID_LENGTH} characters long"
    if not request_id.isprintable() or any(ch.isspace() for ch in request_id):
        return "must not contain spaces or control characters"
    return None


@dataclass(frozen=True)
class FoundRequest:
    """What this server knows of a request id: ``verified`` when its record was found;
    ``refusal`` (unknown_request, too_old) with a ``message`` when it must be refused."""

    verified: bool = False
    operation: str | None = None
    refusal: str | None = None
    message: str = ""


UNVERIFIED = FoundRequest()


def find_request(request_id: str, metrics: RAGMetrics, request_log) -> FoundRequest:
    """Looks the id up among this server's recent requests (see known_requests)."""
    from .known_requests import lookup
    return lookup(request_id, metrics, _sink(request_log))


def _operation(given: str | None, found: FoundRequest) -> str:
    if given is not None:
        return safe_name(given)
    return found.operation or UNKNOWN_OPERATION


def _sink(request_log):
    if request_log is None:
        return current_request_log()
    return request_log or None


_quality_sinks: "weakref.WeakKeyDictionary[DailyFileSink, DailyFileSink]" = \
    weakref.WeakKeyDictionary()


def quality_sink(sink):
    """Where evaluation and feedback records go: beside a file sink's request records, in
    LOG_DIR/YYYYMMDD_quality.jsonl; any other sink (stderr, the application's own) receives them
    itself, told apart by their "kind"."""
    if type(sink) is not DailyFileSink:
        return sink
    found = _quality_sinks.get(sink)
    if found is None:
        with _states_lock:
            found = _quality_sinks.get(sink)
            if found is None:
                found = _quality_sinks[sink] = DailyFileSink(
                    sink.log_dir, sink.path_check_interval, file_suffix=QUALITY_FILE_SUFFIX)
    return found


def _write(metrics: RAGMetrics, request_log, fields: dict, now: float) -> None:
    sink = _sink(request_log)
    if sink is None:
        return
    sink = quality_sink(sink)
    kind = fields.pop("kind")
    try:
        settings = metrics.settings
        record = {"kind": kind, "timestamp": iso_utc(now), "start_time": now,
                  "request_id": fields.pop("request_id"), "service": settings.SERVICE_NAME,
                  "env": settings.ENV, **fields}
        sink.write(record, at=now)
    except Exception as failure:
        recording_failed(metrics, "record_write", "writing a %s record failed: %r", kind, failure)
