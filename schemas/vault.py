"""Vault read models: an agent's spending policy and the view of its account.

This module imports nothing from ``schemas.ledger`` (the ledger imports ``AgentPolicy`` from here).
"""

from __future__ import annotations

from typing import Optional

from pydantic import Field

from .common import Message, Msat


class AgentPolicy(Message):
    """Spending rules of one agent. ``None`` means "no limit" / "no approval step"."""

    max_tx_msat: Optional[Msat] = Field(None, description="largest single spend")
    daily_limit_msat: Optional[Msat] = Field(
        None, description="spends plus pending holds over any rolling 24 h window")
    approval_over_msat: Optional[Msat] = Field(
        None,
        description="spends above it wait for a human; when set, a spend over max_tx or the daily limit "
                    "waits for approval instead of being denied",
    )
    approval_timeout_s: int = Field(300, ge=1, description="an approval not given in time denies the spend")


class AccountView(Message):
    agent_id: str
    name: str
    balance_msat: Msat = Field(description="available: deposited - withdrawn - spent - pending")
    pending_msat: Msat
    spent_msat: Msat
    deposited_msat: Msat
    withdrawn_msat: Msat
    uncollectible_msat: Msat = Field(description="provider overruns the agent could not cover; never charged")
    policy: AgentPolicy
    holds: int = Field(ge=0, description="open holds, awaiting approval included")
    created_at_ms: int
