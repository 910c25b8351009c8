"""No input gives a 5xx: header bytes that are not UTF-8, JSON nested past any sane depth, numbers past what the
stores behind the gateway hold, and requests aiohttp refuses before any middleware. Each answer is a 4xx with an
OpenAI error object, nothing is reserved, and the books balance afterwards."""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

import aiohttp
import orjson
import pytest

from gateway.http import MAX_JSON_DEPTH
from schemas.common import MAX_APPROVAL_TIMEOUT_S, MAX_MSAT
from tests.support.fidelity import PaidStack, start_paid_stack
from tests.support.rawhttp import RawReply, parse_reply, raw_request, request_bytes, send_raw
from tests.support.stack import ADMIN_TOKEN
from tests.support.vault_helpers import ADMIN, assert_balanced, books, new_agent, settled
from tests.support.waiting import eventually

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
BODIES = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": {"model": "gpt-4o-mini", "prompt": "hi", "max_tokens": 3},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/responses": {"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 3},
    "/v1/cost": CHAT,
}
# Not UTF-8, or UTF-8 that is not ASCII: neither is a byte any header arbstr reads can hold.
ODD_BYTES = [b"\xff\xfe", b"tok\x80en", b"\xc3\x28", b"\xed\xa0\x80", b"caf\xc3\xa9", b"\xf0\x9f\x99\x82"]


@pytest.fixture(scope="module")
async def paid(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PaidStack]:
    s = await start_paid_stack(tmp_path_factory.mktemp("edge"))
    yield s
    await s.stop()


def assert_error(reply: RawReply, status: int, code: str | None = None) -> dict[str, object]:
    assert reply.status == status, (reply.status, reply.head, reply.body[:300])
    body = reply.json()
    assert isinstance(body, dict) and set(body) == {"error"}, reply.body[:300]
    err = body["error"]
    assert {"message", "type", "param", "code"} <= set(err), err
    if code is not None:
        assert err["code"] == code, err
    return err


async def assert_nothing_held(paid: PaidStack) -> None:
    async with aiohttp.ClientSession() as http:
        acct = await settled(http, paid.stack, paid.agent_id)
        assert acct["pending_msat"] == 0 and acct["holds"] == 0, acct
        assert_balanced(await books(http, paid.stack))


# --- header bytes -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("odd", ODD_BYTES)
@pytest.mark.parametrize("path", sorted(BODIES))
async def test_header_bytes_that_are_not_ascii_are_a_4xx(paid: PaidStack, path: str, odd: bytes) -> None:
    body = orjson.dumps(BODIES[path])
    auth = (b"Authorization", b"Bearer " + paid.token.encode())
    for name, expect in ((b"X-Arbstr-Policy", 400), (b"X-Arbstr-Complexity", 400), (b"X-Request-Id", 400),
                         (b"traceparent", 400), (b"Authorization", 401)):
        headers = [(b"Content-Type", b"application/json")]
        headers.append((name, b"Bearer " + odd) if name == b"Authorization" else (name, odd))
        if name != b"Authorization":
            headers.append(auth)
        reply = await raw_request(paid.url, "POST", path, headers, body)
        err = assert_error(reply, expect)
        assert reply.header("x-request-id"), reply.head
        if expect == 400:
            assert err["param"] == name.decode(), err
    await assert_nothing_held(paid)


@pytest.mark.parametrize("odd", ODD_BYTES)
async def test_idempotency_key_and_event_id_bytes(paid: PaidStack, odd: bytes) -> None:
    admin = (b"Authorization", b"Bearer " + ADMIN_TOKEN.encode())
    deposit = await raw_request(paid.url, "POST", f"/v1/admin/agents/{paid.agent_id}/deposits",
                                [admin, (b"Content-Type", b"application/json"), (b"Idempotency-Key", odd)],
                                orjson.dumps({"amount_msat": 1000}))
    assert assert_error(deposit, 400)["param"] == "Idempotency-Key"
    payout = await raw_request(paid.url, "POST", "/v1/vault/me/withdrawals",
                               [(b"Authorization", b"Bearer " + paid.token.encode()),
                                (b"Content-Type", b"application/json"), (b"Idempotency-Key", odd)],
                               orjson.dumps({"rail": "cashu", "amount_msat": 1000}))
    assert assert_error(payout, 400)["param"] == "Idempotency-Key"
    events = await raw_request(paid.url, "GET", "/v1/spend/events", [admin, (b"Last-Event-ID", odd)])
    assert assert_error(events, 400)["param"] == "Last-Event-ID"
    await assert_nothing_held(paid)


@pytest.mark.parametrize("key", ["x" * 129, "has space", "semi;colon", "slash/no"])
async def test_admin_deposit_idempotency_key_is_validated_as_payouts_are(paid: PaidStack, key: str) -> None:
    async with aiohttp.ClientSession() as http:
        before = (await books(http, paid.stack))["deposits_msat"]
        r = await http.post(f"{paid.url}/v1/admin/agents/{paid.agent_id}/deposits", json={"amount_msat": 1000},
                            headers={**ADMIN, "Idempotency-Key": key})
        assert r.status == 400, await r.text()
        assert (await r.json())["error"]["param"] == "Idempotency-Key"
        assert (await books(http, paid.stack))["deposits_msat"] == before  # nothing credited
        ok = await http.post(f"{paid.url}/v1/admin/agents/{paid.agent_id}/deposits", json={"amount_msat": 1000},
                             headers={**ADMIN, "Idempotency-Key": "a" * 128})
        assert ok.status == 201 and (await ok.json())["deposit_id"] == "a" * 128


# --- nesting ------------------------------------------------------------------------------------------------
def nested(path: str, depth: int) -> bytes:
    """The endpoint's valid body with one extra field nested ``depth`` levels in all (the body is level 1)."""
    inner = b"[" * (depth - 1) + b"]" * (depth - 1)
    return orjson.dumps(BODIES[path])[:-1] + b',"metadata_x":' + inner + b"}"


@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 256, 257, 512, 1024, 1025, 4000])
@pytest.mark.parametrize("path", sorted(BODIES))
async def test_deep_nesting_is_400_before_anything_is_reserved(paid: PaidStack, path: str, depth: int) -> None:
    headers = [(b"Authorization", b"Bearer " + paid.token.encode()), (b"Content-Type", b"application/json")]
    reply = await raw_request(paid.url, "POST", path, headers, nested(path, depth))
    err = assert_error(reply, 400, "json_too_deep")
    assert str(MAX_JSON_DEPTH) in str(err["message"])
    await assert_nothing_held(paid)


async def test_nesting_at_the_limit_is_served(paid: PaidStack) -> None:
    headers = [(b"Authorization", b"Bearer " + paid.token.encode()), (b"Content-Type", b"application/json")]
    reply = await raw_request(paid.url, "POST", "/v1/chat/completions", headers,
                              nested("/v1/chat/completions", MAX_JSON_DEPTH))
    assert reply.status == 200, reply.body[:300]


@pytest.mark.parametrize("path", ["/v1/admin/agents", "/v1/admin/agents/{agent}/deposits",
                                  "/v1/admin/agents/{agent}/policy", "/v1/vault/me/deposits",
                                  "/v1/vault/me/withdrawals", "/v1/admin/reconcile/clear",
                                  "/v1/admin/prices/alpha/confirm", "/v1/admin/approvals/x/deny"])
async def test_deep_nesting_on_every_other_post(paid: PaidStack, path: str) -> None:
    token = paid.token if path.startswith("/v1/vault") else ADMIN_TOKEN
    method = "PATCH" if path.endswith("/policy") else "POST"
    body = b'{"x":' + b"[" * 300 + b"]" * 300 + b"}"  # under the smallest body limit (1 KiB)
    reply = await raw_request(paid.url, method, path.replace("{agent}", paid.agent_id),
                              [(b"Authorization", b"Bearer " + token.encode()), (b"Content-Type", b"application/json")],
                              body)
    assert_error(reply, 400, "json_too_deep")


# --- numbers in query strings and headers ---------------------------------------------------------------------
HUGE = ["18446744073709551616", "99999999999999999999999", "9" * 5000, "²", "١٢", "-1", "1e3", "0x10"]


@pytest.mark.parametrize("value", HUGE)
async def test_out_of_range_numbers_in_queries_are_400(paid: PaidStack, value: str) -> None:
    admin = (b"Authorization", b"Bearer " + ADMIN_TOKEN.encode())
    agent = (b"Authorization", b"Bearer " + paid.token.encode())
    from urllib.parse import quote
    v = quote(value).encode()
    cases = [
        (b"/v1/spend/events?since=" + v, admin), (b"/v1/spend/events?last_event_id=" + v, admin),
        (b"/v1/stats?since=" + v, admin), (b"/v1/stats?until=" + v, agent),
        (b"/v1/requests?since=" + v, admin), (b"/v1/requests?until=" + v, admin),
        (b"/v1/requests?limit=" + v, admin), (b"/v1/requests?offset=" + v, agent),
        (b"/v1/admin/audit?since=" + v, admin), (b"/v1/admin/audit?limit=" + v, admin),
        (b"/v1/vault/me/history?since=" + v, agent), (b"/v1/vault/me/history?limit=" + v, agent),
    ]
    for path, auth in cases:
        assert_error(await raw_request(paid.url, "GET", path, [auth]), 400)
    if value.isascii():
        reply = await raw_request(paid.url, "GET", "/v1/spend/events", [admin, (b"Last-Event-ID", value.encode())])
        assert_error(reply, 400)


async def test_in_range_times_still_work(paid: PaidStack) -> None:
    async with aiohttp.ClientSession() as http:
        for q in ("since=0", "since=253402300799999", "since=2026-01-01T00:00:00Z", "until=9999-12-31T23:59:59"):
            r = await http.get(f"{paid.url}/v1/requests?{q}", headers=ADMIN)
            assert r.status == 200, (q, await r.text())
        r = await http.get(f"{paid.url}/v1/requests?since=253402300800000", headers=ADMIN)
        assert r.status == 400


# --- bounded policies and amounts -------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("approval_timeout_s", 9223372036854775807), ("approval_timeout_s", MAX_APPROVAL_TIMEOUT_S + 1),
    ("approval_timeout_s", 2**64), ("max_tx_msat", MAX_MSAT + 1), ("daily_limit_msat", 2**63),
    ("approval_over_msat", 10**30)])
async def test_policy_bounds(paid: PaidStack, field: str, value: int) -> None:
    async with aiohttp.ClientSession() as http:
        agent_id, token = await new_agent(http, paid.stack, f"bounds-{field}", deposit_msat=100_000)
        for method in ("PATCH", "PUT"):
            r = await http.request(method, f"{paid.url}/v1/admin/agents/{agent_id}/policy", json={field: value},
                                   headers=ADMIN)
            assert r.status == 400, await r.text()
            assert (await r.json())["error"]["param"] == field
        r = await http.post(f"{paid.url}/v1/admin/agents", json={"name": "x", "policy": {field: value}}, headers=ADMIN)
        assert r.status == 400, await r.text()
        # nothing changed: approvals list for everyone, and this agent's chat is served
        assert (await http.get(f"{paid.url}/v1/admin/approvals", headers=ADMIN)).status == 200
        chat = await http.post(f"{paid.url}/v1/chat/completions", json=CHAT,
                               headers={"Authorization": f"Bearer {token}"})
        assert chat.status == 200, await chat.text()
        # the largest values allowed are accepted and keep everything working
        top = {"approval_timeout_s": MAX_APPROVAL_TIMEOUT_S, "max_tx_msat": MAX_MSAT}
        r = await http.patch(f"{paid.url}/v1/admin/agents/{agent_id}/policy", json=top, headers=ADMIN)
        assert r.status == 200, await r.text()
        assert (await http.get(f"{paid.url}/v1/admin/approvals", headers=ADMIN)).status == 200


async def test_amounts_above_all_bitcoin_are_400(paid: PaidStack) -> None:
    async with aiohttp.ClientSession() as http:
        for path, body, auth in (
                (f"/v1/admin/agents/{paid.agent_id}/deposits", {"amount_msat": MAX_MSAT + 1}, ADMIN),
                ("/v1/vault/me/deposits", {"rail": "lightning", "amount_msat": MAX_MSAT + 1},
                 {"Authorization": f"Bearer {paid.token}"}),
                ("/v1/vault/me/withdrawals", {"rail": "cashu", "amount_msat": 2**64},
                 {"Authorization": f"Bearer {paid.token}"})):
            r = await http.post(paid.url + path, json=body, headers=auth)
            assert r.status == 400, (path, await r.text())
    await assert_nothing_held(paid)


# --- what aiohttp answers before any middleware ----------------------------------------------------------------
async def test_oversized_header_is_openai_shaped_and_echoes_nothing(paid: PaidStack) -> None:
    secret = b"S3CR3T" + b"q" * 9000
    for headers in ([(b"X-Big", secret)], [(b"Authorization", b"Bearer " + secret)]):
        reply = await raw_request(paid.url, "GET", "/health", headers)
        assert_error(reply, 431, "header_too_large")
        assert b"S3CR3T" not in reply.head + reply.body and b"qqqq" not in reply.body
        assert reply.header("content-type", ).startswith("application/json")  # type: ignore[union-attr]
    many = [(b"X-H%d" % i, b"v") for i in range(300)]
    assert_error(await raw_request(paid.url, "GET", "/health", many), 431, "header_too_large")
    long_url = b"/v1/models/" + b"m" * 9000
    reply = await raw_request(paid.url, "GET", long_url, [])
    assert reply.status in (400, 414, 431) and b"mmmm" not in reply.body
    assert_error(reply, reply.status)


@pytest.mark.parametrize("raw", [
    b"G\xffT / HTTP/1.1\r\nHost: x\r\n\r\n", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    b"GET /v1/admin/agents/\xff HTTP/1.1\r\nHost: x\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\nX-\xff: a\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", b"GET / HTTP/9.9\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
])
async def test_requests_the_parser_refuses_are_openai_shaped(paid: PaidStack, raw: bytes) -> None:
    reply = await send_raw(paid.url, raw)
    assert 400 <= reply.status < 500, reply.head
    assert_error(reply, reply.status)
    assert reply.header("x-request-id")


# --- requests no provider's context can hold ------------------------------------------------------------------
@pytest.mark.parametrize("path,field", [("/v1/chat/completions", "max_tokens"), ("/v1/completions", "max_tokens"),
                                        ("/v1/responses", "max_output_tokens"), ("/v1/cost", "max_tokens")])
async def test_a_request_no_context_can_hold_is_400_naming_the_limit(paid: PaidStack, path: str, field: str) -> None:
    body = {**BODIES[path], field: 10_000_000}
    async with aiohttp.ClientSession() as http:
        r = await http.post(paid.url + path, json=body, headers={"Authorization": f"Bearer {paid.token}"})
        err = (await r.json())["error"]
        assert r.status == 400 and err["code"] == "context_length_exceeded", (r.status, err)
        assert err["param"] == field and "128000" in err["message"], err
        assert r.headers["x-should-retry"] == "false"
    await assert_nothing_held(paid)


# --- Expect: aiohttp answers it before any middleware --------------------------------------------------------
@pytest.mark.parametrize("value", [b"\xff\xfe", b"\xed\xa0\x80", b"caf\xc3\xa9", b"S3CR3T-expectation", b"200-ok"])
@pytest.mark.parametrize("method,path", [("POST", "/v1/chat/completions"), ("GET", "/v1/models"),
                                         ("GET", "/no/such/path")])
async def test_an_expect_header_other_than_100_continue_is_417_openai_shaped(paid: PaidStack, method: str, path: str,
                                                                          value: bytes) -> None:
    # aiohttp's own answer was a plain-text 417 echoing the header ("Unknown Expect: …"), and a 500 for bytes that
    # are not UTF-8 (encoding the echo failed), before the envelope middleware could see the request.
    headers = [(b"Content-Type", b"application/json"), (b"Authorization", b"Bearer " + paid.token.encode()),
               (b"Expect", value)]
    reply = await raw_request(paid.url, method, path, headers, orjson.dumps(CHAT) if method == "POST" else b"")
    err = assert_error(reply, 417, "invalid_header")
    assert err["param"] == "Expect", err
    assert value not in reply.head + reply.body
    assert reply.header("x-request-id"), reply.head
    await assert_nothing_held(paid)


async def test_expect_100_continue_still_works(paid: PaidStack) -> None:
    headers = [(b"Content-Type", b"application/json"), (b"Authorization", b"Bearer " + paid.token.encode()),
               (b"Expect", b"100-continue")]
    reply = await raw_request(paid.url, "POST", "/v1/chat/completions", headers, orjson.dumps(CHAT))
    assert reply.status == 100, reply.head  # the interim answer, then the request's own
    assert b" 200 OK" in reply.body, reply.body[:300]


async def test_expect_100_continue_for_a_body_over_the_limit_is_413_before_any_body(paid: PaidStack) -> None:
    # Only the head is sent: the answer must come without the body (a "100 Continue" would invite a gigabyte that
    # is then refused), and it is the 413 the body itself would have got.
    head = request_bytes("POST", b"/v1/chat/completions", [
        (b"Content-Type", b"application/json"), (b"Authorization", b"Bearer " + paid.token.encode()),
        (b"Expect", b"100-continue")]).replace(b"Content-Length: 0", b"Content-Length: 1000000000")
    host, port = paid.url.removeprefix("http://").rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        # Read as a client does, by Content-Length: the server lingers a while before it closes, as HTTP servers do.
        first = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        reply = parse_reply(first)
        length = int(reply.header("content-length") or 0)
        reply.body = await asyncio.wait_for(reader.readexactly(length), 5)
    finally:
        writer.close()
    assert_error(reply, 413, "request_too_large")
    assert b"100 Continue" not in reply.head + reply.body
    await assert_nothing_held(paid)


# --- a client that goes away in the middle of its body ------------------------------------------------------------
def _answered(metrics_text: str, route: str) -> dict[str, float]:
    """``arbstr_requests_total`` of one route, by status."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("arbstr_requests_total{") and f'route="{route}"' in line:
            status = line.split('status="', 1)[1].split('"', 1)[0]
            counts[status] = float(line.rsplit(" ", 1)[1])
    return counts


async def test_a_client_that_hangs_up_mid_body_is_not_a_500(paid: PaidStack) -> None:
    # The body read raised ConnectionResetError, which the envelope answered (to nobody) as a 500 internal error,
    # with a traceback in the log and a 500 in the metrics: an outside client could fill both at will.
    route = "/v1/chat/completions"
    async with aiohttp.ClientSession() as http:
        async def counts() -> dict[str, float]:
            async with http.get(paid.url + "/metrics") as r:
                return _answered(await r.text(), route)

        before = await counts()
        host, port = paid.url.removeprefix("http://").rsplit(":", 1)
        reader, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"POST " + route.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Authorization: Bearer " + paid.token.encode() + b"\r\nContent-Length: 1000\r\n\r\n{\"model\":")
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is waiting for the rest of the body
        writer.close()

        async def one_more() -> dict[str, float] | None:
            now = await counts()
            return now if sum(now.values()) > sum(before.values()) else None

        await eventually(one_more, 10.0, "the cut request counted")
        after = await counts()
        grew = {s: after[s] - before.get(s, 0.0) for s in after if after[s] != before.get(s, 0.0)}
        assert list(grew) == ["400"], grew
    await assert_nothing_held(paid)


# --- two Authorization headers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/vault/me"])
async def test_two_authorization_headers_are_refused_whichever_comes_first(paid: PaidStack, path: str) -> None:
    # aiohttp reads the first; a proxy in front may read the last: who is calling must not depend on which.
    method = "POST" if path == "/v1/chat/completions" else "GET"
    good, other = b"Bearer " + paid.token.encode(), b"Bearer arb_" + b"x" * 43
    for pair in ((good, other), (other, good), (good, good)):
        headers = [(b"Content-Type", b"application/json"), (b"Authorization", pair[0]), (b"Authorization", pair[1])]
        reply = await raw_request(paid.url, method, path, headers, orjson.dumps(CHAT) if method == "POST" else b"")
        err = assert_error(reply, 401, "invalid_api_key")
        assert err["param"] == "Authorization", err
    await assert_nothing_held(paid)
