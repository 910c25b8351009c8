"""A real OpenAI-compatible HTTP server that stands in for LLM providers in tests, benchmarks and the demo.

One process serves any number of providers by path prefix: ``/<provider>/v1/...`` (plain ``/v1/...`` is the
provider ``default``); a provider exists as soon as it is named. Replies are deterministic so tests can
predict them exactly:

* reply text echoes the prompt: the ASCII letters and digits of the last user text, cycled, cut into
  tokens of three characters plus a space (``"Hel "``, ``"low "``...). Every token is four ASCII
  characters, so ``schemas.tokens.estimate_text_tokens(reply) == completion_tokens`` — a gateway that has
  to count tokens itself (usage omitted) gets the same number as the usage block would have said;
* output tokens = min(``max_completion_tokens`` / ``max_tokens`` / ``max_output_tokens``, the
  ``x-mock-output-tokens`` header or the server default) per output; one token per stream chunk. As a real
  upstream: chat makes ``n`` outputs, completions ``max(n, best_of)`` per prompt (``n`` of them come back), and
  every output made is billed;
* prompt tokens = ``estimate_messages_tokens`` over the chat messages (Responses: over the input turned
  into messages, see :func:`responses_messages`); completions and embeddings: ``estimate_text_tokens``
  of each prompt string (a token-id array counts its length).

Faults are scripted per provider through ``/_mock/<provider>/faults`` (see :func:`parse_fault`) or for one
request through the ``x-mock-fault`` header; ``/_mock/<provider>/stats`` reports what was received and
what was produced, for billing tests.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import re
import socket
import struct
import sys
import time
from collections import deque
from http import HTTPStatus
from dataclasses import asdict, dataclass, fields
from typing import Any, Awaitable, Callable, Iterable, Mapping, Optional, Sequence

import orjson
from aiohttp import web

from schemas.errors import ERROR_TYPES
from schemas.tokens import content_text, estimate_messages_tokens, estimate_text_tokens, responses_messages

DEFAULT_PROVIDER = "default"
DEFAULT_OUTPUT_TOKENS = 16
DEFAULT_MODELS: tuple[str, ...] = ("mock-small", "mock-medium", "mock-large", "mock-embed")
DEFAULT_EMBEDDING_DIMENSIONS = 8
DEFAULT_HISTORY = 100
MAX_EMBEDDING_DIMENSIONS = 8192
ERROR_SHAPES = ("openai", "plain", "html", "detail", "empty")
AUTH_PREFIX_CHARS = 16
# Headers whose values are secrets (bearer keys, Cashu tokens): only a fingerprint is ever recorded.
SECRET_HEADERS = frozenset({"authorization", "proxy-authorization", "x-api-key", "api-key", "x-cashu", "cookie"})

_NON_ALNUM = re.compile(r"[^A-Za-z0-9]+")
_FILLER = "tok"
_FINGERPRINT = "fp_mock"
_DONE = b"data: [DONE]\n\n"
_JSON_HEADERS = {"Content-Type": "application/json"}
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


# ---------------------------------------------------------------------------------------------- faults


class FaultError(ValueError):
    """A fault description that cannot be applied (unknown key, wrong type, out of range)."""


@dataclass(frozen=True, slots=True)
class Fault:
    """What to break in the next request(s) of one provider. Every field is optional; they combine.

    ``count`` is how many requests the fault applies to (``None``: until cleared). ``delay_ms`` waits
    before anything is sent (then a ``status`` or ``drop_connection`` still applies). ``status`` answers
    that HTTP status with a body of ``error_shape``; ``retry_after`` / ``retry_after_ms`` /
    ``should_retry`` add the matching headers. ``chunk_delay_ms`` spaces stream chunks;
    ``cut_after_chunks`` closes the connection after that many content chunks (non-streamed: after half
    the body). ``omit_usage`` leaves usage out; ``usage_on_content_chunk`` puts chat-stream usage on the
    finish chunk (the last one that still has ``choices``) instead of a separate ``choices: []`` chunk.
    ``redirect_to`` answers ``redirect_status`` (307 unless set) with that ``Location`` (an abusive provider
    pointing its caller elsewhere, e.g. at a loopback service).
    """

    status: Optional[int] = None
    count: Optional[int] = None
    error_shape: str = "openai"
    message: Optional[str] = None
    code: Optional[str] = None
    retry_after: Optional[float] = None
    retry_after_ms: Optional[int] = None
    should_retry: Optional[bool] = None
    delay_ms: Optional[int] = None
    chunk_delay_ms: Optional[int] = None
    cut_after_chunks: Optional[int] = None
    omit_usage: bool = False
    usage_on_content_chunk: bool = False
    drop_connection: bool = False
    redirect_to: Optional[str] = None
    redirect_status: int = 307

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


_FAULT_FIELDS = frozenset(f.name for f in fields(Fault))


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _opt_int(obj: Mapping[str, Any], key: str, low: int, high: int) -> Optional[int]:
    value = obj.get(key)
    if value is None:
        return None
    if not _is_int(value) or not low <= value <= high:
        raise FaultError(f"{key} must be an integer in [{low}, {high}] or null")
    return int(value)


def _opt_bool(obj: Mapping[str, Any], key: str) -> Optional[bool]:
    value = obj.get(key)
    if value is None or isinstance(value, bool):
        return value
    raise FaultError(f"{key} must be a boolean")


def _opt_str(obj: Mapping[str, Any], key: str) -> Optional[str]:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise FaultError(f"{key} must be a string")


def parse_fault(obj: Any) -> Fault:
    """Validate a fault description (a JSON object); unknown keys are refused so typos do not pass silently."""
    if not isinstance(obj, dict):
        raise FaultError("a fault must be a JSON object")
    unknown = sorted(set(obj) - _FAULT_FIELDS)
    if unknown:
        raise FaultError(f"unknown fault keys: {', '.join(unknown)}")
    retry_after = obj.get("retry_after")
    if retry_after is not None and (isinstance(retry_after, bool) or not isinstance(retry_after, (int, float))
                                    or retry_after < 0):
        raise FaultError("retry_after must be a non-negative number of seconds")
    shape = obj.get("error_shape", "openai")
    if shape not in ERROR_SHAPES:
        raise FaultError(f"error_shape must be one of {', '.join(ERROR_SHAPES)}")
    day_ms = 86_400_000
    return Fault(
        status=_opt_int(obj, "status", 400, 599),
        count=_opt_int(obj, "count", 1, 1 << 62),
        error_shape=shape,
        message=_opt_str(obj, "message"),
        code=_opt_str(obj, "code"),
        retry_after=retry_after,
        retry_after_ms=_opt_int(obj, "retry_after_ms", 0, day_ms),
        should_retry=_opt_bool(obj, "should_retry"),
        delay_ms=_opt_int(obj, "delay_ms", 0, day_ms),
        chunk_delay_ms=_opt_int(obj, "chunk_delay_ms", 0, day_ms),
        cut_after_chunks=_opt_int(obj, "cut_after_chunks", 0, 1 << 31),
        omit_usage=bool(_opt_bool(obj, "omit_usage")),
        usage_on_content_chunk=bool(_opt_bool(obj, "usage_on_content_chunk")),
        drop_connection=bool(_opt_bool(obj, "drop_connection")),
        redirect_to=_opt_str(obj, "redirect_to"),
        redirect_status=_redirect_status(obj),
    )


def _redirect_status(obj: Mapping[str, Any]) -> int:
    value = obj.get("redirect_status", 307)
    if value not in (301, 302, 303, 307, 308) or isinstance(value, bool):
        raise FaultError("redirect_status must be one of 301, 302, 303, 307, 308")
    return int(value)


def parse_fault_script(obj: Any) -> list[Fault]:
    """One fault object, or a list of them applied in order (each for its ``count`` requests)."""
    items = obj if isinstance(obj, list) else [obj]
    script = [parse_fault(item) for item in items]
    for fault in script[:-1]:
        if fault.count is None:
            raise FaultError("only the last fault of a script may have count null (it never ends)")
    return script


class _Armed:
    __slots__ = ("fault", "remaining")

    def __init__(self, fault: Fault) -> None:
        self.fault = fault
        self.remaining = fault.count


# ------------------------------------------------------------------------------------- pure helpers


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
        if all(_is_int(v) for v in value):
            return [value]
        if all(isinstance(v, str) or (isinstance(v, list) and all(_is_int(t) for t in v)) for v in value):
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
        if not _is_int(value) or value < 1:
            raise InvalidRequest(f"'{key}' must be a positive integer", key)
        limit = value if limit is None else min(limit, value)
    return limit


def output_count(body: Mapping[str, Any], key: str) -> int:
    """``n`` / ``best_of``: how many outputs to make (1 when absent)."""
    value = body.get(key)
    if value is None:
        return 1
    if not _is_int(value) or not 1 <= value <= 128:
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


# ----------------------------------------------------------------------------------- provider state


class ProviderState:
    """Faults and counters of one provider name. Plain attributes: touched on every request."""

    def __init__(self, name: str, history: int) -> None:
        self.name = name
        self.history = history
        self.faults: deque[_Armed] = deque()
        self.reset_stats()

    def reset_stats(self) -> None:
        self.requests = 0
        self.completed = 0
        self.streamed = 0
        self.errors = 0
        self.dropped = 0
        self.cut = 0
        self.disconnects = 0
        self.bytes_in = 0
        self.bytes_out = 0
        self.statuses: dict[int, int] = {}
        self.endpoints: dict[str, int] = {}
        self.recent_requests: deque[dict[str, Any]] = deque(maxlen=self.history)
        self.produced: deque[dict[str, Any]] = deque(maxlen=self.history)
        self.last_headers: Optional[dict[str, str]] = None
        self.last_auth: dict[str, Any] = {"present": False, "sha256_prefix": None}

    def set_faults(self, script: Sequence[Fault]) -> None:
        self.faults = deque(_Armed(f) for f in script)

    def clear_faults(self) -> None:
        self.faults.clear()

    def take_fault(self) -> Optional[Fault]:
        """The fault for the request now arriving; counts one use of it."""
        queue = self.faults
        if not queue:
            return None
        armed = queue[0]
        if armed.remaining is not None:
            armed.remaining -= 1
            if armed.remaining <= 0:
                queue.popleft()
        return armed.fault

    def faults_json(self) -> list[dict[str, Any]]:
        return [{**a.fault.to_json(), "remaining": a.remaining} for a in self.faults]

    def snapshot(self) -> dict[str, Any]:
        return {
            "provider": self.name,
            "requests": self.requests,
            "completed": self.completed,
            "streamed": self.streamed,
            "errors": self.errors,
            "dropped": self.dropped,
            "cut": self.cut,
            "disconnects": self.disconnects,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "endpoints": dict(self.endpoints),
            "faults": self.faults_json(),
            "recent_requests": list(self.recent_requests),
            "last_headers": self.last_headers,
            "last_auth": self.last_auth,
            "produced": list(self.produced),
        }


class _Call:
    """One API request in flight: where to count it and what it is allowed to break."""

    __slots__ = ("state", "endpoint", "request_id", "reply_id", "fault", "output_override")

    def __init__(self, state: ProviderState, endpoint: str, request_id: Optional[str], reply_id: str,
                 fault: Optional[Fault], output_override: Optional[int]) -> None:
        self.state = state
        self.endpoint = endpoint
        self.request_id = request_id
        self.reply_id = reply_id
        self.fault = fault
        self.output_override = output_override


_Handler = Callable[[web.Request, _Call, dict[str, Any]], Awaitable[web.StreamResponse]]


# --------------------------------------------------------------------------------------- the server


class MockUpstream:
    """The application state and handlers; :meth:`build_app` wires them into an aiohttp app."""

    def __init__(
        self,
        *,
        latency_ms: int = 0,
        chunk_delay_ms: int = 0,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        models: Sequence[str] = DEFAULT_MODELS,
        embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS,
        history: int = DEFAULT_HISTORY,
    ) -> None:
        if latency_ms < 0 or chunk_delay_ms < 0 or default_output_tokens < 0:
            raise ValueError("latency_ms, chunk_delay_ms and default_output_tokens must be >= 0")
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.default_output_tokens = default_output_tokens
        self.models = tuple(models)
        self.embedding_dimensions = embedding_dimensions
        self.history = history
        self.providers: dict[str, ProviderState] = {}
        self._ids = itertools.count(1)
        self._models_body: dict[str, bytes] = {}

    # -- state ---------------------------------------------------------------------------------------

    def provider(self, name: str) -> ProviderState:
        state = self.providers.get(name)
        if state is None:
            state = self.providers[name] = ProviderState(name, self.history)
        return state

    def set_faults(self, provider: str, faults: Fault | Sequence[Fault]) -> None:
        self.provider(provider).set_faults([faults] if isinstance(faults, Fault) else list(faults))

    def clear_faults(self, provider: str) -> None:
        self.provider(provider).clear_faults()

    def stats(self, provider: str) -> dict[str, Any]:
        return self.provider(provider).snapshot()

    def reset(self) -> None:
        self.providers.clear()

    # -- app -----------------------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app[MOCK_UPSTREAM_KEY] = self
        r = app.router
        r.add_get("/_mock/stats", self._all_stats)
        r.add_post("/_mock/reset", self._reset)
        r.add_get("/_mock/{provider}/faults", self._get_faults)
        r.add_post("/_mock/{provider}/faults", self._set_faults)
        r.add_delete("/_mock/{provider}/faults", self._clear_faults)
        r.add_get("/_mock/{provider}/stats", self._get_stats)
        r.add_delete("/_mock/{provider}/stats", self._reset_stats)
        api: list[tuple[str, str, str, _Handler]] = [
            ("POST", "/v1/chat/completions", "chat.completions", self._chat),
            ("POST", "/v1/completions", "completions", self._completions),
            ("POST", "/v1/embeddings", "embeddings", self._embeddings),
            ("POST", "/v1/responses", "responses", self._responses),
            ("GET", "/v1/models", "models", self._models),
        ]
        for method, path, endpoint, handler in api:
            route = self._api(endpoint, handler)
            r.add_route(method, path, route)
            r.add_route(method, "/{provider}" + path, route)
        return app

    # -- admin ---------------------------------------------------------------------------------------

    async def _all_stats(self, request: web.Request) -> web.Response:
        return _json({name: s.snapshot() for name, s in sorted(self.providers.items())})

    async def _reset(self, request: web.Request) -> web.Response:
        self.reset()
        return _json({"ok": True})

    async def _get_faults(self, request: web.Request) -> web.Response:
        return _json({"faults": self.provider(request.match_info["provider"]).faults_json()})

    async def _set_faults(self, request: web.Request) -> web.Response:
        state = self.provider(request.match_info["provider"])
        try:
            script = parse_fault_script(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, FaultError) as exc:
            return _json(_error_json(str(exc), "invalid_fault"), status=400)
        state.set_faults(script)
        return _json({"faults": state.faults_json()})

    async def _clear_faults(self, request: web.Request) -> web.Response:
        self.provider(request.match_info["provider"]).clear_faults()
        return _json({"faults": []})

    async def _get_stats(self, request: web.Request) -> web.Response:
        return _json(self.provider(request.match_info["provider"]).snapshot())

    async def _reset_stats(self, request: web.Request) -> web.Response:
        state = self.provider(request.match_info["provider"])
        state.reset_stats()
        return _json(state.snapshot())

    # -- the API frame: bookkeeping, faults, validation --------------------------------------------

    def _api(self, endpoint: str, handler: _Handler) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def route(request: web.Request) -> web.StreamResponse:
            return await self._serve_api(request, endpoint, handler)

        return route

    async def _serve_api(self, request: web.Request, endpoint: str, handler: _Handler) -> web.StreamResponse:
        state = self.provider(request.match_info.get("provider", DEFAULT_PROVIDER))
        raw = await request.read()
        state.requests += 1
        state.bytes_in += len(raw)
        state.endpoints[endpoint] = state.endpoints.get(endpoint, 0) + 1
        headers = request.headers
        state.last_headers = redact_headers(headers)
        auth = state.last_headers.get("authorization")
        auth_print = auth.removeprefix("sha256:") if auth is not None else None
        state.last_auth = {"present": auth is not None, "sha256_prefix": auth_print}
        request_id = headers.get("x-request-id")
        call = _Call(state, endpoint, request_id, request_id or f"req_mock{next(self._ids)}", None, None)

        body: Any = {}
        bad_json = False
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                bad_json = True
        if not isinstance(body, dict):
            bad_json, body = True, {}
        state.recent_requests.append({
            "endpoint": endpoint,
            "request_id": request_id,
            "model": body.get("model"),
            "max_tokens": body.get("max_tokens"),
            "max_completion_tokens": body.get("max_completion_tokens"),
            "max_output_tokens": body.get("max_output_tokens"),
            "stream": body.get("stream"),
            "stream_options": body.get("stream_options"),
            "keys": sorted(body),
            "auth": auth_print,
        })

        header_fault = headers.get("x-mock-fault")
        try:
            # A per-request fault replaces the provider's script for this request and leaves its count alone.
            call.fault = parse_fault(orjson.loads(header_fault)) if header_fault else state.take_fault()
            override = headers.get("x-mock-output-tokens")
            if override is not None:
                if not (override.isascii() and override.strip().isdigit()):
                    raise InvalidRequest("x-mock-output-tokens must be a non-negative integer")
                call.output_override = int(override)
        except (orjson.JSONDecodeError, FaultError) as exc:
            return await self._send_error(request, call, 400, "openai", f"bad x-mock-fault: {exc}", "invalid_fault")
        except InvalidRequest as exc:
            return await self._send_error(request, call, 400, "openai", exc.message, "invalid_request")

        fault = call.fault
        delay_ms = fault.delay_ms if fault is not None and fault.delay_ms is not None else self.latency_ms
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if fault is not None:
            if fault.drop_connection:
                state.dropped += 1
                _close(request)
                return web.Response(status=500)  # never reaches the peer: the connection is gone
            if fault.redirect_to is not None:
                state.statuses[fault.redirect_status] = state.statuses.get(fault.redirect_status, 0) + 1
                return web.json_response({"redirect": fault.redirect_to}, status=fault.redirect_status,
                                         headers=self._headers(call, {"Location": fault.redirect_to}))
            if fault.status is not None:
                message = fault.message or f"mock upstream fault: HTTP {fault.status} from {state.name}"
                return await self._send_error(request, call, fault.status, fault.error_shape, message,
                                              fault.code or "mock_fault")
        if bad_json:
            return await self._send_error(request, call, 400, "openai",
                                          "the request body must be a JSON object", "invalid_json")
        if endpoint != "models":
            model = body.get("model")
            if not isinstance(model, str) or not model:
                return await self._send_error(request, call, 400, "openai",
                                              "you must provide a model parameter", "invalid_request", "model")
        try:
            return await handler(request, call, body)
        except InvalidRequest as exc:
            return await self._send_error(request, call, 400, "openai", exc.message, "invalid_request", exc.param)

    def _target_tokens(self, call: _Call) -> int:
        return call.output_override if call.output_override is not None else self.default_output_tokens

    def _chunk_delay_s(self, call: _Call) -> float:
        fault = call.fault
        ms = fault.chunk_delay_ms if fault is not None and fault.chunk_delay_ms is not None else self.chunk_delay_ms
        return ms / 1000

    def _headers(self, call: _Call, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, "x-request-id": call.reply_id, "x-mock-provider": call.state.name}

    # -- sending -------------------------------------------------------------------------------------

    async def _send_error(self, request: web.Request, call: _Call, status: int, shape: str, message: str,
                          code: Optional[str], param: Optional[str] = None) -> web.StreamResponse:
        state = call.state
        state.errors += 1
        state.statuses[status] = state.statuses.get(status, 0) + 1
        if shape == "openai" and param is not None:
            body = orjson.dumps({"error": {"message": message, "type": ERROR_TYPES.get(status, "invalid_request_error"),
                                           "param": param, "code": code}})
            content_type: Optional[str] = "application/json"
        else:
            body, content_type = error_body(status, shape, message, code)
        headers = self._headers(call, {})
        if content_type:
            headers["Content-Type"] = content_type
        fault = call.fault
        if fault is not None:
            if fault.retry_after is not None:
                ra = fault.retry_after
                headers["retry-after"] = str(int(ra)) if float(ra).is_integer() else str(ra)
            if fault.retry_after_ms is not None:
                headers["retry-after-ms"] = str(fault.retry_after_ms)
            if fault.should_retry is not None:
                headers["x-should-retry"] = "true" if fault.should_retry else "false"
        resp = web.Response(status=status, body=body, headers=headers)
        try:
            await resp.prepare(request)
            await resp.write_eof()
            state.bytes_out += len(body)
        except ConnectionError:
            state.disconnects += 1
        return resp

    async def _send_json(self, request: web.Request, call: _Call, payload: bytes, prompt_tokens: int,
                         completion_tokens: int, *, record: bool = True) -> web.StreamResponse:
        """A whole JSON reply; with ``cut_after_chunks`` only half of it, then the connection closes."""
        state = call.state
        state.statuses[200] = state.statuses.get(200, 0) + 1
        fault = call.fault
        if fault is not None and fault.cut_after_chunks is not None:
            resp = web.StreamResponse(status=200, headers=self._headers(call, _JSON_HEADERS))
            resp.content_length = len(payload)
            half = payload[: len(payload) // 2]
            try:
                await resp.prepare(request)
                await resp.write(half)
                state.bytes_out += len(half)
            except ConnectionError:
                pass
            _close(request)
            state.cut += 1
            if record:
                self._produced(call, prompt_tokens, 0, streamed=False, cut_reason="fault")
            return resp
        resp = web.Response(status=200, body=payload, headers=self._headers(call, _JSON_HEADERS))
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            state.disconnects += 1
            if record:
                self._produced(call, prompt_tokens, 0, streamed=False, cut_reason="client_disconnect")
            return resp
        state.bytes_out += len(payload)
        state.completed += 1
        if record:
            self._produced(call, prompt_tokens, completion_tokens, streamed=False, cut_reason=None)
        return resp

    async def _send_stream(self, request: web.Request, call: _Call, prompt_tokens: int, head: list[bytes],
                           content: list[bytes], tail: list[bytes]) -> web.StreamResponse:
        """SSE frames: ``head``, then one content frame per token (paced, maybe cut), then ``tail``.

        Unpaced and uncut, the frames leave in one write: the benchmarks compare direct and relayed
        latency, and twenty small writes would make the mock, not the gateway, the thing measured. Set a
        chunk delay to get one write per frame."""
        state = call.state
        state.streamed += 1
        state.statuses[200] = state.statuses.get(200, 0) + 1
        fault = call.fault
        cut_after = fault.cut_after_chunks if fault is not None else None
        delay_s = self._chunk_delay_s(call)
        resp = web.StreamResponse(status=200, headers=self._headers(call, _SSE_HEADERS))
        sent_tokens = 0
        cut_reason: Optional[str] = None
        try:
            await resp.prepare(request)
            if not delay_s and cut_after is None:
                blob = b"".join(itertools.chain(head, content, tail))
                await resp.write(blob)
                state.bytes_out += len(blob)
                sent_tokens = len(content)
                await resp.write_eof()
                state.completed += 1
                return resp
            for frame in head:
                await resp.write(frame)
                state.bytes_out += len(frame)
            for frame in content:
                if cut_after is not None and sent_tokens >= cut_after:
                    break
                if delay_s and sent_tokens:
                    await asyncio.sleep(delay_s)
                await resp.write(frame)
                state.bytes_out += len(frame)
                sent_tokens += 1
            if cut_after is not None:
                cut_reason = "fault"
                state.cut += 1
                _close(request)
                return resp
            for frame in tail:
                await resp.write(frame)
                state.bytes_out += len(frame)
            await resp.write_eof()
            state.completed += 1
        except ConnectionError:
            cut_reason = "client_disconnect"
            state.disconnects += 1
        except asyncio.CancelledError:
            cut_reason = "cancelled"
            raise
        finally:
            self._produced(call, prompt_tokens, sent_tokens, streamed=True, cut_reason=cut_reason)
        return resp

    def _produced(self, call: _Call, prompt_tokens: int, sent: int, *, streamed: bool,
                  cut_reason: Optional[str]) -> None:
        call.state.produced.append({
            "request_id": call.request_id,
            "endpoint": call.endpoint,
            "prompt_tokens": prompt_tokens,
            "completion_tokens_sent": sent,
            "streamed": streamed,
            "cut": cut_reason is not None,
            "cut_reason": cut_reason,
        })

    # -- endpoints -----------------------------------------------------------------------------------

    async def _chat(self, request: web.Request, call: _Call, body: dict[str, Any]) -> web.StreamResponse:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise InvalidRequest("'messages' must be a non-empty array", "messages")
        stream = body.get("stream") is True
        n_out, truncated = plan_output(token_limit(body, ("max_completion_tokens", "max_tokens")),
                                       self._target_tokens(call))
        outputs = output_count(body, "n")
        finish_reason = "length" if truncated else "stop"
        prompt_tokens = estimate_messages_tokens(messages)
        tokens = reply_tokens(last_user_text(messages), n_out)
        usage = chat_usage(prompt_tokens, n_out * outputs)
        fault = call.fault
        omit_usage = fault is not None and fault.omit_usage
        model = body["model"]
        cid = f"chatcmpl-mock{next(self._ids)}"
        created = int(time.time())
        if not stream:
            reply: dict[str, Any] = {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "system_fingerprint": _FINGERPRINT,
                "choices": [{"index": i, "message": {"role": "assistant", "content": "".join(tokens),
                                                     "refusal": None, "annotations": []},
                             "logprobs": None, "finish_reason": finish_reason} for i in range(outputs)],
            }
            if not omit_usage:
                reply["usage"] = usage
            return await self._send_json(request, call, orjson.dumps(reply), prompt_tokens, n_out * outputs)

        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True
        on_content = fault is not None and fault.usage_on_content_chunk
        base: dict[str, Any] = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                                "system_fingerprint": _FINGERPRINT}
        if include_usage:
            base["usage"] = None  # as OpenAI: every chunk carries usage null until the usage chunk

        def chunk(delta: dict[str, Any], finish: Optional[str], index: int = 0) -> dict[str, Any]:
            return {**base, "choices": [{"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        head = [sse(chunk({"role": "assistant", "content": "", "refusal": None}, None, i)) for i in range(outputs)]
        content = [sse(chunk({"content": tok}, None, i)) for tok in tokens for i in range(outputs)]
        finals = [chunk({}, finish_reason, i) for i in range(outputs)]
        if on_content and not omit_usage:
            finals[-1]["usage"] = usage
        tail = [sse(final) for final in finals]
        if include_usage and not omit_usage and not on_content:
            tail.append(sse({**base, "choices": [], "usage": usage}))
        tail.append(_DONE)
        return await self._send_stream(request, call, prompt_tokens, head, content, tail)

    async def _completions(self, request: web.Request, call: _Call, body: dict[str, Any]) -> web.StreamResponse:
        prompts = prompt_texts(body.get("prompt"), "prompt")
        stream = body.get("stream") is True
        n_out, truncated = plan_output(token_limit(body, ("max_tokens",)), self._target_tokens(call))
        returned = output_count(body, "n")
        made = max(returned, output_count(body, "best_of"))  # best_of are made and billed; n come back
        finish_reason = "length" if truncated else "stop"
        prompt_tokens = prompt_tokens_of(prompts)
        replies = [reply_tokens(p if isinstance(p, str) else "", n_out) for p in prompts]
        billed = n_out * made * len(prompts)
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": billed, "total_tokens": prompt_tokens + billed}
        # One choice per prompt and output, indexed prompt by prompt as OpenAI does.
        indexed = [(p * returned + j, replies[p]) for p in range(len(prompts)) for j in range(returned)]
        omit_usage = call.fault is not None and call.fault.omit_usage
        base = {"id": f"cmpl-mock{next(self._ids)}", "object": "text_completion", "created": int(time.time()),
                "model": body["model"], "system_fingerprint": _FINGERPRINT}
        if not stream:
            reply: dict[str, Any] = {**base, "choices": [{"text": "".join(toks), "index": i, "logprobs": None,
                                                          "finish_reason": finish_reason} for i, toks in indexed]}
            if not omit_usage:
                reply["usage"] = usage
            return await self._send_json(request, call, orjson.dumps(reply), prompt_tokens, billed)
        options = body.get("stream_options")
        include_usage = isinstance(options, dict) and options.get("include_usage") is True

        def chunk(text: str, finish: Optional[str], index: int = 0) -> bytes:
            return sse({**base, "choices": [{"text": text, "index": index, "logprobs": None,
                                             "finish_reason": finish}]})

        tail = [chunk("", finish_reason, i) for i, _ in indexed]
        if include_usage and not omit_usage:
            tail.append(sse({**base, "choices": [], "usage": usage}))
        tail.append(_DONE)
        content = [chunk(toks[k], None, i) for k in range(n_out) for i, toks in indexed]
        return await self._send_stream(request, call, prompt_tokens, [], content, tail)

    async def _embeddings(self, request: web.Request, call: _Call, body: dict[str, Any]) -> web.StreamResponse:
        items = prompt_texts(body.get("input"), "input")
        encoding = body.get("encoding_format", "float")
        if encoding not in ("float", "base64"):
            raise InvalidRequest("'encoding_format' must be 'float' or 'base64'", "encoding_format")
        dimensions = body.get("dimensions", self.embedding_dimensions)
        if not _is_int(dimensions) or not 1 <= dimensions <= MAX_EMBEDDING_DIMENSIONS:
            raise InvalidRequest(f"'dimensions' must be an integer in [1, {MAX_EMBEDDING_DIMENSIONS}]", "dimensions")
        prompt_tokens = prompt_tokens_of(items)
        reply: dict[str, Any] = {
            "object": "list",
            "data": [{"object": "embedding", "index": i,
                      "embedding": encode_embedding(embedding_vector(item, dimensions), encoding)}
                     for i, item in enumerate(items)],
            "model": body["model"],
        }
        if call.fault is None or not call.fault.omit_usage:
            reply["usage"] = {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens}
        return await self._send_json(request, call, orjson.dumps(reply), prompt_tokens, 0)

    async def _responses(self, request: web.Request, call: _Call, body: dict[str, Any]) -> web.StreamResponse:
        if not isinstance(body.get("input"), (str, list)):
            raise InvalidRequest("'input' must be a string or an array of input items", "input")
        messages = responses_messages(body)
        stream = body.get("stream") is True
        n_out, _ = plan_output(token_limit(body, ("max_output_tokens",)), self._target_tokens(call))
        prompt_tokens = estimate_messages_tokens(messages)
        tokens = reply_tokens(last_user_text(messages), n_out)
        text = "".join(tokens)
        omit_usage = call.fault is not None and call.fault.omit_usage
        usage = None if omit_usage else responses_usage(prompt_tokens, n_out)
        n = next(self._ids)
        rid, item_id = f"resp_mock{n}", f"msg_mock{n}"
        created = int(time.time())
        part = {"type": "output_text", "annotations": [], "logprobs": [], "text": text}
        item = {"id": item_id, "type": "message", "status": "completed", "role": "assistant", "content": [part]}

        def response(status: str, output: list[Any], usage_value: Optional[dict[str, Any]]) -> dict[str, Any]:
            return {
                "id": rid, "object": "response", "created_at": created, "status": status,
                "completed_at": created if status == "completed" else None,
                "error": None, "incomplete_details": None, "instructions": body.get("instructions"),
                "max_output_tokens": body.get("max_output_tokens"), "model": body["model"], "output": output,
                "parallel_tool_calls": True, "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None}, "store": False, "temperature": 1.0,
                "text": {"format": {"type": "text"}}, "tool_choice": "auto", "tools": [], "top_p": 1.0,
                "truncation": "disabled", "usage": usage_value, "user": None, "metadata": {},
            }

        if not stream:
            return await self._send_json(request, call, orjson.dumps(response("completed", [item], usage)),
                                         prompt_tokens, n_out)
        seq = itertools.count()
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        pending = response("in_progress", [], None)
        head = [
            sse_event({"type": "response.created", "sequence_number": next(seq), "response": pending}),
            sse_event({"type": "response.in_progress", "sequence_number": next(seq), "response": pending}),
            sse_event({"type": "response.output_item.added", "sequence_number": next(seq), "output_index": 0,
                       "item": {**item, "status": "in_progress", "content": []}}),
            sse_event({"type": "response.content_part.added", "sequence_number": next(seq), **where,
                       "part": {**part, "text": ""}}),
        ]
        content = [sse_event({"type": "response.output_text.delta", "sequence_number": next(seq), **where,
                              "delta": tok, "logprobs": []}) for tok in tokens]
        tail = [
            sse_event({"type": "response.output_text.done", "sequence_number": next(seq), **where, "text": text,
                       "logprobs": []}),
            sse_event({"type": "response.content_part.done", "sequence_number": next(seq), **where, "part": part}),
            sse_event({"type": "response.output_item.done", "sequence_number": next(seq), "output_index": 0,
                       "item": item}),
            sse_event({"type": "response.completed", "sequence_number": next(seq),
                       "response": response("completed", [item], usage)}),
        ]
        return await self._send_stream(request, call, prompt_tokens, head, content, tail)

    async def _models(self, request: web.Request, call: _Call, body: dict[str, Any]) -> web.StreamResponse:
        name = call.state.name
        payload = self._models_body.get(name)
        if payload is None:
            payload = self._models_body[name] = orjson.dumps({
                "object": "list",
                "data": [{"id": m, "object": "model", "created": 0, "owned_by": name} for m in self.models],
            })
        return await self._send_json(request, call, payload, 0, 0, record=False)


MOCK_UPSTREAM_KEY: web.AppKey[MockUpstream] = web.AppKey("mock_upstream", MockUpstream)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), headers=_JSON_HEADERS)


def _error_json(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def _close(request: web.Request) -> None:
    """Close the connection at once; what was already written is still flushed, nothing more is."""
    transport = request.transport
    if transport is not None:
        transport.close()


# ------------------------------------------------------------------------------------ running it


def build_app(**options: Any) -> web.Application:
    """An aiohttp app serving a fresh :class:`MockUpstream` (options as its constructor); the instance
    is ``app[MOCK_UPSTREAM_KEY]``."""
    return MockUpstream(**options).build_app()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


class MockUpstreamServer:
    """A running mock upstream on a real socket (``port=0`` picks a free one); use as an async context."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, **options: Any) -> None:
        self.host = host
        self.port = port
        self.upstream = MockUpstream(**options)
        self._runner: Optional[web.AppRunner] = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def base_url(self, provider: Optional[str] = None) -> str:
        """What an OpenAI client takes as ``base_url`` for ``provider`` (``None``: the plain ``/v1``)."""
        return f"{self.url}/{provider}/v1" if provider else f"{self.url}/v1"

    async def start(self) -> "MockUpstreamServer":
        sock = _bind(self.host, self.port)
        self.port = sock.getsockname()[1]
        runner = web.AppRunner(self.upstream.build_app(), access_log=None, handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        self._runner = runner
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> "MockUpstreamServer":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(
    host: str = "127.0.0.1",
    port: int = 9100,
    *,
    ready: Optional[Callable[[MockUpstreamServer], None]] = None,
    **options: Any,
) -> None:
    """Serve until cancelled. ``options`` go to :class:`MockUpstream` (``latency_ms``, ``chunk_delay_ms``,
    ``default_output_tokens``, ``models``, ...); ``ready`` is called once the socket listens."""
    server = MockUpstreamServer(host, port, **options)
    await server.start()
    try:
        if ready is not None:
            ready(server)
        await asyncio.Event().wait()
    finally:
        await server.stop()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="arbstr mock-upstream",
                                description="OpenAI-compatible mock providers: /<provider>/v1/...")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=9100)
    p.add_argument("--latency-ms", type=int, default=0, help="wait before every response's headers")
    p.add_argument("--chunk-delay-ms", type=int, default=0, help="wait between streamed tokens")
    p.add_argument("--output-tokens", type=int, default=DEFAULT_OUTPUT_TOKENS,
                   help="tokens per reply when the request sets no lower max_tokens")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="comma-separated ids for GET /v1/models")
    return p


async def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command-line entry: parse ``argv`` and serve until cancelled."""
    args = _parser().parse_args(list(argv) if argv is not None else None)

    def announce(server: MockUpstreamServer) -> None:
        print(f"mock upstream listening on {server.url} (providers at {server.url}/<provider>/v1)", flush=True)

    await serve(args.host, args.port, ready=announce, latency_ms=args.latency_ms,
                chunk_delay_ms=args.chunk_delay_ms, default_output_tokens=args.output_tokens,
                models=[m for m in args.models.split(",") if m])
    return 0


def run(argv: Optional[Sequence[str]] = None) -> int:
    """Blocking entry (uvloop when installed); Ctrl-C stops it quietly."""
    try:
        import uvloop

        loop_factory: Optional[Callable[[], asyncio.AbstractEventLoop]] = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(main(argv))
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(run())
