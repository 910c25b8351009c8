"""The official openai client (sync and async), unchanged, against a paid gateway: every endpoint it uses, streamed
and plain, and the exception class it raises for every error status the gateway can answer."""

from __future__ import annotations

import asyncio
import base64
import json
import re
import struct
from typing import Any, AsyncIterator, Callable, Iterator, TypeVar

import aiohttp
import httpx
import openai
import pytest

from schemas.money import cost_msat
from tests.support.fidelity import (PaidStack, clear_faults, fidelity_config, fidelity_routes, mock_stats, set_faults,
                            start_paid_stack)
from tests.support.stack import start_stack
from tests.support.vault_helpers import new_agent

T = TypeVar("T")
CHAT = [{"role": "user", "content": "Hello there, conformance"}]
ALPHA_RATE = 8000


@pytest.fixture(scope="module")
async def paid(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PaidStack]:
    s = await start_paid_stack(tmp_path_factory.mktemp("conformance"), first_byte_timeout_s=2.0)
    yield s
    await s.stop()


@pytest.fixture(autouse=True)
async def no_faults(paid: PaidStack) -> AsyncIterator[None]:
    yield
    await clear_faults(paid.mock.url)


@pytest.fixture(params=["sync", "async"])
def sdk(request: pytest.FixtureRequest, paid: PaidStack) -> Iterator["SDK"]:
    s = SDK(request.param, paid.url, paid.token)
    yield s
    s.close()


class SDK:
    """One client, sync or async; ``run`` calls it the right way (the sync one in a thread: it blocks)."""

    def __init__(self, kind: str, url: str, token: str, max_retries: int = 0, **kw: Any) -> None:
        self.kind = kind
        cls = openai.OpenAI if kind == "sync" else openai.AsyncOpenAI
        self.client: Any = cls(base_url=f"{url}/v1", api_key=token, max_retries=max_retries, **kw)

    async def run(self, fn: Callable[[Any], Any]) -> Any:
        if self.kind == "sync":
            return await asyncio.to_thread(fn, self.client)
        return await fn(self.client)

    async def collect(self, make: Callable[[Any], Any]) -> list[Any]:
        """Open a stream and read it to the end."""
        if self.kind == "sync":
            return await asyncio.to_thread(lambda: list(make(self.client)))
        stream = await make(self.client)
        return [item async for item in stream]

    def close(self) -> None:
        if self.kind == "sync":
            self.client.close()


# --- chat -------------------------------------------------------------------------------------------------
async def test_plain_chat_with_cost_and_request_id(sdk: SDK) -> None:
    raw = await sdk.run(lambda c: c.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=CHAT, max_tokens=5, extra_headers={"X-Request-Id": f"conf-plain-{sdk.kind}"}))
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage.completion_tokens == 5
    assert raw.headers["x-arbstr-cost-msat"] == str(cost_msat(completion.usage.prompt_tokens, 5, ALPHA_RATE,
                                                              ALPHA_RATE))
    assert completion._request_id == f"conf-plain-{sdk.kind}"


async def test_streamed_chat_usage_chunk_carries_cost(sdk: SDK) -> None:
    chunks = await sdk.collect(lambda c: c.chat.completions.create(
        model="gpt-4o-mini", messages=CHAT, max_tokens=6, stream=True, stream_options={"include_usage": True}))
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    usage = [ch.usage for ch in chunks if ch.usage]
    assert text and len(usage) == 1 and chunks[-1].usage is not None and chunks[-1].choices == []
    u = usage[0]
    assert u.completion_tokens == 6
    assert u.model_extra["cost_msat"] == cost_msat(u.prompt_tokens, 6, ALPHA_RATE, ALPHA_RATE)


async def test_tools_and_response_format_pass_through(sdk: SDK, paid: PaidStack) -> None:
    tools = [{"type": "function", "function": {"name": "lookup", "description": "find a thing",
                                               "parameters": {"type": "object", "properties": {
                                                   "q": {"type": "string"}}, "required": ["q"]}}}]
    completion = await sdk.run(lambda c: c.chat.completions.create(
        model="gpt-4o-mini", messages=CHAT, max_tokens=4, tools=tools, tool_choice="auto",
        response_format={"type": "json_object"}))
    assert completion.choices[0].finish_reason in ("stop", "length")
    seen = (await mock_stats(paid.mock.url, "alpha"))["recent_requests"][-1]
    assert {"tools", "tool_choice", "response_format"} <= set(seen["keys"])


async def test_completions_plain_and_streamed(sdk: SDK) -> None:
    done = await sdk.run(lambda c: c.completions.create(model="gpt-4o-mini", prompt="Once upon", max_tokens=3))
    assert done.usage.completion_tokens == 3 and done.choices[0].text
    chunks = await sdk.collect(lambda c: c.completions.create(model="gpt-4o-mini", prompt="Once upon", max_tokens=3,
                                                              stream=True))
    assert "".join(ch.choices[0].text for ch in chunks if ch.choices) == done.choices[0].text


# --- embeddings -------------------------------------------------------------------------------------------
async def test_embeddings_base64_default_and_float_agree(sdk: SDK, paid: PaidStack) -> None:
    default = await sdk.run(lambda c: c.embeddings.create(model="text-embedding-3-small", input=["a", "b"]))
    seen = (await mock_stats(paid.mock.url, "alpha"))["recent_requests"][-1]
    assert "encoding_format" in seen["keys"]  # the client asked for base64 and the gateway kept it
    floats = await sdk.run(lambda c: c.embeddings.create(model="text-embedding-3-small", input=["a", "b"],
                                                         encoding_format="float"))
    assert [d.embedding for d in default.data] == [d.embedding for d in floats.data]
    raw = await sdk.run(lambda c: c.embeddings.with_raw_response.create(
        model="text-embedding-3-small", input="a", encoding_format="base64"))
    packed = raw.http_response.json()["data"][0]["embedding"]
    vector = list(struct.unpack(f"<{len(base64.b64decode(packed)) // 4}f", base64.b64decode(packed)))
    assert vector == floats.data[0].embedding
    assert int(raw.headers["x-arbstr-cost-msat"]) > 0


# --- responses --------------------------------------------------------------------------------------------
async def test_responses_plain(sdk: SDK, paid: PaidStack) -> None:
    raw = await sdk.run(lambda c: c.responses.with_raw_response.create(
        model="gpt-4o-mini", input="Tell me about routers", instructions="Be brief", max_output_tokens=7))
    resp = raw.parse()
    assert resp.output_text and resp.usage.output_tokens == 7
    assert raw.headers["x-arbstr-cost-msat"] == str(cost_msat(resp.usage.input_tokens, 7, ALPHA_RATE, ALPHA_RATE))
    seen = (await mock_stats(paid.mock.url, "alpha"))["recent_requests"][-1]
    assert seen["endpoint"] == "responses" and seen["max_output_tokens"] == 7
    assert "stream_options" not in seen["keys"]


async def test_responses_message_list_input(sdk: SDK) -> None:
    resp = await sdk.run(lambda c: c.responses.create(
        model="gpt-4o-mini", max_output_tokens=3,
        input=[{"role": "user", "content": [{"type": "input_text", "text": "first question"}]},
               {"role": "assistant", "content": "an answer"},
               {"role": "user", "content": "second question"}]))
    assert resp.status == "completed" and resp.usage.output_tokens == 3


async def test_responses_streamed_typed_events(sdk: SDK, paid: PaidStack) -> None:
    events = await sdk.collect(lambda c: c.responses.create(model="gpt-4o-mini", input="stream me",
                                                            max_output_tokens=5, stream=True))
    types = [e.type for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert deltas == final.output_text and final.usage.output_tokens == 5
    seen = (await mock_stats(paid.mock.url, "alpha"))["recent_requests"][-1]
    assert seen["stream"] is True and "stream_options" not in seen["keys"]


async def test_responses_stream_cut_raises_api_error(sdk: SDK, paid: PaidStack) -> None:
    await set_faults(paid.mock.url, "alpha", {"cut_after_chunks": 2, "count": 1})
    got: list[Any] = []

    def read_sync(c: Any) -> None:
        for e in c.responses.create(model="gpt-4o-mini", input="cut me", max_output_tokens=6, stream=True):
            got.append(e)

    async def read_async(c: Any) -> None:
        async for e in await c.responses.create(model="gpt-4o-mini", input="cut me", max_output_tokens=6,
                                                stream=True):
            got.append(e)

    with pytest.raises(openai.APIError) as e:
        await sdk.run(read_sync if sdk.kind == "sync" else read_async)
    assert isinstance(e.value.body, dict) and e.value.body["code"] == "upstream_stream_cut"
    assert sum(1 for x in got if x.type == "response.output_text.delta") == 2


# --- models -----------------------------------------------------------------------------------------------
async def test_models_list_and_retrieve(sdk: SDK) -> None:
    models = await sdk.run(lambda c: c.models.list())
    assert {"gpt-4o", "gpt-4o-mini"} <= {m.id for m in models.data}
    model = await sdk.run(lambda c: c.models.retrieve("gpt-4o"))
    assert model.id == "gpt-4o" and model.object == "model"
    with pytest.raises(openai.NotFoundError):
        await sdk.run(lambda c: c.models.retrieve("no-such-model"))


# --- errors: one status each, the SDK's class for it ------------------------------------------------------
def chat_call(**kw: Any) -> Callable[[Any], Any]:
    body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": CHAT, "max_tokens": 5, **kw}
    return lambda c: c.chat.completions.create(**body)


async def raises(sdk: SDK, fn: Callable[[Any], Any], exc: type[openai.APIStatusError], status: int
                 ) -> openai.APIStatusError:
    with pytest.raises(exc) as e:
        await sdk.run(fn)
    err = e.value
    assert err.status_code == status
    assert isinstance(err.body, dict) and {"message", "type", "param", "code"} <= set(err.body)
    assert err.request_id and err.request_id == err.response.headers["x-request-id"]
    return err


async def test_400_names_the_param(sdk: SDK) -> None:
    err = await raises(sdk, chat_call(max_tokens=-1), openai.BadRequestError, 400)
    assert err.param == "max_tokens"
    err = await raises(sdk, chat_call(messages=[{"role": "wizard", "content": "x"}]), openai.BadRequestError, 400)
    assert err.param == "messages[0].role"
    assert err.response.headers["x-should-retry"] == "false"


async def test_401_bad_token(sdk: SDK, paid: PaidStack) -> None:
    bad = SDK(sdk.kind, paid.url, "arb_not-a-real-token")
    try:
        await raises(bad, chat_call(), openai.AuthenticationError, 401)
    finally:
        bad.close()


class Counted:
    """An httpx client that counts the requests the SDK sends (to see its retries)."""

    def __init__(self, kind: str) -> None:
        self.sent = 0
        if kind == "sync":
            self.client: Any = httpx.Client(event_hooks={"request": [self._sync]})
        else:
            self.client = httpx.AsyncClient(event_hooks={"request": [self._async]})

    def _sync(self, request: httpx.Request) -> None:
        self.sent += 1

    async def _async(self, request: httpx.Request) -> None:
        self.sent += 1


async def test_402_and_403_are_not_retried(sdk: SDK, paid: PaidStack) -> None:
    async with aiohttp.ClientSession() as http:
        _, poor = await new_agent(http, paid.stack, f"poor-{sdk.kind}", deposit_msat=10)
        _, limited = await new_agent(http, paid.stack, f"limited-{sdk.kind}", deposit_msat=10_000_000,
                                     policy={"max_tx_msat": 1_000})
    for token, exc, status, code in ((poor, openai.APIStatusError, 402, "insufficient_balance"),
                                     (limited, openai.PermissionDeniedError, 403, "max_tx_exceeded")):
        counted = Counted(sdk.kind)
        client = SDK(sdk.kind, paid.url, token, max_retries=2, http_client=counted.client)
        try:
            err = await raises(client, chat_call(max_tokens=500), exc, status)
        finally:
            client.close()
        assert type(err) is exc  # 402 has no class of its own: a plain APIStatusError
        assert err.code == code and err.response.headers["x-should-retry"] == "false"
        assert counted.sent == 1


async def test_404_unknown_model(sdk: SDK) -> None:
    err = await raises(sdk, chat_call(model="no-such-model"), openai.NotFoundError, 404)
    assert err.param == "model" and err.code == "model_not_found"


async def test_413_body_too_large(sdk: SDK) -> None:
    err = await raises(sdk, chat_call(messages=[{"role": "user", "content": "x" * 70_000}]),
                       openai.APIStatusError, 413)
    assert err.code == "request_too_large" and err.response.headers["x-should-retry"] == "false"


async def test_429_upstream_rate_limit_keeps_retry_after(sdk: SDK, paid: PaidStack) -> None:
    for p in ("alpha", "beta", "gamma"):
        await set_faults(paid.mock.url, p, {"status": 429, "retry_after": 7, "count": 1})
    err = await raises(sdk, chat_call(), openai.RateLimitError, 429)
    assert err.response.headers["retry-after"] == "7"


async def test_502_upstream_down_is_sanitised(sdk: SDK, paid: PaidStack) -> None:
    secret = "sk-live-0123456789abcdefghij"
    for p in ("alpha", "beta", "gamma"):
        await set_faults(paid.mock.url, p, {"status": 500, "count": 1,
                                            "message": f"boom at http://10.0.0.7:8080/internal key {secret}"})
    err = await raises(sdk, chat_call(), openai.InternalServerError, 502)
    assert secret not in err.message and "10.0.0.7" not in err.message
    assert err.response.headers["x-arbstr-retries"] == "3"


async def test_upstream_4xx_keeps_status_and_is_sanitised(sdk: SDK, paid: PaidStack) -> None:
    await set_faults(paid.mock.url, "alpha", {"status": 422, "count": 1, "error_shape": "detail",
                                              "message": "bad thing, see https://internal.example/x?key=sk-abcdefghijkl"})
    err = await raises(sdk, chat_call(), openai.UnprocessableEntityError, 422)
    assert "internal.example" not in err.message and "sk-abcdefghijkl" not in err.message


async def test_503_actor_unreachable(sdk: SDK, paid: PaidStack, nats_url: str) -> None:
    # a free-mode gateway with no router: the route request has no responders
    s = await start_stack(fidelity_config(paid.mock.url, paid=False), nats_url, routers=0, breakers=False,
                          extend=fidelity_routes)
    client = SDK(sdk.kind, s.url, "unused")
    try:
        err = await raises(client, chat_call(), openai.InternalServerError, 503)
        assert err.type == "service_unavailable"
    finally:
        client.close()
        await s.stop()


async def test_504_upstream_timeout(sdk: SDK, paid: PaidStack) -> None:
    for p in ("alpha", "beta", "gamma"):
        await set_faults(paid.mock.url, p, {"delay_ms": 3000, "count": 1})
    err = await raises(sdk, chat_call(), openai.InternalServerError, 504)
    assert err.code == "upstream_timeout"


# --- the document -----------------------------------------------------------------------------------------
async def test_openapi_document_describes_routes(paid: PaidStack) -> None:
    async with aiohttp.ClientSession() as http:
        r = await http.get(f"{paid.url}/openapi.json")
        doc = await r.json()
    assert r.status == 200 and doc["openapi"].startswith("3.1")
    schemas = doc["components"]["schemas"]
    for path, method, model in (("/v1/chat/completions", "post", "ChatCompletionRequest"),
                                ("/v1/responses", "post", "ResponsesRequest"),
                                ("/v1/embeddings", "post", "EmbeddingRequest"),
                                ("/v1/admin/agents/{agent_id}/deposits", "post", "DepositBody")):
        op = doc["paths"][path][method]
        ref = op["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model}" and model in schemas
        assert op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert schemas["ResponsesRequest"]["properties"]["max_output_tokens"]["anyOf"][0]["minimum"] == 1
    assert {"get"} <= set(doc["paths"]["/v1/models/{model}"])
    assert doc["paths"]["/v1/models/{model}"]["get"]["parameters"][0]["name"] == "model"
    refs = set(re.findall(r"#/components/schemas/([A-Za-z0-9_\-]+)", json.dumps(doc)))
    assert refs and refs <= set(schemas)  # every $ref resolves
