"""Connecting to the bus: a component's own credential, the inbox prefix its permissions allow, reconnect forever."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import Any, Optional

import nats
from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription

from schemas.bus_permissions import IDENTITIES, identity_of_service, inbox_prefix

log = logging.getLogger("arbstr.runtime")

# Where a process finds its bus credential when no --creds flag names one (a seed file or a JWT .creds file).
ENV_CREDS = "ARBSTR_NATS_CREDS"


def read_seed(path: Path) -> str:
    """The NKey user seed in a seed file (comments and blank lines ignored)."""
    for line in path.read_text().splitlines():
        if line.strip().startswith("SU"):
            return line.strip()
    raise ValueError(f"{path} holds no NKey user seed")


def credential_options(identity: str, creds: Optional[str] = None) -> dict[str, Any]:
    """nats.connect keywords: the credential (``creds``, else $ARBSTR_NATS_CREDS; none: an open bus) and the inbox
    prefix its permissions allow replies on — of the identity a seed file ``<identity>.nk`` is named for, else
    ``identity``."""
    path = creds or os.environ.get(ENV_CREDS) or None
    options: dict[str, Any] = {}
    if path:
        file = Path(path)
        if "BEGIN NATS USER JWT" in file.read_text():
            options["user_credentials"] = str(file)  # decentralised auth: JWT and seed in one .creds file
        else:
            options["nkeys_seed_str"] = read_seed(file)
        if file.suffix == ".nk" and file.stem in IDENTITIES:
            identity = file.stem
    options["inbox_prefix"] = inbox_prefix(identity)
    return options


async def connect(url: str, name: str, identity: Optional[str] = None, creds: Optional[str] = None,
                  **kwargs: Any) -> NATS:
    """Connect as ``identity`` (default: the one ``name`` implies) with reconnect-forever semantics; callbacks
    must be coroutines for nats-py."""

    async def error_cb(e: Exception) -> None:
        log.warning("nats error (%s): %r", name, e)

    async def disconnected_cb() -> None:
        log.warning("nats disconnected (%s)", name)

    async def reconnected_cb() -> None:
        log.info("nats reconnected (%s)", name)

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=error_cb,
        disconnected_cb=disconnected_cb,
        reconnected_cb=reconnected_cb,
        **credential_options(identity or identity_of_service(name), creds),
        **kwargs,
    )


async def flush_in_order(nc: NATS, timeout_s: float = 10.0) -> None:
    """Return once the server has processed everything sent so far: subscriptions made a moment ago included.

    nats-py (2.16) writes ``flush()``'s PING straight to the socket, ahead of the SUBs still queued for its flusher
    task, so its PONG can come back before the server has a subscription (seen: a service that had just started
    answered a request with "no responders"). By the time the first PONG is back the queue has been written out,
    so the second PING follows every SUB. This is about the server the connection is on: in a cluster, interest
    reaches the other nodes a moment later. ``timeout_s`` bounds each round trip."""
    await nc.flush(timeout_s)  # type: ignore[arg-type]
    await nc.flush(timeout_s)  # type: ignore[arg-type]


async def drain_in_order(nc: NATS, sub: Subscription, timeout_s: float = 2.0) -> None:
    """Stop a subscription without dropping a message the server already sent it: each one reaches the callback,
    then the subscription goes.

    nats-py's own ``drain`` has ``flush``'s gap: its PING overtakes the queued UNSUB, so a message routed between
    the two could arrive after the subscription was removed, and be dropped (its sender then waits out a timeout).
    Here the UNSUB goes first and is pinged past in order. Bounded: when the connection is lost or stuck, the
    subscription is still removed locally, so a reconnect does not subscribe it again."""
    removed = False
    try:
        await nc._send_unsubscribe(sub._id)  # nats-py offers no public way to send it ahead of the drain's ping
        await flush_in_order(nc, timeout_s)
        await asyncio.wait_for(sub.drain(), timeout_s)
        removed = True
    finally:
        if not removed:
            sub._stop_processing()
            nc._remove_sub(sub._id)
