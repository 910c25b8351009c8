"""The actor contract every arbstr actor runs under, and the host that serves one.

An actor is a plain object with a name, a version, a description and a list of endpoints (``endpoints.py``). The
host does everything else once: the ``nats.micro`` service (discovery, INFO/STATS that validate), queue groups so
N instances share the load, bounded concurrent handling (micro runs one handler at a time otherwise), errors
mapped to ``Nats-Service-Error-Code`` with an OpenAI error body, reconnect forever and a drain on shutdown that
lets in-flight requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Optional, Protocol

from nats.aio.client import Client as NATS
from nats.micro import add_service
from nats.micro.request import Request
from nats.micro.service import EndpointConfig, Service

from .connection import connect, flush_in_order
from .endpoints import QUEUE_GROUP, Endpoint, answer
from .tasks import until_stopped

log = logging.getLogger("arbstr.runtime")


class Actor(Protocol):
    service_name: str
    version: str
    description: str

    def endpoints(self) -> list[Endpoint]: ...

    async def start(self, nc: NATS) -> None: ...

    async def stop(self) -> None: ...


@dataclass
class _Counters:
    handled: int = 0
    errors: int = 0
    in_flight: int = 0
    by_status: dict[str, int] = field(default_factory=dict)


class ActorHost:
    """Runs one actor on one NATS connection."""

    def __init__(self, actor: Actor, nc: NATS, max_concurrency: int = 256) -> None:
        self.actor = actor
        # The actor's own copy of the admin token's hash (``admin_hash`` attribute), for endpoints marked admin.
        self._admin_hash: Optional[str] = getattr(actor, "admin_hash", None)
        self.nc = nc
        self._sem = asyncio.Semaphore(max_concurrency)
        self._tasks: set[asyncio.Task[None]] = set()
        self._service: Optional[Service] = None
        self._counters: dict[str, _Counters] = {}

    async def start(self) -> None:
        await self.actor.start(self.nc)
        self._service = await add_service(
            self.nc,
            name=self.actor.service_name,
            version=self.actor.version,
            description=self.actor.description,
            stats_handler=self._stats,
        )
        for ep in self.actor.endpoints():
            self._counters[ep.subject] = _Counters()
            await self._service.add_endpoint(
                EndpointConfig(name=ep.name, subject=ep.subject, handler=self._dispatcher(ep), queue_group=QUEUE_GROUP)
            )
        await flush_in_order(self.nc)  # answering from the moment start returns, not a round trip later

    def _stats(self, endpoint_stats: Any) -> dict[str, Any]:
        c = self._counters.get(endpoint_stats.subject)
        if c is None:
            return {}
        data: dict[str, Any] = {"handled": c.handled, "errors": c.errors, "in_flight": c.in_flight,
                                "by_status": dict(c.by_status)}
        extra = getattr(self.actor, "stats", None)  # instance-wide figures an actor may add (same on each endpoint)
        if callable(extra):
            data["instance"] = extra()
        return data

    def _dispatcher(self, ep: Endpoint) -> Callable[[Request], Awaitable[None]]:
        counters = self._counters[ep.subject]

        async def dispatch(req: Request) -> None:
            # Acquire here, in micro's per-endpoint callback: when all slots are busy the subscription
            # stops being read, which is the back-pressure we want.
            await self._sem.acquire()
            counters.in_flight += 1
            task = asyncio.create_task(self._handle(ep, req, counters))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        return dispatch

    async def _handle(self, ep: Endpoint, req: Request, counters: _Counters) -> None:
        started = time.perf_counter()
        try:
            data, headers, status = await answer(ep, req.data, dict(req.headers or {}), self._admin_hash,
                                                 self.actor.service_name)
            if status == "200":
                counters.handled += 1
            else:
                counters.errors += 1
            counters.by_status[status] = counters.by_status.get(status, 0) + 1
            try:
                await req.respond(data, headers=headers)
            except Exception:
                log.warning("could not send a reply on %s", req.subject)
        finally:
            counters.in_flight -= 1
            self._sem.release()
            log.debug("%s handled in %.3f ms", ep.subject, (time.perf_counter() - started) * 1000)

    async def stop(self, grace_s: float = 10.0) -> None:
        """Stop taking requests, let in-flight ones answer, then drain the connection."""
        if self._service is not None:
            await self._service.stop()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace_s)
        await self.actor.stop()


async def run_forever(actor: Actor, nats_url: str, max_concurrency: int = 256, creds: Optional[str] = None) -> None:
    """Entry point of ``arbstr run COMPONENT``: serve until SIGTERM/SIGINT, then drain."""
    nc = await connect(nats_url, name=actor.service_name, creds=creds)
    host = ActorHost(actor, nc, max_concurrency=max_concurrency)
    await host.start()
    log.info("%s %s serving on %s", actor.service_name, actor.version, nats_url)
    await until_stopped()
    log.info("%s draining", actor.service_name)
    await host.stop()
    await nc.drain()
