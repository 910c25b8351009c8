"""The pricing actor: keeps the live price table — configured providers, their own ``/models`` listings, quote
feeds and Routstr nodes announced on Nostr — in the ``arbstr_prices`` KV bucket, and answers quotes. Routers
read prices from that bucket, never from this actor, so it is off the request path.

Every poll updates plain state (``market.MarketState``); one ``refresh`` merges it (``merge.build_table``),
runs the price guard against what is published (``guard.guard``) and writes only the entries that changed.
The published entries are followed through a watch of the bucket, so a second pricing instance (or an admin's
confirm handled by it) is seen here too: the guard always compares against what is in force.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import replace
from typing import Awaitable, Callable, Optional

import aiohttp
from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from pydantic import ValidationError

from actors.runtime.bucket_follower import BucketFollower, is_delete
from actors.runtime.endpoints import Endpoint, serve
from actors.runtime.jetstream import open_bucket
from actors.runtime.netguard import private_reason, private_urls_allowed, public_connector
from actors.runtime.redirects import refuse_redirects
from actors.runtime.tasks import cancel_and_wait, wait_condition
from actors.runtime.tokens import admin_token_hash
from schemas import exchanges, subjects
from schemas.config import Config, FeedConfig, ProviderConfig
from schemas.errors import ArbstrError
from schemas.pricing import (ConfirmReply, ConfirmRequest, ModelRate, PriceTable, ProviderPrices, QuoteReply,
                             QuoteRequest, TableRequest)
from schemas.vault import provider_api_key

from .fetch import FetchError, fetch_feed, fetch_listing, get_json, info_mints
from .guard import confirm, guard
from .listing import Listing
from . import nostr, routstr
from .market import DiscoveryState, FeedState, MarketState, Node, node_name
from .merge import build_table, feed_label
from .table import quote

log = logging.getLogger("arbstr.pricing")

VERSION = "0.2.0"
TICK_S = 1.0  # quotes go stale and announcements expire with time alone: re-merge this often
INITIAL_LOAD_S = 5.0
KEYS_LOAD_S = 0.5


def now_ms() -> int:
    return int(time.time() * 1000)


def _same(a: ProviderPrices, b: ProviderPrices) -> bool:
    """Equal but for when they were written, and when each pricing instance read its config (two instances
    started at different times must not rewrite each other's unchanged entries forever)."""
    def plain(p: ProviderPrices) -> dict[str, object]:
        d = p.model_dump(exclude={"updated_at_ms"})
        d["sources"] = [{**s, "observed_at_ms": 0} if s["name"] == "config" else s for s in d["sources"]]
        return d
    return plain(a) == plain(b)


class PricingActor:
    service_name = subjects.SERVICE_PRICING
    version = VERSION
    description = "arbstr price table: publishes provider prices to KV and answers cost quotes"

    def __init__(self, config: Config) -> None:
        self.config = config
        self.admin_hash = admin_token_hash(config)  # confirm (admin) is checked against this
        self.market = config.market
        self.state = MarketState()
        self._config_at_ms = now_ms()
        self._keys: set[str] = set()  # providers with a key in arbstr_provider_keys (the key itself is not kept)
        self._published: dict[str, ProviderPrices] = {}
        self._revisions: dict[str, int] = {}  # our own latest write per key: older watch echoes are ignored
        self._prices: list[ProviderPrices] = build_table(config, self.state, frozenset(), self._config_at_ms,
                                                         self._config_at_ms)
        self._kv: Optional[KeyValue] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._public_session: Optional[aiohttp.ClientSession] = None
        self._followers: list[BucketFollower] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._lock = asyncio.Lock()
        self._changed = asyncio.Condition()
        self._discovered = [p for p in config.providers if p.discover]

    def endpoints(self) -> list[Endpoint]:
        return [
            serve(exchanges.QUOTE, self._quote),
            serve(exchanges.PRICE_TABLE, self._table),
            # A held price goes in force on the operator's say-so (an admin exchange): checked here, not only at
            # the gateway.
            serve(exchanges.CONFIRM_PRICES, self._confirm),
        ]

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self, nc: NATS) -> None:
        self._config_at_ms = now_ms()
        replicas = self.config.nats.kv_replicas
        self._kv = await open_bucket(nc, subjects.KV_PRICES, replicas=replicas)
        # Not a published entry of our own writing: its echo may still be on the way.
        self._followers = [BucketFollower(
            lambda: open_bucket(nc, subjects.KV_PRICES, replicas=replicas), self._on_price, self._published.keys,
            lambda key: None if key in self._revisions else self._published.pop(key, None), "pricing-prices")]
        if self.market.nostr is not None:
            self._followers.append(BucketFollower(
                lambda: open_bucket(nc, subjects.KV_PROVIDER_KEYS, replicas=replicas, create=False), self._on_key,
                lambda: self._keys, self._keys.discard, "pricing-provider-keys"))
        for follower in self._followers:
            follower.start()
        try:  # what is in force already: the guard compares against it, and unchanged entries are not rewritten
            await asyncio.wait_for(self._followers[0].loaded.wait(), INITIAL_LOAD_S)
        except asyncio.TimeoutError:
            log.warning("pricing: the published prices did not load within %.0f s", INITIAL_LOAD_S)
        # The vault makes the provider-keys bucket: before its first start there is none to load, so this wait is
        # short (keys that arrive later are followed like any change).
        try:
            await asyncio.wait_for(asyncio.gather(*(f.loaded.wait() for f in self._followers[1:])), KEYS_LOAD_S)
        except asyncio.TimeoutError:
            log.info("pricing: no provider keys yet")
        # Listings, feeds and relays: a redirect is never followed, even by a call that forgets to say so.
        self._session = aiohttp.ClientSession(trace_configs=[refuse_redirects()])
        # Announced nodes are read through a resolver that refuses private addresses (see netguard).
        self._public_session = aiohttp.ClientSession(connector=public_connector(), trace_configs=[refuse_redirects()])
        await self.refresh()
        for p in self._discovered:
            self._spawn(self._every(self.market.discovery_interval_s, lambda p=p: self._discover(p)),
                        f"discover-{p.name}")
        for feed in self.market.feeds:
            self._spawn(self._every(feed.interval_s, lambda f=feed: self._poll_feed(f)), f"feed-{feed_label(feed)}")
        if self.market.nostr is not None:
            self._spawn(self._every(self.market.nostr.interval_s, self._poll_nostr), "nostr")
        if self.market.feeds or self.market.nostr is not None:
            self._spawn(self._every(TICK_S, self.refresh), "tick")

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        for follower in self._followers:
            await follower.stop()
        self._followers.clear()
        for session in (self._session, self._public_session):
            if session is not None:
                await session.close()
        self._session = self._public_session = None
        self._kv = None

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        self._tasks.append(asyncio.ensure_future(coro))
        self._tasks[-1].set_name(f"pricing-{name}")

    async def _every(self, interval_s: float, fn: Callable[[], Awaitable[None]]) -> None:
        while True:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:  # one bad poll must not end the polling
                log.exception("pricing: a market poll failed")
            await asyncio.sleep(interval_s)

    # --- KV watches ------------------------------------------------------------------------------------
    def _on_price(self, entry: KeyValue.Entry, live: bool) -> None:
        if (entry.revision or 0) <= self._revisions.get(entry.key, 0):
            return  # the echo of a write of ours that a later one has replaced
        if is_delete(entry):
            self._published.pop(entry.key, None)
            return
        try:
            self._published[entry.key] = ProviderPrices.model_validate_json(entry.value or b"")
        except ValidationError:
            log.warning("pricing: ignoring an unreadable published entry %r", entry.key)

    async def _on_key(self, entry: KeyValue.Entry, live: bool) -> None:
        self._keys.discard(entry.key)
        if not is_delete(entry) and provider_api_key(entry.value) is not None:
            self._keys.add(entry.key)
        if live:
            await self.refresh()  # a node's key arrived or went: its routability changed

    # --- the merge -----------------------------------------------------------------------------------------
    def settled(self) -> bool:
        """Every market source has been tried once: before that, absent entries are not yet known absent."""
        s = self.state
        return (all(s.discovery.get(p.name, DiscoveryState()).attempts > 0 for p in self._discovered)
                and all(s.feeds.get(feed_label(f)) is not None for f in self.market.feeds)
                and (self.market.nostr is None or s.nostr_attempts > 0))

    async def refresh(self) -> None:
        """Merge, guard, and write what changed; after the first round of polls, delete what is gone."""
        async with self._lock:
            now = now_ms()
            settled = self.settled()
            table: list[ProviderPrices] = []
            keyed = frozenset(self._keys)
            for proposed in build_table(self.config, self.state, keyed, now, self._config_at_ms):
                before = self._published.get(proposed.provider)
                entry = guard(before, proposed, self.market.max_price_jump, now)
                if before is not None and (_same(before, entry) or not settled):
                    # Unchanged; or written by an earlier run and its market sources not read yet this run:
                    # overwriting it with config alone would only flap (and reset what the guard compares to).
                    table.append(before)
                    continue
                if await self._put(entry):
                    if entry.held and (before is None or set(entry.held) != set(before.held)):
                        log.warning("pricing: holding prices of %s: %s", entry.provider, ", ".join(sorted(entry.held)))
                table.append(entry)
            if settled:
                names = {e.provider for e in table}
                for key in [k for k in self._published if k not in names]:
                    await self._delete(key)
            self._prices = table
        async with self._changed:
            self._changed.notify_all()

    async def _put(self, entry: ProviderPrices) -> bool:
        if self._kv is None:
            return False
        try:
            revision = await self._kv.put(entry.provider, entry.model_dump_json().encode())
        except Exception as e:  # the bus is down: the next refresh writes it
            log.warning("pricing: could not publish %s (%s)", entry.provider, type(e).__name__)
            return False
        self._revisions[entry.provider] = revision
        self._published[entry.provider] = entry
        return True

    async def _delete(self, key: str) -> None:
        assert self._kv is not None
        try:
            await self._kv.delete(key)
        except Exception as e:
            log.warning("pricing: could not remove %s (%s)", key, type(e).__name__)
            return
        log.info("pricing: removed %s: no source lists it any more", key)
        self._published.pop(key, None)

    async def wait_for(self, predicate: Callable[["PricingActor"], bool], timeout: float) -> bool:
        """Wait until ``predicate(self)`` holds after a refresh (tests, and callers that need a poll's effect)."""
        return await wait_condition(self._changed, lambda: predicate(self), timeout)

    def entry(self, provider: str) -> Optional[ProviderPrices]:
        return next((p for p in self._prices if p.provider == provider), None)

    # --- polls -----------------------------------------------------------------------------------------------
    async def _discover(self, p: ProviderConfig) -> None:
        assert self._session is not None
        d = self.state.discovery.get(p.name, DiscoveryState())
        try:
            listing = await fetch_listing(self._session, p.url, timeout_s=self.market.discovery_timeout_s,
                                          api_key=p.api_key.get_secret_value() if p.api_key else None,
                                          sats_per_usd=self.market.sats_per_usd)
            d = d.succeeded(listing, now_ms())
        except FetchError as e:
            log.warning("pricing: discovery of %s failed: %s", p.name, e)
            d = d.failed(str(e), now_ms())
        self.state.discovery[p.name] = d
        await self.refresh()

    async def _poll_feed(self, feed: FeedConfig) -> None:
        assert self._session is not None
        label = feed_label(feed)
        fs = self.state.feeds.get(label)
        try:
            quotes, reliability = await fetch_feed(self._session, feed)
            self.state.feeds[label] = (fs or FeedState()).succeeded(quotes, reliability, now_ms())
        except FetchError as e:
            log.warning("pricing: feed %s failed: %s", label, e)
            self.state.feeds[label] = (fs or FeedState()).failed(str(e), now_ms())
        await self.refresh()

    async def _poll_nostr(self) -> None:
        assert self._session is not None and self.market.nostr is not None
        cfg = self.market.nostr
        try:
            announcements = await nostr.fetch_announcements(self._session, list(cfg.relays), cfg.timeout_s)
        except Exception as e:  # keep the nodes last read: they expire on their own
            log.warning("pricing: reading Nostr relays failed (%s)", type(e).__name__)
            self.state.nostr_error = f"relays unreadable ({type(e).__name__})"
            self.state.nostr_attempts += 1
            await self.refresh()
            return
        nodes: dict[str, Node] = {}
        for a in announcements:  # current ones only: fetch_announcements dropped the deleted and expired
            if cfg.authors and a.pubkey not in cfg.authors:
                continue  # only operators the deployment trusts may announce nodes it will pay
            name = node_name(a.pubkey, a.d)
            known = self.state.nodes.get(name)
            nodes[name] = Node(name=name, url=a.url, mints=tuple(a.mints), pubkey=a.pubkey,
                               version=a.version, created_at=a.created_at, expires_at=a.expires_at,
                               discovery=known.discovery if known is not None else DiscoveryState())
        accepted = set(cfg.accepted_mints)
        allow_private = private_urls_allowed(cfg)

        async def discover(node: Node) -> Node:
            try:
                return await read_node(node)
            except Exception as e:  # one announcement, however odd, must not stop the others being read
                log.warning("pricing: reading node %s failed (%s)", node.name, type(e).__name__)
                return replace(node, discovery=node.discovery.failed(f"unreadable ({type(e).__name__})", now_ms()))

        async def read_node(node: Node) -> Node:
            refused = None if allow_private else await private_reason(node.url)
            if refused is not None:
                return replace(node, discovery=node.discovery.failed(refused, now_ms()))
            session = self._session if allow_private else self._public_session
            assert session is not None
            node = replace(node, info_mints=await info_mints(session, node.url, cfg.timeout_s))
            if not accepted.intersection(m.rstrip("/") for m in node.accepted_mints):
                return node  # not payable: nothing more to read
            try:
                body = await get_json(session, node.url + "/models", timeout_s=cfg.timeout_s)
                prices = routstr.parse_models(body)
                listing = Listing(models=tuple(m.model for m in prices) + tuple(routstr.unpriced_models(body)),
                                  rates={m.model: ModelRate(input_rate=m.input_rate, output_rate=m.output_rate)
                                         for m in prices},
                                  context={m.model: m.context_length for m in prices if m.context_length},
                                  node={m.model: m.node for m in prices if m.node is not None})
                if not listing.models:
                    raise FetchError("the listing names no models")
                d = node.discovery.succeeded(listing, now_ms())
            except FetchError as e:
                d = node.discovery.failed(str(e), now_ms())
            except (ValueError, TypeError, KeyError) as e:
                d = node.discovery.failed(f"unreadable listing ({type(e).__name__})", now_ms())
            return replace(node, discovery=d)

        read = await asyncio.gather(*(discover(n) for n in nodes.values()))
        self.state.nodes = {n.name: n for n in read}
        self.state.nostr_error = None
        self.state.nostr_attempts += 1
        await self.refresh()

    # --- endpoints ------------------------------------------------------------------------------------------
    async def _quote(self, req: QuoteRequest, headers: dict[str, str]) -> QuoteReply:
        return QuoteReply(quotes=quote(self._prices, req))

    async def _table(self, req: TableRequest, headers: dict[str, str]) -> PriceTable:
        return PriceTable(providers=list(self._prices))

    async def _confirm(self, req: ConfirmRequest, headers: dict[str, str]) -> ConfirmReply:
        """An admin accepts held prices: they go in force now, and the guard compares later updates to them."""
        async with self._lock:
            entry = self._published.get(req.provider)
            if entry is None:
                raise ArbstrError(404, f"no provider {req.provider!r} in the price table", code="provider_not_found",
                                  param="provider")
            updated, confirmed = confirm(entry, req.models)
            if not confirmed:
                raise ArbstrError(409, f"no price of {req.provider!r} is held" +
                                  (f" for {', '.join(req.models)}" if req.models else ""), code="nothing_held")
            if not await self._put(updated.model_copy(update={"updated_at_ms": now_ms()})):
                raise ArbstrError(503, "the price table could not be written; try again", code="prices_unavailable",
                                  headers={"retry-after": "1"})
        log.info("pricing: an admin confirmed prices of %s: %s", req.provider, ", ".join(confirmed))
        await self.refresh()
        return ConfirmReply(provider=req.provider, confirmed=confirmed)
