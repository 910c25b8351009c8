"""Model-based test of the partitioned vault on a real nats-server: two live VaultActor instances (each owning
some of the partitions) against a reference model.

``test_vault_model.py`` checks the pure core; this machine drives the real shell — leases, group commit, fenced
JetStream batches, forwarding to a partition's owner, the ARBSTR_SETTLE work queue, snapshots, takeovers, the
read model, the DuckDB projection — with duplicate deliveries, lost acks, batches cut by a crash, racing
settle/release/expire on one hold, a stale owner that keeps writing after its partitions were taken over, and
restarts. The reference is plain ints per agent. After every step: balances match the model, the books balance,
a replay of the journal from sequence 1 folds to exactly what both instances hold, each partition's snapshot plus
the journal after it equals that replay, and both DuckDB projections agree with it.

Each example gets its own nats-server and its own event loop, in a thread: the rules are plain functions that
run coroutines on it. Holds fall due without sleeping: the test moves the vault's wall clock forward (both
instances share it, like two machines with synchronised clocks).
"""

from __future__ import annotations

import asyncio
import hashlib
import shutil
import tempfile
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Coroutine, Optional, TypeVar

import nats
import pytest
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from nats.aio.client import Client as NATS

import actors.vault.clock as vault_clock_module
import actors.vault.group_commit as group_commit_module
import actors.vault.owner as owner_module
from actors.runtime.endpoints import RawReply
from actors.runtime.host import ActorHost
from actors.runtime.tasks import cancel_and_wait
from actors.vault import decide
from actors.vault.actor import VaultActor
from actors.vault.fold import FORGET_AFTER_MS, fold
from actors.vault.ledger_read import read_ledger, verify_ledger
from actors.vault.partition import PartitionState, fold_batch
from actors.vault.partition_journal import Fenced
from actors.vault.projection import Projection
from arbstr.natsserver import NatsServer
from gateway.bus import Bus
from schemas import subjects
from schemas.config import Config, parse_config
from schemas.errors import ArbstrError
from schemas.ledger import JournalBatch, batch_hash
from schemas.partitions import partition_of
from schemas.router import Envelope
from schemas.vault import (AccountView, AgentPolicy, CreateAgent, DepositCommand, Empty, ReserveReply,
                           ReserveRequest, SettleCommand)
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

T = TypeVar("T")
# The timers run on the real clock, so holds fall due only when the test moves the vault's clock and sweeps; the
# TTL is well under the fold's forgetting horizon, so the model can tell when a resolved rid is forgotten.
TTL_S = 120
MODEL_ADMIN_TOKEN = "model-admin-token"
RATE = 1_000_000  # sats per 1M tokens = 1,000 msat per token: a hold is plain arithmetic in the model
MSAT_PER_TOKEN = 1_000
PARTITIONS = 8
REAL_NOW_MS = vault_clock_module.now_ms
RESOLVED = ("settled", "released", "expired", "denied")


# --- plumbing -----------------------------------------------------------------------------------------------

class LoopThread:
    """An event loop in a thread of its own, so the (synchronous) state machine can drive async actors."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="vault-model-loop", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        fut = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return fut.result(timeout_s)
        except FutureTimeout:
            fut.cancel()
            raise AssertionError(f"step did not finish within {timeout_s} s") from None

    def close(self) -> None:
        async def cancel_the_rest() -> None:
            await cancel_and_wait(*[t for t in asyncio.all_tasks() if t is not asyncio.current_task()])

        try:
            self.run(cancel_the_rest(), 10)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


class Clock:
    """The vault's wall clock, moved forward at will (installed where the vault reads the time)."""

    def __init__(self) -> None:
        self.offset_ms = 0

    def now_ms(self) -> int:
        return int(time.time() * 1000) + self.offset_ms

    def install(self) -> None:
        vault_clock_module.now_ms = self.now_ms
        group_commit_module.now_ms = self.now_ms

    @staticmethod
    def uninstall() -> None:
        vault_clock_module.now_ms = REAL_NOW_MS
        group_commit_module.now_ms = REAL_NOW_MS


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def model_config(action: str) -> Config:
    # The periodic sweep is the owners' timers (real time): the rules call sweep() when the model says so. Both
    # instances share this process's loop: a lease of 1 s keeps a stall of the loaded CI machine from passing for a
    # lapsed lease (a takeover no rule asked for), while an abrupt restart is still taken over within seconds.
    return parse_config({"vault": {"admin_token": MODEL_ADMIN_TOKEN, "hold_ttl_s": TTL_S, "expiry_action": action,
                                   "partitions": PARTITIONS, "lease_s": 1.0, "snapshot_interval_s": 3600}})


def hold_msat(inp: int, out: int, fee: int) -> int:
    return (inp + out) * MSAT_PER_TOKEN + fee


def envelope(inp: int, out: int, fee: int) -> Envelope:
    return Envelope(input_tokens=inp, output_tokens=out, input_rate=RATE, output_rate=RATE, base_fee_msat=fee,
                    max_output_tokens=out)


def projection_sums(projection: Projection, agent_id: str) -> dict[str, int]:
    """What the DuckDB projection says of one agent, from its rows alone."""
    projection.flush()
    db = projection.db
    with projection._lock:  # the vault's flush thread shares the connection: DuckDB 2 refuses, not waits
        by_kind = {k: int(s) for k, s in db.execute(
            "SELECT kind, coalesce(sum(amount_msat), 0) FROM ledger WHERE agent_id = ? GROUP BY kind",
            [agent_id]).fetchall()}
        rows, top = db.execute("SELECT count(*), coalesce(max(seq), 0) FROM ledger WHERE agent_id = ?",
                               [agent_id]).fetchone()  # type: ignore[misc]
        pending = db.execute(
            "SELECT coalesce(sum(r.amount_msat), 0) FROM ledger r WHERE r.agent_id = ? AND r.kind = 'reserved' "
            "AND NOT EXISTS (SELECT 1 FROM ledger x WHERE x.agent_id = r.agent_id AND x.rid = r.rid "
            f"AND x.seq > r.seq AND x.kind IN ({', '.join(repr(k) for k in RESOLVED)}))",
            [agent_id]).fetchone()[0]  # type: ignore[index]
    return {"deposited": by_kind.get("deposited", 0),
            "spent": by_kind.get("settled", 0) + by_kind.get("expired", 0),
            "pending": int(pending), "rows": int(rows), "top_seq": int(top)}


async def crash(actor: VaultActor, nc: NATS) -> None:
    """What a killed vault process leaves behind: its connection drops (the server forgets its subscriptions and
    pull requests), nothing is drained, acked, handed back or flushed; only this process's leftovers go."""
    actor._running = False
    tasks = list(actor._tasks)
    if actor.ownership is not None:
        tasks += [actor.ownership._task, actor.ownership._renew_task, actor.ownership._watch_task]  # type: ignore[list-item]
    for owner in actor.owners.values():
        tasks += [owner._snap_task, owner.timers._task]  # type: ignore[list-item]
        if owner.writer is not None:
            owner.writer.stopped = "crashed"
            tasks.append(owner.writer._task)  # type: ignore[arg-type]
    # Tasks first: once the connection is closed, nats-py turns a cancelled fetch into ConnectionClosedError.
    await cancel_and_wait(*tasks)  # re-cancels: a cancel landing as a nats-py wait_for completes is swallowed
    await asyncio.gather(*actor._inflight, return_exceptions=True)
    await nc.close()
    if actor.projection is not None:
        with actor.projection._lock:  # a flush thread may still be loading
            actor.projection.db.close()


async def send(vault: VaultActor, cmd: SettleCommand) -> None:
    """A settle or release handed to one instance, which journals it (owner) or forwards it to the owner."""
    reply = await vault._routed(vault._ops[cmd.kind])(cmd, {})
    if isinstance(reply, RawReply):
        code = (reply.headers or {}).get(subjects.H_SERVICE_ERROR_CODE)
        if code:
            raise ArbstrError(int(code), (reply.headers or {}).get(subjects.H_SERVICE_ERROR, ""),
                              code=(reply.headers or {}).get("X-Http-x-code"))


def owner_of(vaults: list[VaultActor], agent_id: str) -> VaultActor:
    k = partition_of(agent_id, PARTITIONS)
    found = [v for v in vaults if k in v.owners]
    assert len(found) == 1, f"partition {k} served by {len(found)} instances"
    return found[0]


# --- the reference model ------------------------------------------------------------------------------------

@dataclass
class RefAccount:
    """One agent's money as DESIGN.md §6 describes it, in plain ints."""

    deposited: int = 0
    spent: int = 0
    uncollectible: int = 0
    available: int = 0
    holds: dict[str, int] = field(default_factory=dict)
    ended: dict[str, str] = field(default_factory=dict)
    tombstones: set[str] = field(default_factory=set)
    ended_at: dict[str, int] = field(default_factory=dict)
    deposits: dict[str, int] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return sum(self.holds.values())

    def forget(self, now: int) -> None:
        """The fold forgets resolved and tombstoned rids FORGET_AFTER_MS after they end, as it writes on."""
        for rid in [r for r, at in self.ended_at.items() if at < now - FORGET_AFTER_MS]:
            del self.ended_at[rid]
            self.ended.pop(rid, None)
            self.tombstones.discard(rid)

    def deposit(self, did: str, amount: int, now: int) -> tuple[Any, ...]:
        if did in self.deposits:
            return ("ok",) if self.deposits[did] == amount else ("error", 409, "deposit_conflict")
        self.forget(now)
        self.deposits[did] = amount
        self.deposited += amount
        self.available += amount
        return ("ok",)

    def reserve(self, rid: str, amount: int, now: int) -> tuple[Any, ...]:
        if rid in self.holds or rid in self.ended:
            # A second reserve of a rid is another request reusing its id: one hold must not pay for two calls.
            return ("error", 409, "request_id_reused")
        if rid in self.tombstones:
            return ("error", 409, "request_released")
        if amount > self.available:
            return ("error", 402, "insufficient_balance")
        self.forget(now)
        self.holds[rid] = amount
        self.available -= amount
        return ("held", amount)

    def _end(self, rid: str, kind: str, charged: int, now: int, uncollectible: int = 0) -> None:
        self.forget(now)
        amount = self.holds.pop(rid)
        self.available += amount - charged
        self.spent += charged
        self.uncollectible += uncollectible
        self.ended[rid] = kind
        self.ended_at[rid] = now

    def _closed(self, rid: str, now: int) -> bool:
        """An ended or tombstoned rid: every later settle/release/expiry of it does nothing."""
        if rid in self.ended or rid in self.tombstones:
            return True
        if rid not in self.holds:
            self.forget(now)
            self.tombstones.add(rid)
            self.ended_at[rid] = now
            return True
        return False

    def settle(self, rid: str, cost: int, now: int) -> None:
        if self._closed(rid, now):
            return
        amount = self.holds[rid]
        covered = min(cost, amount)
        extra = min(cost - covered, self.available)
        self._end(rid, "settled", covered + extra, now, cost - covered - extra)

    def release(self, rid: str, now: int) -> None:
        if not self._closed(rid, now):
            self._end(rid, "released", 0, now)

    def expire(self, rid: str, action: str, now: int) -> None:
        if not self._closed(rid, now):
            self._end(rid, "expired", self.holds[rid] if action == "charge" else 0, now)


# --- the machine --------------------------------------------------------------------------------------------

class VaultOnNats(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.runner: Optional[LoopThread] = None
        self.server: Optional[NatsServer] = None
        self.tmp = Path(tempfile.mkdtemp(prefix="arbstr-vault-model-"))
        self.clock = Clock()
        self.vaults: list[VaultActor] = []
        self.hosts: list[ActorHost] = []
        self.conns: list[NATS] = []
        self.agents: list[str] = []
        self.tokens: list[str] = []
        self.refs: list[RefAccount] = []
        self.rids: list[list[str]] = []  # every rid ever used per agent, for repeats
        self.history: list[tuple[int, Any]] = []  # (agent index, SettleCommand | DepositCommand) applied so far
        self.counter = 0
        self.restarts = 0
        self.expires: dict[str, int] = {}  # rid -> expires_at_ms of its hold, as the vault answered

    # -- lifecycle ---------------------------------------------------------------------------------------
    @initialize(action=st.sampled_from(["charge", "release"]),
                openings=st.lists(st.integers(20_000, 300_000), min_size=2, max_size=2))
    def start(self, action: str, openings: list[int]) -> None:
        self.action = action
        self.config = model_config(action)
        self.server = NatsServer(self.tmp / "nats", log_file=self.tmp / "nats.log").start()
        self.clock.install()
        self.runner = LoopThread()
        self.run(self._start(openings))

    async def _start(self, openings: list[int]) -> None:
        assert self.server is not None
        self.nc = await nats.connect(self.server.url)
        self.bus = Bus(self.nc, 10.0)
        for _ in range(2):
            await self._add_vault()
        await self._balanced()
        for i, opening in enumerate(openings):
            token = f"arb_model_token_{i}"
            view = await self.bus.call(subjects.vault_admin("create_agent"),
                                       CreateAgent(name=f"model-{i}", token_hash=token_hash(token),
                                                   policy=AgentPolicy()), AccountView,
                                       admin_token=MODEL_ADMIN_TOKEN)
            self.agents.append(view.agent_id)
            self.tokens.append(token)
            self.refs.append(RefAccount())
            self.rids.append([])
            await self._caught_up()
            if opening:
                await self._deposit(i, f"open-{i}", opening)
            for n in range(2):  # open holds from the first step: the rules that end or race them apply at once
                rid = f"open-{i}-{n}"
                expected = self.refs[i].reserve(rid, hold_msat(1, 9, 0), self.clock.now_ms())
                assert await self._reserve(i, rid, 1, 9, 0) == expected
                self.rids[i].append(rid)

    async def _add_vault(self) -> tuple[VaultActor, ActorHost, NATS]:
        assert self.server is not None
        nc = await nats.connect(self.server.url)
        actor = VaultActor(self.config)
        host = ActorHost(actor, nc)
        await host.start()
        self.vaults.append(actor)
        self.hosts.append(host)
        self.conns.append(nc)
        return actor, host, nc

    async def _balanced(self) -> None:
        """Every partition served by exactly one live instance, each instance its share."""
        def settled() -> bool:
            owned = [set(v.owners) for v in self.vaults]
            return (sum(len(o) for o in owned) == PARTITIONS and len(set().union(*owned)) == PARTITIONS
                    and all(len(o) == PARTITIONS // len(self.vaults) for o in owned))
        await eventually(settled, 20, "the partitions to be shared out", interval_s=0.005)

    def teardown(self) -> None:
        try:
            if self.runner is not None:
                self.run(self._stop(), 30)
                self.runner.close()
        finally:
            Clock.uninstall()
            if self.server is not None:
                self.server.stop(kill=True)
            shutil.rmtree(self.tmp, ignore_errors=True)

    async def _stop(self) -> None:
        # The server goes away with the example: nothing needs a graceful hand-over.
        await asyncio.gather(*(crash(v, nc) for v, nc in zip(self.vaults, self.conns)))
        if getattr(self, "nc", None) is not None and not self.nc.is_closed:
            await self.nc.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout_s: float = 60.0) -> T:
        assert self.runner is not None
        return self.runner.run(coro, timeout_s)

    # -- helpers -----------------------------------------------------------------------------------------
    def fresh(self, prefix: str) -> str:
        self.counter += 1
        return f"{prefix}{self.counter}"

    def now(self) -> int:
        return self.clock.now_ms()

    async def _deposit(self, i: int, did: str, amount: int) -> tuple[Any, ...]:
        cmd = DepositCommand(agent_id=self.agents[i], amount_msat=amount, deposit_id=did)
        expected = self.refs[i].deposit(did, amount, self.now())
        try:
            await self.bus.call(subjects.vault_admin("deposit"), cmd, AccountView, admin_token=MODEL_ADMIN_TOKEN)
            got: tuple[Any, ...] = ("ok",)
        except ArbstrError as e:
            got = ("error", e.status, e.code)
        assert got == expected, (cmd, got, expected)
        if got == ("ok",):
            self.history.append((i, cmd))
        return got

    async def _reserve(self, i: int, rid: str, inp: int, out: int, fee: int,
                       alone: bool = True) -> tuple[Any, ...]:
        """Reserve over NATS (whichever instance the queue group picks forwards it to the owner). ``alone``: no
        other write races it, so the balance in the reply is the model's."""
        req = ReserveRequest(request_id=rid, token_hash=token_hash(self.tokens[i]), envelope=envelope(inp, out, fee),
                             provider="p", model="m")
        before = self.clock.now_ms()
        try:
            reply = await self.bus.call(subjects.VAULT_RESERVE, req, ReserveReply)
        except ArbstrError as e:
            return ("error", e.status, e.code)
        after = self.clock.now_ms()
        assert reply.agent_id == self.agents[i]
        assert reply.balance_msat == self.refs[i].available or not alone
        assert before + TTL_S * 1000 <= reply.expires_at_ms <= after + TTL_S * 1000
        self.expires[rid] = reply.expires_at_ms
        return ("held", reply.amount_msat)

    def open_hold(self, i: int, pick: int) -> Optional[str]:
        holds = sorted(self.refs[i].holds)
        return holds[pick % len(holds)] if holds else None

    def any_open(self) -> bool:
        return any(r.holds for r in self.refs)

    def agent_with_holds(self, pick: int) -> int:
        with_holds = [i for i, r in enumerate(self.refs) if r.holds]
        return with_holds[pick % len(with_holds)]

    def settle_cmd(self, i: int, rid: str, cost: int) -> SettleCommand:
        return SettleCommand(kind="settle", request_id=rid, agent_id=self.agents[i], provider="p", model="m",
                             input_tokens=1, output_tokens=1, cost_msat=cost)

    def release_cmd(self, i: int, rid: str) -> SettleCommand:
        return SettleCommand(kind="release", request_id=rid, agent_id=self.agents[i], reason="model")

    async def _send(self, cmd: SettleCommand, via: str) -> None:
        """Deliver a settle/release the way ``via`` says; returns once it is journaled (or found a no-op)."""
        if via in ("vault0", "vault1"):  # to one instance: the owner journals it, the other forwards it
            await send(self.vaults[int(via[-1])], cmd)
        elif via == "owner":  # the gateways' path: straight to the partition's subject
            k = partition_of(cmd.agent_id or "", PARTITIONS)
            await self.bus.call(subjects.vault_partition(k, cmd.kind), cmd, Empty)
        else:  # the fallback: the durable work queue, any instance consumes it and passes it on
            js = self.nc.jetstream()
            await js.publish(subjects.settle_command(cmd.agent_id or "anon"), cmd.model_dump_json().encode(),
                             headers={subjects.H_MSG_ID: self.fresh("msg-")})
            await self._drain_settle_queue()

    async def _drain_settle_queue(self, timeout_s: float = 10.0) -> None:
        js = self.nc.jetstream()
        deadline = time.monotonic() + timeout_s
        while (await js.stream_info(subjects.STREAM_SETTLE)).state.messages:
            assert time.monotonic() < deadline, "the settle work queue was not consumed"
            await asyncio.sleep(0.005)

    async def _caught_up(self) -> None:
        for v in self.vaults:
            await v._caught_up()

    def record(self, i: int, cmd: SettleCommand) -> None:
        self.history.append((i, cmd))
        self.rids[i].append(cmd.request_id)

    # -- rules -------------------------------------------------------------------------------------------
    @rule(i=st.integers(0, 1), amount=st.integers(1, 50_000), reuse=st.integers(0, 3),
          same=st.booleans())
    def deposit(self, i: int, amount: int, reuse: int, same: bool) -> None:
        """A new deposit, or a confirmation of an old one arriving again (same amount) or garbled (another)."""
        old = [c for j, c in self.history if j == i and isinstance(c, DepositCommand)]
        if reuse == 0 and old:
            prev = old[amount % len(old)]
            did, amount = prev.deposit_id, prev.amount_msat if same else prev.amount_msat + 1
        else:
            did = self.fresh("dep-")
        got = self.run(self._deposit(i, did, amount))
        event(f"deposit: {got}")

    @rule(i=st.integers(0, 1), inp=st.integers(0, 5), out=st.integers(1, 30), fee=st.sampled_from([0, 500]))
    def reserve(self, i: int, inp: int, out: int, fee: int) -> None:
        rid = self.fresh("r")
        expected = self.refs[i].reserve(rid, hold_msat(inp, out, fee), self.now())
        got = self.run(self._reserve(i, rid, inp, out, fee))
        assert got == expected, (rid, got, expected)
        self.rids[i].append(rid)
        event(f"reserve: {got[0]} {got[1] if got[0] == 'error' else ''}")

    @precondition(lambda self: any(self.rids))
    @rule(i=st.integers(0, 1), pick=st.integers(0, 10_000), inp=st.integers(0, 5), out=st.integers(1, 30))
    def reserve_again(self, i: int, pick: int, inp: int, out: int) -> None:
        """A reserve delivered again (or another request reusing the id) is refused, so is a late one for a rid
        already tombstoned; a rid refused before (402), or forgotten, may be reserved."""
        if not self.rids[i]:
            i = 1 - i
        rid = self.rids[i][pick % len(self.rids[i])]
        expected = self.refs[i].reserve(rid, hold_msat(inp, out, 0), self.now())
        got = self.run(self._reserve(i, rid, inp, out, 0))
        assert got == expected, (rid, got, expected)
        event(f"reserve again: {got[0]} {got[2] if got[0] == 'error' else ''}")

    @rule(i=st.integers(0, 1), n=st.integers(2, 12), out=st.integers(1, 30))
    def reserve_burst(self, i: int, n: int, out: int) -> None:
        """Concurrent reserves of one agent arriving at both instances: group-committed by its owner, exactly as
        many fit as the model says."""
        amount = hold_msat(0, out, 0)
        fits = min(n, self.refs[i].available // amount)
        rids = [self.fresh("b") for _ in range(n)]

        async def burst() -> list[tuple[Any, ...]]:
            return list(await asyncio.gather(*(self._reserve(i, rid, 0, out, 0, alone=False) for rid in rids)))

        results = self.run(burst())
        held = [rid for rid, r in zip(rids, results) if r[0] == "held"]
        assert len(held) == fits, (fits, results)
        assert all(r == ("held", amount) or r == ("error", 402, "insufficient_balance") for r in results), results
        for rid in held:
            assert self.refs[i].reserve(rid, amount, self.now()) == ("held", amount)
        self.rids[i].extend(rids)
        event(f"reserve burst: {fits}/{n} fit")

    @precondition(lambda self: self.any_open())
    @rule(pick=st.integers(0, 10_000), over=st.booleans(), delta=st.integers(0, 40_000),
          via=st.sampled_from(["vault0", "vault1", "owner", "queue"]))
    def settle(self, pick: int, over: bool, delta: int, via: str) -> None:
        i = self.agent_with_holds(pick)
        rid = self.open_hold(i, pick)
        assert rid is not None
        amount = self.refs[i].holds[rid]
        cost = amount + delta if over else max(0, amount - delta)
        cmd = self.settle_cmd(i, rid, cost)
        self.run(self._send(cmd, via))
        self.refs[i].settle(rid, cost, self.now())
        self.record(i, cmd)
        event(f"settle ({'over' if cost > amount else 'within'} the hold) via {via}")

    @precondition(lambda self: self.any_open())
    @rule(pick=st.integers(0, 10_000), via=st.sampled_from(["vault0", "vault1", "owner", "queue"]))
    def release(self, pick: int, via: str) -> None:
        i = self.agent_with_holds(pick)
        rid = self.open_hold(i, pick)
        assert rid is not None
        cmd = self.release_cmd(i, rid)
        self.run(self._send(cmd, via))
        self.refs[i].release(rid, self.now())
        self.record(i, cmd)

    @rule(i=st.integers(0, 1), kind=st.sampled_from(["settle", "release"]),
          via=st.sampled_from(["vault0", "vault1", "queue"]))
    def resolve_unknown(self, i: int, kind: str, via: str) -> None:
        """A settle or release overtaking its reserve: the rid is tombstoned, and its reserve refused later."""
        rid = self.fresh("u")
        cmd = self.settle_cmd(i, rid, 1_000) if kind == "settle" else self.release_cmd(i, rid)
        self.run(self._send(cmd, via))
        getattr(self.refs[i], kind)(rid, *([1_000] if kind == "settle" else []), self.now())
        self.record(i, cmd)

    @rule()
    def expire_due(self) -> None:
        """Time passes beyond every hold's TTL and the owners sweep: each open hold resolves exactly once."""
        due = sum(len(r.holds) for r in self.refs)
        self.clock.offset_ms += TTL_S * 1000 + 1

        async def sweep() -> list[int]:
            return list(await asyncio.gather(*(v.sweep() for v in self.vaults)))

        counts = self.run(sweep())
        assert sum(counts) == due, (counts, due)
        now = self.now()
        for ref in self.refs:
            for rid in list(ref.holds):
                ref.expire(rid, self.action, now)
        event(f"expire: {due} holds")

    @precondition(lambda self: bool(self.history))
    @rule(pick=st.integers(0, 10_000), via=st.sampled_from(["vault0", "vault1", "owner", "queue"]))
    def duplicate(self, pick: int, via: str) -> None:
        """An earlier settle, release or deposit delivered again (new msg id, other instance): no effect."""
        i, cmd = self.history[pick % len(self.history)]
        if isinstance(cmd, DepositCommand):
            assert self.run(self._deposit(i, cmd.deposit_id, cmd.amount_msat)) == ("ok",)
            event("duplicate deposit")
            return
        self.run(self._send(cmd, via))
        # A rid forgotten since it ended is unknown again: a duplicate then lays a tombstone, and moves no money.
        if cmd.request_id not in self.refs[i].ended and cmd.request_id not in self.refs[i].tombstones:
            self.refs[i]._closed(cmd.request_id, self.now())
        event(f"duplicate {cmd.kind} via {via}")

    @precondition(lambda self: self.any_open())
    @rule(pick=st.integers(0, 10_000), kind=st.sampled_from(["settle", "release", "deposit"]),
          cost=st.integers(0, 40_000))
    def lost_ack(self, pick: int, kind: str, cost: int) -> None:
        """A batch lands but its ack is lost: the owner must find it in the journal (by its batch id) and answer
        as written, never write it twice; the same command delivered again changes nothing."""
        i = self.agent_with_holds(pick)
        agent_id = self.agents[i]
        rid = self.open_hold(i, pick)
        assert rid is not None
        did = self.fresh("lost-dep-")
        owner = owner_of(self.vaults, agent_id)
        journal = owner.journal
        assert journal is not None
        original = journal.append
        lost = {"n": 0}

        async def append_then_lose_the_ack(partition: int, raw: bytes, batch_id: str, expected: int,
                                           timeout_s: float = 5.0) -> int:
            seq = await original(partition, raw, batch_id, expected, timeout_s)
            if lost["n"] == 0:
                lost["n"] += 1
                raise asyncio.TimeoutError("the ack never arrived")
            return seq

        async def go() -> None:
            journal.append = append_then_lose_the_ack  # type: ignore[method-assign]
            try:
                if kind == "deposit":
                    await self._deposit(i, did, cost + 1)
                else:
                    cmd = self.settle_cmd(i, rid, cost) if kind == "settle" else self.release_cmd(i, rid)
                    await send(owner, cmd)
                    await self._send(cmd, "queue")  # and the same command again, the way a redelivery comes
            finally:
                journal.append = original  # type: ignore[method-assign]

        before = self.run(self._journal_size())
        self.run(go())
        assert lost["n"] == 1, "the ack was never lost"
        assert self.run(self._journal_size()) == before + 1, "a command whose ack was lost was journaled twice"
        now = self.now()
        if kind == "settle":
            self.refs[i].settle(rid, cost, now)
        elif kind == "release":
            self.refs[i].release(rid, now)
        event(f"lost ack ({kind})")

    async def _journal_size(self) -> int:
        return int((await self.nc.jetstream().stream_info(subjects.STREAM_LEDGER)).state.last_seq)

    @precondition(lambda self: self.any_open())
    @rule(pick=st.integers(0, 10_000))
    def batch_cut_by_a_crash(self, pick: int) -> None:
        """The connection dies as a batch is being written: the batch is lost whole (a batch is one message), the
        writer stops, the partition is handed back and loaded afresh from the journal — nothing half-applied."""
        i = self.agent_with_holds(pick)
        agent_id = self.agents[i]
        rid = self.open_hold(i, pick)
        assert rid is not None
        owner = owner_of(self.vaults, agent_id)
        journal = owner.journal
        assert journal is not None
        original = journal.append

        async def cut(partition: int, raw: bytes, batch_id: str, expected: int, timeout_s: float = 5.0) -> int:
            raise ConnectionResetError("the connection died mid-write")

        async def go() -> Optional[ArbstrError]:
            journal.append = cut  # type: ignore[method-assign]
            budget, owner_module.APPEND_BUDGET_S = owner_module.APPEND_BUDGET_S, 0.3  # it never comes back: give up soon
            try:
                await send(owner, self.release_cmd(i, rid))
                return None
            except ArbstrError as e:
                return e
            finally:
                journal.append = original  # type: ignore[method-assign]
                owner_module.APPEND_BUDGET_S = budget

        refused = self.run(go())
        assert refused is not None and refused.status == 503, refused
        self.run(self._balanced())
        self.run(self._caught_up())
        event("batch cut by a crash")

    @precondition(lambda self: self.any_open())
    @rule(pick=st.integers(0, 10_000), due=st.booleans(), delta=st.integers(0, 40_000),
          order=st.permutations(range(4)))
    def race(self, pick: int, due: bool, delta: int, order: list[int]) -> None:
        """Settle, release (and expiry, once due) of one hold at once from both instances: one of them wins."""
        i = self.agent_with_holds(pick)
        agent_id = self.agents[i]
        rid = self.open_hold(i, pick)
        assert rid is not None
        cost = self.refs[i].holds[rid] + delta - 20_000
        settle, release = self.settle_cmd(i, rid, max(0, cost)), self.release_cmd(i, rid)
        if due:
            self.clock.offset_ms += TTL_S * 1000 + 1
        expires = self.expires[rid]
        before = self.clock.now_ms()
        owner = owner_of(self.vaults, agent_id)

        async def go() -> list[Any]:
            v0, v1 = self.vaults
            racers: list[Coroutine[Any, Any, Any]] = [
                send(v0, settle), send(v1, release), send(v1, settle),
                owner.execute(agent_id, lambda s, at: decide.expire(s, rid, at, self.action))]
            racers = [racers[k] for k in order]  # who starts first matters to who wins
            out = list(await asyncio.gather(*racers, return_exceptions=True))
            await self._caught_up()
            return out

        results = self.run(go())
        after = self.clock.now_ms()
        for r in results:
            if isinstance(r, BaseException):  # the expiry may only be refused while the hold is not yet due
                assert isinstance(r, ArbstrError) and r.code == "not_expired" and expires > before, repr(r)
        winner = owner.book.state(agent_id).resolutions[rid].kind
        assert winner in ("settled", "released", "expired"), winner
        assert winner != "expired" or expires <= after, "a hold expired before its TTL"
        ref = self.refs[i]
        now = self.now()
        if winner == "settled":
            ref.settle(rid, max(0, cost), now)
        elif winner == "released":
            ref.release(rid, now)
        else:
            ref.expire(rid, self.action, now)
        self.record(i, settle)
        self.history.append((i, release))
        event(f"race ({'due' if expires <= before else 'not due'}): {winner} won")

    @precondition(lambda self: self.restarts < 2)
    @rule(which=st.integers(0, 1), abrupt=st.booleans())
    def restart(self, which: int, abrupt: bool) -> None:
        """An instance stops (gracefully: it hands its partitions back; or as if killed: the other takes them over
        after a lease), and a new one takes its place and its share."""

        async def go() -> None:
            host, nc = self.hosts[which], self.conns[which]
            if abrupt:
                await crash(self.vaults[which], nc)
            else:
                await host.stop(grace_s=5)
                await nc.close()
            actor, new_host, new_nc = await self._add_vault()
            for lst in (self.vaults, self.hosts, self.conns):
                lst.pop()
            self.vaults[which], self.hosts[which], self.conns[which] = actor, new_host, new_nc
            await self._balanced()

        self.run(go())
        self.restarts += 1
        event(f"restart ({'abrupt' if abrupt else 'graceful'})")

    @precondition(lambda self: self.restarts < 2 and self.any_open())
    @rule(which=st.integers(0, 1), pick=st.integers(0, 10_000))
    def stale_owner_keeps_writing(self, which: int, pick: int) -> None:
        """An instance pauses (no renewals, no watching) long enough for the other to take its partitions over,
        then wakes up still believing it owns them and writes: fenced, nothing it writes lands. It is then
        replaced by a fresh instance."""
        stale = self.vaults[which]
        other = self.vaults[1 - which]
        i = self.agent_with_holds(pick)
        rid = self.open_hold(i, pick)
        assert rid is not None

        async def go() -> tuple[int, int, Any]:
            assert stale.ownership is not None and stale.follower is not None
            # Paused whole: its follower would otherwise see the other's batches and let the partitions go first.
            stale.follower.hold()
            await stale.ownership.freeze()
            held = set(stale.owners)
            await eventually(lambda: held <= set(other.owners), 10.0, "the other instance to take the partitions over",
                             interval_s=0.005)
            size = await self._journal_size()
            k = partition_of(self.agents[i], PARTITIONS)
            target = stale if k in stale.owners else None
            outcome: Any = None
            if target is not None:  # the stale instance writes through its old writer: fenced
                try:
                    await target.execute(self.agents[i], lambda s, at: decide.release(s, rid, "stale", at))
                except ArbstrError as e:
                    outcome = e
            after = await self._journal_size()
            stale.follower.release()
            return size, after, outcome

        before, after, outcome = self.run(go())
        assert after == before, "a stale owner's write landed"
        if outcome is not None:
            assert outcome.status == 503, outcome
        self.restart(which, abrupt=True)  # what is left of it goes; a fresh instance joins
        event("stale owner fenced")

    # -- invariants --------------------------------------------------------------------------------------
    @invariant()
    def live_state_is_the_replay_and_the_model(self) -> None:
        self.run(self._check())

    async def _check(self) -> None:
        await self._caught_up()
        replay = await read_ledger(self.nc)
        assert (await verify_ledger(self.nc)).ok
        totals = {"deposited": 0, "spent": 0}
        for i, agent_id in enumerate(self.agents):
            replayed = fold(replay.get(agent_id, []), agent_id)
            for v in self.vaults:
                assert v.book.state(agent_id) == replayed, f"{agent_id} on an instance != replay"
            r = self.refs[i]
            assert (replayed.deposited_msat, replayed.spent_msat, replayed.uncollectible_msat,
                    replayed.available_msat, replayed.pending_msat, replayed.withdrawn_msat) == (
                r.deposited, r.spent, r.uncollectible, r.available, r.pending, 0), (agent_id, r)
            assert {rid: h.amount_msat for rid, h in replayed.holds.items()} == r.holds
            assert {rid: res.kind for rid, res in replayed.resolutions.items()} == r.ended
            assert set(replayed.tombstones) == r.tombstones
            for v in self.vaults:
                sums = projection_sums(v.projection, agent_id)  # type: ignore[arg-type]
                assert sums == {"deposited": r.deposited, "spent": r.spent, "pending": r.pending,
                                "rows": replayed.seq, "top_seq": replayed.seq}, (agent_id, sums, r)
            totals["deposited"] += r.deposited
            totals["spent"] += r.spent
        for v in self.vaults:
            assert not v.book.corrupt()
            books = v.book.books(0)
            assert books.balanced, books
            assert books.deposits_msat == totals["deposited"] and books.spent_msat == totals["spent"]
        await self._snapshot_plus_tail_is_the_replay(replay)

    async def _snapshot_plus_tail_is_the_replay(self, replay: dict[str, Any]) -> None:
        """Every partition: its snapshot now, plus the journal after it, folds to the full replay."""
        await asyncio.gather(*(v.snapshot_all() for v in self.vaults))
        v = self.vaults[0]
        assert v.snapshots is not None and v.journal is not None
        for k in range(PARTITIONS):
            part = await v.snapshots.load(k) or PartitionState(k)
            async for seq, raw in v.journal.tail(k, part.last_seq):
                fold_batch(part, JournalBatch.model_validate_json(raw), seq, batch_hash(raw))
            for agent_id in self.agents:
                if partition_of(agent_id, PARTITIONS) == k:
                    assert part.account(agent_id) == fold(replay.get(agent_id, []), agent_id), (k, agent_id)


VaultOnNats.TestCase.settings = settings(
    max_examples=12, stateful_step_count=25, deadline=None,
    # No shrinking: every example costs a nats-server and two vaults, and a live system does not replay exactly;
    # a failure is reported with its full (at most 25-step) history instead.
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
test_vault_model_on_nats = VaultOnNats.TestCase


# --- deterministic probes of the same paths ---------------------------------------------------------------------

async def test_a_stale_owner_is_fenced_and_writes_nothing(fresh_nats: NatsServer) -> None:
    """Two instances; one freezes (as a paused process would) and the other takes its partitions over. The frozen
    one then writes through the writer it still holds: the journal refuses it (Fenced), nothing lands, and the
    command is answered 503 so the caller asks again (reaching the new owner)."""
    config = model_config("charge")
    conns = [await nats.connect(fresh_nats.url) for _ in range(2)]
    vaults = [VaultActor(config), VaultActor(config)]
    hosts = [ActorHost(v, nc) for v, nc in zip(vaults, conns)]
    try:
        for h in hosts:
            await h.start()
        await eventually(lambda: len(vaults[0].owners) == len(vaults[1].owners) == PARTITIONS // 2, 10.0, "the shares",
                         interval_s=0.005)
        a, b = vaults
        k = next(iter(a.owners))
        agent_id = next(f"agt_{n:016x}" for n in range(10**6) if partition_of(f"agt_{n:016x}", PARTITIONS) == k)
        await a.execute(agent_id, lambda s, at: decide.create_agent(s, "stale", "h" * 64, AgentPolicy(), at))
        assert a.ownership is not None
        await a.ownership.freeze()
        await eventually(lambda: len(b.owners) == PARTITIONS, 10, "the takeover of every partition", interval_s=0.005)
        js = conns[0].jetstream()
        before = (await js.stream_info(subjects.STREAM_LEDGER)).state.last_seq
        with pytest.raises(ArbstrError) as refused:
            await a.execute(agent_id, lambda s, at: decide.deposit(s, "d1", 1_000, "simulated", "", at))
        assert refused.value.status == 503
        after = (await js.stream_info(subjects.STREAM_LEDGER)).state.last_seq
        assert after == before
        assert (await b.execute(agent_id, lambda s, at: decide.deposit(s, "d1", 1_000, "simulated", "", at))).events
        replay = await read_ledger(conns[1])
        assert fold(replay[agent_id]).deposited_msat == 1_000
        assert (await verify_ledger(conns[1])).ok
    finally:
        for h in hosts:
            try:
                await h.stop(grace_s=1)
            except Exception:
                pass
        for nc in conns:
            await nc.close()


async def test_a_fenced_append_is_told_apart_from_a_lost_ack(fresh_nats: NatsServer) -> None:
    """The journal's answer to a stale expectation is the same for 'another owner wrote' and 'my own write landed
    but its ack was lost': the owner reads the partition's last batch to tell them apart."""
    nc = await nats.connect(fresh_nats.url)
    vault = VaultActor(model_config("charge"))
    host = ActorHost(vault, nc)
    try:
        await host.start()
        owner = vault.owners[0]
        assert owner.writer is not None and vault.journal is not None
        part = owner.part
        batch = JournalBatch(partition=0, epoch=owner.claim.epoch, batch_id="probe-1", prev_hash=part.last_hash,
                             at_ms=REAL_NOW_MS())
        raw = batch.model_dump_json().encode()
        async with owner.writer.quiet():
            seq = await vault.journal.append(0, raw, "probe-1", part.last_seq)
            with pytest.raises(Fenced):  # the same write again: 10071, not a duplicate ack
                await vault.journal.append(0, raw, "probe-1", part.last_seq)
            assert await owner._append(raw, "probe-1", part.last_seq) == seq  # ours: found by its batch id
            other = JournalBatch(partition=0, epoch=99, batch_id="intruder", prev_hash="", at_ms=REAL_NOW_MS())
            with pytest.raises(Fenced):
                await owner._append(other.model_dump_json().encode(), "intruder", part.last_seq)
            part.last_seq, part.last_hash = seq, batch_hash(raw)
    finally:
        await host.stop(grace_s=1)
        await nc.close()
