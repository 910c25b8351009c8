"""Which agent a bearer token is, remembered for a while: the gateway sends an agent's reserves and settles straight
to the vault instance owning the agent's partition, and asks the vault only on first sight of a token."""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Optional

from schemas import exchanges
from schemas.vault import AgentRoute, TokenRef

from .bus import Bus

TTL_S = 60.0  # a rotated token is refused by the owner at once whatever this says; this only picks the partition
MAX_ENTRIES = 100_000


class AgentDirectory:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._known: "OrderedDict[str, tuple[AgentRoute, float]]" = OrderedDict()

    async def route_of(self, token_hash: str, request_id: str = "") -> AgentRoute:
        """The agent (and its partition) of a token hash; 401 from the vault when no agent has it."""
        hit = self._known.get(token_hash)
        now = time.monotonic()
        if hit is not None and hit[1] > now:
            return hit[0]
        reply = await self.bus.ask(exchanges.WHOAMI, TokenRef(token_hash=token_hash), request_id=request_id,
                                   retries=1)
        self._known[token_hash] = (reply, now + TTL_S)
        self._known.move_to_end(token_hash)
        while len(self._known) > MAX_ENTRIES:
            self._known.popitem(last=False)
        return reply

    def forget(self, token_hash: str) -> None:
        self._known.pop(token_hash, None)

    def forget_agent(self, agent_id: str) -> None:
        """Every token of ``agent_id`` is asked about again (its token was rotated)."""
        for th in [th for th, (route, _) in self._known.items() if route.agent_id == agent_id]:
            del self._known[th]

    def cached(self, token_hash: str) -> Optional[AgentRoute]:
        hit = self._known.get(token_hash)
        return hit[0] if hit is not None and hit[1] > time.monotonic() else None
