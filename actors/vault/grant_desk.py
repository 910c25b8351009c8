"""The owner's side of grants: open one for a gateway, journal the requests it reports, close it; and tell the
gateways when what they decide locally may no longer hold (policy or token changed, vault frozen)."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Awaitable, Callable, Optional

from nats.aio.client import Client as NATS

from schemas import subjects
from schemas.errors import ArbstrError
from schemas.grants import GrantReply, GrantReports, GrantReportsReply, GrantRequest, GrantsRevoked, GrantUsage, UsageItem

from . import decide_grants
from .decided import Decided
from .fold import AccountState
from .freeze import FreezeSwitch
from .group_commit import Written

log = logging.getLogger("arbstr.vault.grants")

Execute = Callable[..., Awaitable[Written]]
Enqueue = Callable[..., "asyncio.Future[Written]"]


async def _refuse(why: str) -> None:
    raise ArbstrError(400, why, code="wrong_partition")


def unauthorized() -> ArbstrError:
    return ArbstrError(401, "invalid or revoked agent token", code="invalid_api_key")


class GrantDesk:
    def __init__(self, execute: Execute, enqueue: Enqueue, state_of: Callable[[str], AccountState],
                 freeze: FreezeSwitch, ttl_ms: int, partition_of: Callable[[str], int]) -> None:
        self.execute = execute
        self.enqueue = enqueue
        self.state_of = state_of
        self.partition_of = partition_of
        self.freeze = freeze
        self.ttl_ms = ttl_ms
        self.nc: Optional[NATS] = None
        self.stats = {"opened": 0, "reported": 0, "closed": 0}

    async def grant(self, req: GrantRequest, headers: dict[str, str], agent_id: str) -> GrantReply:
        state = self.state_of(agent_id)
        if not state.created or not hmac.compare_digest(state.token_hash, req.token_hash):
            raise unauthorized()  # a grant is for the agent's current token only
        self.freeze.check()
        gid = req.grant_id
        w = await self.execute(agent_id, lambda s, at: decide_grants.open_grant(
            s, gid, req.want_msat, req.min_msat, at, ttl_ms=self.ttl_ms))
        hold = w.state.holds.get(decide_grants.grant_rid(gid))
        if hold is None:
            raise ArbstrError(409, f"grant {gid} is already closed", code="grant_closed")
        if not hmac.compare_digest(w.state.token_hash, req.token_hash):
            raise unauthorized()  # rotated while the grant was being decided: the gateway must not use it
        self.stats["opened"] += 1
        return GrantReply(grant_id=gid, agent_id=agent_id, amount_msat=hold.amount_msat,
                          expires_at_ms=hold.expires_at_ms, available_msat=w.state.available_msat,
                          policy=w.state.policy, policy_version=w.state.policy_version,
                          token_version=w.state.token_version)

    async def reports(self, req: GrantReports, headers: dict[str, str], agent_id: str) -> GrantReportsReply:
        """A gateway's reports for one partition (routed here by the first one's agent). Each is decided on its
        own; a refusal of one is answered for that one only, a fault (5xx) has the whole message sent again."""
        k = self.partition_of(agent_id)
        results = await asyncio.gather(*(self._usage(r) if self.partition_of(r.agent_id) == k
                                         else _refuse(f"agent {r.agent_id} is not in partition {k}")
                                         for r in req.reports), return_exceptions=True)
        refused: dict[str, str] = {}
        for report, r in zip(req.reports, results):
            if isinstance(r, ArbstrError) and r.status < 500:
                log.error("grant %s of %s: report refused (%s)", report.grant_id, report.agent_id, r.message)
                refused[report.grant_id] = r.message
            elif isinstance(r, BaseException):
                raise r
        return GrantReportsReply(refused=refused)

    async def _usage(self, req: GrantUsage) -> None:
        """Every item is its own command (its own resolution and record); they share journal batches."""
        agent_id = req.agent_id
        if not self.state_of(agent_id).created:
            raise ArbstrError(404, f"unknown agent {agent_id}", code="unknown_agent")
        # Queued in one go, in order, the close (if any) last: they share journal batches, and no task per item.
        futures = [self.enqueue(agent_id, _item_decider(req.grant_id, item), record=item.record)
                   for item in req.items]
        if req.close:
            futures.append(self.enqueue(agent_id, lambda s, at: decide_grants.close_grant(s, req.grant_id, at)))
        results = await asyncio.gather(*futures, return_exceptions=True)
        for r in results:
            if not isinstance(r, BaseException):
                continue
            if not isinstance(r, ArbstrError) or r.status >= 500:
                raise r  # the gateway sends the whole report again: what landed is recognised by its op id
            log.error("grant %s of %s: a reported request was refused (%s)", req.grant_id, agent_id, r.message)
        self.stats["reported"] += len(req.items)
        self.stats["closed"] += int(req.close)

    async def revoke(self, agent_id: str, reason: str) -> None:
        """Core NATS may drop it: a grant also ends at its expiry, and gateways use one only for a short while."""
        if self.nc is None:
            return
        try:
            await self.nc.publish(subjects.GRANTS_REVOKED,
                                  GrantsRevoked(agent_id=agent_id, reason=reason).model_dump_json().encode())
        except Exception:
            log.warning("could not publish the revocation of %s's grants", agent_id)


def _item_decider(gid: str, item: UsageItem) -> Callable[[AccountState, int], Decided]:
    def decider(s: AccountState, at: int) -> Decided:
        if item.kind == "settle":
            return decide_grants.draw_settle(
                s, gid, item.request_id, item.attempt, item.cost_msat, at, input_tokens=item.input_tokens,
                output_tokens=item.output_tokens, provider=item.provider, model=item.model,
                estimated=item.estimated, provider_cost_msat=item.provider_cost_msat, cost_drift=item.cost_drift)
        return decide_grants.draw_release(s, gid, item.request_id, item.attempt, item.reason or "released", at)
    return decider
