"""The router actor: keeps prices and breaker states in memory from the KV buckets it watches and answers
``arbstr.v1.router.route`` from that memory alone (no bus hop per request)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, Optional

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from pydantic import BaseModel, ValidationError

from actors.runtime.bucket_follower import BucketFollower, is_delete
from actors.runtime.endpoints import Endpoint, serve
from actors.runtime.jetstream import open_bucket
from actors.runtime.tasks import wait_condition
from schemas import exchanges, subjects
from schemas.breaker import BreakerState
from schemas.config import Config
from schemas.errors import ArbstrError
from schemas.pricing import ProviderPrices
from schemas.router import RouteReply, RouteRequest

from .rank import route

log = logging.getLogger("arbstr.router")

VERSION = "0.1.0"


class RouterActor:
    service_name = subjects.SERVICE_ROUTER
    version = VERSION
    description = "arbstr router: picks and ranks the providers for one request"

    def __init__(self, config: Config, initial_load_timeout_s: float = 5.0) -> None:
        self.config = config
        self.initial_load_timeout_s = initial_load_timeout_s
        self.prices: dict[str, ProviderPrices] = {}
        self.breakers: dict[str, BreakerState] = {}
        self.revisions: dict[str, int] = {subjects.KV_PRICES: 0, subjects.KV_BREAKERS: 0}
        self._price_list: list[ProviderPrices] = []  # the routable entries: the only ones a request looks at
        self._unroutable: list[ProviderPrices] = []  # read only to explain a failure
        self._changed = asyncio.Condition()
        self.followers: list[BucketFollower] = []

    def endpoints(self) -> list[Endpoint]:
        return [serve(exchanges.ROUTE, self._route)]

    async def start(self, nc: NATS) -> None:
        replicas = self.config.nats.kv_replicas
        for bucket, model, target in (
            (subjects.KV_PRICES, ProviderPrices, self.prices),
            (subjects.KV_BREAKERS, BreakerState, self.breakers),
        ):
            follower = BucketFollower(
                lambda b=bucket: open_bucket(nc, b, replicas=replicas),
                lambda entry, live, b=bucket, m=model, t=target: self._apply(b, entry, m, t),
                target.keys, lambda key, b=bucket, t=target: self._forget(b, key, t),
                f"router-{bucket}", retry_s=0.5)
            follower.start()
            self.followers.append(follower)
        # Answer the first request with the current table, not an empty one; but a slow bucket must not keep
        # the service from starting (requests then get 503 prices_unavailable until values arrive).
        if not await self.wait_ready(self.initial_load_timeout_s):
            log.warning("router: initial KV values not loaded within %.1f s", self.initial_load_timeout_s)

    async def stop(self) -> None:
        for follower in self.followers:
            await follower.stop()
        self.followers.clear()

    def _forget(self, bucket: str, key: str, target: dict[str, Any]) -> None:
        target.pop(key, None)
        if bucket == subjects.KV_PRICES:
            self._split_prices()

    def _split_prices(self) -> None:
        # Routing reads this list on every request; rebuilding it on change keeps that path allocation-free, and
        # entries that may not be chosen (no credential, stale quotes, ...) never cost a request anything.
        ordered = sorted(self.prices.values(), key=lambda p: p.provider)
        self._price_list = [p for p in ordered if p.routable]
        self._unroutable = [p for p in ordered if not p.routable]

    async def _apply(self, bucket: str, entry: KeyValue.Entry, model: type[BaseModel],
                     target: dict[str, Any]) -> None:
        if is_delete(entry):
            target.pop(entry.key, None)
        else:
            try:
                target[entry.key] = model.model_validate_json(entry.value or b"")
            except ValidationError as e:
                log.warning("router: ignoring bad %s entry %r: %s", bucket, entry.key, e)
        if bucket == subjects.KV_PRICES:
            self._split_prices()
        self.revisions[bucket] = max(self.revisions[bucket], entry.revision or 0)
        async with self._changed:
            self._changed.notify_all()

    async def wait_ready(self, timeout: float) -> bool:
        """True once the initial values of both buckets are in memory."""
        try:
            await asyncio.wait_for(asyncio.gather(*(f.loaded.wait() for f in self.followers)), timeout)
            return True
        except asyncio.TimeoutError:
            return False

    async def wait_for(self, predicate: Callable[["RouterActor"], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds after a KV update (e.g. a revision or a provider seen)."""
        return await wait_condition(self._changed, lambda: predicate(self), timeout)

    async def wait_revision(self, bucket: str, revision: int, timeout: float) -> bool:
        return await self.wait_for(lambda r: r.revisions.get(bucket, 0) >= revision, timeout)

    def route(self, req: RouteRequest, now_ms: Optional[int] = None) -> RouteReply:
        if not self._price_list and not self._unroutable:
            raise ArbstrError(503, "the router has no prices yet: is the pricing actor running?",
                              code="prices_unavailable")
        now = int(time.time() * 1000) if now_ms is None else now_ms
        return route(req, self._price_list, self.breakers, self.config, now, self._unroutable)

    async def _route(self, req: RouteRequest, headers: dict[str, str]) -> RouteReply:
        return self.route(req)
