"""The client's side of a relayed event stream. Once the client is gone, writes stop but the relay keeps reading
the upstream: the request is billed for what the upstream produced."""

from __future__ import annotations

import aiohttp
from aiohttp import web

CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError, ConnectionError)


class ClientStream:
    def __init__(self, response: web.StreamResponse) -> None:
        self.response = response
        self.alive = True

    @classmethod
    async def open(cls, request: web.Request, headers: dict[str, str], overhead_ms: float) -> "ClientStream":
        headers = {**headers, "Cache-Control": "no-cache", "x-arbstr-overhead-ms": f"{overhead_ms:.3f}"}
        out = web.StreamResponse(status=200, headers=headers)
        out.content_type = "text/event-stream"
        stream = cls(out)
        try:
            await out.prepare(request)
        except CLIENT_GONE:
            stream.alive = False
        return stream

    async def send(self, frame: bytes) -> None:
        if self.alive:
            try:
                await self.response.write(frame)
            except CLIENT_GONE:
                self.alive = False

    async def close(self) -> web.StreamResponse:
        if self.alive:
            try:
                await self.response.write_eof()
            except CLIENT_GONE:
                pass
        return self.response


