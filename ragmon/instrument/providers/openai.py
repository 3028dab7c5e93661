"""OpenAI: Chat Completions (and LiteLLM's OpenAI-shaped responses) and the Responses API.
Both report the whole prompt (cache reads and writes included) and the whole completion
(reasoning included): the library's own convention, read as it is."""
from __future__ import annotations

from typing import Any

from ..tokens import Usage
from .fields import count, get, reported


def usage_from_chat(usage: Any) -> Usage:
    """Chat Completions / LiteLLM ``usage``."""
    counts = reported(usage, "openai_chat")
    if not counts.get("cached_input_tokens"):  # LiteLLM reports Anthropic cache reads so
        counts["cached_input_tokens"] = count(get(usage, "cache_read_input_tokens"))
    if not counts.get("cache_write_tokens"):  # LiteLLM, for Anthropic models
        counts["cache_write_tokens"] = count(get(usage, "cache_creation_input_tokens"))
    return Usage.reported(counts)


def usage_from_responses(usage: Any) -> Usage:
    """Responses API ``usage``."""
    return Usage.reported(reported(usage, "openai_responses"))
