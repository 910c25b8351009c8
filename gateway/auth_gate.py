"""Paid mode's first check on the metered endpoints (chat, completions, embeddings, responses, ``/v1/cost``): a
missing or unknown bearer gets 401 before the body is validated or routed, so nobody without a token learns
provider names, model lists or context sizes from the error messages.

No bus hop per request: a token whose hash the vault recently confirmed (``agent.me``) is remembered for a short
while. The cache only ever says yes, and only to this gate; the vault's reserve stays the authority on every
request (a token rotated away meanwhile is refused there, with the same 401).
"""

from __future__ import annotations

import hmac
import time
from collections import OrderedDict
from typing import Callable, Optional

from aiohttp import web

from schemas import exchanges
from schemas.vault import TokenRef

from .bus import Bus
from .headers import bearer_token
from .http import REQUEST_ID
from .vault_meter import missing_token, token_hash

CACHE_TTL_S = 30.0  # how long a confirmed token skips the vault's look-up
CACHE_ENTRIES = 10_000  # the least recently confirmed are forgotten first


class ValidTokens:
    """A bounded set of token hashes, each valid until its expiry."""

    def __init__(self, ttl_s: float = CACHE_TTL_S, max_entries: int = CACHE_ENTRIES,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self._until: OrderedDict[str, float] = OrderedDict()

    def __contains__(self, token_hash: str) -> bool:
        until = self._until.get(token_hash)
        if until is None:
            return False
        if until <= self.clock():
            del self._until[token_hash]
            return False
        return True

    def add(self, token_hash: str) -> None:
        self._until[token_hash] = self.clock() + self.ttl_s
        self._until.move_to_end(token_hash)
        while len(self._until) > self.max_entries:
            self._until.popitem(last=False)

    def __len__(self) -> int:
        return len(self._until)


class AuthGate:
    def __init__(self, bus: Bus, admin_hash: Optional[str], valid: Optional[ValidTokens] = None) -> None:
        self.bus = bus
        self.admin_hash = admin_hash
        self.valid = valid or ValidTokens()

    async def check(self, request: web.Request) -> None:
        """Returns when the bearer is the admin token or an agent's; else raises the 401 (or the vault's 5xx)."""
        token = bearer_token(request)
        if token is None:
            raise missing_token()
        th = token_hash(token)
        if self.admin_hash is not None and hmac.compare_digest(th, self.admin_hash):
            return  # what the admin may do past here is unchanged: /v1/cost answers it, a reserve refuses it
        if th in self.valid:
            return
        await self.bus.ask(exchanges.AGENT_ME, TokenRef(token_hash=th), request_id=request[REQUEST_ID])
        self.valid.add(th)
