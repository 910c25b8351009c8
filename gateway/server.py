"""The gateway's HTTP connection handling, below the application: what aiohttp answers before any middleware runs.

aiohttp's ``RequestHandler`` answers a request it cannot parse (a header over 8,190 bytes, too many headers, a bad
request line) itself, in plain text that echoes part of the offending bytes, and logs it with a traceback. Here
those answers are OpenAI-shaped error objects that echo nothing. The same handler closes a connection that has not
sent a complete request head within ``[server] header_timeout_s`` (slowloris): without it a client dribbling
header bytes holds a connection until the keep-alive timeout, an hour by aiohttp's default.

The hook is the runner: ``GatewayRunner`` builds the application's server as aiohttp does, then serves it through
``GatewayServer``, whose only change is the protocol class it makes per connection.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

from aiohttp import hdrs, web
from aiohttp.http_exceptions import BadHttpMessage, LineTooLong
from aiohttp.streams import StreamReader
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from schemas.config import ServerConfig
from schemas.errors import ArbstrError

from .http import error_response, new_request_id, too_large

log = logging.getLogger("arbstr.gateway.server")
TOO_MANY_HEADERS = "Too many headers received"  # aiohttp's message, fixed text with nothing of the client's in it


def protocol_error(status: int, exc: Optional[BaseException], max_field_size: int) -> ArbstrError:
    """What a request aiohttp refused before routing gets: never the offending bytes."""
    if isinstance(exc, LineTooLong):
        return ArbstrError(431, f"the request line or a header line is longer than {max_field_size} bytes",
                           code="header_too_large")
    if isinstance(exc, BadHttpMessage) and exc.message == TOO_MANY_HEADERS:
        return ArbstrError(431, "the request has too many headers", code="header_too_large")
    if status == 400:
        return ArbstrError(400, "malformed HTTP request", code="invalid_http_request")
    if status == 504:
        return ArbstrError(504, "the request timed out", code="timeout")
    if status >= 500:
        return ArbstrError(status, "internal error; the request was not billed", code="internal_error")
    return ArbstrError(status, "request refused", code="invalid_http_request")


def _timeout_response(timeout_s: float) -> bytes:
    """A whole 408 response, written straight to the transport: no request object exists to answer through."""
    err = ArbstrError(408, f"no complete request head within {timeout_s:g} s", code="header_timeout")
    body = err.body().model_dump_json().encode()
    return (b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\nx-request-id: %s\r\n\r\n" % (len(body), new_request_id(None).encode()) + body)


class GatewayProtocol(RequestHandler):
    """aiohttp's request handler with JSON error answers and a deadline for each request head."""

    __slots__ = ("_head_timeout_s", "_head_timer", "_last_payload")

    def __init__(self, manager: web.Server, *, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._head_timer: Optional[asyncio.TimerHandle] = None
        self._last_payload: Optional[StreamReader] = None  # the body of the last request head seen

    # --- the head deadline ------------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm()  # a connection exists to send a request: the first head is due from now

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self._disarm()
        self._last_payload = None
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        heads = self._request_count
        body_done = self._last_payload is None or self._last_payload.is_eof()
        super().data_received(data)
        if self._request_count != heads:  # a head was completed (or refused): its deadline is met
            self._disarm()
            if self._messages:
                self._last_payload = self._messages[-1][1]
        elif data and body_done and self._head_timer is None:
            # Bytes after the previous request's body: the next head has started, and has its deadline. (Bytes of
            # a body never arm it: an upload may take as long as it takes.)
            self._arm()

    def _arm(self) -> None:
        if self._head_timeout_s > 0 and self._head_timer is None:
            self._head_timer = self._loop.call_later(self._head_timeout_s, self._head_timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._force_close:
            return
        log.debug("closing a connection that sent no complete request head in %.0f s", self._head_timeout_s)
        transport.write(_timeout_response(self._head_timeout_s))
        self.force_close()

    # --- errors aiohttp answers itself -----------------------------------------------------------------
    def handle_error(self, request: BaseRequest, status: int = 500, exc: Optional[BaseException] = None,
                     message: Optional[str] = None) -> web.StreamResponse:
        if status >= 500:
            self.log_exception("error handling request", exc_info=exc)
        else:  # a client's malformed request: its bytes (maybe a credential) stay out of the logs
            log.debug("refused a malformed request (%s)", type(exc).__name__ if exc else status)
        if request.writer.output_size > 0:  # part of a response went out: the connection is beyond saving
            raise ConnectionError("response already started; cannot send an error response")
        resp = error_response(protocol_error(status, exc, self.max_field_size), new_request_id(None))
        resp.force_close()
        return resp


class GatewayServer(web.Server):
    """aiohttp's low-level server, making a ``GatewayProtocol`` per connection."""

    def __init__(self, *args: Any, head_timeout_s: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.head_timeout_s = head_timeout_s

    def __call__(self) -> RequestHandler:
        return GatewayProtocol(self, loop=self._loop, head_timeout_s=self.head_timeout_s, **self._kwargs)


def expect_checked(handler: Any, max_body_bytes: int) -> Any:
    """The application's request handler behind a check of ``Expect``, which aiohttp answers before any middleware:
    its own answer to anything but ``100-continue`` is a plain-text 417 echoing the header, and a 500 when the
    header's bytes are not UTF-8 (the echo cannot be encoded). Here it is an OpenAI-shaped 417 echoing nothing.
    A ``100-continue`` announcing a body over the limit is answered 413 at once: no client is invited to send a
    body that would only be refused."""

    async def handle(request: BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT)
        err: Optional[ArbstrError] = None
        if expect and expect.lower() != "100-continue":
            err = ArbstrError(417, "the only Expect value served is 100-continue", param="Expect",
                              code="invalid_header")
        elif expect and request.content_length is not None and request.content_length > max_body_bytes:
            err = too_large(max_body_bytes, request.content_length)
        if err is not None:
            resp = error_response(err, new_request_id(None))
            resp.force_close()  # the body the client holds back is never read
            return resp
        return await handler(request)
    return handle


class GatewayRunner(web.AppRunner):
    __slots__ = ("_head_timeout_s", "_max_body_bytes")

    def __init__(self, app: web.Application, *, head_timeout_s: float, max_body_bytes: int, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._head_timeout_s = head_timeout_s
        self._max_body_bytes = max_body_bytes

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()  # the application started and frozen, as aiohttp does it
        handler = expect_checked(base.request_handler, self._max_body_bytes)
        return GatewayServer(handler, request_factory=base.request_factory,
                             handler_cancellation=base.handler_cancellation, loop=asyncio.get_running_loop(),
                             head_timeout_s=self._head_timeout_s, **base._kwargs)


def gateway_runner(app: web.Application, server: ServerConfig) -> GatewayRunner:
    return GatewayRunner(app, access_log=None, handle_signals=False, head_timeout_s=server.header_timeout_s,
                         max_body_bytes=server.max_body_bytes, keepalive_timeout=server.keepalive_timeout_s)

