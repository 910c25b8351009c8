"""Malformed requests against every POST endpoint of a paid gateway: hypothesis makes the bodies and headers
(wrong types, huge numbers and strings, invalid UTF-8, deep nesting, NaN/Infinity literals, unknown roles, top-level
arrays…). Whatever arrives, the answer is below 500 and OpenAI-shaped, the books balance and every actor lives."""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator, Optional

import aiohttp
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fidelity import PaidStack, start_paid_stack
from tests.stack import ADMIN_TOKEN
from tests.vault_helpers import assert_balanced, books, settled

MAX_BODY = 64 * 1024
CHAT_MSG = [{"role": "user", "content": "fuzz"}]
VALID: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": CHAT_MSG, "max_tokens": 3},
    "/v1/completions": {"model": "gpt-4o-mini", "prompt": "fuzz", "max_tokens": 3},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "fuzz"},
    "/v1/responses": {"model": "gpt-4o-mini", "input": "fuzz", "max_output_tokens": 3},
    "/v1/cost": {"model": "gpt-4o-mini", "messages": CHAT_MSG},
    "/chat/completions": {"model": "gpt-4o-mini", "messages": CHAT_MSG, "max_tokens": 3},
    "/v1/admin/agents": {"name": "fuzzed"},
    "/v1/admin/agents/{agent}/deposits": {"amount_msat": 1000},
    "/v1/admin/approvals/nope/deny": {"reason": "fuzz"},
    "/v1/vault/me/deposits": {"rail": "lightning", "amount_msat": 1000},
    "/v1/vault/me/withdrawals": {"rail": "cashu", "amount_msat": 1000},
    "/v1/admin/reconcile/clear": {"force": False},
    "/v1/admin/prices/alpha/confirm": {"models": ["gpt-4o-mini"]},
}
ADMIN_PATHS = {p for p in VALID if p.startswith("/v1/admin")}

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.sampled_from([0, -1, -(2**31), 2**31, 10**18, 2**63 - 1]),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=40),
    st.sampled_from(["", "auto", "system", "wizard", "gpt-4o-mini", "\x00", "\ud7ff", "🙂" * 20]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)
FIELDS = ["model", "messages", "prompt", "input", "max_tokens", "max_completion_tokens", "max_output_tokens",
          "stream", "stream_options", "temperature", "top_p", "n", "tools", "encoding_format", "dimensions",
          "instructions", "role", "content", "name", "amount_msat", "deposit_id", "policy", "reason", "rail", "token",
          "bolt11", "payout_id", "force", "models"]


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    """A valid body with one to three fields replaced, removed or added."""
    path = draw(st.sampled_from(sorted(VALID)))
    body: dict[str, Any] = dict(VALID[path])
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(FIELDS + sorted(body)))
        if key in body and draw(st.booleans()):
            del body[key]
        else:
            body[key] = draw(json_values)
    if draw(st.booleans()) and "messages" in body:
        body["messages"] = [{"role": draw(st.one_of(st.sampled_from(["user", "tool", "wizard", ""]), json_values)),
                             "content": draw(json_values)}]
    if draw(st.booleans()):
        body["stream"] = draw(st.sampled_from([True, False, "true", 1, None]))
    return path, orjson.dumps(body)


def _nested(depth: int) -> bytes:
    return b'{"model":"gpt-4o-mini","messages":' + b"[" * depth + b"]" * depth + b"}"


RAW = st.one_of(
    st.binary(max_size=200),                                            # anything, invalid UTF-8 included
    st.sampled_from([
        b"", b"{}", b"[]", b"null", b"42", b'"text"', b"[{}]", b"{", b'{"model":', b"\xff\xfe{}",
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"temperature":NaN}',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":Infinity}',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":-Infinity}',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":1e999}',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"x"}],"max_tokens":123456789012345678901234}',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\xc3\x28"}]}',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"\\ud800"}]}',
        b'{"model":"gpt-4o-mini","model":"gpt-4o","messages":[{"role":"user","content":"dup"}]}',
        _nested(64), _nested(2000), _nested(100_000)[:MAX_BODY - 10],
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"a" * (MAX_BODY - 100) + b'"}]}',
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"' + b"a" * (MAX_BODY + 10) + b'"}]}',
        b'{"model":"' + b"m" * 5000 + b'","messages":[{"role":"user","content":"x"}]}',
    ]),
)
HEADER_TEXT = st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=300)
HEADERS = st.fixed_dictionaries({}, optional={
    "X-Request-Id": HEADER_TEXT, "X-Arbstr-Policy": HEADER_TEXT, "X-Arbstr-Complexity": HEADER_TEXT,
    "Content-Type": st.one_of(HEADER_TEXT, st.just("text/plain")), "traceparent": HEADER_TEXT,
    "Authorization": st.one_of(HEADER_TEXT, st.just("Bearer"), st.just("Basic abc")),
    "Content-Encoding": st.sampled_from(["identity", "nonsense"]),
})


def corpus(n: int) -> list[tuple[str, bytes, dict[str, str]]]:
    """``n`` requests drawn by hypothesis (run once, up front: the stack serves them on the test's loop)."""
    out: list[tuple[str, bytes, dict[str, str]]] = []

    @settings(max_examples=n, database=None, derandomize=True, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(st.one_of(mutated(), st.tuples(st.sampled_from(sorted(VALID)), RAW)), HEADERS)
    def collect(req: tuple[str, bytes], headers: dict[str, str]) -> None:
        out.append((req[0], req[1], headers))

    collect()
    return out


@pytest.fixture(scope="module")
async def paid(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PaidStack]:
    s = await start_paid_stack(tmp_path_factory.mktemp("fuzz"), breakers=True)
    yield s
    await s.stop()


def assert_openai_error(status: int, raw: bytes) -> None:
    body = orjson.loads(raw)
    assert isinstance(body, dict) and set(body) == {"error"}, (status, raw[:300])
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err) and isinstance(err["message"], str), (status, raw)


async def send(http: aiohttp.ClientSession, paid: PaidStack, path: str, data: bytes,
               headers: dict[str, str], auth: Optional[bool] = True) -> tuple[int, bytes, str]:
    h = {"Content-Type": "application/json"}
    if auth:
        h["Authorization"] = f"Bearer {ADMIN_TOKEN if path in ADMIN_PATHS else paid.token}"
    h.update(headers)
    url = paid.url + path.replace("{agent}", paid.agent_id)
    async with http.post(url, data=data, headers=h) as r:
        return r.status, await r.read(), r.headers.get("Content-Type", "")


async def test_fuzzed_requests_never_5xx(paid: PaidStack) -> None:
    cases = corpus(1200)
    statuses: dict[int, int] = {}
    gate = asyncio.Semaphore(16)
    async with aiohttp.ClientSession(auto_decompress=False) as http:
        async def one(path: str, data: bytes, headers: dict[str, str]) -> None:
            async with gate:
                status, raw, ctype = await send(http, paid, path, data, headers)
            statuses[status] = statuses.get(status, 0) + 1
            assert status < 500, (status, path, data[:300], headers, raw[:300])
            if status >= 400:
                assert_openai_error(status, raw)
            elif ctype.startswith("application/json"):
                assert isinstance(orjson.loads(raw), dict)

        await asyncio.gather(*(one(*c) for c in cases))
        assert statuses.get(400, 0) > 100 and statuses.get(200, 0) > 10, statuses  # both sides were reached
        # books balanced, nothing left pending, every actor still answering
        assert (await settled(http, paid.stack, paid.agent_id, timeout_s=30))["pending_msat"] == 0
        assert_balanced(await books(http, paid.stack))
        r = await http.get(f"{paid.url}/ready")
        assert r.status == 200 and (await r.json())["ready"] is True
        for host in paid.stack.hosts:  # each actor's own service answers its discovery ping
            reply = await paid.stack.nc.request(f"$SRV.PING.{host.actor.service_name}", b"", timeout=1.0)
            assert orjson.loads(reply.data)["name"] == host.actor.service_name


async def test_undecodable_content_encoding_is_400(paid: PaidStack) -> None:
    """A body that is not in the Content-Encoding it claims. (Raw socket: the server answers before the client
    finished writing, which an HTTP client library reports as its own write error.)"""
    host, port = paid.url.removeprefix("http://").split(":")
    body = orjson.dumps(VALID["/v1/chat/completions"])
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                 b"Content-Encoding: gzip\r\nAuthorization: Bearer " + paid.token.encode() +
                 b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)
    await writer.drain()
    raw = await reader.read()
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), head
    assert_openai_error(400, payload)
    assert orjson.loads(payload)["error"]["code"] == "invalid_body"
