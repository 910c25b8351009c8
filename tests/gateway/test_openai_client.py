"""The official openai client, unchanged, against the gateway (plain, streamed, errors)."""

from __future__ import annotations

from typing import AsyncIterator

import openai
import pytest

from tests.support.stack import Stack, demo_config, start_stack


@pytest.fixture(scope="module")
async def stack(nats_url: str, mock_upstream: str) -> AsyncIterator[Stack]:
    s = await start_stack(demo_config(mock_upstream), nats_url)
    yield s
    await s.stop()


@pytest.fixture
async def client(stack: Stack) -> AsyncIterator[openai.AsyncOpenAI]:
    c = openai.AsyncOpenAI(base_url=f"{stack.url}/v1", api_key="unused-in-free-mode", max_retries=0)
    yield c
    await c.close()


async def test_plain_chat(client: openai.AsyncOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Say hi"}], max_tokens=5)
    completion = raw.parse()
    assert completion.choices[0].message.content
    assert completion.usage is not None and completion.usage.completion_tokens == 5
    assert raw.headers["x-arbstr-provider"] == "alpha"
    assert completion._request_id == raw.headers["x-request-id"]


async def test_streamed_chat(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Count"}], max_tokens=6, stream=True,
        stream_options={"include_usage": True})
    text, usage = "", None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
        if chunk.usage:
            usage = chunk.usage
    assert text
    assert usage is not None and usage.completion_tokens == 6


async def test_streamed_chat_without_usage_has_choices_on_every_chunk(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "Count"}], max_tokens=4, stream=True)
    n = 0
    async for chunk in stream:
        assert chunk.choices  # a client written for OpenAI indexes choices[0] without checking
        n += 1
    assert n >= 4


async def test_sdk_errors(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        await client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e2:
        await client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x"}],
                                             extra_headers={"X-Arbstr-Policy": "unknown"})
    assert e2.value.request_id


async def test_models_and_embeddings(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    assert "gpt-4o" in {m.id for m in models.data}
    emb = await client.embeddings.create(model="text-embedding-3-small", input=["a", "b"])
    assert len(emb.data) == 2 and len(emb.data[0].embedding) > 0
