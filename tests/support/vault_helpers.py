"""Helpers of the paid-mode tests: admin calls over real HTTP, the books check, and a vault with an injected
wallet that tests start and stop (the rails' tests)."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from typing import Any, AsyncIterator, Callable, Optional

import aiohttp

from tests.support.stack import ADMIN_TOKEN, Stack, demo_config, start_stack, vault_section

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


async def admin(http: aiohttp.ClientSession, stack: Stack, method: str, path: str,
                json: Optional[dict[str, Any]] = None, expect: int | None = None) -> Any:
    r = await http.request(method, f"{stack.url}{path}", json=json, headers=ADMIN)
    body = await r.json()
    if expect is not None:
        assert r.status == expect, (r.status, body)
    return body


async def new_agent(http: aiohttp.ClientSession, stack: Stack, name: str, deposit_msat: int = 0,
                    policy: Optional[dict[str, Any]] = None) -> tuple[str, str]:
    body = {"name": name}
    if policy is not None:
        body["policy"] = policy
    created = await admin(http, stack, "POST", "/v1/admin/agents", body, expect=201)
    if deposit_msat:
        await admin(http, stack, "POST", f"/v1/admin/agents/{created['agent_id']}/deposits",
                    {"amount_msat": deposit_msat}, expect=201)
    return created["agent_id"], created["token"]


async def books(http: aiohttp.ClientSession, stack: Stack) -> dict[str, Any]:
    return await admin(http, stack, "GET", "/v1/admin/books", expect=200)


async def settled(http: aiohttp.ClientSession, stack: Stack, agent_id: str, timeout_s: float = 10.0
                  ) -> dict[str, Any]:
    """The agent's account once no hold is pending (settles are asynchronous)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        acct = await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200)
        if acct["pending_msat"] == 0 or asyncio.get_running_loop().time() > deadline:
            return acct
        await asyncio.sleep(0.05)


def assert_balanced(b: dict[str, Any]) -> None:
    assert b["balanced"] is True, b
    assert b["projection_agrees"] is True, b
    assert b["deposits_msat"] - b["withdrawals_msat"] == b["balances_msat"] + b["pending_msat"] + b["spent_msat"], b


async def reconciled(http: aiohttp.ClientSession, stack: Stack, exact: bool = False) -> dict[str, Any]:
    """Books balanced and reconciliation clean (``exact``: the wallet holds no more than the books owe)."""
    assert_balanced(await books(http, stack))
    rec = await admin(http, stack, "GET", "/v1/admin/reconcile", expect=200)
    assert rec["ok"] is True and (rec["surplus_msat"] == 0 if exact else rec["surplus_msat"] >= 0), rec
    return rec


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


class Rig:
    """A stack plus one vault instance on its own connection (like a process), with the wallet the test injects."""

    def __init__(self, stack: Stack, wallet: Any) -> None:
        self.stack = stack
        self.wallet = wallet
        self.host: Any = None
        self.actor: Any = None

    async def start_vault(self) -> Any:
        import nats

        from actors.runtime.host import ActorHost
        from actors.vault.actor import VaultActor
        nc = await nats.connect(self.stack.nc.connected_url.geturl())  # type: ignore[union-attr]
        self.actor = VaultActor(self.stack.config, wallet=self.wallet)
        self.host = ActorHost(self.actor, nc)
        await self.host.start()
        self.stack.extra_connections.append(nc)
        return self.actor

    async def stop_vault(self) -> None:
        assert self.host is not None
        await self.host.stop()
        self.host = None


async def post(http: aiohttp.ClientSession, rig: Rig, path: str, token: str, body: dict[str, Any]
               ) -> tuple[int, Any]:
    r = await http.post(f"{rig.stack.url}{path}", json=body, headers=bearer(token))
    return r.status, await r.json()


async def me(http: aiohttp.ClientSession, rig: Rig, token: str) -> dict[str, Any]:
    """The agent's account; {} while a just-restarted vault is not reachable yet (the polls retry)."""
    r = await http.get(f"{rig.stack.url}/v1/vault/me", headers=bearer(token))
    body = await r.json()
    return body if r.status == 200 else {}


async def payout_outcome(http: aiohttp.ClientSession, stack: Stack, token: str, status: int, view: Any,
                         timeout_s: float = 30.0) -> tuple[int, Any]:
    """The outcome of a withdrawal, not of a deadline: a 202 "pending" (the rail outlasted ``pay_wait_s``, as it
    does on a loaded machine) is followed until the payout is final, then reported as the 200 it would have been."""
    if status != 202 or not isinstance(view, dict) or view.get("status") != "pending":
        return status, view
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        r = await http.get(f"{stack.url}/v1/vault/me/withdrawals/{view['payout_id']}", headers=bearer(token))
        view = await r.json()
        if r.status != 200 or view.get("status") != "pending":
            return r.status, view
        assert asyncio.get_running_loop().time() < deadline, f"payout still pending after {timeout_s} s: {view}"
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def vault_rig(nats_url: str, mock_upstream: str, wallet_config: dict[str, Any],
                    make_rig: Callable[[Stack], Any]) -> AsyncIterator[Any]:
    """A paid stack whose vault runs the wallet the test holds — ``make_rig(stack)`` (or its awaitable) is the
    ``Rig`` that carries it; ``wallet_config``: the ``[vault.wallet]`` keys — started and stopped around the test."""
    stack = await start_stack(demo_config(mock_upstream, vault=vault_section(wallet=wallet_config)), nats_url)
    r = make_rig(stack)
    if inspect.isawaitable(r):
        r = await r
    await r.start_vault()
    try:
        yield r
    finally:
        if r.host is not None:
            await r.stop_vault()
        await stack.stop()


@contextlib.asynccontextmanager
async def simulated_rig(nats_url: str, mock_upstream: str, **wallet: Any) -> AsyncIterator["Rig"]:
    """A paid stack whose vault runs the simulated wallet the test holds (fee limit 500 msat flat), started and
    stopped around the test; ``wallet``: more ``[vault.wallet]`` keys."""
    from actors.vault.wallets.simulated import SimulatedWallet

    config = {"pay_wait_s": 0.5, "check_interval_s": 0.2, "fee_limit_min_msat": 500, "fee_limit_ppm": 0, **wallet}
    async with vault_rig(nats_url, mock_upstream, config,
                         lambda stack: Rig(stack, SimulatedWallet(fee_limit_ppm=0, fee_limit_min_msat=500))) as r:
        yield r
