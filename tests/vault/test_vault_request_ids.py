"""A failed request does not burn its X-Request-Id (issue 12): over real HTTP, a real vault and a real nats-server.

A request whose hold was released (502, nothing charged) may be retried with the same id; a request that was
charged, or is still in flight, keeps answering 409. A reserve the gateway gave up on and released is refused if
NATS delivers it late — per attempt, so the client's retry of that id is not.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from gateway.bus import Bus
from schemas import subjects
from schemas.errors import ArbstrError
from schemas.router import Envelope
from schemas.vault import Empty, ReserveReply, ReserveRequest, SettleCommand
from tests.support.stack import Stack, add_vault, demo_config, start_stack, vault_section
from tests.vault.test_vault_storm import assert_replay_equals_live
from tests.support.vault_helpers import assert_balanced, bearer, books, new_agent, settled
from tests.support.waiting import eventually
from gateway.vault_meter import token_hash

# Providers of this file's own: faults set on them cannot leak into other tests sharing the mock upstream.
PROVIDERS = ("rid-a", "rid-b")


@pytest.fixture
async def stack(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Stack]:
    providers = [{"name": name, "url": f"{mock_upstream}/{name}/v1", "models": ["gpt-4o-mini"], "input_rate": rate,
                  "output_rate": rate, "tier": "frontier", "connect_timeout_s": 2, "first_byte_timeout_s": 5}
                 for name, rate in zip(PROVIDERS, (8000, 9000))]
    s = await start_stack(demo_config(mock_upstream, vault=vault_section(), providers=providers, policies=[]),
                          fresh_nats.url)
    s.vaults = await add_vault(s)  # type: ignore[attr-defined]
    yield s
    async with aiohttp.ClientSession() as h:
        for p in PROVIDERS:
            await h.delete(f"{mock_upstream}/_mock/{p}/faults")
    await s.stop()


async def chat(http: aiohttp.ClientSession, stack: Stack, token: str, rid: str) -> tuple[int, Any]:
    r = await http.post(f"{stack.url}/v1/chat/completions", headers={**bearer(token), "X-Request-Id": rid},
                        json={"model": "gpt-4o-mini", "max_tokens": 8,
                              "messages": [{"role": "user", "content": "Say something short"}]})
    return r.status, await r.json()


async def upstream_requests(http: aiohttp.ClientSession, mock_upstream: str) -> int:
    stats = await (await http.get(f"{mock_upstream}/_mock/stats")).json()
    return sum(int(p["requests"]) for p in stats.values())


async def fail_next(http: aiohttp.ClientSession, mock_upstream: str, fault: dict[str, Any]) -> None:
    for p in PROVIDERS:
        r = await http.post(f"{mock_upstream}/_mock/{p}/faults", json={**fault, "count": 1})
        assert r.status == 200


async def test_a_failed_request_can_be_retried_with_its_request_id(http, stack, mock_upstream) -> None:
    agent_id, token = await new_agent(http, stack, "retrier", deposit_msat=1_000_000)
    await fail_next(http, mock_upstream, {"status": 500})
    status, body = await chat(http, stack, token, "task-42")
    assert status == 502, body
    # Straight away, as a client's retry would: the release was journaled before the 502 went out.
    status, body = await chat(http, stack, token, "task-42")
    assert status == 200, body
    acct = await settled(http, stack, agent_id)
    assert acct["spent_msat"] > 0 and acct["pending_msat"] == 0
    # Charged now: the id is used up, for this agent.
    status, body = await chat(http, stack, token, "task-42")
    assert (status, body["error"]["code"]) == (409, "request_id_reused")
    assert (await settled(http, stack, agent_id))["spent_msat"] == acct["spent_msat"]  # charged once
    assert_balanced(await books(http, stack))
    await assert_replay_equals_live(stack, stack.vaults)  # type: ignore[attr-defined]


async def test_a_request_id_in_flight_is_409(http, stack, mock_upstream) -> None:
    agent_id, token = await new_agent(http, stack, "impatient", deposit_msat=1_000_000)
    await fail_next(http, mock_upstream, {"delay_ms": 3_000})
    before = await upstream_requests(http, mock_upstream)
    first = asyncio.create_task(chat(http, stack, token, "slow-1"))

    async def reserved() -> bool:  # the upstream is called only once the hold is taken
        return await upstream_requests(http, mock_upstream) > before

    await eventually(reserved, 10, "the first request reserved and waiting on the slow upstream")
    status, body = await chat(http, stack, token, "slow-1")
    assert (status, body["error"]["code"]) == (409, "request_id_reused")
    status, body = await first
    assert status == 200, body
    await settled(http, stack, agent_id)
    assert_balanced(await books(http, stack))


async def test_a_late_reserve_of_a_released_attempt_is_refused_but_a_retry_is_not(http, stack) -> None:
    """What a gateway does when its reserve times out: it releases that attempt. The buffered reserve, delivered
    afterwards, must hold nothing; the client's retry of the id (a new attempt) must hold."""
    agent_id, token = await new_agent(http, stack, "unlucky", deposit_msat=1_000_000)
    bus = Bus(stack.nc, 5.0)
    envelope = Envelope(input_tokens=10, output_tokens=10, input_rate=8000, output_rate=8000, max_output_tokens=100)

    def reserve(attempt: str) -> ReserveRequest:
        return ReserveRequest(request_id="late-1", token_hash=token_hash(token), envelope=envelope,
                              attempt=attempt)

    await bus.call(subjects.VAULT_RELEASE, SettleCommand(kind="release", request_id="late-1", attempt="a1",
                                                         agent_id=agent_id, reason="reserve failed"), Empty)
    with pytest.raises(ArbstrError) as refused:
        await bus.call(subjects.VAULT_RESERVE, reserve("a1"), ReserveReply)
    assert (refused.value.status, refused.value.code) == (409, "request_released")
    held = await bus.call(subjects.VAULT_RESERVE, reserve("a2"), ReserveReply)
    assert held.amount_msat > 0 and held.state == "held"
    # The same attempt delivered twice is one reserve, answered from its hold.
    again = await bus.call(subjects.VAULT_RESERVE, reserve("a2"), ReserveReply)
    assert (again.amount_msat, again.expires_at_ms) == (held.amount_msat, held.expires_at_ms)
    await bus.call(subjects.VAULT_RELEASE, SettleCommand(kind="release", request_id="late-1", attempt="a2",
                                                         agent_id=agent_id), Empty)
    acct = await settled(http, stack, agent_id)
    assert (acct["balance_msat"], acct["spent_msat"]) == (1_000_000, 0)
    assert_balanced(await books(http, stack))
    await assert_replay_equals_live(stack, stack.vaults)  # type: ignore[attr-defined]
