"""Partition snapshots in a JetStream object store: a takeover or a restart loads the newest and folds only the
journal after it (``snapshot.py`` holds the format)."""

from __future__ import annotations

import asyncio
import logging
from typing import Optional

from nats.aio.client import Client as NATS
from nats.js.errors import NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from actors.runtime.jetstream import retry_transient
from schemas import subjects

from . import snapshot
from .partition import PartitionState

log = logging.getLogger("arbstr.vault.snapshots")

# A read of a snapshot (a takeover the read model cannot start, a restart): a request lost in an election fails
# after this long and the load is tried again. (Shorter fails spuriously on a loaded machine.)
READ_TIMEOUT_S = 5.0
GET_BUDGET_S = 30.0  # the whole read: its chunks come through a consumer that has no timeout of its own


def object_name(partition: int) -> str:
    return f"p{partition}"


class SnapshotStore:
    def __init__(self, nc: NATS, replicas: int) -> None:
        self.nc = nc
        self.replicas = replicas
        self._obs: Optional[ObjectStore] = None
        self._reader: Optional[ObjectStore] = None  # the same store, read with a short timeout

    async def start(self) -> None:
        js = self.nc.jetstream()

        async def open_or_create() -> ObjectStore:
            try:
                return await js.object_store(subjects.OBJ_SNAPSHOTS)
            except NotFoundError:
                pass
            try:
                return await js.create_object_store(subjects.OBJ_SNAPSHOTS, replicas=self.replicas)
            except Exception:
                return await js.object_store(subjects.OBJ_SNAPSHOTS)  # made meanwhile by another instance

        self._obs = await retry_transient(open_or_create, "snapshot store")
        self._reader = await retry_transient(
            lambda: self.nc.jetstream(timeout=READ_TIMEOUT_S).object_store(subjects.OBJ_SNAPSHOTS), "snapshot store")

    async def load(self, partition: int) -> Optional[PartitionState]:
        assert self._reader is not None
        try:
            result = await asyncio.wait_for(self._reader.get(object_name(partition)), GET_BUDGET_S)
        except (ObjectNotFoundError, NotFoundError):
            return None
        if result.data is None:
            return None
        try:
            return snapshot.decode(bytes(result.data))
        except (ValueError, KeyError, TypeError) as e:
            # Never trusted half-way: the journal from the start is the truth, a snapshot only a shortcut.
            log.error("partition %s: snapshot unreadable (%r); folding its journal from the start", partition, e)
            return None

    async def save(self, part: PartitionState) -> None:
        await self.save_raw(part.partition, snapshot.encode(part))

    async def save_raw(self, partition: int, raw: bytes) -> None:
        assert self._obs is not None
        await self._obs.put(object_name(partition), raw)
