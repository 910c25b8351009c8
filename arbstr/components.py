"""Runs one component in this process (``arbstr run COMPONENT``)."""

from __future__ import annotations

import asyncio
import importlib
import os
from typing import Callable, Optional

from schemas.config import Config

# component -> (module, actor class); the gateway is the one component that is not an actor.
ACTORS: dict[str, tuple[str, str]] = {
    "router": ("actors.router.actor", "RouterActor"),
    "pricing": ("actors.pricing.actor", "PricingActor"),
    "breaker": ("actors.breaker.actor", "BreakerActor"),
    "vault": ("actors.vault.actor", "VaultActor"),
}
COMPONENTS = ("gateway", *ACTORS)


def bus_credential(flag: Optional[str], config: Config) -> Optional[str]:
    """The credential file a component connects with: --creds, else $ARBSTR_NATS_CREDS, else [nats] creds."""
    from actors.runtime.connection import ENV_CREDS

    return flag or os.environ.get(ENV_CREDS) or config.nats.creds or None


async def run_component(name: str, config: Config, nats_url: Optional[str] = None,
                        ready: Optional[Callable[[str], object]] = None, creds: Optional[str] = None) -> None:
    url = nats_url or config.nats.url
    creds = bus_credential(creds, config)
    if name == "gateway":
        from gateway.app import serve

        await serve(config, url, ready=ready, creds=creds)
        return
    if name not in ACTORS:
        raise ValueError(f"unknown component {name!r}; one of: {', '.join(COMPONENTS)}")
    from actors.runtime.host import run_forever

    module, cls = ACTORS[name]
    actor = getattr(importlib.import_module(module), cls)(config)
    await run_forever(actor, url, config.nats.max_concurrency, creds=creds)


def install_uvloop() -> None:
    """uvloop takes roughly 30 % off each NATS hop; the stdlib loop is the fallback."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
