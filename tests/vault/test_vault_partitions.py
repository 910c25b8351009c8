"""The partitioned vault's pure parts and its group commit, without NATS: where an agent lives, snapshots, batch
folds, and what a writer answers (only after its batch is acked; all or nothing when the journal refuses)."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from actors.vault import decide
from actors.vault.book import Book
from actors.vault.fold import FORGET_AFTER_MS, AccountState, fold, view
from actors.vault.group_commit import GroupCommit
from actors.vault.partition import PartitionState, books, fold_batch, merge_books
from actors.vault.partition_journal import Fenced
from actors.vault.snapshot import decode, encode
from schemas.errors import ArbstrError
from schemas.ledger import JournalBatch, batch_hash, verify_batches
from schemas.partitions import partition_of
from schemas.router import Envelope
from schemas.vault import AgentPolicy

ENV = Envelope(input_tokens=1, output_tokens=9, input_rate=1_000_000, output_rate=1_000_000, max_output_tokens=9)


def test_an_agent_always_lands_in_the_same_partition_and_agents_spread() -> None:
    ids = [f"agt_{n:016x}" for n in range(4000)]
    assert [partition_of(a, 16) for a in ids] == [partition_of(a, 16) for a in ids]
    counts = Counter(partition_of(a, 16) for a in ids)
    assert set(counts) == set(range(16)) and max(counts.values()) < 2 * min(counts.values())


class Journal:
    """A partition's journal in memory: fenced on the last sequence, like JetStream's expected-last-subject-seq."""

    def __init__(self) -> None:
        self.raws: list[bytes] = []
        self.fail: list[BaseException] = []
        self.gate = asyncio.Event()
        self.gate.set()

    async def append(self, raw: bytes, batch_id: str, expected: int) -> int:
        await self.gate.wait()
        if self.fail:
            raise self.fail.pop(0)
        if expected != len(self.raws):
            raise Fenced(f"expected {expected}, at {len(self.raws)}")
        self.raws.append(raw)
        return len(self.raws)


def writer(part: PartitionState, journal: Journal, committed: list[Any], broken: list[str]) -> GroupCommit:
    w = GroupCommit(part, 1, journal.append, lambda batch, seq, touched: committed.append((batch, seq)),
                    broken.append)
    w.start()
    return w


async def test_commands_that_queue_up_share_one_batch_and_are_answered_after_its_ack() -> None:
    part, journal, committed, broken = PartitionState(0), Journal(), [], []
    w = writer(part, journal, committed, broken)
    await w.submit("a", lambda s, at: decide.create_agent(s, "a", "h" * 64, AgentPolicy(), at))
    await w.submit("a", lambda s, at: decide.deposit(s, "d", 100_000, "simulated", "", at))
    journal.gate.clear()  # the next write is in flight and slow: everything behind it queues up
    first = asyncio.ensure_future(w.submit("a", lambda s, at: decide.reserve(s, "r0", ENV, at, ttl_ms=60_000)))
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(w.submit("a", lambda s, at, n=n: decide.reserve(s, f"r{n}", ENV, at,
                                                                                 ttl_ms=60_000)))
            for n in range(1, 21)]
    await asyncio.sleep(0.01)
    assert not first.done() and not any(t.done() for t in rest)  # nobody is answered before the ack
    journal.gate.set()
    done = await asyncio.gather(first, *rest, return_exceptions=True)
    held = [d for d in done if not isinstance(d, BaseException)]
    refused = [d for d in done if isinstance(d, ArbstrError)]
    assert len(held) == 10 and all(r.status == 402 for r in refused)  # 100,000 msat covers ten 10,000 holds
    assert len(journal.raws) == 4  # create, deposit, the one in flight, and all twenty others in one batch
    assert len(JournalBatch.model_validate_json(journal.raws[-1]).entries) == 9
    assert verify_batches(journal.raws) == (True, None)
    await w.stop()


async def test_a_refused_batch_answers_no_one_as_done_and_stops_the_writer() -> None:
    part, journal, committed, broken = PartitionState(0), Journal(), [], []
    w = writer(part, journal, committed, broken)
    await w.submit("a", lambda s, at: decide.create_agent(s, "a", "h" * 64, AgentPolicy(), at))
    journal.fail = [Fenced("another owner wrote")]
    results = await asyncio.gather(*(w.submit("a", lambda s, at, n=n: decide.deposit(s, f"d{n}", 1, "sim", "", at))
                                     for n in range(5)), return_exceptions=True)
    assert all(isinstance(r, ArbstrError) and r.status == 503 for r in results)
    assert broken and len(journal.raws) == 1
    with pytest.raises(ArbstrError):  # stopped for good: the partition is handed back and loaded afresh
        await w.submit("a", lambda s, at: decide.deposit(s, "later", 1, "sim", "", at))


async def test_a_command_the_fold_refuses_halfway_is_never_journaled_and_the_partition_is_reloaded() -> None:
    # Commands apply in place (no copy of a busy account per command): one whose second event the fold refuses
    # has changed memory already, so the writer stops and the partition is handed back to be loaded afresh.
    part, journal, committed, broken = PartitionState(0), Journal(), [], []
    w = writer(part, journal, committed, broken)
    await w.submit("a", lambda s, at: decide.create_agent(s, "a", "h" * 64, AgentPolicy(), at))

    def twice(s: AccountState, at: int) -> decide.Decided:
        once = decide.deposit(s, "d1", 100, "simulated", "", at)
        return decide.Decided(once.op_id, once.bodies * 2)  # the same deposit twice: the fold refuses the second

    bystander = asyncio.ensure_future(w.submit("a", lambda s, at: decide.deposit(s, "d2", 5, "simulated", "", at)))
    with pytest.raises(ArbstrError) as refused:
        await w.submit("a", twice)
    assert refused.value.status == 503 and broken and "refused by the fold" in broken[0]
    assert len(journal.raws) == 1  # only the creation: nothing of the half-applied batch was written
    with pytest.raises(ArbstrError):
        await bystander  # it shared the batch: told to try again (at the next owner), never told "done"
    fresh = PartitionState(0)
    for batch, seq, digest in batches_of(journal):
        fold_batch(fresh, batch, seq, digest)
    assert fresh.agents["a"].deposited_msat == 0
    await w.stop()


async def test_a_command_the_fold_refuses_at_once_is_a_500_and_the_writer_goes_on() -> None:
    part, journal, committed, broken = PartitionState(0), Journal(), [], []
    w = writer(part, journal, committed, broken)
    await w.submit("a", lambda s, at: decide.create_agent(s, "a", "h" * 64, AgentPolicy(), at))
    await w.submit("a", lambda s, at: decide.deposit(s, "d1", 100, "simulated", "", at))
    with pytest.raises(ArbstrError) as refused:  # the same deposit id again, bypassing the decider's check
        await w.submit("a", lambda s, at: decide.Decided("again", decide.deposit(
            AccountState(agent_id="a", created=True), "d1", 100, "simulated", "", at).bodies))
    assert refused.value.status == 500 and not broken
    await w.submit("a", lambda s, at: decide.deposit(s, "d2", 5, "simulated", "", at))
    assert part.agents["a"].deposited_msat == 105 and len(journal.raws) == 3
    await w.stop()


def batches_of(journal: Journal) -> list[tuple[JournalBatch, int, str]]:
    return [(JournalBatch.model_validate_json(raw), i + 1, batch_hash(raw)) for i, raw in enumerate(journal.raws)]


async def test_a_snapshot_plus_the_batches_after_it_is_the_whole_fold() -> None:
    part, journal, committed, broken = PartitionState(3), Journal(), [], []
    w = writer(part, journal, committed, broken)
    for agent in ("a", "b"):
        await w.submit(agent, lambda s, at, a=agent: decide.create_agent(s, a, a * 64, AgentPolicy(), at))
        await w.submit(agent, lambda s, at: decide.deposit(s, "d", 500_000, "simulated", "", at))
    for n in range(10):
        await w.submit("a", lambda s, at, n=n: decide.reserve(s, f"r{n}", ENV, at, ttl_ms=60_000))
        if n % 2:
            await w.submit("a", lambda s, at, n=n: decide.settle(s, f"r{n}", 7_000, at))
    snap = decode(encode(part))  # taken here ...
    for n in range(10, 15):  # ... and the journal moves on
        await w.submit("b", lambda s, at, n=n: decide.reserve(s, f"r{n}", ENV, at, ttl_ms=60_000))
    await w.stop()
    for batch, seq, digest in batches_of(journal):
        if seq > snap.last_seq:
            fold_batch(snap, batch, seq, digest)
    full = PartitionState(3)
    for batch, seq, digest in batches_of(journal):
        fold_batch(full, batch, seq, digest)
    assert snap.agents == full.agents == part.agents
    assert (snap.last_seq, snap.last_hash) == (full.last_seq, full.last_hash) == (part.last_seq, part.last_hash)
    events = [e for batch, _, _ in batches_of(journal) for entry in batch.entries if entry.agent_id == "a"
              for e in entry.events]
    assert fold(events) == part.agents["a"]


def test_the_read_model_folds_other_owners_batches_and_skips_its_own() -> None:
    book = Book(lambda agent_id: 0)
    state = AccountState(agent_id="a")
    d = decide.create_agent(state, "a", "t" * 64, AgentPolicy(), 1)
    from actors.vault.fold import next_events
    from schemas.ledger import JournalEntry
    events = next_events(state, d.op_id, d.bodies, 1, chained=False)
    batch = JournalBatch(partition=0, epoch=1, batch_id="x", at_ms=1,
                         entries=[JournalEntry(op_id=d.op_id, agent_id="a", events=events)])
    book.apply_batch(batch, 0, 5, "f" * 64)
    assert book.state("a").created and book.agent_by_token("t" * 64) == "a"
    book.apply_batch(batch, 0, 5, "f" * 64)  # the same sequence again changes nothing
    assert book.state("a").seq == 1
    book.owned.add(0)
    assert book.agent_by_token("x" * 64) is None


def test_forgetting_keeps_money_and_is_deterministic_in_the_events() -> None:
    state = AccountState(agent_id="a")
    ledger = decide.Ledger("a")
    t = 1_000_000
    ledger.run(decide.create_agent(ledger.state, "a", "h" * 64, AgentPolicy(), t), t)
    ledger.run(decide.deposit(ledger.state, "d", 1_000_000, "sim", "", t), t)
    for n in range(20):
        ledger.run(decide.reserve(ledger.state, f"r{n}", ENV, t, ttl_ms=60_000), t)
        ledger.run(decide.settle(ledger.state, f"r{n}", 5_000, t), t)
    later = t + FORGET_AFTER_MS + 1
    ledger.run(decide.deposit(ledger.state, "d2", 1, "sim", "", later), later)
    state = ledger.state
    assert not state.resolutions and not any(k.startswith(("reserve:", "settle:")) for k in state.op_ids)
    assert state.spent_msat == 20 * 5_000 and state.deposits == {"d": 1_000_000, "d2": 1}
    assert fold(ledger.events) == state  # a replay forgets exactly the same
    # A settle of a forgotten rid moves no money (a tombstone); a reserve of it is a new hold.
    d = decide.settle(state, "r3", 5_000, later)
    assert d.bodies and d.bodies[0].kind == "tombstoned"


def test_books_of_partitions_add_up() -> None:
    a, b = AccountState(agent_id="a"), AccountState(agent_id="b")
    for s, amount in ((a, 10), (b, 32)):
        s.created, s.deposited_msat, s.available_msat = True, amount, amount
    merged = merge_books([books([a], 3), books([b], 9)])
    assert (merged.deposits_msat, merged.balances_msat, merged.balanced, merged.agents) == (42, 42, True, 2)
    assert view(a).balance_msat == 10


class OwnerJournal:
    """The ``PartitionJournal`` side an owner uses (append, last, tail), over the in-memory ``Journal``."""

    def __init__(self, journal: Journal) -> None:
        self.j = journal
        self.tails: list[int] = []  # where each tail read began

    async def append(self, partition: int, raw: bytes, batch_id: str, expected: int) -> int:
        return await self.j.append(raw, batch_id, expected)

    async def last(self, partition: int) -> Any:
        return (len(self.j.raws), self.j.raws[-1]) if self.j.raws else None

    async def tail(self, partition: int, after_seq: int) -> Any:
        self.tails.append(after_seq)
        for i, raw in enumerate(list(self.j.raws)):
            if i + 1 > after_seq:
                yield i + 1, raw


class Snapshots:
    def __init__(self, raw: bytes | None) -> None:
        self.raw = raw
        self.loads = 0

    async def load(self, partition: int) -> PartitionState | None:
        self.loads += 1
        return decode(self.raw) if self.raw is not None else None

    async def save_raw(self, partition: int, raw: bytes) -> None:
        self.raw = raw


async def _history(part: PartitionState, journal: Journal) -> tuple[bytes, GroupCommit]:
    """Agents, money and requests journaled; a snapshot taken halfway (returned) and the writer, still open."""
    w = writer(part, journal, [], [])
    await w.submit("a", lambda s, at: decide.create_agent(s, "a", "a" * 64, AgentPolicy(), at))
    await w.submit("a", lambda s, at: decide.deposit(s, "d", 900_000, "simulated", "", at))
    for n in range(6):
        await w.submit("a", lambda s, at, n=n: decide.reserve(s, f"r{n}", ENV, at, ttl_ms=60_000))
    snap = encode(part)
    for n in range(6):
        await w.submit("a", lambda s, at, n=n: decide.settle(s, f"r{n}", 5_000, at))
    return snap, w


async def test_an_owner_starts_from_the_read_model_and_folds_only_what_it_lacks() -> None:
    from actors.vault.expiry import Timers
    from actors.vault.owner import PartitionOwner
    from actors.vault.ownership import Claim

    part, journal = PartitionState(2), Journal()
    snap, w = await _history(part, journal)
    await w.stop()
    # The read model: the snapshot, and the journal after it up to a point (the follower is a little behind).
    read_model = decode(snap)
    behind = batches_of(journal)[:-2]
    for batch, seq, digest in behind:
        if seq > read_model.last_seq:
            fold_batch(read_model, batch, seq, digest)
    js, snaps = OwnerJournal(journal), Snapshots(snap)

    async def nothing_due(due: Any) -> None:
        return None

    owner = PartitionOwner(Claim(2, 5, 0), js, snaps, Timers(nothing_due), lambda *a: None,  # type: ignore[arg-type]
                           lambda *a: None, 3600)
    await owner.load(read_model)
    assert snaps.loads == 0 and js.tails == [len(behind)]  # no snapshot decoded, only the missing batches read
    assert owner.part is read_model and owner.part.agents == part.agents
    assert (owner.part.last_seq, owner.part.last_hash) == (part.last_seq, part.last_hash)
    assert owner.snapshot_seq == decode(snap).last_seq  # events since the snapshot are published again as before
    # Exactly-once holds from there: a settle or a reserve already journaled is recognised, nothing written again.
    await owner.start()
    assert owner.writer is not None
    for decider in (lambda s, at: decide.settle(s, "r1", 5_000, at),
                    lambda s, at: decide.reserve(s, "r1", ENV, at, ttl_ms=60_000)):
        again = await owner.writer.submit("a", decider)
        assert again.decided.noop == "duplicate" and not again.events
    assert owner.part.agents["a"].spent_msat == part.agents["a"].spent_msat
    await owner.stop("test")


async def test_an_owner_does_not_start_from_a_read_model_ahead_of_the_journal() -> None:
    from actors.vault.expiry import Timers
    from actors.vault.owner import PartitionOwner
    from actors.vault.ownership import Claim

    part, journal = PartitionState(2), Journal()
    snap, w = await _history(part, journal)
    await w.stop()
    ahead = decode(encode(part))
    ahead.last_seq += 3  # memory a broken writer left ahead of what the journal holds
    snaps = Snapshots(snap)

    async def nothing_due(due: Any) -> None:
        return None

    owner = PartitionOwner(Claim(2, 5, 0), OwnerJournal(journal), snaps, Timers(nothing_due),  # type: ignore[arg-type]
                           lambda *a: None, lambda *a: None, 3600)
    await owner.load(ahead)
    assert snaps.loads == 1 and owner.part is not ahead
    assert owner.part.agents == part.agents and owner.part.last_seq == part.last_seq


def test_a_partition_whose_writer_broke_is_suspect_in_the_book_until_read_afresh() -> None:
    book = Book(lambda agent_id: 0)
    book.adopt(PartitionState(0))
    book.suspect.add(0)
    book.adopt(PartitionState(0))
    assert 0 not in book.suspect
