"""A loopback nats-server cluster with JetStream on every node, for tests and local scale-out trials.

Each node is a :class:`NatsServer` with its own store, a unique server name and fixed cluster ports that
route to every node (a node ignores the route to itself). JetStream needs the whole cluster to agree on a
meta leader before it can create replicated streams, so :meth:`NatsCluster.start` waits for that too.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Optional

from .bus_auth import BusCredentials
from .demo import free_port
from .natsserver import NatsServer


class NatsCluster:
    """``credentials``: every node admits the bus identities and the routes between nodes authenticate with the
    route secret; ``test_user`` maps connections without credentials to an unrestricted user (tests only)."""

    def __init__(self, store_dir: str | Path, size: int = 3, *, name: str = "arbstr",
                 host: str = "127.0.0.1", sync_always: bool = True,
                 credentials: Optional[BusCredentials] = None, test_user: Optional[str] = None) -> None:
        self.store_dir = Path(store_dir)
        self.name = name
        self.host = host
        self.credentials = credentials
        cluster_ports = [free_port(host) for _ in range(size)]
        self.nodes: list[NatsServer] = [
            NatsServer(self.store_dir / f"n{i + 1}", host=host, port=free_port(host), name=f"{name}-n{i + 1}",
                       sync_always=sync_always, log_file=self.store_dir / f"n{i + 1}.log",
                       authorization=credentials.authorization_conf(test_user) if credentials else None,
                       cluster=self._cluster_conf(cport, cluster_ports))
            for i, cport in enumerate(cluster_ports)
        ]

    def _cluster_conf(self, port: int, ports: list[int]) -> str:
        def route(p: int) -> str:
            where = f"{self.host}:{p}"
            return self.credentials.route_url(where) if self.credentials else f"nats://{where}"

        routes = ", ".join(json.dumps(route(p)) for p in ports)
        auth = self.credentials.cluster_authorization_conf() if self.credentials else ""
        return (f"cluster {{\n  name: {json.dumps(self.name)}\n  listen: {json.dumps(f'{self.host}:{port}')}\n"
                f"{auth}  routes: [{routes}]\n}}\n")

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node as one comma-separated seed list (what ``--nats`` accepts)."""
        return ",".join(self.urls)

    def connect_options(self, identity: str) -> dict[str, object]:
        """nats.connect keywords for ``identity`` on this cluster (none when the bus is open)."""
        if self.credentials is None:
            return {}
        from schemas.bus_permissions import inbox_prefix

        return {"nkeys_seed_str": self.credentials.seed(identity), "inbox_prefix": inbox_prefix(identity)}

    def node(self, server_name: str) -> NatsServer:
        for n in self.nodes:
            if n.name == server_name:
                return n
        raise KeyError(f"no node named {server_name!r} in cluster {self.name!r}")

    def start(self, timeout_s: float = 30.0) -> "NatsCluster":
        self.store_dir.mkdir(parents=True, exist_ok=True)
        for n in self.nodes:
            n.start()
        try:
            asyncio.run(self.wait_jetstream(timeout_s))
        except BaseException:
            self.stop(kill=True)
            raise
        return self

    async def wait_jetstream(self, timeout_s: float = 30.0) -> None:
        """Until every live node answers JetStream requests (the meta leader is elected and known to it)."""
        import nats

        deadline = time.monotonic() + timeout_s
        for n in self.nodes:
            if n.proc is None or n.proc.poll() is not None:
                continue
            nc = await nats.connect(n.url, allow_reconnect=False, **self.connect_options("operator"))
            try:
                js = nc.jetstream()
                while True:
                    try:
                        await js.account_info()
                        break
                    except Exception:
                        if time.monotonic() > deadline:
                            raise TimeoutError(f"JetStream on {n.name} not ready within {timeout_s} s") from None
                        await asyncio.sleep(0.1)
            finally:
                await nc.close()

    def kill(self, server_name: str) -> NatsServer:
        """SIGKILL one node (a crash: no goodbye to its peers); its store stays for a restart."""
        node = self.node(server_name)
        node.stop(kill=True)
        return node

    def stop(self, kill: bool = False) -> None:
        for n in self.nodes:
            n.stop(kill=kill)

    def __enter__(self) -> "NatsCluster":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def alive(self) -> list[NatsServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def restart(self, server_name: str, timeout_s: Optional[float] = None) -> None:
        """Bring a killed node back on its ports and store."""
        self.node(server_name).start(**({"timeout_s": timeout_s} if timeout_s else {}))
