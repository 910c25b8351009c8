"""Every account as this instance knows it: the read model beside the partitions it owns.

Accounts of partitions this instance owns are the owners' own objects (authoritative, updated as their batches
are acked). Accounts of other partitions are folded from the journal by a follower (a few milliseconds behind
their owners): good for admin reads, reports, reconciliation and finding an agent by its token, never for a
decision about money — those are made by the owner.

``on_ordered`` hears every journaled event in stream order (an own batch is held until the follower passes its
sequence), so a consumer keyed by stream sequence (the DuckDB projection) never sees 10 before 9.
"""

from __future__ import annotations

import hmac
import logging
from typing import Callable, Iterable, Optional

from schemas.ledger import JournalBatch, JournalEntry
from schemas.vault import Books

from .fold import AccountState
from .partition import PartitionState, books, fold_entry

log = logging.getLogger("arbstr.vault.book")

class Book:
    def __init__(self, partition_of: Callable[[str], int]) -> None:
        self.partition_of = partition_of
        self.parts: dict[int, PartitionState] = {}
        self._by_token: dict[str, str] = {}
        self._token_of: dict[str, str] = {}
        self.owned: dict[int, int] = {}  # partition -> the epoch this instance writes it under
        # Owned partitions whose journal showed a batch of a later epoch (another owner's, before this instance
        # noticed its lease was gone): the follower skipped it, so the owner's memory is not the read model's.
        self.overtaken: set[int] = set()
        self.top_seq: dict[int, int] = {}  # highest sequence folded per stream, own batches included
        # Partitions whose read model folded a batch that does not chain onto the one before (a batch it skipped
        # while its owner was changing, say): good for reads, not as the starting point of a takeover.
        self.unchained: set[int] = set()

    # --- accounts --------------------------------------------------------------------------------------
    def part(self, partition: int) -> PartitionState:
        p = self.parts.get(partition)
        if p is None:
            p = self.parts[partition] = PartitionState(partition)
        return p

    def state(self, agent_id: str) -> AccountState:
        return self.part(self.partition_of(agent_id)).account(agent_id)

    def agents(self) -> list[AccountState]:
        return [s for p in self.parts.values() for s in p.known()]

    def corrupt(self) -> set[str]:
        return {a for p in self.parts.values() for a in p.corrupt}

    # --- feeding ---------------------------------------------------------------------------------------
    def adopt(self, part: PartitionState, stream: int = 0) -> None:
        """A partition as loaded (snapshot + tail): an owner's (its objects stay shared) or the read model's."""
        self.parts[part.partition] = part
        self.unchained.discard(part.partition)
        for state in part.agents.values():
            self._index(state.agent_id, state.token_hash)
        self.top_seq[stream] = max(self.top_seq.get(stream, 0), part.last_seq)

    def apply_batch(self, batch: JournalBatch, stream: int, seq: int, digest: str) -> None:
        """A batch read by the follower (another owner's, or a replay): folded unless this instance owns it."""
        part = self.part(batch.partition)
        if batch.partition in self.owned or seq <= part.last_seq:
            return
        if batch.prev_hash != part.last_hash:
            self.unchained.add(batch.partition)
        for entry in batch.entries:
            fold_entry(part, entry, chained=False)
            self._index(entry.agent_id, part.account(entry.agent_id).token_hash)
        part.last_seq, part.last_hash, part.epoch = seq, digest, max(part.epoch, batch.epoch)
        self.top_seq[stream] = max(self.top_seq.get(stream, 0), seq)

    def apply_legacy(self, entry: JournalEntry, stream: int, seq: int) -> None:
        """A journal entry written before partitions (one agent, events chained by ``prev_hash``)."""
        part = self.part(self.partition_of(entry.agent_id))
        fold_entry(part, entry, chained=True)
        self._index(entry.agent_id, part.account(entry.agent_id).token_hash)
        self.top_seq[stream] = max(self.top_seq.get(stream, 0), seq)

    def committed(self, stream: int, seq: int, entries: Iterable[tuple[JournalEntry, AccountState]]) -> None:
        """An own batch, acked: its accounts are already the owner's objects; index their tokens."""
        for entry, state in entries:
            self._index(entry.agent_id, state.token_hash)
        self.top_seq[stream] = max(self.top_seq.get(stream, 0), seq)

    def seen(self, stream: int, seq: int) -> None:
        self.top_seq[stream] = max(self.top_seq.get(stream, 0), seq)

    # --- tokens ----------------------------------------------------------------------------------------
    def _index(self, agent_id: str, token_hash: str) -> None:
        old = self._token_of.get(agent_id, "")
        if old == token_hash:
            return
        if old and self._by_token.get(old) == agent_id:
            del self._by_token[old]
        if token_hash:
            self._by_token[token_hash] = agent_id
            self._token_of[agent_id] = token_hash

    def agent_by_token(self, token_hash: str) -> Optional[str]:
        """The agent whose current token hashes to ``token_hash``; compared in constant time."""
        agent_id = self._by_token.get(token_hash)
        if agent_id is None:
            return None
        state = self.state(agent_id)
        if not hmac.compare_digest(state.token_hash.encode(), token_hash.encode()):
            return None
        return agent_id

    def deposited_msat(self) -> int:
        """Σ deposits over every agent this instance knows: the vault-wide side of the deposit bound."""
        return sum(s.deposited_msat for s in self.agents())

    # --- the books -------------------------------------------------------------------------------------
    def books(self, ledger_seq: int) -> Books:
        return books(self.agents(), ledger_seq, corrupt=bool(self.corrupt()))

