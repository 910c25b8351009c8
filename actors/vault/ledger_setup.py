"""The ledger's layout (partitions and streams, fixed at creation), folding a pre-partition journal into
first snapshots, and loading every partition into the read model at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import orjson
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from actors.runtime.jetstream import retry_transient
from schemas import subjects
from schemas.ledger import JournalBatch, JournalEntry, batch_hash

from . import clock
from .core import VaultCore
from .ownership import LAYOUT_KEY
from .partition import PartitionState, fold_batch, fold_entry
from .partition_journal import Layout, stream_last_seq
from .snapshots import SnapshotStore

log = logging.getLogger("arbstr.vault")

class LedgerSetup(VaultCore):
    """Layout and read model at start: ``_ensure_layout`` then ``_load_read_model``."""

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
                await kv.create(lock, orjson.dumps({"instance": self.instance, "at_ms": clock.now_ms()}))
            except KeyWrongLastSequenceError:
                await asyncio.sleep(0.2)  # another instance is making it
                continue
            try:
                self.layout = Layout(self.vc.partitions, self.vc.ledger_streams)
                legacy_upto = await self._migrate_legacy()
                await kv.create(LAYOUT_KEY, orjson.dumps({"partitions": self.layout.partitions,
                                                          "streams": self.layout.streams,
                                                          "legacy_upto": legacy_upto, "created_at_ms": clock.now_ms()}))
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
                fold_batch(part, JournalBatch.model_validate_json(raw), seq, batch_hash(raw))
            return part

        async def one(k: int) -> None:
            # A fresh cluster (or one electing a leader) times reads out for a while: each attempt starts over
            # from an empty partition, so nothing is folded twice.
            part = await retry_transient(lambda: load(k), f"partition {k} read model")
            self.book.adopt(part, k % self.layout.streams)

        for start in range(0, self.layout.partitions, 16):
            await asyncio.gather(*(one(k) for k in range(start, min(start + 16, self.layout.partitions))))
