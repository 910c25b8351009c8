"""Serving partitions: taking one over and handing it back, the write path into its group commit, and what
happens after a batch is acked (read model, timers, rails, waiters, published events).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Callable, Optional

from actors.runtime.connection import drain_in_order
from actors.runtime.endpoints import QUEUE_GROUP
from schemas import subjects
from schemas.ledger import Denied, Expired, JournalBatch, JournalEntry, LedgerEvent, Released, Settled, batch_hash
from schemas.requests import RequestRecord
from schemas.vault import SpendEvent

from . import clock, decide
from .core import VaultCore
from .expiry import Timers
from .fold import GRANT_PREFIX, AccountState, granted_msat
from .group_commit import Written, moved
from .owner import PartitionOwner
from .ownership import Claim
from .partition import PartitionState, fold_batch
from .snapshot import decode, encode

log = logging.getLogger("arbstr.vault")

Decider = Callable[[AccountState, int], decide.Decided]

RELOAD_ATTEMPTS = 10
REPUBLISH_WINDOW_MS = 100_000  # at takeover, events of batches this recent are published again (dedup: 120 s)


class PartitionServing(VaultCore):
    """The partitions this instance owns, and the one way to write to them (``execute``)."""

    async def _acquired(self, claim: Claim) -> bool:
        assert self.journal is not None and self.snapshots is not None and self.nc is not None
        k = claim.partition
        self._acquired_at[k] = clock.now_ms()
        timers = Timers(lambda due, k=k: self._expire_due(k, due))
        owner = PartitionOwner(claim, self.journal, self.snapshots, timers,
                               lambda batch, seq, touched, k=k: self._committed(k, batch, seq, touched),
                               self._broken, self.vc.snapshot_interval_s, warm=lambda k=k: self._warm(k))
        started = time.monotonic()
        await owner.load()
        self.book.owned[k] = claim.epoch
        self.book.overtaken.discard(k)
        self.book.adopt(owner.part, k % self.layout.streams)
        try:
            late = await owner.start()
        except Exception:
            self.book.owned.pop(k, None)
            raise
        self.owners[k] = owner
        timers.start()
        try:
            self._subs[k] = await self.nc.subscribe(f"{subjects.VAULT_PARTITION_PREFIX}.{k}.>", queue=QUEUE_GROUP,
                                                    cb=self._on_partition_msg)
        except Exception:
            await self._lost(k, "could not subscribe")  # no writer left running: the load may be tried again
            raise
        self.takeovers += 1
        # Events the previous owner journaled but may not have published (it died between): published again,
        # deduplicated by their ids.
        asyncio.ensure_future(self._republish(k, late))
        log.info("partition %s: serving (epoch %d, %d agents, loaded in %.0f ms, ready in %.0f ms; snapshot %.0f ms, "
                 "tail of %d batches%s)", k, claim.epoch, len(owner.part.agents), owner.loaded_in_s * 1000,
                 (time.monotonic() - started) * 1000, owner.snapshot_in_s * 1000, owner.tail_batches,
                 ", from the read model" if owner.warm else "")
        return True

    def _warm(self, k: int) -> Optional[PartitionState]:
        """The read model's copy of a partition this instance is taking over: the follower has folded every batch
        of it up to a few milliseconds ago, so the takeover folds only those few instead of everything since the
        last snapshot (seconds under load). None when it cannot be trusted (memory of an owner that stopped
        uncleanly, not yet read afresh) or holds nothing yet; the marker's fence proves it current either way."""
        if k in self._cold or k in self.book.owned or k in self.book.unchained:
            return None
        part = self.book.parts.get(k)
        if part is None or part.last_seq == 0:
            return None
        return decode(encode(part))  # a copy: the follower goes on folding into the read model's own

    async def _lost(self, k: int, reason: str) -> None:
        owner = self.owners.pop(k, None)
        sub = self._subs.pop(k, None)
        if sub is not None:
            # Drained, not dropped: a command already delivered here is answered "moved" (the caller asks the new
            # owner at once) instead of waiting out its whole timeout for a reply that never comes.
            with contextlib.suppress(Exception):
                await drain_in_order(self.nc, sub)  # type: ignore[arg-type]
        if owner is None:
            return
        graceful = owner.writer is None or owner.writer.stopped is None
        await owner.stop(reason, graceful=graceful)
        await owner.timers.stop()
        if self.book.owned.get(k, owner.claim.epoch) != owner.claim.epoch:
            log.info("partition %s: no longer served under epoch %d (taken here again meanwhile)", k,
                     owner.claim.epoch)
            return  # the new claim's state is not this stop's to undo
        self.book.owned.pop(k, None)
        overtaken = k in self.book.overtaken
        self.book.overtaken.discard(k)
        # Exact: stopped by us between batches, and no other owner's batch skipped meanwhile. Else (stopped by a
        # failure before, a batch in flight failed or was cut off as it stopped, or the next owner wrote before
        # this instance noticed) memory and the journal differ: the read model of this partition is read afresh,
        # and until then it is not the starting point of a takeover.
        exact = graceful and not overtaken and (owner.writer is None or owner.writer.stopped == reason)
        if not exact:
            self._cold.add(k)
            asyncio.ensure_future(self._reload_partition(k))
        log.info("partition %s: no longer served here (%s)", k, reason)

    def _overtaken(self, k: int) -> None:
        """Another owner's batch in a partition this instance still serves: its lease went while it was not
        looking (a stalled loop, say). Stop serving now rather than when the lease's watch says so."""
        asyncio.ensure_future(self._lost(k, "taken over (a later epoch in the journal)"))

    def _broken(self, k: int, reason: str) -> None:
        log.error("partition %s: the journal refused or lost a batch (%s); handing it back", k, reason)
        if self.ownership is not None:
            asyncio.ensure_future(self.ownership.hand_back(k, reason))

    async def _reload_partition(self, k: int) -> None:
        """The read model of a partition read afresh (tried again until it is, or the partition is ours again)."""
        assert self.snapshots is not None and self.journal is not None
        for attempt in range(RELOAD_ATTEMPTS):
            if k in self.book.owned:
                return
            try:
                part = await self.snapshots.load(k) or PartitionState(k)
                # Until it has at least what the follower folded into the copy it replaces meanwhile (batches
                # written after the tail was read): adopting it earlier would drop those from the read model.
                for _ in range(RELOAD_ATTEMPTS):
                    async for seq, raw in self.journal.tail(k, part.last_seq):
                        fold_batch(part, JournalBatch.model_validate_json(raw), seq, batch_hash(raw))
                    if part.last_seq >= self.book.part(k).last_seq:
                        break
                else:
                    raise RuntimeError("the journal kept ahead of the reload")
                break
            except Exception as e:
                log.warning("partition %s: read model not reloaded (%r); trying again", k, e)
                await asyncio.sleep(min(0.2 * 2 ** attempt, 5.0))
        else:
            log.error("partition %s: read model not reloaded; reads of it may be stale", k)
            return
        if k not in self.book.owned:
            self.book.adopt(part, k % self.layout.streams)
            self._cold.discard(k)

    def _committed(self, k: int, batch: JournalBatch, seq: int,
                   touched: list[tuple[JournalEntry, AccountState]]) -> None:
        owner = self.owners.get(k)
        self.book.committed(k % self.layout.streams, seq, touched)
        outgoing: list[Outgoing] = []
        for entry, state in touched:
            if owner is not None:
                owner.arm(entry, state)
            self.rails.on_events(entry.events)
            for event in entry.events:
                rid = getattr(event.body, "rid", None)
                for waiter in self._waiters.get((entry.agent_id, rid), ()) if rid is not None else ():
                    waiter.set()
            outgoing.extend(published_of(entry, state))
        self._send(outgoing)

    def _send(self, outgoing: list[Outgoing]) -> None:
        """Publish derived events: one task per batch, not per event (each publish only fills nats-py's buffer)."""
        if outgoing:
            task = asyncio.ensure_future(self._publish_all(outgoing))
            task.add_done_callback(_log_failure)

    async def _publish_all(self, outgoing: list[Outgoing]) -> None:
        assert self.nc is not None
        for subject, data, headers in outgoing:
            await self.nc.publish(subject, data, headers=headers)

    async def _republish(self, k: int, late: list[tuple[JournalBatch, int]]) -> None:
        """The recent batches' events again: whatever a dead owner did not get out, tools still see."""
        assert self.journal is not None
        owner = self.owners.get(k)
        if owner is None:
            return
        horizon = clock.now_ms() - REPUBLISH_WINDOW_MS
        recent: list[JournalBatch] = [b for b, _ in late if b.at_ms >= horizon]
        try:
            async for _, raw in self.journal.tail(k, owner.snapshot_seq):
                batch = JournalBatch.model_validate_json(raw)
                if batch.at_ms >= horizon and batch.entries:
                    recent.append(batch)
        except Exception as e:
            log.warning("partition %s: recent events not published again (%r)", k, e)
            return
        seen: set[str] = set()
        outgoing: list[Outgoing] = []
        for batch in recent:
            if batch.batch_id in seen:
                continue
            seen.add(batch.batch_id)
            for entry in batch.entries:
                outgoing.extend(published_of(entry, self.book.state(entry.agent_id)))
        self._send(outgoing)

    async def execute(self, agent_id: str, decider: Decider,
                      answer_with: Optional[Callable[[AccountState, decide.Decided], Any]] = None,
                      record: Optional[RequestRecord] = None) -> Written:
        """Decide and journal a command about an account this instance owns (callers route to the owner first)."""
        return await self.enqueue(agent_id, decider, answer_with, record)

    def enqueue(self, agent_id: str, decider: Decider,
                answer_with: Optional[Callable[[AccountState, decide.Decided], Any]] = None,
                record: Optional[RequestRecord] = None) -> "asyncio.Future[Written]":
        """``execute`` without waiting: the future of the command's answer (commands queued together keep order)."""
        owner = self.owners.get(self.partition_of(agent_id))
        if owner is None or owner.writer is None:
            raise moved(self.partition_of(agent_id))
        return owner.writer.enqueue(agent_id, decider, answer_with, record)


Outgoing = tuple[str, bytes, dict[str, str]]  # subject, payload, headers


def published_of(entry: JournalEntry, state: AccountState) -> list[Outgoing]:
    """Spend events and the request record an entry carries, derived from the journal; their ids are stable, so
    publishing one again (a takeover) is deduplicated by the events stream."""
    out: list[Outgoing] = []
    for e in entry.events:
        ev = spend_event(e, state)
        if ev is not None:
            out.append((subjects.spend(e.agent_id), ev.model_dump_json().encode(),
                        {subjects.H_MSG_ID: f"spend:{ev.event_id}", subjects.H_REQUEST_ID: ev.request_id}))
    if entry.record is not None:
        rec = entry.record
        out.append((subjects.requests(rec.agent_id), rec.model_dump_json().encode(),
                    {subjects.H_MSG_ID: f"record:{entry.agent_id}:{entry.events[-1].seq}",
                     subjects.H_REQUEST_ID: rec.request_id}))
    return out


def spend_event(e: LedgerEvent, state: AccountState) -> Optional[SpendEvent]:
    """The spend event of one journaled resolution (settle, release, expiry, denial), else None."""
    b = e.body
    if not isinstance(b, (Settled, Released, Expired, Denied)):
        return None
    if isinstance(b, Released) and b.rid.startswith(GRANT_PREFIX):
        return None  # a grant given back: no request of the agent's (an expired grant is charged: that is one)
    res = state.resolutions.get(b.rid)
    hold = res.hold if res is not None else None
    return SpendEvent(
        event_id=f"{e.agent_id}:{e.seq}", kind=b.kind, agent_id=e.agent_id, request_id=b.rid,
        provider=getattr(b, "provider", "") or (hold.provider if hold else ""),
        model=getattr(b, "model", "") or (hold.model if hold else ""),
        input_tokens=getattr(b, "input_tokens", 0), output_tokens=getattr(b, "output_tokens", 0),
        cost_msat=getattr(b, "cost_msat", getattr(b, "charged_msat", 0)),
        charged_msat=getattr(b, "charged_msat", 0), uncollectible_msat=getattr(b, "uncollectible_msat", 0),
        reserved_msat=hold.amount_msat if hold else 0, balance_msat=state.available_msat + granted_msat(state),
        estimated=getattr(b, "estimated", False),
        flagged=isinstance(b, Expired) and b.action == "charge", reason=getattr(b, "reason", ""),
        at_ms=e.at_ms, ledger_seq=e.seq, provider_cost_msat=getattr(b, "provider_cost_msat", None),
        cost_drift=getattr(b, "cost_drift", False))


def _log_failure(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("event not published: %r", task.exception())
