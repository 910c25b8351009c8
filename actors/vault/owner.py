"""One partition while this instance owns it: loaded (snapshot + the journal's tail), fenced (a takeover batch is
its first write), served (group commit), timed (expiry from memory) and snapshotted now and then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional

from actors.runtime.tasks import cancel_and_wait, every
from schemas.ledger import Approved, JournalBatch, JournalEntry, PayoutStarted, Reserved, batch_hash

from .expiry import Timers
from .fold import AccountState
from .group_commit import Committed, GroupCommit
from .ownership import Claim
from .partition import PartitionState, fold_batch
from .partition_journal import Fenced, PartitionJournal
from .snapshot import encode
from .snapshots import SnapshotStore

log = logging.getLogger("arbstr.vault.owner")

MARKER_ATTEMPTS = 20
APPEND_TRY_S = 2.0  # one try of a journal write; an election leaves a request unanswered for its whole timeout
APPEND_BUDGET_S = 20.0  # a batch is tried again this long (elections take seconds) before the writer gives up


class Unchained(Exception):
    """A batch of the tail does not follow the state it is folded onto."""


class PartitionOwner:
    def __init__(self, claim: Claim, journal: PartitionJournal, snapshots: SnapshotStore, timers: Timers,
                 committed: Committed, broken: Callable[[int, str], None], snapshot_interval_s: float,
                 warm: Optional[Callable[[], Optional[PartitionState]]] = None) -> None:
        self.claim = claim
        self.partition = claim.partition
        self.journal = journal
        self.snapshots = snapshots
        self.timers = timers
        self._committed = committed
        self._broken = broken
        self.snapshot_interval_s = snapshot_interval_s
        self._warm = warm  # the read model's copy of the partition, when there is one to start from
        self.part = PartitionState(claim.partition)
        self.writer: Optional[GroupCommit] = None
        self._snap_task: Optional[asyncio.Task[None]] = None
        self._last_snapshot_seq = 0
        self.snapshot_seq = 0  # where the load started: batches after it are the tail a takeover folded
        self.loaded_in_s = 0.0
        self.snapshot_in_s = 0.0  # of loaded_in_s: reading the snapshot (the rest is reading and folding the tail)
        self.tail_batches = 0
        self.warm = False  # loaded from the read model's copy, not a snapshot

    # --- takeover --------------------------------------------------------------------------------------
    async def load(self) -> None:
        """The read model's copy (else the newest snapshot), then every batch after it: the partition exactly as
        journaled."""
        started = time.monotonic()
        warm = self._warm() if self._warm is not None else None
        self.warm = warm is not None
        snap = warm if warm is not None else await self.snapshots.load(self.partition)
        self.snapshot_in_s = time.monotonic() - started
        self.part = snap if snap is not None else PartitionState(self.partition)
        self._last_snapshot_seq = self.snapshot_seq = self.part.last_seq
        try:
            self.tail_batches = len(await self._fold_tail(chained=warm is not None))
        except Unchained as e:
            # The read model's copy is not what the journal says: start again from the snapshot.
            log.warning("partition %s: the read model's copy does not lead on to the journal (%s); loading the "
                        "snapshot", self.partition, e)
            snap = await self.snapshots.load(self.partition)
            self.warm = False
            self.part = snap if snap is not None else PartitionState(self.partition)
            self._last_snapshot_seq = self.snapshot_seq = self.part.last_seq
            self.tail_batches = len(await self._fold_tail())
        self.loaded_in_s = time.monotonic() - started

    async def _fold_tail(self, chained: bool = False) -> list[tuple[JournalBatch, int]]:
        """``chained``: check that each batch names the one before as its ``prev_hash`` (a start not read from
        the journal itself, the read model's copy, is proven by its first batch)."""
        folded = []
        async for seq, raw in self.journal.tail(self.partition, self.part.last_seq):
            batch = JournalBatch.model_validate_json(raw)
            if chained and batch.prev_hash != self.part.last_hash:
                raise Unchained(f"batch at {seq} does not follow {self.part.last_seq}")
            fold_batch(self.part, batch, seq, batch_hash(raw))
            folded.append((batch, seq))
        return folded

    async def start(self) -> list[tuple[JournalBatch, int]]:
        """Fence, then serve. Returns the batches a previous owner wrote after our load (rare: they are folded)."""
        self.writer = GroupCommit(self.part, self.claim.epoch, self._append, self._committed,
                                  lambda reason: self._broken(self.partition, reason))
        late: list[tuple[JournalBatch, int]] = []
        for _ in range(MARKER_ATTEMPTS):
            try:
                await self.writer.write_marker()
                break
            except Fenced:
                # The previous owner wrote after we read (it did not know yet): fold that too, then fence again.
                late += await self._fold_tail()
        else:
            raise RuntimeError(f"partition {self.partition}: could not fence the previous owner")
        for state in self.part.agents.values():
            self.timers.arm_account(state)
        self.writer.start()
        self._snap_task = asyncio.create_task(self._snapshot_forever(), name=f"snapshot-p{self.partition}")
        return late

    async def _append(self, raw: bytes, batch_id: str, expected: int) -> int:
        """A fenced write that tells a lost ack from a lost race: the journal's last batch says which.

        Tried again, within a budget of time, while the journal cannot answer (a JetStream election sends requests
        into the void for seconds): asking again is safe, the expected sequence lets at most one copy land and a
        copy that already landed is found by its batch id. Only a batch still unaccounted for at the end of the
        budget stops the writer (the partition is then handed back and loaded afresh)."""
        deadline = time.monotonic() + APPEND_BUDGET_S
        pause = 0.05
        while True:
            try:
                return await self.journal.append(self.partition, raw, batch_id, expected, timeout_s=APPEND_TRY_S)
            except Fenced:
                landed = await self._landed_within(batch_id, deadline)
                if landed is not None:
                    return landed
                raise
            except Exception as e:  # a timeout, no stream leader, a lost connection: it may have landed
                try:
                    landed = await self._landed(batch_id)
                except Exception:
                    landed = None  # not known yet: the next try finds out (it lands, or is fenced by the first)
                if landed is not None:
                    return landed
                if time.monotonic() + pause >= deadline:
                    raise
                log.warning("partition %s: batch %s unconfirmed (%r); sending it again", self.partition, batch_id, e)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)

    async def _landed_within(self, batch_id: str, deadline: float) -> Optional[int]:
        """The sequence our batch landed at, or None when the last batch is another's; asked again until the
        deadline while the journal cannot say."""
        while True:
            try:
                return await self._landed(batch_id)
            except Exception:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _landed(self, batch_id: str) -> Optional[int]:
        last = await self.journal.last(self.partition)
        if last is None:
            return None
        seq, raw = last
        try:
            return seq if JournalBatch.model_validate_json(raw).batch_id == batch_id else None
        except ValueError:
            return None

    # --- serving ---------------------------------------------------------------------------------------
    def arm(self, entry: JournalEntry, state: AccountState) -> None:
        """New deadlines an acked entry brought: a hold reserved or approved, a payout awaiting approval."""
        for event in entry.events:
            body = event.body
            if isinstance(body, (Reserved, Approved)):
                hold = state.holds.get(body.rid)
                if hold is not None:
                    due = hold.approval_deadline_ms if hold.state == "awaiting_approval" else hold.expires_at_ms
                    if due is not None:
                        self.timers.arm(due, state.agent_id, hold.rid, "hold")
            elif isinstance(body, PayoutStarted) and body.approval_deadline_ms is not None:
                self.timers.arm(body.approval_deadline_ms, state.agent_id, body.payout_id, "payout")

    async def _snapshot_forever(self) -> None:
        await every(self.snapshot_interval_s, self.snapshot,
                    lambda e: log.warning("partition %s: snapshot not saved (%r)", self.partition, e))

    async def snapshot(self) -> None:
        """Saved between batches only: a batch in flight has changed memory before the journal."""
        if self.writer is None or self.part.last_seq == self._last_snapshot_seq:
            return
        async with self.writer.quiet():
            seq = self.part.last_seq
            raw = encode(self.part)
        await self.snapshots.save_raw(self.partition, raw)
        self._last_snapshot_seq = seq

    async def stop(self, reason: str, graceful: bool = True) -> None:
        await cancel_and_wait(self._snap_task)
        if self.writer is not None:
            await self.writer.stop(reason)
            if graceful and self.writer.stopped == reason:
                try:
                    await self.snapshot()  # the next owner starts from here
                except Exception as e:
                    log.warning("partition %s: last snapshot not saved (%r)", self.partition, e)
