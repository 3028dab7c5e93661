"""Redaction of secrets from log lines and request records.

Two nets: values of fields whose *name* says secret (password, token, api_key, authorization,
cookie, ...) are replaced whole; and every string is searched for secrets by *shape*: provider
API keys, AWS key ids and secret keys, JWTs, Basic and Bearer credentials, passwords in URLs,
Slack webhooks, PagerDuty keys, ``password=...`` / ``"password": "..."`` pairs and card numbers
(Luhn-checked). Strings are also made valid Unicode and length-capped (``checks.safe_text``).
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from ..checks import safe_text, text_of

REDACTED = "[REDACTED]"

# A field whose name ends in one of these words holds a secret, whatever its value looks like.
_SECRET_FIELD = re.compile(
    r"(?i)(?:^|[_\-.])(?:password|passwd|pwd|passphrase|secret|token|key|apikey|authorization|auth"
    r"|cookie|credentials?|session)$|^(?:set-cookie|proxy-authorization|x-api-key)$")
# ...except these, which are counts or descriptions, never secrets.
_NOT_SECRET_FIELD = re.compile(r"(?i)^(?:tokens?_(?:type|count)|max_tokens?|token_type|cache_key_hash)$")

_KEY_WORDS = (r"(?:password|passwd|pwd|passphrase|secret|token|api[_\-]?key|apikey|access[_\-]?key"
              r"|private[_\-]?key|client[_\-]?secret|routing[_\-]?key|service[_\-]?key"
              r"|integration[_\-]?key|authorization|cookie|credentials?)")

_SHAPES = re.compile(
    r"(?P<key>sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,})"                       # OpenAI / Anthropic
    r"|(?P<aws_id>\b(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|APKA)[0-9A-Z]{16}\b)"
    r"|(?P<slack>xox[abprs]-[A-Za-z0-9\-]{10,})"                            # Slack tokens
    r"|(?P<slack_hook>https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]+)"
    r"|(?P<github>gh[pousr]_[A-Za-z0-9]{20,})"
    r"|(?P<google>AIza[0-9A-Za-z_\-]{30,})"
    r"|(?P<jwt>\beyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*)"
    r"|(?P<scheme>(?i:bearer|basic|token|digest)\s+)(?P<credential>[A-Za-z0-9._~+/\-]{8,}=*)"
    r"|(?P<url_user>[a-zA-Z][a-zA-Z0-9+.\-]*://[^/\s:@]*:)(?P<url_password>[^/\s@]+)(?P<at>@)"
    r"|(?P<pair>" + _KEY_WORDS + r"[\"']?\s*[:=]\s*[\"']?)(?P<value>[^\s,;\"'&}]{3,})"
    r"|(?P<aws_secret>(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
    r"(?=[A-Za-z0-9/+]*[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=]))"
    r"|(?P<card>(?<![\d\-])\d(?:[ \-]?\d){12,18}(?![\d\-]))"
)


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _replace(match: re.Match) -> str:
    kind = match.lastgroup
    if kind == "credential":
        return match.group("scheme") + REDACTED
    if kind == "at":
        return match.group("url_user") + REDACTED + "@"
    if kind == "value":
        return match.group("pair") + REDACTED
    if kind == "card":
        digits = re.sub(r"[ \-]", "", match.group("card"))
        return REDACTED if _luhn(digits) else match.group("card")
    return REDACTED


def redact(text: str) -> str:
    """`text` with every secret-shaped substring replaced by [REDACTED]."""
    return _SHAPES.sub(_replace, text)


def is_secret_field(name: str) -> bool:
    return bool(_SECRET_FIELD.search(name)) and not _NOT_SECRET_FIELD.match(name)


def scrub(value: Any, depth: int = 0) -> Any:
    """`value` ready for JSON with secrets redacted: strings searched by shape, values of
    secret-named fields replaced whole, other objects written as their (redacted) text. Past a
    few levels of nesting the rest is written as redacted text."""
    if isinstance(value, str):
        return safe_text(redact(value))
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth > 4:
        try:
            text = json.dumps(value, default=text_of)
        except Exception:
            text = text_of(value)
        return safe_text(redact(text))
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = safe_text(redact(text_of(key)))
            out[name] = REDACTED if item is not None and is_secret_field(name) else scrub(item, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(item, depth + 1) for item in value]
    return safe_text(redact(text_of(value)))
