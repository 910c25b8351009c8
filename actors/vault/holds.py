"""Hold timers on ``ARBSTR_HOLDS``: one message per hold with a per-message TTL; when it expires the server
writes a delete marker on the hold's subject, and whichever vault instance consumes the marker expires the hold.

The periodic sweep stays as the backstop (a marker can be missed while no vault runs); both paths go through
the same idempotent expiry, so a hold still resolves at most once.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Awaitable, Callable, Optional

from nats.aio.client import Client as NATS
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from actors.runtime import cancel_and_wait
from schemas import subjects

log = logging.getLogger("arbstr.vault.holds")

MARKER_REASON = "Nats-Marker-Reason"


def holds_stream(replicas: int, hold_ttl_s: int) -> StreamConfig:
    # A message TTL shorter than the marker TTL is raised to it by the server: keep the marker TTL at most the hold's.
    return StreamConfig(name=subjects.STREAM_HOLDS, subjects=[f"{subjects.HOLDS_PREFIX}.>"],
                        storage=StorageType.FILE, num_replicas=replicas, allow_msg_ttl=True,
                        subject_delete_marker_ttl=float(max(1, min(60, hold_ttl_s))))


class HoldTimers:
    def __init__(self, nc: NATS, replicas: int, hold_ttl_s: int,
                 on_expired: Callable[[str, str], Awaitable[None]]) -> None:
        self.nc = nc
        self.js = nc.jetstream()
        self.replicas = replicas
        self.hold_ttl_s = hold_ttl_s
        self.on_expired = on_expired
        self._task: Optional[asyncio.Task[None]] = None
        self._sub = None
        self._running = False

    async def start(self) -> None:
        try:
            await self.js.stream_info(subjects.STREAM_HOLDS)
        except NotFoundError:
            try:
                await self.js.add_stream(holds_stream(self.replicas, self.hold_ttl_s))
            except Exception as e:  # created concurrently by another instance
                log.debug("add_stream %s: %r", subjects.STREAM_HOLDS, e)
        self._sub = await self.js.pull_subscribe(
            f"{subjects.HOLDS_PREFIX}.>", durable="vault-holds", stream=subjects.STREAM_HOLDS,
            config=ConsumerConfig(durable_name="vault-holds", ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0))
        self._running = True
        self._task = asyncio.create_task(self._consume())

    async def arm(self, agent_id: str, rid: str, ttl_s: float) -> None:
        """Start the hold's timer. Fire-and-forget: losing it only leaves the hold to the periodic sweep."""
        if not subjects.TOKEN_RE.match(rid):
            return  # not a subject token: the sweep handles it
        try:
            await self.nc.publish(subjects.holds(agent_id, rid), b"",
                                  headers={"Nats-TTL": f"{max(1, int(ttl_s + 0.999))}s"})
        except Exception:
            log.debug("could not arm the timer of %s", rid)

    async def _consume(self) -> None:
        assert self._sub is not None
        while self._running:
            try:
                msgs = await self._sub.fetch(batch=64, timeout=1.0)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            except Exception as e:
                log.debug("hold timers: %r", e)
                await asyncio.sleep(0.5)
                continue
            for msg in msgs:
                if (msg.headers or {}).get(MARKER_REASON):
                    _, _, agent_id, rid = msg.subject.split(".", 3)
                    try:
                        await self.on_expired(agent_id, rid)
                    except Exception:
                        log.exception("expiry of %s failed; the sweep will retry", rid)
                await msg.ack()

    async def stop(self) -> None:
        self._running = False
        if self._task is not None:
            await asyncio.wait([self._task], timeout=2.0)
            await cancel_and_wait(self._task)
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass
