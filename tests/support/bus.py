"""The authenticated bus in tests: servers the fixtures start admit every identity with its permissions, and the
harness connects each component as itself — so a missing or excess permission fails tests, not production.

Test code itself may connect without credentials: the fixtures' servers map that to an unrestricted test user
(never in `arbstr up` or deploy/, whose servers refuse anonymous connections).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import nats
from nats.aio.client import Client as NATS

from arbstr.bus_auth import BusCredentials
from arbstr.natsserver import NatsServer
from schemas.bus_permissions import identity_of_service, inbox_prefix

TEST_USER = "arbstr-tests"
_CREDS: dict[str, BusCredentials] = {}  # by "host:port" of every server the fixtures started
_LOGS: dict[str, Path] = {}


def authenticated_server(store: Path, **kwargs: Any) -> NatsServer:
    """A nats-server with the bus's identities (made in ``store/bus``) plus the test user."""
    creds = BusCredentials.ensure(Path(store) / "bus")
    server = NatsServer(store, authorization=creds.authorization_conf(TEST_USER), **kwargs)
    server.credentials = creds  # type: ignore[attr-defined]
    return server


def register(url: str, creds: BusCredentials, log: Optional[Path] = None) -> None:
    for one in url.split(","):
        key = _key(one)
        _CREDS[key] = creds
        if log is not None:
            _LOGS[key] = log


def _key(url: str) -> str:
    return url.strip().split("://", 1)[-1].rsplit("@", 1)[-1]


def options(url: str, identity: str) -> dict[str, Any]:
    """nats.connect keywords to connect to ``url`` as ``identity`` (none for a server without credentials)."""
    creds = _CREDS.get(_key(url.split(",")[0]))
    if creds is None:
        return {}
    return {"nkeys_seed_str": creds.seed(identity), "inbox_prefix": inbox_prefix(identity)}


async def connect_as(url: str, identity: str, **kwargs: Any) -> NATS:
    servers = [u.strip() for u in url.split(",") if u.strip()]
    return await nats.connect(servers=servers, **options(url, identity), **kwargs)


async def connect_actor(url: str, actor: Any, **kwargs: Any) -> NATS:
    return await connect_as(url, identity_of_service(actor.service_name), **kwargs)


def creds_for(url: str) -> Optional[BusCredentials]:
    return _CREDS.get(_key(url.split(",")[0]))


def log_sizes() -> dict[str, int]:
    return {k: p.stat().st_size if p.exists() else 0 for k, p in _LOGS.items()}


def violations_since(sizes: dict[str, int]) -> list[str]:
    """Permission violations the servers logged since ``sizes`` was taken."""
    found: list[str] = []
    for key, path in list(_LOGS.items()):
        if not path.exists():
            continue
        with open(path, "rb") as f:
            f.seek(sizes.get(key, 0))
            for line in f.read().decode("utf-8", "replace").splitlines():
                if "Violation" in line:
                    found.append(_name_identity(line, _CREDS.get(key)))
    return found


def _name_identity(line: str, creds: Optional[BusCredentials]) -> str:
    if creds is not None:
        from schemas.bus_permissions import IDENTITIES

        for identity in IDENTITIES:
            key = creds.public_key(identity)
            if key in line:
                return line.replace(key, f"<{identity}>")
    return line
