"""Hold timers: a hold nobody settles is expired by its owner's timer (in memory, no journal write of its own)."""

from __future__ import annotations

import asyncio

import aiohttp

from arbstr.natsserver import NatsServer
from gateway.bus import Bus
from gateway.vault_meter import token_hash
from schemas import subjects
from schemas.router import Envelope
from schemas.vault import ReserveReply, ReserveRequest, SpendEvent
from tests.support.stack import add_vault, demo_config, start_stack, vault_section
from tests.support.vault_helpers import admin, assert_balanced, books, new_agent


async def test_the_owners_timer_expires_an_abandoned_hold(fresh_nats: NatsServer, mock_upstream: str) -> None:
    # Two instances: whichever owns the agent's partition has the timer, and it fires once.
    config = demo_config(mock_upstream, vault=vault_section(hold_ttl_s=1, sweep_interval_s=3600))
    stack = await start_stack(config, fresh_nats.url)
    await add_vault(stack, instances=2)
    try:
        async with aiohttp.ClientSession() as http:
            agent_id, token = await new_agent(http, stack, "abandoned", deposit_msat=1_000_000)
            events: list[SpendEvent] = []

            async def on_msg(msg) -> None:  # type: ignore[no-untyped-def]
                events.append(SpendEvent.model_validate_json(msg.data))

            sub = await stack.nc.subscribe(subjects.spend(agent_id), cb=on_msg)
            env = Envelope(input_tokens=100, output_tokens=100, input_rate=8000, output_rate=8000,
                           max_output_tokens=100)
            hold = await Bus(stack.nc, 2.0).call(
                subjects.VAULT_RESERVE, ReserveRequest(request_id="gone-1", token_hash=token_hash(token),
                                                       envelope=env), ReserveReply)
            # a gateway that reserved and died: no settle, no release
            for _ in range(60):
                acct = await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200)
                if acct["pending_msat"] == 0:
                    break
                await asyncio.sleep(0.1)
            assert acct["pending_msat"] == 0 and acct["spent_msat"] == hold.amount_msat  # charged once, flagged
            for _ in range(100):  # spend events are published after the journal write, in batches
                if events:
                    break
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)  # and no second one
            await sub.unsubscribe()
            assert [(e.kind, e.flagged, e.request_id) for e in events] == [("expired", True, "gone-1")]
            assert_balanced(await books(http, stack))
    finally:
        await stack.stop()
