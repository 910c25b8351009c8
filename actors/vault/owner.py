"""One partition while this instance owns it: loaded (snapshot + the journal's tail), fenced (a takeover batch is
its first write), served (group commit), timed (expiry from memory) and snapshotted now and then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Optional

from actors.runtime.tasks import cancel_and_wait
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


class PartitionOwner:
    def __init__(self, claim: Claim, journal: PartitionJournal, snapshots: SnapshotStore, timers: Timers,
                 committed: Committed, broken: Callable[[int, str], None], snapshot_interval_s: float) -> None:
        self.claim = claim
        self.partition = claim.partition
        self.journal = journal
        self.snapshots = snapshots
        self.timers = timers
        self._committed = committed
        self._broken = broken
        self.snapshot_interval_s = snapshot_interval_s
        self.part = PartitionState(claim.partition)
        self.writer: Optional[GroupCommit] = None
        self._snap_task: Optional[asyncio.Task[None]] = None
        self._last_snapshot_seq = 0
        self.snapshot_seq = 0  # where the load started: batches after it are the tail a takeover folded
        self.loaded_in_s = 0.0

    # --- takeover --------------------------------------------------------------------------------------
    async def load(self, folded: Optional[PartitionState] = None) -> None:
        """The partition exactly as journaled: ``folded`` (this instance's read model of it, already snapshot +
        journal, kept current by the follower) or else the newest snapshot, then every batch after it.

        Starting from the read model spares a second decode of the snapshot and a second fold of its tail — at a
        restart every partition was just loaded into the read model. It is only ever behind the journal (it
        folds acked batches), never ahead: one that claims more than the journal holds is not used."""
        started = time.monotonic()
        if folded is not None and folded.last_seq > 0:
            last = await self.journal.last(self.partition)
            if last is None or folded.last_seq > last[0]:
                log.warning("partition %s: read model at %d is past the journal; loading the snapshot",
                            self.partition, folded.last_seq)
                folded = None
        if folded is not None:
            self.part = folded
            self._last_snapshot_seq = self.snapshot_seq = folded.loaded_from_seq
        else:
            snap = await self.snapshots.load(self.partition)
            self.part = snap if snap is not None else PartitionState(self.partition)
            self._last_snapshot_seq = self.snapshot_seq = self.part.loaded_from_seq = self.part.last_seq
        await self._fold_tail()
        self.loaded_in_s = time.monotonic() - started

    async def _fold_tail(self) -> list[tuple[JournalBatch, int]]:
        folded = []
        async for seq, raw in self.journal.tail(self.partition, self.part.last_seq):
            if seq <= self.part.last_seq:
                continue  # folded meanwhile by the read model's follower (the same object, before we own it)
            batch = JournalBatch.model_validate_json(raw)
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
        """A fenced write that tells a lost ack from a lost race: the journal's last batch says which."""
        for attempt in range(2):
            try:
                return await self.journal.append(self.partition, raw, batch_id, expected)
            except Fenced:
                landed = await self._landed(batch_id)
                if landed is not None:
                    return landed
                raise
            except Exception as e:  # a timeout or a lost connection: it may have landed
                landed = await self._landed(batch_id)
                if landed is not None:
                    return landed
                if attempt:
                    raise
                log.warning("partition %s: batch %s unconfirmed (%r); sending it again", self.partition, batch_id, e)
        raise AssertionError("unreachable")

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
        while True:
            await asyncio.sleep(self.snapshot_interval_s)
            try:
                await self.snapshot()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("partition %s: snapshot not saved (%r)", self.partition, e)

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
