"""Messages between the gateway and the vault about paying Routstr nodes: a per-request (X-Cashu) token and what
became of it, and a top-up a request asks for after a node it holds a key for answered 402.

The vault owns the wallet: a gateway never holds ecash except the one token it carries to one node for one request,
and hands back whatever the node returned (the change, in the ``X-Cashu`` response header)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .common import Message, Msat, Name

# What the gateway saw of a node paid with a token: it answered (change or none), it refused (an error answer; any
# token it echoed or refunded comes back as ``change``), the connection never opened (the token did not leave),
# or nothing is known (sent, no answer: a timeout, a broken connection).
XCashuOutcome = Literal["answered", "refused", "unsent", "unknown"]
TOKEN_CHARS = 100_000


class XCashuRequest(Message):
    """``arbstr.v1.vault.xcashu.token``: a token of ``amount_msat`` (whole sats) for one request of an agent that
    holds an open hold for ``request_id``, paid from the operator account."""

    request_id: str = Field(min_length=1, max_length=200)
    agent_id: Name
    provider: Name
    amount_msat: int = Field(gt=0, strict=True)


class XCashuToken(Message):
    payment_id: str = Field(description="names this payment in the report and in the operator's payouts")
    token: str = Field(description="the ecash to send as X-Cashu: a bearer secret, never logged")
    amount_msat: Msat


class XCashuReport(Message):
    """``arbstr.v1.vault.xcashu.report``: what became of the token (best effort: the vault recovers any payment
    never reported, by asking the mint whether the token was spent and the node for its change)."""

    payment_id: str = Field(min_length=1, max_length=200)
    outcome: XCashuOutcome
    change: Optional[str] = Field(None, min_length=1, max_length=TOKEN_CHARS)
    status: Optional[int] = None


class XCashuResult(Message):
    payment_id: str
    state: Literal["open", "closed"]
    outcome: str = ""
    change_msat: Msat = 0


class TopUpNow(Message):
    """``arbstr.v1.vault.topup.now``: a node arbstr holds a key for answered 402; top it up once so that its
    balance covers ``needed_msat`` (what the node reserves for the refused request), then answer."""

    provider: Name
    needed_msat: int = Field(0, ge=0, strict=True)


class TopUpResult(Message):
    provider: str
    state: Literal["funded", "topped_up", "pending", "refused"]
    balance_msat: Optional[int] = None
    reason: str = ""
