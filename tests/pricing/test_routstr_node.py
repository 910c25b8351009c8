"""The test node against the real test mint: the wire contract of routstr-core (8bd7d7e) that arbstr relies on —
routes, methods, body and query forms, statuses, the error envelope, 402 on the reserve, the cost report, the
X-Cashu mode. If one of these drifts from the source, arbstr's tests would prove nothing."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import aiohttp
import openai
import pytest

from actors.vault.wallets.cashu_mint import parse_token
from tests.support.nutshell import value_after_fee
from tests.support.routstr_node import RoutstrNode
from tests.support.routstr_rules import NodeModel, max_costs, reserve_msat, token_cost

PRICEY = {"big-model": NodeModel(0.5, 1.25, context_length=8192, max_completion_tokens=4096),
          "small-model": NodeModel(0.001, 0.003, context_length=8192, max_completion_tokens=4096)}


def face_value(token: str) -> int:
    return sum(p.amount for p in parse_token(token).proofs)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def call(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with http.request(method, url, **kw) as r:
        text = await r.text()
        try:
            body = json.loads(text)
        except ValueError:
            body = text
        return r.status, body, r.headers


async def test_listing_and_info(http: aiohttp.ClientSession, routstr_nodes: Any) -> None:
    models = {**PRICEY, "unpriced": NodeModel(0.1, 0.1, unpriced=True)}
    node = await routstr_nodes(models, min_request_msat=2000)
    for path in ("/v1/models", "/models"):
        status, body, _ = await call(http, "GET", node.url + path)
        assert status == 200 and set(body) == {"data"}  # no "object": "list"
    big, _, unpriced = body["data"]
    sats = big["sats_pricing"]
    assert (sats["prompt"], sats["completion"]) == (0.5, 1.25)  # sats per token, floats
    assert sats["request"] == 2.0  # min_request_msat / 1000
    assert {"input_cache_read", "input_cache_write", "max_prompt_cost", "max_completion_cost"} <= set(sats)
    assert sats["max_cost"] == (8192 - 4096) * 0.5 + 4096 * 1.25
    assert unpriced["sats_pricing"] is None and big["top_provider"]["max_completion_tokens"] == 4096
    status, info, _ = await call(http, "GET", node.url + "/v1/info")
    assert status == 200 and info["mints"] == [node.wallet.mint_url]


async def test_create_by_json_body_and_by_query(http: aiohttp.ClientSession, routstr_nodes: Any, outside: Any) -> None:
    node = await routstr_nodes(PRICEY)
    token = await outside.mint_token(32)
    # The query form on POST is not the endpoint's signature: FastAPI's 422, the token untouched.
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/create",
                                 params={"initial_balance_token": token})
    assert status == 422 and body["detail"][0]["loc"] == ["body"] and not node.keys
    status, created, headers = await call(http, "POST", node.url + "/v1/balance/create",
                                          json={"initial_balance_token": token})
    assert status == 200 and created == {"api_key": "sk-" + hashlib.sha256(token.encode()).hexdigest(),
                                         "balance": value_after_fee(token) * 1000}
    assert headers["x-routstr-request-id"]
    # The same token again, either form: the same key, nothing more credited.
    assert (await call(http, "POST", node.url + "/v1/balance/create", json={"initial_balance_token": token}))[1] \
        == created
    assert (await call(http, "GET", node.url + "/v1/balance/create", params={"initial_balance_token": token}))[1] \
        == created
    other = await outside.mint_token(8)
    status, body, _ = await call(http, "GET", node.url + "/v1/wallet/create", params={"initial_balance_token": other})
    assert status == 200 and body["balance"] == value_after_fee(other) * 1000  # the deprecated prefix too


@pytest.mark.parametrize("legacy", ["404", "400"])
async def test_a_node_before_2026_07_24_has_no_post_create(http: aiohttp.ClientSession, routstr_nodes: Any,
                                                           outside: Any, legacy: str) -> None:
    node = await routstr_nodes(PRICEY)
    node.knobs.legacy_create = legacy
    token = await outside.mint_token(8)
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/create", json={"initial_balance_token": token})
    assert status == int(legacy) and not node.keys
    if legacy == "404":
        assert body["detail"] == "Not found check /docs for available endpoints" and body["request_id"]
    else:  # the catch-all proxy: no model in the body
        assert body["error"] == {"message": "Model 'unknown' not found", "type": "invalid_model", "code": 400}
    status, body, _ = await call(http, "GET", node.url + "/v1/balance/create", params={"initial_balance_token": token})
    assert status == 200 and body["api_key"].startswith("sk-")


async def test_topup_info_and_the_error_envelope(http: aiohttp.ClientSession, routstr_nodes: Any,
                                                  outside: Any) -> None:
    node = await routstr_nodes(PRICEY)
    first = await outside.mint_token(16)
    key = (await call(http, "GET", node.url + "/v1/balance/create", params={"initial_balance_token": first}))[1]
    top = await outside.mint_token(16)
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/topup", headers=bearer(key["api_key"]),
                                 json={"cashu_token": top})
    assert (status, body) == (200, {"msats": value_after_fee(top) * 1000})
    # Delivered again (a lost answer): the mint says spent, the node says 400 in its envelope.
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/topup", headers=bearer(key["api_key"]),
                                 params={"cashu_token": top})
    error = {"message": "Cashu token already spent", "type": "token_already_spent",
             "code": "cashu_token_already_spent"}
    assert status == 400 and body["detail"] == {"error": error} and body["error"] == error and body["request_id"]
    status, info, _ = await call(http, "GET", node.url + "/v1/balance/info", headers=bearer(key["api_key"]))
    assert status == 200 and info["balance"] == (value_after_fee(first) + value_after_fee(top)) * 1000
    assert (info["reserved"], info["total_spent"], info["total_requests"]) == (0, 0, 0)
    # Refusals: a token worth nothing after the mint's fee, no token, no key.
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/topup", headers=bearer(key["api_key"]),
                                 json={"cashu_token": await outside.mint_token(1)})
    assert (status, body["error"]["code"]) == (400, "cashu_token_zero_value")
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/topup", headers=bearer(key["api_key"]))
    assert (status, body["detail"]) == (400, "A cashu_token is required.")
    status, body, _ = await call(http, "GET", node.url + "/v1/balance/info", headers=bearer("sk-" + "0" * 64))
    assert (status, body["error"]["code"]) == (401, "invalid_api_key")
    node.knobs.redemption_fault = "mint_down"
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/topup", headers=bearer(key["api_key"]),
                                 json={"cashu_token": await outside.mint_token(4)})
    assert (status, body["error"]["code"]) == (503, "cashu_mint_unreachable")
    node.knobs.redemption_fault = "fees"
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/topup", headers=bearer(key["api_key"]),
                                 json={"cashu_token": await outside.mint_token(4)})
    assert status == 422


async def test_402_is_decided_on_the_reserve_and_settled_on_the_cost(http: aiohttp.ClientSession,
                                                                     routstr_nodes: Any, outside: Any) -> None:
    node = await routstr_nodes(PRICEY)
    key = (await call(http, "GET", node.url + "/v1/balance/create",
                      params={"initial_balance_token": await outside.mint_token(64)}))[1]
    balance = key["balance"]
    chat = {"model": "big-model", "messages": [{"role": "user", "content": "price me please"}]}
    # Without max_tokens the whole completion budget is reserved: far above the balance, 402.
    status, body, _ = await call(http, "POST", node.url + "/v1/chat/completions", headers=bearer(key["api_key"]),
                                 json=chat)
    assert status == 402 and body["error"]["code"] == "insufficient_balance" and body["detail"]["error"]
    # max_completion_tokens does not lower the reserve; max_tokens does.
    status, _, _ = await call(http, "POST", node.url + "/v1/chat/completions", headers=bearer(key["api_key"]),
                              json={**chat, "max_completion_tokens": 8})
    assert status == 402
    ask = {**chat, "max_tokens": 8}
    reserve = reserve_msat(PRICEY["big-model"], ask, 1)
    cost = token_cost(PRICEY["big-model"], 3 + 3, 6)
    assert cost.total_msats < balance < max_costs(PRICEY["big-model"])[2] * 1000 and reserve <= balance
    status, body, headers = await call(http, "POST", node.url + "/v1/chat/completions",
                                       headers=bearer(key["api_key"]), json=ask)
    assert status == 200, body
    assert body["usage"]["cost"] == cost.body() and body["usage"]["cost_sats"] == cost.total_msats // 1000
    assert body["usage"]["remaining_balance_msats"] == balance - cost.total_msats
    assert int(headers["X-Routstr-Cost-Msats"]) == cost.total_msats
    assert int(headers["X-Routstr-Input-Cost-Msats"]) + int(headers["X-Routstr-Output-Cost-Msats"]) == \
        cost.total_msats
    status, info, _ = await call(http, "GET", node.url + "/v1/balance/info", headers=bearer(key["api_key"]))
    assert (info["balance"], info["reserved"], info["total_spent"]) == (balance - cost.total_msats, 0,
                                                                       cost.total_msats)
    # The balance still covers the cost of the same request, but not its reserve: 402.
    node.keys[key["api_key"][3:]].balance = reserve - 1
    status, body, _ = await call(http, "POST", node.url + "/v1/chat/completions", headers=bearer(key["api_key"]),
                                 json=ask)
    assert status == 402 and reserve - 1 > cost.total_msats
    status, body, _ = await call(http, "POST", node.url + "/v1/chat/completions", headers=bearer(key["api_key"]),
                                 json={**ask, "model": "nope"})
    assert status == 400 and body == {"error": {"message": "Model 'nope' not found", "type": "invalid_model",
                                                "code": 400}, "request_id": body["request_id"]}


async def test_a_stream_carries_its_cost_in_the_final_usage_chunk(http: aiohttp.ClientSession, routstr_nodes: Any,
                                                                  outside: Any) -> None:
    node = await routstr_nodes(PRICEY)
    key = (await call(http, "GET", node.url + "/v1/balance/create",
                      params={"initial_balance_token": await outside.mint_token(16)}))[1]
    client = openai.AsyncOpenAI(base_url=f"{node.url}/v1", api_key=key["api_key"], max_retries=0)
    try:
        # No include_usage asked: the node forces it upstream and sends the usage chunk anyway.
        stream = await client.chat.completions.with_raw_response.create(
            model="small-model", messages=[{"role": "user", "content": "stream it"}], stream=True, max_tokens=50)
        assert "x-routstr-cost-msats" not in stream.headers
        text, usage = "", None
        async for chunk in stream.parse():
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
            if chunk.usage is not None:
                usage = chunk.usage
        assert text == f"Hello from {node.name}: stream it" and usage is not None
        extra: Any = usage.model_extra or {}
        assert extra["cost"]["total_msats"] == token_cost(PRICEY["small-model"], 2 + 3, 5).total_msats
        assert extra["remaining_balance_msats"] == key["balance"] - extra["cost"]["total_msats"]
    finally:
        await client.close()


async def test_x_cashu_pays_per_request_and_returns_change(http: aiohttp.ClientSession, routstr_nodes: Any,
                                                         outside: Any) -> None:
    node = await routstr_nodes(PRICEY)
    ask = {"model": "small-model", "messages": [{"role": "user", "content": "pay as you go"}], "max_tokens": 2000}
    reserve = reserve_msat(PRICEY["small-model"], ask, 1)
    small = await outside.mint_token(max(1, reserve // 1000 - 1))
    status, body, headers = await call(http, "POST", node.url + "/v1/chat/completions", headers={"X-Cashu": small},
                                       json=ask)
    assert status == 402 and body["detail"]["type"] == "minimum_balance_required" and "X-Cashu" not in headers
    assert not await outside.spent(small)  # refused before redemption
    token = await outside.mint_token(reserve // 1000 + 5)
    status, body, headers = await call(http, "POST", node.url + "/v1/chat/completions", headers={"X-Cashu": token},
                                       json=ask)
    assert status == 200, body
    cost = token_cost(PRICEY["small-model"], 4 + 3, 7)
    assert body["usage"]["cost"]["total_msats"] == cost.total_msats == int(headers["X-Routstr-Cost-Msats"])
    change = headers["X-Cashu"]
    assert face_value(change) == value_after_fee(token) - (cost.total_msats + 999) // 1000
    # The change can be asked for again with the token that paid (a lost answer).
    status, again, headers = await call(http, "POST", node.url + "/v1/balance/refund", headers={"X-Cashu": token})
    assert status == 200 and again["token"] == change == headers["X-Cashu"]
    status, body, headers = await call(http, "POST", node.url + "/v1/chat/completions", headers={"X-Cashu": token},
                                       json=ask)
    assert (status, body["error"]["code"]) == (400, "cashu_token_already_spent") and "X-Cashu" not in headers
    status, body, _ = await call(http, "POST", node.url + "/v1/balance/refund", headers={"X-Cashu": small})
    assert status == 404
    assert await outside.redeem(change) > 0


async def test_x_cashu_upstream_failure_refunds_the_whole_token(http: aiohttp.ClientSession, routstr_nodes: Any,
                                                                 outside: Any) -> None:
    node: RoutstrNode = await routstr_nodes(PRICEY)
    node.knobs.fail_upstream = 502
    token = await outside.mint_token(8)
    status, body, headers = await call(http, "POST", node.url + "/v1/chat/completions", headers={"X-Cashu": token},
                                       json={"model": "small-model", "max_tokens": 5,
                                             "messages": [{"role": "user", "content": "x"}]})
    assert status == 502 and body["error"]["type"] == "upstream_error"
    assert body["error"]["refund_token"] == headers["X-Cashu"]
    assert face_value(headers["X-Cashu"]) == value_after_fee(token)
