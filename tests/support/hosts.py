"""Actors hosted on their own connections, as separate processes would be."""

from __future__ import annotations

from nats.aio.client import Client as NATS

from actors.runtime.host import Actor, ActorHost
from tests.support.bus import connect_actor


class Hosts:
    """Every actor a test starts; all stopped at teardown."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.running: list[tuple[ActorHost, NATS]] = []

    async def start(self, actor: Actor) -> ActorHost:
        nc = await connect_actor(self.url, actor)
        host = ActorHost(actor, nc)
        await host.start()
        self.running.append((host, nc))
        return host

    async def stop(self, host: ActorHost) -> None:
        for i, (h, nc) in enumerate(self.running):
            if h is host:
                await h.stop()
                await nc.drain()
                del self.running[i]
                return

    async def stop_all(self) -> None:
        for host, _ in list(reversed(self.running)):
            await self.stop(host)
