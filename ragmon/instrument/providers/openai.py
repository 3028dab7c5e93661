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


def service_tier_of(response: Any) -> str | None:
    """The service tier a response (or stream chunk) says it was processed in ("default",
    "flex", "priority"...), as its text; None when it says none or something unreadable."""
    tier = get(response, "service_tier")
    if tier is None:
        return None
    tier = getattr(tier, "value", tier)  # an enum member, as some SDK versions give it
    tier = str(tier).strip().lower()
    return tier if 0 < len(tier) <= 32 and tier.isprintable() else None
