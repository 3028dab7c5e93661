"""Token usage read from what LLM SDKs return, recognised by shape (no SDK is imported).

Understood shapes, as objects or as their ``model_dump()`` dicts:

- OpenAI Chat Completions (``ChatCompletion``, the last ``ChatCompletionChunk`` of a stream made
  with ``stream_options={"include_usage": True}``) and LiteLLM's OpenAI-shaped ``ModelResponse``;
- OpenAI Responses API (``Response``; stream events ``response.completed`` / ``.incomplete``);
- Anthropic Messages (``Message``; raw stream events ``message_start`` / ``message_delta``, and the
  events of the SDK's ``MessageStream``);
- LangChain messages carrying ``usage_metadata`` (``AIMessage``, ``AIMessageChunk``).

Every shape is brought to one ``Usage`` whose kinds never overlap, so their sum is what the
provider billed: uncached input, cache-read input, cache-write input (5-minute and 1-hour),
output. ``reasoning_tokens`` is a *part* of output, kept apart so it can be shown, never added.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping

_perf = time.perf_counter

# Values that are never an LLM response: skipped without a look.
_PLAIN = (str, bytes, int, float, bool, type(None), list, tuple, set, frozenset)


class Usage:
    """Tokens of one LLM response (or of several, added up)."""

    __slots__ = ("input_tokens", "cached_input_tokens", "cache_write_tokens",
                 "cache_write_1h_tokens", "output_tokens", "reasoning_tokens", "model",
                 "provider", "response_id", "partial")

    KINDS = ("input_tokens", "cached_input_tokens", "cache_write_tokens", "cache_write_1h_tokens",
             "output_tokens", "reasoning_tokens")

    def __init__(self, input_tokens: int = 0, output_tokens: int = 0, cached_input_tokens: int = 0,
                 cache_write_tokens: int = 0, cache_write_1h_tokens: int = 0,
                 reasoning_tokens: int = 0, model: str | None = None,
                 provider: str | None = None, response_id: str | None = None,
                 partial: bool = False):
        self.input_tokens = input_tokens
        self.output_tokens = output_tokens
        self.cached_input_tokens = cached_input_tokens
        self.cache_write_tokens = cache_write_tokens
        self.cache_write_1h_tokens = cache_write_1h_tokens
        self.reasoning_tokens = reasoning_tokens
        self.model = model
        self.provider = provider
        self.response_id = response_id
        self.partial = partial

    @property
    def billed_tokens(self) -> int:
        """Every billed token once (reasoning is inside output)."""
        return (self.input_tokens + self.cached_input_tokens + self.cache_write_tokens
                + self.cache_write_1h_tokens + self.output_tokens)

    def as_dict(self) -> dict:
        return {kind: getattr(self, kind) for kind in self.KINDS}

    def __eq__(self, other):
        return isinstance(other, Usage) and all(
            getattr(self, k) == getattr(other, k) for k in self.__slots__)

    def __repr__(self):
        fields = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__
                           if getattr(self, k) not in (0, None, False))
        return f"Usage({fields})"


class Unreadable:
    """A returned value that looks like an LLM response but carries no usage we can read."""

    __slots__ = ("shape",)

    def __init__(self, shape: str):
        self.shape = shape

    def __repr__(self):
        return f"Unreadable({self.shape!r})"


_MISSING = object()


def _get(obj: Any, name: str) -> Any:
    """A field of a response object or dict, None when absent. Pydantic models (the SDKs'
    types) are read from their field storage: getattr() of a missing name on them raises and
    catches an AttributeError, which costs more than the whole read."""
    if type(obj) is dict:
        return obj.get(name)
    fields = getattr(obj, "__dict__", None)
    if fields is not None:
        value = fields.get(name, _MISSING)
        if value is not _MISSING:
            return value
        extra = getattr(obj, "__pydantic_extra__", _MISSING)
        if extra is not _MISSING:  # a pydantic model: fields and extras are all there is
            return extra.get(name) if extra else None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def _count(value: Any) -> int:
    """A token count from a response: an int >= 0, else 0 (None means "not reported")."""
    return value if type(value) is int and value >= 0 else 0


def shape_name(obj: Any) -> str:
    """A bounded name for a value's shape, for the unreadable-responses counter."""
    kind = _get(obj, "object") or _get(obj, "type")
    name = type(obj).__name__
    return f"{name}:{kind}" if isinstance(kind, str) and len(kind) < 40 else name


# --- one usage block -----------------------------------------------------------------------------

def usage_from_openai_chat(usage: Any) -> Usage:
    """Chat Completions / LiteLLM ``usage``: prompt_tokens include cache reads and writes."""
    prompt = _count(_get(usage, "prompt_tokens"))
    details = _get(usage, "prompt_tokens_details")
    cached = _count(_get(details, "cached_tokens")) if details is not None else 0
    if not cached:  # LiteLLM reports Anthropic cache reads in Anthropic's own field
        cached = _count(_get(usage, "cache_read_input_tokens"))
    written = _count(_get(details, "cache_write_tokens")) if details is not None else 0
    if not written:  # LiteLLM, for Anthropic models
        written = _count(_get(usage, "cache_creation_input_tokens"))
    out_details = _get(usage, "completion_tokens_details")
    reasoning = _count(_get(out_details, "reasoning_tokens")) if out_details is not None else 0
    return Usage(input_tokens=max(prompt - cached - written, 0),
                 output_tokens=_count(_get(usage, "completion_tokens")),
                 cached_input_tokens=cached, cache_write_tokens=written,
                 reasoning_tokens=reasoning)


def usage_from_openai_responses(usage: Any) -> Usage:
    """Responses API ``usage``: input_tokens include cache reads and writes."""
    total_in = _count(_get(usage, "input_tokens"))
    details = _get(usage, "input_tokens_details")
    cached = _count(_get(details, "cached_tokens")) if details is not None else 0
    written = _count(_get(details, "cache_write_tokens")) if details is not None else 0
    out_details = _get(usage, "output_tokens_details")
    reasoning = _count(_get(out_details, "reasoning_tokens")) if out_details is not None else 0
    return Usage(input_tokens=max(total_in - cached - written, 0),
                 output_tokens=_count(_get(usage, "output_tokens")),
                 cached_input_tokens=cached, cache_write_tokens=written,
                 reasoning_tokens=reasoning)


def usage_from_anthropic(usage: Any) -> Usage:
    """Messages API ``usage``: input_tokens exclude cache reads and writes. The 5m/1h split comes
    from ``cache_creation`` when the response has it; otherwise every write is a 5-minute one
    (the API's default lifetime)."""
    written = _count(_get(usage, "cache_creation_input_tokens"))
    split = _get(usage, "cache_creation")
    written_1h = _count(_get(split, "ephemeral_1h_input_tokens")) if split is not None else 0
    written_5m = _count(_get(split, "ephemeral_5m_input_tokens")) if split is not None else 0
    if split is None or written_5m + written_1h != written:
        written_5m, written_1h = max(written - written_1h, 0), written_1h
    out_details = _get(usage, "output_tokens_details")
    thinking = _count(_get(out_details, "thinking_tokens")) if out_details is not None else 0
    return Usage(input_tokens=_count(_get(usage, "input_tokens")),
                 output_tokens=_count(_get(usage, "output_tokens")),
                 cached_input_tokens=_count(_get(usage, "cache_read_input_tokens")),
                 cache_write_tokens=written_5m, cache_write_1h_tokens=written_1h,
                 reasoning_tokens=thinking)


def usage_from_langchain(meta: Any) -> Usage:
    """``usage_metadata``: input_tokens include cache reads and cache creation."""
    details = _get(meta, "input_token_details") or {}
    cached = _count(_get(details, "cache_read"))
    written = _count(_get(details, "cache_creation"))
    written_1h = _count(_get(details, "ephemeral_1h_input_tokens"))
    out_details = _get(meta, "output_token_details") or {}
    return Usage(input_tokens=max(_count(_get(meta, "input_tokens")) - cached - written, 0),
                 output_tokens=_count(_get(meta, "output_tokens")), cached_input_tokens=cached,
                 cache_write_tokens=max(written - written_1h, 0), cache_write_1h_tokens=written_1h,
                 reasoning_tokens=_count(_get(out_details, "reasoning")))


def _usage_block(usage: Any, owner: Any) -> Usage | None:
    if _get(usage, "prompt_tokens") is not None or _get(usage, "completion_tokens") is not None:
        return usage_from_openai_chat(usage)
    if (_get(usage, "cache_creation_input_tokens") is not None
            or _get(usage, "cache_read_input_tokens") is not None
            or _get(owner, "type") in ("message", "message_delta")):
        return usage_from_anthropic(usage)
    if _get(usage, "input_tokens") is not None or _get(usage, "output_tokens") is not None:
        if _get(usage, "input_tokens_details") is not None or _get(owner, "object") == "response":
            return usage_from_openai_responses(usage)
        return usage_from_anthropic(usage)  # Anthropic's shape without its cache fields
    return None


# --- one returned value ----------------------------------------------------------------------

_RESPONSE_MARKERS = ("chat.completion", "response", "text_completion")


def read_usage(obj: Any) -> Usage | Unreadable | None:
    """The usage carried by `obj`, or None when `obj` is not an LLM response (a string, a plain
    dict of the caller's own), or ``Unreadable`` when it is one whose usage cannot be read (e.g.
    a completion without ``usage``, a stream handed back unread)."""
    if type(obj) in _PLAIN:
        return None
    try:
        return _read(obj)
    except Exception:  # a shape we half-recognised: report it rather than guess
        return Unreadable(shape_name(obj))


def _read(obj: Any) -> Usage | Unreadable | None:
    is_mapping = isinstance(obj, Mapping)
    meta = _get(obj, "usage_metadata") if not is_mapping else None
    info = _get(obj, "response_metadata") if not is_mapping else None
    if meta is not None or info is not None:  # a LangChain message
        if meta is None:
            return Unreadable(shape_name(obj))
        found = usage_from_langchain(meta)
        info = info or {}
        found.model = info.get("model_name") or info.get("model")
        found.provider = info.get("model_provider")
        found.response_id = _get(obj, "id")
        return found
    usage = _get(obj, "usage")
    kind = _get(obj, "object") or _get(obj, "type")
    if usage is None:
        if isinstance(kind, str) and (kind in _RESPONSE_MARKERS or kind == "message"):
            return Unreadable(shape_name(obj))
        if _get(obj, "choices") is not None and not is_mapping:
            return Unreadable(shape_name(obj))
        if not is_mapping and _is_stream(obj):
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
    return found


def _provider_of(obj: Any, usage: Any) -> str | None:
    kind = _get(obj, "object") or _get(obj, "type")
    if kind == "message" or _get(usage, "cache_read_input_tokens") is not None:
        return "anthropic"
    if kind in _RESPONSE_MARKERS:
        return "openai"
    return None


def _is_stream(obj: Any) -> bool:
    """An SDK stream (openai/anthropic ``Stream``, ``AsyncStream``, ``MessageStream``)."""
    return hasattr(obj, "_iterator") and hasattr(obj, "response")


# --- streams ----------------------------------------------------------------------------------

class StreamUsage:
    """Follows one stream's chunks/events: the usage they report, the first *content* chunk's
    time, and what is known if the stream ends early (input from the first event, output counted
    so far, marked partial)."""

    __slots__ = ("started", "first_content", "first_content_at", "usage", "final",
                 "content_chunks", "done", "completed", "error", "on_end", "provider",
                 "__weakref__")

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
        else:
            meta = _get(item, "usage_metadata") if not isinstance(item, Mapping) else None
            if meta is not None:  # LangChain chunks: each carries its own share
                part = usage_from_langchain(meta)
                for name in Usage.KINDS:
                    setattr(self.usage, name, getattr(self.usage, name) + getattr(part, name))
                self.final = True
            if _get(item, "content"):
                self._content()

    def is_new_response(self, item: Any) -> bool:
        """True when `item` starts another response than the one followed so far (a query that
        relays two streams one after the other)."""
        current = self.usage.response_id
        if current is None or type(item) in _PLAIN:
            return False
        kind = _get(item, "type") or _get(item, "object")
        if kind == "chat.completion.chunk":
            rid = _get(item, "id")
        elif kind == "message_start":
            rid = _get(_get(item, "message"), "id")
        elif kind == "response.created":
            rid = _get(_get(item, "response"), "id")
        else:
            return False
        return isinstance(rid, str) and rid != current

    def _content(self) -> None:
        self.content_chunks += 1
        if self.first_content is None:
            self.first_content_at = _perf()
            self.first_content = self.first_content_at - self.started

    def _identify(self, obj: Any) -> None:
        if self.usage.response_id is None and isinstance(_get(obj, "id"), str):
            self.usage.response_id = _get(obj, "id")
        model = _get(obj, "model")
        if isinstance(model, str) and model:
            self.usage.model = model

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
            self._take(usage_from_openai_chat(usage))
            self.provider = self.provider or "openai"

    def _anthropic_event(self, kind: str, event: Any) -> None:
        if kind == "message_start":
            message = _get(event, "message")
            self._identify(message)
            usage = _get(message, "usage")
            if usage is not None:
                self._take(usage_from_anthropic(usage), final=False)
            self.provider = self.provider or "anthropic"
        elif kind == "content_block_delta":
            self._content()
        elif kind == "message_delta":
            usage = _get(event, "usage")
            if usage is not None:
                # Counts here are cumulative; input fields, when present, restate message_start.
                known = self.usage
                delta = usage_from_anthropic(usage)
                known.output_tokens = delta.output_tokens
                known.reasoning_tokens = delta.reasoning_tokens or known.reasoning_tokens
                if _get(usage, "input_tokens") is not None:
                    known.input_tokens = delta.input_tokens
                if _get(usage, "cache_read_input_tokens") is not None:
                    known.cached_input_tokens = delta.cached_input_tokens
                if _get(usage, "cache_creation_input_tokens") is not None:
                    known.cache_write_tokens = delta.cache_write_tokens or known.cache_write_tokens
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
            self._take(usage_from_openai_responses(usage))

    def _take(self, found: Usage, final: bool = True) -> None:
        known = self.usage
        for name in Usage.KINDS:
            setattr(known, name, getattr(found, name))
        self.final = self.final or final

    def snapshot(self) -> Usage:
        """What this stream is known to have used so far. Without its final usage report, output
        is the content chunks counted (about one token each) and the usage is marked partial."""
        known = self.usage
        result = Usage(**{name: getattr(known, name) for name in Usage.KINDS},
                       model=known.model, provider=known.provider or self.provider,
                       response_id=known.response_id, partial=not self.final)
        if not self.final:
            result.output_tokens = max(result.output_tokens, self.content_chunks)
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
    if type(item) in _PLAIN:
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
    return True
