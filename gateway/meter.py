"""The billing seam of the request path: reserve before the upstream call, settle or release after it.

Free mode (no ``[vault]`` configured) meters nothing; paid mode talks to the vault actors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol

from schemas.requests import RequestRecord
from schemas.router import RouteReply


@dataclass(frozen=True)
class Hold:
    request_id: str
    agent_id: Optional[str]
    amount_msat: int
    output_tokens: Optional[int]  # the output budget the hold paid for, over every choice; the upstream is capped
    attempt: str = ""  # the nonce of the reserve that made it: its settle or release names it
    partition: Optional[int] = None  # the vault partition of the agent: where its settle goes
    token_hash: str = ""
    extensions: int = 0  # how often it grew for a fallback (numbers the next extension)
    grant: object = field(default=None, compare=False, repr=False)  # decided under this grant, not at the vault


@dataclass(frozen=True)
class Usage:
    provider: str
    model: str
    input_tokens: int
    output_tokens: int
    cost_msat: int
    estimated: bool  # tokens counted locally because the upstream reported no usage
    provider_cost_msat: Optional[int] = None  # what the provider says it charged arbstr (Routstr nodes report it)
    cost_drift: bool = False  # that charge is far from cost_msat: arbstr's rates for it are off


class Meter(Protocol):
    paid: bool

    async def reserve(self, token: Optional[str], request_id: str, route: RouteReply, endpoint: str) -> Hold: ...

    async def extend(self, hold: Hold, amount_msat: int, provider: str) -> Hold:
        """The hold grown to ``amount_msat`` before a costlier candidate is called (raises 402/403/429 when the
        agent cannot afford it: that candidate is skipped)."""
        ...

    async def settle(self, hold: Hold, usage: Usage, record: Optional[RequestRecord] = None) -> None:
        """``record``: the request's record, journaled with the settle (paid mode) or dropped (free mode)."""
        ...

    async def release(self, hold: Hold, reason: str, record: Optional[RequestRecord] = None) -> None: ...

    async def close(self) -> None:
        """Finish what was sent in the background (a release after a failed reserve) before the process goes."""
        ...


class FreeMeter:
    """No billing: every request is served, nothing is reserved or settled."""

    paid = False

    async def reserve(self, token: Optional[str], request_id: str, route: RouteReply, endpoint: str) -> Hold:
        return Hold(request_id=request_id, agent_id=None, amount_msat=0, output_tokens=None)

    async def extend(self, hold: Hold, amount_msat: int, provider: str) -> Hold:
        return hold

    async def settle(self, hold: Hold, usage: Usage, record: Optional[RequestRecord] = None) -> None:
        return None

    async def release(self, hold: Hold, reason: str, record: Optional[RequestRecord] = None) -> None:
        return None

    async def close(self) -> None:
        return None
