"""Spend events for other tools over HTTP: ``GET /v1/spend/events`` as Server-Sent Events, and the events'
JSON Schemas under ``GET /v1/schemas/{name}.json``.

The SSE ``id`` of each event is its ``ARBSTR_EVENTS`` stream sequence, so a client that reconnects with
``Last-Event-ID`` resumes right after the last event it saw. The admin token sees every agent; an agent token
sees only its own events.
"""

from __future__ import annotations

import asyncio
import hmac
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from schemas import subjects
from schemas.errors import ArbstrError
from schemas.vault import AccountView, TokenRef

from .bus import Bus
from .client_stream import StallGuard
from .headers import header
from .http import REQUEST_ID, bearer_token
from .query import epoch_ms, event_sequence
from .vault_meter import missing_token, token_hash

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "jsonschema"
KEEPALIVE_S = 15.0
SCHEMA_NAME = re.compile(r"[a-z0-9_]{1,64}")


def _start(request: web.Request) -> tuple[DeliverPolicy, Optional[int], Optional[datetime]]:
    """Where to start: after Last-Event-ID, at ``since``, or with new events only."""
    header_value = header(request, "Last-Event-ID")
    last, param = (header_value, "Last-Event-ID") if header_value else (request.query.get("last_event_id"),
                                                                         "last_event_id")
    if last:
        return DeliverPolicy.BY_START_SEQUENCE, event_sequence(last, param) + 1, None
    since = epoch_ms(request.query.get("since"))
    if since is not None:
        return DeliverPolicy.BY_START_TIME, None, datetime.fromtimestamp(since / 1000, tz=timezone.utc)
    return DeliverPolicy.NEW, None, None


class SpendEventsHTTP:
    def __init__(self, nc: NATS, bus: Bus, admin_hash: Optional[str], write_timeout_s: float = 30.0) -> None:
        self.nc = nc
        self.bus = bus
        self.admin_hash = admin_hash
        self.write_timeout_s = write_timeout_s

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get("/v1/spend/events", self.stream)
        app.router.add_get("/v1/schemas/{name}.json", self.schema)

    async def _subject(self, request: web.Request) -> str:
        token = bearer_token(request)
        if token is None:
            raise missing_token()
        th = token_hash(token)
        if self.admin_hash is not None and hmac.compare_digest(th, self.admin_hash):
            agent = request.query.get("agent")
            if agent and not subjects.TOKEN_RE.match(agent):
                raise ArbstrError(400, "agent is not a valid agent id", param="agent", code="invalid_value")
            return subjects.spend(agent) if agent else subjects.SPEND_ALL
        me = await self.bus.call(subjects.vault_agent("me"), TokenRef(token_hash=th), AccountView,
                                 request_id=request[REQUEST_ID])
        return subjects.spend(me.agent_id)  # an agent sees its own events, whatever it asks for

    async def stream(self, request: web.Request) -> web.StreamResponse:
        subject = await self._subject(request)
        policy, start_seq, start_time = _start(request)
        queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)

        async def on_msg(msg: Any) -> None:
            await queue.put(msg)

        js = self.nc.jetstream()
        config = ConsumerConfig(deliver_policy=policy, opt_start_seq=start_seq, opt_start_time=start_time)
        sub = await js.subscribe(subject, cb=on_msg, ordered_consumer=True, stream=subjects.STREAM_EVENTS,
                                 config=config)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                           "x-request-id": request[REQUEST_ID]})
        await resp.prepare(request)
        guard = StallGuard(request, self.write_timeout_s)  # a client that stops reading is cut off

        async def send(data: bytes) -> None:
            if not await guard.write(resp, data):
                raise ConnectionResetError("client gone or not reading")

        try:
            await send(b": arbstr spend events\n\n")
            quiet_s = 0.0
            while True:
                try:
                    # Wake every second: a client that went away is noticed without waiting for a write.
                    msg = await asyncio.wait_for(queue.get(), 1.0)
                except asyncio.TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    quiet_s += 1.0
                    if quiet_s >= KEEPALIVE_S:
                        quiet_s = 0.0
                        await send(b": keepalive\n\n")
                    continue
                quiet_s = 0.0
                seq = msg.metadata.sequence.stream
                await send(b"id: %d\nevent: spend\ndata: " % seq + msg.data + b"\n\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            guard.stop()
            await sub.unsubscribe()
        return resp

    async def schema(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        # The name is checked before it touches the file system (a 5,000-character name is an OSError there).
        if not SCHEMA_NAME.fullmatch(name) or not (SCHEMA_DIR / f"{name}.json").is_file():
            raise ArbstrError(404, f"no schema named {name[:64]}", code="not_found")
        path = SCHEMA_DIR / f"{name}.json"
        return web.Response(body=path.read_bytes(), content_type="application/schema+json")
