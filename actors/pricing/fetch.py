"""HTTP reads of the live market: a provider's ``/models`` listing and a quote feed. Errors come back as
short messages safe to publish (status, timeout, exception class): never a key, never a response body."""

from __future__ import annotations

import asyncio
from typing import Any, Optional
from urllib.parse import urlencode

import aiohttp
import orjson

from schemas.config import FeedConfig

from .feeds import FeedQuote, parse_nodes, parse_quotes
from .listing import Listing, ListingError, parse_listing

MAX_BODY = 8 * 1024 * 1024  # a 2,000-quote feed is ~0.5 MB


class FetchError(Exception):
    """A read that failed; its message is fit for /providers."""


async def get_json(session: aiohttp.ClientSession, url: str, *, timeout_s: float,
                   api_key: Optional[str] = None) -> Any:
    headers = {"Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    try:
        # No redirects: a key sent to one host must not follow a Location header to another.
        async with session.get(url, headers=headers, allow_redirects=False,
                               timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            if resp.status != 200:
                raise FetchError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > MAX_BODY:
                    raise FetchError(f"body larger than {MAX_BODY // (1024 * 1024)} MiB")
    except asyncio.TimeoutError:
        raise FetchError(f"timed out after {timeout_s:g} s") from None
    except (aiohttp.ClientError, OSError) as e:
        raise FetchError(f"unreachable ({type(e).__name__})") from None
    try:
        return orjson.loads(bytes(body))
    except orjson.JSONDecodeError:
        raise FetchError("the body is not JSON") from None


async def fetch_listing(session: aiohttp.ClientSession, base_url: str, *, timeout_s: float,
                        api_key: Optional[str] = None, sats_per_usd: Optional[int] = None) -> Listing:
    body = await get_json(session, base_url.rstrip("/") + "/models", timeout_s=timeout_s, api_key=api_key)
    try:
        return parse_listing(body, sats_per_usd)
    except ListingError as e:
        raise FetchError(str(e)) from None


async def fetch_feed(session: aiohttp.ClientSession, feed: FeedConfig) -> tuple[list[FeedQuote], dict[str, float]]:
    """The feed's quotes and, when a reliability floor applies, its nodes' reliabilities."""
    params: dict[str, Any] = {"limit": feed.limit}
    if feed.source is not None:
        params["source"] = feed.source
    quotes_url = f"{feed.url}/api/quotes?{urlencode(params)}"
    if feed.reliability_floor > 0:
        quotes_body, nodes_body = await asyncio.gather(
            get_json(session, quotes_url, timeout_s=feed.timeout_s),
            get_json(session, f"{feed.url}/api/nodes", timeout_s=feed.timeout_s))
    else:
        quotes_body, nodes_body = await get_json(session, quotes_url, timeout_s=feed.timeout_s), []
    try:
        return parse_quotes(quotes_body), parse_nodes(nodes_body)
    except ValueError as e:
        raise FetchError(str(e)) from None


async def info_mints(session: aiohttp.ClientSession, base_url: str, timeout_s: float) -> tuple[str, ...]:
    """The mints a Routstr node accepts, from its ``GET /v1/info`` (``mints``); () when it cannot be read (the
    announcement's ``mint`` tags then stand)."""
    try:
        body = await get_json(session, base_url.rstrip("/") + "/info", timeout_s=timeout_s)
    except FetchError:
        return ()
    mints = body.get("mints") if isinstance(body, dict) else None
    if not isinstance(mints, list):
        return ()
    return tuple(dict.fromkeys(m.strip().rstrip("/") for m in mints[:50]
                               if isinstance(m, str) and m.startswith(("http://", "https://")) and len(m) < 2048))
