"""Group commit for one partition: the commands that queue up while a journal write is in flight go into the
next batch together, one fenced JetStream write (one fsync) for all of them, and each caller is answered only
after that batch is acked.

Decisions are made in order on the partition's state in memory — each command sees the ones before it in the
same batch — and applied in place (no copy of an account per batch: a busy account is large). A batch the
journal refuses or leaves ambiguous therefore leaves the state ahead of the journal: the writer stops for good
and the owner hands the partition back, to be loaded afresh (snapshot + tail) by whoever takes it next.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from schemas.errors import ArbstrError
from schemas.ledger import JournalBatch, JournalEntry, LedgerEvent, batch_hash
from schemas.requests import RequestRecord

from . import decide
from .fold import AccountState, LedgerViolation, apply_event, next_events
from .partition import PartitionState

log = logging.getLogger("arbstr.vault.commit")

MAX_BATCH = 256  # commands per journal message: one is decided without yielding, so keep the loop responsive
# A journal message stays under nats-server's default max_payload (1 MB) whatever the commands carry (a request
# record each): a batch past this is written as several messages.
MAX_BATCH_BYTES = 768 * 1024
STOP_WAIT_S = 10.0  # a stop waits this long for the batch in flight, then cuts it off


def now_ms() -> int:
    return int(time.time() * 1000)


def batch_id(partition: int, epoch: int, session: str, n: int) -> str:
    """A batch's id (its ``Nats-Msg-Id``): the writer's partition, epoch and session, then a counter."""
    return f"p{partition}:e{epoch}:{session}:{n}"


def epoch_of(msg_id: str) -> Optional[int]:
    """The epoch a batch was written under, read from its id without decoding the batch; None if not one of ours."""
    parts = msg_id.split(":", 2)
    if len(parts) < 3 or not parts[1].startswith("e") or not parts[1][1:].isdigit():
        return None
    return int(parts[1][1:])


@dataclass(frozen=True)
class Written:
    decided: decide.Decided
    state: AccountState  # the account as it is now (later commands may have moved it on)
    events: list[LedgerEvent]  # what this command journaled; empty when it was a no-op
    answer: Any = None  # what ``answer(state)`` computed right after this command applied


Decider = Callable[[AccountState, int], decide.Decided]
Answer = Callable[[AccountState, decide.Decided], Any]
Append = Callable[[bytes, str, int], Awaitable[int]]  # (raw, batch id, expected seq) -> stream seq; Fenced
Committed = Callable[[JournalBatch, int, list[tuple[JournalEntry, AccountState]]], None]


def moved(partition: int) -> ArbstrError:
    return ArbstrError(503, f"partition {partition} is changing owner; try again", code="partition_moved",
                       headers={"retry-after": "1"})


class MemoryAhead(Exception):
    """Memory holds changes the journal never got: the writer stops and the partition is loaded afresh."""


@dataclass
class _Command:
    agent_id: str
    decider: Decider
    answer: Optional[Answer]
    record: Optional[RequestRecord]
    future: "asyncio.Future[Written]"


class GroupCommit:
    def __init__(self, part: PartitionState, epoch: int, append: Append, committed: Committed,
                 broken: Callable[[str], None]) -> None:
        self.part = part
        self.epoch = epoch
        self._append = append
        self._committed = committed
        self._broken = broken  # the writer stopped: the owner must hand the partition back
        self._queue: list[_Command] = []
        self._current: list[_Command] = []  # the batch being decided and written
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self._batches = 0
        self._session = secrets.token_hex(4)
        self.stopped: Optional[str] = None
        self.stats = {"batches": 0, "commands": 0, "journaled": 0}
        self._lock = asyncio.Lock()  # held while a batch is decided and written: memory is ahead of the journal

    def quiet(self) -> asyncio.Lock:
        """Held, no batch is in flight: memory is exactly what the journal has (for a snapshot)."""
        return self._lock

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"commit-p{self.part.partition}")

    async def submit(self, agent_id: str, decider: Decider, answer: Optional[Answer] = None,
                     record: Optional[RequestRecord] = None) -> Written:
        return await self.enqueue(agent_id, decider, answer, record)

    def enqueue(self, agent_id: str, decider: Decider, answer: Optional[Answer] = None,
                record: Optional[RequestRecord] = None) -> "asyncio.Future[Written]":
        """Queue a command; the future is its answer. Commands queued together are decided in this order (a
        report's requests need no task each)."""
        if self.stopped is not None:
            raise moved(self.part.partition)
        future: asyncio.Future[Written] = asyncio.get_running_loop().create_future()
        self._queue.append(_Command(agent_id, decider, answer, record, future))
        self._wake.set()
        return future

    async def write_marker(self) -> int:
        """The takeover batch (no entries): the first write of a new owner, which fences any write an earlier
        owner still attempts. Returns its sequence."""
        batch = JournalBatch(partition=self.part.partition, epoch=self.epoch, batch_id=self._next_id(),
                             prev_hash=self.part.last_hash, at_ms=now_ms())
        raw = batch.model_dump_json().encode()
        seq = await self._append(raw, batch.batch_id, self.part.last_seq)
        self.part.last_seq, self.part.last_hash, self.part.epoch = seq, batch_hash(raw), self.epoch
        return seq

    async def stop(self, reason: str = "stopping") -> None:
        """Finish the batch in flight; everything still queued is told to try again (it lands on the next owner)."""
        self.stopped = self.stopped or reason
        self._wake.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task), STOP_WAIT_S)
            except asyncio.TimeoutError:
                self._task.cancel()
                # The batch in flight was cut off: memory may hold changes the journal never got, so this is no
                # clean stop (no snapshot of this memory, and the read model is loaded afresh).
                self.stopped = f"{reason}; a batch in flight was cut off"
                self._fail(self._current)  # its callers are told to try again, never left waiting
        self._fail_queued()

    def _fail_queued(self) -> None:
        queued, self._queue = self._queue, []
        self._fail(queued)

    def _fail(self, commands: list[_Command]) -> None:
        for c in commands:
            if not c.future.done():
                c.future.set_exception(moved(self.part.partition))

    def _next_id(self) -> str:
        # The session token keeps ids unique even when a writer is restarted under the same epoch: JetStream's
        # de-duplication would otherwise ack a new batch with an old batch's sequence.
        self._batches += 1
        return batch_id(self.part.partition, self.epoch, self._session, self._batches)

    async def _run(self) -> None:
        try:
            await self._serve()
        finally:
            # However the writer ends (cancelled mid-batch included), nobody is left waiting for an answer.
            self._fail(self._current)
            self._fail_queued()

    async def _serve(self) -> None:
        while self.stopped is None:
            await self._wake.wait()
            self._wake.clear()
            while self._queue and self.stopped is None:
                items, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                self._current = items
                try:
                    async with self._lock:
                        await self._commit(items)
                except MemoryAhead as e:
                    self._stop_broken(str(e), items)
                except Exception as e:  # the journal and memory may disagree now: stop, hand the partition back
                    log.exception("partition %s: batch not journaled", self.part.partition)
                    self._stop_broken(f"journal write failed ({type(e).__name__})", items)
        self._fail_queued()

    def _stop_broken(self, reason: str, items: list[_Command]) -> None:
        self.stopped = reason
        for c in items:
            if not c.future.done():
                c.future.set_exception(moved(self.part.partition))
        self._fail_queued()
        self._broken(reason)

    async def _commit(self, items: list[_Command]) -> None:
        at = now_ms()
        outcomes: list[Any] = []
        entries: list[JournalEntry] = []
        touched: list[tuple[JournalEntry, AccountState]] = []
        for c in items:
            outcomes.append(self._decide(c, at, entries, touched))
        if entries:
            await self._write(entries, touched, at)
        self.stats["commands"] += len(items)
        for c, outcome in zip(items, outcomes):
            if c.future.done():
                continue
            if isinstance(outcome, BaseException):
                c.future.set_exception(outcome)
            else:
                c.future.set_result(outcome)

    async def _write(self, entries: list[JournalEntry], touched: list[tuple[JournalEntry, AccountState]],
                     at: int) -> None:
        """One journal message, or several in order when the batch would pass what a nats-server accepts in one
        (each command's entry stays whole in one message; callers are answered after the last is acked)."""
        part = self.part
        batch = JournalBatch(partition=part.partition, epoch=self.epoch, batch_id=self._next_id(),
                             prev_hash=part.last_hash, at_ms=at, entries=entries)
        raw = batch.model_dump_json().encode()
        if len(raw) > MAX_BATCH_BYTES and len(entries) > 1:
            half = len(entries) // 2
            await self._write(entries[:half], touched[:half], at)
            await self._write(entries[half:], touched[half:], at)
            return
        seq = await self._append(raw, batch.batch_id, part.last_seq)
        part.last_seq, part.last_hash = seq, batch_hash(raw)
        self.stats["batches"] += 1
        self.stats["journaled"] += len(entries)
        self._committed(batch, seq, touched)

    def _decide(self, c: _Command, at: int, entries: list[JournalEntry],
                touched: list[tuple[JournalEntry, AccountState]]) -> Any:
        part = self.part
        if c.agent_id in part.corrupt:
            return ArbstrError(503, "this account's journal does not verify; it is frozen", code="ledger_corrupt")
        state = part.agents.get(c.agent_id) or AccountState(agent_id=c.agent_id)
        try:
            decided = c.decider(state, at)
        except ArbstrError as refusal:
            return refusal
        except Exception as e:
            log.exception("decider for %s failed", c.agent_id)
            return ArbstrError(500, f"internal error deciding ({type(e).__name__})", code="internal_error")
        if not decided.bodies:
            return Written(decided, state, [], c.answer(state, decided) if c.answer else None)
        events = next_events(state, decided.op_id, decided.bodies, at, chained=False)
        # Applied in place, no scratch copy: a copy costs the account's whole recent history (a usage report of a
        # busy grant carries hundreds of events), every time. One event applies all-or-nothing by itself.
        applied = 0
        try:
            for event in events:
                apply_event(state, event, chained=False)
                applied += 1
        except LedgerViolation as e:
            # The decider proposed what the fold refuses: a bug, never journaled.
            log.error("partition %s: %s refused by the fold: %s", part.partition, decided.op_id, e)
            if applied:  # part of the command is in memory and none of it in the journal: reload the partition
                raise MemoryAhead(f"{decided.op_id} refused by the fold after {applied} of its events") from e
            return ArbstrError(500, "the ledger refused this change", code="ledger_violation")
        target = state
        part.agents[c.agent_id] = target
        entry = JournalEntry(op_id=decided.op_id, agent_id=c.agent_id, events=events, record=c.record)
        entries.append(entry)
        touched.append((entry, target))
        return Written(decided, target, events, c.answer(target, decided) if c.answer else None)
