"""The vault actor: partitions of the ledger, each owned by one instance at a time, and a thin routing shell.

A command about one account is decided by the owner of the account's partition, from memory, and journaled in
that partition's next batch (group commit: one fenced JetStream write for every command that queued while the
last one was in flight); the caller is answered once the batch is acked. The gateway sends reserves and settles
straight to the owner (``arbstr.v1.vault.p.<k>.<op>``); any other instance that receives a command forwards it
there. Every instance also keeps a read model of every account (the ``Book``) for reports, admin reads and
finding an agent by its token — never for deciding about money.

This module is the shell: it builds the parts, starts and stops them, and names every operation. The work is
done by one mixin per job, each in its own module — ``ledger_setup`` (layout, read model at start),
``serving`` (partition ownership, the write path, after-commit effects), ``routing`` (to the partition's
owner), ``holds_api`` (reserve/extend/settle/release), ``settle_feed`` (the durable settle fallback),
``deadlines`` (expiry), ``agent_api``, ``deposits_api``, ``payouts_api``, ``agents_api``, ``approvals_api``
and ``books_api``; ``core`` declares the state they share, ``clock`` the time they read, and
``ledger_read`` reads the ledger afresh.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any, Optional

from nats.aio.client import Client as NATS

from actors.runtime.endpoints import Endpoint
from actors.runtime.jetstream import open_bucket, retry_transient
from actors.runtime.netguard import private_urls_allowed
from actors.runtime.tasks import cancel_and_wait
from actors.runtime.tokens import admin_token_hash
from schemas import exchanges as ex
from schemas import subjects
from schemas.config import Config, VaultConfig

from .agent_api import AgentApi
from .agents_api import AgentsApi
from .approvals_api import ApprovalsApi
from .book import Book
from .books_api import BooksApi
from .claims import Claims
from .deadlines import Deadlines
from .deposits_api import DepositsApi
from .follower import Follower
from .freeze import FreezeSwitch
from .grant_desk import GrantDesk
from .holds_api import HoldsApi
from .ledger_setup import LedgerSetup
from .owner import PartitionOwner
from .ownership import Ownership
from .partition_journal import Layout, PartitionJournal, stream_last_seq
from .payouts_api import PayoutsApi
from .projection import Projection
from .projection_feed import ProjectionFeed
from .rails import Rails
from .request_log import RequestLog
from .routing import CommandRouting, Op
from .serving import PartitionServing
from .settle_feed import SettleFeed
from .snapshots import SnapshotStore
from .streams import ensure_streams
from .topup import TopUps
from .wallets import build_wallet
from .wallets.base import Wallet
from .xcashu import PerRequestPayments

log = logging.getLogger("arbstr.vault")
# Buffered rows go to DuckDB this often: each load has a fixed cost, and every read flushes first anyway (a
# report never misses a row the vault has seen), so the interval only bounds the memory the buffer takes.
PROJECTION_FLUSH_S = 2.0

VERSION = "0.2.0"
RAIL_TIMEOUT_S = 30.0


class VaultActor(LedgerSetup, PartitionServing, CommandRouting, HoldsApi, SettleFeed, Deadlines, AgentApi,
                 DepositsApi, PayoutsApi, AgentsApi, ApprovalsApi, BooksApi):
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
        self.grants = GrantDesk(self.execute, self.enqueue, self.book.state, self.freeze, self.vc.hold_ttl_s * 1000,
                                self.partition_of)
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
        self._acquired_at: dict[int, int] = {}  # when each owned partition was taken (ms since the epoch)
        self._subs: dict[int, Any] = {}
        self._cold: set[int] = set()
        # (agent id, rid) -> the wake-ups of reserves waiting for its approval. Keyed by agent too: two agents'
        # requests may share a rid, and one's decision must neither wake nor strand the other's wait.
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._inflight: set[asyncio.Task[Any]] = set()
        self._settle_sem = asyncio.Semaphore(256)
        self._running = False
        self._settle_sub: Optional[Any] = None
        self._ops = {op.name: op for op in self._op_table()}
        # What serves each op on partition subjects, built once: the gateways' reserves and settles come there.
        self._partition_eps = {name: op.endpoint(self._routed(op)) for name, op in self._ops.items()}
        self.takeovers = 0
        self.partition_ops: dict[str, dict[str, int]] = {}  # served on partition subjects: op -> status -> count

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
        self.follower = Follower(nc, self.book, self.layout.streams, legacy_upto, overtaken=self._overtaken)
        live_from = {i: await retry_transient(lambda i=i: stream_last_seq(nc, subjects.ledger_stream(i)),
                                              f"ledger stream {i}") + 1
                     for i in range(self.layout.streams)}
        self.follower.hold()
        await self.follower.start(live_from)
        await self._load_read_model()
        self.follower.release()
        self.projection = Projection(self.vc.duckdb_path, streams=self.layout.streams,
                                     memory_mb=self.vc.duckdb_memory_mb)
        self.request_log = RequestLog(self.projection)
        self.feed = ProjectionFeed(nc, self.projection)
        await self.freeze.start(nc, replicas)
        await self.claims.start(nc, replicas)
        self.ownership = Ownership(parts_kv, self.instance, self.layout.partitions, self.vc.lease_s,
                                   self._acquired, self._lost)
        await self.ownership.start()
        await self._settled_in()
        # The reporting projection catches up only now: replaying history into it (all of it, when it lives in
        # memory) while the partitions load would slow them down and starve the connection of the event loop.
        await self.feed.start()
        await self.request_log.follow(nc)
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

    async def _flush_projection_forever(self) -> None:
        while self._running:
            await asyncio.sleep(PROJECTION_FLUSH_S)
            try:
                if self.projection is not None:
                    await self.projection.flush_async()
                if self.request_log is not None:
                    await self.request_log.flush_async()
            except Exception:
                log.exception("projection flush failed")

    def _op_table(self) -> list[Op]:
        by_token = self._by_token
        by_agent = self._by_agent
        return [
            Op(ex.RESERVE, self._reserve, self._reserve_route, retry_moved=True),
            Op(ex.AWAIT_APPROVAL, self._wait_approval, self._reserve_route, timeout_s=86_400),
            Op(ex.EXTEND, self._extend, by_agent, retry_moved=True),  # partition subjects only
            Op(ex.GRANT, self.grants.grant, by_agent, retry_moved=True),  # a gateway's slice of an agent's balance
            Op(ex.GRANT_USAGE, self.grants.reports, self._first_report, timeout_s=30.0, retry_moved=True),
            Op(ex.RELEASE, self._settle_now, self._settle_route, retry_moved=True),
            Op(ex.SETTLE, self._settle_now, self._settle_route, retry_moved=True),
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
