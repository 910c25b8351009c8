"""Spend events for other tools over HTTP: ``GET /v1/spend/events`` as Server-Sent Events, and the events'
JSON Schemas under ``GET /v1/schemas/{name}.json``.

The SSE ``id`` of each event is its ``ARBSTR_EVENTS`` stream sequence, so a client that reconnects with
``Last-Event-ID`` resumes right after the last event it saw. The admin token sees every agent; an agent token
sees only its own events, for as long as the token is valid: a rotation ends the streams opened with the old one
(the vault's revocation notice, and a periodic re-check for a notice core NATS dropped).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from aiohttp import web
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy

from schemas import exchanges, subjects
from schemas.errors import ArbstrError
from schemas.vault import TokenRef, TokenRevoked

from .bus import Bus
from .client_stream import StallGuard
from .headers import header
from .http import REQUEST_ID, bearer_token
from .query import epoch_ms, event_sequence
from .vault_meter import missing_token, token_hash

log = logging.getLogger("arbstr.gateway.events")

SCHEMA_DIR = Path(__file__).resolve().parent.parent / "schemas" / "jsonschema"
KEEPALIVE_S = 15.0
SCHEMA_NAME = re.compile(r"[a-z0-9_]{1,64}")
# How often an agent's open stream asks the vault whether its token still holds: the backstop for a revocation
# notice lost on the way (core NATS delivers at most once). The notice itself ends streams within milliseconds.
RECHECK_S = 30.0


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
        self._open: dict[str, set[asyncio.Event]] = {}  # token hash -> its open streams' "revoked" flags
        self._revocations: Any = None

    def attach(self, app: web.Application) -> dict[str, Any]:
        """Listen for token revocations while ``app`` runs; the handlers the route table names."""
        app.on_startup.append(self._listen)
        app.on_cleanup.append(self._stop_listening)
        return {"spend.events": self.stream, "schema": self.schema}

    async def _listen(self, app: web.Application) -> None:
        async def on_notice(msg: Any) -> None:
            try:
                notice = TokenRevoked.model_validate_json(msg.data)
            except ValueError:
                log.warning("undecodable token revocation ignored")
                return
            self.revoke(notice.token_hash)

        self._revocations = await self.nc.subscribe(subjects.TOKEN_REVOKED, cb=on_notice)

    async def _stop_listening(self, app: web.Application) -> None:
        if self._revocations is not None:
            try:
                await self._revocations.unsubscribe()
            except Exception:
                pass

    def revoke(self, token_hash: str) -> None:
        """End every open stream of ``token_hash`` on this gateway."""
        for flag in self._open.get(token_hash, ()):
            flag.set()

    async def _subject(self, request: web.Request, th: str) -> tuple[str, bool]:
        """The subject to follow, and whether the token is an agent's (whose validity is then watched)."""
        if self.admin_hash is not None and hmac.compare_digest(th, self.admin_hash):
            agent = request.query.get("agent")
            if agent and not subjects.TOKEN_RE.match(agent):
                raise ArbstrError(400, "agent is not a valid agent id", param="agent", code="invalid_value")
            return (subjects.spend(agent) if agent else subjects.SPEND_ALL), False
        me = await self.bus.ask(exchanges.AGENT_ME, TokenRef(token_hash=th), request_id=request[REQUEST_ID])
        return subjects.spend(me.agent_id), True  # an agent sees its own events, whatever it asks for

    async def _still_valid(self, request: web.Request, th: str) -> bool:
        """False only when the vault says the token opens nothing (401); an unreachable vault keeps the stream."""
        try:
            await self.bus.ask(exchanges.AGENT_ME, TokenRef(token_hash=th), request_id=request[REQUEST_ID])
        except ArbstrError as e:
            return e.status != 401
        return True

    async def stream(self, request: web.Request) -> web.StreamResponse:
        token = bearer_token(request)
        if token is None:
            raise missing_token()
        th = token_hash(token)
        revoked = asyncio.Event()
        # Listening before the token is checked: a rotation landing between the check and the first event
        # still ends this stream.
        self._open.setdefault(th, set()).add(revoked)
        try:
            subject, watched = await self._subject(request, th)
            return await self._serve(request, subject, th if watched else None, revoked)
        finally:
            flags = self._open.get(th)
            if flags is not None:
                flags.discard(revoked)
                if not flags:
                    del self._open[th]

    async def _serve(self, request: web.Request, subject: str, watched: Optional[str],
                     revoked: asyncio.Event) -> web.StreamResponse:
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
            checked = time.monotonic()
            while True:
                if watched is not None and not revoked.is_set() and time.monotonic() - checked >= RECHECK_S:
                    checked = time.monotonic()
                    if not await self._still_valid(request, watched):
                        revoked.set()
                if revoked.is_set():
                    # The token this stream was opened with no longer opens anything: say so, then end.
                    err = ArbstrError(401, "the token of this stream was revoked (rotated); reconnect with the "
                                           "new one", code="token_revoked")
                    await resp.write(b"event: error\ndata: " + err.body().model_dump_json().encode() + b"\n\n")
                    break
                try:
                    # Wake every second: a client that went away (or a revoked token) is noticed without
                    # waiting for a write.
                    msg = await asyncio.wait_for(queue.get(), 1.0)
                except asyncio.TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        break
                    quiet_s += 1.0
                    if quiet_s >= KEEPALIVE_S:
                        quiet_s = 0.0
                        await send(b": keepalive\n\n")
                    continue
                if revoked.is_set():
                    continue  # not sent: the loop's top ends the stream
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
