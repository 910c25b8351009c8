"""The Routstr-like test node against the real test mint: prepaid keys from tokens, top-ups, metered chat,
402 when the balance runs out — what arbstr relies on when it buys from a Routstr provider."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import openai
import pytest

from tests.nutshell import nutshell_mint, outside, value_after_fee
from tests.routstr_node import RoutstrNode, cost_msat, count_tokens, routstr_nodes

__all__ = ["nutshell_mint", "outside", "routstr_nodes"]  # fixtures, imported so pytest finds them here

PRICEY = {"big-model": ("0.5", "1.25"), "small-model": ("0.001", "0.003")}  # sats per token


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def expected_cost(node: RoutstrNode, model: str, messages: list[dict[str, str]], max_tokens: int = 0
                  ) -> tuple[int, int, int]:
    """(prompt tokens, completion tokens, msat) the node charges: words + 3 per message, price × usage."""
    words = f"Hello from {node.name}: {messages[-1]['content']}".split()
    completion = min(len(words), max_tokens) if max_tokens else len(words)
    prompt = sum(count_tokens(m["content"]) + 3 for m in messages)
    return prompt, completion, sum(cost_msat(prompt, completion, node.prices[model]))


async def test_models_list_sats_pricing_per_token(http: aiohttp.ClientSession, routstr_nodes) -> None:
    node = await routstr_nodes(PRICEY)
    r = await http.get(f"{node.url}/v1/models")
    body = await r.json()
    assert r.status == 200 and [m["id"] for m in body["data"]] == ["big-model", "small-model"]
    big = body["data"][0]
    assert (big["sats_pricing"]["prompt"], big["sats_pricing"]["completion"]) == (0.5, 1.25)
    assert big["context_length"] == 8192 and big["architecture"]["modality"] == "text->text"
    info = await (await http.get(f"{node.url}/v1/info")).json()
    assert info["mints"] == [node.wallet.mint_url]


async def test_a_key_from_a_token_is_topped_up_and_spent_down_to_402(http: aiohttp.ClientSession, routstr_nodes,
                                                                    outside) -> None:
    node = await routstr_nodes(PRICEY)
    first = await outside.mint_token(32)
    r = await http.get(f"{node.url}/v1/balance/create", params={"initial_balance_token": first})
    created = await r.json()
    assert r.status == 200 and created["api_key"].startswith("sk-")
    assert created["balance"] == value_after_fee(first) * 1000
    # The same token again (a retried create, by POST this time): the same key, credited once.
    r = await http.post(f"{node.url}/v1/balance/create", params={"initial_balance_token": first})
    assert await r.json() == created
    key = created["api_key"]
    top = await outside.mint_token(16)
    r = await http.post(f"{node.url}/v1/balance/topup", headers=bearer(key), json={"cashu_token": top})
    body = await r.json()
    balance = created["balance"] + value_after_fee(top) * 1000
    assert (r.status, body) == (200, {"msats": value_after_fee(top) * 1000, "balance": balance})
    r = await http.post(f"{node.url}/v1/balance/topup", headers=bearer(key), params={"cashu_token": top})
    assert (r.status, (await r.json())["error"]["code"]) == (409, "token_spent")
    r = await http.post(f"{node.url}/v1/balance/create", params={"initial_balance_token": top})
    assert r.status == 409  # a top-up's token does not name (or hand out) the key it went to
    info = await (await http.get(f"{node.url}/v1/balance/info", headers=bearer(key))).json()
    assert (info["api_key"], info["balance"], info["total_requests"]) == (key, balance, 0)

    messages = [{"role": "user", "content": "price me please"}]
    spent = 0
    while True:
        r = await http.post(f"{node.url}/v1/chat/completions", headers=bearer(key),
                            json={"model": "big-model", "messages": messages})
        body = await r.json()
        prompt, completion, cost = expected_cost(node, "big-model", messages)
        if r.status == 402:
            break
        assert r.status == 200, body
        assert (body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"]) == (prompt, completion)
        assert body["usage"]["cost"]["total_msats"] == cost == int(r.headers["X-Routstr-Cost-Msats"])
        assert body["choices"][0]["message"]["content"] == f"Hello from {node.name}: price me please"
        spent += cost
        assert body["usage"]["remaining_balance_msats"] == balance - spent
    assert body["error"]["code"] == "insufficient_balance" and body["error"]["type"] == "insufficient_quota"
    assert balance - spent < cost and spent > 0
    info = await (await http.get(f"{node.url}/v1/balance/info", headers=bearer(key))).json()
    assert (info["balance"], info["total_spent"]) == (balance - spent, spent)  # a 402 charges nothing
    # A cheaper model still fits in what is left.
    r = await http.post(f"{node.url}/v1/chat/completions", headers=bearer(key),
                        json={"model": "small-model", "messages": messages, "max_tokens": 2})
    body = await r.json()
    assert r.status == 200 and body["usage"]["completion_tokens"] == 2
    assert body["usage"]["cost"]["total_msats"] == expected_cost(node, "small-model", messages, 2)[2]


async def test_refusals_and_a_token_as_the_bearer(http: aiohttp.ClientSession, routstr_nodes, outside) -> None:
    node = await routstr_nodes(PRICEY)
    chat = {"model": "small-model", "messages": [{"role": "user", "content": "hi"}]}
    r = await http.post(f"{node.url}/v1/chat/completions", headers=bearer("sk-nope"), json=chat)
    assert (r.status, (await r.json())["error"]["code"]) == (401, "invalid_api_key")
    ecash = await outside.mint_token(8)
    r = await http.post(f"{node.url}/v1/chat/completions", headers=bearer(ecash), json=chat)  # pay as you go
    body = await r.json()
    assert r.status == 200 and body["usage"]["remaining_balance_msats"] == value_after_fee(ecash) * 1000 - \
        body["usage"]["cost"]["total_msats"]
    r = await http.post(f"{node.url}/v1/chat/completions", headers=bearer(ecash), json=chat)  # same key again
    assert r.status == 200
    r = await http.post(f"{node.url}/v1/chat/completions", headers=bearer(ecash), json={**chat, "model": "x"})
    assert (r.status, (await r.json())["error"]["code"]) == (404, "model_not_found")
    spent = await outside.mint_token(4)
    await outside.redeem(spent)
    r = await http.get(f"{node.url}/v1/balance/create", params={"initial_balance_token": spent})
    assert (r.status, (await r.json())["error"]["code"]) == (409, "token_spent")
    r = await http.get(f"{node.url}/v1/balance/create", params={"initial_balance_token": "cashuBnope"})
    assert (r.status, (await r.json())["error"]["code"]) == (400, "invalid_token")


async def test_the_openai_client_streams_and_sees_the_402(http: aiohttp.ClientSession, routstr_nodes,
                                                          outside) -> None:
    node = await routstr_nodes(PRICEY)
    created = await (await http.get(f"{node.url}/v1/balance/create",
                                    params={"initial_balance_token": await outside.mint_token(16)})).json()
    client = openai.AsyncOpenAI(base_url=f"{node.url}/v1", api_key=created["api_key"], max_retries=0)
    try:
        stream = await client.chat.completions.create(
            model="small-model", messages=[{"role": "user", "content": "stream it"}], stream=True,
            stream_options={"include_usage": True})
        text, usage = "", None
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        assert text == f"Hello from {node.name}: stream it" and usage is not None
        cost: Any = (usage.model_extra or {}).get("cost")
        assert cost["total_msats"] == expected_cost(node, "small-model",
                                                    [{"role": "user", "content": "stream it"}])[2]
        with pytest.raises(openai.APIStatusError) as e:
            await client.chat.completions.create(model="big-model", max_tokens=4000,
                                                 messages=[{"role": "user", "content": "x " * 200}])
        assert e.value.status_code == 402
        assert json.loads(e.value.response.text)["error"]["code"] == "insufficient_balance"
    finally:
        await client.close()
