"""What an agent asks about itself with its own token: its account, its history, and reports scoped to it (the
operator's admin token sees every agent's reports).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from actors.runtime.tokens import check_admin
from schemas.errors import ArbstrError
from schemas.requests import RequestList, RequestsQuery, StatsQuery, StatsReply
from schemas.vault import AccountView, History, HistoryQuery, TokenRef

from .core import VaultCore
from .fold import view
from .routing import unauthorized

log = logging.getLogger("arbstr.vault")

class AgentApi(VaultCore):
    """The agent's own account, history and reports."""

    async def _report_scope(self, agent_id: Optional[str], token_hash: Optional[str], headers: dict[str, str]
                            ) -> Optional[str]:
        """The agent a report may cover: any (admin token), or only the agent whose token hash came with it."""
        if token_hash:
            own = await self._agent_for(token_hash)
            if agent_id not in (None, own):
                raise ArbstrError(403, "an agent token sees only its own requests", code="forbidden", param="agent")
            return own
        check_admin(headers, self.admin_hash)
        return agent_id

    async def _stats(self, req: StatsQuery, headers: dict[str, str]) -> StatsReply:
        assert self.request_log is not None
        req.agent_id = await self._report_scope(req.agent_id, req.token_hash, headers)
        return await asyncio.to_thread(self.request_log.stats, req)

    async def _requests(self, req: RequestsQuery, headers: dict[str, str]) -> RequestList:
        assert self.request_log is not None
        req.agent_id = await self._report_scope(req.agent_id, req.token_hash, headers)
        return await asyncio.to_thread(self.request_log.requests, req)

    async def _me(self, req: TokenRef, headers: dict[str, str], agent_id: str) -> AccountView:
        return view(self.book.state(agent_id))

    async def _my_history(self, req: HistoryQuery, headers: dict[str, str]) -> History:
        if not req.token_hash:
            raise unauthorized()
        agent_id = await self._agent_for(req.token_hash)  # an agent sees only its own account
        await self._projection_current()
        assert self.projection is not None
        return History(items=self.projection.history(agent_id, req.since_ms, req.limit))
