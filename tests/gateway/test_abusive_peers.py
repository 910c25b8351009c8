"""Abusive upstreams and clients: a provider answering a redirect, clients that open streams and never read,
connections that never finish their request head, and anonymous callers probing the paid endpoints."""

from __future__ import annotations

import asyncio
import select
import socket
import time
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiohttp.resolver import ThreadedResolver

from actors.runtime.netguard import PublicOnlyResolver
from actors.runtime.redirects import RedirectRefused, refuse_redirects
from arbstr.mock_upstream import MockUpstreamServer
from arbstr.natsserver import NatsServer
from gateway.auth_gate import ValidTokens
from tests.support.rawhttp import parse_reply, request_bytes
from tests.support.stack import Stack, add_vault, demo_config, start_stack, vault_section
from tests.support.vault_helpers import ADMIN, assert_balanced, bearer, books, new_agent, settled

MODELS = ["gpt-4o-mini", "gpt-4o", "text-embedding-3-small"]
CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hello there"}], "max_tokens": 5}


class Internal:
    """A service on loopback that must never see a request meant for a provider."""

    def __init__(self) -> None:
        self.hits: list[bytes] = []
        self.runner: Any = None
        self.url = ""

    async def start(self) -> "Internal":
        async def any_path(request: web.Request) -> web.Response:
            self.hits.append(await request.read())
            return web.json_response({"id": "stolen", "object": "chat.completion", "created": 0, "model": "x",
                                      "choices": [{"index": 0, "message": {"role": "assistant", "content": "pwned"},
                                                   "finish_reason": "stop"}],
                                      "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", any_path)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.fixture
async def internal() -> AsyncIterator[Internal]:
    s = await Internal().start()
    yield s
    await s.stop()


@pytest.fixture
async def mock() -> AsyncIterator[MockUpstreamServer]:
    server = await MockUpstreamServer(default_output_tokens=16).start()
    yield server
    await server.stop()


def provider(name: str, url: str, rate: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": url, "models": MODELS, "input_rate": rate, "output_rate": rate, "tier": "frontier",
            "connect_timeout_s": 2, "first_byte_timeout_s": 10, **extra}


async def set_faults(mock: MockUpstreamServer, name: str, faults: Any) -> None:
    async with aiohttp.ClientSession() as http:
        r = await http.post(f"{mock.url}/_mock/{name}/faults", json=faults)
        assert r.status == 200, await r.text()


# --- redirects ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_public_only_provider_cannot_redirect_the_gateway_inside(
        fresh_nats: NatsServer, mock: MockUpstreamServer, internal: Internal, monkeypatch: pytest.MonkeyPatch,
        status: int) -> None:
    # The public-only guard checks the name the provider is configured with; here it resolves "publicly" (the
    # test's stand-in for a DNS answer), and the provider redirects to a loopback literal, which no resolver sees.
    monkeypatch.setattr(PublicOnlyResolver, "resolve", ThreadedResolver.resolve)
    evil_url = f"http://localhost.:{mock.port}/evil/v1"
    cfg = demo_config(mock.url, providers=[provider("evil", evil_url, 1000, public_only=True),
                                           provider("good", f"{mock.url}/good/v1", 9000)])
    s = await start_stack(cfg, fresh_nats.url)
    try:
        await set_faults(mock, "evil", {"redirect_to": f"{internal.url}/v1/chat/completions",
                                        "redirect_status": status})
        async with aiohttp.ClientSession() as http:
            for stream in (False, True):
                r = await http.post(f"{s.url}/v1/chat/completions", json={**CHAT, "stream": stream})
                text = await r.text()
                assert r.status == 200, text
                assert r.headers["x-arbstr-provider"] == "good" and r.headers["x-arbstr-tried"] == "evil"
                assert "pwned" not in text
        assert internal.hits == []  # never followed, with or without a stream
        await set_faults(mock, "good", {"status": 500})
        async with aiohttp.ClientSession() as http:  # nobody left to fall over to: a 502, never the redirect
            r = await http.post(f"{s.url}/v1/chat/completions", json=CHAT, allow_redirects=False)
            assert r.status == 502 and "Location" not in r.headers, await r.text()
            assert set(await r.json()) == {"error"}
        assert internal.hits == []
    finally:
        await s.stop()


async def test_sessions_that_talk_to_peers_refuse_redirects_even_when_a_call_forgets(internal: Internal) -> None:
    async def bounce(request: web.Request) -> web.Response:
        raise web.HTTPTemporaryRedirect(f"{internal.url}/steal")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", bounce)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1/models"  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession(trace_configs=[refuse_redirects()]) as http:
            for method in ("GET", "POST"):
                with pytest.raises(RedirectRefused):
                    async with http.request(method, url, data=b"{}"):
                        pass
        from actors.pricing.fetch import FetchError, get_json
        async with aiohttp.ClientSession() as http:
            with pytest.raises(FetchError):
                await get_json(http, url, timeout_s=5)
        assert internal.hits == []
    finally:
        await runner.cleanup()


# --- stalled readers ----------------------------------------------------------------------------------------
def stalled_socket(url: str, data: bytes) -> socket.socket:
    """A client that sends one request and never reads a byte (a small receive buffer, as a slow phone would)."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((host, int(port)))
    sock.sendall(data)
    return sock


def hung_up(sock: socket.socket, within_s: float = 5.0) -> bool:
    """Whether the peer closed or reset the connection (rather than just sending nothing yet). What it had sent
    before closing may still be on its way (its close follows the data): read on while more comes."""
    sock.setblocking(False)
    deadline = time.monotonic() + within_s
    while True:
        try:
            if not sock.recv(1 << 20):
                return True
        except ConnectionResetError:
            return True
        except BlockingIOError:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            select.select([sock], [], [], min(left, 0.1))


async def test_stalled_readers_cannot_starve_the_pool_and_are_still_billed(fresh_nats: NatsServer) -> None:
    mock = await MockUpstreamServer(default_output_tokens=20_000).start()
    cfg = demo_config(mock.url, providers=[provider("alpha", f"{mock.url}/alpha/v1", 8000)],
                      server={"host": "127.0.0.1", "port": 0, "upstream_connections": 2,
                              "client_write_timeout_s": 3.0, "upstream_pool_wait_s": 0.5},
                      vault=vault_section())  # a stalled stream holds its connection for 3 s: longer than a wait
    s = await start_stack(cfg, fresh_nats.url)
    await add_vault(s)
    socks: list[socket.socket] = []
    try:
        async with aiohttp.ClientSession() as http:
            agent_id, token = await new_agent(http, s, "stall", deposit_msat=100_000_000)
            long = orjson.dumps({**CHAT, "max_tokens": 20_000, "stream": True})
            for i in range(2):  # as many as the pool has connections
                socks.append(stalled_socket(s.url, request_bytes(
                    "POST", b"/v1/chat/completions",
                    [(b"Authorization", b"Bearer " + token.encode()), (b"Content-Type", b"application/json"),
                     (b"X-Request-Id", b"stalled-%d" % i)], long)))
            # Both pooled connections are held by streams nobody reads: the next caller is told so, not queued.
            busy = None
            for _ in range(40):
                r = await http.post(f"{s.url}/v1/chat/completions", json=CHAT, headers=bearer(token))
                if r.status == 503:
                    busy = r
                    break
                await asyncio.sleep(0.1)
            assert busy is not None, "the pool never filled"
            body = await busy.json()
            assert body["error"]["code"] == "upstream_busy" and busy.headers["retry-after"] == "1", body
            # The stalled clients are cut off; their upstreams are read to the end, the pool frees, all is billed.
            served = None
            for _ in range(300):
                r = await http.post(f"{s.url}/v1/chat/completions", json=CHAT, headers=bearer(token))
                if r.status == 200:
                    served = r
                    break
                assert r.status == 503, await r.text()
                await asyncio.sleep(0.2)
            assert served is not None, "the pool never freed"
            acct = await settled(http, s, agent_id, timeout_s=30)
            assert acct["pending_msat"] == 0, acct
            rows = (await (await http.get(f"{s.url}/v1/requests?limit=1000", headers=ADMIN)).json())["data"]
            stalled = {row["request_id"]: row for row in rows if row["request_id"].startswith("stalled-")}
            assert set(stalled) == {"stalled-0", "stalled-1"}, rows
            for row in stalled.values():  # billed for every token the upstream produced
                assert row["output_tokens"] == 20_000 and row["cost_msat"] > 160_000, row
            assert_balanced(await books(http, s))
        assert all(hung_up(sock) for sock in socks)  # the gateway cut them off
    finally:
        for sock in socks:
            sock.close()
        await s.stop()
        await mock.stop()


# --- slowloris ----------------------------------------------------------------------------------------------
async def free_stack(nats_url: str, mock: MockUpstreamServer, **server: Any) -> Stack:
    cfg = demo_config(mock.url, providers=[provider("alpha", f"{mock.url}/alpha/v1", 8000)],
                      server={"host": "127.0.0.1", "port": 0, **server})
    return await start_stack(cfg, nats_url)


async def test_a_request_head_sent_too_slowly_is_cut(fresh_nats: NatsServer, mock: MockUpstreamServer) -> None:
    s = await free_stack(fresh_nats.url, mock, header_timeout_s=0.5)
    try:
        host, port = s.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        answer = asyncio.create_task(reader.read())
        for i in range(50):  # a header line every 0.1 s: never a complete head
            if answer.done():
                break
            try:
                writer.write(b"X-Slow-%d: a\r\n" % i)
                await writer.drain()
            except (ConnectionError, OSError):
                break
            await asyncio.sleep(0.1)
        reply = parse_reply(await asyncio.wait_for(answer, 5))
        writer.close()
        assert reply.status == 408 and orjson.loads(reply.body)["error"]["code"] == "header_timeout", reply

        # A connection that opens and sends nothing is closed the same way.
        reader, writer = await asyncio.open_connection(host, int(port))
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert parse_reply(raw).status == 408

        # The deadline is for the head only: a slow body, and a keep-alive pause between requests, are fine.
        reader, writer = await asyncio.open_connection(host, int(port))
        body = orjson.dumps(CHAT)
        writer.write(b"POST /v1/cost HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % len(body))
        for i in range(0, len(body), 8):
            writer.write(body[i:i + 8])
            await writer.drain()
            await asyncio.sleep(0.1)  # the body takes well over the head's deadline
        head = parse_reply(await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5))
        assert head.status == 200, head
        await reader.readexactly(int(head.header("content-length") or 0))
        await asyncio.sleep(1.0)  # idle between requests, longer than the head deadline
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        assert parse_reply(raw).status == 200, raw
    finally:
        await s.stop()


# --- authenticate first -------------------------------------------------------------------------------------
@pytest.fixture
async def paid(fresh_nats: NatsServer, mock: MockUpstreamServer) -> AsyncIterator[Stack]:
    cfg = demo_config(mock.url, providers=[provider("alpha", f"{mock.url}/alpha/v1", 8000)], vault=vault_section())
    s = await start_stack(cfg, fresh_nats.url)
    await add_vault(s)
    yield s
    await s.stop()


ANON_PROBES: list[tuple[str, Any]] = [
    ("/v1/chat/completions", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 10_000_000}),
    ("/v1/chat/completions", {"model": "gpt-4o-mini"}),
    ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "x", "max_tokens": 10_000_000}),
    ("/v1/embeddings", {"model": "nope", "input": "x"}),
    ("/v1/responses", {"model": "gpt-4o-mini", "input": "x", "max_output_tokens": 10_000_000}),
    ("/v1/cost", CHAT),
    ("/v1/cost", {"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}),
    ("/chat/completions", CHAT),
]


async def test_paid_endpoints_answer_401_before_validating_or_routing(paid: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        for path, body in ANON_PROBES:
            for headers in ({}, bearer("arb_not-a-token"), {"Authorization": "Basic eDp5"}):
                r = await http.post(paid.url + path, json=body, headers={**headers, "X-Arbstr-Policy": "nope"})
                text = await r.text()
                assert r.status == 401, (path, headers, text)
                assert "alpha" not in text and "128000" not in text and "context" not in text, text
                assert r.headers["x-should-retry"] == "false"
        # tokens that exist pass, and then validation and routing speak
        _, token = await new_agent(http, paid, "known", deposit_msat=10_000_000)
        r = await http.post(f"{paid.url}/v1/chat/completions", json={"model": "no-such-model",
                                                                     "messages": CHAT["messages"]},
                            headers=bearer(token))
        assert r.status == 404
        assert (await http.post(f"{paid.url}/v1/cost", json=CHAT, headers=bearer(token))).status == 200
        assert (await http.post(f"{paid.url}/v1/chat/completions", json=CHAT, headers=bearer(token))).status == 200
        # the admin token: /v1/cost answers it as before; a paid request is still the vault's to refuse
        assert (await http.post(f"{paid.url}/v1/cost", json=CHAT, headers=ADMIN)).status == 200
        r = await http.post(f"{paid.url}/v1/chat/completions", json=CHAT, headers=ADMIN)
        assert r.status == 401, await r.text()


async def test_a_remembered_token_is_still_refused_by_the_vault_after_rotation(paid: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, paid, "rotating", deposit_msat=10_000_000)
        assert (await http.post(f"{paid.url}/v1/chat/completions", json=CHAT, headers=bearer(token))).status == 200
        r = await http.post(f"{paid.url}/v1/admin/agents/{agent_id}/token", headers=ADMIN)
        assert r.status == 200
        new = (await r.json())["token"]
        old = await http.post(f"{paid.url}/v1/chat/completions", json=CHAT, headers=bearer(token))
        assert old.status == 401, await old.text()  # the gate may remember it; the reserve does not
        assert (await http.post(f"{paid.url}/v1/chat/completions", json=CHAT, headers=bearer(new))).status == 200
        assert (await settled(http, paid, agent_id))["pending_msat"] == 0


def test_remembered_tokens_expire_and_are_bounded() -> None:
    now = [0.0]
    valid = ValidTokens(ttl_s=30, max_entries=3, clock=lambda: now[0])
    for name in ("a", "b", "c", "d"):
        valid.add(name)
    assert "a" not in valid and all(n in valid for n in "bcd") and len(valid) == 3
    now[0] = 29.9
    assert "b" in valid
    now[0] = 30.0
    assert "b" not in valid and "c" not in valid and len(valid) == 1


async def test_free_mode_stays_open(fresh_nats: NatsServer, mock: MockUpstreamServer) -> None:
    s = await free_stack(fresh_nats.url, mock)
    try:
        async with aiohttp.ClientSession() as http:
            for path, body in (("/v1/chat/completions", CHAT), ("/v1/cost", CHAT)):
                r = await http.post(s.url + path, json=body)
                assert r.status == 200, await r.text()
            r = await http.post(f"{s.url}/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer x"})
            assert r.status == 200
    finally:
        await s.stop()


# --- upstream numbers and nesting ---------------------------------------------------------------------------
DEEP = b"[" * 900 + b"]" * 900  # parses (orjson allows 1,024), but neither re-serialises nor reprs


async def lying_upstream(request: web.Request) -> web.StreamResponse:
    """Answers by the ``x-`` word in the last user message: absurd usage, or JSON nested past any serialiser."""
    body = await request.json()
    kind = body["messages"][-1]["content"]
    head = b'{"id":"x","object":"chat.completion%s","created":0,"model":"m",'
    if not body.get("stream"):
        if kind == "huge-usage":
            usage = b'{"prompt_tokens":9223372036854775807,"completion_tokens":18446744073709551615}'
        else:
            usage = b"null"
        message = b'{"role":"assistant","content":"hi","tool_calls":' + DEEP + b"}"
        return web.Response(body=head % b"" + b'"choices":[{"index":0,"message":' + message +
                            b',"finish_reason":"stop"}],"usage":' + usage + b"}", content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    chunk = head % b".chunk"
    await resp.write(b"data: " + chunk + b'"choices":[{"index":0,"delta":{"content":"hi","tool_calls":' + DEEP +
                     b'},"finish_reason":null}]}\n\n')
    await resp.write(b"data: " + chunk + b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
                     b'"usage":{"prompt_tokens":3,"completion_tokens":2,"x":' + DEEP + b'},"x":' + DEEP + b"}\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def test_an_upstream_lying_in_numbers_or_nesting_gives_no_5xx(fresh_nats: NatsServer) -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", lying_upstream)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"  # type: ignore[union-attr]
    s = await start_stack(demo_config(url, providers=[provider("liar", url, 8000)], vault=vault_section()),
                          fresh_nats.url)
    await add_vault(s)
    try:
        async with aiohttp.ClientSession() as http:
            for kind, stream in (("huge-usage", False), ("deep", False), ("deep", True), ("deep-usage", True)):
                agent_id, token = await new_agent(http, s, f"victim-{kind}-{stream}", deposit_msat=1_000_000)
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": kind}], "max_tokens": 5,
                        "stream": stream, "stream_options": {"include_usage": True}}
                if not stream:
                    body.pop("stream_options")
                r = await http.post(f"{s.url}/v1/chat/completions", json=body, headers=bearer(token))
                text = await r.text()
                assert r.status == 200, (kind, stream, text[:300])
                if stream:
                    assert text.rstrip().endswith("data: [DONE]") and '"cost_msat"' in text, text[-300:]
                acct = await settled(http, s, agent_id)  # the account view serialises: every number in range
                assert acct["pending_msat"] == 0, acct
            assert_balanced(await books(http, s))
            r = await http.get(f"{s.url}/v1/requests?limit=1000", headers=ADMIN)
            assert r.status == 200
    finally:
        await s.stop()
        await runner.cleanup()
