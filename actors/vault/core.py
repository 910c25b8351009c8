"""The state every part of the vault actor shares, declared once.

``VaultActor`` (actor.py) is composed of one mixin per job — partition serving, command routing, the spend
path, deposits, payouts, approvals, agents, books — each in its own module; they all read and write the
attributes declared here, which ``VaultActor.__init__`` sets.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Optional

from nats.aio.client import Client as NATS

from actors.runtime.endpoints import Endpoint
from schemas.config import Config, VaultConfig
from schemas.partitions import partition_of

from .book import Book
from .claims import Claims
from .follower import Follower
from .freeze import FreezeSwitch
from .grant_desk import GrantDesk
from .owner import PartitionOwner
from .ownership import Ownership
from .partition_journal import Layout, PartitionJournal
from .projection import Projection
from .projection_feed import ProjectionFeed
from .rails import Rails
from .request_log import RequestLog
from .snapshots import SnapshotStore
from .topup import TopUps
from .wallets.base import Wallet
from .xcashu import PerRequestPayments

if TYPE_CHECKING:
    from .routing import Op


class VaultCore:
    service_name: str
    config: Config
    vc: VaultConfig
    admin_hash: Optional[str]
    instance: str
    layout: Layout
    book: Book
    wallet: Wallet
    freeze: FreezeSwitch
    grants: GrantDesk
    claims: Claims
    rails: Rails
    topups: Optional[TopUps]
    x_cashu: Optional[PerRequestPayments]
    projection: Optional[Projection]
    request_log: Optional[RequestLog]
    nc: Optional[NATS]
    journal: Optional[PartitionJournal]
    snapshots: Optional[SnapshotStore]
    follower: Optional[Follower]
    feed: Optional[ProjectionFeed]
    ownership: Optional[Ownership]
    owners: dict[int, PartitionOwner]
    _acquired_at: dict[int, int]  # when each owned partition was taken (ms since the epoch)
    _subs: dict[int, Any]
    _cold: set[int]  # partitions whose read model is not a takeover's starting point (being read afresh)
    # (agent id, rid) -> the wake-ups of reserves waiting for its approval. Keyed by agent too: two agents'
    # requests may share a rid, and one's decision must neither wake nor strand the other's wait.
    _waiters: dict[tuple[str, str], set[asyncio.Event]]
    _tasks: list[asyncio.Task[None]]
    _inflight: set[asyncio.Task[Any]]
    _settle_sem: asyncio.Semaphore
    _running: bool
    _settle_sub: Optional[Any]
    _ops: dict[str, Op]
    _partition_eps: dict[str, Endpoint]  # op name -> its endpoint on partition subjects
    takeovers: int
    partition_ops: dict[str, dict[str, int]]  # served on partition subjects: op -> status -> count

    def partition_of(self, agent_id: str) -> int:
        return partition_of(agent_id, self.layout.partitions)

    def owns(self, agent_id: str) -> bool:
        return self.partition_of(agent_id) in self.owners
