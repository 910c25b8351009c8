"""Feeds the DuckDB projection from the ledger streams: every message after the projection's own applied
sequence, in order, turned into rows straight from its JSON (no fold: the projection decides nothing).

It runs beside serving, not before it: a restart serves from snapshots at once while history catches up."""

from __future__ import annotations

import asyncio
import logging

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy

from actors.runtime.jetstream import HEARTBEAT_S
from actors.runtime.tasks import unsubscribe_quietly
from schemas import subjects

from .projection import Projection

log = logging.getLogger("arbstr.vault.projection")


class ProjectionFeed:
    def __init__(self, nc: NATS, projection: Projection) -> None:
        self.nc = nc
        self.projection = projection
        self._subs: list[object] = []
        self._progress = asyncio.Condition()

    async def start(self) -> None:
        js = self.nc.jetstream()
        for rows in self.projection.streams:
            index = rows.stream

            async def on_msg(msg: Msg, rows=rows) -> None:
                seq = int(msg.metadata.sequence.stream)
                try:
                    rows.add(bytes(msg.data), seq)
                except Exception:
                    log.exception("projection: ledger message %s:%s not loaded (skipped)", rows.stream, seq)
                    rows.skip(seq)
                async with self._progress:
                    self._progress.notify_all()

            self._subs.append(await js.subscribe(
                subjects.ledger_stream_subjects(index)[0], cb=on_msg, ordered_consumer=True, idle_heartbeat=HEARTBEAT_S,
                stream=subjects.ledger_stream(index),
                config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                      opt_start_seq=self.projection.applied(index) + 1)))

    async def reached(self, upto: dict[int, int], timeout_s: float = 10.0) -> bool:
        """Whether the projection has every message up to ``upto`` (per stream) within ``timeout_s``."""
        def done() -> bool:
            return all(self.projection.applied(i) >= seq for i, seq in upto.items())

        async with self._progress:
            try:
                await asyncio.wait_for(self._progress.wait_for(done), timeout_s)
                return True
            except asyncio.TimeoutError:
                return False

    async def stop(self) -> None:
        for sub in self._subs:
            await unsubscribe_quietly(sub)
        self._subs.clear()
