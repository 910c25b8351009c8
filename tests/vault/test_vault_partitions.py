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


async def test_a_batch_past_the_servers_payload_limit_is_written_as_several_messages(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from actors.vault import group_commit

    monkeypatch.setattr(group_commit, "MAX_BATCH_BYTES", 3000)
    part, journal, committed, broken = PartitionState(0), Journal(), [], []
    w = writer(part, journal, committed, broken)
    await w.submit("a", lambda s, at: decide.create_agent(s, "a", "h" * 64, AgentPolicy(), at))
    journal.gate.clear()  # everything behind the first deposit queues up into one batch
    first = asyncio.ensure_future(w.submit("a", lambda s, at: decide.deposit(s, "d0", 1, "simulated", "", at)))
    await asyncio.sleep(0.01)
    rest = [asyncio.ensure_future(w.submit("a", lambda s, at, n=n: decide.deposit(s, f"d{n}", 1, "simulated", "", at)))
            for n in range(1, 41)]
    await asyncio.sleep(0.01)
    journal.gate.set()
    await asyncio.gather(first, *rest)
    assert all(len(raw) <= 3000 for raw in journal.raws) and len(journal.raws) > 3
    assert sum(len(b.entries) for b, _, _ in batches_of(journal)) == 42 and not broken
    assert verify_batches(journal.raws) == (True, None)
    fresh = PartitionState(0)
    for batch, seq, digest in batches_of(journal):
        fold_batch(fresh, batch, seq, digest)
    assert fresh.agents["a"].deposited_msat == part.agents["a"].deposited_msat == 41
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
    book.owned[0] = 1
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


class ElectionJournal:
    """A partition's journal through a JetStream election: ``dark`` requests go unanswered (timeouts), and a write
    may land although its answer is lost."""

    def __init__(self) -> None:
        self.raws: list[bytes] = []
        self.dark_appends = 0  # the next this many appends time out, having written nothing
        self.lost_acks = 0  # the next this many appends land, but time out
        self.dark_reads = 0  # the next this many reads of the last batch time out

    async def append(self, partition: int, raw: bytes, batch_id: str, expected_seq: int, timeout_s: float = 5.0) -> int:
        if self.dark_appends:
            self.dark_appends -= 1
            raise TimeoutError("no answer")
        if expected_seq != len(self.raws):
            raise Fenced(f"expected {expected_seq}, at {len(self.raws)}")
        self.raws.append(raw)
        if self.lost_acks:
            self.lost_acks -= 1
            raise TimeoutError("ack lost")
        return len(self.raws)

    async def last(self, partition: int) -> Any:
        if self.dark_reads:
            self.dark_reads -= 1
            raise TimeoutError("no answer")
        return (len(self.raws), self.raws[-1]) if self.raws else None


def owner_on(journal: ElectionJournal) -> Any:
    from actors.vault.owner import PartitionOwner
    from actors.vault.ownership import Claim
    return PartitionOwner(Claim(0, 1, 1), journal, None, None, None, None, 60.0)  # type: ignore[arg-type]


def a_batch(batch_id: str) -> bytes:
    return JournalBatch(partition=0, epoch=1, batch_id=batch_id, at_ms=1).model_dump_json().encode()


async def test_a_batch_is_sent_again_through_an_election_and_lands_once() -> None:
    # Before: one retry, and a failed "did it land?" read stopped the writer, so the partition was handed back
    # and loaded afresh after the election (seconds more of 503s on a partition nobody had lost).
    journal = ElectionJournal()
    journal.dark_appends, journal.dark_reads = 3, 3
    assert await owner_on(journal)._append(a_batch("b1"), "b1", 0) == 1
    assert len(journal.raws) == 1


async def test_a_batch_whose_ack_was_lost_is_found_not_written_twice() -> None:
    journal = ElectionJournal()
    journal.lost_acks, journal.dark_reads = 1, 2  # it landed; the reads that would say so time out at first
    assert await owner_on(journal)._append(a_batch("b1"), "b1", 0) == 1
    assert len(journal.raws) == 1  # the second send was fenced by the first copy, which was then found


async def test_a_batch_fenced_by_another_owner_still_stops_the_writer() -> None:
    journal = ElectionJournal()
    journal.raws.append(a_batch("theirs"))  # a new owner's marker
    journal.dark_appends = 1
    with pytest.raises(Fenced):
        await owner_on(journal)._append(a_batch("mine"), "mine", 0)
    assert len(journal.raws) == 1


class TailOf:
    """What an owner reads at takeover from a journal written through ``Journal``: its batches after a point."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal

    async def tail(self, partition: int, after_seq: int) -> Any:
        for i, raw in enumerate(self.journal.raws):
            if i + 1 > after_seq:
                yield i + 1, raw


class NoSnapshot:
    def __init__(self) -> None:
        self.reads = 0

    async def load(self, partition: int) -> None:
        self.reads += 1
        return None


async def history(journal: Journal, batches: int) -> PartitionState:
    """A partition written by its owner: an agent, a deposit and then reserves, one batch each."""
    part, committed, broken = PartitionState(0), [], []
    w = writer(part, journal, committed, broken)
    await w.submit("a", lambda s, at: decide.create_agent(s, "a", "h" * 64, AgentPolicy(), at))
    await w.submit("a", lambda s, at: decide.deposit(s, "d", 10**9, "simulated", "", at))
    for n in range(batches - 2):
        await w.submit("a", lambda s, at, n=n: decide.reserve(s, f"r{n}", ENV, at, ttl_ms=60_000))
    await w.stop()
    return part


def taking_over(journal: Journal, warm: Any, snapshots: NoSnapshot) -> Any:
    from actors.vault.owner import PartitionOwner
    from actors.vault.ownership import Claim
    return PartitionOwner(Claim(0, 2, 1), TailOf(journal), snapshots, None, None, None, 60.0,  # type: ignore[arg-type]
                          warm=lambda: warm)


async def test_a_takeover_starts_from_the_read_models_copy_and_folds_only_what_came_after() -> None:
    journal = Journal()
    await history(journal, 10)
    follower = PartitionState(0)  # the read model of another instance: folded from the journal as it went by
    for batch, seq, digest in batches_of(journal)[:7]:
        fold_batch(follower, batch, seq, digest)
    snapshots = NoSnapshot()
    owner = taking_over(journal, decode(encode(follower)), snapshots)
    await owner.load()
    full = PartitionState(0)
    for batch, seq, digest in batches_of(journal):
        fold_batch(full, batch, seq, digest)
    assert owner.warm and snapshots.reads == 0 and owner.tail_batches == 3
    assert owner.part.agents == full.agents and (owner.part.last_seq, owner.part.last_hash) == (10, full.last_hash)


async def test_a_read_model_copy_that_does_not_lead_on_to_the_journal_is_dropped() -> None:
    journal = Journal()
    await history(journal, 10)
    follower = PartitionState(0)
    for batch, seq, digest in batches_of(journal)[:7]:
        if seq != 5:  # it missed a batch, and then claims to be further on than it is
            fold_batch(follower, batch, seq, digest)
    follower.last_seq = 8
    snapshots = NoSnapshot()
    owner = taking_over(journal, follower, snapshots)
    await owner.load()
    full = PartitionState(0)
    for batch, seq, digest in batches_of(journal):
        fold_batch(full, batch, seq, digest)
    assert not owner.warm and snapshots.reads == 1 and owner.tail_batches == 10  # from the start: no snapshot here
    assert owner.part.agents == full.agents


async def test_the_read_model_marks_a_partition_whose_batches_do_not_chain() -> None:
    journal = Journal()
    await history(journal, 6)
    book = Book(lambda agent_id: 0)
    for batch, seq, digest in batches_of(journal):
        if seq != 3:  # a batch skipped (its partition was ours then, say)
            book.apply_batch(batch, 0, seq, digest)
    assert book.unchained == {0}
    book.adopt(PartitionState(0))  # read afresh: trusted again
    assert book.unchained == set()


async def test_a_stop_that_cuts_a_batch_off_is_no_clean_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    # The owner snapshots memory after a clean stop and a takeover may start from it: memory holding a batch
    # the journal may never have got must not pass for one.
    from actors.vault import group_commit
    monkeypatch.setattr(group_commit, "STOP_WAIT_S", 0.05)
    part, journal, committed, broken = PartitionState(0), Journal(), [], []
    w = writer(part, journal, committed, broken)
    journal.gate.clear()  # the journal does not answer
    pending = asyncio.ensure_future(w.submit("a", lambda s, at: decide.create_agent(s, "a", "h" * 64, AgentPolicy(),
                                                                                     at)))
    await asyncio.sleep(0.01)
    await w.stop("handing back")
    assert w.stopped != "handing back" and "cut off" in (w.stopped or "")
    with pytest.raises(ArbstrError):
        await pending


async def test_a_read_model_read_afresh_keeps_what_the_follower_folded_while_it_was_read() -> None:
    # A partition this instance stopped serving is read afresh (snapshot + journal tail). Batches written after the
    # tail was read are folded by the follower into the copy being replaced: adopting the fresh copy as read made
    # an agent created then unknown here for good (its token refused on every request routed to this instance).
    from types import SimpleNamespace

    from actors.vault.serving import PartitionServing

    part, journal, committed, broken = PartitionState(0), Journal(), [], []
    w = writer(part, journal, committed, broken)
    await w.submit("a", lambda s, at: decide.create_agent(s, "a", "a" * 64, AgentPolicy(), at))
    book = Book(lambda agent_id: 0)
    for batch, seq, digest in batches_of(journal):
        book.apply_batch(batch, 0, seq, digest)

    class Tail:
        """The journal as a reload reads it; the next owner writes once the first read is done."""

        reads = 0

        async def tail(self, k: int, after: int) -> Any:
            for i, raw in enumerate(journal.raws):
                if i + 1 > after:
                    yield i + 1, raw
            Tail.reads += 1
            if Tail.reads == 1:
                await w.submit("b", lambda s, at: decide.create_agent(s, "b", "b" * 64, AgentPolicy(), at))
                for batch, seq, digest in batches_of(journal)[1:]:
                    book.apply_batch(batch, 0, seq, digest)  # what the follower does meanwhile

    async def no_snapshot(k: int) -> None:
        return None

    serving: Any = PartitionServing.__new__(PartitionServing)
    serving.snapshots, serving.journal, serving.book = SimpleNamespace(load=no_snapshot), Tail(), book
    serving.layout, serving._cold = SimpleNamespace(streams=1), {0}
    await serving._reload_partition(0)
    await w.stop()
    assert book.agent_by_token("b" * 64) == "b" and book.agent_by_token("a" * 64) == "a"
    assert book.parts[0].last_seq == 2 and 0 not in serving._cold
