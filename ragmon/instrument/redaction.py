"""Redaction of secrets and personal data from log lines, request records and warnings.

Two nets: values of fields whose *name* says secret (password, token, api_key, authorization,
cookie, ...) are replaced whole; and every string is searched for secrets by *shape*: provider
API keys, AWS key ids and secret keys, JWTs, Basic and Bearer credentials, passwords in URLs,
Slack webhooks, PagerDuty keys (after ``routing_key=`` or bare: 32 hex digits that are not a
UUID; an MD5 digest looks the same and is redacted too), ``password=...`` /
``"password": "..."`` pairs, card numbers (Luhn-checked), e-mail addresses, phone numbers
(``+`` and 7 to 15 digits, or the North American ``(415) 555-2671`` / ``415-555-2671``) and US
social security numbers. Strings are also made valid Unicode and length-capped.

Cost: one pass of one compiled pattern, linear in the length of the text. Every branch that
starts with a run of characters is anchored at the start of that run (a lookbehind), so no
position inside a long run is tried again; and a string is cut to ``MAX_TEXT_LENGTH`` (plus a
margin, so a secret across the cut is still seen whole) *before* it is searched, so a megabyte
costs no more than 64 KiB.
"""
from __future__ import annotations

import json
import re
from typing import Any, Mapping

from ..checks import MAX_TEXT_LENGTH, TRUNCATED, safe_text, text_of

REDACTED = "[REDACTED]"
# A secret that starts before the cut and is at most this long is still redacted whole.
CUT_MARGIN = 8192

# A field whose name ends in one of these words holds a secret, whatever its value looks like.
_SECRET_FIELD = re.compile(
    r"(?i)(?:^|[_\-.])(?:password|passwd|pwd|passphrase|secret|token|key|apikey|authorization|auth"
    r"|cookie|credentials?|session)$|^(?:set-cookie|proxy-authorization|x-api-key)$")
# ...except these, which are counts or descriptions, never secrets.
_NOT_SECRET_FIELD = re.compile(r"(?i)^(?:tokens?_(?:type|count)|max_tokens?|token_type|cache_key_hash)$")

DIGIT = "a digit"  # a shape that needs one (see _SHAPE_PATTERNS)
_KEY_WORDS = (r"(?:password|passwd|pwd|passphrase|secret|token|api[_\-]?key|apikey|access[_\-]?key"
              r"|private[_\-]?key|client[_\-]?secret|routing[_\-]?key|service[_\-]?key"
              r"|integration[_\-]?key|authorization|cookie|credentials?)")

# One pattern per shape, each found by its own scan and merged leftmost-first, as one
# alternation would, but each scan runs at the regex engine's full speed: a pattern that starts
# with a literal or one character class lets the engine skip to candidates in C, where a
# 16-branch alternation tries every branch at every position. A shape that starts with a run of
# characters checks the character before the run *after* its first character (the lookbehind
# ``(?<!X.)``), so no position inside a long run is tried again: every scan is linear.
# (kind, pattern, searched in ASCII-lowercased text, what the text must contain: a substring,
# any of several, or DIGIT; None: nothing in particular). Each scan is also skipped for a text
# shorter than its shape's shortest match (_SHORTEST), which keeps short strings cheap.
_SHAPE_PATTERNS = (
    ("key", r"sk-(?:ant-|proj-)?[A-Za-z0-9_\-]{16,}", False, "sk-"),           # OpenAI / Anthropic
    ("aws_id", r"A(?<!\wA)(?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA|PKA)[0-9A-Z]{16}\b", False, "A"),
    ("slack", r"xox[abprs]-[A-Za-z0-9\-]{10,}", False, "xox"),
    ("slack_hook", r"https?://hooks\.slack\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_\-]+",
     False, "hooks.slack.com"),
    ("github", r"gh[pousr]_[A-Za-z0-9]{20,}", False, "_"),
    ("google", r"AIza[0-9A-Za-z_\-]{30,}", False, "AIza"),
    ("jwt", r"eyJ(?<![A-Za-z0-9_\-]eyJ)[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",
     False, "eyJ"),
    ("scheme", r"(?:bearer|basic|token|digest)\s+(?P<secret>[A-Za-z0-9._~+/\-]{8,}=*)", True, None),
    ("url", r"[a-zA-Z](?<![a-zA-Z0-9+.\-].)[a-zA-Z0-9+.\-]*://[^/\s:@]*:(?P<secret>[^/\s@]+)(?=@)",
     False, "://"),
    ("pair", _KEY_WORDS + r"[\"']?\s*[:=]\s*[\"']?(?!(?:bearer|basic|token|digest)\s)"
             r"(?P<secret>[^\s,;\"'&}]{3,})", True, (":", "=")),   # "Authorization: Bearer x"
    ("email", r"[A-Za-z0-9._%+\-](?<![A-Za-z0-9._%+\-].)[A-Za-z0-9._%+\-]*@[A-Za-z0-9\-]+"
              r"(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}(?![A-Za-z0-9\-])", False, "@"),
    ("pagerduty", r"[0-9a-fA-F](?<![A-Za-z0-9_\-].)(?![0-9a-fA-F]{11}[1-8][0-9a-fA-F]{3}[89abAB])"
                  r"[0-9a-fA-F]{31}(?![A-Za-z0-9_\-])", False, None),   # 32 hex, not a UUID
    ("aws_secret", r"[A-Za-z0-9/+](?<![A-Za-z0-9/+=].)[A-Za-z0-9/+]{39}(?![A-Za-z0-9/+=])",
     False, DIGIT),
    ("phone", r"\+(?<![A-Za-z0-9_+].)\d(?:[ \-]?\(?\d\)?){6,14}(?![A-Za-z0-9_+])", False, "+"),
    ("phone", r"[\d(](?<![A-Za-z0-9_.+\-/].)(?:(?<=1)[ .\-](?:\(\d{3}\) ?|\d{3}[.\-])"
              r"|(?<=\()\d{3}\) ?|(?<=\d)\d{2}[.\-])\d{3}[.\-]\d{4}(?![A-Za-z0-9_\-]|[./]\d)",
     False, DIGIT),                                   # (415) 555-2671, 415-555-2671, 1-800-...
    ("ssn", r"\d(?<![A-Za-z0-9_\-].)\d{2}-\d{2}-\d{4}(?![A-Za-z0-9_\-])", False, "-"),
    ("card", r"\d(?<![\d\-].)(?:[ \-]?\d){12,18}(?![\d\-])", False, DIGIT),
)
_SHORTEST = {"key": 19, "aws_id": 20, "slack": 15, "slack_hook": 40, "github": 24, "google": 34,
             "jwt": 20, "scheme": 14, "url": 7, "pair": 6, "email": 6, "pagerduty": 32,
             "aws_secret": 40, "phone": 8, "ssn": 11, "card": 13}
# Shortest first, so a short text stops at the first shape it is too short for; `order` keeps
# the tie-break of the alternation.
_SHAPES = tuple(sorted(((_SHORTEST[kind], order, kind, re.compile(pattern), lowered, needs)
                        for order, (kind, pattern, lowered, needs) in enumerate(_SHAPE_PATTERNS)),
                       key=lambda shape: shape[0]))
_HAS_DIGIT = re.compile(r"\d").search
_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _replacement(kind: str, text: str, match: re.Match) -> str:
    """What replaces `match` (found in `text` or its lowercased copy, same positions)."""
    if "secret" in match.re.groupindex:  # keep what names the secret: "Bearer ", "password="
        return text[match.start():match.start("secret")] + REDACTED
    found = text[match.start():match.end()]
    if kind == "card":
        return REDACTED if _luhn(found.replace(" ", "").replace("-", "")) else found
    if kind == "aws_secret" and not (any(c.isupper() for c in found) and any(c.islower() for c in found)
                                     and any(c.isdigit() for c in found)):
        return found  # a 40-character word or path, not a key
    return REDACTED


def _matches(text: str, end: int):
    """(start, end, replacement) of every secret in text[:end], left to right, not overlapping;
    at one position the first shape in _SHAPE_PATTERNS wins, as in one alternation."""
    lowered = None
    has_digit = None
    size = len(text)
    scans = []
    for shortest, order, kind, pattern, use_lowered, needs in _SHAPES:
        if size < shortest:
            break
        if needs is DIGIT:
            if has_digit is None:
                has_digit = _HAS_DIGIT(text) is not None
            if not has_digit:
                continue
        elif type(needs) is tuple:
            if not any(part in text for part in needs):
                continue
        elif needs is not None and needs not in text:
            continue
        if use_lowered:
            if lowered is None:
                lowered = text.lower() if text.isascii() else text.translate(_ASCII_LOWER)
            source = lowered
        else:
            source = text
        found = pattern.search(source, 0, end)
        if found is not None:
            scans.append([found.start(), order, found, kind, pattern, source])
    pos = 0
    while scans:
        best = min(scans, key=lambda scan: (scan[0], scan[1]))
        _, _, match, kind, _, _ = best
        yield match.start(), match.end(), _replacement(kind, text, match)
        pos = match.end()
        for scan in scans:  # shapes whose next match overlaps the one taken: look again after it
            if scan[0] < pos:
                found = scan[4].search(scan[5], pos, end)
                scan[0], scan[2] = (found.start(), found) if found is not None else (-1, None)
        scans = [scan for scan in scans if scan[2] is not None]


def redact(text: str) -> str:
    """`text` with every secret-shaped substring replaced by [REDACTED]. Linear in len(text);
    redact_text() also bounds the length first."""
    if len(text) < _SHAPES[0][0]:
        return text
    parts, done = [], 0
    for start, end, replacement in _matches(text, len(text)):
        parts.append(text[done:start])
        parts.append(replacement)
        done = end
    if not parts:
        return text
    parts.append(text[done:])
    return "".join(parts)


def redact_text(text: str, limit: int = MAX_TEXT_LENGTH) -> str:
    """`text` redacted, valid Unicode and at most `limit` characters (cut with a marker).

    A longer text is cut *before* it is searched, so its cost is bounded by `limit`; a secret
    that begins before the cut is still matched whole (up to ``CUT_MARGIN`` characters long)
    and replaced, never left as a recognisable half."""
    if len(text) <= limit:
        out = redact(text)
        if len(out) > limit:  # replacements made it longer
            out = out[:limit - len(TRUNCATED)] + TRUNCATED
        return safe_text(out, limit)
    keep = max(0, limit - len(TRUNCATED))
    window = text[:keep + CUT_MARGIN]
    parts, done = [], 0
    for start, end, replacement in _matches(window, len(window)):
        if start >= keep:
            break
        parts.append(window[done:start])
        parts.append(replacement)
        done = end
    if done < keep:
        parts.append(window[done:keep])
    out = "".join(parts)[:keep]  # a replacement across the cut may reach past it
    return safe_text(out + TRUNCATED, limit)


def is_secret_field(name: str) -> bool:
    return bool(_SECRET_FIELD.search(name)) and not _NOT_SECRET_FIELD.match(name)


def scrub(value: Any, depth: int = 0) -> Any:
    """`value` ready for JSON with secrets redacted: strings searched by shape, values of
    secret-named fields replaced whole, other objects written as their (redacted) text. Past a
    few levels of nesting the rest is written as redacted text."""
    if isinstance(value, str):
        return redact_text(value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    if depth > 4:
        try:
            text = json.dumps(value, default=text_of)
        except Exception:
            text = text_of(value)
        return redact_text(text)
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            name = redact_text(text_of(key))
            out[name] = REDACTED if item is not None and is_secret_field(name) else scrub(item, depth + 1)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        return [scrub(item, depth + 1) for item in value]
    return redact_text(text_of(value))
