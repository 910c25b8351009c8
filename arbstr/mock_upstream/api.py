"""The frame every API request goes through: bookkeeping, faults, envelope validation, and sending.

Endpoint modules (``chat``, ``completions``, ``embeddings``, ``responses``, ``models``) only build replies;
how a reply leaves — whole, streamed, paced, cut or dropped — and what is counted about it is decided here.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Awaitable, Callable, Mapping, Optional, Sequence

import orjson
from aiohttp import web

from schemas.errors import ERROR_TYPES

from .faults import FaultError, parse_fault
from .state import Call, ProviderState
from .wire import JSON_HEADERS, SSE_HEADERS, InvalidRequest, error_body, redact_headers

DEFAULT_OUTPUT_TOKENS = 16
DEFAULT_MODELS: tuple[str, ...] = ("mock-small", "mock-medium", "mock-large", "mock-embed")
DEFAULT_EMBEDDING_DIMENSIONS = 8


class ApiFrame:
    """The reply settings shared by every endpoint, and the machinery that sends replies."""

    def __init__(
        self,
        *,
        latency_ms: int = 0,
        chunk_delay_ms: int = 0,
        default_output_tokens: int = DEFAULT_OUTPUT_TOKENS,
        models: Sequence[str] = DEFAULT_MODELS,
        embedding_dimensions: int = DEFAULT_EMBEDDING_DIMENSIONS,
    ) -> None:
        if latency_ms < 0 or chunk_delay_ms < 0 or default_output_tokens < 0:
            raise ValueError("latency_ms, chunk_delay_ms and default_output_tokens must be >= 0")
        self.latency_ms = latency_ms
        self.chunk_delay_ms = chunk_delay_ms
        self.default_output_tokens = default_output_tokens
        self.models = tuple(models)
        self.embedding_dimensions = embedding_dimensions
        # One counter for request and reply ids across every endpoint, so ids never repeat within a run.
        self._ids = itertools.count(1)
        self.models_body: dict[str, bytes] = {}

    def next_id(self) -> int:
        return next(self._ids)

    async def serve(self, request: web.Request, state: ProviderState, endpoint: str,
                    handler: Handler) -> web.StreamResponse:
        """Count the request, apply its fault, validate the envelope, then hand it to the endpoint."""
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
        call = Call(state, endpoint, request_id, request_id or f"req_mock{self.next_id()}", None, None)

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
            return await self.send_error(request, call, 400, "openai", f"bad x-mock-fault: {exc}", "invalid_fault")
        except InvalidRequest as exc:
            return await self.send_error(request, call, 400, "openai", exc.message, "invalid_request")

        fault = call.fault
        delay_ms = fault.delay_ms if fault is not None and fault.delay_ms is not None else self.latency_ms
        if delay_ms:
            await asyncio.sleep(delay_ms / 1000)
        if fault is not None:
            if fault.drop_connection:
                state.dropped += 1
                close_connection(request)
                return web.Response(status=500)  # never reaches the peer: the connection is gone
            if fault.redirect_to is not None:
                state.statuses[fault.redirect_status] = state.statuses.get(fault.redirect_status, 0) + 1
                return web.json_response({"redirect": fault.redirect_to}, status=fault.redirect_status,
                                         headers=self.headers(call, {"Location": fault.redirect_to}))
            if fault.status is not None:
                message = fault.message or f"mock upstream fault: HTTP {fault.status} from {state.name}"
                return await self.send_error(request, call, fault.status, fault.error_shape, message,
                                              fault.code or "mock_fault")
        if bad_json:
            return await self.send_error(request, call, 400, "openai",
                                          "the request body must be a JSON object", "invalid_json")
        if endpoint != "models":
            model = body.get("model")
            if not isinstance(model, str) or not model:
                return await self.send_error(request, call, 400, "openai",
                                              "you must provide a model parameter", "invalid_request", "model")
        try:
            return await handler(self, request, call, body)
        except InvalidRequest as exc:
            return await self.send_error(request, call, 400, "openai", exc.message, "invalid_request", exc.param)

    def target_tokens(self, call: Call) -> int:
        return call.output_override if call.output_override is not None else self.default_output_tokens

    def chunk_delay_s(self, call: Call) -> float:
        fault = call.fault
        ms = fault.chunk_delay_ms if fault is not None and fault.chunk_delay_ms is not None else self.chunk_delay_ms
        return ms / 1000

    def headers(self, call: Call, base: Mapping[str, str]) -> dict[str, str]:
        return {**base, "x-request-id": call.reply_id, "x-mock-provider": call.state.name}

    # -- sending -------------------------------------------------------------------------------------

    async def send_error(self, request: web.Request, call: Call, status: int, shape: str, message: str,
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
        headers = self.headers(call, {})
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

    async def send_json(self, request: web.Request, call: Call, payload: bytes, prompt_tokens: int,
                         completion_tokens: int, *, record: bool = True) -> web.StreamResponse:
        """A whole JSON reply; with ``cut_after_chunks`` only half of it, then the connection closes."""
        state = call.state
        state.statuses[200] = state.statuses.get(200, 0) + 1
        fault = call.fault
        if fault is not None and fault.cut_after_chunks is not None:
            resp = web.StreamResponse(status=200, headers=self.headers(call, JSON_HEADERS))
            resp.content_length = len(payload)
            half = payload[: len(payload) // 2]
            try:
                await resp.prepare(request)
                await resp.write(half)
                state.bytes_out += len(half)
            except ConnectionError:
                pass
            close_connection(request)
            state.cut += 1
            if record:
                self.produced(call, prompt_tokens, 0, streamed=False, cut_reason="fault")
            return resp
        resp = web.Response(status=200, body=payload, headers=self.headers(call, JSON_HEADERS))
        try:
            await resp.prepare(request)
            await resp.write_eof()
        except ConnectionError:
            state.disconnects += 1
            if record:
                self.produced(call, prompt_tokens, 0, streamed=False, cut_reason="client_disconnect")
            return resp
        state.bytes_out += len(payload)
        state.completed += 1
        if record:
            self.produced(call, prompt_tokens, completion_tokens, streamed=False, cut_reason=None)
        return resp

    async def send_stream(self, request: web.Request, call: Call, prompt_tokens: int, head: list[bytes],
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
        delay_s = self.chunk_delay_s(call)
        resp = web.StreamResponse(status=200, headers=self.headers(call, SSE_HEADERS))
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
                close_connection(request)
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
            self.produced(call, prompt_tokens, sent_tokens, streamed=True, cut_reason=cut_reason)
        return resp

    def produced(self, call: Call, prompt_tokens: int, sent: int, *, streamed: bool,
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


# An endpoint: builds the reply for one validated request and sends it through the frame.
Handler = Callable[[ApiFrame, web.Request, Call, dict[str, Any]], Awaitable[web.StreamResponse]]


def close_connection(request: web.Request) -> None:
    """Close the connection at once; what was already written is still flushed, nothing more is."""
    transport = request.transport
    if transport is not None:
        transport.close()
