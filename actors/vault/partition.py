"""One partition of the ledger as its owner holds it: every account in it, folded, and where its journal stands.

Pure: batches in, state out. The owner folds a snapshot plus the journal's tail into this at takeover, then
applies its own batches as they are acked.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Iterable, Optional

from schemas.ledger import JournalBatch, JournalEntry, LedgerEvent
from schemas.vault import Books

from .fold import AccountState, LedgerViolation, apply_event

log = logging.getLogger("arbstr.vault.partition")


@dataclass
class PartitionState:
    partition: int
    agents: dict[str, AccountState] = field(default_factory=dict)
    last_seq: int = 0  # stream sequence of the newest message on the partition's subject: the fencing expectation
    last_hash: str = ""  # sha256 of the newest batch's bytes: the next batch's prev_hash
    epoch: int = 0  # lease epoch of the newest batch
    corrupt: set[str] = field(default_factory=set)  # agents whose journal does not fold: frozen, never written
    loaded_from_seq: int = 0  # the snapshot's sequence this state was loaded from (not saved: where a load began)

    def account(self, agent_id: str) -> AccountState:
        state = self.agents.get(agent_id)
        return state if state is not None else AccountState(agent_id=agent_id)

    def known(self) -> list[AccountState]:
        return [s for s in self.agents.values() if s.created]


def fold_entry(part: PartitionState, entry: JournalEntry, chained: bool) -> list[LedgerEvent]:
    """Apply what is new in one command's events (all or none); returns the events that were. ``chained``: a
    legacy per-agent entry (events linked by ``prev_hash``) rather than an entry of a batch."""
    if entry.agent_id in part.corrupt:
        return []
    state = part.agents.get(entry.agent_id) or AccountState(agent_id=entry.agent_id)
    fresh = [e for e in entry.events if e.seq > state.seq]
    if not fresh:
        return []
    # In place, no scratch copy (a copy costs the account's recent history per entry, which would make a replay
    # quadratic): an entry that does not fold freezes the account, whose figures then count for nothing but the
    # books' alarm (books of a partition with a corrupt account never balance).
    try:
        for event in fresh:
            apply_event(state, event, chained=chained)
    except LedgerViolation as e:
        # Never trust, never write on top of, a journal that does not fold: the account is frozen.
        log.critical("partition %s: journal of %s does not fold: %s", part.partition, entry.agent_id, e)
        part.corrupt.add(entry.agent_id)
        return []
    part.agents[entry.agent_id] = state
    return fresh


def fold_batch(part: PartitionState, batch: JournalBatch, seq: int, digest: str) -> list[tuple[JournalEntry,
                                                                                                list[LedgerEvent]]]:
    """Apply a batch read back from the journal (a replay, or another owner's write); returns each entry with
    its newly applied events."""
    out = [(entry, fold_entry(part, entry, chained=False)) for entry in batch.entries]
    part.last_seq, part.last_hash, part.epoch = seq, digest, max(part.epoch, batch.epoch)
    return out


def books(states: Iterable[AccountState], ledger_seq: int, corrupt: bool = False) -> Books:
    """Σ deposits − Σ withdrawals = Σ available + Σ pending (holds and payouts) + Σ spent, over the accounts."""
    states = [s for s in states if s.created]
    deposits = sum(s.deposited_msat for s in states)
    withdrawals = sum(s.withdrawn_msat for s in states)
    balances = sum(s.available_msat for s in states)
    payouts = sum(s.payout_pending_msat for s in states)
    pending = sum(s.pending_msat for s in states) + payouts
    spent = sum(s.spent_msat for s in states)
    ok = deposits - withdrawals == balances + pending + spent and all(s.available_msat >= 0 for s in states) \
        and not corrupt
    return Books(deposits_msat=deposits, withdrawals_msat=withdrawals, balances_msat=balances,
                 pending_msat=pending, spent_msat=spent, uncollectible_msat=sum(s.uncollectible_msat for s in states),
                 agents=len(states), balanced=ok, ledger_seq=ledger_seq, payouts_pending_msat=payouts)


def merge_books(parts: Iterable[Books], ledger_seq: Optional[int] = None) -> Books:
    """The vault's books from each partition owner's: sums, balanced only if every part is."""
    parts = list(parts)
    keys = ("deposits_msat", "withdrawals_msat", "balances_msat", "pending_msat", "spent_msat",
            "uncollectible_msat", "agents", "payouts_pending_msat")
    total = {k: sum(getattr(b, k) for b in parts) for k in keys}
    balanced = all(b.balanced for b in parts) and total["deposits_msat"] - total["withdrawals_msat"] == (
        total["balances_msat"] + total["pending_msat"] + total["spent_msat"])
    seq = ledger_seq if ledger_seq is not None else max((b.ledger_seq for b in parts), default=0)
    return Books(**total, balanced=balanced, ledger_seq=seq)
