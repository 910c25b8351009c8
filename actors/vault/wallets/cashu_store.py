"""What the Cashu wallet remembers besides its proofs, in the same SQLite file as Nutshell's proof tables.

Sharing the file lets one transaction store the proofs a mint call produced, retire the proofs it spent and
record what that call was for (a deposit receipt, an issued payout token, a paid melt). Tables:

- ``arbstr_intents``: a mint call about to be made — its outputs (keyset + counter range + amounts) and the
  inputs it spends. Written before the call, deleted in the transaction that records the result. An intent
  left open by a crash is replayed (same outputs: the mint never signs them twice) or its signatures are
  fetched back with NUT-09 restore.
- ``arbstr_receipts``: tokens this wallet redeemed (deposit id → amount): a token posted again after a crash
  that came before the vault's journal is credited with the same answer instead of "spent". The token itself
  is not kept.
- ``arbstr_mint_quotes``: deposit invoices (mint quotes) and the settle index each got when minted.
- ``arbstr_melts``: Lightning payouts by melt: the change outputs of every attempt, the outcome.
- ``arbstr_token_payouts``: the token issued for a payout id, so it is issued once and handed out again.
- ``arbstr_meta``: counters (the settle index).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from cashu.core.db import Connection

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS arbstr_intents (
        op_id TEXT NOT NULL, kind TEXT NOT NULL, keyset_id TEXT NOT NULL, counter_start INTEGER NOT NULL,
        amounts TEXT NOT NULL, send_from INTEGER NOT NULL, inputs TEXT NOT NULL, created_ms INTEGER NOT NULL,
        PRIMARY KEY (op_id, counter_start))""",
    """CREATE TABLE IF NOT EXISTS arbstr_receipts (
        deposit_id TEXT PRIMARY KEY, amount_sat INTEGER NOT NULL, reference TEXT NOT NULL,
        created_ms INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS arbstr_mint_quotes (
        quote_id TEXT PRIMARY KEY, payment_hash TEXT NOT NULL, amount_sat INTEGER NOT NULL,
        expires_at INTEGER NOT NULL, state TEXT NOT NULL, settle_index INTEGER)""",
    """CREATE TABLE IF NOT EXISTS arbstr_melts (
        quote_id TEXT PRIMARY KEY, payment_hash TEXT NOT NULL, amount_sat INTEGER NOT NULL,
        inputs_sat INTEGER NOT NULL, change TEXT NOT NULL, state TEXT NOT NULL, fee_msat INTEGER NOT NULL,
        preimage TEXT NOT NULL, reason TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS arbstr_token_payouts (
        payout_id TEXT PRIMARY KEY, amount_sat INTEGER NOT NULL, fee_sat INTEGER NOT NULL, token TEXT NOT NULL,
        created_ms INTEGER NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS arbstr_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)""",
]


def _now_ms() -> int:
    return int(time.time() * 1000)


async def create_schema(conn: Connection) -> None:
    for stmt in SCHEMA:
        await conn.execute(stmt)


# --- intents -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Intent:
    """A mint call that signs ``amounts`` at counters ``start…`` of ``keyset_id``, spending ``inputs``.

    ``kind``: "redeem" (op = deposit id; swap a received token), "token" (op = payout id; swap to issue a
    payout token: outputs from ``send_from`` on are the token), "mint" (op = mint quote id; no inputs).
    """

    op_id: str
    kind: str
    keyset_id: str
    start: int
    amounts: list[int]
    send_from: int
    inputs: list[dict[str, Any]] = field(default_factory=list)


async def put_intent(conn: Connection, i: Intent) -> None:
    await conn.execute(
        "INSERT INTO arbstr_intents (op_id, kind, keyset_id, counter_start, amounts, send_from, inputs, created_ms)"
        " VALUES (:op, :kind, :ks, :start, :amounts, :send_from, :inputs, :now)",
        {"op": i.op_id, "kind": i.kind, "ks": i.keyset_id, "start": i.start, "amounts": json.dumps(i.amounts),
         "send_from": i.send_from, "inputs": json.dumps(i.inputs), "now": _now_ms()})


async def drop_intent(conn: Connection, i: Intent) -> None:
    await conn.execute("DELETE FROM arbstr_intents WHERE op_id = :op AND counter_start = :start",
                       {"op": i.op_id, "start": i.start})


async def intents(conn: Connection, op_id: Optional[str] = None) -> list[Intent]:
    where, values = ("WHERE op_id = :op", {"op": op_id}) if op_id is not None else ("", {})
    rows = await conn.fetchall(f"SELECT * FROM arbstr_intents {where} ORDER BY created_ms, counter_start", values)
    return [Intent(r["op_id"], r["kind"], r["keyset_id"], int(r["counter_start"]), json.loads(r["amounts"]),
                   int(r["send_from"]), json.loads(r["inputs"])) for r in rows]


# --- receipts ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Receipt:
    deposit_id: str
    amount_sat: int
    reference: str


async def put_receipt(conn: Connection, r: Receipt) -> None:
    await conn.execute("INSERT OR IGNORE INTO arbstr_receipts (deposit_id, amount_sat, reference, created_ms)"
                       " VALUES (:id, :amount, :ref, :now)",
                       {"id": r.deposit_id, "amount": r.amount_sat, "ref": r.reference, "now": _now_ms()})


async def receipt(conn: Connection, deposit_id: str) -> Optional[Receipt]:
    r = await conn.fetchone("SELECT * FROM arbstr_receipts WHERE deposit_id = :id", {"id": deposit_id})
    return Receipt(r["deposit_id"], int(r["amount_sat"]), r["reference"]) if r else None


# --- mint quotes (deposit invoices) ------------------------------------------------------------------------
@dataclass(frozen=True)
class MintQuoteRow:
    quote_id: str
    payment_hash: str
    amount_sat: int
    expires_at: int
    state: str  # open | issued | expired | lost
    settle_index: Optional[int]


def _mint_quote(r: Any) -> MintQuoteRow:
    return MintQuoteRow(r["quote_id"], r["payment_hash"], int(r["amount_sat"]), int(r["expires_at"]), r["state"],
                        None if r["settle_index"] is None else int(r["settle_index"]))


async def put_mint_quote(conn: Connection, q: MintQuoteRow) -> None:
    await conn.execute("INSERT INTO arbstr_mint_quotes (quote_id, payment_hash, amount_sat, expires_at, state,"
                       " settle_index) VALUES (:id, :hash, :amount, :exp, :state, NULL)",
                       {"id": q.quote_id, "hash": q.payment_hash, "amount": q.amount_sat, "exp": q.expires_at,
                        "state": q.state})


async def mint_quote(conn: Connection, quote_id: str) -> Optional[MintQuoteRow]:
    r = await conn.fetchone("SELECT * FROM arbstr_mint_quotes WHERE quote_id = :id", {"id": quote_id})
    return _mint_quote(r) if r else None


async def open_mint_quotes(conn: Connection) -> list[MintQuoteRow]:
    rows = await conn.fetchall("SELECT * FROM arbstr_mint_quotes WHERE state = 'open' ORDER BY rowid")
    return [_mint_quote(r) for r in rows]


async def settled_after(conn: Connection, settle_index: int) -> list[MintQuoteRow]:
    rows = await conn.fetchall("SELECT * FROM arbstr_mint_quotes WHERE settle_index > :i ORDER BY settle_index",
                               {"i": settle_index})
    return [_mint_quote(r) for r in rows]


async def set_mint_quote_state(conn: Connection, quote_id: str, state: str) -> None:
    await conn.execute("UPDATE arbstr_mint_quotes SET state = :state WHERE quote_id = :id",
                       {"state": state, "id": quote_id})


async def issue_mint_quote(conn: Connection, quote_id: str) -> int:
    """Marks a deposit quote minted and gives it the next settle index (> 0, never reused)."""
    await conn.execute("INSERT OR IGNORE INTO arbstr_meta (key, value) VALUES ('settle_index', 0)")
    await conn.execute("UPDATE arbstr_meta SET value = value + 1 WHERE key = 'settle_index'")
    r = await conn.fetchone("SELECT value FROM arbstr_meta WHERE key = 'settle_index'")
    index = int(r["value"])  # type: ignore[index]
    await conn.execute("UPDATE arbstr_mint_quotes SET state = 'issued', settle_index = :i WHERE quote_id = :id",
                       {"i": index, "id": quote_id})
    return index


# --- melts (Lightning payouts) -----------------------------------------------------------------------------
@dataclass(frozen=True)
class MeltRow:
    quote_id: str
    payment_hash: str
    amount_sat: int
    inputs_sat: int
    change: list[list[Any]]  # [keyset id, counter start, n] of every attempt's blank outputs
    state: str  # sending | unsent | paid | failed
    fee_msat: int = 0
    preimage: str = ""
    reason: str = ""


async def melt(conn: Connection, quote_id: str) -> Optional[MeltRow]:
    r = await conn.fetchone("SELECT * FROM arbstr_melts WHERE quote_id = :id", {"id": quote_id})
    if r is None:
        return None
    return MeltRow(r["quote_id"], r["payment_hash"], int(r["amount_sat"]), int(r["inputs_sat"]),
                   json.loads(r["change"]), r["state"], int(r["fee_msat"]), r["preimage"], r["reason"])


async def put_melt(conn: Connection, m: MeltRow) -> None:
    await conn.execute(
        "INSERT INTO arbstr_melts (quote_id, payment_hash, amount_sat, inputs_sat, change, state, fee_msat,"
        " preimage, reason) VALUES (:id, :hash, :amount, :inputs, :change, :state, :fee, :preimage, :reason)"
        " ON CONFLICT (quote_id) DO UPDATE SET inputs_sat = :inputs, change = :change, state = :state,"
        " fee_msat = :fee, preimage = :preimage, reason = :reason",
        {"id": m.quote_id, "hash": m.payment_hash, "amount": m.amount_sat, "inputs": m.inputs_sat,
         "change": json.dumps(m.change), "state": m.state, "fee": m.fee_msat, "preimage": m.preimage,
         "reason": m.reason})


# --- token payouts -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenPayout:
    payout_id: str
    amount_sat: int
    fee_sat: int
    token: str


async def token_payout(conn: Connection, payout_id: str) -> Optional[TokenPayout]:
    r = await conn.fetchone("SELECT * FROM arbstr_token_payouts WHERE payout_id = :id", {"id": payout_id})
    return TokenPayout(r["payout_id"], int(r["amount_sat"]), int(r["fee_sat"]), r["token"]) if r else None


async def put_token_payout(conn: Connection, t: TokenPayout) -> None:
    await conn.execute("INSERT INTO arbstr_token_payouts (payout_id, amount_sat, fee_sat, token, created_ms)"
                       " VALUES (:id, :amount, :fee, :token, :now)",
                       {"id": t.payout_id, "amount": t.amount_sat, "fee": t.fee_sat, "token": t.token,
                        "now": _now_ms()})


# --- proofs (Nutshell's tables, read the way the wallet needs them) ----------------------------------------
async def known_secrets(conn: Connection, secrets: list[str]) -> set[str]:
    """Which of ``secrets`` the wallet already has as a proof (held or spent)."""
    if not secrets:
        return set()
    names = {f"s{i}": s for i, s in enumerate(secrets)}
    marks = ", ".join(f":{k}" for k in names)
    rows = await conn.fetchall(f"SELECT secret FROM proofs WHERE secret IN ({marks})"
                               f" UNION SELECT secret FROM proofs_used WHERE secret IN ({marks})", names)
    return {r["secret"] for r in rows}


async def held_sat(conn: Connection, keyset_ids: list[str]) -> int:
    """The value of every proof the wallet holds in these keysets, reserved ones included."""
    if not keyset_ids:
        return 0
    names = {f"k{i}": k for i, k in enumerate(keyset_ids)}
    marks = ", ".join(f":{k}" for k in names)
    r = await conn.fetchone(f"SELECT COALESCE(SUM(amount), 0) AS total FROM proofs WHERE id IN ({marks})", names)
    return int(r["total"]) if r else 0  # type: ignore[index]
