"""Journal events of the vault: the only source of truth for money (stream ``ARBSTR_LEDGER``).

Each agent's events form a hash chain: ``prev_hash`` is the sha256 of the agent's previous event, so an
edited, dropped or reordered event is detectable. ``op_id`` is the idempotency key of the command that
produced the event (also sent as ``Nats-Msg-Id``); the events of one command are contiguous, share it and
are numbered by ``part`` (0, 1, …), so a replayed command is told apart from the rest of one.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
import json
from typing import Annotated, Iterable, Literal, Optional, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .requests import RequestRecord
from .vault import JournaledPolicy

# Strict: a float or a numeric string must never become money by coercion.
Amount = Annotated[int, Field(ge=0, strict=True)]
Count = Annotated[int, Field(ge=0, strict=True)]
# A policy as journaled: whatever kind of policy the vault hands in, the event holds the journal's own type, so an
# event and its replay compare equal.
Policy = Annotated[JournaledPolicy,
                   BeforeValidator(lambda v: v.model_dump() if isinstance(v, JournaledPolicy) else v)]
HASH_HEX_LEN = 64
# One reserve attempt of a request id, named by the gateway that made it (hex nonce; "" in journals written
# before attempts existed, and from callers that name none). A subject-safe token, never containing "#".
Attempt = Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{0,64}$")]
ATTEMPT_DOC = "the reserve attempt this names (gateway nonce); \"\" = the rid's only or open one"
# Fields added after journals were first written: left out of the canonical JSON while empty, so an event
# written before they existed hashes as it did then and old journals still verify and replay.
_LATER_FIELDS: dict[str, object] = {"attempt": "", "payout_key": "", "provider_cost_msat": None, "cost_drift": False,
                                     "covered_by": ""}


class _Body(BaseModel):
    # Unknown fields are refused rather than dropped: dropping them would change what the hash covers.
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentCreated(_Body):
    kind: Literal["agent_created"] = "agent_created"
    name: str
    token_hash: str
    policy: Policy


class TokenRotated(_Body):
    kind: Literal["token_rotated"] = "token_rotated"
    token_hash: str


class PolicySet(_Body):
    kind: Literal["policy_set"] = "policy_set"
    policy: Policy


class Deposited(_Body):
    kind: Literal["deposited"] = "deposited"
    deposit_id: str = Field(min_length=1)
    amount_msat: Amount
    rail: str
    reference: str = ""


class Withdrawn(_Body):
    kind: Literal["withdrawn"] = "withdrawn"
    withdrawal_id: str = Field(min_length=1)
    amount_msat: Amount
    rail: str
    reference: str = ""


class InvoiceIssued(_Body):
    """A deposit invoice made for the agent; it credits nothing until the rail reports it paid."""

    kind: Literal["invoice_issued"] = "invoice_issued"
    deposit_id: str = Field(min_length=1)
    amount_msat: Amount
    rail: str
    reference: str = Field(min_length=1, description="the payment hash: how the rail names the invoice")
    bolt11: str = ""
    expires_at_ms: Count = 0


class PayoutStarted(_Body):
    """A payout journaled before the rail is called: ``amount_msat + fee_limit_msat`` is held until it resolves."""

    kind: Literal["payout_started"] = "payout_started"
    payout_id: str = Field(min_length=1)
    amount_msat: Amount = Field(description="what the destination receives: the invoice's own amount")
    fee_limit_msat: Amount = Field(description="the most the rail may take in fees")
    rail: str
    reference: str = Field("", description="payment hash, melt quote id: how the rail names the payment")
    destination: str = Field("", description="the BOLT11 paid, kept so a payout can be resumed after a crash")
    wallet: str = Field("", description="identity of the wallet paying it: only an instance on that wallet "
                                        "may send or check it")
    approval_deadline_ms: Optional[Count] = Field(
        None, description="set: the payout waits for a human (held, not sent) until approved, denied or this time")
    payout_key: str = Field("", max_length=128, description="the agent's idempotency key, when it gave one: the "
                                                            "key names this payout and no other")


class PayoutApproved(_Body):
    """An operator let a payout that needed approval go: it is sent now."""

    kind: Literal["payout_approved"] = "payout_approved"
    payout_id: str = Field(min_length=1)


class PayoutRerouted(_Body):
    """The auto rail's one fallback, journaled before the other rail is called: the first rail failed definitely.

    The hold becomes ``amount_msat + fee_limit_msat`` of the new rail (its fee limit may differ)."""

    kind: Literal["payout_rerouted"] = "payout_rerouted"
    payout_id: str = Field(min_length=1)
    from_rail: str
    rail: str
    fee_limit_msat: Amount
    reference: str = ""
    reason: str = Field("", description="why the first rail failed")
    wallet: str = ""


class PayoutSettled(_Body):
    kind: Literal["payout_settled"] = "payout_settled"
    payout_id: str = Field(min_length=1)
    charged_msat: Amount = Field(description="amount + fee: what left the account")
    fee_msat: Amount = Field(description="the fee charged to the account (at most the payout's fee limit)")
    fee_overrun_msat: Amount = Field(0, description="fee the rail took beyond the limit: the operator's loss")
    preimage: str = Field("", description="the Lightning preimage; for a token payout, the token's hash")
    initial_rail: str = ""
    final_rail: str = ""
    fallback: bool = False


class PayoutFailed(_Body):
    """Only a definite failure: the rail says the money did not and will not move."""

    kind: Literal["payout_failed"] = "payout_failed"
    payout_id: str = Field(min_length=1)
    reason: str = ""
    initial_rail: str = ""
    final_rail: str = ""
    fallback: bool = False


class ProviderPaymentClosed(_Body):
    """A token paid out to pay a provider per request (X-Cashu) is accounted for: the change it brought back (if
    any) was credited in the same command, or it was taken back whole, or it is known to be gone. Moves no money
    itself; it ends the recovery of that token, once."""

    kind: Literal["provider_payment_closed"] = "provider_payment_closed"
    payout_id: str = Field(min_length=1)
    outcome: Literal["change", "spent", "reclaimed", "lost"]
    change_msat: Amount = 0
    reason: str = ""


HoldState = Literal["held", "awaiting_approval"]


class Reserved(_Body):
    kind: Literal["reserved"] = "reserved"
    rid: str = Field(min_length=1)
    attempt: Attempt = Field("", description=ATTEMPT_DOC)
    amount_msat: Amount
    output_tokens: Count
    expires_at_ms: Count
    provider: str = ""
    model: str = ""
    state: HoldState = "held"
    approval_deadline_ms: Optional[Count] = None

    @model_validator(mode="after")
    def _deadline(self) -> "Reserved":
        if (self.state == "awaiting_approval") != (self.approval_deadline_ms is not None):
            raise ValueError("approval_deadline_ms is set exactly when the hold awaits approval")
        return self


class HoldExtended(_Body):
    """A hold grown to cover a costlier candidate the gateway falls over to: ``amount_msat`` is its new total."""

    kind: Literal["hold_extended"] = "hold_extended"
    rid: str = Field(min_length=1)
    amount_msat: Amount


class GrantDrawn(_Body):
    """Part of a gateway's grant (an open hold, rid ``~grant:<id>``) becomes the hold of one request it served:
    ``amount_msat`` moves from the grant to a new hold of ``rid``, which a Settled or Released in the same
    command then closes exactly as a reserved request's hold (available and pending do not change here)."""

    kind: Literal["grant_drawn"] = "grant_drawn"
    grant: str = Field(min_length=1)
    rid: str = Field(min_length=1)
    attempt: Attempt = Field("", description=ATTEMPT_DOC)
    amount_msat: Amount
    provider: str = ""
    model: str = ""


class Approved(_Body):
    kind: Literal["approved"] = "approved"
    rid: str = Field(min_length=1)
    attempt: Attempt = Field("", description=ATTEMPT_DOC)


class Denied(_Body):
    kind: Literal["denied"] = "denied"
    rid: str = Field(min_length=1)
    attempt: Attempt = Field("", description=ATTEMPT_DOC)
    reason: str = ""


class Settled(_Body):
    kind: Literal["settled"] = "settled"
    rid: str = Field(min_length=1)
    attempt: Attempt = Field("", description=ATTEMPT_DOC)
    cost_msat: Amount = Field(description="what the request cost, whether or not it could all be charged")
    charged_msat: Amount
    uncollectible_msat: Amount
    input_tokens: Count = 0
    output_tokens: Count = 0
    provider: str = ""
    model: str = ""
    estimated: bool = Field(False, description="usage was counted locally: the upstream reported none")
    provider_cost_msat: Optional[Amount] = Field(None, description="what the provider itself billed, when it said")
    cost_drift: bool = Field(False, description="the provider billed more than its listed price")
    covered_by: str = Field("", description="a grant whose expiry already charged for this request (it was "
                                            "reported after that): nothing is charged again")

    @model_validator(mode="after")
    def _split(self) -> "Settled":
        if self.covered_by:
            if self.charged_msat or self.uncollectible_msat:
                raise ValueError("a request covered by an expired grant's charge is not charged again")
        elif self.charged_msat + self.uncollectible_msat != self.cost_msat:
            raise ValueError("charged_msat + uncollectible_msat must equal cost_msat")
        return self


class Released(_Body):
    kind: Literal["released"] = "released"
    rid: str = Field(min_length=1)
    attempt: Attempt = Field("", description=ATTEMPT_DOC)
    reason: str = ""


class Expired(_Body):
    kind: Literal["expired"] = "expired"
    rid: str = Field(min_length=1)
    attempt: Attempt = Field("", description=ATTEMPT_DOC)
    action: Literal["charge", "release"]
    charged_msat: Amount

    @model_validator(mode="after")
    def _action(self) -> "Expired":
        if self.action == "release" and self.charged_msat != 0:
            raise ValueError("an expiry that releases charges nothing")
        return self


class Tombstoned(_Body):
    """A release/settle/expiry of a reserve attempt never journaled: that attempt's reserve, arriving later, is
    refused. With ``attempt`` "" (a caller that names no attempt) every later reserve of the rid is refused."""

    kind: Literal["tombstoned"] = "tombstoned"
    rid: str = Field(min_length=1)
    attempt: Attempt = Field("", description=ATTEMPT_DOC)
    reason: str = ""


EventBody = Annotated[
    Union[AgentCreated, TokenRotated, PolicySet, Deposited, Withdrawn, Reserved, HoldExtended, GrantDrawn, Approved,
          Denied,
          Settled,
          Released, Expired, Tombstoned, InvoiceIssued, PayoutStarted, PayoutApproved, PayoutRerouted, PayoutSettled,
          PayoutFailed, ProviderPaymentClosed],
    Field(discriminator="kind"),
]


class LedgerEvent(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    op_id: str = Field(min_length=1, description="idempotency key: reserve:<rid>, settle:<rid>, deposit:<id>, …")
    agent_id: str = Field(min_length=1)
    seq: int = Field(ge=1, strict=True, description="per-agent event number, 1-based, no gaps")
    part: int = Field(0, ge=0, strict=True, description="index of this event among its command's events")
    at_ms: Count
    prev_hash: str = Field("", pattern=r"^([0-9a-f]{64})?$", description="event_hash of the previous event")
    body: EventBody


def canonical_json(event: LedgerEvent) -> bytes:
    """Sorted keys, no whitespace, ASCII only: the same bytes for the same event on every machine."""
    data = event.model_dump(mode="json")
    body = data["body"]
    for name, empty in _LATER_FIELDS.items():
        if name in body and body[name] == empty:
            del body[name]
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


_HASHES: "OrderedDict[int, tuple[LedgerEvent, str]]" = OrderedDict()
_HASHES_MAX = 8192


def event_hash(event: LedgerEvent) -> str:
    """sha256 of the canonical JSON. The writer, the fold and the projection each need the hash of the same
    fresh event object: remember the last few thousand by identity (the entry keeps the object alive, so its id
    cannot be reused while cached) instead of serialising it three times."""
    hit = _HASHES.get(id(event))
    if hit is not None and hit[0] is event:
        return hit[1]
    digest = hashlib.sha256(canonical_json(event)).hexdigest()
    _HASHES[id(event)] = (event, digest)
    if len(_HASHES) > _HASHES_MAX:
        _HASHES.popitem(last=False)
    return digest


def verify_chain(events: Iterable[LedgerEvent], *, prev_hash: str = "",
                 start_seq: int = 1) -> tuple[bool, Optional[int]]:
    """Check one agent's events: consecutive seqs from ``start_seq``, each linked to the previous one's hash.

    Returns ``(True, None)`` or ``(False, seq)`` where ``seq`` is the position (expected seq) of the first
    event that breaks the chain. ``prev_hash``/``start_seq`` let a caller verify from a trusted checkpoint.
    """
    expected_seq = start_seq
    agent: Optional[str] = None
    for event in events:
        if agent is None:
            agent = event.agent_id
        if event.seq != expected_seq or event.prev_hash != prev_hash or event.agent_id != agent:
            return False, expected_seq
        prev_hash = event_hash(event)
        expected_seq += 1
    return True, None


class JournalEntry(BaseModel):
    """One message on the ledger stream: consecutive events of one agent, written by a single publish.

    Usually the events of one command (``op_id`` is then theirs and becomes ``Nats-Msg-Id``); a writer that
    group-commits several commands names the group in ``op_id`` while each event keeps its own.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    op_id: str = Field(min_length=1)
    agent_id: str = Field(min_length=1)
    events: list[LedgerEvent] = Field(min_length=1)
    # The gateway's record of the request a settle or release ends: journaled with it, so the request log is
    # derived from the journal (and re-derived by a new owner) instead of being a write of its own.
    record: Optional[RequestRecord] = None

    @model_validator(mode="after")
    def _consecutive(self) -> "JournalEntry":
        first = self.events[0].seq
        for i, event in enumerate(self.events):
            if event.agent_id != self.agent_id:
                raise ValueError(f"event seq {event.seq} belongs to {event.agent_id}, not {self.agent_id}")
            if event.seq != first + i:
                raise ValueError("the events of one entry must have consecutive seqs")
        return self


class JournalBatch(BaseModel):
    """One message on a partition's journal subject: the commands its owner group-committed, all or none.

    ``prev_hash`` is the sha256 of the previous batch's bytes on the same subject, so the partition's journal is
    one hash chain (per message, not per event). ``epoch`` is the owner's lease epoch; ``batch_id`` is the
    message id (``Nats-Msg-Id``), unique per owner and epoch. A batch with no entries marks a takeover: the new
    owner's first write, which fences every write a previous owner still attempts.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["batch"] = "batch"
    partition: int = Field(ge=0, strict=True)
    epoch: int = Field(ge=0, strict=True)
    batch_id: str = Field(min_length=1)
    prev_hash: str = Field("", pattern=r"^([0-9a-f]{64})?$")
    at_ms: Count
    entries: list[JournalEntry] = Field(default_factory=list)


def batch_hash(raw: bytes) -> str:
    """The chain link of a batch: the sha256 of exactly the bytes that were journaled."""
    return hashlib.sha256(raw).hexdigest()


def verify_batches(raws: Iterable[bytes], prev_hash: str = "") -> tuple[bool, Optional[int]]:
    """Check one partition's chain of batches (raw message bytes in stream order): ``(True, None)`` or
    ``(False, index)`` of the first batch whose ``prev_hash`` does not link."""
    for i, raw in enumerate(raws):
        batch = JournalBatch.model_validate_json(raw)
        if batch.prev_hash != prev_hash:
            return False, i
        prev_hash = batch_hash(raw)
    return True, None
