"""The reconciliation watchdog's own timer: nobody calls /v1/admin/reconcile, yet a shortfall closes the vault
within a few intervals, and a wallet that fails to report once does not stop the loop."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from tests.support.stack import ADMIN_TOKEN
from tests.support.waiting import eventually
from tests.vault.test_vault_rails import funded_by_invoice
from tests.support.vault_helpers import Rig, bearer, simulated_rig

INTERVAL_S = 0.2


@pytest.fixture
async def rig(fresh_nats: NatsServer, mock_upstream: str) -> AsyncIterator[Rig]:
    async with simulated_rig(fresh_nats.url, mock_upstream, reconcile_interval_s=INTERVAL_S) as r:
        yield r


async def test_the_watchdog_closes_the_vault_on_its_own_timer(http: aiohttp.ClientSession, rig: Rig) -> None:
    _, token = await funded_by_invoice(http, rig, "wanda", 10_000)
    freeze = rig.actor.rails.freeze
    wallet: Any = rig.wallet

    # The loop survives a wallet that cannot report: it is called again on the next tick.
    calls = 0
    real = wallet.assets_msat

    async def failing() -> int:
        nonlocal calls
        calls += 1
        raise ConnectionError("wallet unreachable")
    wallet.assets_msat = failing

    async def ticked_twice() -> bool:
        return calls >= 2
    await eventually(ticked_twice, timeout_s=20 * INTERVAL_S + 5)
    assert freeze.state.frozen is False  # an unreadable wallet is no shortfall
    wallet.assets_msat = real

    # Books whole: several ticks later the vault is still open.
    await asyncio.sleep(3 * INTERVAL_S)
    assert freeze.state.frozen is False

    # An asset goes missing: the watchdog (not an operator's reconcile) closes the vault.
    wallet.balance_msat -= 1

    async def closed() -> bool:
        return freeze.state.frozen
    await eventually(closed, timeout_s=20 * INTERVAL_S + 5)
    assert freeze.state.by == "watchdog" and freeze.state.shortfall_msat == 1
    r = await http.post(f"{rig.stack.url}/v1/chat/completions", headers=bearer(token),
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    assert (r.status, (await r.json())["error"]["code"]) == (503, "vault_frozen")

    wallet.balance_msat += 1
    r = await http.post(f"{rig.stack.url}/v1/admin/reconcile/clear", headers=bearer(ADMIN_TOKEN))
    assert r.status == 200, await r.text()
