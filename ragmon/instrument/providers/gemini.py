"""Google Gemini (the ``google-genai`` SDK, the Gemini API and Vertex AI).

``usageMetadata`` reports ``promptTokenCount`` with the cached tokens inside it
(``cachedContentTokenCount``) and tool-use prompt tokens beside it; ``candidatesTokenCount``
leaves the thinking tokens (``thoughtsTokenCount``) out, though they are billed as output. The
table's paths add these up into the library's whole input and whole output. The SDK's objects
use snake_case, the wire (and a raw JSON dict) camelCase: both are read.

The client hook is ``sdk.instrument_gemini``; the HTTP status of an error maps to a counted type
here (429 is ``RateLimitError``).
"""
from __future__ import annotations

import re
from typing import Any

from ..tokens import Usage
from .fields import get, reported

_CAMEL = re.compile(r"_([a-z])")


def get_either(obj: Any, name: str) -> Any:
    """A field under its snake_case name (SDK objects) or its camelCase one (the wire)."""
    value = get(obj, name)
    if value is None and "_" in name:
        value = get(obj, _CAMEL.sub(lambda m: m.group(1).upper(), name))
    return value


def metadata_of(obj: Any) -> Any:
    """The usage block of a GenerateContentResponse (object or dict), None without one."""
    return get_either(obj, "usage_metadata")


def is_response(obj: Any) -> bool:
    meta = metadata_of(obj)
    if meta is not None:
        return get_either(meta, "prompt_token_count") is not None or get_either(
            meta, "total_token_count") is not None
    return get(obj, "candidates") is not None and (
        get_either(obj, "model_version") is not None or get_either(obj, "response_id") is not None)


def usage_from_metadata(meta: Any) -> Usage:
    return Usage.reported(reported(meta, "gemini", get_either))


def usage_of(response: Any) -> Usage | None:
    """The usage of one response or stream chunk, with its model and id; None without usage."""
    meta = metadata_of(response)
    if meta is None:
        return None
    usage = usage_from_metadata(meta)
    model = get_either(response, "model_version")
    usage.model = model if isinstance(model, str) and model else None
    rid = get_either(response, "response_id")
    usage.response_id = rid if isinstance(rid, str) else None
    usage.provider = "gemini"
    return usage


def has_content(chunk: Any) -> bool:
    for candidate in get(chunk, "candidates") or ():
        content = get(candidate, "content")
        for part in (get(content, "parts") or ()) if content is not None else ():
            if get(part, "text") or get_either(part, "function_call") is not None:
                return True
    return False


def is_final(chunk: Any) -> bool:
    return any(get_either(c, "finish_reason") for c in get(chunk, "candidates") or ())


_STATUS_ERRORS = {400: "BadRequestError", 401: "AuthenticationError", 403: "PermissionDeniedError",
                  404: "NotFoundError", 409: "ConflictError", 413: "RequestTooLargeError",
                  422: "UnprocessableEntityError", 429: "RateLimitError",
                  500: "InternalServerError", 503: "ServiceUnavailableError",
                  504: "DeadlineExceededError"}


def error_type(exc: BaseException) -> str | None:
    """The counted type of a google-genai error, by its HTTP status; None when not one."""
    code = getattr(exc, "code", None)
    if type(code) is int and type(exc).__module__.startswith("google.genai"):
        return _STATUS_ERRORS.get(code, "APIError")
    return None
