"""A real HTTP market for tests: a quote feed in the seed's format (``/api/quotes``, ``/api/nodes``,
``/health``), ``/models`` listings of providers, and a minimal chat endpoint so a listed provider can also be
called (a Routstr-like node), all driven by the test over plain attributes.

    market = MarketServer(); url = await market.start(); ...; await market.stop()
    market.quotes = [quote("acme", "http://…/v1", "gpt-4o", 100, 200)]
    market.listings["p1"] = listing({"gpt-4o": (0.0001, 0.0002)})   # served at {url}/p1/v1/models
    market.listing_status["p1"] = 500                                   # the next reads fail
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator, Callable, Optional

import pytest
from aiohttp import web

from tests.support.waiting import eventually


def quote(provider: str, endpoint: str, model: str, price_in: float, price_out: float, *,
          observed_at: Any = None, source: str = "routstr", provider_id: Optional[str] = None) -> dict[str, Any]:
    """One quote row as the seed's feed writes it (prices in sats per 1M tokens; observed now by default)."""
    return {"source": source, "provider": provider, "provider_id": provider_id or provider, "model": model,
            "price_in_sats": price_in, "price_out_sats": price_out, "endpoint": endpoint,
            "observed_at": observed_at if observed_at is not None else time.time()}


def listing(models: dict[str, Optional[tuple[Any, Any]]], *, usd: bool = False,
            context: Optional[int] = None) -> dict[str, Any]:
    """An OpenAI model list; a model with prices gets Routstr-style ``sats_pricing`` (sats per token), or
    ``pricing`` in USD per token with ``usd=True``."""
    data = []
    for mid, prices in models.items():
        item: dict[str, Any] = {"id": mid, "object": "model", "created": 0, "owned_by": "test"}
        if prices is not None:
            item["pricing" if usd else "sats_pricing"] = {"prompt": prices[0], "completion": prices[1]}
        if context is not None:
            item["context_length"] = context
        data.append(item)
    return {"object": "list", "data": data}


class MarketServer:
    def __init__(self) -> None:
        self.quotes: list[dict[str, Any]] = []
        self.nodes: list[dict[str, Any]] = []
        self.feed_status = 200
        self.listings: dict[str, dict[str, Any]] = {}
        self.listing_status: dict[str, int] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []  # (path with query, selected headers)
        self._runner: Optional[web.AppRunner] = None
        self.url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/api/quotes", self._quotes)
        app.router.add_get("/api/nodes", self._nodes)
        app.router.add_get("/{name}/v1/models", self._models)
        app.router.add_post("/{name}/v1/chat/completions", self._chat)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _seen(self, request: web.Request) -> None:
        self.requests.append((request.path_qs, {k: v for k, v in request.headers.items()
                                                if k.lower() == "authorization"}))

    async def _health(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _quotes(self, request: web.Request) -> web.Response:
        self._seen(request)
        if self.feed_status != 200:
            return web.json_response({"error": "feed down"}, status=self.feed_status)
        limit = int(request.query.get("limit", "2000"))
        source = request.query.get("source")
        rows = [q for q in self.quotes if source is None or q.get("source") == source]
        return web.json_response(rows[:limit])

    async def _nodes(self, request: web.Request) -> web.Response:
        self._seen(request)
        if self.feed_status != 200:
            return web.json_response({"error": "feed down"}, status=self.feed_status)
        return web.json_response(self.nodes)

    async def _models(self, request: web.Request) -> web.Response:
        self._seen(request)
        name = request.match_info["name"]
        status = self.listing_status.get(name, 200)
        if status != 200 or name not in self.listings:
            return web.json_response({"error": {"message": "down"}}, status=status if status != 200 else 404)
        return web.json_response(self.listings[name])

    async def _chat(self, request: web.Request) -> web.Response:
        """A Routstr-like node's answer: paid by the bearer key the test handed the vault's bucket."""
        self._seen(request)
        body = await request.json()
        return web.json_response({
            "id": "chatcmpl-market", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6}})


@pytest.fixture
async def market() -> AsyncIterator[MarketServer]:
    server = MarketServer()
    await server.start()
    yield server
    await server.stop()


async def within(seconds: float, check: Callable[[], bool]) -> float:
    """Seconds until ``check()`` held; fails the test after ``seconds``."""
    return await eventually(check, seconds, interval_s=0.01)
