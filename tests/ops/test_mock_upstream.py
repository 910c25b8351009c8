"""The mock OpenAI upstream, over real HTTP on loopback: replies, usage, streaming framing, every fault,
per-provider isolation, the stats tests of billing rely on, and the official ``openai`` client against it."""

from __future__ import annotations

import asyncio
import base64
import struct
import time
import uuid
from typing import Any, AsyncIterator, Mapping, Optional

import aiohttp
import orjson
import pytest

from arbstr.mock_upstream import Fault, FaultError, MockUpstreamServer, parse_fault, parse_fault_script
from arbstr.mock_upstream.cli import main
from arbstr.mock_upstream.state import ProviderState
from arbstr.mock_upstream.wire import auth_fingerprint, embedding_vector, reply_tokens
from schemas.tokens import estimate_messages_tokens, estimate_text_tokens, responses_messages

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Summarise the plot of Hamlet in two lines, please."},
]


@pytest.fixture(scope="module")
async def mock() -> AsyncIterator[MockUpstreamServer]:
    async with MockUpstreamServer(port=0) as server:
        yield server


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def provider() -> str:
    """A fresh provider name per test: faults and stats never leak between tests."""
    return "p" + uuid.uuid4().hex[:10]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": "mock-small", "messages": MESSAGES, **extra}


async def post(http: aiohttp.ClientSession, url: str, body: Any, headers: Optional[dict[str, str]] = None
               ) -> tuple[int, Mapping[str, str], bytes]:
    async with http.post(url, data=orjson.dumps(body), headers=headers or {}) as resp:
        return resp.status, resp.headers.copy(), await resp.read()


async def set_fault(http: aiohttp.ClientSession, mock: MockUpstreamServer, provider: str, fault: Any) -> Any:
    status, _, body = await post(http, f"{mock.url}/_mock/{provider}/faults", fault)
    assert status == 200, body
    return orjson.loads(body)


async def stats(http: aiohttp.ClientSession, mock: MockUpstreamServer, provider: str) -> dict[str, Any]:
    async with http.get(f"{mock.url}/_mock/{provider}/stats") as resp:
        assert resp.status == 200
        return await resp.json()


def sse_frames(raw: bytes) -> list[bytes]:
    assert raw.endswith(b"\n\n"), raw[-80:]
    frames = raw.split(b"\n\n")[:-1]
    for frame in frames:
        assert frame.startswith(b"data: ") or frame.startswith(b"event: "), frame
    return frames


def data_of(frame: bytes) -> bytes:
    for line in frame.split(b"\n"):
        if line.startswith(b"data: "):
            return line[len(b"data: "):]
    raise AssertionError(f"no data line in {frame!r}")


# ------------------------------------------------------------------------------------------- pure parts


def test_reply_tokens_are_four_ascii_chars_echoing_the_prompt() -> None:
    tokens = reply_tokens("Hello, world!", 5)
    assert tokens == ["Hel ", "low ", "orl ", "dHe ", "llo "]
    assert estimate_text_tokens("".join(reply_tokens("日本語 only", 37))) == 37
    assert reply_tokens("!!!", 2) == ["tok ", "tok "]
    assert reply_tokens("abc", 0) == []


def test_parse_fault_refuses_typos_and_bad_values() -> None:
    assert parse_fault({"status": 500, "count": 3}) == Fault(status=500, count=3)
    for bad in ({"stauts": 500}, {"status": 200}, {"count": 0}, {"delay_ms": -1}, {"error_shape": "xml"},
                {"omit_usage": "yes"}, {"retry_after": True}, [1], {"cut_after_chunks": 1.5}):
        with pytest.raises(FaultError):
            parse_fault(bad)
    with pytest.raises(FaultError):
        parse_fault_script([{"status": 500}, {"status": 502, "count": 1}])


def test_fault_script_counts_requests_then_moves_on() -> None:
    state = ProviderState("x", 10)
    state.set_faults(parse_fault_script([{"status": 500, "count": 2}, {"status": 429, "count": 1}]))
    taken = [state.take_fault() for _ in range(4)]
    assert [f.status if f else None for f in taken] == [500, 500, 429, None]
    state.set_faults([parse_fault({"delay_ms": 1})])
    assert all(state.take_fault() is not None for _ in range(50))


def test_responses_messages_cover_instructions_strings_and_items() -> None:
    msgs = responses_messages({"instructions": "be brief", "input": [
        {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
        {"type": "function_call_output", "call_id": "c", "output": "42"},
    ]})
    assert [m["role"] for m in msgs] == ["developer", "user", "tool"]
    assert responses_messages({"input": "hello"}) == [{"role": "user", "content": "hello"}]


# ------------------------------------------------------------------------------------------ chat


async def test_non_streamed_chat_usage_is_predictable(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                      provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    status, headers, raw = await post(http, url, chat_body(model="some-model"))
    assert status == 200
    reply = orjson.loads(raw)
    assert reply["model"] == "some-model"
    assert reply["object"] == "chat.completion"
    usage = reply["usage"]
    assert usage["prompt_tokens"] == estimate_messages_tokens(MESSAGES)
    assert usage["completion_tokens"] == 16
    assert usage["total_tokens"] == usage["prompt_tokens"] + 16
    content = reply["choices"][0]["message"]["content"]
    assert content.startswith("Sum mar ise the")
    assert estimate_text_tokens(content) == 16
    assert reply["choices"][0]["finish_reason"] == "stop"
    assert headers["x-mock-provider"] == provider

    _, _, raw2 = await post(http, url, chat_body(model="some-model"))
    assert orjson.loads(raw2)["choices"][0]["message"]["content"] == content

    _, _, raw = await post(http, url, chat_body(max_tokens=5))
    reply = orjson.loads(raw)
    assert reply["usage"]["completion_tokens"] == 5
    assert reply["choices"][0]["finish_reason"] == "length"

    _, _, raw = await post(http, url, chat_body(max_tokens=50, max_completion_tokens=7))
    assert orjson.loads(raw)["usage"]["completion_tokens"] == 7

    _, _, raw = await post(http, url, chat_body(max_tokens=50), headers={"x-mock-output-tokens": "40"})
    assert orjson.loads(raw)["usage"]["completion_tokens"] == 40

    _, _, raw = await post(http, url, chat_body(max_tokens=3), headers={"x-mock-output-tokens": "40"})
    assert orjson.loads(raw)["usage"]["completion_tokens"] == 3


async def test_invalid_requests_get_openai_shaped_400(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                      provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    for body in ({"messages": MESSAGES}, {"model": "m", "messages": []}, chat_body(max_tokens=0),
                 chat_body(max_tokens="9"), [1, 2]):
        status, _, raw = await post(http, url, body)
        assert status == 400, body
        err = orjson.loads(raw)["error"]
        assert err["type"] == "invalid_request_error" and err["message"]
    async with http.post(url, data=b"{not json") as resp:
        assert resp.status == 400
    status, _, _ = await post(http, url, chat_body(), headers={"x-mock-output-tokens": "-2"})
    assert status == 400


async def test_streamed_chat_framing_and_usage_chunk(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                     provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    for include_usage in (None, False, True):
        body = chat_body(stream=True, max_tokens=6)
        if include_usage is not None:
            body["stream_options"] = {"include_usage": include_usage}
        status, headers, raw = await post(http, url, body)
        assert status == 200
        assert headers["Content-Type"].startswith("text/event-stream")
        frames = sse_frames(raw)
        assert frames.count(b"data: [DONE]") == 1 and frames[-1] == b"data: [DONE]"
        chunks = [orjson.loads(data_of(f)) for f in frames[:-1]]
        assert all(c["object"] == "chat.completion.chunk" and c["model"] == "mock-small" for c in chunks)
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        contents = [c["choices"][0]["delta"]["content"] for c in chunks[1:] if c["choices"]
                    and c["choices"][0]["delta"].get("content")]
        assert len(contents) == 6
        with_choices = [c for c in chunks if c["choices"]]
        assert with_choices[-1]["choices"][0]["finish_reason"] == "length"
        usage_chunks = [c for c in chunks if c.get("usage")]
        if include_usage:
            assert len(usage_chunks) == 1 and usage_chunks[0] is chunks[-1]
            assert chunks[-1]["choices"] == []
            assert chunks[-1]["usage"]["prompt_tokens"] == estimate_messages_tokens(MESSAGES)
            assert chunks[-1]["usage"]["completion_tokens"] == 6
            assert all("usage" in c for c in chunks)
        else:
            assert usage_chunks == []
            assert all(c["choices"] for c in chunks)


# ---------------------------------------------------------------------------------------------- faults


async def test_status_fault_counts_down_with_openai_error_body(mock: MockUpstreamServer,
                                                               http: aiohttp.ClientSession, provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    listed = await set_fault(http, mock, provider, {"status": 500, "count": 3})
    assert listed["faults"][0]["remaining"] == 3
    for _ in range(3):
        status, _, raw = await post(http, url, chat_body())
        assert status == 500
        err = orjson.loads(raw)["error"]
        assert err["type"] == "server_error" and err["code"] == "mock_fault"
    status, _, _ = await post(http, url, chat_body())
    assert status == 200
    s = await stats(http, mock, provider)
    assert s["requests"] == 4 and s["errors"] == 3 and s["completed"] == 1
    assert s["statuses"] == {"200": 1, "500": 3}
    assert s["faults"] == []


async def test_forever_fault_until_delete(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                          provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    await set_fault(http, mock, provider, {"status": 503})
    for _ in range(5):
        assert (await post(http, url, chat_body()))[0] == 503
    async with http.get(f"{mock.url}/_mock/{provider}/faults") as resp:
        assert (await resp.json())["faults"][0]["remaining"] is None
    async with http.delete(f"{mock.url}/_mock/{provider}/faults") as resp:
        assert resp.status == 200
    assert (await post(http, url, chat_body()))[0] == 200


async def test_rate_limit_fault_sets_retry_headers(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                   provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    await set_fault(http, mock, provider, {"status": 429, "retry_after": 2, "retry_after_ms": 1500,
                                           "should_retry": False, "count": 1})
    status, headers, raw = await post(http, url, chat_body())
    assert status == 429
    assert headers["retry-after"] == "2" and headers["retry-after-ms"] == "1500"
    assert headers["x-should-retry"] == "false"
    assert orjson.loads(raw)["error"]["type"] == "rate_limit_error"


@pytest.mark.parametrize("shape,content_type,marker", [
    ("openai", "application/json", b'"error"'),
    ("plain", "text/plain", b"502 Bad Gateway"),
    ("html", "text/html", b"<title>502 Bad Gateway</title>"),
    ("detail", "application/json", b'"detail"'),
    ("empty", None, b""),
])
async def test_error_shapes(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str, shape: str,
                            content_type: Optional[str], marker: bytes) -> None:
    await set_fault(http, mock, provider, {"status": 502, "error_shape": shape, "count": 1})
    status, headers, raw = await post(http, mock.base_url(provider) + "/chat/completions", chat_body())
    assert status == 502
    if content_type is None:
        assert raw == b""
    else:
        assert headers["Content-Type"].startswith(content_type)
        assert marker in raw


async def test_delay_before_headers(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    await set_fault(http, mock, provider, {"delay_ms": 300, "count": 1})
    t0 = time.perf_counter()
    assert (await post(http, url, chat_body()))[0] == 200
    assert time.perf_counter() - t0 >= 0.29
    t0 = time.perf_counter()
    assert (await post(http, url, chat_body()))[0] == 200
    assert time.perf_counter() - t0 < 0.25


async def test_chunk_delay_spaces_stream_chunks(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                provider: str) -> None:
    await set_fault(http, mock, provider, {"chunk_delay_ms": 40, "count": 1})
    arrivals: list[float] = []
    async with http.post(mock.base_url(provider) + "/chat/completions",
                         data=orjson.dumps(chat_body(stream=True, max_tokens=4))) as resp:
        async for line in resp.content:
            if b'"content":"' in line and b'"content":""' not in line:
                arrivals.append(time.perf_counter())
    assert len(arrivals) == 4
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    assert min(gaps) >= 0.03, gaps


async def test_cut_after_chunks_closes_without_done(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                    provider: str) -> None:
    await set_fault(http, mock, provider, {"cut_after_chunks": 2, "count": 1})
    got = bytearray()
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(mock.base_url(provider) + "/chat/completions",
                             data=orjson.dumps(chat_body(stream=True)), headers={"X-Request-Id": "rid-cut"}) as r:
            async for chunk in r.content.iter_any():
                got += chunk
    frames = sse_frames(bytes(got))
    assert b"[DONE]" not in got
    contents = [f for f in frames if b'"content":"' in f and b'"content":""' not in f]
    assert len(contents) == 2
    s = await stats(http, mock, provider)
    assert s["cut"] == 1
    assert s["produced"][-1] == {"request_id": "rid-cut", "endpoint": "chat.completions",
                                 "prompt_tokens": estimate_messages_tokens(MESSAGES),
                                 "completion_tokens_sent": 2, "streamed": True, "cut": True, "cut_reason": "fault"}


async def test_cut_non_streamed_sends_half_a_body(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                  provider: str) -> None:
    await set_fault(http, mock, provider, {"cut_after_chunks": 0, "count": 1})
    with pytest.raises(aiohttp.ClientPayloadError):
        async with http.post(mock.base_url(provider) + "/chat/completions", data=orjson.dumps(chat_body())) as r:
            assert r.status == 200
            await r.read()
    produced = (await stats(http, mock, provider))["produced"][-1]
    assert produced["cut"] and produced["completion_tokens_sent"] == 0 and not produced["streamed"]


async def test_omit_usage(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    await set_fault(http, mock, provider, {"omit_usage": True, "count": 2})
    _, _, raw = await post(http, url, chat_body())
    assert "usage" not in orjson.loads(raw)
    _, _, raw = await post(http, url, chat_body(stream=True, stream_options={"include_usage": True}))
    frames = sse_frames(raw)
    assert frames[-1] == b"data: [DONE]"
    assert all(not orjson.loads(data_of(f)).get("usage") for f in frames[:-1])
    assert all(orjson.loads(data_of(f))["choices"] for f in frames[:-1])


async def test_usage_on_content_chunk(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str) -> None:
    await set_fault(http, mock, provider, {"usage_on_content_chunk": True, "count": 1})
    _, _, raw = await post(http, mock.base_url(provider) + "/chat/completions",
                           chat_body(stream=True, max_tokens=3, stream_options={"include_usage": True}))
    frames = sse_frames(raw)
    chunks = [orjson.loads(data_of(f)) for f in frames[:-1]]
    assert frames[-1] == b"data: [DONE]"
    assert all(c["choices"] for c in chunks)
    with_usage = [c for c in chunks if c.get("usage")]
    assert len(with_usage) == 1 and with_usage[0] is chunks[-1]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 3


async def test_drop_connection(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    await set_fault(http, mock, provider, {"drop_connection": True, "count": 1})
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await post(http, url, chat_body())
    assert (await post(http, url, chat_body()))[0] == 200
    s = await stats(http, mock, provider)
    assert s["dropped"] == 1 and s["requests"] == 2 and s["completed"] == 1


async def test_header_fault_applies_to_one_request_only(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                        provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    await set_fault(http, mock, provider, {"status": 500, "count": 1})
    status, _, _ = await post(http, url, chat_body(), headers={"x-mock-fault": '{"status": 418}'})
    assert status == 418
    assert (await post(http, url, chat_body()))[0] == 500  # the scripted fault was not consumed
    assert (await post(http, url, chat_body()))[0] == 200
    status, _, raw = await post(http, url, chat_body(), headers={"x-mock-fault": '{"bogus": 1}'})
    assert status == 400 and b"bogus" in raw


async def test_bad_fault_definitions_are_refused(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                 provider: str) -> None:
    for bad in ({"status": "500"}, {"statuss": 500}, {"count": -1}):
        status, _, raw = await post(http, f"{mock.url}/_mock/{provider}/faults", bad)
        assert status == 400, bad
        assert orjson.loads(raw)["error"]["code"] == "invalid_fault"


async def test_fault_script_in_order(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    await set_fault(http, mock, provider, [{"status": 502, "count": 1}, {"status": 429, "count": 2}])
    got = [(await post(http, url, chat_body()))[0] for _ in range(4)]
    assert got == [502, 429, 429, 200]


async def test_faults_are_per_provider(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str) -> None:
    other = provider + "b"
    await set_fault(http, mock, provider, {"status": 500})
    try:
        assert (await post(http, mock.base_url(provider) + "/chat/completions", chat_body()))[0] == 500
        assert (await post(http, mock.base_url(other) + "/chat/completions", chat_body()))[0] == 200
        assert (await post(http, mock.base_url() + "/chat/completions", chat_body()))[0] == 200
        a, b = await stats(http, mock, provider), await stats(http, mock, other)
        assert (a["requests"], a["errors"], b["requests"], b["errors"]) == (1, 1, 1, 0)
        assert (await stats(http, mock, "default"))["requests"] >= 1
    finally:
        async with http.delete(f"{mock.url}/_mock/{provider}/faults"):
            pass


# ----------------------------------------------------------------------------------------------- stats


async def test_stats_record_requests_headers_and_production(mock: MockUpstreamServer,
                                                            http: aiohttp.ClientSession, provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    headers = {"Authorization": "Bearer sk-secret-123", "X-Request-Id": "rid-1", "X-Cashu": "cashuAtoken"}
    await post(http, url, chat_body(max_tokens=9, stream=True, stream_options={"include_usage": True},
                                    extra_field=1), headers=headers)
    s = await stats(http, mock, provider)
    req = s["recent_requests"][-1]
    assert (req["model"], req["max_tokens"], req["stream"], req["stream_options"]) == \
        ("mock-small", 9, True, {"include_usage": True})
    assert "extra_field" in req["keys"] and req["request_id"] == "rid-1"
    assert req["auth"] == auth_fingerprint("sk-secret-123")
    assert s["last_auth"] == {"present": True, "sha256_prefix": auth_fingerprint("sk-secret-123")}
    dumped = orjson.dumps(s)
    assert b"sk-secret-123" not in dumped and b"cashuAtoken" not in dumped
    assert s["last_headers"]["x-request-id"] == "rid-1"
    assert s["last_headers"]["authorization"] == "sha256:" + auth_fingerprint("sk-secret-123")
    assert s["produced"] == [{"request_id": "rid-1", "endpoint": "chat.completions",
                              "prompt_tokens": estimate_messages_tokens(MESSAGES), "completion_tokens_sent": 9,
                              "streamed": True, "cut": False, "cut_reason": None}]
    assert s["streamed"] == 1 and s["bytes_in"] > 0 and s["bytes_out"] > 0

    await post(http, url, chat_body())
    s = await stats(http, mock, provider)
    assert s["last_auth"] == {"present": False, "sha256_prefix": None}
    async with http.delete(f"{mock.url}/_mock/{provider}/stats") as resp:
        assert (await resp.json())["requests"] == 0


async def test_history_is_bounded() -> None:
    async with MockUpstreamServer(history=3) as server, aiohttp.ClientSession() as session:
        for i in range(5):
            await post(session, server.base_url("h") + "/chat/completions", chat_body(max_tokens=i + 1))
        s = server.upstream.stats("h")
        assert [r["max_tokens"] for r in s["recent_requests"]] == [3, 4, 5]
        assert [p["completion_tokens_sent"] for p in s["produced"]] == [3, 4, 5]


async def test_client_disconnect_mid_stream_is_recorded_not_fatal(mock: MockUpstreamServer,
                                                                  http: aiohttp.ClientSession,
                                                                  provider: str) -> None:
    url = mock.base_url(provider) + "/chat/completions"
    await set_fault(http, mock, provider, {"chunk_delay_ms": 30, "count": 1})
    async with aiohttp.ClientSession() as own:
        resp = await own.post(url, data=orjson.dumps(chat_body(stream=True)), headers={"X-Request-Id": "rid-gone"})
        seen = 0
        async for line in resp.content:
            if b'"content":"' in line and b'"content":""' not in line:
                seen += 1
                if seen == 2:
                    break
        resp.close()  # drops the connection mid-stream
    for _ in range(100):
        produced = (await stats(http, mock, provider))["produced"]
        if produced:
            break
        await asyncio.sleep(0.02)
    assert produced[-1]["request_id"] == "rid-gone"
    assert produced[-1]["cut_reason"] == "client_disconnect"
    assert 2 <= produced[-1]["completion_tokens_sent"] < 16
    assert (await post(http, url, chat_body()))[0] == 200


async def test_global_latency_and_chunk_delay() -> None:
    async with MockUpstreamServer(latency_ms=150, chunk_delay_ms=30, default_output_tokens=4) as server, \
            aiohttp.ClientSession() as session:
        t0 = time.perf_counter()
        status, _, raw = await post(session, server.base_url("g") + "/chat/completions", chat_body(stream=True))
        elapsed = time.perf_counter() - t0
        assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
        assert elapsed >= 0.15 + 3 * 0.03 - 0.01
        # a per-provider fault overrides the global latency
        server.upstream.set_faults("g", Fault(delay_ms=0, chunk_delay_ms=0, count=1))
        t0 = time.perf_counter()
        await post(session, server.base_url("g") + "/chat/completions", chat_body(stream=True))
        assert time.perf_counter() - t0 < 0.1


# --------------------------------------------------------------------------------------- other endpoints


async def test_completions_plain_and_streamed(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                              provider: str) -> None:
    url = mock.base_url(provider) + "/completions"
    prompt = "Once upon a time there was"
    _, _, raw = await post(http, url, {"model": "mock-small", "prompt": prompt, "max_tokens": 4})
    reply = orjson.loads(raw)
    assert reply["object"] == "text_completion"
    assert reply["usage"] == {"prompt_tokens": estimate_text_tokens(prompt), "completion_tokens": 4,
                              "total_tokens": estimate_text_tokens(prompt) + 4}
    assert reply["choices"][0]["text"] == "Onc eup ona tim "
    _, _, raw = await post(http, url, {"model": "mock-small", "prompt": [prompt, "x"], "max_tokens": 3,
                                       "stream": True, "stream_options": {"include_usage": True}})
    frames = sse_frames(raw)
    assert frames[-1] == b"data: [DONE]" and frames.count(b"data: [DONE]") == 1
    chunks = [orjson.loads(data_of(f)) for f in frames[:-1]]
    texts = [(c["choices"][0]["index"], c["choices"][0]["text"]) for c in chunks[:6]]
    assert [t for i, t in texts if i == 0] == ["Onc ", "eup ", "ona "]  # each prompt completed on its own
    assert [t for i, t in texts if i == 1] == ["xxx "] * 3
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 6
    assert chunks[-1]["usage"]["prompt_tokens"] == estimate_text_tokens(prompt) + 1


async def test_n_and_best_of_make_and_bill_every_output(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                        provider: str) -> None:
    """As a real upstream: chat makes n outputs, completions max(n, best_of) per prompt; all of them are billed."""
    base = mock.base_url(provider)
    _, _, raw = await post(http, base + "/chat/completions", {
        "model": "mock-small", "messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 5, "n": 3})
    reply = orjson.loads(raw)
    assert [c["index"] for c in reply["choices"]] == [0, 1, 2]
    assert reply["usage"]["completion_tokens"] == 15
    _, _, raw = await post(http, base + "/completions", {"model": "mock-small", "prompt": ["ab", "cd"],
                                                        "max_tokens": 2, "n": 2, "best_of": 3})
    reply = orjson.loads(raw)
    assert len(reply["choices"]) == 4 and reply["usage"]["completion_tokens"] == 2 * 3 * 2
    status, _, _ = await post(http, base + "/completions", {"model": "mock-small", "prompt": "x", "n": 0})
    assert status == 400


async def test_embeddings_float_and_base64_agree(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                 provider: str) -> None:
    url = mock.base_url(provider) + "/embeddings"
    inputs = ["alpha beta", "gamma"]
    _, _, raw = await post(http, url, {"model": "mock-embed", "input": inputs, "encoding_format": "float"})
    floats = orjson.loads(raw)
    _, _, raw = await post(http, url, {"model": "mock-embed", "input": inputs, "encoding_format": "base64"})
    b64 = orjson.loads(raw)
    assert floats["model"] == "mock-embed" and len(floats["data"]) == 2
    assert floats["usage"] == {"prompt_tokens": sum(estimate_text_tokens(t) for t in inputs),
                               "total_tokens": sum(estimate_text_tokens(t) for t in inputs)}
    for f_item, b_item, text in zip(floats["data"], b64["data"], inputs):
        decoded = list(struct.unpack("<8f", base64.b64decode(b_item["embedding"])))
        assert decoded == f_item["embedding"] == embedding_vector(text, 8)
    assert floats["data"][0]["embedding"] != floats["data"][1]["embedding"]
    _, _, raw = await post(http, url, {"model": "mock-embed", "input": "x", "dimensions": 32})
    assert len(orjson.loads(raw)["data"][0]["embedding"]) == 32
    _, _, raw = await post(http, url, {"model": "mock-embed", "input": [[1, 2, 3]]})
    assert orjson.loads(raw)["usage"]["prompt_tokens"] == 3
    status, _, _ = await post(http, url, {"model": "mock-embed", "input": "x", "encoding_format": "hex"})
    assert status == 400


async def test_responses_plain_and_streamed_events(mock: MockUpstreamServer, http: aiohttp.ClientSession,
                                                   provider: str) -> None:
    url = mock.base_url(provider) + "/responses"
    body = {"model": "mock-large", "input": "Tell me a story", "instructions": "Be kind", "max_output_tokens": 5}
    expected_in = estimate_messages_tokens(responses_messages(body))
    _, _, raw = await post(http, url, body)
    reply = orjson.loads(raw)
    assert reply["object"] == "response" and reply["status"] == "completed" and reply["model"] == "mock-large"
    assert reply["usage"]["input_tokens"] == expected_in and reply["usage"]["output_tokens"] == 5
    assert reply["output"][0]["content"][0]["text"] == "Tel lme ast ory Tel "

    status, headers, raw = await post(http, url, {**body, "stream": True})
    assert status == 200 and headers["Content-Type"].startswith("text/event-stream")
    assert b"[DONE]" not in raw
    events = []
    for frame in sse_frames(raw):
        name = frame.split(b"\n")[0][len(b"event: "):].decode()
        payload = orjson.loads(data_of(frame))
        assert payload["type"] == name
        events.append(payload)
    types = [e["type"] for e in events]
    assert types[0] == "response.created" and types[-1] == "response.completed"
    assert types.count("response.output_text.delta") == 5
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta") == "Tel lme ast ory Tel "
    usage = events[-1]["response"]["usage"]
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == (expected_in, 5, expected_in + 5)


async def test_models_list(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str) -> None:
    async with http.get(mock.base_url(provider) + "/models") as resp:
        listing = await resp.json()
    assert listing["object"] == "list"
    assert [m["id"] for m in listing["data"]] == ["mock-small", "mock-medium", "mock-large", "mock-embed"]
    assert {m["owned_by"] for m in listing["data"]} == {provider}


async def test_main_serves_until_cancelled(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    task = asyncio.create_task(main(["--port", str(port), "--models", "a,b", "--output-tokens", "2"]))
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                try:
                    async with session.get(f"http://127.0.0.1:{port}/v1/models") as resp:
                        listing = await resp.json()
                    break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.01)
            assert [m["id"] for m in listing["data"]] == ["a", "b"]
            _, _, raw = await post(session, f"http://127.0.0.1:{port}/v1/chat/completions", chat_body())
            assert orjson.loads(raw)["usage"]["completion_tokens"] == 2
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert f"http://127.0.0.1:{port}" in capsys.readouterr().out


# ------------------------------------------------------------------------------------ the openai client


async def test_official_openai_client(mock: MockUpstreamServer, http: aiohttp.ClientSession, provider: str) -> None:
    openai = pytest.importorskip("openai")
    import httpx
    client = openai.AsyncOpenAI(base_url=mock.base_url(provider), api_key="sk-test", max_retries=0)
    try:
        done = await client.chat.completions.create(model="mock-small", messages=MESSAGES, max_tokens=4)
        assert done.usage is not None and done.usage.completion_tokens == 4
        assert done.usage.prompt_tokens == estimate_messages_tokens(MESSAGES)
        assert done.model == "mock-small" and done.choices[0].finish_reason == "length"

        stream = await client.chat.completions.create(model="mock-small", messages=MESSAGES, max_tokens=5,
                                                      stream=True, stream_options={"include_usage": True})
        pieces: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                pieces.append(chunk.choices[0].delta.content)
            if chunk.usage is not None:
                usage = chunk.usage
        assert len(pieces) == 5 and usage is not None and usage.completion_tokens == 5

        emb = await client.embeddings.create(model="mock-embed", input=["alpha beta"])  # base64 by default
        assert emb.data[0].embedding == embedding_vector("alpha beta", 8)
        assert (await stats(http, mock, provider))["recent_requests"][-1]["keys"].count("encoding_format") == 1

        resp = await client.responses.create(model="mock-large", input="Tell me a story", max_output_tokens=3)
        assert resp.output_text == "Tel lme ast "
        assert resp.usage is not None and resp.usage.output_tokens == 3

        events = await client.responses.create(model="mock-large", input="Tell me a story", stream=True)
        kinds: list[str] = []
        final = None
        async for event in events:
            kinds.append(event.type)
            if event.type == "response.completed":
                final = event.response
        assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
        assert final is not None and final.usage is not None and final.usage.output_tokens == 16

        async with client.responses.stream(model="mock-large", input="Tell me a story",
                                           max_output_tokens=2) as helper:
            async for _ in helper:
                pass
            assembled = await helper.get_final_response()
        assert assembled.output_text == "Tel lme "

        await set_fault(http, mock, provider, {"status": 429, "retry_after": 1, "count": 1})
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model="mock-small", messages=MESSAGES)
        assert caught.value.request_id is not None

        # A cut mid-stream reaches the caller as the transport's error, not wrapped in an openai.APIError.
        await set_fault(http, mock, provider, {"cut_after_chunks": 1, "count": 1})
        with pytest.raises(httpx.RemoteProtocolError):
            broken = await client.chat.completions.create(model="mock-small", messages=MESSAGES, stream=True)
            async for _ in broken:
                pass
        s = await stats(http, mock, provider)
        assert s["last_auth"]["sha256_prefix"] == auth_fingerprint("sk-test")
    finally:
        await client.close()
