"""Token usage read from what LLM SDKs return, recognised by shape (no SDK is imported).

Understood shapes, as objects or as their ``model_dump()`` dicts:

- OpenAI Chat Completions (``ChatCompletion``, the last ``ChatCompletionChunk`` of a stream made
  with ``stream_options={"include_usage": True}``) and LiteLLM's OpenAI-shaped ``ModelResponse``;
- OpenAI Responses API (``Response``; stream events ``response.completed`` / ``.incomplete``);
- Anthropic Messages (``Message``; raw stream events ``message_start`` / ``message_delta``, and the
  events of the SDK's ``MessageStream``);
- Google Gemini ``GenerateContentResponse`` (and its stream chunks; the wire's camelCase too);
- LangChain messages carrying ``usage_metadata`` (``AIMessage``, ``AIMessageChunk``).

Each SDK's fields are read by its adapter in ``providers/`` into one ``tokens.Usage`` whose kinds
never overlap, so their sum is what the provider billed. This module only tells the shapes apart
and follows streams.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

from .providers import anthropic, gemini, langchain, openai
from .providers.fields import PLAIN, get, shape_name
from .tokens import Usage

_perf = time.perf_counter
_get = get


class Unreadable:
    """A returned value that looks like an LLM response but carries no usage we can read."""

    __slots__ = ("shape",)

    def __init__(self, shape: str):
        self.shape = shape

    def __repr__(self):
        return f"Unreadable({self.shape!r})"


def _usage_block(usage: Any, owner: Any) -> Usage | None:
    if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
        return openai.usage_from_chat(usage)
    if (_get(usage, "cache_creation_input_tokens") is not None
            or _get(usage, "cache_read_input_tokens") is not None
            or _get(owner, "type") in ("message", "message_delta")):
        return anthropic.usage_from_messages(usage)
    if _get(usage, "input_tokens") is not None or _get(usage, "output_tokens") is not None:
        if _get(usage, "input_tokens_details") is not None or _get(owner, "object") == "response":
            return openai.usage_from_responses(usage)
        return anthropic.usage_from_messages(usage)  # Anthropic's shape without its cache fields
    return None


# --- one returned value ----------------------------------------------------------------------

_RESPONSE_MARKERS = ("chat.completion", "response", "text_completion")


def read_usage(obj: Any) -> Usage | Unreadable | None:
    """The usage carried by `obj`, or None when `obj` is not an LLM response (a string, a plain
    dict of the caller's own), or ``Unreadable`` when it is one whose usage cannot be read (e.g.
    a completion without ``usage``, a stream handed back unread)."""
    if type(obj) in PLAIN:
        return None
    try:
        return _read(obj)
    except Exception:  # a shape we half-recognised: report it rather than guess
        return Unreadable(shape_name(obj))


def _read(obj: Any) -> Usage | Unreadable | None:
    is_mapping = isinstance(obj, Mapping)
    if gemini.is_response(obj):
        found = gemini.usage_of(obj)
        return found if found is not None else Unreadable(shape_name(obj))
    if not is_mapping and langchain.is_message(obj):
        meta = _get(obj, "usage_metadata")
        if meta is None:
            return Unreadable(shape_name(obj))
        found = langchain.usage_from_metadata(meta)
        found.model, found.provider = langchain.model_of(obj)
        found.response_id = _get(obj, "id")
        return found
    usage = _get(obj, "usage")
    kind = _get(obj, "object") or _get(obj, "type")
    if usage is None:
        if isinstance(kind, str) and (kind in _RESPONSE_MARKERS or kind == "message"):
            return Unreadable(shape_name(obj))
        if _get(obj, "choices") is not None and not is_mapping:
            return Unreadable(shape_name(obj))
        if not is_mapping and is_stream(obj):
            return Unreadable(shape_name(obj))
        return None
    found = _usage_block(usage, obj)
    if found is None:
        return Unreadable(shape_name(obj))
    model = _get(obj, "model")
    found.model = model if isinstance(model, str) and model else None
    rid = _get(obj, "id")
    found.response_id = rid if isinstance(rid, str) else None
    found.provider = _provider_of(obj, usage)
    provider = found.provider
    if provider is not None:
        tier = (openai.service_tier_of(obj) if provider == "openai"
                else anthropic.service_tier_of(usage))
        if tier is not None:
            found.service_tier = tier
    return found


def _provider_of(obj: Any, usage: Any) -> str | None:
    kind = _get(obj, "object") or _get(obj, "type")
    if kind == "message" or _get(usage, "cache_read_input_tokens") is not None:
        return "anthropic"
    if kind in _RESPONSE_MARKERS:
        return "openai"
    return None


def is_stream(obj: Any) -> bool:
    """An SDK stream (openai/anthropic ``Stream``, ``AsyncStream``, ``MessageStream``)."""
    return hasattr(obj, "_iterator") and hasattr(obj, "response")


# --- streams ----------------------------------------------------------------------------------

class StreamUsage:
    """Follows one stream's chunks/events: the usage they report, the first *content* chunk's
    time, and what is known if the stream ends early (input from the first event, output counted
    so far, marked partial)."""

    __slots__ = ("started", "first_content", "first_content_at", "usage", "final",
                 "content_chunks", "done", "completed", "error", "on_end", "provider",
                 "chunk_gaps", "last_content_at", "__weakref__")

    def __init__(self, started: float | None = None, provider: str | None = None):
        self.started = _perf() if started is None else started
        self.first_content: float | None = None  # seconds after `started`
        self.first_content_at: float | None = None  # perf_counter() time
        self.completed = False  # the stream ran to its end (not abandoned, no error)
        self.usage = Usage(provider=provider)
        self.final = False  # the stream reported its final usage
        self.content_chunks = 0
        self.done = False
        self.error: BaseException | None = None
        self.on_end: list[Callable[["StreamUsage"], None]] = []
        self.provider = provider
        # Seconds between content chunks, kept only while OpenTelemetry output is on (a list).
        self.chunk_gaps: list | None = None

    def feed(self, item: Any) -> None:
        if type(item) is str:
            if item:
                self._content()
            return
        kind = _get(item, "type")
        if kind is None:
            kind = _get(item, "object")
        if kind == "chat.completion.chunk" or (kind is None and _get(item, "choices") is not None):
            self._chat_chunk(item)
        elif isinstance(kind, str) and kind.startswith("message") or kind == "content_block_delta":
            self._anthropic_event(kind, item)
        elif isinstance(kind, str) and kind.startswith("response."):
            self._responses_event(kind, item)
        elif kind is None and gemini.is_response(item):
            self._gemini_chunk(item)
        else:
            meta = _get(item, "usage_metadata") if not isinstance(item, Mapping) else None
            if meta is not None:  # LangChain chunks: each carries its own share
                self.usage.add(langchain.usage_from_metadata(meta))
                self.final = True
            if _get(item, "content"):
                self._content()

    def is_new_response(self, item: Any) -> bool:
        """True when `item` starts another response than the one followed so far (a query that
        relays two streams one after the other)."""
        current = self.usage.response_id
        if current is None or type(item) in PLAIN:
            return False
        kind = _get(item, "type") or _get(item, "object")
        if kind == "chat.completion.chunk":
            rid = _get(item, "id")
        elif kind == "message_start":
            rid = _get(_get(item, "message"), "id")
        elif kind == "response.created":
            rid = _get(_get(item, "response"), "id")
        elif kind is None and gemini.is_response(item):
            rid = gemini.get_either(item, "response_id")
        else:
            return False
        return isinstance(rid, str) and rid != current

    def _content(self) -> None:
        self.content_chunks += 1
        if self.first_content is None:
            self.first_content_at = self.last_content_at = _perf()
            self.first_content = self.first_content_at - self.started
        elif self.chunk_gaps is not None:
            now = _perf()
            self.chunk_gaps.append(now - self.last_content_at)
            self.last_content_at = now

    def _identify(self, obj: Any) -> None:
        if self.usage.response_id is None and isinstance(_get(obj, "id"), str):
            self.usage.response_id = _get(obj, "id")
        model = _get(obj, "model")
        if isinstance(model, str) and model:
            self.usage.model = model
        tier = openai.service_tier_of(obj)
        if tier is not None:
            self.usage.service_tier = tier

    def _chat_chunk(self, chunk: Any) -> None:
        self._identify(chunk)
        for choice in _get(chunk, "choices") or ():
            delta = _get(choice, "delta")
            if delta is not None and (_get(delta, "content") or _get(delta, "tool_calls")
                                      or _get(delta, "refusal")):
                self._content()
                break
        usage = _get(chunk, "usage")
        if usage is not None:
            self._take(openai.usage_from_chat(usage))
            self.provider = self.provider or "openai"

    def _anthropic_event(self, kind: str, event: Any) -> None:
        if kind == "message_start":
            message = _get(event, "message")
            self._identify(message)
            usage = _get(message, "usage")
            if usage is not None:
                self._take(anthropic.usage_from_messages(usage, final=False), final=False)
                tier = anthropic.service_tier_of(usage)
                if tier is not None:
                    self.usage.service_tier = tier
            self.provider = self.provider or "anthropic"
        elif kind == "content_block_delta":
            self._content()
        elif kind == "message_delta":
            usage = _get(event, "usage")
            if usage is not None:
                # Counts here are cumulative; input fields, when present, restate message_start.
                known = self.usage.tokens
                delta = anthropic.usage_from_messages(usage).tokens
                known["output"] = delta.get("output", 0)
                known["reasoning"] = delta.get("reasoning") or known.get("reasoning", 0)
                if _get(usage, "input_tokens") is not None:
                    known["input"] = delta.get("input", 0)
                if _get(usage, "cache_read_input_tokens") is not None:
                    known["cached_input"] = delta.get("cached_input", 0)
                if _get(usage, "cache_creation_input_tokens") is not None and (
                        delta.get("cache_write_5m") or delta.get("cache_write_1h")):
                    known["cache_write_5m"] = delta.get("cache_write_5m", 0)
                    known["cache_write_1h"] = delta.get("cache_write_1h", 0)
                self.final = True

    def _responses_event(self, kind: str, event: Any) -> None:
        if kind == "response.output_text.delta" or kind == "response.function_call_arguments.delta":
            self._content()
            return
        response = _get(event, "response")
        if response is None:
            return
        self._identify(response)
        self.provider = self.provider or "openai"
        usage = _get(response, "usage")
        if usage is not None and kind in ("response.completed", "response.incomplete",
                                          "response.failed"):
            self._take(openai.usage_from_responses(usage))

    def _gemini_chunk(self, chunk: Any) -> None:
        """Gemini chunks each restate the usage so far; the one with a finish reason is final."""
        rid = gemini.get_either(chunk, "response_id")
        if self.usage.response_id is None and isinstance(rid, str):
            self.usage.response_id = rid
        model = gemini.get_either(chunk, "model_version")
        if isinstance(model, str) and model:
            self.usage.model = model
        self.provider = self.provider or "gemini"
        if gemini.has_content(chunk):
            self._content()
        meta = gemini.metadata_of(chunk)
        if meta is not None:
            self._take(gemini.usage_from_metadata(meta), final=gemini.is_final(chunk))

    def _take(self, found: Usage, final: bool = True) -> None:
        self.usage.tokens.update(found.tokens)
        self.final = self.final or final

    def snapshot(self) -> Usage:
        """What this stream is known to have used so far. Without its final usage report, output
        is the content chunks counted (about one token each) and the usage is marked partial."""
        known = self.usage
        result = Usage(known.tokens, model=known.model, provider=known.provider or self.provider,
                       response_id=known.response_id, partial=not self.final,
                       service_tier=known.service_tier)
        if not self.final:
            result.tokens["output"] = max(result.tokens.get("output", 0), self.content_chunks)
        return result

    def end(self, error: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self.error = error
        callbacks, self.on_end = self.on_end, []
        for callback in callbacks:
            callback(self)


def watch_stream(stream: Any, tracker: StreamUsage) -> bool:
    """Makes an SDK stream object report its chunks to `tracker`, in place: the same object is
    returned to the caller, iterating it feeds the tracker, and the stream's end, error, close()
    or garbage collection ends the tracker. False if `stream` is not a stream we can follow."""
    inner = getattr(stream, "_iterator", None)
    if inner is None:
        return False
    if hasattr(inner, "__anext__"):
        stream._iterator = _watch_async(inner, tracker)
        original_close = stream.close

        async def close(*args, **kwargs):
            tracker.end()
            return await original_close(*args, **kwargs)
    elif hasattr(inner, "__next__"):
        stream._iterator = _watch_sync(inner, tracker)
        original_close = stream.close

        def close(*args, **kwargs):
            tracker.end()
            return original_close(*args, **kwargs)
    else:
        return False
    stream.close = close
    return True


def _watch_sync(inner, tracker: StreamUsage):
    feed = tracker.feed
    try:
        for item in inner:
            try:
                feed(item)
            except Exception:  # a chunk we misread must not break the caller's stream
                pass
            yield item
        tracker.completed = True
    except BaseException as exc:
        tracker.end(exc)
        raise
    finally:
        close = getattr(inner, "close", None)
        if close is not None:
            close()
        tracker.end()


async def _watch_async(inner, tracker: StreamUsage):
    feed = tracker.feed
    try:
        async for item in inner:
            try:
                feed(item)
            except Exception:
                pass
            yield item
        tracker.completed = True
    except BaseException as exc:
        tracker.end(exc)
        raise
    finally:
        close = getattr(inner, "aclose", None)
        if close is not None:
            await close()
        tracker.end()


def is_content(item: Any) -> bool:
    """True for a chunk that carries output (text, a tool call); False for role-only, usage-only
    and bookkeeping chunks. Used to time the first token of a stream."""
    if type(item) is str:
        return bool(item)
    if type(item) in PLAIN:
        return True
    probe = StreamUsage(0.0)
    try:
        probe.feed(item)
    except Exception:
        return True
    kind = _get(item, "type") or _get(item, "object")
    if probe.content_chunks:
        return True
    # Shapes the tracker knows but that carried no content (role-only chunk, message_start...).
    if isinstance(kind, str) and (kind == "chat.completion.chunk" or kind.startswith("message")
                                  or kind.startswith("response.") or kind.startswith("content_block")):
        return False
    return not (kind is None and gemini.is_response(item))
