"""Grants on the bus: a gateway asks an agent's partition owner for a slice of the agent's balance, decides requests
against it locally, reports what they cost in batches and closes it (DESIGN §6, credit control)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field

from .common import MAX_EPOCH_MS, MAX_TOKENS, Amount, Message, Msat
from .requests import RequestRecord
from .vault import ATTEMPT_PATTERN, AgentPolicy

GRANT_ID_PATTERN = r"^[A-Za-z0-9_-]{8,64}$"


class GrantRequest(Message):
    grant_id: str = Field(pattern=GRANT_ID_PATTERN, description="chosen by the gateway: a retry names the same one")
    agent_id: str
    token_hash: str = Field(description="the bearer's hash: the owner grants only to the agent's current token")
    want_msat: Amount = Field(description="how much the gateway would like to hold")
    min_msat: Amount = Field(description="less than this is no use to it (one request's hold)")


class GrantReply(Message):
    grant_id: str
    agent_id: str
    amount_msat: Msat
    expires_at_ms: int = Field(ge=0, le=MAX_EPOCH_MS)
    available_msat: Msat = Field(description="the agent's balance outside holds after this grant")
    policy: AgentPolicy = Field(description="the spending rules the gateway applies to each request it decides")
    policy_version: int = 0
    token_version: int = 0


class UsageItem(Message):
    """One request decided under a grant: settled at ``cost_msat``, or released (nothing charged)."""

    kind: Literal["settle", "release"]
    request_id: str = Field(min_length=1, max_length=256)
    attempt: str = Field(min_length=1, pattern=ATTEMPT_PATTERN)
    provider: str = ""
    model: str = ""
    input_tokens: int = Field(0, ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(0, ge=0, le=MAX_TOKENS)
    cost_msat: Amount = 0
    estimated: bool = False
    reason: str = ""
    provider_cost_msat: Optional[Msat] = None
    cost_drift: bool = False
    record: Optional[RequestRecord] = None


class GrantUsage(Message):
    """A batch of a grant's requests, and whether the gateway is done with the grant (the rest goes back)."""

    grant_id: str = Field(pattern=GRANT_ID_PATTERN)
    agent_id: str
    items: list[UsageItem] = Field(default_factory=list, max_length=4096)
    close: bool = False


class GrantsRevoked(Message):
    """Published by the vault when what a gateway decides locally may no longer hold for an agent (its policy or
    token changed, or the vault froze: ``agent_id`` "*"): gateways close that agent's grants at once."""

    agent_id: str
    reason: str = ""
