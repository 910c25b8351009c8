"""The hold covers what the upstream will bill (issue 12, "Responses API cap on the wrong field").

Property, over bodies hypothesis draws for every billed endpoint — every output cap an upstream may honour (chat
``max_tokens`` and ``max_completion_tokens``, Responses ``max_output_tokens``, completions ``max_tokens``), caps
set on fields the endpoint's upstream ignores, ``n``, ``best_of``, several prompts, token-id prompts, streamed or
not: whatever the gateway accepts, the amount it reserved is at least what the mock upstream then bills, so
nothing ever lands in ``uncollectible_msat``. The mock honours what a real upstream honours (see
``arbstr/mock_upstream/``) and produces more output than most caps allow, so a cap on the wrong field shows.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import subjects
from tests.support.fidelity import PaidStack, SpendLog, start_paid_stack
from tests.support.vault_helpers import assert_balanced, books, settled

CAP = st.integers(1, 40)  # the mock's own output target is 16: caps on both sides of it
TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=0x2FF), min_size=1, max_size=60)
TOKEN_IDS = st.lists(st.integers(0, 50_000), min_size=1, max_size=12)


def optional(**fields: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({}, optional=fields)


def streamed(body: dict[str, Any], stream: bool, usage: bool) -> dict[str, Any]:
    if stream:
        body = {**body, "stream": True}
        if usage:
            body["stream_options"] = {"include_usage": True}
    return body


@st.composite
def chat(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": draw(TEXT)}],
            **draw(optional(max_tokens=CAP, max_completion_tokens=CAP, n=st.integers(1, 4),
                            max_output_tokens=CAP))}  # the last: not a chat field, a chat upstream ignores it
    return "/v1/chat/completions", streamed(body, draw(st.booleans()), draw(st.booleans()))


@st.composite
def completions(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    prompt = draw(st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=3), TOKEN_IDS,
                            st.lists(TOKEN_IDS, min_size=1, max_size=3)))
    body = {"model": "gpt-4o-mini", "prompt": prompt,
            **draw(optional(max_tokens=CAP, n=st.integers(1, 3), best_of=st.integers(1, 3),
                            max_completion_tokens=CAP))}
    return "/v1/completions", streamed(body, draw(st.booleans()), draw(st.booleans()))


@st.composite
def responses(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    body = {"model": "gpt-4o-mini", "input": draw(TEXT),
            **draw(optional(max_output_tokens=CAP, max_completion_tokens=CAP, max_tokens=CAP,
                            instructions=TEXT))}
    return "/v1/responses", streamed(body, draw(st.booleans()), False)


@st.composite
def embeddings(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    value = draw(st.one_of(TEXT, st.lists(TEXT, min_size=1, max_size=4), TOKEN_IDS,
                           st.lists(TOKEN_IDS, min_size=1, max_size=3)))
    return "/v1/embeddings", {"model": "text-embedding-3-small", "input": value}


def corpus(n: int) -> list[tuple[str, dict[str, Any]]]:
    """``n`` bodies drawn by hypothesis up front (the stack serves them on the test's own loop)."""
    out: list[tuple[str, dict[str, Any]]] = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(chat(), completions(), responses(), embeddings()))
    def collect(case: tuple[str, dict[str, Any]]) -> None:
        out.append(case)

    collect()
    return out


@pytest.fixture(scope="module")
async def paid(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PaidStack]:
    s = await start_paid_stack(tmp_path_factory.mktemp("envelope"))
    yield s
    await s.stop()


async def test_the_reserved_envelope_covers_what_the_upstream_bills(paid: PaidStack) -> None:
    cases = corpus(240)
    log = await SpendLog().start(paid.stack.nc, subjects.spend(paid.agent_id))
    gate = asyncio.Semaphore(8)
    sent: dict[str, tuple[str, dict[str, Any], int, bytes]] = {}
    async with aiohttp.ClientSession() as http:
        async def one(i: int, path: str, body: dict[str, Any]) -> None:
            rid = f"env-{i}"
            async with gate:
                async with http.post(paid.url + path, data=orjson.dumps(body),
                                     headers={"Authorization": f"Bearer {paid.token}", "X-Request-Id": rid,
                                              "Content-Type": "application/json"}) as r:
                    sent[rid] = (path, body, r.status, await r.read())

        await asyncio.gather(*(one(i, path, body) for i, (path, body) in enumerate(cases)))
        served = {rid for rid, (_, _, status, _) in sent.items() if status == 200}
        assert len(served) >= len(cases) * 0.9, {s for _, _, s, _ in sent.values()}
        events = await log.wait_for(served)
        assert set(events) == served
        for rid, event in events.items():
            path, body, _, _ = sent[rid]
            assert event.kind == "settled", (path, body, event)
            assert event.uncollectible_msat == 0 and event.cost_msat <= event.reserved_msat, (path, body, event)
        assert (await settled(http, paid.stack, paid.agent_id, timeout_s=30))["uncollectible_msat"] == 0
        assert_balanced(await books(http, paid.stack))
    await log.stop()


async def test_the_responses_cap_is_the_field_responses_honours(paid: PaidStack) -> None:
    """The case as reported: max_completion_tokens 1 beside max_output_tokens 5000 reserved for one token."""
    log = await SpendLog().start(paid.stack.nc, subjects.spend(paid.agent_id))
    async with aiohttp.ClientSession() as http:
        body = {"model": "gpt-4o-mini", "input": "Tell me a story", "max_completion_tokens": 1,
                "max_output_tokens": 5000}
        r = await http.post(f"{paid.url}/v1/responses", json=body,
                            headers={"Authorization": f"Bearer {paid.token}", "X-Request-Id": "resp-cap-1"})
        reply = await r.json()
        assert r.status == 200, reply
        assert reply["usage"]["output_tokens"] == 16  # the mock's own length: 5000 did not bind
        assert int(r.headers["x-arbstr-max-tokens"]) == 5000
        (event,) = (await log.wait_for({"resp-cap-1"})).values()
        assert event.uncollectible_msat == 0 and event.reserved_msat >= event.cost_msat
        # Chat: an upstream may honour either cap, so the hold covers the larger; the gateway caps both at it.
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3,
                "max_completion_tokens": 30, "n": 2}
        r = await http.post(f"{paid.url}/v1/chat/completions", json=body,
                            headers={"Authorization": f"Bearer {paid.token}", "X-Request-Id": "chat-cap-1"})
        reply = await r.json()
        assert r.status == 200, reply
        assert int(r.headers["x-arbstr-max-tokens"]) == 30 and len(reply["choices"]) == 2
        (event,) = (await log.wait_for({"chat-cap-1"})).values()
        assert event.uncollectible_msat == 0 and event.reserved_msat >= event.cost_msat
    await log.stop()
