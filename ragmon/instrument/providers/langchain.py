"""LangChain messages (``AIMessage``, ``AIMessageChunk``): ``usage_metadata`` reports the whole
prompt, cache reads and creation included."""
from __future__ import annotations

from typing import Any

from ..tokens import Usage
from .fields import get, reported


def usage_from_metadata(meta: Any) -> Usage:
    counts = reported(meta, "langchain")
    # cache_creation holds every write; the 1-hour ones are a part of it.
    counts["cache_write_tokens"] = max(counts["cache_write_tokens"]
                                       - counts["cache_write_1h_tokens"], 0)
    return Usage.reported(counts)


def model_of(message: Any) -> tuple[str | None, str | None]:
    info = get(message, "response_metadata") or {}
    return (info.get("model_name") or info.get("model")), info.get("model_provider")


def is_message(obj: Any) -> bool:
    meta = get(obj, "usage_metadata")
    return (meta is not None and get(meta, "input_tokens") is not None) or (
        meta is None and get(obj, "response_metadata") is not None)


