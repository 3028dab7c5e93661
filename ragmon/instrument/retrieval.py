"""Retrieval health: how many documents a query retrieved, whether none came back, how similar
the best one was, and how old the newest one is (the freshness of the index).

``record_retrieval`` reads what common retrievers return, by shape (no retriever library is
imported):

- LangChain ``Document`` (``page_content``, ``metadata``): the score in ``metadata["score"]``
  (or ``relevance_score`` / ``similarity``), the time in a ``metadata`` timestamp key;
- ``(document, score)`` tuples, as ``similarity_search_with_relevance_scores`` returns them
  (the score is taken as a similarity, higher is better);
- LlamaIndex ``NodeWithScore`` (``score``, ``node.metadata``), Haystack ``Document`` (``score``,
  ``meta``), Qdrant ``ScoredPoint`` (``score``, ``payload``);
- dicts with ``score`` / ``similarity`` / ``relevance_score`` or ``distance`` (a cosine distance:
  similarity = 1 - distance), their metadata under ``metadata`` / ``meta`` / ``payload`` or in the
  dict itself (Pinecone matches);
- a Chroma ``query()`` result: a dict of lists of lists (``ids``, ``distances``, ``metadatas``),
  the first query's results;
- plain strings (counted; no score, no time).

Timestamps are read from the keys in TIMESTAMP_KEYS: epoch seconds (or milliseconds, when larger
than 10^11), ``datetime`` (naive ones taken as UTC) or ISO-8601 strings. A value the library
cannot read is counted in rag_instrumentation_errors_total{reason="bad_retrieval_value"} and
left out, never recorded as 0.
"""
from __future__ import annotations

import math
import numbers
import time
from datetime import date, datetime, timezone
from typing import Iterable, Mapping

from .context import CURRENT_QUERY
from .quality import query_quality
from .runtime import cached_child, default_metrics, recording_failed
from .writers import adder, observer

SCORE_KEYS = ("score", "relevance_score", "similarity", "similarity_score")
DISTANCE_KEYS = ("distance", "_distance")
TIMESTAMP_KEYS = ("timestamp", "updated_at", "last_modified", "modified_at", "created_at",
                  "published_at", "indexed_at", "date")
METADATA_ATTRIBUTES = ("metadata", "meta", "payload")
# A clock a little ahead of ours is not an error; a document from the future beyond this is.
CLOCK_SKEW_SECONDS = 300.0
_MILLISECONDS_FROM = 1e11  # epoch seconds of the year 5138: larger values are milliseconds
_REAL = (int, float)
_REAL_TYPES = frozenset((int, float))


class RetrievalHealth:
    """One query's retrieval, summed over its retrievals (a query may retrieve twice)."""

    __slots__ = ("documents", "top_score", "newest_time", "rounds")

    def __init__(self):
        self.documents: int | None = None  # None: only a score or a time was reported
        self.top_score: float | None = None
        self.newest_time: float | None = None
        self.rounds = 0

    def add(self, documents: int | None, top_score: float | None,
            newest_time: float | None) -> None:
        self.rounds += 1
        if documents is not None:
            self.documents = documents + (self.documents or 0)
        if top_score is not None and (self.top_score is None or top_score > self.top_score):
            self.top_score = top_score
        if newest_time is not None and (self.newest_time is None
                                        or newest_time > self.newest_time):
            self.newest_time = newest_time

    def age(self, now: float) -> float | None:
        if self.newest_time is None:
            return None
        return max(0.0, now - self.newest_time)

    def record_field(self, now: float | None = None) -> dict:
        return {"documents": self.documents, "top_score": self.top_score,
                "newest_document_age_seconds": self.age(time.time() if now is None else now)}

    def observe(self, metrics, operation: str) -> None:
        queries, documents, empty, top, age = cached_child(
            metrics, ("retrieval", operation), lambda: _children(metrics, operation))
        if self.documents is not None:  # the empty-retrieval ratio counts only known counts
            queries(1)
            documents(self.documents)
            if self.documents == 0:
                empty(1)
        if self.top_score is not None:
            top(self.top_score)
        if self.newest_time is not None:
            age(max(0.0, time.time() - self.newest_time))


def _children(metrics, operation: str) -> tuple:
    """One operation's retrieval series as writers (writers.py), made together, so the empty
    counter is exported from 0."""
    return (adder(metrics.retrieval_queries.labels(operation)),
            observer(metrics.retrieved_documents.labels(operation)),
            adder(metrics.empty_retrievals.labels(operation)),
            observer(metrics.retrieval_top_score.labels(operation)),
            observer(metrics.retrieval_document_age.labels(operation)))


class _Reading:
    """What was read from one retrieval's documents, and what could not be."""

    __slots__ = ("count", "top_score", "newest_time", "bad")

    def __init__(self):
        self.count: int | None = None
        self.top_score: float | None = None
        self.newest_time: float | None = None
        self.bad: list[str] = []

    def score(self, value: object, what: str, distance: bool = False) -> None:
        if value is None:
            return
        if not _is_number(value) or not math.isfinite(value):
            self.bad.append(what)
            return
        value = float(value)
        similarity = 1.0 - value if distance else value
        if not 0.0 <= similarity <= 1.0:
            self.bad.append(what)
            return
        if self.top_score is None or similarity > self.top_score:
            self.top_score = similarity

    def time(self, value: object, what: str) -> None:
        if value is None:
            return
        epoch = epoch_of(value)
        if epoch is None or epoch > time.time() + CLOCK_SKEW_SECONDS:
            self.bad.append(what)
            return
        if self.newest_time is None or epoch > self.newest_time:
            self.newest_time = epoch


def epoch_of(value: object) -> float | None:
    """Unix seconds of a timestamp as retrievers keep it, or None when it cannot be read."""
    if isinstance(value, bool):
        return None
    if _is_number(value):
        value = float(value)
        if not math.isfinite(value) or value < 0:
            return None
        return value / 1000.0 if value > _MILLISECONDS_FROM else value
    if isinstance(value, str):
        text = value.strip()
        try:
            value = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith("Z") else text)
        except ValueError:
            return None
    if isinstance(value, datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value.timestamp()
    if isinstance(value, date):
        return datetime(value.year, value.month, value.day, tzinfo=timezone.utc).timestamp()
    return None


def _metadata_of(item: object) -> Mapping | None:
    for name in METADATA_ATTRIBUTES:
        found = getattr(item, name, None)
        if type(found) is dict or isinstance(found, Mapping):
            return found
    node = getattr(item, "node", None)  # LlamaIndex NodeWithScore
    if node is not None:
        found = getattr(node, "metadata", None)
        if type(found) is dict or isinstance(found, Mapping):
            return found
    return None


def _read_metadata(reading: _Reading, metadata: Mapping, with_scores: bool) -> bool:
    """Reads a score (when `with_scores`) and a time from `metadata`; True if it had a score."""
    scored = False
    if with_scores:
        for key in SCORE_KEYS:
            if key in metadata:
                reading.score(metadata[key], "a document's score")
                scored = True
                break
        else:
            for key in DISTANCE_KEYS:
                if key in metadata:
                    reading.score(metadata[key], "a document's distance", distance=True)
                    scored = True
                    break
    for key in TIMESTAMP_KEYS:
        if key in metadata:
            reading.time(metadata[key], "a document's timestamp")
            break
    return scored


def _is_number(value: object) -> bool:
    """A real number that is not a bool: int, float, or a numpy scalar (FAISS returns float32)."""
    return type(value) in _REAL_TYPES or (isinstance(value, numbers.Real)
                                          and not isinstance(value, bool))


def _is_mapping(item: object) -> bool:
    return type(item) is dict or isinstance(item, Mapping)


def _read_item(reading: _Reading, item: object) -> None:
    reading.count = (reading.count or 0) + 1
    kind = type(item)
    if kind is str or item is None or kind is bytes:
        return
    if kind is tuple and len(item) == 2 and _is_number(item[1]):
        reading.score(item[1], "a (document, score) pair's score")
        item = item[0]
        metadata = item if _is_mapping(item) else _metadata_of(item)
        if metadata is not None:
            _read_metadata(reading, metadata, with_scores=False)
        return
    if _is_mapping(item):
        scored = _read_metadata(reading, item, with_scores=True)
        for name in METADATA_ATTRIBUTES:
            nested = item.get(name)
            if _is_mapping(nested):
                _read_metadata(reading, nested, with_scores=not scored)
                break
        return
    if isinstance(item, (str, bytes)):
        return
    # A document object: LangChain keeps its score in metadata; LlamaIndex, Haystack and Qdrant
    # as an attribute (looked up only when the metadata had none: a miss is slow on pydantic).
    metadata = _metadata_of(item)
    if metadata is not None and _read_metadata(reading, metadata, with_scores=True):
        return
    score = getattr(item, "score", None)
    if score is not None:
        reading.score(score, "a document's .score")


def _is_chroma_result(documents: Mapping) -> bool:
    ids = documents.get("ids")
    return isinstance(ids, list) and (not ids or isinstance(ids[0], list))


def _read_chroma(reading: _Reading, result: Mapping) -> None:
    """The first query's results of a Chroma ``collection.query()``."""
    def first(key):
        found = result.get(key)
        return found[0] if isinstance(found, list) and found and isinstance(found[0], list) \
            else []
    ids = first("ids")
    reading.count = len(ids)
    for distance in first("distances"):
        reading.score(distance, "a Chroma distance", distance=True)
    for metadata in first("metadatas"):
        if isinstance(metadata, Mapping):
            _read_metadata(reading, metadata, with_scores=False)


def read_documents(documents: object) -> _Reading:
    """Counts the documents and reads their best score and newest time (linear in their number)."""
    reading = _Reading()
    if documents is None:
        return reading
    reading.count = 0
    if isinstance(documents, Mapping):
        if _is_chroma_result(documents):
            _read_chroma(reading, documents)
        else:
            for key in ("matches", "documents", "results", "points"):  # Pinecone and the like
                found = documents.get(key)
                if isinstance(found, list):
                    for item in found:
                        _read_item(reading, item)
                    break
            else:
                reading.bad.append(f"a {type(documents).__name__} without a list of documents")
        return reading
    if isinstance(documents, (str, bytes)) or not isinstance(documents, Iterable):
        reading.bad.append(f"documents of type {type(documents).__name__}")
        return reading
    for item in documents:
        _read_item(reading, item)
    return reading


def record_retrieval(documents: object = None, *, count: int | None = None,
                     top_score: float | None = None,
                     newest_document_time: float | datetime | None = None) -> None:
    """Reports the current query's retrieval: pass what the retriever returned, or the figures::

        docs = vectorstore.similarity_search_with_relevance_scores(question, k=5)
        ragmon.record_retrieval(docs)
        ragmon.record_retrieval(count=0)        # nothing came back

    ``count``, ``top_score`` (a similarity 0..1) and ``newest_document_time`` (epoch seconds or a
    datetime) override what is read from ``documents``. Recorded under ``retrieval`` in the
    request record and, when the query ends, in rag_retrieved_documents,
    rag_empty_retrievals_total, rag_retrieval_queries_total, rag_retrieval_top_score and
    rag_retrieval_newest_document_age_seconds. Called twice in one query, the documents add up and
    the best score and newest time win. Never raises: outside a monitored query, or with values
    it cannot read, it counts the problem in rag_instrumentation_errors_total.
    """
    query = CURRENT_QUERY.get()
    if query is None:
        recording_failed(default_metrics(), "no_active_query",
                         "record_retrieval() outside a monitored query; call it inside one")
        return
    metrics = query.owner.metrics
    try:
        reading = read_documents(documents)
        if count is not None:
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                reading.bad.append("count")
            else:
                reading.count = count
        if top_score is not None:
            reading.top_score = None
            reading.score(top_score, "top_score")
        if newest_document_time is not None:
            reading.newest_time = None
            reading.time(newest_document_time, "newest_document_time")
        if reading.bad:
            recording_failed(metrics, "bad_retrieval_value", "record_retrieval() in %r could not "
                             "read %s; left out of the metrics and the record", query.operation,
                             ", ".join(reading.bad[:3]))
        quality = query_quality(query)
        if quality.retrieval is None:
            quality.retrieval = RetrievalHealth()
        quality.retrieval.add(reading.count, reading.top_score, reading.newest_time)
    except Exception as failure:
        recording_failed(metrics, "recording", "record_retrieval() failed: %r", failure)
