"""A Routstr node for tests, rebuilt from routstr-core's source (Routstr/routstr-core at commit 8bd7d7e,
2026-08-21: ``routstr/balance.py``, ``auth.py``, ``proxy.py``, ``payment/``, ``upstream/base.py``,
``core/exceptions.py``). Written for arbstr's tests, with the same wire contract; none of its code is copied.
The rules (402 on the reserve, the charge, error bodies) are in ``tests/support/routstr_rules.py``.

Served:
- ``GET /v1/info`` (``mints``), ``GET /v1/models``, ``/models`` (``{"data": […]}``, no ``object``);
- ``POST /v1/balance/create`` with a JSON body ``{"initial_balance_token", …}`` (the query form gets FastAPI's 422)
  and ``GET /v1/balance/create?initial_balance_token=…``; the key is ``"sk-" + sha256(token)``, the same token again
  answers the same key and credits nothing; ``legacy_create`` imitates a node before 2026-07-24 (no POST route);
- ``POST /v1/balance/topup`` (Bearer; ``cashu_token`` in the query or a JSON body) → ``{"msats": n}``;
  ``GET /v1/balance/info`` (``balance`` = balance − reserved); ``POST /v1/balance/refund`` with ``X-Cashu`` (the
  change of an X-Cashu request, again); the same under the deprecated ``/v1/wallet``; unknown paths there → 404;
- ``POST /v1/chat/completions`` (and any POST path, as the node's catch-all proxy): a Bearer ``sk-`` key or a Cashu
  token as the bearer (402 when the balance is below the reserve, reserve then settle), or an ``X-Cashu`` token
  (402 when its face value is below the reserve; the whole answer is buffered; change in the ``X-Cashu`` response
  header). Cost in ``usage.cost`` (object), ``usage.cost_sats``, ``usage.remaining_balance_msats``, and the
  ``X-Routstr-*-Msats`` headers on non-streamed answers; a stream ends with a usage chunk carrying the cost.

Not served: Lightning, child keys, bearer refunds, the Responses API, admin. Tokens are redeemed at the test
mint by a ``CashuWallet`` of the node's own; change is issued from it.

Its "upstream" is deterministic: "Hello from <node>: <last user message>", cut to ``max_tokens`` (or
``max_completion_tokens``) words; usage counts words, plus 3 per prompt message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

import pytest
from aiohttp import web

from actors.vault.wallets.base import WalletError
from actors.vault.wallets.cashu_mint import parse_token
from actors.vault.wallets.cashu_wallet import CashuWallet
from schemas.config import CashuConfig
from tests.support.nutshell import NutshellMint
from tests.support.routstr_rules import (REDEMPTION_ERRORS, SPENT_TOKEN_CODES, Cost, NodeModel, error_detail,
                                 error_response_body, http_exception_body, listing_entry, reserve_msat, token_cost,
                                 usd_cost, validation_error_body)

Price = tuple[Union[str, float], Union[str, float]]  # sats per token: (prompt, completion)
DEFAULT_MODELS: dict[str, Price] = {"gpt-4o-mini": ("0.0005", "0.002"), "llama-3-8b": ("0.0001", "0.0003")}
RID = web.RequestKey("rid", str)  # the node's own request id (its middleware makes one per request)
BAD_AUTH = "Invalid authorization. Use 'Bearer <cashu-token>' or 'Bearer <api-key>'"


class NodeError(Exception):
    """An HTTP answer of the node that is not a success (raised deep, turned into a response at the edge)."""

    def __init__(self, status: int, body: dict[str, Any], headers: Optional[dict[str, str]] = None) -> None:
        super().__init__(status)
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass
class Key:
    hashed_key: str
    balance: int = 0  # msat
    reserved: int = 0
    total_spent: int = 0
    total_requests: int = 0

    @property
    def api_key(self) -> str:
        return "sk-" + self.hashed_key

    @property
    def total_balance(self) -> int:
        return self.balance - self.reserved


@dataclass
class Refund:
    token: str
    sats: int
    swept: bool = False


@dataclass
class Knobs:
    """What a test may change on a node."""

    legacy_create: str = ""  # "404": no POST /create, the balance catch-all answers; "400": the proxy answers
    fail_upstream: Optional[int] = None  # the upstream answers this status
    usd_cost: Optional[float] = None  # the upstream reports its cost in USD: billed before token prices
    redemption_fault: Optional[str] = None  # a key of REDEMPTION_ERRORS: every redemption fails so
    hold_answers: Optional[asyncio.Event] = None  # paid requests wait for it after payment, before answering
    swept: bool = False  # unclaimed X-Cashu change was swept: /refund answers 410
    redirect_to: Optional[str] = None  # every request under redirect_prefix answers 307 to this base URL
    redirect_prefix: str = "/"


def models_of(models: Union[dict[str, Price], dict[str, NodeModel], None]) -> dict[str, NodeModel]:
    out: dict[str, NodeModel] = {}
    for name, m in (models if models is not None else DEFAULT_MODELS).items():
        out[name] = m if isinstance(m, NodeModel) else NodeModel(float(m[0]), float(m[1]))
    return out


class RoutstrNode:
    def __init__(self, name: str, wallet: CashuWallet, models: dict[str, NodeModel], *,
                 min_request_msat: int = 1, mints: Optional[list[str]] = None) -> None:
        self.name = name
        self.wallet = wallet
        self.models = models
        self.min_request_msat = min_request_msat
        self.mints = mints
        self.knobs = Knobs()
        self.keys: dict[str, Key] = {}  # hashed key → key
        self.redeemed: set[str] = set()  # proofs this node swapped: the mint says "spent" to a second swap
        self.x_cashu_in: dict[str, str] = {}  # X-Cashu token → the node's request id
        self.refunds: dict[str, Refund] = {}  # request id → change issued
        self.requests: list[dict[str, Any]] = []  # bodies of the paid requests it served, in order
        self.hits: list[str] = []  # "METHOD /path" of every request it received
        self.url = ""
        self._runner: Optional[web.AppRunner] = None

    # --- http plumbing ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._request_id])
        app.router.add_get("/v1/info", self.info)
        for path in ("/v1/models", "/v1/models/", "/models", "/models/"):
            app.router.add_get(path, self.list_models)
        for prefix in ("/v1/balance", "/v1/wallet"):
            app.router.add_post(f"{prefix}/create", self.create_post)
            app.router.add_get(f"{prefix}/create", self.create_get)
            app.router.add_get(f"{prefix}/info", self.balance_info)
            app.router.add_get(f"{prefix}/", self.balance_info)
            app.router.add_post(f"{prefix}/topup", self.topup)
            app.router.add_post(f"{prefix}/refund", self.refund)
            app.router.add_route("*", prefix + "/{tail:.*}", self.balance_catch_all)
        app.router.add_post("/{tail:.*}", self.proxy)
        return app

    @web.middleware
    async def _request_id(self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                          ) -> web.StreamResponse:
        request[RID] = str(uuid.uuid4())
        self.hits.append(f"{request.method} {request.path}")
        if self.knobs.redirect_to and request.path.startswith(self.knobs.redirect_prefix):
            raise web.HTTPTemporaryRedirect(self.knobs.redirect_to + request.path_qs)
        try:
            resp = await handler(request)
        except NodeError as e:
            resp = web.json_response(e.body, status=e.status, headers=e.headers)
        resp.headers["x-routstr-request-id"] = request[RID]
        return resp

    async def start(self) -> str:
        await self.wallet.start()
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self.knobs.hold_answers is not None:
            self.knobs.hold_answers.set()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.wallet.stop()

    def key_of_token(self, token: str) -> Optional[Key]:
        return self.keys.get(hashlib.sha256(token.encode()).hexdigest())

    # --- errors ------------------------------------------------------------------------------------------
    @staticmethod
    def http_error(request: web.Request, status: int, detail: Any, headers: Optional[dict[str, str]] = None
                   ) -> NodeError:
        return NodeError(status, http_exception_body(detail, request[RID]), headers)

    @staticmethod
    def plain_error(request: web.Request, type_: str, message: str, status: int, code: Optional[object] = None,
                    token: Optional[str] = None) -> NodeError:
        return NodeError(status, error_response_body(type_, message, status, request[RID], code),
                         {"X-Cashu": token} if token else None)

    # --- money ---------------------------------------------------------------------------------------------
    async def redeem(self, token: str) -> int:
        """Swap ``token`` into the node's wallet; the msat it is worth here. ``KeyError(kind)`` on failure, where
        kind is a key of REDEMPTION_ERRORS."""
        if self.knobs.redemption_fault:
            raise KeyError(self.knobs.redemption_fault)
        try:
            token_id = self.wallet.token_id(token)
        except WalletError:
            raise KeyError("invalid") from None
        if token_id in self.redeemed:
            raise KeyError("spent")  # the mint refuses a second swap of the same proofs
        try:
            got = await self.wallet.redeem_token(token)
        except WalletError as e:
            raise KeyError({"token_spent": "spent", "foreign_mint": "foreign", "token_too_small": "zero",
                            "rail_unavailable": "mint_down"}.get(e.code, "invalid")) from None
        self.redeemed.add(token_id)
        if got.amount_msat <= 0:
            raise KeyError("zero")
        return got.amount_msat

    def redemption_error(self, request: web.Request, kind: str) -> NodeError:
        type_, status, message, code = REDEMPTION_ERRORS[kind]
        return self.http_error(request, status, error_detail(message, type_, code))

    async def issue_change(self, request_id: str, sats: int) -> str:
        plan = await self.wallet.plan_token_payout(f"refund-{request_id}", sats * 1000)
        status = await self.wallet.pay(plan)
        if status.state != "succeeded":
            raise RuntimeError(f"the node could not issue change: {status.reason}")
        self.refunds[request_id] = Refund(status.token, sats)
        return status.token

    async def bearer_key(self, request: web.Request, bearer: str, min_cost: int = 0) -> Key:
        """``validate_bearer_key``: an ``sk-`` key it knows, or a Cashu token (its key, made and credited on first
        use); ``min_cost`` > the balance → 402."""
        if not bearer:
            raise self.http_error(request, 401, error_detail("API key or Cashu token required",
                                                             "invalid_request_error", "missing_api_key"))
        key = self.keys.get(bearer[3:]) if bearer.startswith("sk-") else None
        if key is None and bearer.startswith("cashu"):
            try:
                parse_token(bearer)
            except WalletError:
                raise self.redemption_error(request, "invalid") from None
            key = self.key_of_token(bearer)
            if key is None:
                try:
                    amount = await self.redeem(bearer)
                except KeyError as e:
                    raise self.redemption_error(request, str(e.args[0])) from None
                key = self.keys[hashlib.sha256(bearer.encode()).hexdigest()] = \
                    Key(hashlib.sha256(bearer.encode()).hexdigest(), balance=amount)
                return key  # a key made now is not checked against min_cost (the reserve is)
        if key is None:
            raise self.http_error(request, 401, error_detail(
                "Invalid API key format. Expected an 'sk-...' API key or a 'cashu...' token.",
                "invalid_request_error", "invalid_api_key"))
        if min_cost > 0 and key.total_balance < min_cost:
            raise self.http_error(request, 402, error_detail(
                f"Insufficient balance: {_sats(min_cost)} required for this model; {_sats(key.total_balance)} "
                "available.", "insufficient_quota", "insufficient_balance"))
        return key

    async def header_key(self, request: web.Request) -> Key:
        auth = request.headers.get("Authorization")
        if auth is None:
            raise NodeError(422, validation_error_body(["header", "authorization"]))
        if not auth.startswith("Bearer "):
            raise self.http_error(request, 401, BAD_AUTH)
        return await self.bearer_key(request, auth[7:])

    # --- endpoints: info, models, balance ------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        return web.json_response({"name": self.name, "description": "arbstr test node", "version": "0.4.0-test",
                                  "npub": "", "mints": self.mints if self.mints is not None else [self.wallet.mint_url],
                                  "http_url": self.url, "onion_url": "", "child_key_cost_msats": 0})

    async def list_models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [listing_entry(name, m, self.min_request_msat, 1_700_000_000)
                                           for name, m in self.models.items()]})

    async def create_post(self, request: web.Request) -> web.Response:
        if self.knobs.legacy_create == "404":
            return await self.balance_catch_all(request)
        if self.knobs.legacy_create == "400":
            return await self.proxy(request)
        raw = await request.read()
        if not raw:
            raise NodeError(422, validation_error_body(["body"]))
        try:
            body = json.loads(raw)
        except ValueError:
            raise NodeError(422, validation_error_body(["body", 0], "json_invalid", "JSON decode error")) from None
        if not isinstance(body, dict):
            raise NodeError(422, validation_error_body(["body"], "model_attributes_type", "Input should be a "
                                                       "valid dictionary or object to extract fields from"))
        token = body.get("initial_balance_token")
        if not isinstance(token, str):
            raise NodeError(422, validation_error_body(["body", "initial_balance_token"]))
        return await self._create(request, token)

    async def create_get(self, request: web.Request) -> web.Response:
        token = request.query.get("initial_balance_token")
        if token is None:
            raise NodeError(422, validation_error_body(["query", "initial_balance_token"]))
        return await self._create(request, token)

    async def _create(self, request: web.Request, token: str) -> web.Response:
        key = await self.bearer_key(request, token)
        return web.json_response({"api_key": key.api_key, "balance": key.balance})

    async def balance_info(self, request: web.Request) -> web.Response:
        key = await self.header_key(request)
        return web.json_response({"api_key": key.api_key, "balance": key.total_balance, "reserved": key.reserved,
                                  "is_child": False, "total_requests": key.total_requests,
                                  "total_spent": key.total_spent, "balance_limit": None,
                                  "balance_limit_reset": None, "validity_date": None})

    async def topup(self, request: web.Request) -> web.Response:
        key = await self.header_key(request)
        token = request.query.get("cashu_token")
        raw = await request.read()
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                raise NodeError(422, validation_error_body(["body", 0], "json_invalid", "JSON decode error")) \
                    from None
            if not isinstance(body, dict) or not isinstance(body.get("cashu_token"), str):
                raise NodeError(422, validation_error_body(["body", "cashu_token"]))
            token = body["cashu_token"]
        if token is None:
            raise self.http_error(request, 400, "A cashu_token is required.")
        token = token.replace("\n", "").replace("\r", "").replace("\t", "")
        if len(token) < 10 or "cashu" not in token:
            raise self.http_error(request, 400, "Invalid token format")
        try:
            amount = await self.redeem(token)
        except KeyError as e:
            raise self.redemption_error(request, str(e.args[0])) from None
        key.balance += amount
        return web.json_response({"msats": amount})

    async def refund(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-Cashu")
        if not token:
            raise self.http_error(request, 401, BAD_AUTH)  # bearer refunds are not served by this node
        rid = self.x_cashu_in.get(token)
        if rid is None:
            raise self.http_error(request, 404, "Refund not found")
        refund = self.refunds.get(rid)
        if refund is None:  # still in flight, or no change was due: the node cannot tell them apart
            raise self.http_error(request, 425, "Refund is pending; retry shortly.", {"Retry-After": "2"})
        if refund.swept or self.knobs.swept:
            raise self.http_error(request, 410, "Refund has been swept")
        return web.json_response({"token": refund.token, "sats": str(refund.sats)}, headers={"X-Cashu": refund.token})

    async def balance_catch_all(self, request: web.Request) -> web.Response:
        raise self.http_error(request, 404, "Not found check /docs for available endpoints")

    # --- the proxy ---------------------------------------------------------------------------------------
    async def proxy(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            raise self.http_error(request, 400, {"error": {"type": "invalid_request_error", "code": "invalid_json"}}) \
                from None
        if not isinstance(body, dict):
            body = {}
        if "max_tokens" in body and (not isinstance(body["max_tokens"], int) or isinstance(body["max_tokens"], bool)):
            raise self.http_error(request, 400, {"error": "max_tokens must be an integer"})
        model_id = str(body.get("model", "unknown"))
        model = self.models.get(model_id.lower()) or self.models.get(model_id)
        if model is None:
            raise self.plain_error(request, "invalid_model", f"Model '{model_id}' not found", 400)
        reserve = reserve_msat(model, body, self.min_request_msat)
        x_cashu = request.headers.get("X-Cashu")
        if x_cashu is not None:
            return await self._x_cashu(request, body, model_id, model, reserve, x_cashu)
        auth = request.headers.get("Authorization")
        if auth is None:
            raise self.http_error(request, 401, "Unauthorized")
        parts = auth.split()
        bearer = parts[1] if len(parts) > 1 and parts[0].lower() == "bearer" else ""
        key = await self.bearer_key(request, bearer, reserve)
        if key.total_balance < reserve:
            raise self.http_error(request, 402, error_detail(
                f"Insufficient balance: {reserve} mSats required. {key.total_balance} available. "
                f"(reserved: {key.reserved})", "insufficient_quota", "insufficient_balance"))
        key.reserved += reserve
        key.total_requests += 1
        try:
            await self._wait_hold()
        except BaseException:  # the client went away: the reservation is reverted
            key.reserved -= reserve
            key.total_requests -= 1
            raise
        if self.knobs.fail_upstream is not None:
            key.reserved -= reserve
            key.total_requests -= 1
            raise self.plain_error(request, "upstream_error", "Error forwarding request to upstream",
                                   self.knobs.fail_upstream)
        self.requests.append(body)
        words, usage = self._answer(body)
        cost = self._cost(model, usage)
        # Settle: the reserve goes; the cost is charged (an overrun only up to what the balance holds).
        key.reserved -= reserve
        charge = cost.total_msats if cost.total_msats <= reserve else min(key.balance, cost.total_msats)
        key.balance -= charge
        key.total_spent += charge
        usage = {**usage, "cost": cost.body(), "cost_sats": cost.total_msats // 1000,
                 "remaining_balance_msats": key.balance}
        extra = {"metadata": {"routstr": {"cost": {**cost.body(), "sats_cost": cost.total_msats // 1000,
                                                   "remaining_balance_msats": key.balance}}},
                 "cost": {**cost.body(), "sats_cost": cost.total_msats // 1000, "remaining_balance_msats": key.balance}}
        if body.get("stream") is True:
            return await self._stream(request, model_id, words, {**extra, "usage": usage})
        return web.json_response({**self._completion(model_id, words), "usage": usage, **extra},
                                 headers=cost.headers())

    async def _x_cashu(self, request: web.Request, body: dict[str, Any], model_id: str, model: NodeModel,
                       reserve: int, token: str) -> web.StreamResponse:
        if not token:
            raise self.http_error(request, 401, error_detail("API key or Cashu token required",
                                                             "invalid_request_error", "missing_api_key"))
        try:
            parsed = parse_token(token)
        except WalletError:
            raise self.http_error(request, 401, "Invalid authentication token format") from None
        face_msat = sum(p.amount for p in parsed.proofs) * (1 if parsed.unit == "msat" else 1000)
        if reserve > face_msat:
            raise self.http_error(request, 402, {"reason": "Insufficient balance", "amount_required_msat": reserve,
                                                 "model": body.get("model", "unknown"),
                                                 "type": "minimum_balance_required"})
        try:
            amount_msat = await self.redeem(token)
        except KeyError as e:
            type_, status, message, code = REDEMPTION_ERRORS[str(e.args[0])]
            raise self.plain_error(request, type_, message, status, code,
                                   token=None if code in SPENT_TOKEN_CODES else token) from None
        rid = request[RID]
        self.x_cashu_in[token] = rid
        sats = amount_msat // 1000
        await self._wait_hold()
        if self.knobs.fail_upstream is not None:
            change = await self.issue_change(rid, sats)
            status = self.knobs.fail_upstream
            return web.json_response({"error": {"message": "Error forwarding request to upstream",
                                                "type": "upstream_error", "code": status, "refund_token": change}},
                                     status=status, headers={"X-Cashu": change})
        self.requests.append(body)
        words, usage = self._answer(body)
        cost = self._cost(model, usage)
        headers = cost.headers()
        change_sats = sats - math.ceil(cost.total_msats / 1000)
        if change_sats > 0:
            headers["X-Cashu"] = await self.issue_change(rid, change_sats)
        usage = {**usage, "cost": cost.body(), "cost_sats": cost.total_msats // 1000}
        if body.get("stream") is True:  # buffered whole, then sent in one piece (as text/plain, as the node does)
            chunks = [*self._chunks(model_id, words), {**self._chunk_base(model_id), "choices": [], "usage": usage}]
            text = "".join(f"data: {json.dumps(c)}\n\n" for c in chunks) + "data: [DONE]\n\n"
            return web.Response(text=text, content_type="text/plain", headers=headers)
        return web.json_response({**self._completion(model_id, words), "usage": usage}, headers=headers)

    async def _wait_hold(self) -> None:
        if self.knobs.hold_answers is not None:
            await self.knobs.hold_answers.wait()

    # --- the simulated upstream and its answer -----------------------------------------------------------
    def _answer(self, body: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
        messages = body.get("messages") if isinstance(body.get("messages"), list) else []
        last = next((str(m.get("content", "")) for m in reversed(messages)
                     if isinstance(m, dict) and m.get("role") == "user"), "")
        words = f"Hello from {self.name}: {last}".split()
        cap = body.get("max_tokens") or body.get("max_completion_tokens")  # the upstream honours either
        if isinstance(cap, int) and cap > 0:
            words = words[:cap]
        prompt = sum(len(str(m.get("content", "")).split()) + 3 for m in messages if isinstance(m, dict))
        return words, {"prompt_tokens": prompt, "completion_tokens": len(words),
                       "total_tokens": prompt + len(words)}

    def _cost(self, model: NodeModel, usage: dict[str, Any]) -> Cost:
        if self.knobs.usd_cost is not None:  # the upstream's USD figure wins over the node's token prices
            return usd_cost(self.knobs.usd_cost, usage["prompt_tokens"], usage["completion_tokens"])
        return token_cost(model, usage["prompt_tokens"], usage["completion_tokens"])

    def _chunk_base(self, model_id: str) -> dict[str, Any]:
        return {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": model_id}

    def _chunks(self, model_id: str, words: list[str]) -> list[dict[str, Any]]:
        base = self._chunk_base(model_id)
        out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                     "finish_reason": None}]}]
        out += [{**base, "choices": [{"index": 0, "delta": {"content": (" " if i else "") + w}, "finish_reason": None}]}
                for i, w in enumerate(words)]
        out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        return out

    def _completion(self, model_id: str, words: list[str]) -> dict[str, Any]:
        return {"id": f"chatcmpl-{uuid.uuid4()}", "object": "chat.completion", "created": int(time.time()),
                "model": model_id, "provider": "test",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                             "finish_reason": "stop"}]}

    async def _stream(self, request: web.Request, model_id: str, words: list[str],
                      trailer: dict[str, Any]) -> web.StreamResponse:
        """Relayed as the upstream sends it (no cost headers); the usage chunk the node forced from the upstream
        comes last, with the cost, then ``[DONE]``."""
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunks = self._chunks(model_id, words)
        for c in chunks:
            await resp.write(f"data: {json.dumps(c)}\n\n".encode())
        final = {**self._chunk_base(model_id), "choices": [], **trailer}
        await resp.write(f"data: {json.dumps(final)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _sats(msat: int) -> str:
    sats = f"{msat / 1000:.3f}".rstrip("0").rstrip(".")
    return f"{sats} sats ({msat} msats)"


StartNode = Callable[..., Awaitable[RoutstrNode]]


@pytest.fixture
async def routstr_nodes(nutshell_mint: NutshellMint, tmp_path: Path) -> AsyncIterator[StartNode]:
    """``await routstr_nodes(models, name=…, min_request_msat=…, mints=…)`` starts a node on a random port;
    ``models`` maps a model to (prompt, completion) sats per token or a ``NodeModel``. All stop at teardown."""
    nodes: list[RoutstrNode] = []

    async def start(models: Union[dict[str, Price], dict[str, NodeModel], None] = None, name: str = "",
                    **kwargs: Any) -> RoutstrNode:
        name = name or f"node{len(nodes) + 1}"
        wallet = CashuWallet(CashuConfig(mint_url=nutshell_mint.url, wallet_dir=str(tmp_path / f"routstr-{name}")))
        node = RoutstrNode(name, wallet, models_of(models), **kwargs)
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()
