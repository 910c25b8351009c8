"""Following the ledger streams, in order, for the read model and the projection.

Batches of partitions this instance owns, written under its epoch or an earlier one, are not even decoded (the
``Arbstr-Partition`` header and the batch id say whose they are): their accounts are already current. A batch of
a later epoch there means another instance took the partition over before this one noticed: it is not folded into
the owner's objects, and the partition is let go at once (its read model is then read afresh from the journal).
(The projection follows the streams on its own: ``projection_feed``.)
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable, Optional

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from actors.runtime.jetstream import HEARTBEAT_S
from actors.runtime.tasks import unsubscribe_quietly
from schemas import subjects
from schemas.ledger import JournalBatch, JournalEntry, batch_hash

from .book import Book
from .group_commit import epoch_of
from .partition_journal import H_PARTITION

log = logging.getLogger("arbstr.vault.follower")


class Follower:
    """One ordered consumer per ledger stream, from a start sequence, live after that."""

    def __init__(self, nc: NATS, book: Book, streams: int, legacy_upto: int = 0,
                 overtaken: Callable[[int], None] = lambda k: None) -> None:
        self.nc = nc
        self.book = book
        self.overtaken = overtaken
        self.streams = streams
        self.legacy_upto = legacy_upto  # legacy entries at or below this were folded into snapshots
        self.applied: dict[int, int] = {i: 0 for i in range(streams)}  # highest sequence handed over, per stream
        self._progress = asyncio.Condition()
        self._subs: list[object] = []
        self._held: Optional[list[tuple[int, Msg]]] = None  # while the read model loads: applied after, in order

    def hold(self) -> None:
        self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for index, msg in held:
            self._handle(index, msg)
            self.applied[index] = max(self.applied[index], int(msg.metadata.sequence.stream))

    async def start(self, from_seq: dict[int, int]) -> None:
        js = self.nc.jetstream()
        for index in range(self.streams):
            start = max(1, from_seq.get(index, 1))
            self.applied[index] = start - 1

            async def on_msg(msg: Msg, index: int = index) -> None:
                if self._held is not None:
                    self._held.append((index, msg))
                    return
                self._handle(index, msg)
                async with self._progress:
                    self.applied[index] = max(self.applied[index], int(msg.metadata.sequence.stream))
                    self._progress.notify_all()

            filter_subject = subjects.ledger_stream_subjects(index)[0]
            self._subs.append(await js.subscribe(
                filter_subject, cb=on_msg, ordered_consumer=True, stream=subjects.ledger_stream(index),
                idle_heartbeat=HEARTBEAT_S,
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start)))

    def _handle(self, index: int, msg: Msg) -> None:
        seq = int(msg.metadata.sequence.stream)
        headers = msg.headers or {}
        partition = headers.get(H_PARTITION)
        if partition is not None and partition.isdigit() and int(partition) in self.book.owned:
            written = epoch_of(headers.get(subjects.H_MSG_ID, ""))
            if written is not None:
                self._owned_batch(int(partition), written, index, seq)
                return
        raw = bytes(msg.data)
        try:
            if partition is not None:  # a batch (journals before partitions carried no partition header)
                batch = JournalBatch.model_validate_json(raw)
                if batch.partition in self.book.owned:
                    self._owned_batch(batch.partition, batch.epoch, index, seq)
                    return
                self.book.apply_batch(batch, index, seq, batch_hash(raw))
            elif seq > self.legacy_upto:
                self.book.apply_legacy(JournalEntry.model_validate_json(raw), index, seq)
        except Exception:
            log.exception("ledger: message at %s:%s not folded", index, seq)

    def _owned_batch(self, partition: int, epoch: int, index: int, seq: int) -> None:
        self.book.seen(index, seq)
        if epoch > self.book.owned[partition] and partition not in self.book.overtaken:
            self.book.overtaken.add(partition)
            log.warning("partition %s: the journal holds a batch of epoch %d (ours: %d): taken over; let go",
                        partition, epoch, self.book.owned[partition])
            self.overtaken(partition)

    async def wait_applied(self, index: int, seq: int, timeout_s: float = 10.0) -> None:
        async with self._progress:
            await asyncio.wait_for(self._progress.wait_for(lambda: self.applied.get(index, 0) >= seq), timeout_s)

    async def stop(self) -> None:
        for sub in self._subs:
            await unsubscribe_quietly(sub)
        self._subs.clear()
