"""The gateway end to end in free mode: real nats-server, real actors, real HTTP, the mock upstream."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest

from schemas.money import cost_msat
from tests.support.stack import Stack, demo_config, start_stack

CHAT = [{"role": "user", "content": "Hello there, how are you?"}]


@pytest.fixture(scope="module")
async def stack(nats_url: str, mock_upstream: str) -> AsyncIterator[Stack]:
    s = await start_stack(demo_config(mock_upstream), nats_url)
    yield s
    await s.stop()


@pytest.fixture(autouse=True)
async def clear_faults(mock_upstream: str) -> AsyncIterator[None]:
    yield
    async with aiohttp.ClientSession() as s:
        for p in ("alpha", "beta", "gamma"):
            await s.delete(f"{mock_upstream}/_mock/{p}/faults")


async def set_fault(mock_upstream: str, provider: str, fault: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as s:
        r = await s.post(f"{mock_upstream}/_mock/{provider}/faults", json=fault)
        assert r.status < 300


def assert_openai_error(body: dict[str, Any]) -> dict[str, Any]:
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) >= {"message", "type", "param", "code"}, err
    assert isinstance(err["message"], str) and err["message"]
    return err


async def chat(http: aiohttp.ClientSession, stack: Stack, body: dict[str, Any],
               headers: dict[str, str] | None = None) -> tuple[aiohttp.ClientResponse, Any]:
    r = await http.post(f"{stack.url}/v1/chat/completions", json=body, headers=headers or {})
    data = await r.read()
    return r, orjson.loads(data) if data else None


async def test_cheapest_provider_answers_with_cost_headers(http, stack) -> None:
    r, body = await chat(http, stack, {"model": "gpt-4o-mini", "messages": CHAT, "max_tokens": 20})
    assert r.status == 200, body
    assert r.headers["x-arbstr-provider"] == "alpha"
    assert r.headers["x-request-id"]
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    expected = cost_msat(usage["prompt_tokens"], usage["completion_tokens"], 8000, 8000)
    assert int(r.headers["x-arbstr-cost-msat"]) == expected
    assert float(r.headers["x-arbstr-overhead-ms"]) >= 0
    assert body["choices"][0]["message"]["content"]


async def test_client_request_id_is_kept(http, stack) -> None:
    r, _ = await chat(http, stack, {"model": "gpt-4o-mini", "messages": CHAT}, {"X-Request-Id": "my-req-42"})
    assert r.status == 200
    assert r.headers["x-request-id"] == "my-req-42"


async def test_paths_without_v1_prefix(http, stack) -> None:
    r = await http.post(f"{stack.url}/chat/completions", json={"model": "gpt-4o-mini", "messages": CHAT})
    assert r.status == 200
    r = await http.get(f"{stack.url}/models")
    assert r.status == 200


async def read_sse(r: aiohttp.ClientResponse) -> list[bytes]:
    frames = []
    async for line in r.content:
        line = line.strip()
        if line.startswith(b"data:"):
            frames.append(line[5:].strip())
    return frames


async def test_stream_relays_chunks_with_one_done(http, stack) -> None:
    r = await http.post(f"{stack.url}/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": CHAT, "stream": True, "max_tokens": 8})
    assert r.status == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-arbstr-provider"] == "alpha"
    frames = await read_sse(r)
    assert frames[-1] == b"[DONE]" and frames.count(b"[DONE]") == 1
    chunks = [orjson.loads(f) for f in frames[:-1]]
    # The client did not ask for usage: it sees none, exactly as from OpenAI.
    assert all(c["choices"] for c in chunks)
    assert all("usage" not in c or c["usage"] is None for c in chunks)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text


async def test_stream_with_include_usage_ends_with_usage_and_cost(http, stack) -> None:
    r = await http.post(f"{stack.url}/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": CHAT, "stream": True, "max_tokens": 8,
                              "stream_options": {"include_usage": True}})
    frames = await read_sse(r)
    assert frames[-1] == b"[DONE]" and frames.count(b"[DONE]") == 1
    final = orjson.loads(frames[-2])
    assert final["choices"] == []
    u = final["usage"]
    assert u["completion_tokens"] == 8
    assert u["cost_msat"] == cost_msat(u["prompt_tokens"], u["completion_tokens"], 8000, 8000)
    assert sum(1 for f in frames[:-1] if "usage" in orjson.loads(f) and orjson.loads(f)["usage"]) == 1


async def test_unknown_model_is_404(http, stack) -> None:
    r, body = await chat(http, stack, {"model": "no-such-model", "messages": CHAT})
    assert r.status == 404
    err = assert_openai_error(body)
    assert err["param"] == "model" and err["code"] == "model_not_found"


@pytest.mark.parametrize("raw,param", [
    (b"{not json", None),
    (b"[1, 2, 3]", None),
    (b'{"model": "gpt-4o-mini"}', "messages"),
    (b'{"model": "gpt-4o-mini", "messages": []}', "messages"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "wizard", "content": "x"}]}', "messages[0].role"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": "12"}',
     "max_tokens"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "max_tokens": -5}',
     "max_tokens"),
    (b'{"model": 42, "messages": [{"role": "user", "content": "x"}]}', "model"),
    (b'{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}', "stream"),
    (b"\xff\xfe\x00garbage", None),
])
async def test_bad_input_is_400_openai_error(http, stack, raw: bytes, param: str | None) -> None:
    r = await http.post(f"{stack.url}/v1/chat/completions", data=raw, headers={"Content-Type": "application/json"})
    assert r.status == 400
    err = assert_openai_error(await r.json())
    assert err["type"] == "invalid_request_error"
    if param:
        assert err["param"] == param
    assert r.headers["x-request-id"]


async def test_oversized_body_is_413(http, stack) -> None:
    big = "x" * (stack.config.server.max_body_bytes + 10)
    r = await http.post(f"{stack.url}/v1/chat/completions",
                        json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": big}]})
    assert r.status == 413
    assert_openai_error(await r.json())


async def test_unknown_path_and_method_are_openai_errors(http, stack) -> None:
    r = await http.get(f"{stack.url}/v1/nothing-here")
    assert r.status == 404
    assert_openai_error(await r.json())
    r = await http.get(f"{stack.url}/v1/chat/completions")
    assert r.status == 405
    assert_openai_error(await r.json())


async def test_policy_header_restricts_models(http, stack) -> None:
    r, body = await chat(http, stack, {"model": "gpt-4o-mini", "messages": CHAT}, {"X-Arbstr-Policy": "premium"})
    assert r.status == 400
    assert assert_openai_error(body)["code"] == "model_not_allowed"
    r, body = await chat(http, stack, {"model": "gpt-4o", "messages": CHAT}, {"X-Arbstr-Policy": "premium"})
    assert r.status == 200, body
    assert r.headers["x-arbstr-policy"] == "premium"


async def test_unknown_policy_header_is_400(http, stack) -> None:
    r, body = await chat(http, stack, {"model": "gpt-4o", "messages": CHAT}, {"X-Arbstr-Policy": "nope"})
    assert r.status == 400
    assert assert_openai_error(body)["code"] == "unknown_policy"


async def test_keyword_selects_policy(http, stack) -> None:
    msgs = [{"role": "user", "content": "Review this legal contract please"}]
    r, body = await chat(http, stack, {"model": "gpt-4o-mini", "messages": msgs})
    assert r.status == 400  # "legal" selects premium, which allows only gpt-4o
    r, body = await chat(http, stack, {"model": "gpt-4o", "messages": msgs})
    assert r.status == 200 and r.headers["x-arbstr-policy"] == "premium"


async def test_models_list_cheapest_price(http, stack) -> None:
    r = await http.get(f"{stack.url}/v1/models")
    assert r.status == 200
    body = await r.json()
    assert body["object"] == "list"
    ids = {m["id"]: m for m in body["data"]}
    assert {"gpt-4o-mini", "gpt-4o"} <= set(ids)
    assert ids["gpt-4o"]["pricing"]["provider"] == "alpha"
    assert ids["gpt-4o"]["pricing"]["input_msat_per_1m"] == 8_000_000
    r = await http.get(f"{stack.url}/v1/models/gpt-4o")
    assert r.status == 200 and (await r.json())["id"] == "gpt-4o"
    r = await http.get(f"{stack.url}/v1/models/nope")
    assert r.status == 404
    assert_openai_error(await r.json())


async def test_upstream_4xx_passes_through_without_fallback(http, stack, mock_upstream) -> None:
    await set_fault(mock_upstream, "alpha", {"status": 400, "count": 1})
    r, body = await chat(http, stack, {"model": "gpt-4o-mini", "messages": CHAT})
    assert r.status == 400
    assert_openai_error(body)
    assert r.headers["x-arbstr-provider"] == "alpha"


async def test_upstream_5xx_falls_over_to_next(http, stack, mock_upstream) -> None:
    await set_fault(mock_upstream, "alpha", {"status": 500, "count": 1})
    r, body = await chat(http, stack, {"model": "gpt-4o-mini", "messages": CHAT})
    assert r.status == 200, body
    assert r.headers["x-arbstr-provider"] == "beta"
    assert r.headers["x-arbstr-retries"] == "1"
    assert int(r.headers["x-arbstr-cost-msat"]) == cost_msat(
        body["usage"]["prompt_tokens"], body["usage"]["completion_tokens"], 10000, 10000)


async def test_a_provider_refusing_our_key_or_balance_falls_over_and_is_never_passed_on(
        http, fresh_nats, mock_upstream) -> None:
    # An upstream 401/402/403 is about arbstr's credential or prepaid balance there, not the client's: passed on,
    # an OpenAI client would take it for its own bad key or empty balance. (Its own stack: no breaker to open.)
    own = await start_stack(demo_config(mock_upstream), fresh_nats.url, breakers=False)
    try:
        for status in (401, 402, 403):
            await set_fault(mock_upstream, "alpha", {"status": status, "count": 1})
            r, body = await chat(http, own, {"model": "gpt-4o-mini", "messages": CHAT})
            assert (r.status, r.headers["x-arbstr-provider"], r.headers["x-arbstr-retries"]) == (200, "beta", "1")
        for p in ("alpha", "beta", "gamma"):
            await set_fault(mock_upstream, p, {"status": 402})
        r, body = await chat(http, own, {"model": "gpt-4o-mini", "messages": CHAT})
        assert (r.status, body["error"]["code"]) == (502, "upstream_error")
        assert "refused arbstr's credential or payment" in body["error"]["message"]
    finally:
        await own.stop()


async def test_all_upstreams_down_is_502(http, stack, mock_upstream) -> None:
    for p in ("alpha", "beta", "gamma"):
        await set_fault(mock_upstream, p, {"status": 503})
    r, body = await chat(http, stack, {"model": "gpt-4o-mini", "messages": CHAT})
    assert r.status == 502
    assert_openai_error(body)
    assert r.headers["x-arbstr-retries"] == "3"


async def test_embeddings_are_routed(http, stack) -> None:
    r = await http.post(f"{stack.url}/v1/embeddings", json={"model": "text-embedding-3-small", "input": "hello"})
    assert r.status == 200
    body = await r.json()
    assert body["data"][0]["embedding"]
    assert r.headers["x-arbstr-provider"] == "alpha"


async def test_health_and_ready(http, stack) -> None:
    r = await http.get(f"{stack.url}/health")
    assert r.status == 200 and (await r.json())["status"] == "ok"
    r = await http.get(f"{stack.url}/ready")
    assert r.status == 200 and (await r.json())["ready"] is True


async def test_concurrent_requests(http, stack) -> None:
    async def one(i: int) -> int:
        r, _ = await chat(http, stack, {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{i}"}]})
        return r.status

    statuses = await asyncio.gather(*(one(i) for i in range(100)))
    assert statuses.count(200) == 100
