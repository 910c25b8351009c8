"""Grants on the bus: a gateway asks an agent's partition owner for a slice of the agent's balance, decides requests
against it locally, reports what they cost in batches and closes it (DESIGN §6, credit control)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

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


MAX_REPORT_ITEMS = 4096  # requests in one GrantReports message, over all its grants


class GrantReports(Message):
    """What a gateway has to report for every grant it holds in one partition, in one message: a gateway sends at
    most one per partition per report interval, however many agents it serves there."""

    reports: list[GrantUsage] = Field(default_factory=list, max_length=1024)
    # A gateway from before GrantReports sends one GrantUsage: still journaled (a refused report is charged whole at
    # the grant's expiry), so vaults can be upgraded before the gateways. Its fields are read here and folded into
    # ``reports`` after validation: a "before" validator would make pydantic validate the whole message from Python
    # objects instead of straight from the JSON, about twice the CPU per reported request.
    grant_id: Optional[str] = Field(None, pattern=GRANT_ID_PATTERN, exclude=True)
    agent_id: Optional[str] = Field(None, exclude=True)
    items: list[UsageItem] = Field(default_factory=list, max_length=MAX_REPORT_ITEMS, exclude=True)
    close: bool = Field(False, exclude=True)

    @model_validator(mode="after")
    def _shape(self) -> "GrantReports":
        if self.grant_id is not None:
            if self.reports or self.agent_id is None:
                raise ValueError("either reports, or one grant's grant_id, agent_id and items")
            self.reports = [GrantUsage(grant_id=self.grant_id, agent_id=self.agent_id, items=self.items,
                                       close=self.close)]
            self.grant_id, self.agent_id, self.items, self.close = None, None, [], False
        if not self.reports:
            raise ValueError("at least one report")
        if sum(len(r.items) for r in self.reports) > MAX_REPORT_ITEMS:
            raise ValueError(f"at most {MAX_REPORT_ITEMS} requests per report")
        return self


class GrantReportsReply(Message):
    """Reports the owner refused for good (unknown agent, another partition's): sending them again cannot help.
    Everything else was journaled; a report not answered is sent again whole (items are recognised by op id)."""

    refused: dict[str, str] = Field(default_factory=dict, description="grant id -> why")


class GrantsRevoked(Message):
    """Published by the vault when what a gateway decides locally may no longer hold for an agent (its policy or
    token changed, or the vault froze: ``agent_id`` "*"): gateways close that agent's grants at once."""

    agent_id: str
    reason: str = ""
