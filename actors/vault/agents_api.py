"""The operator's agents: creating them, listing and reading them, their policies, and rotating their tokens
(with the revocation notice every gateway acts on).
"""

from __future__ import annotations

import logging

from schemas import subjects
from schemas.errors import ArbstrError
from schemas.vault import (AccountView, AgentList, AgentPolicy, AgentRef, CreateAgent, Empty, RotateToken, SetPolicy,
                           TokenRevoked)

from . import clock, decide
from .core import VaultCore
from .fold import AccountState, view

log = logging.getLogger("arbstr.vault")

class AgentsApi(VaultCore):
    """Agents as the operator manages them."""

    async def _known(self, agent_id: str) -> AccountState:
        """The agent with every write acked so far (by any instance) applied: operators read their writes."""
        if not self.owns(agent_id):
            await self._caught_up()
        state = self.book.state(agent_id)
        if not state.created:
            raise ArbstrError(404, f"no agent {agent_id}", code="agent_not_found", param="agent_id")
        return state

    def _default_policy(self) -> AgentPolicy:
        return AgentPolicy(**self.vc.default_policy.model_dump())

    async def _create_agent(self, req: CreateAgent, headers: dict[str, str], agent_id: str) -> AccountView:
        if self.book.agent_by_token(req.token_hash) is not None:
            raise ArbstrError(409, "that token is already in use", code="token_in_use")
        policy = req.policy or self._default_policy()
        w = await self.execute(agent_id, lambda s, at: decide.create_agent(s, req.name, req.token_hash, policy, at))
        return view(w.state)

    async def _list_agents(self, req: Empty, headers: dict[str, str]) -> AgentList:
        await self._caught_up()
        return AgentList(agents=[view(s) for s in sorted(self.book.agents(), key=lambda s: s.created_at_ms)])

    async def _get_agent(self, req: AgentRef, headers: dict[str, str]) -> AccountView:
        return view(await self._known(req.agent_id))

    async def _set_policy(self, req: SetPolicy, headers: dict[str, str], agent_id: str) -> AccountView:
        await self._known(agent_id)
        w = await self.execute(agent_id, lambda s, at: decide.set_policy(s, req.policy, at))
        await self.grants.revoke(agent_id, "policy_changed")  # gateways decide the next request by the new rules
        return view(w.state)

    async def _rotate_token(self, req: RotateToken, headers: dict[str, str], agent_id: str) -> AccountView:
        await self._known(agent_id)
        if self.book.agent_by_token(req.token_hash) is not None:
            raise ArbstrError(409, "that token is already in use", code="token_in_use")
        replaced: list[str] = []

        def rotate(s: AccountState, at: int) -> decide.Decided:
            replaced[:] = [s.token_hash]
            return decide.rotate_token(s, req.token_hash, at)

        w = await self.execute(agent_id, rotate)
        if w.events and replaced:
            await self.grants.revoke(agent_id, "token_rotated")
            await self._revoked(agent_id, replaced[0], "token_rotated")
        return view(w.state)

    async def _revoked(self, agent_id: str, token_hash: str, reason: str) -> None:
        """Tell every gateway that ``token_hash`` no longer opens anything (its open event streams end). Core
        NATS may drop it: gateways also re-check their streams' tokens now and then."""
        assert self.nc is not None
        notice = TokenRevoked(agent_id=agent_id, token_hash=token_hash, reason=reason, at_ms=clock.now_ms())
        try:
            await self.nc.publish(subjects.TOKEN_REVOKED, notice.model_dump_json().encode())
        except Exception:
            log.warning("could not publish the revocation of %s's token", agent_id)
