"""Rate-limit headroom: the headers providers send (``x-ratelimit-*``, Anthropic's
``anthropic-ratelimit-*``), parsed into the rate-limit gauges, and ``track_rate_limit`` for
numbers or headers the application has in hand."""
from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any, Mapping

from ..checks import check_amount, check_name, safe_label, text_of
from .catalog import RAGMetrics
from .runtime import default_metrics, recording_failed, safe_name

# --- rate-limit headers --------------------------------------------------------------------------

# (header, what it is, limit kind)
_RATE_HEADERS = (
    ("x-ratelimit-remaining-requests", "remaining", "requests"),
    ("x-ratelimit-remaining-tokens", "remaining", "tokens"),
    ("x-ratelimit-reset-requests", "reset", "requests"),
    ("x-ratelimit-reset-tokens", "reset", "tokens"),
    ("anthropic-ratelimit-requests-remaining", "remaining", "requests"),
    ("anthropic-ratelimit-tokens-remaining", "remaining", "tokens"),
    ("anthropic-ratelimit-requests-reset", "reset", "requests"),
    ("anthropic-ratelimit-tokens-reset", "reset", "tokens"),
)
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m(?!s))?(?:(\d+(?:\.\d+)?)s)?"
                       r"(?:(\d+(?:\.\d+)?)ms)?$")


def parse_reset(value: str, now: float | None = None) -> float:
    """The Unix time a rate-limit window resets, from OpenAI's durations (``1m30s``, ``250ms``,
    ``6m0s``) or Anthropic's RFC 3339 timestamps. ValueError when it is neither."""
    now = time.time() if now is None else now
    text = text_of(value).strip()
    match = _DURATION.match(text)
    if match and text and any(match.groups()):
        hours, minutes, seconds, millis = (float(g) if g else 0.0 for g in match.groups())
        return now + hours * 3600 + minutes * 60 + seconds + millis / 1000
    try:
        return float(text) + now if text.replace(".", "", 1).isdigit() else \
            datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"rate-limit reset {value!r} is neither a duration like '1m30s' nor an "
                         "RFC 3339 time like '2026-01-01T00:00:00Z'") from None


def headers_of(source: Any) -> Mapping | None:
    """The headers carried by `source`: a mapping (dict, httpx.Headers), a raw response (httpx,
    the SDKs' ``with_raw_response`` objects), an SDK error or stream (``.response.headers``).
    None when `source` carries none (parsed objects such as ``ChatCompletion`` do not)."""
    if source is None:
        return None
    if isinstance(source, Mapping):
        return source
    for path in (("headers",), ("response", "headers"), ("_response", "headers"),
                 ("http_response", "headers")):
        value = source
        for attr in path:
            value = getattr(value, attr, None)
            if value is None:
                break
        if value is not None and hasattr(value, "get") and hasattr(value, "items"):
            return value
    return None


def provider_of_headers(headers: Mapping) -> str | None:
    for key in headers.keys():
        name = str(key).lower()
        if name.startswith("anthropic-ratelimit-"):
            return "anthropic"
        if name.startswith("x-ratelimit-"):
            return "openai"
    return None


def read_rate_limits(headers: Mapping) -> tuple[dict[str, float], dict[str, float], list]:
    """({kind: remaining}, {kind: reset Unix time}, [(header, bad value)]) from response headers."""
    get = headers.get
    remaining, reset, bad = {}, {}, []
    now = time.time()
    for header, what, kind in _RATE_HEADERS:
        raw = get(header)
        if raw is None:
            continue
        try:
            if what == "remaining":
                number = float(text_of(raw).strip())
                if not number >= 0:
                    raise ValueError
                remaining.setdefault(kind, number)
            else:
                reset.setdefault(kind, parse_reset(raw, now))
        except ValueError:
            bad.append((header, raw))
    return remaining, reset, bad


def record_rate_limits(provider: str | None, headers: Mapping, metrics: RAGMetrics) -> dict[str, float]:
    """Sets the rate-limit gauges from response headers; returns what was recorded
    (``requests`` / ``tokens`` remaining, ``requests_reset`` / ``tokens_reset`` Unix times)."""
    remaining, reset, bad = read_rate_limits(headers)
    provider = safe_label(provider or provider_of_headers(headers) or "unknown")
    for header, raw in bad:
        recording_failed(metrics, "bad_header", "header %s=%s from %s is not a number or time",
                          header, safe_label(raw), provider)
    cache = metrics.child_cache
    for kind, value in remaining.items():
        child = cache.get(("rate", provider, kind))
        if child is None:
            gauge = metrics.rate_limit_requests if kind == "requests" else metrics.rate_limit_tokens
            child = cache[("rate", provider, kind)] = gauge.labels(provider)
        child.set(value)
    for kind, when in reset.items():
        child = cache.get(("reset", provider, kind))
        if child is None:
            child = cache[("reset", provider, kind)] = metrics.rate_limit_reset.labels(provider, kind)
        child.set(when)
    found = dict(remaining)
    found.update({f"{kind}_reset": when for kind, when in reset.items()})
    return found


def track_rate_limit(provider: str | None = None, remaining_requests: float | None = None,
                     remaining_tokens: float | None = None, *, headers: Any = None,
                     metrics: RAGMetrics | None = None) -> dict[str, float]:
    """Records the rate-limit headroom a provider reports, from numbers or response headers
    (``x-ratelimit-remaining-*`` / ``-reset-*`` and Anthropic's ``anthropic-ratelimit-*``).

    ``headers`` may be a mapping (dict, ``httpx.Headers``), a raw response (httpx, or the SDKs'
    ``client.....with_raw_response`` result), an SDK error or stream (they carry the response).
    Parsed objects such as ``ChatCompletion`` carry no headers: that is counted
    (``reason="no_headers"``); instrument the client with ``instrument_openai()`` instead.
    ``provider`` defaults to the one the headers name. Bad numbers passed directly raise
    ValueError; unparsable headers (they come from outside) are logged and counted instead.
    Returns what was recorded (``requests``, ``tokens``, ``requests_reset``, ``tokens_reset``).
    """
    if provider is not None:
        provider = safe_name(check_name("provider", provider, "openai"))
    m = metrics or default_metrics()
    found: dict[str, float] = {}
    if remaining_requests is not None:
        found["requests"] = check_amount("remaining_requests", remaining_requests, "a count >= 0 as reported by the provider")
    if remaining_tokens is not None:
        found["tokens"] = check_amount("remaining_tokens", remaining_tokens, "a count >= 0 as reported by the provider")
    mapping = headers_of(headers)
    if headers is not None and mapping is None:
        recording_failed(m, "no_headers", "track_rate_limit(headers=%s) got an object without "
                          "headers; pass response.headers of a raw response "
                          "(client.chat.completions.with_raw_response.create(...)) or instrument "
                          "the client with ragmon.instrument_openai(client)", type(headers).__name__)
    if provider is None:
        provider = safe_name((provider_of_headers(mapping) if mapping else None) or "unknown")
    if found:
        if "requests" in found:
            m.rate_limit_requests.labels(provider).set(found["requests"])
        if "tokens" in found:
            m.rate_limit_tokens.labels(provider).set(found["tokens"])
    if mapping:
        try:
            lowered = {text_of(key).lower(): value for key, value in mapping.items()}
        except Exception as bad:  # headers come from outside: a broken mapping is not our caller's bug
            recording_failed(m, "bad_header", "rate-limit headers from %s could not be read: %r",
                              provider, bad)
            lowered = {}
        for kind in ("requests", "tokens"):  # numbers passed directly win over headers
            if kind in found:
                for name in (f"x-ratelimit-remaining-{kind}", f"anthropic-ratelimit-{kind}-remaining"):
                    lowered.pop(name, None)
        found.update(record_rate_limits(provider, lowered, m))
    return found
