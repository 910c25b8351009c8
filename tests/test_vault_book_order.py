"""The book hands entries to stream-keyed consumers in stream order, even when this instance's own write is
folded on its ack before the follower has delivered another instance's earlier entry; and the DuckDB projection
fed that way sums to the fold at any sequence."""

from __future__ import annotations

import threading

from actors.vault.book import Book
from actors.vault.decide import create_agent, deposit
from actors.vault.fold import AccountState, next_events
from actors.vault.projection import Projection
from schemas.ledger import JournalEntry, LedgerEvent
from schemas.vault import AgentPolicy

T0 = 1_700_000_000_000


def entry(book: Book, agent_id: str, decided_of) -> JournalEntry:  # type: ignore[no-untyped-def]
    state = book.slot(agent_id).state
    d = decided_of(state)
    return JournalEntry(op_id=d.op_id, agent_id=agent_id, events=next_events(state, d.op_id, d.bodies, T0))


def created(agent_id: str) -> JournalEntry:
    state = AccountState(agent_id=agent_id)
    d = create_agent(state, agent_id, "h-" + agent_id, AgentPolicy(), T0)
    return JournalEntry(op_id=d.op_id, agent_id=agent_id, events=next_events(state, d.op_id, d.bodies, T0))


def test_an_own_write_ahead_of_the_follower_reaches_ordered_consumers_after_the_entry_below_it() -> None:
    order: list[int] = []
    early: list[int] = []
    book = Book(on_events=lambda evs, seq, st: early.append(seq), on_ordered=lambda evs, seq: order.append(seq))
    book.apply_entry(created("a"), 1)
    book.apply_entry(created("b"), 2)
    mine = entry(book, "a", lambda s: deposit(s, "d1", 5_000, "simulated", "", T0))
    book.apply_entry(mine, 4, in_order=False)  # our ack for seq 4 arrived first ...
    assert book.top_seq == 4 and order == [1, 2]  # ... it folds at once, ordered consumers wait
    theirs = entry(book, "b", lambda s: deposit(s, "d2", 7_000, "simulated", "", T0))
    book.apply_entry(theirs, 3)  # ... then the follower delivers another instance's seq 3
    assert order == [1, 2, 3]
    assert book.already_applied("a", mine.events[-1].seq, 4)  # and reaches our own entry
    assert order == [1, 2, 3, 4] and early == [1, 2, 4, 3]
    assert not book._ahead


def test_an_own_write_the_follower_delivers_first_is_handed_over_once() -> None:
    order: list[int] = []
    book = Book(on_ordered=lambda evs, seq: order.append(seq))
    book.apply_entry(created("a"), 1)
    mine = entry(book, "a", lambda s: deposit(s, "d1", 5_000, "simulated", "", T0))
    book.apply_entry(mine, 2)  # the follower won the race with the ack
    assert book.apply_entry(mine, 2, in_order=False) == []  # the ack path finds nothing new
    assert order == [1, 2] and not book._ahead


def test_projection_fed_in_order_agrees_with_the_fold_at_every_sequence() -> None:
    projection = Projection()
    events: dict[int, list[LedgerEvent]] = {}
    book = Book(on_ordered=lambda evs, seq: (projection.add(evs, seq), events.__setitem__(seq, evs)))
    try:
        book.apply_entry(created("a"), 1)
        book.apply_entry(created("b"), 2)
        mine = entry(book, "a", lambda s: deposit(s, "d1", 5_000, "simulated", "", T0))
        book.apply_entry(mine, 4, in_order=False)
        theirs = entry(book, "b", lambda s: deposit(s, "d2", 7_000, "simulated", "", T0))
        book.apply_entry(theirs, 3)
        assert projection.totals(upto_seq=3).get("deposited") == 7_000
        book.already_applied("a", mine.events[-1].seq, 4)
        assert projection.totals().get("deposited") == 12_000  # nothing was dropped as "already seen"
        assert projection.totals(upto_seq=3).get("deposited") == 7_000
        assert projection.totals(agent_id="a").get("deposited") == 5_000
    finally:
        projection.close()


def test_rows_added_while_a_flush_runs_in_a_thread_are_never_lost() -> None:
    projection = Projection()
    book = Book(on_ordered=projection.add)
    book.apply_entry(created("a"), 1)
    stop = threading.Event()

    def flusher() -> None:
        while not stop.is_set():
            projection.flush()

    t = threading.Thread(target=flusher)
    t.start()
    try:
        for i in range(2, 402):
            book.apply_entry(entry(book, "a", lambda s: deposit(s, f"d{i}", 1_000, "simulated", "", T0)), i)
    finally:
        stop.set()
        t.join()
    try:
        assert projection.totals().get("deposited") == 400 * 1_000
        assert book.slot("a").state.deposited_msat == 400 * 1_000
    finally:
        projection.close()


def test_a_projection_file_from_an_older_version_is_rebuilt_from_the_ledger(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import duckdb

    from actors.vault.projection import PROJECTION_VERSION

    path = str(tmp_path / "projection.duckdb")
    projection = Projection(path)
    book = Book(on_ordered=projection.add)
    book.apply_entry(created("a"), 1)
    book.apply_entry(entry(book, "a", lambda s: deposit(s, "d1", 5_000, "simulated", "", T0)), 2)
    projection.close()
    again = Projection(path)  # same version: kept, and a replay from sequence 1 adds nothing
    assert again.applied_seq == 2 and again.totals().get("deposited") == 5_000
    again.close()
    db = duckdb.connect(path)  # what a version-1 file looks like: no version key
    db.execute("DELETE FROM projection_meta WHERE k = 'ledger_version'")
    db.close()
    old = Projection(path)
    try:
        assert old.applied_seq == 0 and old.totals() == {}  # emptied: the vault's replay refills it
        replay = Book(on_ordered=old.add)
        replay.apply_entry(created("a"), 1)
        replay.apply_entry(entry(replay, "a", lambda s: deposit(s, "d1", 5_000, "simulated", "", T0)), 2)
        assert old.totals().get("deposited") == 5_000
        row = old.db.execute("SELECT v FROM projection_meta WHERE k = 'ledger_version'").fetchone()
        assert row == (PROJECTION_VERSION,)
    finally:
        old.close()


async def test_history_right_after_an_acked_write_shows_it(fresh_nats) -> None:  # type: ignore[no-untyped-def]
    import nats

    from actors.vault.actor import VaultActor
    from schemas.vault import HistoryQuery
    from tests.stack import demo_config, vault_section

    nc = await nats.connect(fresh_nats.url)
    actor = VaultActor(demo_config("http://127.0.0.1:9", vault=vault_section()))
    await actor.start(nc)
    try:
        await actor.execute("a1", lambda s, at: create_agent(s, "a1", "h1", AgentPolicy(), at))
        for i in range(100):
            await actor.execute("a1", lambda s, at, i=i: deposit(s, f"d{i}", 1_000, "simulated", "", at))
            newest = (await actor._my_history(HistoryQuery(token_hash="h1", limit=1), {})).items
            assert newest and newest[0].op_id == f"deposit:d{i}", (i, newest)
    finally:
        await actor.stop()
        await nc.drain()
