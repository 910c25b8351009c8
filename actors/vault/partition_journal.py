"""The JetStream side of a partition's journal: fenced appends of batches, the tail after a point, the last batch.

A partition's batches go to one subject, and every append names the sequence of the subject's last message:
a writer that is not up to date (a stale owner that still believes it owns the partition, or a lost ack) gets
10071 and writes nothing. The same stream holds journals written before partitions (one subject per agent);
they are read once, when the partitions' first snapshots are made.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import AsyncIterator, Optional

from nats.aio.client import Client as NATS
from nats.js.api import ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NotFoundError

from schemas import subjects
from schemas.partitions import stream_of

log = logging.getLogger("arbstr.vault.journal")

WRONG_LAST_SEQUENCE = 10071
# On a cluster the leader may refuse an expectation on a subject that still has a write in flight with this
# code: the same conflict, seen before the earlier write is applied.
WRONG_LAST_SEQUENCE_IN_FLIGHT = 10164
H_EXPECTED_SEQ = "Nats-Expected-Last-Subject-Sequence"
H_PARTITION = "Arbstr-Partition"  # on every batch: a follower skips decoding the partitions its instance owns
READ_TIMEOUT_S = 10.0
# The last batch of a partition (a takeover's start, an append's "did mine land?"): a request lost in an election
# waits this long, not the client's default 5 s, before it is asked again.
LAST_TIMEOUT_S = 2.0


class Fenced(Exception):
    """The partition's journal moved on without us: another owner wrote, or our own write landed unacked."""


@dataclass(frozen=True)
class Layout:
    """How the ledger is split, fixed when it is created (the ``layout`` key of ``arbstr_partitions``)."""

    partitions: int
    streams: int = 1

    def stream(self, partition: int) -> str:
        return subjects.ledger_stream(stream_of(partition, self.streams))

    def subject(self, partition: int) -> str:
        return subjects.ledger_partition(partition, stream_of(partition, self.streams))


def ledger_stream_configs(layout: Layout, replicas: int) -> list[StreamConfig]:
    # The only source of truth for money: file storage, no limits, nothing can be deleted or purged.
    return [StreamConfig(name=subjects.ledger_stream(i), subjects=subjects.ledger_stream_subjects(i),
                         storage=StorageType.FILE, num_replicas=replicas, deny_delete=True, deny_purge=True,
                         retention=RetentionPolicy.LIMITS, duplicate_window=120.0)
            for i in range(layout.streams)]


class PartitionJournal:
    def __init__(self, nc: NATS, layout: Layout) -> None:
        self.js = nc.jetstream()
        self._js_last = nc.jetstream(timeout=LAST_TIMEOUT_S)
        self.layout = layout

    async def append(self, partition: int, raw: bytes, batch_id: str, expected_seq: int,
                     timeout_s: float = 5.0) -> int:
        """Write one batch if the partition's journal is still at ``expected_seq``; its stream sequence."""
        headers = {subjects.H_MSG_ID: batch_id, H_EXPECTED_SEQ: str(expected_seq), H_PARTITION: str(partition)}
        try:
            ack = await self.js.publish(self.layout.subject(partition), raw, headers=headers, timeout=timeout_s)
        except APIError as e:
            if e.err_code in (WRONG_LAST_SEQUENCE, WRONG_LAST_SEQUENCE_IN_FLIGHT):
                raise Fenced(str(e)) from None
            raise
        # A duplicate ack names the sequence a message with this id landed at before. Batch ids are unique per
        # writer session, so that is our own earlier send whose ack was lost, and it must lie after the point we
        # expected. At or before it, the id belongs to another batch: taking its sequence as ours would answer
        # commands that were never journaled.
        if getattr(ack, "duplicate", False) and int(ack.seq) <= expected_seq:
            raise Fenced(f"batch id {batch_id} already used at sequence {ack.seq} (expected after {expected_seq})")
        return int(ack.seq)

    async def last(self, partition: int) -> Optional[tuple[int, bytes]]:
        """The partition's newest batch (sequence, bytes), or None while it has none."""
        try:
            msg = await self._js_last.get_last_msg(self.layout.stream(partition), self.layout.subject(partition))
        except NotFoundError:
            return None
        return int(msg.seq or 0), bytes(msg.data or b"")

    async def tail(self, partition: int, after_seq: int) -> AsyncIterator[tuple[int, bytes]]:
        """Every batch of the partition after ``after_seq`` up to its newest now, in order."""
        last = await self.last(partition)
        if last is None or last[0] <= after_seq:
            return
        target = last[0]
        sub = await self.js.subscribe(
            self.layout.subject(partition), ordered_consumer=True, stream=self.layout.stream(partition),
            config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=after_seq + 1))
        try:
            while True:
                msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
                seq = int(msg.metadata.sequence.stream)
                yield seq, bytes(msg.data)
                if seq >= target:
                    return
        finally:
            try:
                await sub.unsubscribe()
            except Exception:
                pass


async def stream_last_seq(nc: NATS, stream: str) -> int:
    info = await nc.jetstream().stream_info(stream)
    return int(info.state.last_seq)
