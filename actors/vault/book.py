"""Every agent's folded account, exactly as the ledger stream has it, plus the token index.

Fed by the journal follower (every entry, in stream order, whoever wrote it) and by this instance's own
writes right after their ack; an entry already applied is skipped by its per-agent seq.

Two listeners: ``on_events`` hears events as soon as they fold (an own write may be ahead of the follower), and
``on_ordered`` hears them in stream order only — an own write is held back until the follower passes its
sequence, so a consumer keyed by stream sequence (the DuckDB projection) never sees 10 before 9.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

from schemas.ledger import JournalEntry, LedgerEvent
from schemas.vault import Books

from .fold import AccountState, LedgerViolation, apply_event

log = logging.getLogger("arbstr.vault.book")


@dataclass
class Slot:
    state: AccountState
    stream_seq: int = 0  # stream sequence of the agent's newest entry: the expectation of the next append
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    caught_up_at: float = 0.0  # monotonic time the last refusal catch-up started: it saw every write acked before


class Book:
    def __init__(self, on_events: Optional[Callable[[list[LedgerEvent], int, AccountState], None]] = None,
                 on_ordered: Optional[Callable[[list[LedgerEvent], int], None]] = None) -> None:
        self.slots: dict[str, Slot] = {}
        self._by_token: dict[str, str] = {}
        self._on_events = on_events
        self._on_ordered = on_ordered
        self._ahead: dict[int, list[LedgerEvent]] = {}  # own writes folded before the follower reached them
        self.top_seq = 0  # highest stream sequence folded, own writes included
        self.corrupt: set[str] = set()

    def slot(self, agent_id: str) -> Slot:
        s = self.slots.get(agent_id)
        if s is None:
            s = self.slots[agent_id] = Slot(AccountState(agent_id=agent_id))
        return s

    def apply_entry(self, entry: JournalEntry, stream_seq: int, in_order: bool = True) -> list[LedgerEvent]:
        """Apply what is new in ``entry``; returns the events that were. ``in_order`` is False for an own write
        applied on its ack, before the follower has handed over every entry below it."""
        fresh = self._fold(entry, stream_seq)
        if in_order:
            self._ordered(fresh or self._ahead.pop(stream_seq, []), stream_seq)
        elif fresh:
            self._ahead[stream_seq] = fresh
        return fresh

    def _ordered(self, events: list[LedgerEvent], stream_seq: int) -> None:
        if events and self._on_ordered is not None:
            self._on_ordered(events, stream_seq)

    def _fold(self, entry: JournalEntry, stream_seq: int) -> list[LedgerEvent]:
        slot = self.slot(entry.agent_id)
        fresh = [e for e in entry.events if e.seq > slot.state.seq]
        if fresh:
            # All or nothing: a scratch copy when several events must land together.
            target = slot.state if len(fresh) == 1 else slot.state.copy()
            old_token = slot.state.token_hash
            try:
                for event in fresh:
                    apply_event(target, event)
            except LedgerViolation:
                # Never trust, never write on top of, a journal that does not fold: the agent is frozen.
                log.critical("ledger entry at stream seq %s does not fold for agent %s", stream_seq, entry.agent_id)
                self.corrupt.add(entry.agent_id)
                return []
            slot.state = target
            if target.token_hash != old_token:
                self._by_token.pop(old_token, None)
                if target.token_hash:
                    self._by_token[target.token_hash] = entry.agent_id
            self.top_seq = max(self.top_seq, stream_seq)
            if self._on_events is not None:
                self._on_events(fresh, stream_seq, target)
        slot.stream_seq = max(slot.stream_seq, stream_seq)
        return fresh

    def already_applied(self, agent_id: str, last_event_seq: int, stream_seq: int) -> bool:
        slot = self.slots.get(agent_id)
        if slot is None or slot.state.seq < last_event_seq:
            return False
        slot.stream_seq = max(slot.stream_seq, stream_seq)
        self._ordered(self._ahead.pop(stream_seq, []), stream_seq)
        return True

    def agent_by_token(self, token_hash: str) -> Optional[str]:
        """The agent whose current token hashes to ``token_hash``; compared in constant time."""
        agent_id = self._by_token.get(token_hash)
        if agent_id is None:
            return None
        slot = self.slots.get(agent_id)
        if slot is None or not hmac.compare_digest(slot.state.token_hash.encode(), token_hash.encode()):
            return None
        return agent_id

    def agents(self) -> list[AccountState]:
        return [s.state for s in self.slots.values() if s.state.created]

    def deposited_msat(self) -> int:
        """Σ deposits over every agent: the vault-wide side of the deposit bound."""
        return sum(s.state.deposited_msat for s in self.slots.values())

    def books(self, ledger_seq: int) -> Books:
        """Σ deposits − Σ withdrawals = Σ available + Σ pending (holds and payouts) + Σ spent, over every agent."""
        states = self.agents()
        deposits = sum(s.deposited_msat for s in states)
        withdrawals = sum(s.withdrawn_msat for s in states)
        balances = sum(s.available_msat for s in states)
        payouts = sum(s.payout_pending_msat for s in states)
        pending = sum(s.pending_msat for s in states) + payouts
        spent = sum(s.spent_msat for s in states)
        ok = deposits - withdrawals == balances + pending + spent and all(s.available_msat >= 0 for s in states) \
            and not self.corrupt
        return Books(deposits_msat=deposits, withdrawals_msat=withdrawals, balances_msat=balances,
                     pending_msat=pending, spent_msat=spent,
                     uncollectible_msat=sum(s.uncollectible_msat for s in states), agents=len(states),
                     balanced=ok, ledger_seq=ledger_seq, payouts_pending_msat=payouts)
