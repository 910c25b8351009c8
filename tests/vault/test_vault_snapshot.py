"""A partition's snapshot bytes: written by orjson from the dataclasses directly, exactly the bytes the
``asdict`` encoding wrote (snapshots already saved stay readable, and a new one decodes to the same state)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

import orjson

from actors.vault import decide
from actors.vault.fold import AccountState, Invoice, Payout, PayoutEnd
from actors.vault.partition import PartitionState
from actors.vault.snapshot import FORMAT, _default, decode, encode
from schemas.router import Envelope
from schemas.vault import AgentPolicy

ENV = Envelope(input_tokens=1, output_tokens=9, input_rate=1_000_000, output_rate=1_000_000, max_output_tokens=9)


def asdict_encode(part: PartitionState) -> bytes:
    """The encoding as it was written before (``dataclasses.asdict`` per account)."""
    doc: dict[str, Any] = {
        "format": FORMAT, "partition": part.partition, "last_seq": part.last_seq, "last_hash": part.last_hash,
        "epoch": part.epoch, "corrupt": sorted(part.corrupt),
        "agents": [asdict(s) | {"policy": s.policy} for s in part.agents.values()],
    }
    return orjson.dumps(doc, default=_default)


def busy_account() -> AccountState:
    """Every kind of thing an account holds: open holds, resolutions of each kind, tombstones, attempts, a rolling
    window, payouts open and done, invoices, provider payments, a policy."""
    ledger = decide.Ledger("a")
    t = 1_000_000
    policy = AgentPolicy(max_tx_msat=10**9, daily_limit_msat=10**12)
    ledger.run(decide.create_agent(ledger.state, "a", "h" * 64, policy, t), t)
    ledger.run(decide.deposit(ledger.state, "d", 10**9, "sim", "ref", t), t)
    for n in range(60):
        attempt = f"a{n}" if n % 2 else ""
        ledger.run(decide.reserve(ledger.state, f"r{n}", ENV, t, ttl_ms=60_000, provider="p", model="m",
                                  attempt=attempt), t)
        if n % 3:
            ledger.run(decide.settle(ledger.state, f"r{n}", 5_000, t, attempt=attempt, input_tokens=3), t)
        elif n % 5 == 0:
            ledger.run(decide.release(ledger.state, f"r{n}", "failed", t, attempt=attempt), t)
    ledger.run(decide.release(ledger.state, "never", "gone", t, attempt="zz"), t)
    state = ledger.state
    payout = Payout(payout_id="po", amount_msat=5, fee_limit_msat=1, rail="cashu", reference="x", destination="y",
                    started_at_ms=t, approval_deadline_ms=t + 5)
    state.payouts_done["done"] = PayoutEnd(kind="settled", payout=payout, charged_msat=6, fee_msat=1, reason="",
                                           at_ms=t)
    state.invoices["inv"] = Invoice(deposit_id="inv", amount_msat=9, rail="lightning", reference="r", bolt11="lnbc",
                                    expires_at_ms=t)
    state.provider_payments["pp"] = ("spent", 3)
    state.payout_keys["k"] = "po"
    return state


def test_snapshot_bytes_are_those_of_the_asdict_encoding_and_decode_to_the_same_state() -> None:
    part = PartitionState(7, agents={"a": busy_account(), "b": AccountState(agent_id="b")}, last_seq=41,
                          last_hash="ab" * 32, epoch=3, corrupt={"z", "y"})
    raw = encode(part)
    assert raw == asdict_encode(part)
    back = decode(raw)
    assert back.agents == part.agents
    assert (back.last_seq, back.last_hash, back.epoch, back.corrupt) == (41, "ab" * 32, 3, {"y", "z"})
