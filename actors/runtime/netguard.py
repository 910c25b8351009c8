"""Keeping announced URLs off our own network.

A node announced on a public relay names any URL it likes. Unless the deployment allows private URLs, a node is
admitted only when its host is public: a literal address is checked as written, a hostname by what it resolves
to (every address: one private answer among public ones refuses it). Every later connection to it — the pricing
actor reading its models, the vault delivering top-up tokens, the gateway sending requests — goes through a
resolver that refuses private addresses again, so a name that changes its answer after the check (DNS
rebinding) still cannot reach inside.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any, Awaitable, Callable, Optional
from urllib.parse import urlsplit

import aiohttp
from aiohttp.abc import ResolveResult
from aiohttp.resolver import ThreadedResolver

from schemas.config import NostrConfig

Lookup = Callable[[str, int], Awaitable[list[str]]]
_SHARED = ipaddress.ip_network("100.64.0.0/10")  # carrier-grade NAT, and the addresses of overlay VPNs
_SITE_LOCAL = ipaddress.ip_network("fec0::/10")  # deprecated, still routed inside some networks


def private_ip(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 zone id is not part of the address
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address):
        if ip in _SITE_LOCAL:
            return True
        embedded = ip.ipv4_mapped or ip.sixtofour  # an IPv4 address carried inside: judge that one
        if embedded is not None:
            ip = embedded
    return ip.is_private or ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast \
        or ip.is_reserved or ip in _SHARED


def private_host(url: str) -> bool:
    """A loopback, private or link-local address (or localhost) written in a URL, without resolving it."""
    host = (urlsplit(url).hostname or "").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    return private_ip(host)


def private_urls_allowed(nostr: Optional[NostrConfig]) -> bool:
    """``allow_private_urls`` when set; else only when every relay is itself on a private network (a test net):
    an announcement on a public relay must not point arbstr at its own network."""
    if nostr is None:
        return True  # no announcements: every market URL came from the operator's own config
    if nostr.allow_private_urls is not None:
        return nostr.allow_private_urls
    return all(private_host(r) for r in nostr.relays)


async def _system_lookup(host: str, port: int) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def private_reason(url: str, lookup: Optional[Lookup] = None) -> Optional[str]:
    """Why ``url`` must not be read from a public announcement, or None when its host is public."""
    if private_host(url):
        return "the announced URL is on a private network"
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        ipaddress.ip_address(host)
        return None  # a public literal address
    except ValueError:
        pass
    try:
        addresses = await (lookup or _system_lookup)(host, parts.port or (443 if parts.scheme == "https" else 80))
    except (OSError, UnicodeError):  # UnicodeError: a name IDNA refuses (an empty or overlong label)
        return "the announced host does not resolve"
    if not addresses:
        return "the announced host does not resolve"
    if any(private_ip(a) for a in addresses):
        return "the announced host resolves to a private network"
    return None


class PublicOnlyResolver(ThreadedResolver):
    """aiohttp's resolver, refusing any name with a private address among its answers."""

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        results = await super().resolve(host, port, family)
        if any(private_ip(r["host"]) for r in results):
            raise OSError(f"{host} resolves to a private network")
        return results


def public_connector(**options: Any) -> aiohttp.TCPConnector:
    """A connector for nodes from public announcements: every connection resolves anew and is refused when the
    name answers with a private address."""
    return aiohttp.TCPConnector(resolver=PublicOnlyResolver(), use_dns_cache=False, **options)
