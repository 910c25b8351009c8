"""Paying a Routstr node per request with the ``X-Cashu`` header, with a real mint, relay and the rebuilt node: the
vault pays a token out of the operator account (journaled like any payout), the gateway carries it to the node,
the node's change comes back into the vault's wallet and is credited once, in the command that closes the payment.
A token sent and not answered is recovered by asking the mint about its proofs (NUT-07) and the node for its change
again; a token that never reached the node is taken back. Books balance throughout."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from arbstr.natsserver import NatsServer
from tests.support.nostr_relay import NostrRelay, running_relay
from tests.support.nutshell import NutshellMint, OutsideWallet
from tests.support.routstr_market import Market, market
from tests.support.routstr_node import StartNode
from tests.support.routstr_rules import NodeModel
from tests.support.waiting import eventually

CHEAP = NodeModel(0.001, 0.003, context_length=8192, max_completion_tokens=4096)
PER_REQUEST = {"prepaid_keys": False, "x_cashu_grace_s": 0.5, "x_cashu_give_up_s": 120}


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NostrRelay]:
    yield from running_relay(tmp_path_factory, "x-cashu-relay")


@pytest.fixture
def parts(http: aiohttp.ClientSession, fresh_nats: NatsServer, mock_upstream: str, nutshell_mint: NutshellMint,
          outside: OutsideWallet, tmp_path: Path, relay: NostrRelay) -> Any:
    return lambda **kw: market(http, fresh_nats, mock_upstream, nutshell_mint, outside, tmp_path, relay, **kw)


async def per_request(m: Market, name: str) -> bool:
    return await m.paid_by(name) == "x_cashu"


def payments(m: Market) -> list[str]:
    return [pid for pid in m.operator_state.payouts_done if pid.startswith("tok:operator:xc-")]


async def closed(m: Market, outcome: str) -> bool:
    done = m.operator_state.provider_payments
    return bool(done) and all(o == outcome for o, _ in done.values()) and len(done) == len(payments(m))


async def test_a_node_without_a_key_is_paid_per_request_and_its_change_comes_back(
        parts: Any, routstr_nodes: StartNode) -> None:
    node = await routstr_nodes({"a-model": CHEAP})
    async with parts(topup=PER_REQUEST) as m:
        name = await m.announce(node)
        await eventually(lambda: per_request(m, name), timeout_s=15.0)
        status, body, headers = await m.chat("a-model", "pay me per request", max_tokens=2000)
        assert status == 200 and headers["x-arbstr-provider"] == name, body
        assert body["choices"][0]["message"]["content"] == f"Hello from {node.name}: pay me per request"
        assert not node.keys and len(node.requests) == 1  # paid with the header, no key
        [pid] = payments(m)
        await eventually(lambda: closed(m, "change"), what="the change credited", timeout_s=15.0)
        outcome, change = m.operator_state.provider_payments[pid]
        token = (await m.rig.actor.rails.payout("operator", pid)).token
        assert node.x_cashu_in == {token: next(iter(node.refunds))}  # the node saw our token, once
        assert 0 < change < m.operator_state.payouts_done[pid].charged_msat
        # A stream is never sent there (the node would buffer it whole): no other node serves the model.
        status, body, _ = await m.chat("a-model", "stream me", max_tokens=2000, stream=True)
        assert status == 503 and "X-Cashu" in body["error"]["message"]
        assert len(node.requests) == 1
        await m.clean_books()


async def test_a_token_sent_and_not_answered_is_recovered_by_its_proofs_and_the_nodes_change(
        parts: Any, routstr_nodes: StartNode) -> None:
    node = await routstr_nodes({"a-model": CHEAP})
    node.knobs.hold_answers = asyncio.Event()  # paid, then silent: the gateway gives up on it
    async with parts(topup=PER_REQUEST, market_extra={"first_byte_timeout_s": 1.0}) as m:
        name = await m.announce(node)
        await eventually(lambda: per_request(m, name), timeout_s=15.0)
        status, body, _ = await m.chat("a-model", "anyone there", max_tokens=2000)
        assert status == 504, body  # the agent is not charged for it
        [pid] = payments(m)
        assert node.x_cashu_in and not node.refunds  # the node took the token and has not answered
        # The recovery sees the proofs spent (NUT-07) and the node's change still pending (425): it waits.
        await asyncio.sleep(1.5)
        assert pid not in m.operator_state.provider_payments
        node.knobs.hold_answers.set()  # the node finishes the request it was paid for and keeps the change
        await eventually(lambda: closed(m, "change"), what="the change recovered from the node", timeout_s=15.0)
        assert m.operator_state.provider_payments[pid][1] > 0
        await m.clean_books()


async def test_a_token_that_never_reached_the_node_is_taken_back(parts: Any, routstr_nodes: StartNode) -> None:
    node = await routstr_nodes({"a-model": CHEAP})
    async with parts(topup=PER_REQUEST) as m:
        name = await m.announce(node)
        await eventually(lambda: per_request(m, name), timeout_s=15.0)
        assert node._runner is not None
        await node._runner.cleanup()  # the node goes away: connections are refused
        status, _, _ = await m.chat("a-model", "hello?", max_tokens=2000)
        assert status == 502
        [pid] = payments(m)
        await eventually(lambda: closed(m, "reclaimed"), what="the token taken back", timeout_s=15.0)
        token = (await m.rig.actor.rails.payout("operator", pid)).token
        assert await m.wallet.token_state(token) == "spent"  # swapped back into the vault's wallet
        await m.clean_books()


async def test_a_token_the_node_hands_back_with_its_error_is_credited(parts: Any, routstr_nodes: StartNode) -> None:
    node = await routstr_nodes({"a-model": CHEAP})
    async with parts(topup=PER_REQUEST) as m:
        name = await m.announce(node)
        await eventually(lambda: per_request(m, name), timeout_s=15.0)
        node.knobs.redemption_fault = "mint_down"  # 503 cashu_mint_unreachable, the token echoed in X-Cashu
        status, _, _ = await m.chat("a-model", "hello?", max_tokens=2000)
        assert status == 502
        [pid] = payments(m)
        await eventually(lambda: closed(m, "change"), what="the echoed token credited", timeout_s=15.0)
        assert not node.x_cashu_in and not node.requests
        await m.clean_books()
