"""Grants end to end (real NATS, real HTTP): requests decided in the gateway against a slice of the balance are
each charged exactly what the client was told, journaled one by one with their spend event and record; policy and
token changes take effect at once; a storm cannot overspend; a grant its gateway never gives back expires charged
and flagged; the books balance throughout."""

from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator

import aiohttp
import pytest

from actors.vault.ledger_read import read_ledger
from arbstr.natsserver import NatsServer
from gateway.grant_meter import GrantMeter
from schemas import subjects
from schemas.money import cost_msat
from schemas.tokens import estimate_messages_tokens
from tests.support.stack import Stack, add_vault, demo_config, start_stack, vault_section
from tests.support.vault_helpers import admin, assert_balanced, books, new_agent, settled

MESSAGES = [{"role": "user", "content": "grant me"}]
MAX_TOKENS = 16  # the mock answers exactly min(max_tokens, 16) tokens: cost == hold


def unit() -> int:
    return cost_msat(estimate_messages_tokens(MESSAGES), MAX_TOKENS, 8000, 8000)


def config(mock_upstream: str, **vault: object):
    return demo_config(mock_upstream, vault=vault_section(**vault), providers=[
        {"name": "alpha", "url": f"{mock_upstream}/alpha/v1", "models": ["grant-model"], "input_rate": 8000,
         "output_rate": 8000, "tier": "frontier"}])


@pytest.fixture
async def stack(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Stack]:
    s = await start_stack(config(mock_upstream), fresh_nats.url)
    await add_vault(s)
    yield s
    await s.stop()


async def chat(http: aiohttp.ClientSession, stack: Stack, token: str, **extra: object) -> aiohttp.ClientResponse:
    r = await http.post(f"{stack.url}/v1/chat/completions", headers={"Authorization": f"Bearer {token}", **extra},
                        json={"model": "grant-model", "messages": MESSAGES, "max_tokens": MAX_TOKENS})
    await r.read()
    return r


def collect(into: list[dict]):  # type: ignore[no-untyped-def]
    async def cb(msg) -> None:  # type: ignore[no-untyped-def]
        into.append(json.loads(msg.data))
    return cb


def meter(stack: Stack) -> GrantMeter:
    m = stack.gateway.meter
    assert isinstance(m, GrantMeter)
    return m


async def test_requests_under_a_grant_are_each_charged_journaled_and_published(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, stack, "granted", deposit_msat=1_000_000)
        spends: list[dict] = []
        sub = await stack.nc.subscribe(subjects.spend(agent_id), cb=collect(spends))
        responses = await asyncio.gather(*(chat(http, stack, token) for _ in range(40)))
        assert [r.status for r in responses] == [200] * 40
        told = {r.headers["x-request-id"]: int(r.headers["x-arbstr-cost-msat"]) for r in responses}
        assert meter(stack).stats["local"] >= 39  # one grant, asked for by the first request
        acct = await settled(http, stack, agent_id)  # an admin read: this gateway reports and gives grants back
        assert acct["spent_msat"] == sum(told.values()) and acct["pending_msat"] == 0
        assert acct["balance_msat"] == 1_000_000 - sum(told.values())
        events = (await read_ledger(stack.nc))[agent_id]
        charged = {e.body.rid: e.body.charged_msat for e in events if e.body.kind == "settled"}
        assert charged == told  # one settle per request, under the client's request id, exactly what it was told
        assert sum(e.body.kind == "grant_drawn" for e in events) == 40
        for _ in range(100):
            if len([s for s in spends if s["kind"] == "settled"]) >= 40:
                break
            await asyncio.sleep(0.05)
        assert {s["request_id"]: s["charged_msat"] for s in spends if s["kind"] == "settled"} == told
        assert not [s for s in spends if s["request_id"].startswith("~grant:")]  # a grant given back is no spend
        await sub.unsubscribe()
        listed = await admin(http, stack, "GET", f"/v1/requests?agent={agent_id}&limit=100", expect=200)
        assert {r["request_id"] for r in listed["data"]} >= set(told)
        assert_balanced(await books(http, stack))


async def test_a_storm_under_grants_serves_exactly_what_the_balance_pays_for(stack: Stack) -> None:
    conn = aiohttp.TCPConnector(limit=500)
    async with aiohttp.ClientSession(connector=conn) as http:
        agent_id, token = await new_agent(http, stack, "storm", deposit_msat=50 * unit())
        statuses = [r.status for r in await asyncio.gather(*(chat(http, stack, token) for _ in range(400)))]
        assert statuses.count(200) == 50 and set(statuses) <= {200, 402}, {s: statuses.count(s) for s in statuses}
        acct = await settled(http, stack, agent_id)
        assert (acct["spent_msat"], acct["balance_msat"], acct["pending_msat"]) == (50 * unit(), 0, 0)
        assert_balanced(await books(http, stack))


async def test_a_policy_change_and_a_token_rotation_apply_to_the_next_request(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, stack, "ruled", deposit_msat=1_000_000)
        assert (await chat(http, stack, token)).status == 200  # a grant is open now
        await admin(http, stack, "PATCH", f"/v1/admin/agents/{agent_id}/policy", {"max_tx_msat": unit() - 1},
                    expect=200)
        r = await chat(http, stack, token)
        assert r.status == 403 and (await r.json())["error"]["code"] == "max_tx_exceeded"
        await admin(http, stack, "PATCH", f"/v1/admin/agents/{agent_id}/policy", {"max_tx_msat": None}, expect=200)
        assert (await chat(http, stack, token)).status == 200
        rotated = await admin(http, stack, "POST", f"/v1/admin/agents/{agent_id}/token", expect=200)
        r = await chat(http, stack, token)
        assert r.status == 401, await r.text()
        assert (await chat(http, stack, rotated["token"])).status == 200
        acct = await settled(http, stack, agent_id)
        assert acct["spent_msat"] == 3 * unit() and acct["pending_msat"] == 0


async def test_a_request_id_served_under_a_grant_cannot_be_used_again(stack: Stack) -> None:
    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, stack, "reuser", deposit_msat=1_000_000)
        assert (await chat(http, stack, token, **{"X-Request-Id": "mine-1"})).status == 200
        again = await chat(http, stack, token, **{"X-Request-Id": "mine-1"})
        assert again.status == 409 and (await again.json())["error"]["code"] == "request_id_reused"
        assert (await settled(http, stack, agent_id))["spent_msat"] == unit()


async def test_one_request_id_sent_at_once_by_a_new_agent_is_served_once(stack: Stack) -> None:
    # The in-flight check ran before the wait for the agent's first grant: every copy sent meanwhile passed it,
    # and each was served under the grant and charged, all under one request id.
    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, stack, "eager", deposit_msat=1_000_000)
        replies = await asyncio.gather(*(chat(http, stack, token, **{"X-Request-Id": "once-1"}) for _ in range(5)))
        statuses = sorted(r.status for r in replies)
        assert statuses == [200, 409, 409, 409, 409], statuses
        for r in replies:
            if r.status == 409:
                assert (await r.json())["error"]["code"] == "request_id_reused"
        acct = await settled(http, stack, agent_id)
        assert (acct["spent_msat"], acct["pending_msat"]) == (unit(), 0), acct
        assert_balanced(await books(http, stack))


async def test_a_grant_its_gateway_never_gives_back_expires_charged_and_flagged(
        fresh_nats: NatsServer, mock_upstream: str) -> None:
    stack = await start_stack(config(mock_upstream, hold_ttl_s=3), fresh_nats.url)
    await add_vault(stack)
    try:
        async with aiohttp.ClientSession() as http:
            agent_id, token = await new_agent(http, stack, "orphan", deposit_msat=100_000)
            assert (await chat(http, stack, token)).status == 200
            m = meter(stack)
            assert m._task is not None
            m._task.cancel()  # the gateway dies: nothing more is reported, the grant is never given back
            await asyncio.sleep(0)
            grant = next(iter(m._by_agent[agent_id].grants))
            m._by_agent.clear()
            spends: list[dict] = []
            sub = await stack.nc.subscribe(subjects.spend(agent_id), cb=collect(spends))
            for _ in range(100):
                acct = await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200)
                if acct["pending_msat"] == 0:
                    break
                await asyncio.sleep(0.1)
            # Charged as a hold is when it expires: the whole grant, the request within it included, and flagged.
            assert acct["pending_msat"] == 0 and acct["spent_msat"] == grant.amount_msat, acct
            for _ in range(100):  # spend events are published after the journal write, in batches
                if any(s["kind"] == "expired" for s in spends):
                    break
                await asyncio.sleep(0.05)
            flagged = [s for s in spends if s["kind"] == "expired"]
            assert flagged and flagged[0]["flagged"] is True and flagged[0]["charged_msat"] >= grant.amount_msat - unit()
            await sub.unsubscribe()
            assert_balanced(await books(http, stack))
    finally:
        await stack.stop()


async def test_with_grants_off_every_request_is_reserved_at_the_vault(fresh_nats: NatsServer,
                                                                      mock_upstream: str) -> None:
    stack = await start_stack(config(mock_upstream, grants={"enabled": False}), fresh_nats.url)
    await add_vault(stack)
    try:
        async with aiohttp.ClientSession() as http:
            agent_id, token = await new_agent(http, stack, "strict", deposit_msat=100_000)
            assert (await chat(http, stack, token)).status == 200
            assert not isinstance(stack.gateway.meter, GrantMeter)
            kinds = [e.body.kind for e in (await read_ledger(stack.nc))[agent_id]]
            assert "reserved" in kinds and "grant_drawn" not in kinds
    finally:
        await stack.stop()


async def test_what_an_idle_grant_holds_can_be_withdrawn_at_once(stack: Stack) -> None:
    from actors.vault.wallets.simulated import make_invoice
    from tests.support.vault_helpers import payout_outcome

    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, stack, "leaver", deposit_msat=100_000)
        assert (await chat(http, stack, token)).status == 200  # a grant now holds half of the balance
        bolt11, _, _ = make_invoice(60_000)
        r = await http.post(f"{stack.url}/v1/vault/me/withdrawals", json={"bolt11": bolt11},
                            headers={"Authorization": f"Bearer {token}"})
        status, p = await payout_outcome(http, stack, token, r.status, await r.json())
        assert status == 200 and p["status"] == "succeeded", p
        acct = await settled(http, stack, agent_id)
        assert acct["spent_msat"] == unit() and acct["withdrawn_msat"] == p["charged_msat"]
        assert_balanced(await books(http, stack))


async def test_the_grants_of_many_agents_in_one_partition_are_reported_in_one_message(
        fresh_nats: NatsServer, mock_upstream: str) -> None:
    # A gateway's report tick costs one message per partition, however many agents it serves there. (Reports wait
    # for a read here, so that every agent has something to report in the same tick.)
    from schemas import exchanges
    from schemas.grants import GrantReports

    stack = await start_stack(config(mock_upstream, grants={"report_interval_s": 10, "report_batch": 4096}),
                              fresh_nats.url)
    await add_vault(stack)
    try:
        async with aiohttp.ClientSession() as http:
            by_partition: dict[int, list[tuple[str, str]]] = {}
            for n in range(64):  # agents until two share a partition (a grant open for each names its partition)
                agent_id, token = await new_agent(http, stack, f"crowd{n}", deposit_msat=1_000_000)
                assert (await chat(http, stack, token)).status == 200
                by_partition.setdefault(meter(stack)._by_agent[agent_id].grants[-1].partition, []).append(
                    (agent_id, token))
                if max(len(v) for v in by_partition.values()) >= 3:
                    break
            k, crowd = max(by_partition.items(), key=lambda kv: len(kv[1]))
            assert len(crowd) >= 2, by_partition
            seen: list[GrantReports] = []

            async def cb(msg) -> None:  # type: ignore[no-untyped-def]
                seen.append(GrantReports.model_validate_json(msg.data))

            sub = await stack.nc.subscribe(exchanges.GRANT_USAGE.on_partition(k), cb=cb)
            responses = await asyncio.gather(*(chat(http, stack, token) for _, token in crowd for _ in range(20)))
            assert {r.status for r in responses} == {200}
            for agent_id, _ in crowd:
                acct = await settled(http, stack, agent_id)
                assert acct["spent_msat"] == 21 * unit() and acct["pending_msat"] == 0, acct
            await sub.unsubscribe()
            assert any(len({r.agent_id for r in m.reports}) >= 2 for m in seen), [len(m.reports) for m in seen]
            reported = [item.request_id for m in seen for r in m.reports for item in r.items]
            assert len(reported) == len(set(reported)) >= 20 * len(crowd)  # each request once, none lost
            assert_balanced(await books(http, stack))
    finally:
        await stack.stop()


def test_a_report_of_one_grant_from_an_older_gateway_is_still_read() -> None:
    from schemas.grants import GrantReports

    old = '{"grant_id": "g1234567890", "agent_id": "agt_1", "items": [], "close": true}'
    reports = GrantReports.model_validate_json(old)
    assert [(r.grant_id, r.close) for r in reports.reports] == [("g1234567890", True)]
    assert list(json.loads(reports.model_dump_json())) == ["reports"]  # read, never written


def test_a_report_is_one_shape_or_the_other_and_never_empty() -> None:
    from pydantic import ValidationError

    from schemas.grants import GrantReports

    one = {"grant_id": "g1234567890", "agent_id": "agt_1", "items": []}
    for body in ({}, {"reports": []}, {"grant_id": "g1234567890", "items": []},
                 {"reports": [one], **one}):
        with pytest.raises(ValidationError):
            GrantReports.model_validate(body)
