"""Anthropic Messages: ``input_tokens`` excludes cache reads and writes (the table's path adds
them up into the whole prompt). The 5m/1h split of cache writes comes from ``cache_creation``
when the response has it; otherwise every write is a 5-minute one (the API's default)."""
from __future__ import annotations

from typing import Any

from ..tokens import Usage
from .fields import count, get, reported


def usage_from_messages(usage: Any, final: bool = True) -> Usage:
    """`final=False` for ``message_start``, whose output counts are placeholders (the output
    so far, before any thinking is counted): only its input side is read."""
    counts = reported(usage, "anthropic")
    if not final:
        counts["output_tokens"] = counts["reasoning_tokens"] = 0
    written = count(get(usage, "cache_creation_input_tokens"))
    if counts["cache_write_tokens"] + counts["cache_write_1h_tokens"] != written:
        counts["cache_write_tokens"] = max(written - counts["cache_write_1h_tokens"], 0)
        counts["cache_write_1h_tokens"] = written - counts["cache_write_tokens"]
    return Usage.reported(counts)


def service_tier_of(usage: Any) -> str | None:
    """The tier Anthropic's ``usage.service_tier`` says the request was processed in
    ("standard", "priority", "batch"), priced as genai-prices prices it; None when absent."""
    tier = get(usage, "service_tier")
    if tier is None:
        return None
    tier = str(getattr(tier, "value", tier)).strip().lower()
    return tier if 0 < len(tier) <= 32 and tier.isprintable() else None
