"""HTTP helpers shared by every handler: OpenAI error responses, request ids, bounded JSON bodies."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Optional

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from schemas.errors import ArbstrError

from .headers import bearer_token  # noqa: F401  (handlers import it from here)

# Per-request values the envelope middleware sets for every handler.
REQUEST_ID = web.RequestKey("request_id", str)
STARTED = web.RequestKey("started", float)
TRACE = web.RequestKey("traceparent", str)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Deepest JSON nesting a body may have. Real requests (messages, content parts, tool schemas) stay far below it;
# orjson refuses to serialise past ~254 levels, so a deeper body would fail on its way upstream, after the reserve.
MAX_JSON_DEPTH = 128
# Statuses where a retry cannot help: the official client then skips its automatic retries.
_NO_RETRY = {400, 401, 402, 403, 404, 409, 413, 422, 431}


def new_request_id(client_value: Optional[str]) -> str:
    if client_value and _REQUEST_ID_RE.match(client_value):
        return client_value
    return f"req_{uuid.uuid4().hex}"


def json_dumps(data: Any) -> bytes:
    """orjson, which refuses integers beyond 64 bits; then the standard library, which does not: a sum of
    millisats is never a reason to answer 500."""
    try:
        return orjson.dumps(data)
    except orjson.JSONEncodeError:
        return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()


def json_response(data: Any, status: int = 200, headers: Optional[dict[str, str]] = None) -> web.Response:
    return web.Response(body=json_dumps(data), status=status, content_type="application/json", headers=headers)


def error_response(err: ArbstrError, request_id: Optional[str] = None,
                   extra_headers: Optional[dict[str, str]] = None) -> web.Response:
    headers = dict(err.headers)
    if extra_headers:
        headers.update(extra_headers)
    if request_id:
        headers["x-request-id"] = request_id
    if err.status in _NO_RETRY and "x-should-retry" not in headers:
        headers["x-should-retry"] = "false"
    return web.Response(body=err.body().model_dump_json().encode(), status=err.status,
                        content_type="application/json", headers=headers)


def too_large(max_bytes: int, announced: Optional[int] = None) -> ArbstrError:
    """The 413 of a body over ``max_bytes``: by its ``Content-Length`` when it announced one, else as read."""
    message = (f"request body is {announced} bytes; the limit is {max_bytes}" if announced is not None
               else f"request body exceeds the limit of {max_bytes} bytes")
    return ArbstrError(413, message, code="request_too_large")


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object: 413 when too large, 400 when not a JSON object."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise too_large(max_bytes, request.content_length)
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise too_large(max_bytes) from None
    except RequestPayloadError as e:  # e.g. a Content-Encoding the body is not in
        raise ArbstrError(400, f"request body could not be read: {e.args[0] if e.args else 'bad payload'}",
                          code="invalid_body") from None
    except ConnectionResetError:  # the client hung up before its body was complete: its fault, not ours
        raise ArbstrError(400, "the connection closed before the request body was complete",
                          code="incomplete_body") from None
    if len(raw) > max_bytes:
        raise too_large(max_bytes)
    if not raw:
        raise ArbstrError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        if "depth" in e.msg or "recursion" in e.msg:
            raise too_deep() from None
        raise ArbstrError(400, f"request body is not valid JSON: {e.msg} at position {e.pos}",
                          code="invalid_json") from None
    if not isinstance(data, dict):
        raise ArbstrError(400, "request body must be a JSON object", code="invalid_json")
    if not within_depth(data, MAX_JSON_DEPTH):
        raise too_deep()
    return data


def too_deep() -> ArbstrError:
    return ArbstrError(400, f"request body is nested deeper than {MAX_JSON_DEPTH} levels", code="json_too_deep")


def within_depth(value: Any, limit: int) -> bool:
    """Whether no list or object in ``value`` sits more than ``limit`` levels deep (the top level is 1).

    Iterative, so no input can exhaust the stack; it costs less than the parse that produced ``value``."""
    if not isinstance(value, (dict, list)):
        return True
    stack: list[tuple[Any, int]] = [(value, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > limit:
            return False
        for child in (node.values() if type(node) is dict else node):
            kind = type(child)
            if kind is dict or kind is list:
                push((child, depth + 1))
    return True
