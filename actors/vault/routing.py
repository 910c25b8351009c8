"""Routing commands to the owner of their account's partition: which agent a command is about, serving it
here when this instance owns the partition, forwarding it otherwise, and the partition subjects' listener.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from nats.aio.msg import Msg
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from pydantic import BaseModel

from actors.runtime.endpoints import Endpoint, RawReply, answer, error_reply, serve
from schemas import subjects
from schemas.errors import ArbstrError
from schemas.exchanges import Exchange, decode_error, reply_status
from schemas.vault import AgentRoute, ApprovalAction, CreateAgent, ReserveRequest, SettleCommand, TokenRef

from .core import VaultCore
from .group_commit import moved
from .partition_journal import stream_last_seq

log = logging.getLogger("arbstr.vault")

H_FORWARDED = "Arbstr-Forwarded"  # a command one vault instance passed to the owner: never passed on again

FORWARD_WAIT_S = 5.0  # how long a command waits for a partition's owner to appear (a takeover takes ≤ 3 s)


def _says_moved(data: bytes, headers: Optional[dict[str, str]]) -> bool:
    if reply_status(headers) != "503":
        return False
    error = decode_error(data, headers)
    return error is not None and error.code == "partition_moved"


def unauthorized() -> ArbstrError:
    return ArbstrError(401, "invalid or missing bearer token", code="invalid_api_key")


Route = Callable[[Any], Awaitable[str]]  # the agent a command is about (raises 401/404)

Handler = Callable[[Any, dict[str, str], str], Awaitable[Any]]


@dataclass(frozen=True)
class Op:
    """How this actor serves one vault exchange: its handler, and where the command is decided."""

    exchange: Exchange[Any, Any]
    handler: Callable[..., Awaitable[Any]]
    route: Optional[Route] = None  # None: answered here, by whichever instance receives it
    timeout_s: float = 5.0  # when forwarded to the partition's owner
    # A forward answered "moved" (that instance is letting the partition go) is asked again of the next owner. Only
    # for commands a second delivery is recognised by (request, grant or deposit ids): one answered "moved" may
    # have been journaled after all (a batch whose ack was lost as the owner was fenced).
    retry_moved: bool = False

    @property
    def name(self) -> str:
        return self.exchange.name

    def endpoint(self, handler: Callable[[Any, dict[str, str]], Awaitable[Any]]) -> Endpoint:
        return serve(self.exchange, handler)


class CommandRouting(VaultCore):
    """From a bus message to the handler on the partition's owner."""

    def _routed(self, op: Op) -> Callable[[Any, dict[str, str]], Awaitable[Any]]:
        async def handle(msg: Any, headers: dict[str, str]) -> Any:
            if op.route is None:
                return await op.handler(msg, headers)
            agent_id = await op.route(msg)
            k = self.partition_of(agent_id)
            if k in self.owners:
                return await op.handler(msg, headers, agent_id)
            if H_FORWARDED in headers:
                raise moved(k)  # it reached us as the owner, but we are not any more: the caller asks again
            return await self._forward(k, op, msg, headers)
        return handle

    async def _forward(self, k: int, op: Op, msg: BaseModel, headers: dict[str, str]) -> RawReply:
        assert self.nc is not None
        data = msg.model_dump_json().encode()
        fwd = {**headers, H_FORWARDED: self.instance}
        deadline = time.monotonic() + FORWARD_WAIT_S
        timeout_s = op.timeout_s
        while True:
            try:
                reply = await self.nc.request(op.exchange.on_partition(k), data, timeout=timeout_s, headers=fwd)
                got = dict(reply.headers) if reply.headers else None
                # The instance it reached is letting the partition go: ask the next owner rather than hand the
                # caller a 503 for a takeover it need not see (within the wait, each try bounded by what is left).
                left = deadline - time.monotonic()
                if op.retry_moved and left > 0.1 and _says_moved(reply.data, got):
                    await asyncio.sleep(0.05)
                    timeout_s = min(op.timeout_s, max(left, 0.5))
                    continue
                return RawReply(reply.data, got)
            except NoRespondersError:
                if time.monotonic() > deadline:
                    raise ArbstrError(503, f"no vault instance serves partition {k} yet", code="partition_unowned",
                                      headers={"retry-after": "1"}) from None
                await asyncio.sleep(0.05)
            except (NatsTimeoutError, asyncio.TimeoutError):
                raise ArbstrError(504, f"the owner of partition {k} did not answer in time", code="actor_timeout",
                                  headers={"retry-after": "1"}) from None

    async def _on_partition_msg(self, msg: Msg) -> None:
        """A command sent to the owner of a partition (by a gateway, or forwarded by another instance)."""
        ep = self._partition_eps.get(msg.subject.rsplit(".", 1)[1])

        async def run() -> None:
            if ep is None:
                data, headers = error_reply(ArbstrError(404, f"no vault operation {msg.subject}", code="unknown_op"))
            else:
                h = dict(msg.headers or {})
                h.setdefault(H_FORWARDED, "direct")  # sent to the owner: if it is not any more, the caller retries
                data, headers, status = await answer(ep, msg.data, h, self.admin_hash, self.service_name)
                counts = self.partition_ops.setdefault(ep.name, {})
                counts[status] = counts.get(status, 0) + 1
            if msg.reply:
                try:
                    await self.nc.publish(msg.reply, data, headers=headers)  # type: ignore[union-attr]
                except Exception as e:
                    log.warning("could not answer %s: %r", msg.subject, e)

        task = asyncio.create_task(run())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _by_token(self, msg: Any) -> str:
        return await self._agent_for(msg.token_hash)

    async def _by_agent(self, msg: Any) -> str:
        return str(msg.agent_id)

    async def _first_report(self, msg: Any) -> str:
        return str(msg.reports[0].agent_id)  # every report of a GrantReports is about the same partition

    async def _new_agent(self, msg: CreateAgent) -> str:
        if getattr(msg, "agent_id", None):
            return str(msg.agent_id)
        msg.agent_id = f"agt_{secrets.token_hex(8)}"  # named here, so the owner and a retry agree on it
        return msg.agent_id

    async def _reserve_route(self, req: ReserveRequest) -> str:
        return await self._agent_for(req.token_hash)

    async def _settle_route(self, cmd: SettleCommand) -> str:
        if cmd.agent_id:
            return cmd.agent_id
        if cmd.token_hash:
            agent_id = await self._agent_for(cmd.token_hash, refuse=False)
            if agent_id:
                return agent_id
        raise ArbstrError(404, f"{cmd.kind} of {cmd.request_id} names no known agent", code="unknown_agent")

    async def _approval_route(self, req: ApprovalAction) -> str:
        agent_id, _ = await self._holder(req.request_id, req.agent_id)
        req.agent_id = agent_id  # the owner decides for exactly this agent
        return agent_id

    async def _operator_route(self, msg: Any) -> str:
        return self._payments().operator

    async def _agent_for(self, token_hash: str, refuse: bool = True) -> str:
        agent_id = self.book.agent_by_token(token_hash)
        if agent_id is None:
            await self._caught_up()  # a token issued a moment ago through another instance
            agent_id = self.book.agent_by_token(token_hash)
        if agent_id is None:
            if refuse:
                raise unauthorized()
            return ""
        return agent_id

    @property
    def _read_wait_s(self) -> float:
        # Below the caller's bus timeout: a read model that is behind (a follower re-subscribing after a lost
        # server) answers a clear 503 to retry, not a timeout the caller cannot tell from a dead vault.
        return min(10.0, 0.6 * self.config.nats.request_timeout_s)

    async def _caught_up(self) -> None:
        """The read model has every batch journaled so far (by any instance): read-your-writes for admin reads."""
        assert self.nc is not None and self.follower is not None
        try:
            for i in range(self.layout.streams):
                last = await stream_last_seq(self.nc, subjects.ledger_stream(i))
                await self.follower.wait_applied(i, last, self._read_wait_s)
        except asyncio.TimeoutError:
            raise ArbstrError(503, "the vault's read model is catching up with the journal; try again",
                              code="catching_up", headers={"retry-after": "1"}) from None

    async def _whoami(self, req: TokenRef, headers: dict[str, str]) -> AgentRoute:
        """Which agent a token is (the gateway then sends its reserves straight to the partition's owner)."""
        agent_id = await self._agent_for(req.token_hash)
        return AgentRoute(agent_id=agent_id, partition=self.partition_of(agent_id))
