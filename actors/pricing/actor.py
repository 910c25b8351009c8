"""The pricing actor: publishes the configured price table to the ``arbstr_prices`` KV bucket and answers
quotes. Routers read prices from that bucket, never from this actor, so it is off the request path."""

from __future__ import annotations

import logging
import time
from typing import Optional

from nats.aio.client import Client as NATS
from nats.js.errors import NoKeysError
from nats.js.kv import KeyValue

from actors.runtime import Endpoint, open_bucket
from schemas import subjects
from schemas.config import Config
from schemas.pricing import PriceTable, ProviderPrices, QuoteReply, QuoteRequest, TableRequest

from .table import prices_from_config, quote

log = logging.getLogger("arbstr.pricing")

VERSION = "0.1.0"


class PricingActor:
    service_name = subjects.SERVICE_PRICING
    version = VERSION
    description = "arbstr price table: publishes provider prices to KV and answers cost quotes"

    def __init__(self, config: Config) -> None:
        self.config = config
        self._prices: list[ProviderPrices] = prices_from_config(config, int(time.time() * 1000))
        self._kv: Optional[KeyValue] = None

    def endpoints(self) -> list[Endpoint]:
        return [
            Endpoint("quote", subjects.PRICING_QUOTE, QuoteRequest, self._quote),
            Endpoint("table", subjects.PRICING_TABLE, TableRequest, self._table),
        ]

    async def start(self, nc: NATS) -> None:
        self._prices = prices_from_config(self.config, int(time.time() * 1000))
        self._kv = await open_bucket(nc, subjects.KV_PRICES, replicas=self.config.nats.kv_replicas)
        await self.publish(self._kv)

    async def publish(self, kv: KeyValue) -> None:
        """Put every configured provider and delete the keys of providers no longer configured."""
        for p in self._prices:
            await kv.put(p.provider, p.model_dump_json().encode())
        configured = {p.provider for p in self._prices}
        try:
            existing = await kv.keys()
        except NoKeysError:
            existing = []
        for key in existing:
            if key not in configured:
                log.info("removing prices of provider %s: no longer configured", key)
                await kv.delete(key)

    async def stop(self) -> None:
        self._kv = None

    async def _quote(self, req: QuoteRequest, headers: dict[str, str]) -> QuoteReply:
        return QuoteReply(quotes=quote(self._prices, req))

    async def _table(self, req: TableRequest, headers: dict[str, str]) -> PriceTable:
        return PriceTable(providers=list(self._prices))
