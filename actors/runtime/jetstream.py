"""JetStream at start-up and under failover: streams and KV buckets made when missing, leaders waited for,
transient bus errors retried within a budget (or answered as a 503 with ``retry-after``)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Optional, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import (ConnectionClosedError, ConnectionDrainingError, ConnectionReconnectingError,
                         NoRespondersError, OutboundBufferLimitError, StaleConnectionError)
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import StreamConfig
from nats.js.errors import BucketNotFoundError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue

from schemas.errors import ArbstrError

log = logging.getLogger("arbstr.runtime")

T = TypeVar("T")
# How long an actor's start may wait for JetStream (leaders being elected on a fresh or degraded cluster).
STARTUP_BUDGET_S = 60.0
# An ordered consumer whose server went away is re-made after two missed heartbeats: nats-py's default (5 s)
# leaves a follower blind for 10 s after a node dies.
HEARTBEAT_S = 1.0


class NotYetVisible(NatsError):
    """A stream or bucket another instance is creating this moment: a cluster answers "not found" until its
    assignment has spread, so the same "try again shortly" as an election."""


# What a JetStream election, a lost server or a reconnect looks like to a handler: over in seconds.
TRANSIENT = (NotYetVisible, NatsTimeoutError, NoRespondersError, NoStreamResponseError, ServiceUnavailableError,
             ConnectionClosedError, ConnectionDrainingError, ConnectionReconnectingError,
             OutboundBufferLimitError, StaleConnectionError)


async def open_bucket(nc: NATS, bucket: str, history: int = 1, replicas: int = 1, create: bool = True) -> KeyValue:
    """Open a KV bucket, creating it when missing, so actors may start in any order.

    ``replicas`` matters on a cluster only: an R1 bucket dies with the one server that holds it. ``create=False``
    for a bucket another part owns (and only it may create): BucketNotFoundError until it exists.
    """
    js = nc.jetstream()

    async def open_or_create() -> KeyValue:
        try:
            return await js.key_value(bucket)
        except BucketNotFoundError:
            if not create:
                raise
        try:
            return await js.create_key_value(bucket=bucket, history=history, replicas=replicas)
        except NatsError as e:
            if isinstance(e, TRANSIENT):
                raise
            # Someone created it meanwhile (perhaps with other settings): theirs is as good as ours.
            try:
                return await js.key_value(bucket)
            except BucketNotFoundError:
                raise NotYetVisible(f"bucket {bucket}: {e}") from e  # theirs is still being made, or ours failed

    kv = await retry_transient(open_or_create, f"bucket {bucket}")
    await wait_stream_leader(nc, f"KV_{bucket}")
    return kv


async def ensure_stream(nc: NATS, config: StreamConfig, timeout_s: float = STARTUP_BUDGET_S) -> None:
    """Create a stream when missing (another instance may be doing the same) and wait until it takes writes."""
    js = nc.jetstream()
    assert config.name is not None

    async def create() -> None:
        try:
            await js.stream_info(config.name)  # type: ignore[arg-type]
        except NotFoundError:
            try:
                await js.add_stream(config)
            except NatsError as e:
                if isinstance(e, TRANSIENT):
                    raise
                log.debug("add_stream %s: %s", config.name, e)  # created concurrently by another instance
                try:
                    await js.stream_info(config.name)  # type: ignore[arg-type]
                except NotFoundError:
                    raise NotYetVisible(f"stream {config.name}: {e}") from e  # still being made, or ours failed

    await retry_transient(create, f"stream {config.name}", timeout_s)
    await wait_stream_leader(nc, config.name, timeout_s)


async def wait_stream_leader(nc: NATS, stream: str, timeout_s: float = STARTUP_BUDGET_S) -> None:
    """A replicated stream just created (or whose leader just died) refuses writes until it has a leader."""
    js = nc.jetstream(timeout=1.0)

    async def leader() -> None:
        try:
            info = await js.stream_info(stream)
        except NotFoundError as e:  # made a moment ago (by us or another instance): not visible everywhere yet
            raise NotYetVisible(f"stream {stream}") from e
        if info.cluster is not None and not info.cluster.leader:
            raise NoRespondersError  # no leader yet: the same "try again shortly"

    await retry_transient(leader, f"stream {stream} leader", timeout_s)


async def retry_transient(step: Callable[[], Awaitable[T]], what: str, timeout_s: float = STARTUP_BUDGET_S) -> T:
    """Run ``step`` until it gets past transient bus errors (a fresh cluster electing leaders), within a budget."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await step()
        except TRANSIENT as e:
            if time.monotonic() > deadline:
                raise
            log.info("%s not ready yet (%r); retrying", what, e)
            await asyncio.sleep(0.2)


def transient_bus_error(exc: BaseException) -> Optional[ArbstrError]:
    """A 503 with ``retry-after`` for a bus failure a handler met (the caller may try again), else None."""
    if not isinstance(exc, TRANSIENT):
        return None
    return ArbstrError(503, f"the message bus or JetStream is unavailable for now ({type(exc).__name__})",
                       code="bus_unavailable", headers={"retry-after": "1"})
