"""Vault read models: an agent's spending policy and the view of its account.

This module imports nothing from ``schemas.ledger`` (the ledger imports ``AgentPolicy`` from here).
"""

from __future__ import annotations

import json

from typing import Any, Literal, Optional

from pydantic import Field

from .common import MAX_APPROVAL_TIMEOUT_S, MAX_EPOCH_MS, MAX_MSAT, MAX_TOKENS, Amount, Message, Msat
from .requests import RequestRecord
from .router import Envelope


class JournaledPolicy(Message):
    """A policy as the ledger holds it: the same fields without the upper bounds, so events written before them
    replay. Everything that decides uses ``AgentPolicy.within_bounds`` of it; new policies are ``AgentPolicy``."""

    max_tx_msat: Optional[Msat] = None
    daily_limit_msat: Optional[Msat] = None
    approval_over_msat: Optional[Msat] = None
    approval_timeout_s: int = Field(300, ge=1)


class AgentPolicy(JournaledPolicy):
    """Spending rules of one agent. ``None`` means "no limit" / "no approval step"."""

    max_tx_msat: Optional[Amount] = Field(None, description="largest single spend")
    daily_limit_msat: Optional[Amount] = Field(
        None, description="spends plus pending holds over any rolling 24 h window")
    approval_over_msat: Optional[Amount] = Field(
        None,
        description="spends above it wait for a human; when set, a spend over max_tx or the daily limit "
                    "waits for approval instead of being denied",
    )
    approval_timeout_s: int = Field(300, ge=1, le=MAX_APPROVAL_TIMEOUT_S,
                                    description="an approval not given in time denies the spend")

    @classmethod
    def within_bounds(cls, policy: "JournaledPolicy") -> "AgentPolicy":
        """A policy from the journal, as the vault applies it: one written before the bounds existed is clamped
        (the journaled event itself stays as written, so its hash still verifies)."""
        if isinstance(policy, AgentPolicy):
            return policy
        data = policy.model_dump()
        for key in ("max_tx_msat", "daily_limit_msat", "approval_over_msat"):
            if data[key] is not None:
                data[key] = min(data[key], MAX_MSAT)
        data["approval_timeout_s"] = min(data["approval_timeout_s"], MAX_APPROVAL_TIMEOUT_S)
        return cls.model_validate(data)


class AccountView(Message):
    agent_id: str
    name: str
    balance_msat: Msat = Field(description="available: deposited - withdrawn - spent - pending")
    pending_msat: Msat = Field(description="open holds plus payouts under way")
    spent_msat: Msat
    deposited_msat: Msat
    withdrawn_msat: Msat
    uncollectible_msat: Msat = Field(description="provider overruns the agent could not cover; never charged")
    policy: AgentPolicy
    holds: int = Field(ge=0, description="open holds, awaiting approval included")
    payouts_pending_msat: Msat = Field(0, description="payouts journaled and not yet resolved (amount + fee limit)")
    created_at_ms: int


# --- bus messages of arbstr.v1.vault.* ------------------------------------------------------------------------
# Agents are identified on the bus by the sha256 of their bearer token: the token itself never leaves the
# gateway that received it.

# A gateway's nonce naming one reserve attempt of a request id ("" from callers that name none).
ATTEMPT_PATTERN = r"^[A-Za-z0-9_-]{0,64}$"


class ReserveRequest(Message):
    request_id: str
    token_hash: str
    envelope: Envelope
    provider: str = ""
    model: str = ""
    endpoint: str = "chat"
    attempt: str = Field("", pattern=ATTEMPT_PATTERN, description="unique per reserve call: a release naming it "
                                                                  "refuses exactly this reserve if it comes late")
    agent_id: Optional[str] = Field(None, description="the agent the gateway believes the token is: it picks the "
                                                      "partition; the owner still checks the token hash")
    sent_at_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS, description="when the gateway sent it: a reserve delivered "
                                                             "late (NATS buffers requests across a reconnect) "
                                                             "is refused, never held")


class ExtendRequest(Message):
    """Grow a hold before a fallback to a costlier candidate: ``amount_msat`` is the hold's new total."""

    request_id: str
    agent_id: str
    token_hash: str
    amount_msat: Amount
    attempt: int = Field(1, ge=1, le=64, description="which extension of this request (a repeat is a no-op)")
    provider: str = ""


class ReserveReply(Message):
    request_id: str
    agent_id: str
    amount_msat: Msat
    output_tokens: int = Field(ge=0, description="the output budget the hold covers")
    expires_at_ms: int
    balance_msat: Msat
    state: Literal["held", "awaiting_approval"] = "held"
    approval_deadline_ms: Optional[int] = None


SettleKind = Literal["settle", "release"]


class SettleCommand(Message):
    """A gateway's settle or release, sent through the ARBSTR_SETTLE work queue (durable once acked)."""

    kind: SettleKind
    request_id: str
    attempt: str = Field("", pattern=ATTEMPT_PATTERN, description="the reserve attempt it resolves; \"\": the "
                                                                  "rid's open hold")
    agent_id: Optional[str] = None
    token_hash: Optional[str] = Field(None, description="when the reserve reply never came: find the agent by it")
    provider: str = ""
    model: str = ""
    input_tokens: int = Field(0, ge=0, le=MAX_TOKENS)
    output_tokens: int = Field(0, ge=0, le=MAX_TOKENS)
    cost_msat: Amount = 0  # the gateway bounds what an upstream reports (see Proxy._usage)
    estimated: bool = False
    reason: str = ""
    provider_cost_msat: Optional[Msat] = Field(None, description="what the provider says it charged arbstr")
    cost_drift: bool = False
    record: Optional[RequestRecord] = Field(None, description="the gateway's record of the request: journaled "
                                                              "with the settle, published from the journal")


SpendKind = Literal["settled", "released", "expired", "denied"]


class SpendEvent(Message):
    """Published on ``arbstr.v1.spend.<agent_id>`` after every settle, release, expiry or denial."""

    event_id: str = Field(description="unique and stable: <agent_id>:<ledger seq>")
    kind: SpendKind
    agent_id: str
    request_id: str
    provider: str = ""
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cost_msat: Msat = 0
    charged_msat: Msat = 0
    uncollectible_msat: Msat = 0
    reserved_msat: Msat = 0
    balance_msat: Msat
    estimated: bool = False
    flagged: bool = Field(False, description="an expired hold charged without a settle: worth a look")
    reason: str = ""
    at_ms: int
    ledger_seq: int
    provider_cost_msat: Optional[Msat] = Field(None, description="what the provider says it charged arbstr for "
                                                                 "this request (Routstr nodes report it)")
    cost_drift: bool = Field(False, description="that charge is far from cost_msat: the provider's rates moved")


class TokenRevoked(Message):
    """Published on ``arbstr.v1.tokens.revoked`` when an agent's token stops being valid (rotation): gateways end
    whatever is still open on it (event streams)."""

    agent_id: str
    token_hash: str = Field(description="sha256 of the token that no longer opens anything")
    reason: Literal["token_rotated", "agent_removed"] = "token_rotated"
    at_ms: int = Field(ge=0)


class AgentRef(Message):
    agent_id: str


class AgentRoute(Message):
    """Who a token is, and where its commands go: ``arbstr.v1.vault.p.<partition>.<op>``."""

    agent_id: str
    partition: int = Field(ge=0)


class CreditDeposit(Message):
    """A deposit the rails saw settle (a paid invoice), credited once by the owner of the agent's partition."""

    agent_id: str
    deposit_id: str
    amount_msat: Msat
    rail: str
    reference: str = ""


class TokenRef(Message):
    token_hash: str


class CreateAgent(Message):
    name: str = Field(min_length=1, max_length=128)
    token_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    policy: Optional[AgentPolicy] = None
    agent_id: Optional[str] = Field(None, pattern=r"^agt_[0-9a-f]{16}$",
                                    description="named by the vault instance that took the command (so the "
                                                "partition owner it forwards to, and a retry, agree on it)")


class RotateToken(Message):
    agent_id: str
    token_hash: str = Field(pattern=r"^[0-9a-f]{64}$")


class SetPolicy(Message):
    agent_id: str
    policy: AgentPolicy


class DepositCommand(Message):
    agent_id: str
    amount_msat: int = Field(gt=0, le=MAX_MSAT, strict=True)
    deposit_id: str = Field(min_length=1, max_length=128)
    rail: str = "simulated"
    reference: str = ""


class AgentDeposit(Message):
    """The operator redeems a Cashu token into an account (the operator account that pays providers, say)."""

    agent_id: str
    token: str = Field(min_length=1, max_length=100_000)


class AgentList(Message):
    agents: list[AccountView]


class Approval(Message):
    request_id: str = Field(description="the held request's id, or a payout's id")
    kind: Literal["hold", "payout"] = "hold"
    agent_id: str
    agent_name: str
    amount_msat: Msat
    provider: str
    model: str
    requested_at_ms: int
    deadline_ms: int


class ApprovalList(Message):
    approvals: list[Approval]


class ApprovalAction(Message):
    request_id: str
    agent_id: Optional[str] = Field(None, description="whose request: request ids are the clients' and collide "
                                                      "across agents; without it only a single pending match is "
                                                      "decided")
    reason: str = ""


class ApprovalResult(Message):
    request_id: str
    agent_id: str
    state: str


class HistoryQuery(Message):
    token_hash: Optional[str] = None
    agent_id: Optional[str] = None
    since_ms: Optional[int] = Field(None, ge=0, le=MAX_EPOCH_MS)
    limit: int = Field(100, ge=1, le=1000)


class HistoryItem(Message):
    agent_id: str
    seq: int
    at_ms: int
    kind: str
    op_id: str
    request_id: Optional[str] = None
    amount_msat: int = 0
    detail: dict[str, Any] = Field(default_factory=dict)
    hash: str = ""
    prev_hash: str = ""


class History(Message):
    items: list[HistoryItem]


class Books(Message):
    deposits_msat: int
    withdrawals_msat: int
    balances_msat: int
    pending_msat: int = Field(description="open holds plus payouts under way")
    spent_msat: int
    uncollectible_msat: int
    agents: int
    payouts_pending_msat: int = 0
    balanced: bool
    ledger_seq: int
    projection_agrees: Optional[bool] = Field(
        None, description="the DuckDB projection's deposits, withdrawals and spend equal the fold's")


class ChainCheck(Message):
    agents: int
    events: int
    ok: bool
    broken: list[str] = Field(default_factory=list, description="agent ids whose hash chain does not verify")


class Empty(Message):
    pass


# --- money rails: deposits by invoice or token, payouts ------------------------------------------------------

Rail = Literal["lightning", "cashu"]


class DepositRequest(Message):
    """An agent tops up: a Lightning invoice of ``amount_msat``, or a Cashu token it hands over."""

    token_hash: str
    rail: Rail
    amount_msat: Optional[int] = Field(None, gt=0, le=MAX_MSAT, strict=True)
    token: Optional[str] = Field(None, min_length=1, max_length=100_000)


class DepositReply(Message):
    deposit_id: str
    rail: Rail
    status: Literal["invoice", "credited"]
    amount_msat: Msat
    bolt11: str = ""
    payment_hash: str = ""
    expires_at_ms: int = 0
    balance_msat: Msat


class WithdrawRequest(Message):
    """A payout: a BOLT11 (its own amount is what is paid and charged), or a Cashu token of ``amount_msat``."""

    token_hash: str
    bolt11: Optional[str] = Field(None, min_length=1, max_length=8_000)
    amount_msat: Optional[int] = Field(
        None, gt=0, le=MAX_MSAT, strict=True,
        description="a token payout's amount; with a BOLT11 only informative: the invoice's own amount is charged")
    rail: Optional[Rail] = Field(None, description="which rail pays; default: by amount on the auto rail, else "
                                                   "Lightning if configured")
    payout_id: Optional[str] = Field(None, pattern=r"^[A-Za-z0-9_.:-]{1,128}$",
                                     description="idempotency key of a token payout (a BOLT11 is its own)")


class PayoutRef(Message):
    token_hash: Optional[str] = None
    payout_id: str


PayoutStatus = Literal["awaiting_approval", "pending", "succeeded", "failed"]


class PayoutView(Message):
    payout_id: str = Field(description="the invoice's payment hash")
    agent_id: str
    rail: str
    status: PayoutStatus
    amount_msat: Msat = Field(description="the invoice's amount: what the destination receives")
    fee_limit_msat: Msat
    fee_msat: Msat = 0
    charged_msat: Msat = 0
    reference: str = ""
    reason: str = ""
    started_at_ms: int
    balance_msat: Msat
    initial_rail: str = ""
    fallback: bool = Field(False, description="the auto rail fell back to the other rail once")
    token: str = Field("", description="a token payout's ecash, shown only to its agent")


class PayoutList(Message):
    payouts: list[PayoutView]


class Reconciliation(Message):
    """Liabilities (what agents own or have under way) against what the wallets hold."""

    liabilities_msat: int = Field(description="agent balances + pending holds + payouts under way")
    assets_msat: int
    surplus_msat: int = Field(description="assets - liabilities; negative: a shortfall")
    margin_msat: int
    ok: bool
    wallets: dict[str, int] = Field(default_factory=dict, description="assets by wallet identity")
    frozen: bool = Field(False, description="a shortfall beyond the margin stopped new holds and payouts")
    frozen_reason: str = ""
    frozen_at_ms: int = 0


class FreezeState(Message):
    """The vault-wide fail-closed switch (KV ``arbstr_vault``, key ``freeze``): set by the watchdog, cleared by an
    operator."""

    frozen: bool
    reason: str = ""
    at_ms: int = 0
    by: str = Field("", description="watchdog or admin")
    shortfall_msat: int = 0
    accepted_shortfall_msat: int = Field(0, ge=0, description="a shortfall an operator accepted by forcing a "
                                                              "clear: only a larger one closes the vault again")


class ClearFreeze(Message):
    force: bool = Field(False, description="clear even though the books still show a shortfall")


class ProviderKey(Message):
    """KV ``arbstr_provider_keys`` (key = provider name): the prepaid key the vault bought at a Routstr-style
    provider, and which top-ups (payout ids of the operator account) the provider has received. A secret."""

    provider: str
    url: str
    api_key: str = ""
    delivered: list[str] = Field(default_factory=list, description="top-up payouts the provider took")
    returned: list[str] = Field(default_factory=list, description="top-ups the provider refused, taken back into "
                                                                  "the vault's wallet")
    lost: list[str] = Field(default_factory=list, description="top-ups spent without landing at the provider")
    balance_msat: Optional[int] = Field(None, description="the provider's balance when last checked")
    credited_msat: Optional[int] = Field(None, description="balance + reserved + spent at the provider after the "
                                                           "last delivery recorded here: a rise means a token landed")
    checked_at_ms: int = 0
    suspended: str = Field("", description="why top-ups stopped (a top-up that did not raise the balance)")


def provider_api_key(value: Optional[bytes]) -> Optional[str]:
    """The key in an ``arbstr_provider_keys`` value (``{"api_key": "sk-…", …}``); None for anything else, which
    readers treat as "no credential"."""
    try:
        data = json.loads(value or b"")
    except ValueError:
        return None
    key = data.get("api_key") if isinstance(data, dict) else None
    return key if isinstance(key, str) and key else None
