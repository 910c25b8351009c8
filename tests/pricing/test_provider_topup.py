"""Paying Routstr nodes with prepaid keys, end to end with real parts: nodes rebuilt from routstr-core's source
(tests/support/routstr_node.py) announced on a real Nostr relay, a real Nutshell mint, the vault's Cashu wallet. The vault
buys each node a key with a token paid out of the operator account (journaled like any payout), keeps it topped up
by the node's own 402 rule, and recovers tokens whose delivery was lost. Each test names the point of issue 13 it
covers; each fails against the client as it was (POST with the token in the query, flat top-ups, a 400 on a
redelivered token leaving it undelivered for ever, mints read only from Nostr tags)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from tests.support.nostr_relay import NostrRelay, running_relay
from tests.support.nutshell import NutshellMint, OutsideWallet, value_after_fee
from tests.support.routstr_market import market
from tests.support.routstr_node import StartNode
from tests.support.routstr_rules import NodeModel
from tests.support.waiting import eventually

CHEAP = NodeModel(0.001, 0.003, context_length=8192, max_completion_tokens=4096)  # reserves ≤ 16.4 sat
# Reserves up to 286.7 sat (4096 prompt + 4096 completion tokens): far above the old flat 100 sat top-up.
DEAR = NodeModel(0.02, 0.05, context_length=8192, max_completion_tokens=4096)
KEYS_ONLY = {"x_cashu": False, "amount_msat": 100_000, "min_balance_msat": 20_000}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NostrRelay]:
    yield from running_relay(tmp_path_factory, "topup-relay")


@pytest.fixture
def parts(http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str, nutshell_mint: NutshellMint,
          outside: OutsideWallet, tmp_path: Path, relay: NostrRelay) -> Any:
    return lambda **kw: market(http, fresh_nats, mock_upstream, nutshell_mint, outside, tmp_path, relay, **kw)


def token_of_key(node: Any) -> str:
    [key] = node.keys.values()
    return key.api_key


async def test_point1_keys_are_made_with_a_json_body_and_by_get_on_older_nodes(parts: Any,
                                                                               routstr_nodes: StartNode) -> None:
    new = await routstr_nodes({"a-model": CHEAP}, name="new")
    old404 = await routstr_nodes({"b-model": CHEAP}, name="old404")
    old404.knobs.legacy_create = "404"
    old400 = await routstr_nodes({"c-model": CHEAP}, name="old400")
    old400.knobs.legacy_create = "400"
    async with parts(topup=KEYS_ONLY) as m:
        names = [await m.announce(n, d) for n, d in ((new, "a"), (old404, "b"), (old400, "c"))]
        for node_, name in zip((new, old404, old400), names):
            await eventually(lambda: m.keyed(name, node_), what=f"{name} keyed", timeout_s=15.0)
        for node, name, model in ((new, names[0], "a-model"), (old404, names[1], "b-model"),
                                  (old400, names[2], "c-model")):
            [key] = node.keys.values()  # one key per node, named by the token that made it
            record, _ = await m.rig.actor.topups._load(name)
            assert record.api_key == key.api_key and record.delivered == [f"tok:operator:topup-{name}-1"]
            token = (await m.rig.actor.rails.payout("operator", record.delivered[0])).token
            assert key.api_key == "sk-" + hashlib.sha256(token.encode()).hexdigest()
            status, body, headers = await m.chat(model, max_tokens=5)
            assert status == 200 and headers["x-arbstr-provider"] == name, body
            assert key.total_requests == 1
        await m.clean_books()


async def test_point2_top_ups_follow_the_nodes_402_rule(parts: Any, routstr_nodes: StartNode) -> None:
    """A request reserving ~200 sat at a node (its max_tokens × completion price) passes: the vault keeps the
    node's balance above the dearest reserve its listing allows (286.7 sat), where the defaults (top up 100 sat
    below 20 sat) left it at 20-120 sat and the node answered 402."""
    node = await routstr_nodes({"dear-model": DEAR})
    async with parts(topup=KEYS_ONLY) as m:
        name, key = await m.seeded(node, 100)

        async def covered() -> bool:
            return key.total_balance >= 286_000
        await eventually(covered, what="the node's balance above its dearest reserve", timeout_s=15.0)
        status, body, headers = await m.chat("dear-model", max_tokens=4000)
        assert status == 200 and headers["x-arbstr-provider"] == name, body
        [paid] = [p["amount_msat"] for p in await m.payouts()]
        assert 286_720 <= paid < 300_000  # the dearest reserve
        await m.clean_books()


async def test_point2_a_402_from_a_funded_node_tops_it_up_once_before_falling_over(
        parts: Any, routstr_nodes: StartNode) -> None:
    node = await routstr_nodes({"dear-model": DEAR})
    # The standing balance is capped below this request's reserve: the node answers 402 first.
    async with parts(topup={**KEYS_ONLY, "reserve_cap_msat": 30_000}) as m:
        name, key = await m.seeded(node, 100)
        assert key.total_balance < 200_000
        status, body, headers = await m.chat("dear-model", max_tokens=4000)
        assert status == 200 and headers["x-arbstr-provider"] == name, body
        assert headers["x-arbstr-retries"] == "0"  # served by the same node, after one top-up
        assert [p["payout_id"] for p in await m.payouts()] == [f"tok:operator:topup-{name}-1"]
        assert len(node.requests) == 1 and key.total_requests == 1
        await m.clean_books()


async def test_point4_a_redelivered_top_up_the_node_took_is_recovered_from_its_credit(
        parts: Any, routstr_nodes: StartNode) -> None:
    """The node credited a top-up but its record was lost (KV write failed): the next round delivers the same
    token again, the node answers 400 cashu_token_already_spent, and the key's credit (balance + reserved +
    spent) shows it landed. Before, that payout stayed undelivered for ever and nothing was paid again."""
    node = await routstr_nodes({"a-model": CHEAP})
    async with parts(topup=KEYS_ONLY) as m:
        topups = m.rig.actor.topups
        name, key = await m.seeded(node, 100)
        save, failed = topups._save, []

        async def save_fails_once_after_delivery(record: Any, revision: Any) -> int:
            if record.delivered and not failed:
                failed.append(record.delivered[-1])
                raise RuntimeError("the KV write was lost")
            return await save(record, revision)
        topups._save = save_fails_once_after_delivery
        spent = key.balance - 10_000  # agents spent it down: the node moves it from balance to spent
        key.balance, key.total_spent = key.balance - spent, key.total_spent + spent

        async def recovered() -> bool:
            record, _ = await topups._load(name)
            return bool(record.delivered)
        await eventually(recovered, what="the top-up recorded", timeout_s=15.0)
        record, _ = await topups._load(name)
        assert failed == record.delivered == [f"tok:operator:topup-{name}-1"]
        assert not record.suspended and not record.lost
        assert record.credited_msat == key.balance + key.total_spent
        assert len(await m.payouts()) == 1  # nothing paid for the one that looked lost
        await m.clean_books()


async def test_point4_a_token_the_node_refuses_is_taken_back(parts: Any, routstr_nodes: StartNode) -> None:
    node = await routstr_nodes({"a-model": CHEAP})
    async with parts(topup=KEYS_ONLY) as m:
        name, key = await m.seeded(node, 100)
        node.knobs.redemption_fault = "zero"  # 400 cashu_token_zero_value, the token not redeemed
        key.balance, key.total_spent = 1_000, key.balance - 1_000  # spent down: a top-up is due

        async def settled() -> bool:
            record, _ = await m.rig.actor.topups._load(name)
            return bool(getattr(record, "returned", None))
        await eventually(settled, what="the refused token taken back", timeout_s=15.0)
        record, _ = await m.rig.actor.topups._load(name)
        assert record.returned == [f"tok:operator:topup-{name}-1"] and "refused" in record.suspended
        token = (await m.rig.actor.rails.payout("operator", record.returned[0])).token
        deposits = list(m.operator_state.deposits.values())
        assert len(deposits) == 2 and deposits[1] == value_after_fee(token) * 1000  # back, less the mint's fee
        await m.clean_books()


async def test_point5_mints_from_v1_info_and_listings_without_sats_prices(parts: Any,
                                                                          routstr_nodes: StartNode) -> None:
    """The node announces another mint in its Nostr tags, but its /v1/info says it takes ours: payable. A model
    listed with sats_pricing null is listed, not routed."""
    node = await routstr_nodes({"a-model": CHEAP, "dark-model": NodeModel(0.1, 0.1, unpriced=True)})
    async with parts(topup=KEYS_ONLY) as m:
        name, _ = await m.seeded(node, 50, mints=("https://mint.elsewhere.example",))
        status, _, headers = await m.chat("a-model", max_tokens=5)
        assert status == 200 and headers["x-arbstr-provider"] == name
        entry = await m.rig.actor.topups.entry(name)
        assert m.mint.url in entry.mints and entry.models == ["a-model"]
        assert any("without sats_pricing" in n and "dark-model" in n for n in entry.notes)
        assert entry.node_prices["a-model"].max_cost_msat == 16_384  # 4096 × (0.001 + 0.003) sat
        status, body, _ = await m.chat("dark-model", max_tokens=5)
        assert status == 404, body  # listed in the notes, never a candidate
