"""The bus is a door: nobody connects without a key, each identity touches only what its part needs, and a
money-moving command needs the operator's proof even from a connection that is allowed to send it."""

from __future__ import annotations

import asyncio
import re
import stat
import textwrap
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import aiohttp
import nats
import pytest

from actors.runtime.connection import flush_in_order
from arbstr.bus_auth import BusCredentials
from arbstr.natsserver import NatsServer
from schemas import subjects
from schemas.bus_permissions import EVENTS, GATEWAY, IDENTITIES, VAULT, inbox_prefix
from schemas.vault import DepositCommand
from tests.support.stack import ADMIN_TOKEN, Stack

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def closed_bus(tmp_path: Path) -> Iterator[tuple[NatsServer, BusCredentials]]:
    """A server as `arbstr up` runs it: the identities and nothing else (no test user)."""
    creds = BusCredentials.ensure(tmp_path / "bus")
    server = NatsServer(tmp_path / "nats", authorization=creds.authorization_conf(),
                        log_file=tmp_path / "nats.log")
    server.start()
    yield server, creds
    server.stop(kill=True)


class Probe:
    """A connection as one identity that records the permission errors the server sends back."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: Any = None

    async def open(self, url: str, creds: BusCredentials, identity: str) -> "Probe":
        async def on_error(e: Exception) -> None:
            self.errors.append(str(e))

        self.nc = await nats.connect(url, nkeys_seed_str=creds.seed(identity), inbox_prefix=inbox_prefix(identity),
                                     error_cb=on_error, allow_reconnect=False)
        return self

    async def refused(self, action: str, subject: str) -> bool:
        before = len(self.errors)
        if action == "pub":
            await self.nc.publish(subject, b"{}")
        else:
            await self.nc.subscribe(subject)
        await flush_in_order(self.nc)  # the server's -ERR comes before its PONG (a plain flush may overtake the PUB)
        for _ in range(50):
            if len(self.errors) > before:
                break
            await asyncio.sleep(0.01)
        return any("permissions violation" in e.lower() for e in self.errors[before:])


async def test_an_anonymous_or_unknown_connection_is_refused(closed_bus: tuple[NatsServer, BusCredentials],
                                                             tmp_path: Path) -> None:
    server, creds = closed_bus
    with pytest.raises(Exception):
        await nats.connect(server.url, allow_reconnect=False, connect_timeout=2)
    stranger = BusCredentials.ensure(tmp_path / "stranger")  # well-formed keys the server never heard of
    with pytest.raises(Exception):
        await nats.connect(server.url, nkeys_seed_str=stranger.seed(GATEWAY), allow_reconnect=False,
                           connect_timeout=2)
    nc = await nats.connect(server.url, nkeys_seed_str=creds.seed(GATEWAY), allow_reconnect=False)
    assert nc.is_connected
    await nc.close()


def test_credentials_are_private_files(tmp_path: Path) -> None:
    creds = BusCredentials.ensure(tmp_path / "bus")
    assert stat.S_IMODE(creds.directory.stat().st_mode) == 0o700
    for identity in IDENTITIES:
        assert stat.S_IMODE(creds.path(identity).stat().st_mode) == 0o600
        assert creds.public_key(identity) not in creds.path(identity).read_text()  # the seed, not the public key
    (tmp_path / "nats").mkdir()
    server = NatsServer(tmp_path / "nats", authorization=creds.authorization_conf())
    conf = server._config_file()
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    text = conf.read_text()
    assert all(creds.public_key(i) in text for i in IDENTITIES)
    assert not any(creds.seed(i) in text for i in IDENTITIES)  # the server holds public keys only
    assert "no_auth_user" not in text


# (identity, action, subject): each must be refused by the server itself.
NOT_ALLOWED = [
    # Outside tools read spend events and nothing else.
    (EVENTS, "pub", subjects.vault_admin("deposit")),
    (EVENTS, "pub", subjects.VAULT_RESERVE),
    (EVENTS, "pub", "arbstr.ledger.agt_x.event"),
    (EVENTS, "pub", subjects.spend("agt_x")),
    (EVENTS, "pub", f"$KV.{subjects.KV_PRICES}.alpha"),
    (EVENTS, "pub", f"$JS.API.STREAM.PURGE.{subjects.STREAM_EVENTS}"),
    (EVENTS, "pub", f"$JS.API.STREAM.CREATE.{subjects.STREAM_EVENTS}"),
    (EVENTS, "pub", f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_LEDGER}"),
    (EVENTS, "sub", "_INBOX.>"),
    (EVENTS, "sub", "_INBOX.gateway.x"),
    (EVENTS, "sub", subjects.vault_admin("deposit")),
    # The gateway asks; it never answers as an actor, never writes the journal, never forges events or keys.
    (GATEWAY, "pub", "arbstr.ledger.agt_x.event"),
    (GATEWAY, "pub", f"$JS.API.CONSUMER.CREATE.{subjects.STREAM_LEDGER}"),
    (GATEWAY, "pub", f"$JS.API.STREAM.MSG.DELETE.{subjects.STREAM_LEDGER}"),
    (GATEWAY, "pub", f"$JS.API.STREAM.CREATE.{subjects.STREAM_LEDGER}"),
    (GATEWAY, "pub", subjects.spend("agt_x")),
    (GATEWAY, "pub", f"$KV.{subjects.KV_PROVIDER_KEYS}.alpha"),
    (GATEWAY, "pub", f"$KV.{subjects.KV_PRICES}.alpha"),
    (GATEWAY, "pub", f"$KV.{subjects.KV_VAULT}.freeze"),
    (GATEWAY, "pub", subjects.VAULT_SETTLE),
    (GATEWAY, "sub", subjects.VAULT_RESERVE),
    (GATEWAY, "sub", subjects.vault_admin("deposit")),
    (GATEWAY, "sub", subjects.ROUTER_ROUTE),
    (GATEWAY, "sub", "_INBOX.vault.>"),
    # Actors: their own endpoints and buckets only.
    ("router", "pub", subjects.vault_admin("deposit")),
    ("router", "pub", f"$KV.{subjects.KV_PRICES}.alpha"),
    ("router", "sub", f"{subjects.VAULT_GROUP}.>"),
    ("pricing", "pub", subjects.vault_admin("deposit")),
    ("pricing", "pub", f"$KV.{subjects.KV_BREAKERS}.alpha"),
    ("pricing", "pub", f"$KV.{subjects.KV_PROVIDER_KEYS}.alpha"),
    ("breaker", "pub", f"$KV.{subjects.KV_PRICES}.alpha"),
    ("breaker", "sub", subjects.VAULT_RESERVE),
    ("operator", "pub", subjects.vault_admin("deposit")),
    ("operator", "pub", "arbstr.ledger.agt_x.event"),
    (VAULT, "sub", subjects.ROUTER_ROUTE),
    (VAULT, "pub", f"$KV.{subjects.KV_PRICES}.alpha"),
]


async def test_each_identity_is_refused_what_its_part_does_not_need(
        closed_bus: tuple[NatsServer, BusCredentials]) -> None:
    server, creds = closed_bus
    probes = {i: await Probe().open(server.url, creds, i) for i in IDENTITIES}
    try:
        allowed = [(i, a, s) for i, a, s in NOT_ALLOWED if not await probes[i].refused(a, s)]
        assert not allowed, f"these should have been refused: {allowed}"
        # ... and nobody but the vault may listen on a vault command subject or write the ledger.
        for identity in IDENTITIES:
            if identity == VAULT:
                continue
            assert await probes[identity].refused("sub", subjects.vault_admin("deposit")), identity
            assert await probes[identity].refused("pub", "arbstr.ledger.agt_x.event"), identity
        # The allowed side of the same lines: the vault does write the ledger, the events tool does read.
        assert not await probes[VAULT].refused("sub", subjects.vault_admin("deposit"))
        assert not await probes[VAULT].refused("pub", "arbstr.ledger.agt_x.event")
        assert not await probes[EVENTS].refused("sub", subjects.SPEND_ALL)
    finally:
        for p in probes.values():
            await p.nc.close()


@pytest.mark.bus_violations_expected
async def test_the_gateway_identity_cannot_write_the_ledger_stream(paid_stack: Stack) -> None:
    """Through JetStream too: the publish is refused, so the stream never sees it."""
    from tests.support.bus import connect_as

    js_before = await paid_stack.nc.jetstream().stream_info(subjects.STREAM_LEDGER)
    gw = await connect_as(paid_stack.nats_url, GATEWAY)
    try:
        with pytest.raises(Exception):
            await gw.jetstream().publish("arbstr.ledger.agt_forged.event", b'{"forged": true}', timeout=1.0)
    finally:
        await gw.close()
    after = await paid_stack.nc.jetstream().stream_info(subjects.STREAM_LEDGER)
    assert after.state.last_seq == js_before.state.last_seq


@pytest.mark.bus_violations_expected
async def test_a_gateway_credential_alone_cannot_mint(paid_stack: Stack, http: aiohttp.ClientSession) -> None:
    """Allowed to send admin commands, the gateway's credential still needs the operator's token with them: the
    vault checks it itself."""
    from tests.support.bus import connect_as

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(f"{paid_stack.url}/v1/admin/agents", json={"name": "target"}, headers=admin) as r:
        agent = await r.json()
    gw = await connect_as(paid_stack.nats_url, GATEWAY)
    cmd = DepositCommand(agent_id=agent["agent_id"], amount_msat=777_000, deposit_id="forged-1",
                         rail="simulated").model_dump_json().encode()
    try:
        for headers in ({}, {subjects.H_ADMIN_AUTH: "not-the-admin-token"}, {subjects.H_ADMIN_AUTH: "\u00e9\u00e9"}):
            reply = await gw.request(subjects.vault_admin("deposit"), cmd, timeout=2.0, headers=headers or None)
            assert (reply.headers or {}).get(subjects.H_SERVICE_ERROR_CODE) == "401", reply.data
        events = await connect_as(paid_stack.nats_url, EVENTS)
        try:  # the read-only identity cannot even send it
            with pytest.raises(Exception):
                await events.request(subjects.vault_admin("deposit"), cmd, timeout=1.0)
        finally:
            await events.close()
    finally:
        await gw.close()
    async with http.get(f"{paid_stack.url}/v1/admin/agents/{agent['agent_id']}", headers=admin) as r:
        assert (await r.json())["balance_msat"] == 0
    async with http.get(f"{paid_stack.url}/v1/admin/books", headers=admin) as r:
        books = await r.json()
    assert books["deposits_msat"] == 0 and books["balanced"] is True
    # The operator's own deposit, with its token, goes through the same check and lands.
    async with http.post(f"{paid_stack.url}/v1/admin/agents/{agent['agent_id']}/deposits",
                         json={"amount_msat": 5000}, headers=admin) as r:
        assert r.status == 201 and (await r.json())["balance_msat"] == 5000


async def test_the_readme_subscriber_runs_with_the_events_credential(paid_stack: Stack,
                                                                     http: aiohttp.ClientSession) -> None:
    """The README's nats-py lines, as written, with the events identity's key: they see spend events."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n( *import asyncio, json, nats\n.*?)\n *```", readme, re.S)
    assert block is not None, "the README's subscriber example is gone"
    code = textwrap.dedent(block.group(1))
    assert 'nkeys_seed="arbstr-data/bus/events.nk"' in code and 'inbox_prefix="_INBOX.events"' in code
    from tests.support.bus import creds_for

    creds = creds_for(paid_stack.nats_url)
    assert creds is not None
    code = (code.replace("nats://127.0.0.1:4222", paid_stack.nats_url)
            .replace("arbstr-data/bus/events.nk", str(creds.path(EVENTS)))
            .replace("asyncio.run(main())", "")
            .replace("print(json.loads(msg.data)); await msg.ack()",
                     "seen.append(json.loads(msg.data)); await msg.ack(); break"))
    namespace: dict[str, Any] = {"seen": []}
    exec(compile(code, "README.md", "exec"), namespace)

    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    async with http.post(f"{paid_stack.url}/v1/admin/agents", json={"name": "readme"}, headers=admin) as r:
        agent = await r.json()
    async with http.post(f"{paid_stack.url}/v1/admin/agents/{agent['agent_id']}/deposits",
                         json={"amount_msat": 1_000_000}, headers=admin) as r:
        assert r.status == 201
    async with http.post(f"{paid_stack.url}/v1/chat/completions", headers={"Authorization": f"Bearer {agent['token']}"},
                         json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}) as r:
        assert r.status == 200
    await asyncio.wait_for(namespace["main"](), 10)
    assert namespace["seen"] and namespace["seen"][0]["agent_id"] == agent["agent_id"]


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session
