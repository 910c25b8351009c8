"""Crash windows of paid mode, on a real nats-server.

1. A gateway dies right after its reserve (no settle, no release): the hold's timer (a TTL marker on
   ARBSTR_HOLDS) or the periodic sweep resolves it at its TTL, exactly once even with two instances consuming
   markers and sweeping, charges-and-flags it (or releases it, if so configured) and publishes one spend event.
2. The vault, a real ``arbstr run vault`` process, is killed with SIGKILL in the middle of a storm of paid
   requests and started again: every request that succeeded is charged exactly once, nothing else is, no hold
   outlives its TTL, the books balance and a replay from sequence 1 equals the live state.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, AsyncIterator, Optional

import aiohttp
import nats
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

from actors.runtime.connection import flush_in_order
from actors.runtime.host import ActorHost
from actors.vault.actor import VaultActor
from actors.vault.fold import fold, view
from actors.vault.ledger_read import read_ledger, verify_ledger
from arbstr.natsserver import NatsServer
from gateway.bus import Bus
from schemas import subjects
from schemas.config import Config, parse_config
from schemas.errors import ArbstrError
from schemas.ledger import Expired
from schemas.money import cost_msat
from schemas.router import Envelope
from schemas.tokens import estimate_messages_tokens
from schemas.vault import (AccountView, AgentPolicy, Books, ChainCheck, CreateAgent, DepositCommand, Empty, ReserveReply,
                           ReserveRequest, SpendEvent)
from tests.support.stack import ADMIN_TOKEN, demo_config, start_stack, vault_section
from tests.support.vault_helpers import admin, assert_balanced, books, new_agent
from tests.support.waiting import eventually

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RATE = 1_000_000  # 1,000 msat per token


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# --- 1. the gateway dies after its reserve ------------------------------------------------------------------

class Vaults:
    """Vault instances in this process, each on its own connection (as separate processes would be)."""

    def __init__(self, url: str, config: Config) -> None:
        self.url = url
        self.config = config
        self.actors: list[VaultActor] = []
        self.hosts: list[ActorHost] = []
        self.conns: list[NATS] = []

    async def start(self, n: int) -> "Vaults":
        for _ in range(n):
            nc = await nats.connect(self.url)
            actor = VaultActor(self.config)
            host = ActorHost(actor, nc)
            await host.start()
            self.actors.append(actor)
            self.hosts.append(host)
            self.conns.append(nc)
        return self

    async def caught_up(self, nc: NATS) -> None:
        for a in self.actors:
            await a._caught_up()

    async def stop(self) -> None:
        await asyncio.gather(*(h.stop(grace_s=1) for h in self.hosts))
        for nc in self.conns:
            await nc.close()


@pytest.fixture
async def client(fresh_nats: NatsServer) -> AsyncIterator[NATS]:
    nc = await nats.connect(fresh_nats.url)
    yield nc
    await nc.close()


async def funded_agent(bus: Bus, vaults: Vaults, name: str, deposit_msat: int) -> tuple[str, str]:
    token = f"arb_{name}_token"
    acct = await bus.call(subjects.vault_admin("create_agent"),
                          CreateAgent(name=name, token_hash=token_hash(token), policy=AgentPolicy()), AccountView,
                          admin_token=ADMIN_TOKEN)
    await vaults.caught_up(bus.nc)  # every instance knows the agent before it is used
    await bus.call(subjects.vault_admin("deposit"),
                   DepositCommand(agent_id=acct.agent_id, amount_msat=deposit_msat, deposit_id="d1"), AccountView,
                   admin_token=ADMIN_TOKEN)
    await vaults.caught_up(bus.nc)
    return acct.agent_id, token


async def reserve(bus: Bus, token: str, rid: str, inp: int = 2, out: int = 8) -> ReserveReply:
    env = Envelope(input_tokens=inp, output_tokens=out, input_rate=RATE, output_rate=RATE, max_output_tokens=out)
    return await bus.call(subjects.VAULT_RESERVE, ReserveRequest(request_id=rid, token_hash=token_hash(token),
                                                                 envelope=env, provider="alpha", model="m"),
                          ReserveReply)


async def assert_replay_equals_live(nc: NATS, vaults: Vaults) -> dict[str, Any]:
    await vaults.caught_up(nc)
    replay = await read_ledger(nc)
    assert (await verify_ledger(nc)).ok
    for agent_id, events in replay.items():
        replayed = fold(events)
        for a in vaults.actors:
            assert a.book.state(agent_id) == replayed
    for a in vaults.actors:
        assert a.book.books(0).balanced and not a.book.corrupt()
    return replay


async def until_no_holds(vaults: Vaults, agent_id: str, timeout_s: float = 10.0) -> None:
    await eventually(lambda: not any(a.book.state(agent_id).holds for a in vaults.actors), timeout_s,
                     "the orphaned holds resolved", interval_s=0.02)


@pytest.mark.parametrize("action,sweep_interval_s", [("charge", 0.05), ("release", 0.05), ("charge", 3600)],
                         ids=["charge", "release", "charge-by-timer-alone"])
async def test_hold_of_a_dead_gateway_resolves_once_at_its_ttl(fresh_nats: NatsServer, client: NATS,
                                                                action: str, sweep_interval_s: float) -> None:
    # Two instances, each with a hold-timer consumer and (unless it is off) a fast sweeper: all race for one hold.
    config = parse_config({"vault": vault_section(hold_ttl_s=1, sweep_interval_s=sweep_interval_s,
                                                  expiry_action=action)})
    vaults = await Vaults(fresh_nats.url, config).start(2)
    try:
        bus = Bus(client, 5.0)
        agent_id, token = await funded_agent(bus, vaults, "orphan", 100_000)
        seen: list[SpendEvent] = []

        async def on_spend(msg: Msg) -> None:
            seen.append(SpendEvent.model_validate_json(msg.data))

        sub = await client.subscribe(subjects.spend(agent_id), cb=on_spend)
        await flush_in_order(client)

        hold = await reserve(bus, token, "orphan-1")  # ... and the gateway that asked for it dies here
        assert hold.amount_msat == 10_000
        await until_no_holds(vaults, agent_id)
        await asyncio.sleep(1.0)  # many more sweeps, and the marker's redelivery window: room for a second resolution
        await sub.unsubscribe()

        replay = await assert_replay_equals_live(client, vaults)
        resolutions = [e for e in replay[agent_id] if getattr(e.body, "rid", None) == "orphan-1"
                       and e.body.kind != "reserved"]
        assert len(resolutions) == 1, resolutions
        expired = resolutions[0].body
        assert isinstance(expired, Expired) and expired.action == action
        assert resolutions[0].at_ms >= hold.expires_at_ms  # never before its TTL
        charged = hold.amount_msat if action == "charge" else 0
        assert expired.charged_msat == charged

        state = vaults.actors[0].book.state(agent_id)
        assert (state.spent_msat, state.available_msat, state.pending_msat) == (charged, 100_000 - charged, 0)

        assert len(seen) == 1, seen
        ev = seen[0]
        assert (ev.kind, ev.request_id, ev.charged_msat, ev.reserved_msat, ev.flagged, ev.balance_msat) == (
            "expired", "orphan-1", charged, hold.amount_msat, action == "charge", 100_000 - charged)
        # the replayable events stream holds it once as well
        info = await client.jetstream().stream_info(subjects.STREAM_EVENTS, subjects_filter=subjects.spend(agent_id))
        assert info.state.subjects == {subjects.spend(agent_id): 1}
    finally:
        await vaults.stop()


async def test_two_sweepers_racing_over_many_orphans_resolve_each_once(fresh_nats: NatsServer,
                                                                        client: NATS) -> None:
    """Both instances find the same 20 due holds at the same moment and race for every one of them (and with the
    holds' timers, which fire around the same time)."""
    config = parse_config({"vault": vault_section(hold_ttl_s=1, sweep_interval_s=3600)})
    vaults = await Vaults(fresh_nats.url, config).start(2)
    try:
        bus = Bus(client, 5.0)
        agent_id, token = await funded_agent(bus, vaults, "orphans", 1_000_000)
        holds = await asyncio.gather(*(reserve(bus, token, f"o{n}") for n in range(20)))
        await vaults.caught_up(client)
        await asyncio.sleep(max(h.expires_at_ms for h in holds) / 1000 - time.time() + 0.05)
        counts = await asyncio.gather(*(a.sweep() for a in vaults.actors))
        assert sum(counts) <= 20, counts  # what the timers did not resolve first, the sweeps did, once
        await until_no_holds(vaults, agent_id)
        replay = await assert_replay_equals_live(client, vaults)
        kinds = Counter((e.body.rid, e.body.kind) for e in replay[agent_id] if isinstance(e.body, Expired))
        assert kinds == {(f"o{n}", "expired"): 1 for n in range(20)}
        state = vaults.actors[1].book.state(agent_id)
        assert state.spent_msat == sum(h.amount_msat for h in holds) and state.pending_msat == 0
    finally:
        await vaults.stop()


# --- 2. the vault is killed mid-storm -----------------------------------------------------------------------

MESSAGES = [{"role": "user", "content": "crash storm"}]
MAX_TOKENS = 16  # the mock answers exactly min(max_tokens, 16) tokens: a request costs exactly its hold
STORM_RATE = 8000
HOLD_TTL_S = 6  # > the gateway's reserve timeout + the time the vault is down: releases beat the sweeper


def unit_msat() -> int:
    return cost_msat(estimate_messages_tokens(MESSAGES), MAX_TOKENS, STORM_RATE, STORM_RATE)


def crash_config(mock_upstream: str) -> Config:
    return demo_config(
        mock_upstream, nats={"request_timeout_s": 2.0},
        vault=vault_section(hold_ttl_s=HOLD_TTL_S, sweep_interval_s=0.2),
        providers=[{"name": "alpha", "url": f"{mock_upstream}/alpha/v1", "models": ["storm-model"],
                    "input_rate": STORM_RATE, "output_rate": STORM_RATE, "tier": "frontier"}])


def vault_toml(nats_url: str) -> str:
    """The vault process's own config file: what `arbstr run vault` reads (only [nats] and [vault] matter)."""
    return "\n".join([
        'log_level = "WARNING"',
        "[nats]",
        f"url = {json.dumps(nats_url)}",
        "request_timeout_s = 2.0",
        "[vault]",
        f"admin_token = {json.dumps(ADMIN_TOKEN)}",
        f"hold_ttl_s = {HOLD_TTL_S}",
        "sweep_interval_s = 0.2",
        "",
    ])


class VaultProcess:
    """``python -m arbstr run vault`` as a child process of the test."""

    def __init__(self, config_path: Path, nats_url: str, log_path: Path) -> None:
        self.log = open(log_path, "ab")
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "arbstr", "run", "vault", "--config", str(config_path), "--nats", nats_url],
            cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill9(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
        self.log.close()


async def wait_vault_ready(bus: Bus, proc: VaultProcess, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        assert proc.proc.poll() is None, f"the vault process exited with {proc.proc.returncode}"
        try:
            await bus.call(subjects.vault_admin("books"), Empty(), Books, timeout_s=0.5, admin_token=ADMIN_TOKEN)
            return
        except ArbstrError as e:
            if time.monotonic() > deadline:
                raise AssertionError(f"the vault process did not come up: {e.message}") from None
        await asyncio.sleep(0.1)


async def test_vault_killed_mid_storm_charges_every_success_once(fresh_nats: NatsServer, mock_upstream: str,
                                                                 tmp_path: Path) -> None:
    config_path = tmp_path / "vault.toml"
    config_path.write_text(vault_toml(fresh_nats.url))
    procs: list[VaultProcess] = [VaultProcess(config_path, fresh_nats.url, tmp_path / "vault-0.log")]
    stack = await start_stack(crash_config(mock_upstream), fresh_nats.url)
    try:
        await wait_vault_ready(stack.gateway.bus, procs[0])
        unit = unit_msat()
        deposit = 5_000 * unit  # never the limit: every refusal here comes from the crash, not the balance
        conn = aiohttp.TCPConnector(limit=100)
        async with aiohttp.ClientSession(connector=conn) as http:
            agent_id, token = await new_agent(http, stack, "crash", deposit_msat=deposit)
            results: list[tuple[str, int, Optional[int]]] = []  # (request id, status, x-arbstr-cost-msat)
            counter = iter(range(10**9))
            stop = asyncio.Event()
            phase = {"name": "before"}
            ok_in: Counter[str] = Counter()

            async def worker() -> None:
                while not stop.is_set():
                    rid = f"storm-{next(counter)}"
                    try:
                        r = await http.post(f"{stack.url}/v1/chat/completions",
                                            json={"model": "storm-model", "messages": MESSAGES,
                                                  "max_tokens": MAX_TOKENS},
                                            headers={"Authorization": f"Bearer {token}", "X-Request-Id": rid})
                        await r.read()
                    except aiohttp.ClientError as e:  # the gateway itself never goes away here
                        raise AssertionError(f"{rid}: {e!r}") from None
                    cost = r.headers.get("x-arbstr-cost-msat")
                    results.append((rid, r.status, int(cost) if cost is not None else None))
                    if r.status == 200:
                        ok_in[phase["name"]] += 1
                    else:
                        await asyncio.sleep(0.02)  # no hot loop of 503s while the vault is down

            async def crash() -> None:
                while ok_in["before"] < 60:
                    await asyncio.sleep(0.005)
                procs[0].kill9()  # mid-storm: reserves, replies and settle fetches in flight are lost
                phase["name"] = "down"
                procs.append(VaultProcess(config_path, fresh_nats.url, tmp_path / "vault-1.log"))
                await wait_vault_ready(stack.gateway.bus, procs[1])
                phase["name"] = "after"
                deadline = time.monotonic() + 30
                while ok_in["after"] < 60:
                    assert time.monotonic() < deadline, "the restarted vault served no storm"
                    await asyncio.sleep(0.005)
                stop.set()

            await asyncio.gather(crash(), *(worker() for _ in range(32)))
            statuses = Counter(s for _, s, _ in results)
            # Requests in flight at the kill time out (504); those sent while no vault runs wait for the new owner of
            # the partition (the gateway asks again while nobody listens), so few or none fail at all.
            assert set(statuses) <= {200, 503, 504}, statuses
            assert all(c == unit for _, s, c in results if s == 200)
            ok = statuses[200]

            # Settles lost with the killed process are redelivered or, at the latest, the holds expire.
            deadline = time.monotonic() + HOLD_TTL_S + 15
            while True:
                acct = await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200)
                if acct["pending_msat"] == 0 and acct["holds"] == 0:
                    break
                assert time.monotonic() < deadline, f"holds outlived their TTL: {acct}"
                await asyncio.sleep(0.1)

            assert acct["spent_msat"] == ok * unit, (ok, acct, statuses)
            assert acct["balance_msat"] == deposit - ok * unit
            assert_balanced(await books(http, stack))

            # Replay from sequence 1 equals what the live (restarted) vault says, and each request's fate fits.
            replay = await read_ledger(stack.nc)
            assert (await verify_ledger(stack.nc)).ok
            state = fold(replay[agent_id])
            live = await admin(http, stack, "GET", f"/v1/admin/agents/{agent_id}", expect=200)
            assert AccountView.model_validate(live) == view(state)
            for rid, status, _ in results:
                res = state.resolutions.get(rid)
                if status == 200:
                    assert res is not None and res.kind in ("settled", "expired") and res.charged_msat == unit, \
                        (rid, res)
                else:  # the client saw a failure: it was never reserved, or released, never charged
                    assert res is None or res.charged_msat == 0, (rid, status, res)
            check = await stack.gateway.bus.call(subjects.vault_admin("verify"), Empty(), ChainCheck,
                                                 admin_token=ADMIN_TOKEN)
            assert check.ok, check
    finally:
        await stack.stop()
        for p in procs:
            p.stop()
