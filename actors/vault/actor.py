"""The vault actor: partitions of the ledger, each owned by one instance at a time, and a thin routing shell.

A command about one account is decided by the owner of the account's partition, from memory, and journaled in
that partition's next batch (group commit: one fenced JetStream write for every command that queued while the
last one was in flight); the caller is answered once the batch is acked. The gateway sends reserves and settles
straight to the owner (``arbstr.v1.vault.p.<k>.<op>``); any other instance that receives a command forwards it
there. Every instance also keeps a read model of every account (the ``Book``) for reports, admin reads and
finding an agent by its token — never for deciding about money.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

import orjson
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel

from actors.runtime.endpoints import QUEUE_GROUP, Endpoint, RawReply, answer, error_reply, serve
from actors.runtime.jetstream import open_bucket, retry_transient
from actors.runtime.netguard import private_urls_allowed
from actors.runtime.tasks import cancel_and_wait
from actors.runtime.tokens import admin_token_hash, check_admin
from schemas import exchanges as ex
from schemas import subjects
from schemas.exchanges import Exchange, decode_error, reply_status
from schemas.config import Config, VaultConfig
from schemas.errors import ArbstrError
from schemas.payments import TopUpNow, TopUpResult, XCashuReport, XCashuRequest, XCashuResult, XCashuToken
from schemas.ledger import (Denied, Expired, JournalBatch, JournalEntry, LedgerEvent, Released, Settled,
                            verify_batches, verify_chain)
from schemas.partitions import partition_of
from schemas.requests import RequestList, RequestRecord, RequestsQuery, StatsQuery, StatsReply
from schemas.vault import (AccountView, AgentDeposit, AgentList, AgentPolicy, AgentRef, AgentRoute, Approval,
                           ApprovalAction, ApprovalList, ApprovalResult, Books, ChainCheck, ClearFreeze, CreateAgent,
                           CreditDeposit, DepositCommand, DepositReply, DepositRequest, Empty, ExtendRequest, History,
                           HistoryQuery, PayoutList, PayoutRef, PayoutView, Reconciliation, ReserveReply,
                           ReserveRequest, RotateToken, SetPolicy, SettleCommand, SpendEvent, TokenRef, TokenRevoked,
                           WithdrawRequest)

from . import decide
from .book import Book
from .claims import Claims
from .expiry import HOLD, Timers
from .fold import GRANT_PREFIX, AccountState, granted_msat, view
from .follower import Follower
from .freeze import FreezeSwitch
from .grant_desk import GrantDesk
from .group_commit import Written, moved
from .owner import PartitionOwner
from .ownership import LAYOUT_KEY, Claim, Ownership
from .partition import PartitionState, fold_batch, fold_entry
from .partition_journal import Layout, PartitionJournal, stream_last_seq
from .projection import Projection
from .projection_feed import ProjectionFeed
from .rails import Rails
from .request_log import RequestLog
from .snapshots import SnapshotStore
from .streams import ensure_streams, settle_consumer_config
from .topup import TopUps
from .xcashu import PerRequestPayments
from .wallets import build_wallet
from .wallets.base import Wallet

log = logging.getLogger("arbstr.vault")

VERSION = "0.2.0"
Decider = Callable[[AccountState, int], decide.Decided]
H_FORWARDED = "Arbstr-Forwarded"  # a command one vault instance passed to the owner: never passed on again
FORWARD_WAIT_S = 5.0  # how long a command waits for a partition's owner to appear (a takeover takes ≤ 3 s)
RAIL_TIMEOUT_S = 30.0
RESERVE_MAX_AGE_MS = 120_000  # a reserve sent longer ago is refused (NATS delivers buffered requests late)
# A grant due while its partition had no owner waits this long after a takeover: its gateway retries its reports
# for up to 30 s (settle budget), and a report that lands is better than charging the whole grant.
GRANT_GRACE_S = 30.0
REPUBLISH_WINDOW_MS = 100_000  # at takeover, events of batches this recent are published again (dedup: 120 s)


def now_ms() -> int:
    return int(time.time() * 1000)


def unauthorized() -> ArbstrError:
    return ArbstrError(401, "invalid or missing bearer token", code="invalid_api_key")


Route = Callable[[Any], Awaitable[str]]  # the agent a command is about (raises 401/404)
Handler = Callable[[Any, dict[str, str], str], Awaitable[Any]]


@dataclass(frozen=True)
class Op:
    """How this actor serves one vault exchange: its handler, and where the command is decided."""

    exchange: Exchange[Any, Any]
    handler: Callable[..., Awaitable[Any]]
    route: Optional[Route] = None  # None: answered here, by whichever instance receives it
    timeout_s: float = 5.0  # when forwarded to the partition's owner

    @property
    def name(self) -> str:
        return self.exchange.name

    def endpoint(self, handler: Callable[[Any, dict[str, str]], Awaitable[Any]]) -> Endpoint:
        return serve(self.exchange, handler)


class VaultActor:
    service_name = subjects.SERVICE_VAULT
    version = VERSION
    description = ("arbstr vault: per-agent sub-accounts in partitions owned one instance at a time, group-committed "
                   "two-phase holds, policies and approvals on a JetStream journal")

    def __init__(self, config: Config, wallet: Optional[Wallet] = None) -> None:
        if config.vault is None:
            raise ValueError("the vault needs a [vault] section in the config")
        self.config = config
        self.vc: VaultConfig = config.vault
        self.admin_hash = admin_token_hash(config)  # admin commands are checked against this, not the gateway's word
        self.instance = secrets.token_hex(8)
        self.layout = Layout(self.vc.partitions, self.vc.ledger_streams)  # replaced by the ledger's own at start
        self.book = Book(self.partition_of)
        self.wallet: Wallet = wallet if wallet is not None else build_wallet(self.vc.wallet)
        self.freeze = FreezeSwitch(on_frozen=lambda: self.grants.revoke("*", "vault_frozen"))
        self.grants = GrantDesk(self.execute, self.book.state, self.freeze, self.vc.hold_ttl_s * 1000)
        self.claims = Claims(instance=self.instance)
        self.rails = Rails(self.vc.wallet, self.wallet, self.book, self.execute, self.freeze, self.claims,
                           self._caught_up, owns=self.owns, credit=self._credit)
        self.topups = TopUps(self.vc.topup, self.rails, self.book, self.execute, owns=self.owns,
                             public_only=not private_urls_allowed(config.market.nostr)) if self.vc.topup else None
        self.x_cashu = PerRequestPayments(self.topups, self.claims, self._caught_up) \
            if self.topups is not None else None
        self.projection: Optional[Projection] = None
        self.request_log: Optional[RequestLog] = None
        self.nc: Optional[NATS] = None
        self.journal: Optional[PartitionJournal] = None
        self.snapshots: Optional[SnapshotStore] = None
        self.follower: Optional[Follower] = None
        self.feed: Optional[ProjectionFeed] = None
        self.ownership: Optional[Ownership] = None
        self.owners: dict[int, PartitionOwner] = {}
        self._acquired_at: dict[int, float] = {}  # monotonic time each owned partition was taken
        self._subs: dict[int, Any] = {}
        # (agent id, rid) -> the wake-ups of reserves waiting for its approval. Keyed by agent too: two agents'
        # requests may share a rid, and one's decision must neither wake nor strand the other's wait.
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._settle_sem = asyncio.Semaphore(256)
        self._running = False
        self._settle_sub: Optional[Any] = None
        self._ops = {op.name: op for op in self._op_table()}
        self.takeovers = 0
        self.partition_ops: dict[str, dict[str, int]] = {}  # served on partition subjects: op -> status -> count

    def partition_of(self, agent_id: str) -> int:
        return partition_of(agent_id, self.layout.partitions)

    def owns(self, agent_id: str) -> bool:
        return self.partition_of(agent_id) in self.owners

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self, nc: NATS) -> None:
        self.nc = self.grants.nc = nc
        replicas = self.vc.replicas
        parts_kv = await open_bucket(nc, subjects.KV_PARTITIONS, replicas=replicas)
        legacy_upto = await self._ensure_layout(parts_kv)
        await ensure_streams(nc, self.layout, replicas)
        self.journal = PartitionJournal(nc, self.layout)
        self.snapshots = SnapshotStore(nc, replicas)
        await self.snapshots.start()
        # The read model: every partition's snapshot and the journal after it, then live.
        self.follower = Follower(nc, self.book, self.layout.streams, legacy_upto)
        live_from = {i: await retry_transient(lambda i=i: stream_last_seq(nc, subjects.ledger_stream(i)),
                                              f"ledger stream {i}") + 1
                     for i in range(self.layout.streams)}
        self.follower.hold()
        await self.follower.start(live_from)
        await self._load_read_model()
        self.follower.release()
        self.projection = Projection(self.vc.duckdb_path, streams=self.layout.streams)
        self.request_log = RequestLog(self.projection)
        self.feed = ProjectionFeed(nc, self.projection)
        await self.feed.start()
        await self.request_log.follow(nc)
        await self.freeze.start(nc, replicas)
        await self.claims.start(nc, replicas)
        self.ownership = Ownership(parts_kv, self.instance, self.layout.partitions, self.vc.lease_s,
                                   self._acquired, self._lost)
        await self.ownership.start()
        await self._settled_in()
        await self.rails.start()
        if self.topups is not None:
            await self.topups.start(nc, replicas)
        if self.x_cashu is not None:
            await self.x_cashu.start()
        self._running = True
        self._tasks = [asyncio.create_task(self._consume_settles()),
                       asyncio.create_task(self._flush_projection_forever())]
        log.info("vault %s ready: %d partitions (%d here), %d agents", self.instance, self.layout.partitions,
                 len(self.owners), len(self.book.agents()))

    async def _settled_in(self, timeout_s: float = 10.0) -> None:
        """Take a first share of partitions before answering: a lone instance serves everything at once."""
        assert self.ownership is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            members = self.ownership.alive_members()
            if len(self.owners) >= min(self.layout.partitions, -(-self.layout.partitions // len(members))):
                return
            await asyncio.sleep(0.05)

    async def stop(self) -> None:
        self._running = False
        if self._tasks:
            await asyncio.wait([self._tasks[0]], timeout=2.0)  # the settle consumer hands over what it fetched
        await cancel_and_wait(*self._tasks)
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=10)
        if self.x_cashu is not None:
            await self.x_cashu.stop()
        if self.topups is not None:
            await self.topups.stop()
        await self.rails.stop()
        if self.ownership is not None:
            await self.ownership.stop()  # every partition handed back, snapshotted: the next owner starts at once
        await self.freeze.stop()
        if self._settle_sub is not None:
            try:
                await self._settle_sub.unsubscribe()
            except Exception:
                pass
        if self.follower is not None:
            await self.follower.stop()
        if self.feed is not None:
            await self.feed.stop()
        if self.request_log is not None:
            await self.request_log.stop()
        if self.projection is not None:
            try:
                self.projection.close()
            except Exception:
                log.exception("projection close failed")

    def stats(self) -> dict[str, Any]:
        """For `nats micro stats` and the gateways' /metrics: partitions owned here, the group commit, and the
        commands served on partition subjects (the gateways' reserves and settles go there, not to micro)."""
        totals: dict[str, Any] = {"partitions": len(self.owners), "takeovers": self.takeovers, "batches": 0,
                                  "commands": 0, "journaled": 0}
        for owner in self.owners.values():
            if owner.writer is not None:
                for k, v in owner.writer.stats.items():
                    totals[k] += v
        totals["ops"] = {op: dict(counts) for op, counts in self.partition_ops.items()}
        return totals

    async def snapshot_all(self) -> None:
        """Snapshot every partition served here now (they are also snapshotted on a timer and when handed back)."""
        await asyncio.gather(*(owner.snapshot() for owner in list(self.owners.values())))

    # --- the ledger's layout ---------------------------------------------------------------------------
    async def _ensure_layout(self, kv: Any) -> int:
        """The layout in force (made from this config on a new ledger, after folding any journal written before
        partitions into their first snapshots); returns the sequence up to which such a journal was folded."""
        while True:
            try:
                entry = await kv.get(LAYOUT_KEY)
                doc = orjson.loads(entry.value or b"{}")
                self.layout = Layout(int(doc["partitions"]), int(doc.get("streams", 1)))
                if (self.layout.partitions, self.layout.streams) != (self.vc.partitions, self.vc.ledger_streams):
                    log.warning("the ledger was created with %d partitions in %d streams; [vault] asks for %d in %d "
                                "(fixed at creation: the ledger's own layout is used)", self.layout.partitions,
                                self.layout.streams, self.vc.partitions, self.vc.ledger_streams)
                return int(doc.get("legacy_upto", 0))
            except KeyNotFoundError:
                pass
            lock = f"{LAYOUT_KEY}-lock"
            try:
                await kv.create(lock, orjson.dumps({"instance": self.instance, "at_ms": now_ms()}))
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0.2)  # another instance is making it
                continue
            try:
                self.layout = Layout(self.vc.partitions, self.vc.ledger_streams)
                legacy_upto = await self._migrate_legacy()
                await kv.create(LAYOUT_KEY, orjson.dumps({"partitions": self.layout.partitions,
                                                          "streams": self.layout.streams,
                                                          "legacy_upto": legacy_upto, "created_at_ms": now_ms()}))
                return legacy_upto
            finally:
                with contextlib.suppress(Exception):
                    await kv.delete(lock)

    async def _migrate_legacy(self) -> int:
        """A journal written before partitions (one subject per agent) becomes each partition's first snapshot."""
        assert self.nc is not None
        js = self.nc.jetstream()
        try:
            last = await stream_last_seq(self.nc, subjects.STREAM_LEDGER)
        except Exception:
            return 0  # no ledger yet
        if last == 0:
            return 0
        parts = {k: PartitionState(k) for k in range(self.layout.partitions)}
        done = asyncio.Event()
        count = 0

        async def on_msg(msg: Msg) -> None:
            nonlocal count
            if msg.headers and "Arbstr-Partition" in msg.headers:
                return
            entry = JournalEntry.model_validate_json(msg.data)
            fold_entry(parts[self.partition_of(entry.agent_id)], entry, chained=True)
            count += 1
            if int(msg.metadata.sequence.stream) >= last:
                done.set()

        sub = await js.subscribe(f"{subjects.LEDGER_PREFIX}.>", cb=on_msg, ordered_consumer=True,
                                 stream=subjects.STREAM_LEDGER, deliver_policy=DeliverPolicy.ALL)
        try:
            await asyncio.wait_for(done.wait(), 600)
        finally:
            await sub.unsubscribe()
        snapshots = SnapshotStore(self.nc, self.vc.replicas)
        await snapshots.start()
        for part in parts.values():
            await snapshots.save(part)
        log.warning("ledger: %d entries written before partitions folded into %d partition snapshots (up to seq %d)",
                    count, len(parts), last)
        return last

    async def _load_read_model(self) -> None:
        """Every partition from its snapshot and its journal since, read per partition (not the whole stream)."""
        assert self.snapshots is not None and self.journal is not None

        async def load(k: int) -> PartitionState:
            part = await self.snapshots.load(k) or PartitionState(k)  # type: ignore[union-attr]
            async for seq, raw in self.journal.tail(k, part.last_seq):  # type: ignore[union-attr]
                fold_batch(part, JournalBatch.model_validate_json(raw), seq, _hash(raw))
            return part

        async def one(k: int) -> None:
            # A fresh cluster (or one electing a leader) times reads out for a while: each attempt starts over
            # from an empty partition, so nothing is folded twice.
            part = await retry_transient(lambda: load(k), f"partition {k} read model")
            self.book.adopt(part, k % self.layout.streams)

        for start in range(0, self.layout.partitions, 16):
            await asyncio.gather(*(one(k) for k in range(start, min(start + 16, self.layout.partitions))))

    # --- ownership -------------------------------------------------------------------------------------
    async def _acquired(self, claim: Claim) -> bool:
        assert self.journal is not None and self.snapshots is not None and self.nc is not None
        k = claim.partition
        self._acquired_at[k] = time.monotonic()
        timers = Timers(lambda due, k=k: self._expire_due(k, due))
        owner = PartitionOwner(claim, self.journal, self.snapshots, timers,
                               lambda batch, seq, touched, k=k: self._committed(k, batch, seq, touched),
                               self._broken, self.vc.snapshot_interval_s)
        started = time.monotonic()
        await owner.load()
        self.book.owned.add(k)
        self.book.adopt(owner.part, k % self.layout.streams)
        try:
            late = await owner.start()
        except Exception:
            self.book.owned.discard(k)
            raise
        self.owners[k] = owner
        timers.start()
        self._subs[k] = await self.nc.subscribe(f"{subjects.VAULT_PARTITION_PREFIX}.{k}.>", queue=QUEUE_GROUP,
                                                cb=self._on_partition_msg)
        self.takeovers += 1
        # Events the previous owner journaled but may not have published (it died between): published again,
        # deduplicated by their ids.
        asyncio.ensure_future(self._republish(k, late))
        log.info("partition %s: serving (epoch %d, %d agents, loaded in %.0f ms, ready in %.0f ms)", k, claim.epoch,
                 len(owner.part.agents), owner.loaded_in_s * 1000, (time.monotonic() - started) * 1000)
        return True

    async def _lost(self, k: int, reason: str) -> None:
        owner = self.owners.pop(k, None)
        sub = self._subs.pop(k, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if owner is None:
            return
        graceful = owner.writer is None or owner.writer.stopped is None
        await owner.stop(reason, graceful=graceful)
        await owner.timers.stop()
        self.book.owned.discard(k)
        if not graceful:
            # Memory may be ahead of the journal: the read model of this partition is read afresh.
            asyncio.ensure_future(self._reload_partition(k))
        log.info("partition %s: no longer served here (%s)", k, reason)

    def _broken(self, k: int, reason: str) -> None:
        log.error("partition %s: the journal refused or lost a batch (%s); handing it back", k, reason)
        if self.ownership is not None:
            asyncio.ensure_future(self.ownership.hand_back(k, reason))

    async def _reload_partition(self, k: int) -> None:
        assert self.snapshots is not None and self.journal is not None
        part = await self.snapshots.load(k) or PartitionState(k)
        async for seq, raw in self.journal.tail(k, part.last_seq):
            fold_batch(part, JournalBatch.model_validate_json(raw), seq, _hash(raw))
        if k not in self.book.owned:
            self.book.adopt(part, k % self.layout.streams)

    # --- after a batch is acked -------------------------------------------------------------------------
    def _committed(self, k: int, batch: JournalBatch, seq: int,
                   touched: list[tuple[JournalEntry, AccountState]]) -> None:
        owner = self.owners.get(k)
        self.book.committed(k % self.layout.streams, seq, touched)
        for entry, state in touched:
            if owner is not None:
                owner.arm(entry, state)
            self.rails.on_events(entry.events)
            for event in entry.events:
                rid = getattr(event.body, "rid", None)
                for waiter in self._waiters.get((entry.agent_id, rid), ()) if rid is not None else ():
                    waiter.set()
            self._publish_entry(entry, state)

    def _publish_entry(self, entry: JournalEntry, state: AccountState) -> None:
        """Spend events and the request record an entry carries, derived from the journal; their ids are stable,
        so publishing one again (a takeover) is deduplicated by the events stream."""
        assert self.nc is not None
        for e in entry.events:
            ev = spend_event(e, state)
            if ev is not None:
                self._publish(subjects.spend(e.agent_id), ev.model_dump_json().encode(), f"spend:{ev.event_id}",
                              ev.request_id)
        if entry.record is not None:
            rec = entry.record
            self._publish(subjects.requests(rec.agent_id), rec.model_dump_json().encode(),
                          f"record:{entry.agent_id}:{entry.events[-1].seq}", rec.request_id)

    def _publish(self, subject: str, data: bytes, msg_id: str, request_id: str) -> None:
        assert self.nc is not None
        headers = {subjects.H_MSG_ID: msg_id, subjects.H_REQUEST_ID: request_id}
        task = asyncio.ensure_future(self.nc.publish(subject, data, headers=headers))  # buffered: no round trip
        task.add_done_callback(_log_failure)

    async def _republish(self, k: int, late: list[tuple[JournalBatch, int]]) -> None:
        """The recent batches' events again: whatever a dead owner did not get out, tools still see."""
        assert self.journal is not None
        owner = self.owners.get(k)
        if owner is None:
            return
        horizon = now_ms() - REPUBLISH_WINDOW_MS
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
        for batch in recent:
            if batch.batch_id in seen:
                continue
            seen.add(batch.batch_id)
            for entry in batch.entries:
                self._publish_entry(entry, self.book.state(entry.agent_id))

    # --- the write path ----------------------------------------------------------------------------------
    async def execute(self, agent_id: str, decider: Decider,
                      answer_with: Optional[Callable[[AccountState, decide.Decided], Any]] = None,
                      record: Optional[RequestRecord] = None) -> Written:
        """Decide and journal a command about an account this instance owns (callers route to the owner first)."""
        owner = self.owners.get(self.partition_of(agent_id))
        if owner is None or owner.writer is None:
            raise moved(self.partition_of(agent_id))
        return await owner.writer.submit(agent_id, decider, answer_with, record)

    # --- routing commands to their partition's owner ---------------------------------------------------
    def _op_table(self) -> list[Op]:
        by_token = self._by_token
        by_agent = self._by_agent
        return [
            Op(ex.RESERVE, self._reserve, self._reserve_route),
            Op(ex.AWAIT_APPROVAL, self._wait_approval, self._reserve_route, timeout_s=86_400),
            Op(ex.EXTEND, self._extend, by_agent),  # partition subjects only
            Op(ex.GRANT, self.grants.grant, by_agent),  # a gateway's slice of an agent's balance
            Op(ex.GRANT_USAGE, self.grants.usage, by_agent, timeout_s=30.0),
            Op(ex.RELEASE, self._settle_now, self._settle_route),
            Op(ex.SETTLE, self._settle_now, self._settle_route),
            Op(ex.CREDIT, self._credit_here, by_agent),  # internal: owner to owner only
            # Paying Routstr nodes: payouts of the operator account, so decided where its partition is served.
            Op(ex.XCASHU_TOKEN, self._x_cashu_token, self._operator_route, timeout_s=RAIL_TIMEOUT_S),
            Op(ex.XCASHU_REPORT, self._x_cashu_report, self._operator_route, timeout_s=RAIL_TIMEOUT_S),
            Op(ex.TOPUP_NOW, self._top_up_now, self._operator_route, timeout_s=RAIL_TIMEOUT_S),
            Op(ex.WHOAMI, self._whoami),
            Op(ex.AGENT_ME, self._me, by_token),
            Op(ex.AGENT_HISTORY, self._my_history),
            Op(ex.AGENT_DEPOSIT, self._my_deposit, by_token, timeout_s=RAIL_TIMEOUT_S),
            Op(ex.AGENT_WITHDRAW, self._my_withdraw, by_token, timeout_s=RAIL_TIMEOUT_S),
            Op(ex.AGENT_PAYOUT, self._my_payout, by_token, timeout_s=RAIL_TIMEOUT_S),
            Op(ex.AGENT_PAYOUTS, self._my_payouts),
            # Money and identities move on the operator's say-so only: these carry the admin token (admin
            # exchanges), checked here too, so a gateway's bus credential alone can neither mint nor move money.
            Op(ex.CREATE_AGENT, self._create_agent, self._new_agent),
            Op(ex.LIST_AGENTS, self._list_agents),
            Op(ex.GET_AGENT, self._get_agent),
            Op(ex.SET_POLICY, self._set_policy, by_agent),
            Op(ex.ROTATE_TOKEN, self._rotate_token, by_agent),
            Op(ex.ADMIN_DEPOSIT, self._deposit, by_agent),
            Op(ex.ADMIN_DEPOSIT_TOKEN, self._deposit_token, by_agent, timeout_s=RAIL_TIMEOUT_S),
            Op(ex.APPROVALS, self._approvals),
            Op(ex.APPROVE, self._approve, self._approval_route),
            Op(ex.DENY, self._deny, self._approval_route),
            Op(ex.AUDIT, self._audit),
            Op(ex.BOOKS, self._books),
            Op(ex.VERIFY, self._verify),
            Op(ex.ADMIN_PAYOUTS, self._payouts),
            Op(ex.RECONCILE, self._reconcile),
            Op(ex.RECONCILE_CLEAR, self._reconcile_clear),
            # Reports: the operator's (admin token) or an agent's own (its token hash scopes them).
            Op(ex.STATS, self._stats),
            Op(ex.REQUESTS, self._requests),
        ]

    def endpoints(self) -> list[Endpoint]:
        return [op.endpoint(self._routed(op)) for op in self._ops.values() if op.exchange.subject]

    def _routed(self, op: Op) -> Callable[[Any, dict[str, str]], Awaitable[Any]]:
        async def handle(msg: Any, headers: dict[str, str]) -> Any:
            if op.route is None:
                return await op.handler(msg, headers)
            agent_id = await op.route(msg)
            k = self.partition_of(agent_id)
            if k in self.owners:
                return await op.handler(msg, headers, agent_id)
            if H_FORWARDED in headers:
                raise moved(k)  # it reached us as the owner, but we are not any more: the caller asks again
            return await self._forward(k, op, msg, headers)
        return handle

    async def _forward(self, k: int, op: Op, msg: BaseModel, headers: dict[str, str]) -> RawReply:
        assert self.nc is not None
        data = msg.model_dump_json().encode()
        fwd = {**headers, H_FORWARDED: self.instance}
        deadline = time.monotonic() + FORWARD_WAIT_S
        while True:
            try:
                reply = await self.nc.request(op.exchange.on_partition(k), data, timeout=op.timeout_s,
                                              headers=fwd)
                return RawReply(reply.data, dict(reply.headers) if reply.headers else None)
            except NoRespondersError:
                if time.monotonic() > deadline:
                    raise ArbstrError(503, f"no vault instance serves partition {k} yet", code="partition_unowned",
                                      headers={"retry-after": "1"}) from None
                await asyncio.sleep(0.05)
            except (NatsTimeoutError, asyncio.TimeoutError):
                raise ArbstrError(504, f"the owner of partition {k} did not answer in time", code="actor_timeout",
                                  headers={"retry-after": "1"}) from None

    async def _on_partition_msg(self, msg: Msg) -> None:
        """A command sent to the owner of a partition (by a gateway, or forwarded by another instance)."""
        op = self._ops.get(msg.subject.rsplit(".", 1)[1])

        async def run() -> None:
            if op is None:
                data, headers = error_reply(ArbstrError(404, f"no vault operation {msg.subject}", code="unknown_op"))
            else:
                ep = op.endpoint(self._routed(op))
                h = dict(msg.headers or {})
                h.setdefault(H_FORWARDED, "direct")  # sent to the owner: if it is not any more, the caller retries
                data, headers, status = await answer(ep, msg.data, h, self.admin_hash, self.service_name)
                counts = self.partition_ops.setdefault(op.name, {})
                counts[status] = counts.get(status, 0) + 1
            if msg.reply:
                try:
                    await self.nc.publish(msg.reply, data, headers=headers)  # type: ignore[union-attr]
                except Exception as e:
                    log.warning("could not answer %s: %r", msg.subject, e)

        task = asyncio.create_task(run())
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    # --- routes: which agent a command is about --------------------------------------------------------
    async def _by_token(self, msg: Any) -> str:
        return await self._agent_for(msg.token_hash)

    async def _by_agent(self, msg: Any) -> str:
        return str(msg.agent_id)

    async def _new_agent(self, msg: CreateAgent) -> str:
        if getattr(msg, "agent_id", None):
            return str(msg.agent_id)
        msg.agent_id = f"agt_{secrets.token_hex(8)}"  # named here, so the owner and a retry agree on it
        return msg.agent_id

    async def _reserve_route(self, req: ReserveRequest) -> str:
        return await self._agent_for(req.token_hash)

    async def _settle_route(self, cmd: SettleCommand) -> str:
        if cmd.agent_id:
            return cmd.agent_id
        if cmd.token_hash:
            agent_id = await self._agent_for(cmd.token_hash, refuse=False)
            if agent_id:
                return agent_id
        raise ArbstrError(404, f"{cmd.kind} of {cmd.request_id} names no known agent", code="unknown_agent")

    async def _approval_route(self, req: ApprovalAction) -> str:
        agent_id, _ = await self._holder(req.request_id, req.agent_id)
        req.agent_id = agent_id  # the owner decides for exactly this agent
        return agent_id

    async def _operator_route(self, msg: Any) -> str:
        return self._payments().operator

    async def _agent_for(self, token_hash: str, refuse: bool = True) -> str:
        agent_id = self.book.agent_by_token(token_hash)
        if agent_id is None:
            await self._caught_up()  # a token issued a moment ago through another instance
            agent_id = self.book.agent_by_token(token_hash)
        if agent_id is None:
            if refuse:
                raise unauthorized()
            return ""
        return agent_id

    @property
    def _read_wait_s(self) -> float:
        # Below the caller's bus timeout: a read model that is behind (a follower re-subscribing after a lost
        # server) answers a clear 503 to retry, not a timeout the caller cannot tell from a dead vault.
        return min(10.0, 0.6 * self.config.nats.request_timeout_s)

    async def _caught_up(self) -> None:
        """The read model has every batch journaled so far (by any instance): read-your-writes for admin reads."""
        assert self.nc is not None and self.follower is not None
        try:
            for i in range(self.layout.streams):
                last = await stream_last_seq(self.nc, subjects.ledger_stream(i))
                await self.follower.wait_applied(i, last, self._read_wait_s)
        except asyncio.TimeoutError:
            raise ArbstrError(503, "the vault's read model is catching up with the journal; try again",
                              code="catching_up", headers={"retry-after": "1"}) from None

    async def _whoami(self, req: TokenRef, headers: dict[str, str]) -> AgentRoute:
        """Which agent a token is (the gateway then sends its reserves straight to the partition's owner)."""
        agent_id = await self._agent_for(req.token_hash)
        return AgentRoute(agent_id=agent_id, partition=self.partition_of(agent_id))

    # --- paying Routstr nodes --------------------------------------------------------------------------
    def _payments(self) -> PerRequestPayments:
        if self.x_cashu is None:
            raise ArbstrError(503, "this vault pays no providers ([vault.topup] is not configured)",
                              code="topup_unavailable")
        return self.x_cashu

    async def _x_cashu_token(self, req: XCashuRequest, headers: dict[str, str], operator: str) -> XCashuToken:
        self.freeze.check()
        return await self._payments().issue(req)

    async def _x_cashu_report(self, req: XCashuReport, headers: dict[str, str], operator: str) -> XCashuResult:
        return await self._payments().report(req)

    async def _top_up_now(self, req: TopUpNow, headers: dict[str, str], operator: str) -> TopUpResult:
        self.freeze.check()
        return await self._payments().topups.top_up_now(req)

    # --- reserve ---------------------------------------------------------------------------------------
    async def _reserve(self, req: ReserveRequest, headers: dict[str, str], agent_id: str) -> ReserveReply:
        self.freeze.check()
        if req.sent_at_ms is not None and now_ms() - req.sent_at_ms > RESERVE_MAX_AGE_MS:
            raise ArbstrError(409, f"request {req.request_id} was sent too long ago to be held",
                              code="request_stale", headers={"x-should-retry": "false"})
        ttl_ms = self.vc.hold_ttl_s * 1000
        rid = req.request_id
        w = await self.execute(agent_id, lambda s, at: decide.reserve(
            s, rid, req.envelope, at, ttl_ms=ttl_ms, provider=req.provider, model=req.model, attempt=req.attempt),
            answer_with=lambda s, d: None if d.noop else self._hold_reply(agent_id, rid, s, req.attempt))
        if w.decided.noop == "duplicate" and not req.attempt:
            # A caller naming no attempt sends a reserve once: a second one with this id is another request reusing
            # it, and a hold shared by two upstream calls would let one of them go unpaid. (A repeat of a named
            # attempt is the same reserve delivered again: it is answered from its hold.)
            raise ArbstrError(409, f"request id {rid!r} was already used by this agent; send a new X-Request-Id",
                              code="request_id_reused", param="X-Request-Id", headers={"x-should-retry": "false"})
        return w.answer if w.answer is not None else self._hold_reply(agent_id, rid, w.state, req.attempt)

    async def _extend(self, req: ExtendRequest, headers: dict[str, str], agent_id: str) -> ReserveReply:
        """A fallback to a costlier candidate: the hold grows first (one more journal write, only then)."""
        if self.book.agent_by_token(req.token_hash) != agent_id:
            raise unauthorized()
        self.freeze.check()
        rid = req.request_id
        w = await self.execute(agent_id, lambda s, at: decide.extend(s, rid, req.amount_msat, at, req.attempt),
                               answer_with=lambda s, d: self._hold_reply(agent_id, rid, s, s.holds[rid].attempt
                                                                         if rid in s.holds else ""))
        return w.answer

    async def _wait_approval(self, req: ReserveRequest, headers: dict[str, str], agent_id: str) -> ReserveReply:
        """The second half of a reserve that needs approval: answers when it is approved, denied or timed out."""
        state = self.book.state(agent_id)
        hold = state.holds.get(req.request_id)
        if hold is not None and hold.state == "awaiting_approval" and hold.attempt == req.attempt:
            state = await self._await_approval(agent_id, req.request_id, hold.approval_deadline_ms or now_ms())
        return self._hold_reply(agent_id, req.request_id, state, req.attempt)

    def _hold_reply(self, agent_id: str, rid: str, state: AccountState, attempt: str = "") -> ReserveReply:
        hold = state.holds.get(rid)
        if hold is not None and hold.attempt != attempt:
            hold = None  # another attempt's hold: this one ended (and the rid was reserved again since)
        if hold is None:
            res = state.resolutions.get(rid)
            if res is not None and res.kind == "denied" and res.hold.attempt == attempt:
                code = "approval_timeout" if res.reason == decide.APPROVAL_TIMEOUT else "approval_denied"
                raise ArbstrError(403, f"the spend was not approved ({res.reason or 'denied'})", code=code,
                                  headers={"x-should-retry": "false"})
            raise ArbstrError(409, f"request {rid} was already resolved", code="request_resolved")
        return ReserveReply(request_id=rid, agent_id=agent_id, amount_msat=hold.amount_msat,
                            output_tokens=hold.output_tokens, expires_at_ms=hold.expires_at_ms,
                            balance_msat=state.available_msat, state=hold.state,
                            approval_deadline_ms=hold.approval_deadline_ms)

    async def _await_approval(self, agent_id: str, rid: str, deadline_ms: int) -> AccountState:
        """Hold the reply until a human approves or denies, or the deadline denies it for them."""
        key = (agent_id, rid)
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            while True:
                state = self.book.state(agent_id)
                hold = state.holds.get(rid)
                if hold is None or hold.state != "awaiting_approval":
                    return state
                remaining = deadline_ms - now_ms()
                if remaining <= 0:
                    await self.execute(agent_id, lambda s, at: decide.expire(s, rid, at, self.vc.expiry_action))
                    continue
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), remaining / 1000 + 0.01)
                except asyncio.TimeoutError:
                    pass
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[key]

    # --- settle / release ------------------------------------------------------------------------------
    async def _settle_now(self, cmd: SettleCommand, headers: dict[str, str], agent_id: str) -> Empty:
        """A settle or release, journaled by the owner before it answers (the gateway's fast path)."""
        await self.apply_settle(cmd, agent_id)
        return Empty()

    async def apply_settle(self, cmd: SettleCommand, agent_id: str) -> None:
        if not self.book.state(agent_id).created:
            log.warning("%s of %s names no known agent; nothing to do", cmd.kind, cmd.request_id)
            return
        rid = cmd.request_id
        if cmd.kind == "settle":
            decider: Decider = lambda s, at: decide.settle(
                s, rid, cmd.cost_msat, at, input_tokens=cmd.input_tokens, output_tokens=cmd.output_tokens,
                provider=cmd.provider, model=cmd.model, estimated=cmd.estimated, attempt=cmd.attempt,
                provider_cost_msat=cmd.provider_cost_msat, cost_drift=cmd.cost_drift)
        else:
            decider = lambda s, at: decide.release(s, rid, cmd.reason or "released", at, attempt=cmd.attempt)
        await self.execute(agent_id, decider, record=cmd.record)

    async def _consume_settles(self) -> None:
        """The durable fallback: settles a gateway could not hand to an owner in time (any instance takes them,
        and passes each to its owner)."""
        assert self.nc is not None
        js = self.nc.jetstream()
        psub = self._settle_sub = await js.pull_subscribe(
            f"{subjects.SETTLE_PREFIX}.>", durable="vault-settle", stream=subjects.STREAM_SETTLE,
            config=settle_consumer_config())
        while self._running:
            try:
                msgs = await psub.fetch(batch=256, timeout=1.0)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            except Exception as e:
                log.warning("settle consumer: %r", e)
                await asyncio.sleep(0.5)
                continue
            for i, msg in enumerate(msgs):
                try:
                    await self._settle_sem.acquire()
                except asyncio.CancelledError:
                    for rest in msgs[i:]:  # stopping: handed back now rather than after the ack wait
                        with contextlib.suppress(Exception):
                            await rest.nak()
                    raise
                task = asyncio.create_task(self._handle_settle_msg(msg))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _handle_settle_msg(self, msg: Msg) -> None:
        try:
            try:
                cmd = SettleCommand.model_validate_json(msg.data)
            except Exception:
                log.error("undecodable settle command dropped (seq %s)", msg.metadata.sequence.stream)
                await msg.term()
                return
            op = self._ops[cmd.kind]
            try:
                reply = await self._routed(op)(cmd, {})
                if isinstance(reply, RawReply):
                    code = reply_status(reply.headers)
                    if code.isdigit() and int(code) >= 500:
                        raise ArbstrError(int(code), "the owner could not journal it yet")
            except ArbstrError as e:
                if e.status >= 500:
                    await msg.nak(delay=1.0)
                    return
                log.warning("settle %s refused: %s", cmd.request_id, e.message)
            except Exception:
                log.exception("settle %s failed; redelivering", cmd.request_id)
                await msg.nak(delay=1.0)
                return
            await msg.ack()  # only after the journal has it
        finally:
            self._settle_sem.release()

    # --- expiry ----------------------------------------------------------------------------------------
    async def _expire_due(self, k: int, due: list[tuple[str, str, str]]) -> None:
        """Deadlines the owner's timers reached: holds expire (approvals time out), payouts nobody approved are
        released. Submitted together: they group-commit like anything else."""
        owner = self.owners.get(k)
        if owner is None or owner.writer is None:
            return

        grace_s = GRANT_GRACE_S - (time.monotonic() - self._acquired_at.get(k, 0.0))

        async def one(agent_id: str, key: str, kind: str) -> None:
            try:
                if kind == HOLD and key.startswith(GRANT_PREFIX) and grace_s > 0:
                    # A grant that ran out while its partition had no owner: its gateway's reports are still being
                    # retried, and would arrive just after the expiry charged the grant. Expired after the grace.
                    owner.timers.arm(now_ms() + int(grace_s * 1000), agent_id, key, HOLD)
                    return
                if kind == HOLD:
                    w = await self.execute(agent_id, lambda s, at: decide.expire(s, key, at, self.vc.expiry_action))
                    if w.events and isinstance(w.events[-1].body, Expired):
                        log.warning("hold %s of %s expired (%s)", key, agent_id, self.vc.expiry_action)
                else:
                    payout = self.book.state(agent_id).payouts.get(key)
                    if payout is not None and payout.approval_deadline_ms is not None \
                            and payout.approval_deadline_ms <= now_ms():
                        await self.execute(agent_id, lambda s, at: decide.fail_payout(s, key, "approval timed out", at))
            except ArbstrError as e:
                if e.code == "not_expired":  # approved meanwhile, or not due yet: its real deadline is armed again
                    hold = self.book.state(agent_id).holds.get(key)
                    if hold is not None:
                        owner.timers.arm(hold.expires_at_ms, agent_id, key, HOLD)
                elif e.code != "partition_moved":
                    log.warning("expiry of %s: %s", key, e.message)

        await asyncio.gather(*(one(*d) for d in due))

    async def sweep(self) -> int:
        """Resolve every owned hold past its deadline now (tests; the timers do it on their own)."""
        due = []
        at = now_ms()
        for k, owner in list(self.owners.items()):
            items = []
            for state in list(owner.part.agents.values()):
                for rid, hold in state.holds.items():
                    deadline = hold.approval_deadline_ms if hold.state == "awaiting_approval" else hold.expires_at_ms
                    if deadline is not None and deadline <= at:
                        items.append((state.agent_id, rid, HOLD))
                items += [(state.agent_id, pid, "payout") for pid, p in state.payouts.items()
                          if p.approval_deadline_ms is not None and p.approval_deadline_ms <= at]
            due.append((k, items))
        before = sum(len(i) for _, i in due)
        for k, items in due:
            if items:
                await self._expire_due(k, items)
        return before

    async def _flush_projection_forever(self) -> None:
        while self._running:
            await asyncio.sleep(0.5)
            try:
                if self.projection is not None:
                    await self.projection.flush_async()
                if self.request_log is not None:
                    await self.request_log.flush_async()
            except Exception:
                log.exception("projection flush failed")

    # --- reports (the request log) ---------------------------------------------------------------------
    async def _report_scope(self, agent_id: Optional[str], token_hash: Optional[str], headers: dict[str, str]
                            ) -> Optional[str]:
        """The agent a report may cover: any (admin token), or only the agent whose token hash came with it."""
        if token_hash:
            own = await self._agent_for(token_hash)
            if agent_id not in (None, own):
                raise ArbstrError(403, "an agent token sees only its own requests", code="forbidden", param="agent")
            return own
        check_admin(headers, self.admin_hash)
        return agent_id

    async def _stats(self, req: StatsQuery, headers: dict[str, str]) -> StatsReply:
        assert self.request_log is not None
        req.agent_id = await self._report_scope(req.agent_id, req.token_hash, headers)
        return await asyncio.to_thread(self.request_log.stats, req)

    async def _requests(self, req: RequestsQuery, headers: dict[str, str]) -> RequestList:
        assert self.request_log is not None
        req.agent_id = await self._report_scope(req.agent_id, req.token_hash, headers)
        return await asyncio.to_thread(self.request_log.requests, req)

    # --- agent endpoints -------------------------------------------------------------------------------
    async def _me(self, req: TokenRef, headers: dict[str, str], agent_id: str) -> AccountView:
        return view(self.book.state(agent_id))

    async def _my_history(self, req: HistoryQuery, headers: dict[str, str]) -> History:
        if not req.token_hash:
            raise unauthorized()
        agent_id = await self._agent_for(req.token_hash)  # an agent sees only its own account
        await self._projection_current()
        assert self.projection is not None
        return History(items=self.projection.history(agent_id, req.since_ms, req.limit))

    async def _my_deposit(self, req: DepositRequest, headers: dict[str, str], agent_id: str) -> DepositReply:
        return await self.rails.deposit(agent_id, req)

    async def _my_withdraw(self, req: WithdrawRequest, headers: dict[str, str], agent_id: str) -> PayoutView:
        return await self.rails.withdraw(agent_id, req)

    async def _my_payout(self, req: PayoutRef, headers: dict[str, str], agent_id: str) -> PayoutView:
        return await self.rails.payout(agent_id, req.payout_id)

    async def _my_payouts(self, req: TokenRef, headers: dict[str, str]) -> PayoutList:
        return self.rails.payouts(await self._agent_for(req.token_hash))

    # --- deposits credited by the rails ------------------------------------------------------------------
    async def _credit(self, agent_id: str, deposit_id: str, amount_msat: int, rail: str, reference: str) -> None:
        """Credit a deposit the rails saw settle, at the owner of the agent's partition (here or forwarded)."""
        op = self._ops["credit"]
        reply = await self._routed(op)(CreditDeposit(agent_id=agent_id, deposit_id=deposit_id,
                                                     amount_msat=amount_msat, rail=rail, reference=reference), {})
        if isinstance(reply, RawReply):
            error = decode_error(reply.data, reply.headers)
            if error is not None:
                raise error

    async def _credit_here(self, req: CreditDeposit, headers: dict[str, str], agent_id: str) -> Empty:
        await self.execute(agent_id, lambda s, at: decide.deposit(s, req.deposit_id, req.amount_msat, req.rail,
                                                                  req.reference, at, None))
        return Empty()

    # --- admin endpoints -------------------------------------------------------------------------------
    async def _known(self, agent_id: str) -> AccountState:
        """The agent with every write acked so far (by any instance) applied: operators read their writes."""
        if not self.owns(agent_id):
            await self._caught_up()
        state = self.book.state(agent_id)
        if not state.created:
            raise ArbstrError(404, f"no agent {agent_id}", code="agent_not_found", param="agent_id")
        return state

    def _default_policy(self) -> AgentPolicy:
        return AgentPolicy(**self.vc.default_policy.model_dump())

    async def _create_agent(self, req: CreateAgent, headers: dict[str, str], agent_id: str) -> AccountView:
        if self.book.agent_by_token(req.token_hash) is not None:
            raise ArbstrError(409, "that token is already in use", code="token_in_use")
        policy = req.policy or self._default_policy()
        w = await self.execute(agent_id, lambda s, at: decide.create_agent(s, req.name, req.token_hash, policy, at))
        return view(w.state)

    async def _list_agents(self, req: Empty, headers: dict[str, str]) -> AgentList:
        await self._caught_up()
        return AgentList(agents=[view(s) for s in sorted(self.book.agents(), key=lambda s: s.created_at_ms)])

    async def _get_agent(self, req: AgentRef, headers: dict[str, str]) -> AccountView:
        return view(await self._known(req.agent_id))

    async def _set_policy(self, req: SetPolicy, headers: dict[str, str], agent_id: str) -> AccountView:
        await self._known(agent_id)
        w = await self.execute(agent_id, lambda s, at: decide.set_policy(s, req.policy, at))
        await self.grants.revoke(agent_id, "policy_changed")  # gateways decide the next request by the new rules
        return view(w.state)

    async def _rotate_token(self, req: RotateToken, headers: dict[str, str], agent_id: str) -> AccountView:
        await self._known(agent_id)
        if self.book.agent_by_token(req.token_hash) is not None:
            raise ArbstrError(409, "that token is already in use", code="token_in_use")
        replaced: list[str] = []

        def rotate(s: AccountState, at: int) -> decide.Decided:
            replaced[:] = [s.token_hash]
            return decide.rotate_token(s, req.token_hash, at)

        w = await self.execute(agent_id, rotate)
        if w.events and replaced:
            await self.grants.revoke(agent_id, "token_rotated")
            await self._revoked(agent_id, replaced[0], "token_rotated")
        return view(w.state)

    async def _revoked(self, agent_id: str, token_hash: str, reason: str) -> None:
        """Tell every gateway that ``token_hash`` no longer opens anything (its open event streams end). Core
        NATS may drop it: gateways also re-check their streams' tokens now and then."""
        assert self.nc is not None
        notice = TokenRevoked(agent_id=agent_id, token_hash=token_hash, reason=reason, at_ms=now_ms())
        try:
            await self.nc.publish(subjects.TOKEN_REVOKED, notice.model_dump_json().encode())
        except Exception:
            log.warning("could not publish the revocation of %s's token", agent_id)

    async def _deposit(self, req: DepositCommand, headers: dict[str, str], agent_id: str) -> AccountView:
        await self._known(agent_id)
        return view((await self.execute(agent_id, lambda s, at: decide.deposit(
            s, req.deposit_id, req.amount_msat, req.rail, req.reference, at, self.book.deposited_msat()))).state)

    async def _deposit_token(self, req: AgentDeposit, headers: dict[str, str], agent_id: str) -> DepositReply:
        await self._known(agent_id)
        return await self.rails.deposit(agent_id, DepositRequest(token_hash="", rail="cashu", token=req.token))

    async def _approvals(self, req: Empty, headers: dict[str, str]) -> ApprovalList:
        await self._caught_up()
        items = []
        for state in self.book.agents():
            for hold in state.holds.values():
                if hold.state == "awaiting_approval":
                    items.append(Approval(request_id=hold.rid, agent_id=state.agent_id, agent_name=state.name,
                                          amount_msat=hold.amount_msat, provider=hold.provider, model=hold.model,
                                          requested_at_ms=hold.reserved_at_ms,
                                          deadline_ms=hold.approval_deadline_ms or 0))
            for p in state.payouts.values():
                if p.approval_deadline_ms is not None:
                    items.append(Approval(request_id=p.payout_id, kind="payout", agent_id=state.agent_id,
                                          agent_name=state.name, amount_msat=p.held_msat, provider=p.rail,
                                          model="withdrawal", requested_at_ms=p.started_at_ms,
                                          deadline_ms=p.approval_deadline_ms))
        items.sort(key=lambda a: a.requested_at_ms)
        return ApprovalList(approvals=items)

    async def _holder(self, rid: str, agent_id: Optional[str]) -> tuple[str, bool]:
        """(agent id, whether it is a payout) of the approval ``rid`` names.

        Request ids are the clients' and collide across agents: with ``agent_id`` the approval is that agent's;
        without it, only a single pending approval with that id is ever chosen — several pending (or several
        agents knowing the id and none pending) is a 400 asking for the agent, never a guess."""
        await self._caught_up()
        if agent_id is not None:
            state = self.book.state(agent_id)
            if not state.created:
                raise ArbstrError(404, f"no agent {agent_id}", code="agent_not_found", param="agent_id")
            found = _approval_of(state, rid)
            if found is None:
                raise ArbstrError(404, f"agent {agent_id} has no reservation {rid}", code="unknown_request",
                                  param="request_id")
            return agent_id, found[1]
        pending: list[tuple[str, bool]] = []
        known: list[tuple[str, bool]] = []
        for state in self.book.agents():
            found = _approval_of(state, rid)
            if found is not None:
                (pending if found[0] else known).append((state.agent_id, found[1]))
        if len(pending) == 1:
            return pending[0]
        if len(pending) > 1 or (not pending and len(known) > 1):
            agents = ", ".join(sorted(a for a, _ in pending or known))
            raise ArbstrError(400, f"request id {rid} names requests of several agents ({agents}): decide it at "
                                   f"/v1/admin/approvals/{{agent_id}}/{rid}/approve|deny", code="agent_id_required",
                              param="agent_id")
        if known:
            return known[0]  # decided already, or never awaiting approval: the deciders say which (409)
        raise ArbstrError(404, f"no reservation {rid}", code="unknown_request", param="request_id")

    async def _decide_payout(self, agent_id: str, pid: str, approve: bool, reason: str) -> ApprovalResult:
        state = self.book.state(agent_id)
        payout = state.payouts.get(pid)
        if payout is None or payout.approval_deadline_ms is None:
            done = state.payouts_done.get(pid)
            if f"payout_approved:{pid}" in state.op_ids:
                raise decide.already_decided(pid, "approved")
            if done is not None and done.payout.approval_deadline_ms is not None:
                raise decide.already_decided(pid, "denied")
            raise ArbstrError(409, f"payout {pid} is not waiting for approval", code="not_awaiting_approval")
        if approve:
            await self.execute(agent_id, lambda s, at: decide.approve_payout(s, pid, at))
            self.rails.drive(agent_id, pid, resume=False)  # sent now; its outcome shows in the payout view
        else:
            await self.execute(agent_id, lambda s, at: decide.fail_payout(
                s, pid, f"denied by an operator{': ' + reason if reason else ''}", at))
        return ApprovalResult(request_id=pid, agent_id=agent_id, state="approved" if approve else "denied")

    async def _decide_approval(self, req: ApprovalAction, agent_id: str, approve: bool) -> ApprovalResult:
        rid = req.request_id
        found = _approval_of(self.book.state(agent_id), rid)
        if found is not None and found[1]:
            return await self._decide_payout(agent_id, rid, approve, req.reason)
        if approve:
            w = await self.execute(agent_id, lambda s, at: decide.approve(s, rid, at))
        else:
            w = await self.execute(agent_id, lambda s, at: decide.deny(s, rid, req.reason, at))
        if w.decided.noop == "duplicate":
            raise decide.already_decided(rid, "approved" if approve else "denied")  # by someone else, before
        hold = w.state.holds.get(rid)
        res = w.state.resolutions.get(rid)
        status = hold.state if hold is not None else (res.kind if res is not None else "unknown")
        return ApprovalResult(request_id=rid, agent_id=agent_id, state=status)

    async def _approve(self, req: ApprovalAction, headers: dict[str, str], agent_id: str) -> ApprovalResult:
        return await self._decide_approval(req, agent_id, True)

    async def _deny(self, req: ApprovalAction, headers: dict[str, str], agent_id: str) -> ApprovalResult:
        return await self._decide_approval(req, agent_id, False)

    async def _audit(self, req: HistoryQuery, headers: dict[str, str]) -> History:
        if req.agent_id is not None:
            await self._known(req.agent_id)
        await self._projection_current()
        assert self.projection is not None
        return History(items=self.projection.history(req.agent_id, req.since_ms, req.limit))

    async def _books(self, req: Empty, headers: dict[str, str]) -> Books:
        await self._caught_up()
        assert self.projection is not None and self.feed is not None
        # A consistent cut: no batch in flight in any owned partition (memory would be ahead of the journal),
        # and the projection summed up to exactly the sequences the read model holds.
        async with contextlib.AsyncExitStack() as stack:
            for owner in list(self.owners.values()):
                if owner.writer is not None:
                    await stack.enter_async_context(owner.writer.quiet())
            upto = dict(self.book.top_seq)
            books = self.book.books(max(upto.values(), default=0))
        if not await self.feed.reached(upto, self._read_wait_s):
            return books  # the projection is behind: the books answer without the comparison
        totals = await asyncio.to_thread(self.projection.totals, None, upto)
        books.projection_agrees = (
            totals.get("deposited", 0) == books.deposits_msat
            and totals.get("withdrawn", 0) + totals.get("payout_settled", 0) == books.withdrawals_msat
            and totals.get("settled", 0) + totals.get("expired", 0) == books.spent_msat)
        return books

    async def _projection_current(self) -> None:
        """Writes acked so far reach the projection before a history read: read-after-write."""
        assert self.feed is not None
        if not await self.feed.reached(dict(self.book.top_seq), self._read_wait_s):
            log.warning("history: the projection is behind the journal; answering with what it has")

    async def _payouts(self, req: AgentRef, headers: dict[str, str]) -> PayoutList:
        """Every payout (``agent_id`` "*": of every agent)."""
        if req.agent_id != "*":
            await self._known(req.agent_id)
        else:
            await self._caught_up()
        return self.rails.payouts(None if req.agent_id == "*" else req.agent_id)

    async def _reconcile(self, req: Empty, headers: dict[str, str]) -> Reconciliation:
        return await self.rails.reconcile()

    async def _reconcile_clear(self, req: ClearFreeze, headers: dict[str, str]) -> Reconciliation:
        return await self.rails.clear(req)

    async def _verify(self, req: Empty, headers: dict[str, str]) -> ChainCheck:
        assert self.nc is not None
        return await verify_ledger(self.nc, self.layout.streams)


def _approval_of(state: AccountState, rid: str) -> Optional[tuple[bool, bool]]:
    """(pending, is a payout) of what ``rid`` names in one account — a pending one first — or None."""
    hold = state.holds.get(rid)
    payout = state.payouts.get(rid)
    if hold is not None and hold.state == "awaiting_approval":
        return True, False
    if payout is not None and payout.approval_deadline_ms is not None:
        return True, True
    if hold is not None or rid in state.resolutions:
        return False, False
    if payout is not None or rid in state.payouts_done:
        return False, True
    return None


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


def _hash(raw: bytes) -> str:
    from schemas.ledger import batch_hash

    return batch_hash(raw)


def _log_failure(task: "asyncio.Future[Any]") -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("event not published: %r", task.exception())


async def read_stream(nc: NATS, stream: int, timeout_s: float = 60.0) -> list[bytes]:
    """Every message of one ledger stream, in order, read afresh."""
    js = nc.jetstream()
    last = await stream_last_seq(nc, subjects.ledger_stream(stream))
    out: list[bytes] = []
    if last == 0:
        return out
    done = asyncio.Event()

    async def cb(msg: Msg) -> None:
        out.append(bytes(msg.data))
        if msg.metadata.sequence.stream >= last:
            done.set()

    sub = await js.subscribe(subjects.ledger_stream_subjects(stream)[0], cb=cb, ordered_consumer=True,
                             stream=subjects.ledger_stream(stream), deliver_policy=DeliverPolicy.ALL)
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await sub.unsubscribe()
    return out


async def read_ledger(nc: NATS, timeout_s: float = 60.0) -> dict[str, list[LedgerEvent]]:
    """Every agent's events, read afresh from every ledger stream (for verification and replay checks)."""
    out: dict[str, list[LedgerEvent]] = {}
    for stream in range(await _streams(nc)):
        for raw in await read_stream(nc, stream, timeout_s):
            doc = orjson.loads(raw)
            entries = doc.get("entries", ()) if doc.get("kind") == "batch" else [doc]
            for entry in entries:
                e = JournalEntry.model_validate(entry)
                out.setdefault(e.agent_id, []).extend(e.events)
    return out


async def verify_ledger(nc: NATS, streams: Optional[int] = None) -> ChainCheck:
    """Re-read the whole ledger and check every hash chain: each partition's batches, and each agent's events
    written before partitions."""
    streams = streams if streams is not None else await _streams(nc)
    broken: list[str] = []
    agents: set[str] = set()
    events = 0
    for stream in range(streams):
        legacy: dict[str, list[LedgerEvent]] = {}
        batches: dict[int, list[bytes]] = {}
        for raw in await read_stream(nc, stream):
            doc = orjson.loads(raw)
            if doc.get("kind") == "batch":
                batches.setdefault(int(doc["partition"]), []).append(raw)
                for entry in doc.get("entries", ()):
                    agents.add(entry["agent_id"])
                    events += len(entry["events"])
            else:
                entry = JournalEntry.model_validate_json(raw)
                legacy.setdefault(entry.agent_id, []).extend(entry.events)
        for agent, evs in legacy.items():
            agents.add(agent)
            events += len(evs)
            if not verify_chain(evs)[0]:
                broken.append(agent)
        for k, raws in batches.items():
            if not verify_batches(raws)[0]:
                broken.append(f"partition-{k}")
    return ChainCheck(agents=len(agents), events=events, ok=not broken, broken=sorted(broken))


async def _streams(nc: NATS) -> int:
    try:
        kv = await nc.jetstream().key_value(subjects.KV_PARTITIONS)
        return int(orjson.loads((await kv.get(LAYOUT_KEY)).value or b"{}").get("streams", 1))
    except Exception:
        return 1
