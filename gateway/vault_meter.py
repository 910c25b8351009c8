"""Paid mode: every request is reserved against the caller's sub-account and settled through the
ARBSTR_SETTLE work queue (durable from the JetStream ack, off the latency path)."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import secrets
import time
from typing import Optional

from nats.aio.client import Client as NATS

from actors.runtime.tokens import token_hash
from schemas import exchanges, subjects
from schemas.errors import ArbstrError
from schemas.router import RouteReply
from schemas.trace import TRACEPARENT
from schemas.requests import RequestRecord
from schemas.vault import ExtendRequest, ReserveRequest, SettleCommand, TokenRef

from .agents import AgentDirectory
from .bus import Bus
from .meter import Hold, Usage

log = logging.getLogger("arbstr.gateway.meter")

ANONYMOUS = "anon"  # subject token of a release whose agent the gateway never learnt
OWNER_WAIT_S = 4.0  # a partition changing owner has nobody listening for up to ~3 s
RELEASE_WAIT_S = 2.0  # a release on a failure path waits this long for the owner before queueing instead


def missing_token() -> ArbstrError:
    return ArbstrError(401, "missing bearer token: send 'Authorization: Bearer <agent token>'",
                       code="missing_api_key")


async def require_admin(token: Optional[str], admin_hash: Optional[str], bus: Bus, request_id: str) -> None:
    """The admin token (hashes compared in constant time); a valid agent token is told it is not allowed (403),
    anything else that it is not authenticated (401)."""
    if token is None:
        raise missing_token()
    if admin_hash is None:
        raise ArbstrError(403, "no admin token is configured ([vault] admin_token or ARBSTR_ADMIN_TOKEN)",
                          code="admin_disabled")
    if hmac.compare_digest(token_hash(token), admin_hash):
        return
    try:
        await bus.ask(exchanges.AGENT_ME, TokenRef(token_hash=token_hash(token)), request_id=request_id)
    except ArbstrError:
        raise ArbstrError(401, "invalid admin token", code="invalid_api_key") from None
    raise ArbstrError(403, "agent tokens cannot use admin endpoints", code="admin_only")


class VaultMeter:
    paid = True

    def __init__(self, nc: NATS, bus: Bus, settle_budget_s: float = 30.0) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.bus = bus
        self.agents = AgentDirectory(bus)
        # How long a settle/release is retried through the durable queue: outlasts a JetStream election
        # (seconds) with room to spare, and stays well under the hold TTL, which must cover it.
        self.settle_budget_s = settle_budget_s
        self._background: set[asyncio.Task[None]] = set()

    async def reserve(self, token: Optional[str], request_id: str, route: RouteReply, endpoint: str) -> Hold:
        if not token:
            raise missing_token()
        th = token_hash(token)
        where = await self.agents.route_of(th, request_id)
        first = route.candidates[0] if route.candidates else None
        # Each reserve is one attempt of the request id: a release naming it refuses exactly this reserve should it
        # arrive late, while the client may retry the id (a new attempt) once this one was released.
        attempt = secrets.token_hex(8)
        req = ReserveRequest(request_id=request_id, token_hash=th, envelope=route.envelope,
                             provider=first.provider if first else "", model=first.model if first else route.model,
                             endpoint=endpoint, agent_id=where.agent_id, attempt=attempt,
                             sent_at_ms=int(time.time() * 1000))
        try:
            # Straight to the owner of the agent's partition: one hop, decided from memory, group-committed.
            reply = await self.bus.ask(exchanges.RESERVE, req, partition=where.partition,
                                       request_id=request_id, traceparent=TRACEPARENT.get() or None,
                                        wait_for_responder_s=OWNER_WAIT_S)
            if reply.state == "awaiting_approval":
                wait_s = max(0.0, ((reply.approval_deadline_ms or 0) - time.time() * 1000) / 1000)
                reply = await self.bus.ask(exchanges.AWAIT_APPROVAL, req, partition=where.partition,
                                           request_id=request_id,
                                            timeout_s=wait_s + self.bus.timeout_s + 1,
                                            wait_for_responder_s=OWNER_WAIT_S)
        except ArbstrError as e:
            if e.status == 401:
                self.agents.forget(th)  # a rotated token: the next request asks again
            if e.status >= 500:
                # The reserve may have landed, or still land later: a timeout (NATS buffers requests) or a
                # journal write whose ack was lost. A durable release resolves or tombstones the rid, so a request
                # the client saw fail is never charged. In the background: the client has its 503/504 now.
                task = asyncio.create_task(self._command(SettleCommand(
                    kind="release", request_id=request_id, attempt=attempt, agent_id=where.agent_id, token_hash=th,
                    reason="reserve failed"), where.agent_id, where.partition, direct=False))
                self._background.add(task)
                task.add_done_callback(self._background.discard)
            raise
        return Hold(request_id=request_id, agent_id=reply.agent_id, amount_msat=reply.amount_msat,
                    output_tokens=reply.output_tokens, attempt=attempt, partition=where.partition, token_hash=th)

    async def extend(self, hold: Hold, amount_msat: int, provider: str) -> Hold:
        assert hold.agent_id is not None and hold.partition is not None
        attempt = hold.extensions + 1
        reply = await self.bus.ask(exchanges.EXTEND, ExtendRequest(
            request_id=hold.request_id, agent_id=hold.agent_id, token_hash=hold.token_hash, amount_msat=amount_msat,
            attempt=attempt, provider=provider), partition=hold.partition, request_id=hold.request_id,
            traceparent=TRACEPARENT.get() or None, wait_for_responder_s=OWNER_WAIT_S)
        return dataclasses.replace(hold, amount_msat=reply.amount_msat, extensions=attempt)

    async def settle(self, hold: Hold, usage: Usage, record: Optional[RequestRecord] = None) -> None:
        await self._command(SettleCommand(
            kind="settle", request_id=hold.request_id, attempt=hold.attempt, agent_id=hold.agent_id,
            provider=usage.provider, model=usage.model, input_tokens=usage.input_tokens,
            output_tokens=usage.output_tokens, cost_msat=usage.cost_msat, estimated=usage.estimated,
            provider_cost_msat=usage.provider_cost_msat, cost_drift=usage.cost_drift, record=record),
            hold.agent_id, hold.partition)

    async def release(self, hold: Hold, reason: str, record: Optional[RequestRecord] = None) -> None:
        """Journaled before the client hears of the failure (request/reply to the owner), so a retry with the same
        X-Request-Id finds the hold released; the durable work queue when the owner does not answer soon."""
        await self._command(SettleCommand(kind="release", request_id=hold.request_id, attempt=hold.attempt,
                                          agent_id=hold.agent_id, token_hash=hold.token_hash or None, reason=reason,
                                          record=record), hold.agent_id, hold.partition,
                            timeout_s=min(self.bus.timeout_s, RELEASE_WAIT_S))

    async def close(self) -> None:
        """A release still retrying after a failed reserve is what keeps a client's failed request from being
        charged at the hold's TTL: wait for it (it gives up after ``settle_budget_s`` by itself)."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=self.settle_budget_s + 1)

    async def _command(self, cmd: SettleCommand, agent_id: Optional[str], partition: Optional[int],
                       direct: bool = True, timeout_s: Optional[float] = None) -> None:
        """To the owner, journaled before it answers; if it cannot answer now, into the durable queue."""
        if direct and partition is not None:
            try:
                await self.bus.ask(exchanges.VAULT[cmd.kind], cmd, partition=partition,
                                    request_id=cmd.request_id, traceparent=TRACEPARENT.get() or None,
                                    timeout_s=timeout_s)
                return
            except ArbstrError as e:
                if e.status < 500:
                    log.warning("request %s: %s refused (%s)", cmd.request_id, cmd.kind, e.message)
                    return
                log.info("request %s: %s not answered by the owner (%s); queued", cmd.request_id, cmd.kind,
                         e.message)
        await self._enqueue(cmd, agent_id)

    async def _enqueue(self, cmd: SettleCommand, agent_id: Optional[str]) -> None:
        """Publish until JetStream acks; the msg id makes retries (and a gateway's double send) harmless."""
        data = cmd.model_dump_json().encode()
        # Request ids come from clients and may collide across agents: the dedup key names the account too, and
        # the attempt (a retried request id's second release must not be dropped as the first one's duplicate).
        owner = agent_id or f"token-{(cmd.token_hash or '')[:16]}"
        headers = {subjects.H_MSG_ID: f"{cmd.kind}:{owner}:{cmd.request_id}#{cmd.attempt}",
                   subjects.H_REQUEST_ID: cmd.request_id}
        if TRACEPARENT.get():
            headers[subjects.H_TRACEPARENT] = TRACEPARENT.get()
        subject = subjects.settle_command(agent_id or ANONYMOUS)
        # Bounded by time, not attempts: with no stream leader a publish fails in a millisecond, so a count
        # of attempts would be spent long before an election is over.
        deadline = time.monotonic() + self.settle_budget_s
        delay = 0.1
        while True:
            try:
                await self.js.publish(subject, data, headers=headers, timeout=2.0)
                return
            except Exception as e:
                if time.monotonic() + delay >= deadline:
                    log.error("request %s: %s not journaled (%r); the hold resolves at its TTL",
                              cmd.request_id, cmd.kind, e)
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
