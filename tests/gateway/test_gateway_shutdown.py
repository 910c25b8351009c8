"""A gateway that stops finishes what it sent in the background: the release that follows a failed reserve is
what keeps a request the client saw fail from being charged when its hold expires."""

from __future__ import annotations

import asyncio

import aiohttp

from actors.runtime.jetstream import ensure_stream
from actors.vault.streams import settle_stream_config
from arbstr.natsserver import NatsServer
from gateway.vault_meter import token_hash
from schemas import subjects
from schemas.vault import AgentRoute
from tests.support.stack import ADMIN_TOKEN, demo_config, start_stack, vault_section


async def test_a_release_still_retrying_is_journaled_before_the_gateway_goes(
        http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str) -> None:
    stack = await start_stack(demo_config(mock_upstream, vault=vault_section()), fresh_nats.url)

    async def whoami(msg: object) -> None:  # the token is known, but no owner serves its partition
        await msg.respond(AgentRoute(agent_id="agt_0000000000000001", partition=3).model_dump_json().encode())  # type: ignore[attr-defined]

    sub = await stack.nc.subscribe(subjects.VAULT_WHOAMI, cb=whoami)
    try:
        # No vault owner answers and its streams do not exist yet (JetStream still electing, say): the reserve fails,
        # and the release the gateway sends after it keeps retrying. (The token was confirmed moments before, so
        # the gateway's first check lets it through to the reserve.)
        assert stack.gateway.auth is not None
        stack.gateway.auth.valid.add(token_hash(f"{ADMIN_TOKEN}x"))
        async with http.post(f"{stack.url}/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                             json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status >= 500, await r.text()
        meter = getattr(stack.gateway.meter, "slow", stack.gateway.meter)  # under grants: its per-request path
        assert len(meter._background) == 1  # type: ignore[attr-defined]
        closing = asyncio.create_task(stack.runner.cleanup())  # what SIGTERM does to a gateway
        await asyncio.sleep(0.3)
        assert not closing.done()  # waiting for the release, not giving up on it
        await ensure_stream(stack.nc, settle_stream_config(1))  # the stream comes back: the release lands
        await asyncio.wait_for(closing, 10)
        info = await stack.nc.jetstream().stream_info(subjects.STREAM_SETTLE)
        assert info.state.messages == 1
    finally:
        await sub.unsubscribe()
        await stack.stop()
