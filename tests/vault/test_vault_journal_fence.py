"""The journal's fence against JetStream's de-duplication: a duplicate ack is taken as ours only when it can be
our own lost-ack retry, never when it names an older batch that happens to share the id."""

from __future__ import annotations

import nats

from actors.vault.group_commit import GroupCommit, epoch_of
from actors.vault.partition import PartitionState
from actors.vault.partition_journal import Fenced, Layout, PartitionJournal
from actors.vault.streams import ensure_streams
from schemas.ledger import JournalBatch
from arbstr.natsserver import NatsServer


def batch(batch_id: str, at_ms: int) -> bytes:
    return JournalBatch(partition=0, epoch=1, batch_id=batch_id, prev_hash="", at_ms=at_ms).model_dump_json().encode()


async def test_a_reused_batch_id_is_fenced_not_acked_with_the_old_sequence(fresh_nats: NatsServer) -> None:
    nc = await nats.connect(fresh_nats.url)
    try:
        layout = Layout(partitions=1)
        await ensure_streams(nc, layout)
        journal = PartitionJournal(nc, layout)
        first = await journal.append(0, batch("p0:e1:1", 1), "p0:e1:1", 0)
        # Another batch under the same id, written after it: nothing is journaled, and the writer is told so.
        try:
            await journal.append(0, batch("p0:e1:1", 2), "p0:e1:1", first)
        except Fenced:
            pass
        else:
            raise AssertionError("a new batch under a used id was acked with the old batch's sequence")
        last = await journal.last(0)
        assert last is not None and last[0] == first
    finally:
        await nc.drain()


def test_two_writers_under_one_epoch_never_share_a_batch_id() -> None:
    async def never(*_: object) -> int:
        raise AssertionError

    a = GroupCommit(PartitionState(0), 3, never, lambda *_: None, lambda _: None)
    b = GroupCommit(PartitionState(0), 3, never, lambda *_: None, lambda _: None)
    assert a._next_id() != b._next_id()


def test_a_batch_ids_epoch_is_read_back_without_decoding_the_batch() -> None:
    # The follower tells its own batches from a later owner's by this alone.
    w = GroupCommit(PartitionState(5), 12, lambda *_: None, lambda *_: None, lambda _: None)  # type: ignore[arg-type]
    assert epoch_of(w._next_id()) == 12
    for odd in ("", "x", "p5:e:s:1", "p5:12:s:1", "p5:e-1:s:1", "p5:e1x:s:1", "p5:e1"):
        assert epoch_of(odd) is None, odd
