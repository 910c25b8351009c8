"""Runs one component in this process (``arbstr run COMPONENT``)."""

from __future__ import annotations

import asyncio
import gc
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

        freeze_startup_objects()
        await serve(config, url, ready=ready, creds=creds)
        return
    if name not in ACTORS:
        raise ValueError(f"unknown component {name!r}; one of: {', '.join(COMPONENTS)}")
    from actors.runtime.host import run_forever

    module, cls = ACTORS[name]
    actor = getattr(importlib.import_module(module), cls)(config)
    freeze_startup_objects()
    await run_forever(actor, url, config.nats.max_concurrency, creds=creds)


# Collect young objects every 20,000 net allocations instead of CPython's 700, and older generations more rarely.
# Every message decoded and every ledger event makes container objects, and a vault holds hundreds of thousands of
# long-lived ones (its partitions' state): with the defaults, the collector rescanned them so often that it cost
# the vault about 30 % of its CPU under load (bench.vault --mode grants: 0.252 -> 0.181 ms per pair). Memory is
# freed by reference counting as before; only cyclic garbage waits a little longer.
GC_THRESHOLDS = (20_000, 20, 20)


def tune_gc() -> None:
    """Fewer collector passes (``freeze_startup_objects`` then takes what start-up loaded out of every scan)."""
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_startup_objects() -> None:
    gc.collect()
    gc.freeze()


def install_uvloop() -> None:
    """uvloop takes roughly 30 % off each NATS hop; the stdlib loop is the fallback."""
    try:
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    except ImportError:  # pragma: no cover
        pass
