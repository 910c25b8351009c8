"""Announced URLs cannot point arbstr at its own network: literal addresses, hostnames by every address they
resolve to, and the connection itself (a name that changes its answer after the check)."""

from __future__ import annotations

import socket
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from actors.runtime.netguard import PublicOnlyResolver, private_ip, private_reason


def answers(*addresses: str) -> Any:
    async def lookup(host: str, port: int) -> list[str]:
        return list(addresses)
    return lookup


async def failing(host: str, port: int) -> list[str]:
    raise socket.gaierror("Name or service not known")


def test_private_addresses() -> None:
    assert all(private_ip(a) for a in ("127.0.0.1", "10.0.0.8", "192.168.1.1", "172.16.0.1", "169.254.169.254",
                                       "::1", "fe80::1%eth0", "fd00::1", "::ffff:10.0.0.1", "0.0.0.0", "100.64.0.1"))
    assert not any(private_ip(a) for a in ("8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "node.example.com"))


async def test_a_hostname_is_judged_by_every_address_it_resolves_to() -> None:
    assert await private_reason("https://node.example.com/v1", answers("93.184.216.34")) is None
    assert await private_reason("https://node.example.com/v1", answers("93.184.216.34", "10.0.0.5")) == \
        "the announced host resolves to a private network"
    assert await private_reason("https://inside.example.com/v1", answers("169.254.169.254")) == \
        "the announced host resolves to a private network"
    assert await private_reason("https://gone.example.com/v1", failing) == "the announced host does not resolve"
    assert await private_reason("http://127.0.0.1:9/v1", answers("8.8.8.8")) == \
        "the announced URL is on a private network"  # a literal is never looked up
    assert await private_reason("http://8.8.8.8/v1", failing) is None


async def test_the_system_resolver_catches_a_name_for_loopback() -> None:
    # `localhost.` (a fully qualified spelling) slips past a check of the written name; its address does not.
    reason = await private_reason("http://localhost.:8080/v1")
    assert reason is not None


async def test_a_connection_through_the_public_only_resolver_never_reaches_a_private_address() -> None:
    async def models(request: web.Request) -> web.Response:
        return web.json_response({"data": []})

    app = web.Application()
    app.router.add_get("/v1/models", models)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as plain:  # the same URL is reachable without the guard
            async with plain.get(f"http://localhost:{port}/v1/models") as r:
                assert r.status == 200
        connector = aiohttp.TCPConnector(resolver=PublicOnlyResolver())
        async with aiohttp.ClientSession(connector=connector) as guarded:
            with pytest.raises(aiohttp.ClientConnectorError):
                async with guarded.get(f"http://localhost:{port}/v1/models"):
                    pass
    finally:
        await runner.cleanup()


async def test_odd_names_are_refused_not_raised() -> None:
    # IDNA refuses an empty label with a UnicodeError (a ValueError, not an OSError): one such announcement must
    # not stop every other node from being read.
    assert await private_reason("http://a..b/v1") == "the announced host does not resolve"


def test_addresses_carried_inside_ipv6() -> None:
    assert private_ip("2002:0a00:0001::1")  # 6to4 around 10.0.0.1
    assert private_ip("fec0::1")  # site-local
    assert not private_ip("2002:0808:0808::1")  # 6to4 around 8.8.8.8


def test_nodes_from_public_announcements_are_called_through_the_guard() -> None:
    from pydantic import SecretStr

    from gateway.providers import live_provider
    from schemas.config import Config
    from schemas.pricing import ProviderPrices

    node = ProviderPrices(provider="routstr-abc", kind="routstr", url="https://node.example.com/v1",
                          credential="provider_keys", models=["m"], input_rate=1, output_rate=1, tier="standard")
    keys = {"routstr-abc": SecretStr("sk-1")}
    public = Config.model_validate({"market": {"nostr": {"relays": ["wss://relay.example.com"]}}})
    local = Config.model_validate({"market": {"nostr": {"relays": ["ws://127.0.0.1:7447"]}}})
    allowed = Config.model_validate({"market": {"nostr": {"relays": ["wss://relay.example.com"],
                                                          "allow_private_urls": True}}})
    assert live_provider(node, public, keys).public_only  # type: ignore[union-attr]
    assert not live_provider(node, local, keys).public_only  # type: ignore[union-attr]
    assert not live_provider(node, allowed, keys).public_only  # type: ignore[union-attr]


async def test_the_gateway_never_sends_a_guarded_request_to_a_private_address(mock_upstream: str) -> None:
    from gateway.upstream import Upstream, UpstreamFailure
    from schemas.config import ProviderConfig

    port = mock_upstream.rsplit(":", 1)[1]
    url = f"http://localhost:{port}/cheap/v1"  # a name that resolves to loopback, as a rebinding would
    body = b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}'
    upstream = Upstream(4)
    await upstream.start()
    try:
        plain = ProviderConfig(name="node", url=url, models=["gpt-4o-mini"], input_rate=1, output_rate=1)
        reply = await upstream.open(plain, "/chat/completions", body, request_id="r1", traceparent=None,
                                    stream=False)
        assert reply.response.status == 200
        reply.response.release()
        guarded = plain.model_copy(update={"public_only": True})
        with pytest.raises(UpstreamFailure) as failure:
            await upstream.open(guarded, "/chat/completions", body, request_id="r2", traceparent=None,
                                stream=False)
        assert failure.value.kind == "connect"
        literal = guarded.model_copy(update={"url": mock_upstream + "/cheap/v1"})  # 127.0.0.1: no lookup at all
        with pytest.raises(UpstreamFailure) as failure:
            await upstream.open(literal, "/chat/completions", body, request_id="r3", traceparent=None,
                                stream=False)
        assert failure.value.kind == "connect" and "private address" in str(failure.value)
    finally:
        await upstream.close()
