"""What the pricing actor has observed of the market, as plain data: each discovery's last good listing, each
feed's last fetch, each announced Routstr node. The actor's I/O fills it; ``merge.build_table`` reads it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace
from typing import Optional

from .feeds import FeedQuote
from .listing import Listing


@dataclass(frozen=True)
class DiscoveryState:
    """One provider's ``/models`` listings: the last good one stays in force whatever later attempts bring."""

    listing: Optional[Listing] = None
    ok_at_ms: int = 0
    error: Optional[str] = None  # the latest attempt's failure; None once an attempt succeeds
    failed_at_ms: int = 0
    attempts: int = 0

    def succeeded(self, listing: Listing, now_ms: int) -> "DiscoveryState":
        return DiscoveryState(listing=listing, ok_at_ms=now_ms, attempts=self.attempts + 1)

    def failed(self, error: str, now_ms: int) -> "DiscoveryState":
        return replace(self, error=error, failed_at_ms=now_ms, attempts=self.attempts + 1)


@dataclass(frozen=True)
class FeedState:
    """One quote feed's last good fetch (kept when a later fetch fails: its quotes then simply age out)."""

    quotes: tuple[FeedQuote, ...] = ()
    reliability: dict[str, float] = field(default_factory=dict)
    fetched_at_ms: int = 0
    error: Optional[str] = None
    attempts: int = 0

    def succeeded(self, quotes: list[FeedQuote], reliability: dict[str, float], now_ms: int) -> "FeedState":
        return FeedState(tuple(quotes), dict(reliability), now_ms, None, self.attempts + 1)

    def failed(self, error: str, now_ms: int) -> "FeedState":
        return replace(self, error=error, attempts=self.attempts + 1)


@dataclass(frozen=True)
class Node:
    """A Routstr node as announced on Nostr (kind 38421), under the provider name arbstr gives it."""

    name: str
    url: str  # its OpenAI base URL, ending in /v1
    mints: tuple[str, ...]
    pubkey: str
    version: str
    created_at: int  # seconds, as Nostr counts
    expires_at: Optional[int] = None
    discovery: DiscoveryState = field(default_factory=DiscoveryState)
    info_mints: tuple[str, ...] = ()  # what its GET /v1/info says it accepts now (read each round; () if unread)

    @property
    def accepted_mints(self) -> tuple[str, ...]:
        """The node's own word first: an announcement may be older than its current mint list."""
        return self.info_mints or self.mints


@dataclass
class MarketState:
    discovery: dict[str, DiscoveryState] = field(default_factory=dict)  # configured provider → its listings
    feeds: dict[str, FeedState] = field(default_factory=dict)  # feed label → its last fetch
    nodes: dict[str, Node] = field(default_factory=dict)  # provider name → node
    nostr_error: Optional[str] = None
    nostr_attempts: int = 0


def node_name(pubkey: str, d: str) -> str:
    """A stable provider name (a KV key and subject token) for the node a (pubkey, d) pair announces."""
    return "routstr-" + hashlib.sha256(f"{pubkey}:{d}".encode()).hexdigest()[:12]


def api_base(url: str) -> str:
    """A node's announced URL as an OpenAI base URL: Routstr serves the API under /v1."""
    url = url.strip().rstrip("/")
    return url if url.endswith("/v1") else url + "/v1"
