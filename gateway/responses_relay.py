"""The streamed Responses API relay: typed SSE events passed through frame by frame, billed from the terminal
event's usage (``input_tokens`` / ``output_tokens``), no ``[DONE]`` (the Responses API never sends one)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Optional

import orjson
from aiohttp import web

from schemas.errors import ArbstrError
from schemas.router import Candidate

from .endpoints import RESPONSES
from .client_stream import ClientStream
from .upstream import READ_ERRORS, UpstreamReply, read_failure

if TYPE_CHECKING:  # the proxy imports this module; the relay only calls back into it
    from .proxy import Exchange, Proxy

# Events that end a response; each carries the whole response object, usage included.
TERMINAL_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})


def error_event(err: ArbstrError, sequence_number: int) -> bytes:
    """An ``error`` event the official client raises as ``APIError`` (it looks for a top-level ``error``)."""
    detail = err.body().error
    payload = {"type": "error", "sequence_number": sequence_number, "code": detail.code, "message": detail.message,
               "param": detail.param, "error": detail.model_dump()}
    return b"event: error\ndata: " + orjson.dumps(payload) + b"\n\n"


def _frame_payload(lines: list[bytes]) -> Optional[dict[str, Any]]:
    """The JSON object of one SSE frame's ``data:`` lines (None when there is none or it does not parse)."""
    data = b"\n".join(line[5:].strip() for line in lines if line.startswith(b"data:"))
    if not data:
        return None
    try:
        parsed = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


async def relay_typed_events(proxy: "Proxy", request: web.Request, reply: UpstreamReply, cand: Candidate,
                             ex: "Exchange", extra_headers: dict[str, str], t_open: float) -> web.StreamResponse:
    up = reply.response
    client = await ClientStream.open(request, proxy._headers(cand, ex, extra_headers),
                                      ex.overhead_ms(time.perf_counter()), proxy.config.server.client_write_timeout_s)
    send = client.send

    usage_block: Optional[dict[str, Any]] = None
    pieces: list[str] = []
    delta_events = 0
    last_seq = -1
    terminal = False
    failure: Optional[str] = None
    lines: list[bytes] = []
    try:
        async for raw_line in up.content:
            line = raw_line.rstrip(b"\r\n")
            if line:
                lines.append(line)
                continue
            if not lines:
                continue
            frame, lines = lines, []
            event = _frame_payload(frame)
            if event is not None:
                seq = event.get("sequence_number")
                if isinstance(seq, int):
                    last_seq = seq
                kind = event.get("type")
                if kind == "error":
                    failure = "the upstream reported an error mid-stream"
                    break
                text = ex.spec.delta_text(event)
                if text:
                    pieces.append(text)
                    delta_events += 1
                if kind in TERMINAL_EVENTS:
                    response = event.get("response")
                    if isinstance(response, dict) and isinstance(response.get("usage"), dict):
                        usage_block = response["usage"]
                    terminal = True
            await send(b"\n".join(frame) + b"\n\n")
            if terminal:
                break
        if not terminal and failure is None:
            failure = "the upstream closed the stream early"
    except READ_ERRORS as e:
        failure = read_failure(e)
    finally:
        up.release()
    text = "".join(pieces)
    usage = proxy._usage(cand, ex, usage_block, lambda: text, delta_events)
    await proxy._outcome(cand, ex, "ok" if failure is None else "cut", 200, t_open)
    if failure is not None:
        err = ArbstrError(502, failure, code="upstream_stream_cut")
        await send(error_event(err, last_seq + 1))
    await client.close()
    await proxy._settle(ex, usage)
    return client.response


def has_route(app: web.Application, method: str, path: str) -> bool:
    return any(r.method == method and r.resource is not None and r.resource.canonical == path
               for r in app.router.routes())


def responses_handler(gw: Any) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        return await gw.proxy.handle(request, RESPONSES)
    return handler


def add_responses_routes(app: web.Application, gw: Any) -> None:
    """``POST /v1/responses`` and ``/responses`` through the gateway's proxy (skipped where already routed)."""
    async def handler(request: web.Request) -> web.StreamResponse:
        return await gw.proxy.handle(request, RESPONSES)

    for prefix in ("/v1", ""):
        if not has_route(app, "POST", prefix + RESPONSES.path):
            app.router.add_post(prefix + RESPONSES.path, handler)
