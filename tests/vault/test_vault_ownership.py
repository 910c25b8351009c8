"""Partition leases (``actors/vault/ownership.py``) on a real nats-server, without the rest of the vault: a dead
instance's partitions are loaded side by side, renewals go on while partitions load, a hand-back whose write was
lost is repaired (never a partition nobody serves), and the loop wakes when a member's lease runs out."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Callable

import nats
import pytest
from nats.aio.client import Client as NATS

from actors.runtime.jetstream import open_bucket
from actors.vault.ownership import Claim, Ownership, _Seen, member_key, owner_key
from arbstr.natsserver import NatsServer
from schemas import subjects
from tests.support.waiting import eventually

LEASE_S = 0.5


class Served:
    """The acquired/lost callbacks of one instance: which partitions it serves, and an optional gate that holds
    every load until opened."""

    def __init__(self, gated: bool = False) -> None:
        self.serving: set[int] = set()
        self.loading: set[int] = set()
        self.most_loading = 0
        self.acquired_calls: list[int] = []
        self.gate = asyncio.Event()
        if not gated:
            self.gate.set()

    async def acquired(self, claim: Claim) -> bool:
        self.acquired_calls.append(claim.partition)
        self.loading.add(claim.partition)
        self.most_loading = max(self.most_loading, len(self.loading))
        try:
            await self.gate.wait()
        finally:
            self.loading.discard(claim.partition)
        self.serving.add(claim.partition)
        return True

    async def lost(self, partition: int, reason: str) -> None:
        self.serving.discard(partition)


class LosesOneUpdate:
    """The bucket, except that the next ``update`` armed to fail raises a timeout (a write lost in an election)."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv
        self.fail_next = 0

    async def update(self, key: str, value: bytes, last: int) -> int:
        if self.fail_next and key.startswith("owner."):
            self.fail_next -= 1
            raise nats.errors.TimeoutError()
        return int(await self._kv.update(key, value, last=last))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)


@pytest.fixture
async def conns(fresh_nats: NatsServer) -> AsyncIterator[Callable[[], Any]]:
    made: list[NATS] = []

    async def connect() -> NATS:
        nc = await nats.connect(fresh_nats.url)
        made.append(nc)
        return nc

    yield connect
    for nc in made:
        await nc.close()


async def instance(connect: Callable[[], Any], name: str, partitions: int, served: Served) -> Ownership:
    nc = await connect()
    kv = await open_bucket(nc, subjects.KV_PARTITIONS)
    own = Ownership(kv, name, partitions, LEASE_S, served.acquired, served.lost)
    await own.start()
    return own


async def test_a_dead_instances_partitions_load_side_by_side_while_the_lease_is_renewed(conns) -> None:  # type: ignore[no-untyped-def]
    a_served, b_served = Served(), Served(gated=True)
    a = await instance(conns, "a", 6, a_served)
    await eventually(lambda: a_served.serving == set(range(6)), 10, "a serving every partition")
    await a.freeze()  # a dies: no renewals any more
    b = await instance(conns, "b", 6, b_served)
    try:
        # Every one of a's partitions is being loaded at once: none waits for another's load to end.
        await eventually(lambda: b_served.most_loading == 6, 10, "the six loads in flight together")
        # Meanwhile b's own lease keeps being renewed (a long load must not make b look dead to the others).
        kv = b.kv
        first = (await kv.get(member_key("b"))).revision

        async def renewed_twice() -> bool:
            return bool((await kv.get(member_key("b"))).revision >= first + 2)

        await eventually(renewed_twice, 10, "b's lease renewed while its loads hang")
        assert not b_served.serving
        b_served.gate.set()
        await eventually(lambda: b_served.serving == set(range(6)), 10, "b serving every partition")
        assert sorted(b_served.acquired_calls) == list(range(6))  # each taken once
    finally:
        await b.stop()


async def test_a_hand_back_whose_write_was_lost_is_taken_again(conns) -> None:  # type: ignore[no-untyped-def]
    served = Served()
    a = await instance(conns, "a", 4, served)
    try:
        await eventually(lambda: served.serving == set(range(4)), 10, "a serving every partition")
        flaky = LosesOneUpdate(a.kv)
        a.kv = flaky  # type: ignore[assignment]
        flaky.fail_next = 1
        await a.hand_back(2, "journal write failed")  # the writer broke; its hand-back write is lost
        assert 2 not in served.serving
        # Still named as a's in the bucket, and a is alive: nobody else would take it. a takes it again.
        await eventually(lambda: 2 in served.serving and 2 in a.owned, 10, "partition 2 served again")
        assert a.owned[2].epoch == 2 and served.acquired_calls.count(2) == 2
    finally:
        await a.stop()


async def test_a_balancing_hand_back_whose_write_was_lost_is_written_later(conns) -> None:  # type: ignore[no-untyped-def]
    a_served, b_served = Served(), Served()
    a = await instance(conns, "a", 4, a_served)
    await eventually(lambda: a_served.serving == set(range(4)), 10, "a serving every partition")
    flaky = LosesOneUpdate(a.kv)
    a.kv = flaky  # type: ignore[assignment]
    flaky.fail_next = 1  # the first extra a hands back when b joins: its write is lost
    b = await instance(conns, "b", 4, b_served)
    try:
        def shared() -> bool:
            return (len(a_served.serving) == len(b_served.serving) == 2
                    and a_served.serving.isdisjoint(b_served.serving))

        await eventually(shared, 15, "two partitions each, none served twice or by nobody")
        assert flaky.fail_next == 0
    finally:
        await b.stop()
        await a.stop()


def test_the_loop_wakes_when_the_first_live_members_lease_runs_out() -> None:
    own = Ownership(None, "me", 4, 2.0, Served().acquired, Served().lost)  # type: ignore[arg-type]
    own._started = 0.0
    own._seen = {
        member_key("me"): _Seen({}, 9, 99.0),  # ourselves: never judged
        member_key("x"): _Seen({}, 3, 100.0),  # silent since 100: its lease runs out at 102
        member_key("y"): _Seen({}, 4, 100.5),  # runs out at 102.5
        member_key("dead"): _Seen({}, 1, 90.0),  # judged dead already
        owner_key(0): _Seen({"instance": "x"}, 5, 100.0),
    }
    assert own.next_expiry_in(101.0) == pytest.approx(1.0)
    assert own.next_expiry_in(102.2) == pytest.approx(0.3)
    assert own.next_expiry_in(103.0) is None  # everyone else is dead: nothing to wake for


async def test_a_load_that_fails_is_tried_again_under_the_same_lease(conns) -> None:  # type: ignore[no-untyped-def]
    served = Served()
    failures = {1: 2}  # partition 1's first two loads fail (the journal is electing a leader)
    plain = served.acquired

    async def flaky(claim: Claim) -> bool:
        if failures.get(claim.partition):
            failures[claim.partition] -= 1
            served.acquired_calls.append(claim.partition)
            raise TimeoutError("no stream leader")
        return await plain(claim)

    served.acquired = flaky  # type: ignore[method-assign]
    a = await instance(conns, "a", 2, served)
    try:
        await eventually(lambda: served.serving == {0, 1}, 10, "both partitions served")
        assert served.acquired_calls.count(1) == 3 and a.owned[1].epoch == 1  # never handed back meanwhile
    finally:
        await a.stop()
