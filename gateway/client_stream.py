"""The client's side of a relayed response. Once the client is gone, or has left one write pending for longer than
``[server] client_write_timeout_s`` (it stopped reading), writes stop but the relay keeps reading the upstream: the
request is billed for what the upstream produced, and a client that never reads cannot hold a pooled upstream
connection longer than the upstream takes to finish."""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

import aiohttp
from aiohttp import web

log = logging.getLogger("arbstr.gateway")

CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError, ConnectionError)


def cut_off(request: web.BaseRequest, timeout_s: float) -> None:
    """Drop a client that stopped reading. ``abort``, not ``close``: a close waits for the send buffer to drain,
    which is exactly what a stalled reader never lets happen."""
    log.info("a client left a write pending for %.0f s: connection cut", timeout_s)
    transport = request.transport
    if transport is not None:
        transport.abort()


class StallGuard:
    """Watches the writes of one response: a write pending longer than ``timeout_s`` cuts the client off.

    One timer per response, checked a few times per timeout, rather than a timeout per write: a stream writes
    every chunk, and arming and cancelling a timer for each costs more than the write itself."""

    def __init__(self, request: web.BaseRequest, timeout_s: float) -> None:
        self.request = request
        self.timeout_s = timeout_s
        self.cut = False
        self._loop = asyncio.get_running_loop()
        self._since: Optional[float] = None  # when the write now pending began
        self._handle: Optional[asyncio.TimerHandle] = self._loop.call_later(self._period(), self._check)

    def _period(self) -> float:
        return max(0.05, self.timeout_s / 4)

    def _check(self) -> None:
        self._handle = None
        if self.request.transport is None:  # the connection is gone: nothing left to watch
            return
        since = self._since
        if since is not None and self._loop.time() - since >= self.timeout_s:
            self.cut = True
            cut_off(self.request, self.timeout_s)
            return
        self._handle = self._loop.call_later(self._period(), self._check)

    async def write(self, response: web.StreamResponse, data: Optional[bytes]) -> bool:
        """Write ``data`` (None: end the response); False when the client is gone or was cut off."""
        if self.cut:
            return False
        self._since = self._loop.time()
        try:
            if data is None:
                await response.write_eof()
            else:
                await response.write(data)
        except CLIENT_GONE:
            return False
        finally:
            self._since = None
        return not self.cut

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class ClientStream:
    def __init__(self, response: web.StreamResponse, guard: StallGuard) -> None:
        self.response = response
        self.guard = guard
        self.alive = True

    @classmethod
    async def open(cls, request: web.Request, headers: dict[str, str], overhead_ms: float,
                   write_timeout_s: float) -> "ClientStream":
        headers = {**headers, "Cache-Control": "no-cache", "x-arbstr-overhead-ms": f"{overhead_ms:.3f}"}
        out = web.StreamResponse(status=200, headers=headers)
        out.content_type = "text/event-stream"
        stream = cls(out, StallGuard(request, write_timeout_s))
        try:
            await out.prepare(request)  # headers only: into an empty send buffer, never blocks
        except CLIENT_GONE:
            stream.alive = False
        return stream

    async def send(self, frame: bytes) -> None:
        if self.alive:
            self.alive = await self.guard.write(self.response, frame)

    async def close(self) -> web.StreamResponse:
        if self.alive:
            self.alive = await self.guard.write(self.response, None)
        self.guard.stop()
        return self.response
