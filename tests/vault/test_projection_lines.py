"""The ledger projection loads journal batches as they came from the stream (DuckDB unnests them into rows): the
rows must be what the journal says, entries from before batches keep their own hash chain, and a message DuckDB
cannot load is left out without stopping the projection. Pure: no NATS."""

from __future__ import annotations

import orjson

from actors.vault.projection import Projection
from actors.vault.request_log import RequestLog
from schemas.ledger import (AgentCreated, Deposited, JournalBatch, JournalEntry, LedgerEvent, Reserved, Settled,
                            batch_hash, event_hash)
from schemas.requests import RequestRecord, RequestsQuery, StatsQuery
from schemas.vault import AgentPolicy


def _event(agent: str, seq: int, op: str, body, part: int = 0, prev: str = "") -> LedgerEvent:
    return LedgerEvent(op_id=op, agent_id=agent, seq=seq, part=part, at_ms=1_000 + seq, prev_hash=prev, body=body)


def _batch(n: int, entries: list[JournalEntry], prev: str = "") -> bytes:
    return JournalBatch(partition=0, epoch=1, batch_id=f"p0:e1:s:{n}", prev_hash=prev, at_ms=5,
                        entries=entries).model_dump_json().encode()


def _rows(p: Projection) -> list[tuple]:
    p.flush()
    return p.db.execute("SELECT stream, stream_seq, agent_id, seq, part, kind, rid, amount_msat, provider, model, "
                        "body, hash, prev_hash FROM ledger ORDER BY stream_seq, agent_id, seq").fetchall()


def test_a_batch_becomes_one_row_per_event_with_the_batchs_link() -> None:
    p = Projection(streams=2)
    created = _event("a", 1, "create:a", AgentCreated(name="a", token_hash="0" * 64, policy=AgentPolicy()))
    deposit = _event("a", 2, "deposit:d", Deposited(deposit_id="d", amount_msat=2_000_000_000_000_000_000,
                                                     rail="simulated"))
    hold = _event("b", 7, "reserve:r", Reserved(rid="r", amount_msat=500, output_tokens=10, expires_at_ms=9,
                                                 model="m"))
    settle = _event("b", 8, "settle:r", Settled(rid="r", cost_msat=40, charged_msat=30, uncollectible_msat=10,
                                                provider="p"), part=0)
    first = _batch(1, [JournalEntry(op_id="create:a", agent_id="a", events=[created]),
                       JournalEntry(op_id="deposit:d", agent_id="a", events=[deposit])])
    second = _batch(2, [JournalEntry(op_id="g", agent_id="b", events=[hold, settle])], prev=batch_hash(first))
    marker = _batch(3, [], prev=batch_hash(second))
    rows = p.streams[1]
    rows.add(first, 4)
    rows.add(second, 9)
    rows.add(marker, 10)
    rows.add(second, 9)  # a redelivery changes nothing
    got = _rows(p)
    assert [(r[1], r[2], r[3], r[5], r[6], r[7], r[8], r[9]) for r in got] == [
        (4, "a", 1, "agent_created", None, 0, None, None),
        (4, "a", 2, "deposited", None, 2_000_000_000_000_000_000, None, None),
        (9, "b", 7, "reserved", "r", 500, None, "m"),
        (9, "b", 8, "settled", "r", 30, "p", None),  # what was charged, not what it cost
    ]
    assert {r[0] for r in got} == {1}
    assert [(r[11], r[12]) for r in got] == [(batch_hash(first), "")] * 2 + [(batch_hash(second),
                                                                                batch_hash(first))] * 2
    assert orjson.loads(got[3][10]) == settle.body.model_dump(mode="json")
    assert p.applied(1) == 10 and p.applied(0) == 0
    p.close()


def test_an_entry_written_before_batches_keeps_its_per_event_chain() -> None:
    p = Projection()
    one = _event("a", 1, "deposit:x", Deposited(deposit_id="x", amount_msat=5, rail="simulated"))
    two = _event("a", 2, "deposit:y", Deposited(deposit_id="y", amount_msat=7, rail="simulated"),
                 prev=event_hash(one))
    p.streams[0].add(JournalEntry(op_id="deposit:x", agent_id="a", events=[one, two]).model_dump_json().encode(), 1)
    got = _rows(p)
    assert [(r[3], r[7], r[11], r[12]) for r in got] == [(1, 5, event_hash(one), ""), (2, 7, event_hash(two),
                                                                                        event_hash(one))]
    assert p.totals("a") == {"deposited": 12}
    p.close()


def test_a_message_duckdb_cannot_load_is_left_out_and_the_rest_loads() -> None:
    p = Projection()
    good = _event("a", 1, "deposit:x", Deposited(deposit_id="x", amount_msat=5, rail="simulated"))
    raw = _batch(1, [JournalEntry(op_id="deposit:x", agent_id="a", events=[good])])
    bad = raw.replace(b'"seq":1', b'"seq":"one"')  # looks like a batch, cannot be a row
    later = _batch(2, [JournalEntry(op_id="deposit:x", agent_id="b", events=[good.model_copy(
        update={"agent_id": "b"})])])
    p.streams[0].add(raw, 1)
    p.streams[0].add(bad, 2)
    p.streams[0].add(later, 3)
    assert [(r[1], r[2]) for r in _rows(p)] == [(1, "a"), (3, "b")]
    assert p.streams[0].applied_seq == 3
    p.close()


def _record(rid: str, **fields) -> bytes:
    record = {"request_id": rid, "agent_id": "a", "endpoint": "chat", "model": "auto", "provider": "p",
              "tier": "local", "status": 200, "success": True, "streamed": False, "input_tokens": 3,
              "output_tokens": 4, "cost_msat": 12, "latency_ms": 1.5, "overhead_ms": 0.2, "at_ms": 1000,
              "pinned_costs": [{"provider": "p", "model": "m", "cost_msat": 12}]}
    record.update(fields)
    return orjson.dumps({k: v for k, v in record.items() if v is not ...})


def test_request_records_load_as_published_and_what_the_model_refuses_is_left_out() -> None:
    log = RequestLog(Projection())
    log.add_raw(_record("r1", tier_features=[{"name": "len:2", "weight": 0.5}], predicted_tier="local",
                        tier_confidence=0.9, tier_scorer="trained"), 1)
    log.add_raw(_record("r2", input_tokens=..., cost_drift=..., estimated=...), 2)  # left out: defaults
    log.add_raw(_record("r3", endpoint=...), 3)  # a required field missing
    log.add_raw(_record("r4", output_tokens=-1), 4)  # a count below zero
    log.add_raw(_record("r5", predicted_tier="galaxy-brain"), 5)
    log.add_raw(_record("r6", status="not a number"), 6)  # DuckDB cannot read it: the batch loads one by one
    log.add_raw(b'{"request_id": "r7"', 7)  # not JSON at all
    log.add_raw(_record("r8", success=None), 8)
    log.add_raw(_record("r9", stream_seq=1), 9)  # names the column the log adds: read through the model
    # Items of a list the model would refuse (each made reading the log fail once it was loaded).
    log.add_raw(_record("r10", pinned_costs=[{"provider": "p", "model": "m", "cost_msat": -5}]), 10)
    log.add_raw(_record("r11", pinned_costs=[{"model": "m", "cost_msat": 5}]), 11)
    log.add_raw(_record("r12", pinned_costs=[None]), 12)
    log.add_raw(_record("r13", tier_features=[{"name": "n"}]), 13)
    log.add_raw(_record("r14", tier_features=[None]), 14)
    items = {r.request_id: r for r in log.requests(RequestsQuery(sort="at", order="asc")).items}
    assert sorted(items) == ["r1", "r2", "r9"]
    assert items["r1"] == RequestRecord.model_validate_json(_record(
        "r1", tier_features=[{"name": "len:2", "weight": 0.5}], predicted_tier="local", tier_confidence=0.9,
        tier_scorer="trained"))
    assert (items["r2"].input_tokens, items["r2"].cost_drift, items["r2"].estimated) == (0, False, False)
    assert log.applied_seq == 14
    # The same records again (a replay from the stream's start) change nothing.
    log.add_raw(_record("r1"), 1)
    assert log.requests(RequestsQuery()).total == 3
    stats = log.stats(StatsQuery())
    assert (stats.rows[0].requests, stats.rows[0].input_tokens) == (3, 3 + 0 + 3)


def test_one_bad_message_among_many_is_found_and_only_it_is_left_out() -> None:
    p = Projection()
    raws = []
    for n in range(1, 40):
        event = _event(f"a{n}", 1, f"deposit:{n}", Deposited(deposit_id=f"{n}", amount_msat=n, rail="simulated"))
        raw = _batch(n, [JournalEntry(op_id=f"deposit:{n}", agent_id=f"a{n}", events=[event])])
        raws.append(raw.replace(b'"at_ms":1001', b'"at_ms":[1]') if n in (7, 30) else raw)
    for n, raw in enumerate(raws, start=1):
        p.streams[0].add(raw, n * 2)
    assert sorted(int(r[2][1:]) for r in _rows(p)) == [n for n in range(1, 40) if n not in (7, 30)]
    assert p.streams[0].applied_seq == 78
    p.streams[0].add(raws[0], 80)  # and the table goes on loading
    assert len(_rows(p)) == 38
    p.close()
