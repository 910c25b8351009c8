"""Streamed requests are billed for what the upstream produced: usage read from whichever chunk carries it,
estimated (and marked so) when there is none, kept on after a client disconnect and after an upstream cut.
The storm at the end does 1,000 of them at once and checks the sum to the millisat."""

from __future__ import annotations

import asyncio
import random
from typing import Any, AsyncIterator, Optional

import aiohttp
import orjson
import pytest

from schemas import subjects
from schemas.money import cost_msat
from schemas.vault import SpendEvent
from tests.support.fidelity import PROVIDERS, PaidStack, SpendLog, clear_faults, mock_stats, set_faults, start_paid_stack
from tests.support.vault_helpers import assert_balanced, books, settled

RATES = dict(PROVIDERS)


@pytest.fixture(scope="module")
async def paid(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PaidStack]:
    s = await start_paid_stack(tmp_path_factory.mktemp("accounting"), history=5000)
    yield s
    await s.stop()


@pytest.fixture
async def spend(paid: PaidStack) -> AsyncIterator[SpendLog]:
    log = await SpendLog().start(paid.stack.nc, subjects.spend(paid.agent_id))
    yield log
    await log.stop()
    await clear_faults(paid.mock.url)


def messages(i: int) -> list[dict[str, Any]]:
    return [{"role": "user", "content": f"Stream number {i}, please count for me"}]


async def produced_by(paid: PaidStack) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, _ in PROVIDERS:
        for p in (await mock_stats(paid.mock.url, name))["produced"]:
            out[p["request_id"]] = {**p, "provider": name}
    return out


def cost_of(p: dict[str, Any]) -> int:
    rate = RATES[p["provider"]]
    return cost_msat(p["prompt_tokens"], p["completion_tokens_sent"], rate, rate)


async def stream(http: aiohttp.ClientSession, paid: PaidStack, rid: str, *, path: str = "/v1/chat/completions",
                 body: Optional[dict[str, Any]] = None, read_frames: Optional[int] = None) -> list[bytes]:
    """One streamed request; with ``read_frames`` the client reads that many frames and then hangs up."""
    payload = body or {"model": "gpt-4o-mini", "messages": messages(0), "max_tokens": 8, "stream": True}
    frames: list[bytes] = []
    async with http.post(f"{paid.url}{path}", json=payload,
                         headers={"Authorization": f"Bearer {paid.token}", "X-Request-Id": rid}) as r:
        assert r.status == 200, await r.text()
        buf = b""
        async for chunk in r.content.iter_any():
            buf += chunk
            while b"\n\n" in buf:
                frame, buf = buf.split(b"\n\n", 1)
                frames.append(frame)
                if read_frames is not None and len(frames) >= read_frames:
                    r.close()  # the client goes away mid-stream
                    return frames
    return frames


async def billed(paid: PaidStack, spend: SpendLog, rid: str) -> tuple[SpendEvent, dict[str, Any]]:
    got = await spend.wait_for({rid})
    assert rid in got, f"no spend event for {rid}"
    return got[rid], (await produced_by(paid))[rid]


async def test_usage_on_a_content_chunk_is_read(http: aiohttp.ClientSession, paid: PaidStack,
                                                spend: SpendLog) -> None:
    await set_faults(paid.mock.url, "alpha", {"usage_on_content_chunk": True, "count": 1})
    body = {"model": "gpt-4o-mini", "messages": messages(1), "max_tokens": 8, "stream": True,
            "stream_options": {"include_usage": True}}
    frames = await stream(http, paid, "acct-content-usage", body=body)
    assert frames[-1] == b"data: [DONE]" and frames.count(b"data: [DONE]") == 1
    final = orjson.loads(frames[-2][6:])
    assert final["choices"] == [] and final["usage"]["completion_tokens"] == 8
    # the usage the upstream put on its finish chunk is not shown twice
    assert sum(1 for f in frames[:-2] if orjson.loads(f[6:]).get("usage")) == 0
    event, produced = await billed(paid, spend, "acct-content-usage")
    assert not event.estimated and event.cost_msat == cost_of(produced) == final["usage"]["cost_msat"]


async def test_missing_usage_is_estimated_and_marked(http: aiohttp.ClientSession, paid: PaidStack,
                                                     spend: SpendLog) -> None:
    await set_faults(paid.mock.url, "alpha", {"omit_usage": True, "count": 1})
    frames = await stream(http, paid, "acct-no-usage")
    assert frames[-1] == b"data: [DONE]"
    event, produced = await billed(paid, spend, "acct-no-usage")
    assert event.estimated and event.kind == "settled"
    assert event.cost_msat == cost_of(produced)  # the mock's tokens are exactly countable


async def test_client_disconnect_is_billed_for_what_was_produced(http: aiohttp.ClientSession, paid: PaidStack,
                                                                 spend: SpendLog) -> None:
    await set_faults(paid.mock.url, "alpha", {"chunk_delay_ms": 20, "count": 1})
    frames = await stream(http, paid, "acct-disconnect", body={
        "model": "gpt-4o-mini", "messages": messages(2), "max_tokens": 12, "stream": True}, read_frames=3)
    assert len(frames) == 3
    event, produced = await billed(paid, spend, "acct-disconnect")
    assert produced["completion_tokens_sent"] == 12 and not produced["cut"]  # the gateway read it all
    assert not event.estimated and event.cost_msat == cost_of(produced) and event.output_tokens == 12


async def test_upstream_cut_sends_error_and_bills_what_was_produced(http: aiohttp.ClientSession,
                                                                    paid: PaidStack, spend: SpendLog) -> None:
    await set_faults(paid.mock.url, "alpha", {"cut_after_chunks": 3, "count": 1})
    frames = await stream(http, paid, "acct-cut")
    assert b"data: [DONE]" not in frames
    err = orjson.loads(frames[-1][6:])
    assert err["error"]["code"] == "upstream_stream_cut"
    event, produced = await billed(paid, spend, "acct-cut")
    assert produced["cut"] and produced["completion_tokens_sent"] == 3
    assert event.estimated and event.output_tokens == 3 and event.cost_msat == cost_of(produced)


async def test_responses_stream_billed_from_completed_event(http: aiohttp.ClientSession, paid: PaidStack,
                                                            spend: SpendLog) -> None:
    frames = await stream(http, paid, "acct-responses", path="/v1/responses", body={
        "model": "gpt-4o-mini", "input": "responses accounting", "max_output_tokens": 9, "stream": True})
    assert frames[-1].startswith(b"event: response.completed\ndata: ")
    assert not any(f.endswith(b"[DONE]") for f in frames)
    completed = orjson.loads(frames[-1].split(b"data: ", 1)[1])
    event, produced = await billed(paid, spend, "acct-responses")
    usage = completed["response"]["usage"]
    assert not event.estimated and event.output_tokens == usage["output_tokens"] == 9
    assert event.cost_msat == cost_msat(usage["input_tokens"], 9, RATES["alpha"], RATES["alpha"]) == cost_of(produced)


async def test_responses_stream_without_usage_is_estimated(http: aiohttp.ClientSession, paid: PaidStack,
                                                           spend: SpendLog) -> None:
    await set_faults(paid.mock.url, "alpha", {"omit_usage": True, "count": 1})
    await stream(http, paid, "acct-responses-est", path="/v1/responses", body={
        "model": "gpt-4o-mini", "input": [{"role": "user", "content": "estimate me"}], "instructions": "short",
        "max_output_tokens": 4, "stream": True})
    event, produced = await billed(paid, spend, "acct-responses-est")
    assert event.estimated and event.cost_msat == cost_of(produced)


@pytest.mark.slow
async def test_storm_of_streams_bills_exactly_what_was_produced(http: aiohttp.ClientSession, paid: PaidStack,
                                                                spend: SpendLog) -> None:
    n, concurrency = 1000, 50
    rng = random.Random(5)
    # The fault script is taken in arrival order; which request meets which fault does not matter, since the
    # mock records what it produced per request id.
    script: list[dict[str, Any]] = []
    for _ in range(n):
        roll = rng.random()
        if roll < 0.25:
            script.append({"cut_after_chunks": rng.randint(0, 6), "count": 1})
        elif roll < 0.4:
            script.append({"omit_usage": True, "count": 1})
        elif roll < 0.5:
            script.append({"usage_on_content_chunk": True, "count": 1})
        else:
            script.append({"chunk_delay_ms": rng.choice([0, 1]), "count": 1})
    await set_faults(paid.mock.url, "alpha", script)
    plans = [(f"storm-{i}", rng.randint(2, 10), rng.choice([None, None, 1, 2, 4]),
              rng.random() < 0.5) for i in range(n)]
    gate = asyncio.Semaphore(concurrency)

    async def one(rid: str, max_tokens: int, read_frames: Optional[int], usage: bool) -> None:
        body: dict[str, Any] = {"model": "gpt-4o-mini", "messages": messages(int(rid.split("-")[1])),
                                "max_tokens": max_tokens, "stream": True}
        if usage:
            body["stream_options"] = {"include_usage": True}
        async with gate:
            await stream(http, paid, rid, body=body, read_frames=read_frames)

    await asyncio.gather(*(one(*p) for p in plans))
    rids = {p[0] for p in plans}
    events = await spend.wait_for(rids, timeout_s=60)
    assert set(events) == rids
    produced = await produced_by(paid)
    assert rids <= set(produced)
    reported = [r for r in rids if not events[r].estimated]
    estimated = [r for r in rids if events[r].estimated]
    assert reported and estimated
    for rid in rids:  # every request, to the millisat: reported usage and counted tokens alike
        assert events[rid].kind == "settled", events[rid]
        assert events[rid].provider == produced[rid]["provider"]
        assert events[rid].cost_msat == cost_of(produced[rid]), (events[rid], produced[rid])
    assert sum(e.cost_msat for e in events.values()) == sum(cost_of(produced[r]) for r in rids)
    assert (await settled(http, paid.stack, paid.agent_id, timeout_s=30))["pending_msat"] == 0
    assert_balanced(await books(http, paid.stack))
