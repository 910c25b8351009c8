"""The request path: route → reserve → upstream (falling over before the first byte) → relay → settle."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import aiohttp
import orjson
from aiohttp import web
from nats.aio.client import Client as NATS

from schemas import exchanges, subjects
from schemas.breaker import Outcome, OutcomeKind, ProbeRequest
from schemas.common import MAX_MSAT, MAX_TOKENS
from schemas.config import Config, ProviderConfig
from schemas.errors import ArbstrError
from schemas.money import ceil_div, cost_msat
from schemas.payments import XCashuOutcome, XCashuToken
from schemas.router import Candidate, RouteReply, RouteRequest
from schemas.routstr import USAGE_FIELDS, NodeModelPrice, drifted, reported_cost_msat, strip_billing
from schemas.tokens import estimate_text_tokens

from .bus import Bus
from .endpoints import EndpointSpec, cap_upstream, validate
from .headers import bearer_token, route_overrides
from .http import REQUEST_ID, STARTED, TRACE, error_response, read_json_object
from .meter import Hold, Meter, Usage
from .metrics import Metrics
from .providers import ProviderDirectory
from schemas.requests import RequestRecord

from .request_log import publish_record, request_record
from .routstr_pay import RoutstrPay, request_reserve_msat, token_amount_msat
from .responses_relay import relay_typed_events
from .client_stream import CLIENT_GONE, ClientStream, StallGuard
from .upstream import (READ_ERRORS, Upstream, UpstreamBusy, UpstreamFailure, UpstreamReply, read_failure,
                       upstream_error_detail)

log = logging.getLogger("arbstr.gateway")

PROBE_TIMEOUT_S = 0.5  # asking for a half-open probe slot: a slow breaker must not hold the request long


OUR_USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "cost_msat")


# An upstream's JSON is parsed up to orjson's depth limit (1,024), past what orjson serialises (~254) or repr
# walks (Python's recursion limit). Neither may turn its answer into a 500 after the hold: a chunk that will not
# re-serialise is relayed as it came, and text that cannot be walked counts as none (the provider's loss).
def dumps_or(value: Any, fallback: bytes) -> bytes:
    try:
        return orjson.dumps(value)
    except (TypeError, orjson.JSONEncodeError):
        return fallback


def text_or_empty(extract: Any, *args: Any) -> str:
    try:
        return str(extract(*args))
    except RecursionError:
        return ""


@dataclass
class Exchange:
    """Everything one client request accumulates on its way through."""

    request_id: str
    spec: EndpointSpec
    started: float
    traceparent: Optional[str]
    route: Optional[RouteReply] = None
    hold: Optional[Hold] = None
    attempts: list[str] = field(default_factory=list)
    upstream_time: float = 0.0
    resolved: bool = False
    streamed: bool = False
    status: Optional[int] = None  # the HTTP status the client got, once known
    success: bool = True  # False when a stream was cut after its 200
    paid: Optional[XCashuToken] = None  # the X-Cashu token of the attempt under way, until reported
    topped_up: bool = False  # a node's 402 already waited for one top-up

    def overhead_ms(self, now: float) -> float:
        return max(0.0, (now - self.started - self.upstream_time) * 1000)


class Proxy:
    def __init__(self, config: Config, nc: NATS, bus: Bus, upstream: Upstream, meter: Meter,
                 directory: ProviderDirectory, metrics: Optional[Metrics] = None) -> None:
        self.config = config
        self.metrics = metrics
        self.nc = nc
        self.bus = bus
        self.upstream = upstream
        self.meter = meter
        # Configured providers, plus the market's once the gateway follows the price table (app startup).
        self.directory = directory
        self.routstr = RoutstrPay(bus, config)

    # --- the whole path --------------------------------------------------------------------------------
    async def handle(self, request: web.Request, spec: EndpointSpec) -> web.StreamResponse:
        ex = Exchange(request[REQUEST_ID], spec, request[STARTED], request[TRACE])
        # paid: the route table's agent check (gateway/routes.py) already ran, before the body is read
        body = await read_json_object(request, self.config.server.max_body_bytes)
        validate(spec, body)
        stream = bool(body.get("stream")) and spec.streams
        ex.route = await self._route(request, body, spec, stream, ex)
        ex.hold = await self.meter.reserve(bearer_token(request) if self.meter.paid else None, ex.request_id,
                                           ex.route, spec.name)
        try:
            if request.transport is None or request.transport.is_closing():
                # The client left while the hold was decided (an approval can wait minutes): no provider is called
                # for an answer nobody will receive, and the hold goes back.
                raise ArbstrError(400, "the client closed the connection before the request was served",
                                  code="client_closed")
            return await self._serve(request, body, stream, ex)
        except ArbstrError as e:
            ex.status = e.status
            raise
        finally:
            if not ex.resolved:  # every path that did not settle gives the hold back
                await self._release(ex, "not served")

    async def _route(self, request: web.Request, body: dict[str, Any], spec: EndpointSpec, stream: bool,
                     ex: Exchange) -> RouteReply:
        policy, complexity = route_overrides(request)
        s = spec.summarize(body)
        req = RouteRequest(
            request_id=ex.request_id, endpoint=spec.name, model=body["model"], last_user_text=s.last_user_text,
            text_sample=s.text_sample, input_tokens=s.input_tokens, turns=s.turns, max_tokens=s.max_tokens,
            choices=s.choices, stream=stream, tools=s.tools, policy=policy, complexity=complexity,
        )
        # Routing is a pure read: asking again after a lost reply is safe and lands on a surviving instance.
        return await self.bus.ask(exchanges.ROUTE, req, request_id=ex.request_id, traceparent=ex.traceparent,
                                  retries=1)

    async def _serve(self, request: web.Request, body: dict[str, Any], stream: bool,
                     ex: Exchange) -> web.StreamResponse:
        assert ex.route is not None and ex.hold is not None
        upstream_body = dict(body)
        extra_headers: dict[str, str] = {}
        if stream and not ex.spec.typed_events:  # typed-event streams report usage on their terminal event
            opts = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
            upstream_body["stream_options"] = {**opts, "include_usage": True}
        if ex.hold.output_tokens is not None and ex.spec.cap_fields:
            budget = cap_upstream(upstream_body, ex.spec, ex.hold.output_tokens, ex.route.envelope.choices)
            extra_headers["x-arbstr-max-tokens"] = str(budget)

        last: Optional[UpstreamFailure] = None
        probe_wait_s: Optional[int] = None  # set when a recovering provider's probe slot was taken
        unaffordable: Optional[ArbstrError] = None  # a costlier fallback the agent's funds or policy refused
        busy: Optional[UpstreamBusy] = None  # set when a provider's pooled connections all stayed in use
        for cand in ex.route.candidates:
            provider = self.directory.get(cand.provider)
            if provider is None:  # a price entry for a provider this gateway has no URL or credentials for
                log.warning("route named unknown provider %s", cand.provider)
                continue
            if cand.probe:  # half-open: only the one request holding the probe slot may try it
                wait_s = await self._probe(cand, ex)
                if wait_s is not None:
                    probe_wait_s = wait_s if probe_wait_s is None else min(probe_wait_s, wait_s)
                    continue
            if provider.x_cashu and stream:
                continue  # paid per request, a node buffers the whole answer: never a stream (the router knows)
            if self.meter.paid:
                refusal = await self._cover(cand, ex)
                if refusal is not None:
                    unaffordable = refusal
                    continue
            upstream_body["model"] = cand.model
            payload = orjson.dumps(upstream_body)
            t = time.perf_counter()
            try:
                if provider.x_cashu:
                    ex.paid = await self._x_cashu_token(cand, ex, upstream_body)
                reply = await self._open(provider, cand, ex, payload, stream, upstream_body)
                if reply.response.status >= 400:
                    ex.upstream_time += time.perf_counter() - t
                    await self._outcome(cand, ex, "http_4xx", reply.response.status, t)
                    return await self._client_error(reply, cand, ex, extra_headers)
                if stream:
                    ex.streamed = True
                    ex.upstream_time += reply.headers_at - t
                    if ex.spec.typed_events:
                        return await relay_typed_events(self, request, reply, cand, ex, extra_headers, t)
                    return await self._relay_stream(request, reply, cand, ex, body, extra_headers, t)
                result = await self._read_whole(reply, cand)
                ex.upstream_time += time.perf_counter() - t
                await self._outcome(cand, ex, "ok", reply.response.status, t)
                return await self._respond_whole(request, result, reply, cand, ex, extra_headers)
            except UpstreamBusy as b:  # our pool, not the provider: no breaker outcome, try the next one
                ex.upstream_time += time.perf_counter() - t
                log.info("request %s: %s", ex.request_id, b)
                busy = b
                continue
            except UpstreamFailure as f:
                ex.upstream_time += time.perf_counter() - t
                ex.attempts.append(cand.provider)
                if ex.paid is not None:  # the token went (or not): the vault takes back whatever came of it
                    outcome: XCashuOutcome = "unsent" if not f.sent else "refused" if f.status else "unknown"
                    self.routstr.report_later(ex.paid.payment_id, outcome, f.change, f.status, ex.request_id)
                    ex.paid = None
                await self._outcome(cand, ex, f.kind, f.status, t, f.retry_after_s)
                log.info("request %s: %s failed (%s), %s", ex.request_id, cand.provider, f.kind,
                         "falling over" if cand is not ex.route.candidates[-1] else "no more candidates")
                last = f
        if busy is not None:
            # Retrying soon can help: connections free up as the requests holding them finish.
            raise ArbstrError(503, f"arbstr's upstream connections are all in use: {busy}", code="upstream_busy",
                              headers={"retry-after": "1", "x-arbstr-retries": str(len(ex.attempts))})
        if last is None and unaffordable is not None:
            raise unaffordable  # nothing was called: the only candidates left cost more than the agent may spend
        if last is None and probe_wait_s is not None:
            raise ArbstrError(503, "every provider able to serve this request is recovering from failures",
                              code="no_provider_available",
                              headers={"retry-after": str(probe_wait_s), "x-arbstr-retries": "0"})
        raise self._exhausted(last, ex)

    async def _cover(self, cand: Candidate, ex: Exchange) -> Optional[ArbstrError]:
        """The hold covers ``cand`` at the output budget it reserved, extended first if ``cand`` costs more; the
        refusal (the agent cannot afford it, or its policy says no) if that candidate must be skipped."""
        assert ex.route is not None and ex.hold is not None
        budget = ex.hold.output_tokens if ex.hold.output_tokens is not None else ex.route.envelope.output_tokens
        needed = cost_msat(ex.route.envelope.input_tokens, budget or 0, cand.input_rate, cand.output_rate,
                           cand.base_fee_msat)
        if needed <= ex.hold.amount_msat:
            return None
        try:
            ex.hold = await self.meter.extend(ex.hold, needed, cand.provider)
        except ArbstrError as e:
            log.info("request %s: %s skipped: the hold could not grow to %d msat (%s)", ex.request_id,
                     cand.provider, needed, e.message)
            return e
        return None

    # --- Routstr nodes: a per-request token, one top-up after a 402 ----------------------------------------
    def _node_price(self, cand: Candidate) -> Optional[NodeModelPrice]:
        entry = self.directory.entries.get(cand.provider)
        return entry.node_prices.get(cand.model) if entry is not None else None

    async def _x_cashu_token(self, cand: Candidate, ex: Exchange, upstream_body: dict[str, Any]) -> XCashuToken:
        assert ex.hold is not None
        amount = token_amount_msat(ex.hold.amount_msat, request_reserve_msat(self._node_price(cand), upstream_body))
        try:
            return await self.routstr.token(ex.request_id, ex.hold.agent_id, cand.provider, amount, ex.traceparent)
        except ArbstrError as e:  # the vault could not pay it now: the next provider may not need paying
            raise UpstreamFailure("refused", f"no X-Cashu token for {cand.provider}: {e.message}", sent=False) \
                from None

    async def _open(self, provider: ProviderConfig, cand: Candidate, ex: Exchange, payload: bytes, stream: bool,
                    upstream_body: dict[str, Any]) -> UpstreamReply:
        """One attempt; a node the vault holds a key for that answers 402 is topped up once (the request waits)
        and asked again: its 402 is decided on a reserve that may exceed the balance the last top-up left."""
        def attempt() -> Any:
            return self.upstream.open(provider, ex.spec.path, payload, request_id=ex.request_id,
                                      traceparent=ex.traceparent, stream=stream,
                                      x_cashu=ex.paid.token if ex.paid is not None else None)
        try:
            return await attempt()
        except UpstreamFailure as f:
            if f.status != 402 or not provider.routstr or provider.x_cashu or ex.topped_up:
                raise
            ex.topped_up = True
            needed = max(request_reserve_msat(self._node_price(cand), upstream_body),
                         (f.node.required_msat or 0) if f.node is not None else 0)
            if not await self.routstr.top_up(cand.provider, needed, ex.request_id):
                raise
            return await attempt()

    def _exhausted(self, last: Optional[UpstreamFailure], ex: Exchange) -> ArbstrError:
        headers = {"x-arbstr-retries": str(len(ex.attempts))}
        if last is None:
            return ArbstrError(503, "no configured provider can serve this request", code="no_provider_available",
                               headers=headers)
        if last.kind == "http_429":
            if last.retry_after_s is not None:
                headers["retry-after"] = str(max(1, round(last.retry_after_s)))
            return ArbstrError(429, f"every provider is rate limited: {last}", code="upstream_rate_limited",
                               headers=headers)
        if last.kind == "timeout":
            return ArbstrError(504, f"upstream timed out: {last}", code="upstream_timeout", headers=headers)
        return ArbstrError(502, f"upstream failed: {last}", code="upstream_error", headers=headers)

    # --- non-streamed ----------------------------------------------------------------------------------
    async def _read_whole(self, reply: UpstreamReply, cand: Candidate) -> tuple[bytes, dict[str, Any]]:
        resp = reply.response
        try:
            raw = await resp.read()
        except asyncio.TimeoutError:
            raise UpstreamFailure("timeout", f"{cand.provider} timed out reading the body") from None
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamFailure("connect", f"{cand.provider} broke off the body ({type(e).__name__})") from None
        finally:
            resp.release()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            parsed = None
        if not isinstance(parsed, dict):
            raise UpstreamFailure("http_5xx", f"{cand.provider} sent a body that is not a JSON object", 502)
        return raw, parsed

    async def _respond_whole(self, request: web.Request, result: tuple[bytes, dict[str, Any]],
                             reply: UpstreamReply, cand: Candidate, ex: Exchange,
                             extra_headers: dict[str, str]) -> web.StreamResponse:
        raw, parsed = result
        routstr = self._is_routstr(cand)
        usage = self._usage(cand, ex, parsed.get("usage"), lambda: ex.spec.output_text(parsed), None,
                            reply.response.headers if routstr else None, routstr)
        if routstr:  # the node's billing of arbstr (its charge, our balance there) is not the agent's business
            raw = orjson.dumps(strip_billing(parsed))
        headers = self._headers(cand, ex, extra_headers)
        headers["x-arbstr-cost-msat"] = str(usage.cost_msat)
        headers["x-arbstr-overhead-ms"] = f"{ex.overhead_ms(time.perf_counter()):.3f}"
        ex.status = reply.response.status
        resp = web.Response(body=raw, status=reply.response.status, content_type="application/json",
                            headers=headers)
        # The upstream has answered in full: the request is billed whether or not the client takes the answer
        # (gone, or not reading within the write timeout, which cuts it off).
        guard = StallGuard(request, self.config.server.client_write_timeout_s)
        try:
            await resp.prepare(request)
            await guard.write(resp, None)
        except CLIENT_GONE:
            pass
        finally:
            guard.stop()
        if ex.paid is not None:  # after the client has its answer, like the settle
            paid, ex.paid = ex.paid, None
            await self.routstr.report(paid.payment_id, "answered", reply.change, reply.response.status,
                                      ex.request_id)
        await self._settle(ex, usage)  # after the client has its answer: settle is off the latency path
        return resp

    def _is_routstr(self, cand: Candidate) -> bool:
        provider = self.directory.get(cand.provider)
        return provider is not None and provider.routstr

    async def _client_error(self, reply: UpstreamReply, cand: Candidate, ex: Exchange,
                            extra_headers: dict[str, str]) -> web.StreamResponse:
        """An upstream 4xx is the client's problem: same status, sanitised OpenAI body, nothing billed."""
        resp = reply.response
        if reply.body is not None:
            raw = reply.body
        else:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
                raw = b""
            finally:
                resp.release()
        if ex.paid is not None:  # the node refused before taking the token (or refunded it): the vault takes it back
            self.routstr.report_later(ex.paid.payment_id, "refused", reply.change, resp.status, ex.request_id)
            ex.paid = None
        message, type_, param, code = upstream_error_detail(resp.status, raw)
        err = ArbstrError(resp.status, message, type=type_, param=param, code=code or "upstream_client_error")
        ex.status = resp.status
        headers = self._headers(cand, ex, extra_headers)
        if resp.headers.get("Retry-After"):
            headers["retry-after"] = resp.headers["Retry-After"]
        return error_response(err, ex.request_id, headers)

    # --- streamed --------------------------------------------------------------------------------------
    async def _relay_stream(self, request: web.Request, reply: UpstreamReply, cand: Candidate, ex: Exchange,
                            client_body: dict[str, Any], extra_headers: dict[str, str],
                            t_open: float) -> web.StreamResponse:
        up = reply.response
        opts = client_body.get("stream_options")
        # The client's choice decides what it sees; upstream always reports usage so billing is exact.
        client_wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        client = await ClientStream.open(request, self._headers(cand, ex, extra_headers),
                                          ex.overhead_ms(time.perf_counter()),
                                          self.config.server.client_write_timeout_s)
        send = client.send

        usage_block: Optional[dict[str, Any]] = None
        pieces: list[str] = []
        content_chunks = 0
        last_chunk: dict[str, Any] = {}
        finished = False
        done = False
        failure: Optional[str] = None
        try:
            async for line in up.content:
                if not line.startswith(b"data:"):
                    continue  # blank separators and comments: we frame our own events
                payload = line[5:].strip()
                if payload == b"[DONE]":
                    done = True
                    break
                try:
                    chunk = orjson.loads(payload)
                except orjson.JSONDecodeError:
                    await send(b"data: " + payload + b"\n\n")
                    continue
                if not isinstance(chunk, dict):
                    await send(b"data: " + payload + b"\n\n")
                    continue
                if "error" in chunk and not chunk.get("choices"):
                    failure = "the upstream reported an error mid-stream"
                    break
                u = chunk.get("usage")
                choices = chunk.get("choices")
                if isinstance(u, dict):
                    usage_block = u
                    if not choices:
                        continue  # upstream's usage-only chunk: ours, with the cost, replaces it
                    chunk = {k: v for k, v in chunk.items() if k != "usage"}
                    payload = dumps_or(chunk, payload)
                if choices:
                    last_chunk = chunk
                    text = text_or_empty(ex.spec.delta_text, chunk)
                    if text:
                        pieces.append(text)
                        content_chunks += 1
                    if any(isinstance(c, dict) and c.get("finish_reason") for c in choices):
                        finished = True
                await send(b"data: " + payload + b"\n\n")
            else:
                if not finished:
                    failure = "the upstream closed the stream early"
        except READ_ERRORS as e:
            failure = read_failure(e)
        finally:
            up.release()
        text = "".join(pieces)
        routstr = self._is_routstr(cand)
        usage = self._usage(cand, ex, usage_block, lambda: text, max(content_chunks, 0), None, routstr)
        if routstr and usage_block is not None:
            usage_block = {k: v for k, v in usage_block.items() if k not in USAGE_FIELDS}
        await self._outcome(cand, ex, "ok" if failure is None else "cut", 200, t_open)
        if failure is None and (done or finished):
            if client_wants_usage:
                final = {
                    "id": last_chunk.get("id", ex.request_id),
                    "object": last_chunk.get("object", "chat.completion.chunk"),
                    "created": last_chunk.get("created", int(time.time())),
                    "model": last_chunk.get("model", cand.model),
                    "choices": [],
                    "usage": {**(usage_block or {}),
                              "prompt_tokens": usage.input_tokens,
                              "completion_tokens": usage.output_tokens,
                              "total_tokens": usage.input_tokens + usage.output_tokens,
                              "cost_msat": usage.cost_msat},
                }
                final_bytes = dumps_or(final, b"")
                if not final_bytes:  # the upstream's own fields would not serialise: ours alone
                    final_bytes = orjson.dumps({**final, "id": ex.request_id, "object": "chat.completion.chunk",
                                                "created": int(time.time()), "model": cand.model,
                                                "usage": {k: final["usage"][k] for k in OUR_USAGE_KEYS}})
                await send(b"data: " + final_bytes + b"\n\n")
            await send(b"data: [DONE]\n\n")
        else:
            ex.success = False
            err = ArbstrError(502, failure or "upstream stream ended unexpectedly", code="upstream_stream_cut")
            await send(b"data: " + err.body().model_dump_json().encode() + b"\n\n")
        await client.close()
        await self._settle(ex, usage)
        return client.response

    # --- accounting ------------------------------------------------------------------------------------
    def _usage(self, cand: Candidate, ex: Exchange, block: Any, output_text: Any, chunk_count: Optional[int],
               headers: Any = None, routstr: bool = False) -> Usage:
        assert ex.route is not None
        in_tok: Optional[int] = None
        out_tok: Optional[int] = None
        if isinstance(block, dict):
            p, c = block.get("prompt_tokens", block.get("input_tokens")), \
                block.get("completion_tokens", block.get("output_tokens"))
            # An upstream's numbers are bounded like a client's: 2^63 tokens would price past 64 bits, and no
            # store behind the vault (nor orjson) holds that.
            if isinstance(p, int) and not isinstance(p, bool) and p >= 0:
                in_tok = min(p, MAX_TOKENS)
            if isinstance(c, int) and not isinstance(c, bool) and c >= 0:
                out_tok = min(c, MAX_TOKENS)
            elif isinstance(p, int) and ex.spec.name == "embeddings":
                out_tok = 0
        estimated = in_tok is None or out_tok is None
        if in_tok is None:
            in_tok = ex.route.envelope.input_tokens
        if out_tok is None:
            out_tok = estimate_text_tokens(text_or_empty(output_text))
            if chunk_count:
                out_tok = max(out_tok, chunk_count)
        cost = min(cost_msat(in_tok, out_tok, cand.input_rate, cand.output_rate, cand.base_fee_msat), MAX_MSAT)
        theirs = reported_cost_msat(block, headers) if routstr else None
        drift = theirs is not None and drifted(cost, theirs)
        if drift:
            log.warning("request %s: %s charged %d msat where arbstr computed %d msat", ex.request_id, cand.provider,
                        theirs, cost)
        if self.metrics is not None and theirs is not None:
            self.metrics.provider_cost(cand.provider, theirs, drift)
        return Usage(cand.provider, cand.model, in_tok, out_tok, cost, estimated, theirs, drift)

    async def _settle(self, ex: Exchange, usage: Usage) -> None:
        assert ex.hold is not None
        ex.resolved = True
        if self.metrics is not None:
            self.metrics.served_request(ex.spec.name, usage.provider, usage.model, ex.streamed, usage.input_tokens,
                                        usage.output_tokens, usage.cost_msat,
                                        ex.overhead_ms(time.perf_counter()) / 1000)
        record = await self._record(ex, usage)
        try:
            await self.meter.settle(ex.hold, usage, record)
        except Exception:
            log.exception("request %s: settle failed; the hold expires at its TTL", ex.request_id)

    async def _release(self, ex: Exchange, reason: str) -> None:
        assert ex.hold is not None
        ex.resolved = True
        record = await self._record(ex, None)
        try:
            await self.meter.release(ex.hold, reason, record)
        except Exception:
            log.exception("request %s: release failed; the hold expires at its TTL", ex.request_id)

    async def _record(self, ex: Exchange, usage: Optional[Usage]) -> Optional[RequestRecord]:
        """The request's record: in paid mode it rides with the settle into the journal (the vault publishes it
        from there); in free mode it is published here."""
        assert ex.route is not None and ex.hold is not None
        now = time.perf_counter()
        status = ex.status or (200 if usage is not None else 500)
        record = request_record(
            request_id=ex.request_id, agent_id=ex.hold.agent_id, endpoint=ex.spec.name, route=ex.route, usage=usage,
            status=status, success=usage is not None and ex.success and status < 400, streamed=ex.streamed,
            latency_ms=(now - ex.started) * 1000, overhead_ms=ex.overhead_ms(now), at_ms=int(time.time() * 1000),
            provider=ex.attempts[-1] if ex.attempts else None)
        if self.meter.paid:
            return record
        await publish_record(self.nc, record)
        return None

    # --- small pieces ----------------------------------------------------------------------------------
    def _headers(self, cand: Candidate, ex: Exchange, extra: dict[str, str]) -> dict[str, str]:
        assert ex.route is not None
        h = {
            "x-request-id": ex.request_id,
            "traceparent": ex.traceparent or "",
            "x-arbstr-provider": cand.provider,
            "x-arbstr-model": cand.model,
            "x-arbstr-tier": ex.route.tier,  # the decision: the minimum tier this request needs
            "x-arbstr-provider-tier": cand.tier,
            "x-arbstr-complexity": ex.route.complexity,
            "x-arbstr-retries": str(len(ex.attempts)),
            **extra,
        }
        if ex.route.policy:
            h["x-arbstr-policy"] = ex.route.policy
        if ex.attempts:
            h["x-arbstr-tried"] = ",".join(ex.attempts)
        return h

    async def _outcome(self, cand: Candidate, ex: Exchange, kind: OutcomeKind, status: Optional[int],
                       started: float, retry_after_s: Optional[float] = None) -> None:
        """Every upstream attempt is reported to the breakers; fire-and-forget, never on the latency path."""
        now = time.perf_counter()
        if self.metrics is not None:
            self.metrics.attempt(cand.provider, cand.model, kind)
        if kind in ("ok", "http_4xx") and cand.quiet and not cand.probe:
            return  # the breaker already counts no failures: one more success would be work for nothing
        # A probe candidate is tried only with the probe slot (or on a closed breaker, where the flag is moot):
        # its outcome is what resolves the slot.
        event = Outcome(provider=cand.provider, request_id=ex.request_id, kind=kind, status=status,
                        retry_after_s=retry_after_s, latency_ms=(now - started) * 1000,
                        at_ms=int(time.time() * 1000), probe=cand.probe)
        try:  # nc.publish only appends to the connection's buffer: no round trip
            await self.nc.publish(subjects.breaker_outcome(cand.provider), event.model_dump_json().encode())
        except Exception:
            log.debug("could not publish outcome", exc_info=True)

    async def _probe(self, cand: Candidate, ex: Exchange) -> Optional[int]:
        """None when this request may try ``cand``'s half-open provider; else seconds until it is worth asking
        again. An unreachable breaker refuses: a recovering provider gets no traffic nobody is counting."""
        try:
            reply = await self.bus.ask(exchanges.BREAKER_PROBE, ProbeRequest(provider=cand.provider,
                                                                           probe_id=ex.request_id),
                                       request_id=ex.request_id, traceparent=ex.traceparent,
                                        timeout_s=min(PROBE_TIMEOUT_S, self.config.nats.request_timeout_s))
        except ArbstrError as e:
            log.info("request %s: no probe of %s (%s)", ex.request_id, cand.provider, e.message)
            return 1
        if reply.granted:
            return None
        until_ms = reply.probe_deadline_ms if reply.state == "half_open" else reply.retry_at_ms
        return max(1, ceil_div(max(0, until_ms - int(time.time() * 1000)), 1000))
