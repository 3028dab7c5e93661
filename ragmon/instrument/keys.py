"""Attribution keys as a query carries them: checked where they come in, held in a ContextVar.

A value is a string of 1..64 characters from letters, digits and ``._:@/+=-`` (a whole number is
taken as its text); anything else becomes ``invalid`` and is counted when the query finishes
(rag_attribution_invalid_values_total), never raised. See attribution.py for the metrics.
"""
from __future__ import annotations

import re
from contextvars import ContextVar
from typing import Any, Callable, Mapping

from .runtime import default_metrics, recording_failed

OTHER = "other"  # the label value of every value that is not named
INVALID = "invalid"  # what a value that fails the check is replaced by
MAX_VALUE_LENGTH = 64
MAX_KEYS_PER_QUERY = 8
VALUE_PATTERN = re.compile(r"[A-Za-z0-9._:@/+=-]{1,%d}" % MAX_VALUE_LENGTH)
KEY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")


class Keys:
    """The attribution of a query: checked ``values`` {key: value} and the ``invalid`` keys whose
    values were replaced (counted when the query finishes). Never changed once made."""

    __slots__ = ("values", "invalid")

    def __init__(self, values: dict[str, str], invalid: tuple[str, ...] = ()):
        self.values = values
        self.invalid = invalid

    def over(self, outer: "Keys | None") -> "Keys":
        """These keys on top of `outer`'s."""
        if outer is None:
            return self
        invalid = tuple(key for key in outer.invalid if key not in self.values) + self.invalid
        return Keys({**outer.values, **self.values}, invalid)

    def __repr__(self):
        return f"Keys({self.values!r})"


# The keys of the code running now: set by attribution(), request_context() and the middleware.
CURRENT_KEYS: ContextVar[Keys | None] = ContextVar("ragmon_attribution", default=None)


class FirstUse:
    """What joins attribution to the query path the first time keys are bound: attribution.py
    sets ``activate`` when it is imported (it registers the per-query hooks, see hooks.py), so
    request_context() and the middleware can bind keys without importing it."""

    activate: Callable[[], None] | None = None


FIRST_USE = FirstUse()


def bind(keys: Mapping[str, Any], source: str):
    """Sets `keys` on top of the current ones; returns the ContextVar token to reset, or None
    when there was nothing to set (request_context, the middleware)."""
    found = checked(keys, source)
    if found is None:
        return None
    if FIRST_USE.activate is not None:
        FIRST_USE.activate()
    return CURRENT_KEYS.set(found.over(CURRENT_KEYS.get()))


_GOOD: set[str] = set()  # values seen valid lately: a request's keys are checked by one lookup
_GOOD_MAX = 4096


def _good(value: str) -> bool:
    if not VALUE_PATTERN.fullmatch(value):
        return False
    if len(_GOOD) >= _GOOD_MAX:
        _GOOD.clear()
    _GOOD.add(value)
    return True


_RECENT: dict[tuple, Keys] = {}  # the Keys made of recent arguments: a request's are looked up


def checked(keys: Mapping[str, Any], source: str = "attribution") -> Keys | None:
    """`keys` checked: a None value is left out, a bad value becomes ``invalid``, a bad key name
    is left out and counted in rag_instrumentation_errors_total{reason="attribution_key"}."""
    try:
        signature = tuple(keys.items())
        found = _RECENT.get(signature)
    except TypeError:  # a value that cannot be hashed: checked (and refused) below
        signature = found = None
    if found is not None:
        return found
    found = _checked(keys, source)
    if (found is not None and signature is not None and not found.invalid
            and all(type(value) is str for _, value in signature)):  # 1 == True: only text
        if len(_RECENT) >= _GOOD_MAX:
            _RECENT.clear()
        _RECENT[signature] = found
    return found


def _checked(keys: Mapping[str, Any], source: str) -> Keys | None:
    values: dict[str, str] = {}
    invalid: list[str] = []
    for key, value in keys.items():
        if value is None:
            continue
        if (type(key) is not str or not KEY_PATTERN.fullmatch(key)
                or len(values) >= MAX_KEYS_PER_QUERY):
            recording_failed(default_metrics(), "attribution_key", "%s: key %.40r is not an "
                             "attribution key (a lower-case name, at most %d per query); left out",
                             source, key, MAX_KEYS_PER_QUERY)
            continue
        if type(value) is not str:
            value = str(value) if type(value) is int else None
        if value is None or (value not in _GOOD and not _good(value)):
            value = INVALID
            invalid.append(key)
        values[key] = value
    if not values:
        return None
    return Keys(values, tuple(invalid))
