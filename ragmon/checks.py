"""Argument checks shared across the library. Each returns the value or raises ValueError naming
the value, what was expected and how to fix it (the client_python way: fail early, say why)."""
from __future__ import annotations

import math


def shown(value: object, limit: int = 200) -> str:
    """repr(value) for an error message: never raises, never longer than `limit`."""
    try:
        text = repr(value)
        if type(text) is not str:
            raise TypeError
    except Exception:
        try:
            text = f"<{type(value).__name__} whose repr() fails>"
        except Exception:
            text = "<object>"
    if len(text) > limit:
        text = text[:limit - 3] + "..."
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def check_count(name: str, value: object) -> int:
    """A whole number >= 0: token counts, cache hits."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={shown(value)} is not a count; expected a whole number >= 0 "
                         f"(pass e.g. {name}=500, not a string or fraction)")
    if value < 0:
        raise ValueError(f"{name}={shown(value)} is negative; counts must be >= 0")
    return value


def check_score(name: str, value: object) -> float:
    """A quality score from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name}={shown(value)} is not a score; expected a number from 0 to 1")
    return float(value)


def check_amount(name: str, value: object, expected: str = "a finite number >= 0") -> float:
    """A finite number >= 0: seconds, dollars, remaining requests."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name}={shown(value)} is invalid; expected {expected}")
    return float(value)


def check_name(name: str, value: object, example: str) -> str:
    """A non-empty string used as a label value or identifier."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}={shown(value)} must be a non-empty string, e.g. {name}={example!r}")
    return value


def check_whole(name: str, value: object, example: str) -> int:
    """A whole number of either sign: an increment."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} must be a whole number, e.g. {example}")
    return value


def check_positive_int(name: str, value: object, example: str) -> int:
    """A whole number >= 1: days to keep, worker processes."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} is invalid; expected a whole number >= 1, e.g. {example}")
    return value


def check_positive(name: str, value: object, example: str) -> float:
    """A finite number > 0: a period in hours, a timeout."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value <= 0):
        raise ValueError(f"{name}={value!r} is invalid; expected a finite number > 0, e.g. {example}")
    return float(value)


def check_port(name: str, value: object) -> int:
    """A TCP port; 0 asks the OS for a free one."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 65535:
        raise ValueError(f"{name}={value!r} is not a TCP port; expected an integer from 0 to 65535 "
                         "(0 picks a free one)")
    return value


# --- caller-supplied text, made safe once where it enters ------------------------------------
# A label value longer than this is cut and marked: Prometheus keeps every label value in memory
# on every sample, and no real model, stage or operation name comes near it.
MAX_LABEL_LENGTH = 128
# A string field of a record or a log line longer than this is cut and marked.
MAX_TEXT_LENGTH = 65_536
TRUNCATED = "…[truncated]"
REPLACEMENT = "\ufffd"


def text_of(value: object) -> str:
    """``str(value)`` that cannot raise: an object whose ``__str__`` fails is named by its type."""
    if type(value) is str:
        return value
    try:
        text = str(value)
        if type(text) is str:
            return text
    except Exception:
        pass
    try:
        name = type(value).__name__
    except Exception:
        name = "object"
    return f"<unprintable {safe_label(name) if type(name) is str else 'object'}>"


def _replace_unprintable(text: str) -> str:
    return "".join(ch if ch.isprintable() else REPLACEMENT for ch in text)


def _replace_surrogates(text: str) -> str:
    # Lone surrogates (json.loads makes them from some upstream bytes) cannot be encoded as
    # UTF-8: one in a label makes every /metrics scrape fail, one in a record makes it unreadable.
    return "".join(REPLACEMENT if "\ud800" <= ch <= "\udfff" else ch for ch in text)


def safe_label(value: object, limit: int = MAX_LABEL_LENGTH) -> str:
    """A label value (model, stage, operation, provider, cache type, error type) that renders in
    every exposition format: text of `value`, every unprintable character (controls, lone
    surrogates, line separators) replaced by U+FFFD, cut to `limit` characters with a marker."""
    text = text_of(value)
    if len(text) > limit:
        text = text[:limit - len(TRUNCATED)] + TRUNCATED
    if not text.isprintable():
        text = _replace_unprintable(text)
    return text


def safe_text(value: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """A string for a record or a log line: valid Unicode (lone surrogates replaced by U+FFFD),
    cut to `limit` characters with a marker. Newlines and tabs stay; JSON escapes them."""
    if len(value) > limit:
        value = value[:limit - len(TRUNCATED)] + TRUNCATED
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = _replace_surrogates(value)
    return value


# --- sane bounds -------------------------------------------------------------------------------
# No model call reads or writes more than this many tokens of one kind (context windows are at
# most a few million); a larger count is a bug or an attack, not usage.
MAX_TOKENS = 10_000_000
# No single call costs more than this many dollars; a larger cost comes from a wrong count or a
# wrong price, and one such value would dominate every spend graph and budget alert.
MAX_COST_DOLLARS = 1_000.0
