"""Which URL and key the gateway calls a provider with.

Configured providers come from this gateway's own config. A provider that exists only in the live price table
(an endpoint a quote feed admitted, a Routstr node announced on Nostr) is called at the URL its entry names,
with the key from ``[[market.credentials]]`` (matched by that URL) or, for Routstr nodes, from the
``arbstr_provider_keys`` KV bucket the vault fills after topping the node up; a Routstr node without a key yet is
paid per request (X-Cashu) when its entry says so. Both buckets are watched and
cached here: the request path looks a provider up in a dict, never in KV.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Optional

from nats.aio.client import Client as NATS
from nats.js.kv import KeyValue
from pydantic import SecretStr, ValidationError

from actors.runtime.bucket_follower import BucketFollower, is_delete
from actors.runtime.jetstream import open_bucket
from actors.runtime.netguard import private_urls_allowed
from schemas import subjects
from schemas.config import Config, ProviderConfig
from schemas.pricing import ProviderPrices
from schemas.vault import provider_api_key

log = logging.getLogger("arbstr.gateway")

BUCKET_RETRY_S = 1.0


def live_provider(entry: ProviderPrices, config: Config, keys: dict[str, SecretStr]) -> Optional[ProviderConfig]:
    """How to call a market provider, or None when this gateway cannot (no URL or no key for it)."""
    if entry.kind == "configured" or not entry.url:
        return None
    if entry.credential == "market":
        cred = config.market.credential_for(entry.url)
        key = cred.api_key if cred is not None else None
    elif entry.credential == "provider_keys":
        key = keys.get(entry.provider)
    else:
        key = None
    per_request = key is None and entry.kind == "routstr" and entry.payment == "x_cashu"
    if key is None and not per_request:
        return None
    try:
        return ProviderConfig(
            name=entry.provider, url=entry.url, api_key=key, models=list(entry.models),
            input_rate=entry.input_rate, output_rate=entry.output_rate, base_fee_msat=entry.base_fee_msat,
            tier=entry.tier, context_length=entry.context_length, supports_tools=entry.supports_tools,
            free=entry.free or entry.input_rate == 0 or entry.output_rate == 0,  # rates here are display only
            connect_timeout_s=config.market.connect_timeout_s,
            first_byte_timeout_s=config.market.first_byte_timeout_s,
            public_only=entry.kind == "routstr" and not private_urls_allowed(config.market.nostr),
            routstr=entry.kind == "routstr", x_cashu=per_request)
    except ValidationError as e:
        log.warning("gateway: cannot call market provider %s: %s", entry.provider, e.errors()[0].get("msg"))
        return None


def parse_key(value: Optional[bytes]) -> Optional[SecretStr]:
    """``{"api_key": "sk-…"}`` → the key; anything else → None (a missing key means "no credential")."""
    key = provider_api_key(value)
    return SecretStr(key) if key is not None else None


class ProviderDirectory:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.configured: dict[str, ProviderConfig] = {p.name: p for p in config.providers}
        self.entries: dict[str, ProviderPrices] = {}  # the live table as this gateway last saw it
        self._keys: dict[str, SecretStr] = {}
        self._live: dict[str, ProviderConfig] = {}
        self._followers: list[BucketFollower] = []

    def get(self, name: str) -> Optional[ProviderConfig]:
        """The request path's lookup: a dict read."""
        return self.configured.get(name) or self._live.get(name)

    def live_names(self) -> set[str]:
        """The market providers this gateway has a URL and a key for."""
        return set(self._live)

    def live_usable(self) -> dict[str, bool]:
        """Market providers this gateway can call → whether the router may choose them (for /health)."""
        return {name: bool(self.entries[name].models) and self.entries[name].routable
                for name in self._live if name in self.entries}

    async def start(self, nc: NATS) -> None:
        """Follow the buckets in the background: a gateway starts even while JetStream is still electing."""
        replicas = self.config.nats.kv_replicas
        self._followers = [BucketFollower(lambda: open_bucket(nc, subjects.KV_PRICES, replicas=replicas), self._on_price,
                                          self.entries.keys, self._on_gone(self.entries), "gateway-prices",
                                          retry_s=BUCKET_RETRY_S)]
        if self.config.market.nostr is not None:  # only Routstr nodes take their key from the bucket
            self._followers.append(BucketFollower(lambda: open_bucket(nc, subjects.KV_PROVIDER_KEYS, replicas=replicas, create=False),
                                                  self._on_key,
                                                  self._keys.keys, self._on_gone(self._keys),
                                                  "gateway-provider-keys", retry_s=BUCKET_RETRY_S))
        for follower in self._followers:
            follower.start()

    async def stop(self) -> None:
        for follower in self._followers:
            await follower.stop()
        self._followers = []

    def _on_gone(self, held: dict[str, Any]) -> Callable[[str], None]:
        def gone(key: str) -> None:
            held.pop(key, None)
            self._rebuild(key)
        return gone

    def _on_price(self, entry: KeyValue.Entry, live: bool) -> None:
        if is_delete(entry):
            self.entries.pop(entry.key, None)
        else:
            try:
                self.entries[entry.key] = ProviderPrices.model_validate_json(entry.value or b"")
            except ValidationError:
                log.warning("gateway: ignoring an unreadable price entry %r", entry.key)
                return
        self._rebuild(entry.key)

    def _on_key(self, entry: KeyValue.Entry, live: bool) -> None:
        key = None if is_delete(entry) else parse_key(entry.value)
        if key is None:
            self._keys.pop(entry.key, None)
        else:
            self._keys[entry.key] = key
        self._rebuild(entry.key)

    def _rebuild(self, name: str) -> None:
        entry = self.entries.get(name)
        live = live_provider(entry, self.config, self._keys) if entry is not None else None
        if live is None:
            self._live.pop(name, None)
        else:
            self._live[name] = live
