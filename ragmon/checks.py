"""Argument checks shared across the library. Each returns the value or raises ValueError naming
the value, what was expected and how to fix it (the client_python way: fail early, say why)."""
from __future__ import annotations

import math


def check_count(name: str, value: object) -> int:
    """A whole number >= 0: token counts, cache hits."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name}={value!r} is not a count; expected a whole number >= 0 "
                         f"(pass e.g. {name}=500, not a string or fraction)")
    if value < 0:
        raise ValueError(f"{name}={value!r} is negative; counts must be >= 0")
    return value


def check_score(name: str, value: object) -> float:
    """A quality score from 0 to 1."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"{name}={value!r} is not a score; expected a number from 0 to 1")
    return float(value)


def check_amount(name: str, value: object, expected: str = "a finite number >= 0") -> float:
    """A finite number >= 0: seconds, dollars, remaining requests."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or value < 0):
        raise ValueError(f"{name}={value!r} is invalid; expected {expected}")
    return float(value)


def check_name(name: str, value: object, example: str) -> str:
    """A non-empty string used as a label value or identifier."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}={value!r} must be a non-empty string, e.g. {name}={example!r}")
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
