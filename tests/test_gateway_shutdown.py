"""A gateway that stops finishes what it sent in the background: the release that follows a failed reserve is
what keeps a request the client saw fail from being charged when its hold expires."""

from __future__ import annotations

import asyncio

import aiohttp

from actors.runtime import ensure_stream
from actors.vault.journal import stream_configs
from arbstr.natsserver import NatsServer
from gateway.vault_meter import token_hash
from schemas import subjects
from tests.stack import ADMIN_TOKEN, demo_config, start_stack, vault_section


async def test_a_release_still_retrying_is_journaled_before_the_gateway_goes(
        http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str) -> None:
    stack = await start_stack(demo_config(mock_upstream, vault=vault_section()), fresh_nats.url)
    try:
        # No vault answers and its streams do not exist yet (JetStream still electing, say): the reserve fails,
        # and the release the gateway sends after it keeps retrying. (The token was confirmed moments before, so
        # the gateway's first check lets it through to the reserve.)
        assert stack.gateway.auth is not None
        stack.gateway.auth.valid.add(token_hash(f"{ADMIN_TOKEN}x"))
        async with http.post(f"{stack.url}/v1/chat/completions", headers={"Authorization": f"Bearer {ADMIN_TOKEN}x"},
                             json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status >= 500, await r.text()
        meter = stack.gateway.meter
        assert len(meter._background) == 1  # type: ignore[attr-defined]
        closing = asyncio.create_task(stack.runner.cleanup())  # what SIGTERM does to a gateway
        await asyncio.sleep(0.3)
        assert not closing.done()  # waiting for the release, not giving up on it
        [settle] = [c for c in stream_configs(1) if c.name == subjects.STREAM_SETTLE]
        await ensure_stream(stack.nc, settle)  # the stream comes back: the release lands, then close returns
        await asyncio.wait_for(closing, 10)
        info = await stack.nc.jetstream().stream_info(subjects.STREAM_SETTLE)
        assert info.state.messages == 1
    finally:
        await stack.stop()
