"""Concurrency storms and crash windows against one balance, served by several vault instances."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
import pytest

from actors.vault.fold import fold, view
from actors.vault.ledger_read import read_ledger
from arbstr.natsserver import NatsServer
from schemas.money import cost_msat
from schemas.tokens import estimate_messages_tokens
from tests.support.stack import Stack, add_vault, demo_config, start_stack, vault_section
from tests.support.waiting import eventually
from tests.support.vault_helpers import admin, assert_balanced, books, new_agent, settled

pytestmark = pytest.mark.slow

MESSAGES = [{"role": "user", "content": "storm"}]
MAX_TOKENS = 16  # the mock answers exactly min(max_tokens, 16) tokens: actual cost == hold


def storm_config(mock_upstream: str, **vault: object):
    # One provider serves the storm model, so the hold's rates are the settle's rates, to the msat.
    return demo_config(mock_upstream, vault=vault_section(**vault), providers=[
        {"name": "alpha", "url": f"{mock_upstream}/alpha/v1", "models": ["storm-model"], "input_rate": 8000,
         "output_rate": 8000, "tier": "frontier"}])


def one_request_msat() -> int:
    return cost_msat(estimate_messages_tokens(MESSAGES), MAX_TOKENS, 8000, 8000)


async def assert_replay_equals_live(stack: Stack, actors: list) -> None:
    """Replaying the stream from sequence 1 gives exactly the live state of every instance."""
    replay = await read_ledger(stack.nc)
    for agent_id, events in replay.items():
        replayed = view(fold(events))
        for actor in actors:
            await actor._caught_up()
            assert view(actor.book.state(agent_id)) == replayed


@pytest.fixture
async def stack(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Stack]:
    s = await start_stack(storm_config(mock_upstream), fresh_nats.url)
    s.vaults = await add_vault(s, instances=2)  # type: ignore[attr-defined]
    yield s
    await s.stop()


async def test_storm_of_1000_against_a_balance_for_100(stack: Stack) -> None:
    conn = aiohttp.TCPConnector(limit=1000)
    async with aiohttp.ClientSession(connector=conn) as http:
        unit = one_request_msat()
        agent_id, token = await new_agent(http, stack, "storm", deposit_msat=100 * unit)

        async def one() -> int:
            r = await http.post(f"{stack.url}/v1/chat/completions",
                                json={"model": "storm-model", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
                                headers={"Authorization": f"Bearer {token}"})
            await r.read()
            if r.status == 200:
                assert int(r.headers["x-arbstr-cost-msat"]) == unit
            return r.status

        statuses = await asyncio.gather(*(one() for _ in range(1000)))
        assert statuses.count(200) == 100, {s: statuses.count(s) for s in set(statuses)}
        assert set(statuses) <= {200, 402}
        acct = await settled(http, stack, agent_id)
        assert acct["spent_msat"] == 100 * unit and acct["balance_msat"] == 0 and acct["pending_msat"] == 0
        assert_balanced(await books(http, stack))
        await assert_replay_equals_live(stack, stack.vaults)  # type: ignore[attr-defined]
        # the partitions are shared out, and group commit really put many commands into each journal message
        stats = [v.stats() for v in stack.vaults]  # type: ignore[attr-defined]
        assert sum(s["partitions"] for s in stats) == 16 and all(s["partitions"] > 0 for s in stats), stats
        assert sum(s["journaled"] for s in stats) > 2 * sum(s["batches"] for s in stats), stats


async def test_duplicate_settle_commands_charge_once(stack: Stack) -> None:
    from schemas import subjects
    from schemas.vault import SettleCommand

    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, stack, "dup", deposit_msat=1_000_000)
        r = await http.post(f"{stack.url}/v1/chat/completions",
                            json={"model": "storm-model", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
                            headers={"Authorization": f"Bearer {token}", "X-Request-Id": "dup-1"})
        assert r.status == 200
        await settled(http, stack, agent_id)
        js = stack.nc.jetstream()
        again = SettleCommand(kind="settle", request_id="dup-1", agent_id=agent_id, cost_msat=999_999)
        for i in range(5):  # redeliveries that escaped the dedup window (new msg ids)
            await js.publish(subjects.settle_command(agent_id), again.model_dump_json().encode(),
                             headers={"Nats-Msg-Id": f"replay-{i}"})
        release = SettleCommand(kind="release", request_id="dup-1", agent_id=agent_id)
        await js.publish(subjects.settle_command(agent_id), release.model_dump_json().encode())
        await asyncio.sleep(0.5)
        acct = await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200)
        assert acct["spent_msat"] == one_request_msat()
        assert_balanced(await books(http, stack))


async def test_release_before_a_late_reserve_refuses_it(stack: Stack) -> None:
    """A gateway whose reserve timed out releases the rid; the buffered reserve arriving later is refused."""
    from schemas import subjects
    from schemas.errors import ArbstrError
    from schemas.router import Envelope
    from schemas.vault import ReserveReply, ReserveRequest, SettleCommand
    from gateway.bus import Bus
    from gateway.vault_meter import token_hash

    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, stack, "late", deposit_msat=1_000_000)
        js = stack.nc.jetstream()
        rel = SettleCommand(kind="release", request_id="late-1", token_hash=token_hash(token), reason="timeout")
        await js.publish(subjects.settle_command("anon"), rel.model_dump_json().encode())

        async def consumed() -> bool:  # the work queue drops a command once the journal has it
            return (await js.stream_info(subjects.STREAM_SETTLE)).state.messages == 0

        await eventually(consumed, 10, "the release taken from the work queue")
        bus = Bus(stack.nc, 2.0)
        env = Envelope(input_tokens=10, output_tokens=10, input_rate=8000, output_rate=8000, max_output_tokens=100)
        with pytest.raises(ArbstrError) as e:
            await bus.call(subjects.VAULT_RESERVE, ReserveRequest(request_id="late-1", token_hash=token_hash(token),
                                                                 envelope=env), ReserveReply)
        assert e.value.status == 409 and e.value.code == "request_released"
        acct = await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200)
        assert acct["balance_msat"] == 1_000_000


async def test_vault_restart_mid_storm_loses_nothing(fresh_nats: NatsServer, mock_upstream: str) -> None:
    stack = await start_stack(storm_config(mock_upstream), fresh_nats.url)
    vaults = await add_vault(stack, instances=2)
    try:
        conn = aiohttp.TCPConnector(limit=300)
        async with aiohttp.ClientSession(connector=conn) as http:
            unit = one_request_msat()
            agent_id, token = await new_agent(http, stack, "restart", deposit_msat=150 * unit)

            async def one() -> int:
                r = await http.post(f"{stack.url}/v1/chat/completions",
                                    json={"model": "storm-model", "messages": MESSAGES, "max_tokens": MAX_TOKENS},
                                    headers={"Authorization": f"Bearer {token}"})
                await r.read()
                return r.status

            async def bounce() -> None:
                await asyncio.sleep(0.05)
                host = next(h for h in stack.hosts if h.actor is vaults[0])
                await host.stop(grace_s=0)  # abrupt: in-flight replies may be lost
                stack.hosts.remove(host)
                more = await add_vault(stack)  # a fresh instance folds the stream from sequence 1
                vaults[0] = more[0]

            results = await asyncio.gather(bounce(), *(one() for _ in range(300)))
            statuses = list(results[1:])
            ok = statuses.count(200)
            acct = await settled(http, stack, agent_id, timeout_s=30)
            # every request that succeeded was charged exactly once; nothing else was
            assert acct["spent_msat"] == ok * unit, (ok, acct, {s: statuses.count(s) for s in set(statuses)})
            assert acct["pending_msat"] == 0
            assert_balanced(await books(http, stack))
            await assert_replay_equals_live(stack, vaults)
    finally:
        await stack.stop()
