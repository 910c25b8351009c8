"""A small Routstr-like node for tests: an OpenAI-compatible chat endpoint paid in Cashu at a real mint.

It follows the public shape of routstr-core: ``GET /v1/models`` lists per-model ``sats_pricing`` (sats per
token, ``prompt``/``completion``); ``GET|POST /v1/balance/create?initial_balance_token=…`` turns a token into a
prepaid key ``{"api_key": "sk-…", "balance": msat}``; ``POST /v1/balance/topup`` (Bearer key, the token as
``cashu_token`` in the query or the JSON body) adds to it and answers ``{"msats": credited, "balance": …}``;
``GET /v1/balance/info``; ``POST /v1/chat/completions`` with ``Authorization: Bearer sk-…`` (or a Cashu token
as the bearer itself) charges ``sats_pricing × usage`` in msat, rounded up, reports it in ``usage.cost`` and
``X-Routstr-Cost-Msats``, and answers 402 (an OpenAI-shaped error, as routstr-core's) when the balance falls
short. Tokens are redeemed by the vault's own ``CashuWallet`` at the test mint. Not served: the per-request
``X-Cashu`` mode, refunds, child keys.

Its answer is deterministic: "Hello from <node>: <the last user message>", cut to ``max_tokens`` words;
tokens are counted as words (plus 3 per message), so a test can compute every charge.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Optional, Union

import pytest
from aiohttp import web

from actors.vault.wallets.base import WalletError
from actors.vault.wallets.cashu_wallet import CashuWallet
from schemas.config import CashuConfig
from tests.nutshell import NutshellMint

Price = tuple[Union[str, float], Union[str, float]]  # sats per token: (prompt, completion)

DEFAULT_PRICES: dict[str, Price] = {"gpt-4o-mini": ("0.0005", "0.002"), "llama-3-8b": ("0.0001", "0.0003")}


@dataclass
class Key:
    api_key: str
    balance_msat: int = 0
    total_requests: int = 0
    total_spent_msat: int = 0
    deposits: set[str] = field(default_factory=set)


def count_tokens(text: str) -> int:
    return len(text.split())


def cost_msat(prompt_tokens: int, completion_tokens: int, price: tuple[Decimal, Decimal]) -> tuple[int, int]:
    """(input msat, output msat) of a request: the total is rounded up once, the input part up too."""
    raw_in = Decimal(prompt_tokens) * price[0] * 1000
    raw_out = Decimal(completion_tokens) * price[1] * 1000
    total = math.ceil(raw_in + raw_out)
    input_msat = min(math.ceil(raw_in), total)
    return input_msat, total - input_msat


class RoutstrNode:
    def __init__(self, name: str, wallet: CashuWallet, prices: dict[str, Price]) -> None:
        self.name = name
        self.wallet = wallet
        self.prices = {m: (Decimal(str(p)), Decimal(str(c))) for m, (p, c) in prices.items()}
        self.listed = prices
        self.keys: dict[str, Key] = {}
        self.deposits: dict[str, str] = {}  # deposit id → api key it credited
        self.url = ""
        self._runner: Optional[web.AppRunner] = None

    # --- http plumbing ---------------------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/v1/info", self.info)
        app.router.add_get("/v1/models", self.models)
        app.router.add_route("GET", "/v1/balance/create", self.create)
        app.router.add_route("POST", "/v1/balance/create", self.create)
        app.router.add_post("/v1/balance/topup", self.topup)
        app.router.add_get("/v1/balance/info", self.balance_info)
        app.router.add_post("/v1/chat/completions", self.chat)
        return app

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
        if self._runner is not None:
            await self._runner.cleanup()
        await self.wallet.stop()

    @staticmethod
    def error(status: int, message: str, type_: str, code: str) -> web.Response:
        # routstr-core answers {"detail": {"error": …}, "error": …}: OpenAI clients read "error".
        detail = {"error": {"message": message, "type": type_, "param": None, "code": code}}
        return web.json_response({"detail": detail, **detail, "request_id": uuid.uuid4().hex}, status=status)

    def _bearer(self, request: web.Request) -> str:
        auth = request.headers.get("Authorization", "")
        return auth[7:].strip() if auth.startswith("Bearer ") else ""

    async def _credit(self, token: str, key: Optional[Key]) -> tuple[Key, int]:
        """Redeem ``token`` at the mint and credit it to ``key`` (a new key named by the token when None)."""
        redeemed = await self.wallet.redeem_token(token)
        made_by_it = "sk-" + hashlib.sha256(redeemed.deposit_id.encode()).hexdigest()
        owner = self.deposits.get(redeemed.deposit_id)
        if owner is not None:
            if key is None and owner == made_by_it:  # the token that made a key, again: that key, nothing more
                return self.keys[owner], 0
            raise WalletError("the token was already redeemed", code="token_spent", status=409)
        if key is None:
            key = self.keys.setdefault(made_by_it, Key(made_by_it))
        key.balance_msat += redeemed.amount_msat
        key.deposits.add(redeemed.deposit_id)
        self.deposits[redeemed.deposit_id] = key.api_key
        return key, redeemed.amount_msat

    async def _key(self, request: web.Request) -> Union[Key, web.Response]:
        bearer = self._bearer(request)
        if bearer.startswith("sk-") and bearer in self.keys:
            return self.keys[bearer]
        if bearer.startswith("cashu"):  # a token as the bearer: its key, made on first use
            try:
                key, _ = await self._credit(bearer, None)
            except WalletError as e:
                return self.error(e.status if e.status != 409 else 401, e.message, "invalid_request_error", e.code)
            return key
        return self.error(401, "Invalid authorization. Use 'Bearer <cashu-token>' or 'Bearer <api-key>'",
                          "invalid_request_error", "invalid_api_key")

    # --- endpoints -------------------------------------------------------------------------------------
    async def info(self, request: web.Request) -> web.Response:
        return web.json_response({"name": self.name, "description": "a Routstr-like test node",
                                  "version": "0.0.0-test", "npub": "", "mints": [self.wallet.mint_url],
                                  "http_url": self.url, "onion_url": ""})

    async def models(self, request: web.Request) -> web.Response:
        data = []
        for model, (prompt, completion) in self.listed.items():
            sats = {"prompt": float(prompt), "completion": float(completion), "request": 0.0, "image": 0.0,
                    "web_search": 0.0, "internal_reasoning": 0.0, "max_prompt_cost": 0.0,
                    "max_completion_cost": 0.0, "max_cost": 0.0}
            data.append({
                "id": model, "name": model, "created": 1_700_000_000, "description": f"{model} on {self.name}",
                "context_length": 8192,
                "architecture": {"modality": "text->text", "input_modalities": ["text"],
                                 "output_modalities": ["text"], "tokenizer": "Other", "instruct_type": None},
                "pricing": {k: 0.0 for k in sats},  # USD: this node quotes sats only
                "sats_pricing": sats, "per_request_limits": None,
                "top_provider": {"context_length": 8192, "max_completion_tokens": 4096, "is_moderated": False},
                "enabled": True,
            })
        return web.json_response({"object": "list", "data": data})

    async def create(self, request: web.Request) -> web.Response:
        token = request.query.get("initial_balance_token", "")
        if not token:
            return self.error(400, "initial_balance_token is required", "invalid_request_error", "missing_token")
        try:
            key, _ = await self._credit(token, None)
        except WalletError as e:
            return self.error(e.status, e.message, "invalid_request_error", e.code)
        return web.json_response({"api_key": key.api_key, "balance": key.balance_msat})

    async def topup(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        if isinstance(key, web.Response):
            return key
        token = request.query.get("cashu_token", "")
        if not token and request.can_read_body:
            try:
                body = await request.json()
                token = str(body.get("cashu_token", "")) if isinstance(body, dict) else ""
            except json.JSONDecodeError:
                token = ""
        if not token:
            return self.error(400, "A cashu_token is required.", "invalid_request_error", "missing_token")
        try:
            _, credited = await self._credit(token, key)
        except WalletError as e:
            return self.error(e.status, e.message, "invalid_request_error", e.code)
        return web.json_response({"msats": credited, "balance": key.balance_msat})

    async def balance_info(self, request: web.Request) -> web.Response:
        key = await self._key(request)
        if isinstance(key, web.Response):
            return key
        return web.json_response({"api_key": key.api_key, "balance": key.balance_msat, "reserved": 0,
                                  "is_child": False, "total_requests": key.total_requests,
                                  "total_spent": key.total_spent_msat})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        key = await self._key(request)
        if isinstance(key, web.Response):
            return key
        try:
            body = await request.json()
            model = str(body["model"])
            messages = list(body["messages"])
        except (json.JSONDecodeError, KeyError, TypeError):
            return self.error(400, "a chat request needs model and messages", "invalid_request_error",
                              "invalid_request")
        price = self.prices.get(model)
        if price is None:
            return self.error(404, f"model {model} is not served here", "invalid_request_error", "model_not_found")
        last = next((str(m.get("content", "")) for m in reversed(messages) if m.get("role") == "user"), "")
        words = f"Hello from {self.name}: {last}".split()
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens > 0:
            words = words[:max_tokens]
        prompt_tokens = sum(count_tokens(str(m.get("content", ""))) + 3 for m in messages)
        completion_tokens = len(words)
        input_msat, output_msat = cost_msat(prompt_tokens, completion_tokens, price)
        total = input_msat + output_msat
        if key.balance_msat < total:
            return self.error(402, f"Insufficient balance: {total} mSats required. {key.balance_msat} available. "
                                   "(reserved: 0)", "insufficient_quota", "insufficient_balance")
        key.balance_msat -= total
        key.total_spent_msat += total
        key.total_requests += 1
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens,
                 "cost": {"base_msats": 0, "input_msats": input_msat, "output_msats": output_msat,
                          "total_msats": total},
                 "cost_sats": total // 1000, "remaining_balance_msats": key.balance_msat}
        headers = {"X-Routstr-Cost-Msats": str(total), "X-Routstr-Input-Cost-Msats": str(input_msat),
                   "X-Routstr-Output-Cost-Msats": str(output_msat)}
        rid, created = f"chatcmpl-{uuid.uuid4().hex[:24]}", int(time.time())
        if body.get("stream"):
            return await self._stream(request, rid, created, model, words, usage, headers,
                                      bool((body.get("stream_options") or {}).get("include_usage")))
        return web.json_response({
            "id": rid, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(words)},
                         "finish_reason": "stop"}],
            "usage": usage,
        }, headers=headers)

    async def _stream(self, request: web.Request, rid: str, created: int, model: str, words: list[str],
                      usage: dict[str, Any], headers: dict[str, str], include_usage: bool) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", **headers})
        await resp.prepare(request)

        def chunk(delta: dict[str, Any], finish: Optional[str] = None) -> bytes:
            return ("data: " + json.dumps({
                "id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}) + "\n\n").encode()

        await resp.write(chunk({"role": "assistant", "content": ""}))
        for i, w in enumerate(words):
            await resp.write(chunk({"content": (" " if i else "") + w}))
        await resp.write(chunk({}, "stop"))
        if include_usage:
            await resp.write(("data: " + json.dumps({"id": rid, "object": "chat.completion.chunk",
                                                     "created": created, "model": model, "choices": [],
                                                     "usage": usage}) + "\n\n").encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


StartNode = Callable[..., Awaitable[RoutstrNode]]


@pytest.fixture
async def routstr_nodes(nutshell_mint: NutshellMint, tmp_path: Path) -> AsyncIterator[StartNode]:
    """``await routstr_nodes(prices=…, name=…)`` starts a node on a random port; all stop at teardown."""
    nodes: list[RoutstrNode] = []

    async def start(prices: Optional[dict[str, Price]] = None, name: str = "") -> RoutstrNode:
        name = name or f"node{len(nodes) + 1}"
        wallet = CashuWallet(CashuConfig(mint_url=nutshell_mint.url, wallet_dir=str(tmp_path / f"routstr-{name}")))
        node = RoutstrNode(name, wallet, prices if prices is not None else DEFAULT_PRICES)
        await node.start()
        nodes.append(node)
        return node

    yield start
    for node in nodes:
        await node.stop()
