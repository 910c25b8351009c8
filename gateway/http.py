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

# Per-request values the envelope middleware sets for every handler.
REQUEST_ID = web.RequestKey("request_id", str)
STARTED = web.RequestKey("started", float)
TRACE = web.RequestKey("traceparent", str)

_REQUEST_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
# Statuses where a retry cannot help: the official client then skips its automatic retries.
_NO_RETRY = {400, 401, 402, 403, 404, 409, 413, 422}


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


async def read_json_object(request: web.Request, max_bytes: int) -> dict[str, Any]:
    """The request body as a JSON object: 413 when too large, 400 when not a JSON object."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ArbstrError(413, f"request body is {request.content_length} bytes; the limit is {max_bytes}",
                          code="request_too_large")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ArbstrError(413, f"request body exceeds the limit of {max_bytes} bytes",
                          code="request_too_large") from None
    except RequestPayloadError as e:  # e.g. a Content-Encoding the body is not in
        raise ArbstrError(400, f"request body could not be read: {e.args[0] if e.args else 'bad payload'}",
                          code="invalid_body") from None
    if len(raw) > max_bytes:
        raise ArbstrError(413, f"request body exceeds the limit of {max_bytes} bytes", code="request_too_large")
    if not raw:
        raise ArbstrError(400, "request body is empty; expected a JSON object", code="invalid_json")
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise ArbstrError(400, f"request body is not valid JSON: {e.msg} at position {e.pos}",
                          code="invalid_json") from None
    if not isinstance(data, dict):
        raise ArbstrError(400, "request body must be a JSON object", code="invalid_json")
    return data


def bearer_token(request: web.Request) -> Optional[str]:
    auth = request.headers.get("Authorization", "")
    if auth[:7].lower() == "bearer ":
        token = auth[7:].strip()
        return token or None
    return None
