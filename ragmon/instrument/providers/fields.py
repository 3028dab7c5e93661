"""Reading fields of SDK objects and dicts alike, without importing any SDK."""
from __future__ import annotations

from typing import Any, Mapping

from .. import tokens

MISSING = object()

# Values that are never an LLM response: skipped without a look.
PLAIN = (str, bytes, int, float, bool, type(None), list, tuple, set, frozenset)


def get(obj: Any, name: str) -> Any:
    """A field of a response object or dict, None when absent. Pydantic models (the SDKs'
    types) are read from their field storage: getattr() of a missing name on them raises and
    catches an AttributeError, which costs more than the whole read."""
    if type(obj) is dict:
        return obj.get(name)
    fields = getattr(obj, "__dict__", None)
    if fields is not None:
        value = fields.get(name, MISSING)
        if value is not MISSING:
            return value
        extra = getattr(obj, "__pydantic_extra__", MISSING)
        if extra is not MISSING:  # a pydantic model: fields and extras are all there is
            return extra.get(name) if extra else None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def count(value: Any) -> int:
    """A token count from a response: an int >= 0, else 0 (None means "not reported")."""
    return value if type(value) is int and value >= 0 else 0


def reported(block: Any, shape: str, getter=get) -> dict[str, int]:
    """The way-in counts (``input_tokens`` the whole prompt, ...) of one usage block, read at
    the places ``tokens.KINDS`` names for `shape` ("a + b" adds fields up)."""
    found = {}
    for kind in tokens.KINDS:
        path = kind.sdk_fields.get(shape)
        if path is not None:
            found[kind.field] = sum(count(tokens.read_path(block, term.strip(), getter))
                                    for term in path.split("+"))
    return found


def shape_name(obj: Any) -> str:
    """A bounded name for a value's shape, for the unreadable-responses counter."""
    kind = get(obj, "object") or get(obj, "type")
    name = type(obj).__name__
    return f"{name}:{kind}" if isinstance(kind, str) and len(kind) < 40 else name
