"""The OpenAI wire format as the mock speaks it: pure helpers that shape bodies, tokens, usage and errors.

No I/O here: every endpoint module builds its reply from these, and the unit tests call them directly.
"""

from __future__ import annotations

import base64
import hashlib
import re
import struct
from http import HTTPStatus
from typing import Any, Iterable, Mapping, Optional, Sequence

import orjson

from schemas.errors import ERROR_TYPES
from schemas.tokens import content_text, estimate_text_tokens

MAX_EMBEDDING_DIMENSIONS = 8192
AUTH_PREFIX_CHARS = 16
# Headers whose values are secrets (bearer keys, Cashu tokens): only a fingerprint is ever recorded.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-cashu", "cookie"})

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_FILLER = "tok"
FINGERPRINT = "fp_mock"
DONE = b"data: [DONE]\n\n"
JSON_HEADERS = {"Content-Type": "application/json"}
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

class InvalidRequest(Exception):
    """The request itself is malformed: answered 400 with an OpenAI error body."""

    def __init__(self, message: str, param: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def auth_fingerprint(secret: str) -> str:
    """The recorded stand-in for a secret: the first hex digits of its sha256."""
    return hashlib.sha256(secret.encode()).hexdigest()[:AUTH_PREFIX_CHARS]


def bearer_token(authorization: str) -> str:
    scheme, _, rest = authorization.partition(" ")
    return rest.strip() if scheme.lower() == "bearer" and rest else authorization


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Headers with lower-cased names; a secret keeps only ``sha256:<prefix>`` (of the bearer token itself)."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        key = name.lower()
        if key in SECRET_HEADERS:
            secret = bearer_token(value) if key in ("authorization", "proxy-authorization") else value
            out[key] = "sha256:" + auth_fingerprint(secret)
        else:
            out[key] = value
    return out


def reply_tokens(source: str, count: int) -> list[str]:
    """``count`` four-character tokens echoing ``source`` (its ASCII letters and digits, cycled)."""
    if count <= 0:
        return []
    need = 3 * count
    # Only a bounded prefix is scanned: a 100k-character prompt must not cost 100k steps per request.
    letters = _NON_ALNUM.sub("", source[: max(need * 4, 256)]) or _FILLER
    stream = letters * (-(-need // len(letters)))
    return [stream[i:i + 3] + " " for i in range(0, need, 3)]


def last_user_text(messages: Sequence[Any]) -> str:
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    for message in reversed(messages):
        if isinstance(message, dict):
            return content_text(message.get("content"))
    return ""


def prompt_texts(value: Any, param: str) -> list[Any]:
    """A completions ``prompt`` / embeddings ``input``: a string, a list of strings, token ids, or lists of ids."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and value:
        if all(is_int(v) for v in value):
            return [value]
        if all(isinstance(v, str) or (isinstance(v, list) and all(is_int(t) for t in v)) for v in value):
            return list(value)
    raise InvalidRequest(f"'{param}' must be a string, an array of strings or an array of token arrays", param)


def prompt_tokens_of(items: Iterable[Any]) -> int:
    return sum(estimate_text_tokens(item) if isinstance(item, str) else len(item) for item in items)


def embedding_vector(item: Any, dimensions: int) -> list[float]:
    """A deterministic vector for ``item``; every component is exactly representable as float32, so the
    base64 (little-endian float32) and float encodings decode to the same numbers."""
    key = (item if isinstance(item, str) else ",".join(map(str, item))).encode()
    raw = bytearray()
    counter = 0
    while len(raw) < dimensions:
        raw += hashlib.sha256(counter.to_bytes(4, "little") + key).digest()
        counter += 1
    return [(b - 127.5) / 128.0 for b in raw[:dimensions]]


def encode_embedding(vector: list[float], encoding_format: str) -> Any:
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()
    return vector


def token_limit(body: Mapping[str, Any], keys: Sequence[str]) -> Optional[int]:
    """The smallest of the output limits the request sets (each must be a positive integer)."""
    limit: Optional[int] = None
    for key in keys:
        value = body.get(key)
        if value is None:
            continue
        if not is_int(value) or value < 1:
            raise InvalidRequest(f"'{key}' must be a positive integer", key)
        limit = value if limit is None else min(limit, value)
    return limit


def output_count(body: Mapping[str, Any], key: str) -> int:
    """``n`` / ``best_of``: how many outputs to make (1 when absent)."""
    value = body.get(key)
    if value is None:
        return 1
    if not is_int(value) or not 1 <= value <= 128:
        raise InvalidRequest(f"'{key}' must be an integer from 1 to 128", key)
    return value


def plan_output(limit: Optional[int], target: int) -> tuple[int, bool]:
    """(tokens to produce, truncated by the limit?)."""
    if limit is not None and limit < target:
        return limit, True
    return target, False


def chat_usage(prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
    }


def responses_usage(input_tokens: int, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": input_tokens,
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": input_tokens + output_tokens,
    }


def error_body(status: int, shape: str, message: str, code: Optional[str]) -> tuple[bytes, Optional[str]]:
    """(body, content type) of an error in one of the shapes real upstreams and their proxies answer with."""
    if shape == "openai":
        err_type = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
        payload = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
        return orjson.dumps(payload), "application/json"
    if shape == "detail":
        return orjson.dumps({"detail": message}), "application/json"
    if shape == "html":
        title = f"{status} {_reason(status)}"
        page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n<center><h1>{title}</h1></center>\r\n"
                "<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n")
        return page.encode(), "text/html"
    if shape == "plain":
        return f"{status} {_reason(status)}: {message}".encode(), "text/plain"
    return b"", None


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def sse(payload: Any) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def sse_event(payload: Mapping[str, Any]) -> bytes:
    return b"event: " + payload["type"].encode() + b"\ndata: " + orjson.dumps(payload) + b"\n\n"

