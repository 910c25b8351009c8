"""Totals beyond 64 bits (issue 12): a deposit that would take an account or the vault past all the bitcoin there
is (2.1e18 msat) is refused before it is journaled, and every report answers even for a journal that went past
2^64 before the bound existed. Real HTTP, a real vault, a real nats-server."""

from __future__ import annotations

from typing import Any, AsyncIterator

import pytest

from actors.vault.actor import VaultActor
from actors.vault.decide import Decided
from arbstr.natsserver import NatsServer
from schemas.ledger import Deposited
from schemas.money import MAX_MSAT
from tests.support.stack import Stack, add_vault, demo_config, start_stack, vault_section
from tests.vault.test_vault_storm import assert_replay_equals_live
from tests.support.vault_helpers import ADMIN, admin, assert_balanced, bearer, books, new_agent

REPORTS = ("/v1/admin/books", "/v1/admin/agents", "/v1/admin/reconcile", "/v1/admin/audit", "/v1/admin/payouts",
           "/v1/admin/approvals", "/v1/stats", "/v1/requests")


@pytest.fixture
async def stack(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[tuple[Stack, VaultActor]]:
    s = await start_stack(demo_config(mock_upstream, vault=vault_section()), fresh_nats.url)
    (actor,) = await add_vault(s)
    yield s, actor
    await s.stop()


async def every_report(http: Any, stack: Stack, agent_id: str, token: str) -> dict[str, Any]:
    out = {}
    for path in REPORTS + (f"/v1/admin/agents/{agent_id}",):
        r = await http.get(f"{stack.url}{path}", headers=ADMIN)
        assert r.status == 200, (path, r.status, await r.text())
        out[path] = await r.json()
    for path in ("/v1/vault/me", "/v1/vault/me/history", "/v1/vault/me/withdrawals"):
        r = await http.get(f"{stack.url}{path}", headers=bearer(token))
        assert r.status == 200, (path, r.status, await r.text())
        out[path] = await r.json()
    return out


async def test_a_deposit_past_all_bitcoin_is_refused_before_it_is_journaled(http, stack) -> None:
    stack, actor = stack
    a_id, a_tok = await new_agent(http, stack, "whale")
    b_id, _ = await new_agent(http, stack, "orca")
    big = 2_100_000_000_000_000_000
    await admin(http, stack, "POST", f"/v1/admin/agents/{a_id}/deposits", {"amount_msat": big}, expect=201)
    for agent_id in (a_id, b_id):  # the account's bound, then the vault's
        for _ in range(8):
            r = await http.post(f"{stack.url}/v1/admin/agents/{agent_id}/deposits", json={"amount_msat": big},
                                headers=ADMIN)
            body = await r.json()
            assert (r.status, body["error"]["code"]) == (409, "deposit_limit_exceeded"), body
    r = await http.post(f"{stack.url}/v1/admin/agents/{b_id}/deposits", json={"amount_msat": 1}, headers=ADMIN)
    assert r.status == 409  # the vault holds all the bitcoin there is already
    reports = await every_report(http, stack, a_id, a_tok)
    b = reports["/v1/admin/books"]
    assert b["deposits_msat"] == MAX_MSAT
    assert_balanced(b)
    audit = reports["/v1/admin/audit"]["data"]
    assert [i["kind"] for i in audit].count("deposited") == 1  # nothing refused was journaled
    await assert_replay_equals_live(stack, [actor])


async def test_every_report_answers_for_totals_beyond_64_bits(http, stack) -> None:
    """Nine deposits of 2.1e18 journaled as an older vault (no bound) would have: 1.89e19 > 2^64."""
    stack, actor = stack
    a_id, a_tok = await new_agent(http, stack, "legacy")
    for i in range(9):
        body = Deposited(deposit_id=f"old-{i}", amount_msat=MAX_MSAT, rail="simulated")
        await actor.execute(a_id, lambda s, at, body=body: Decided(f"deposit:{body.deposit_id}", (body,)))
    reports = await every_report(http, stack, a_id, a_tok)
    assert reports["/v1/vault/me"]["deposited_msat"] == 9 * MAX_MSAT > 2**64
    b = reports["/v1/admin/books"]
    assert b["deposits_msat"] == 9 * MAX_MSAT
    assert_balanced(b)  # the DuckDB projection sums past 2^64 too
    assert reports["/v1/admin/reconcile"]["liabilities_msat"] == 9 * MAX_MSAT
    assert (await books(http, stack))["balanced"] is True
    await assert_replay_equals_live(stack, [actor])
