"""The aiohttp application: routes, the error envelope every response goes through, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Optional

from aiohttp import web
from nats.aio.client import Client as NATS

from actors.runtime.connection import connect, flush_in_order
from actors.runtime.tasks import until_stopped
from schemas import exchanges, subjects
from schemas.bus_permissions import GATEWAY as GATEWAY_IDENTITY
from schemas.config import Config
from schemas.errors import ArbstrError
from schemas.openai import ModelCard, ModelList, ModelPricing
from schemas.pricing import ProviderPrices, TableRequest
from schemas.router import RouteReply

from .bus import Bus
from .endpoints import CHAT, COMPLETIONS, EMBEDDINGS, EndpointSpec
from schemas.trace import REQUEST_ID as REQUEST_ID_VAR, TRACEPARENT as TRACEPARENT_VAR
from schemas.trace import new_traceparent, valid_traceparent

from .headers import header
from .http import REQUEST_ID, STARTED, TRACE, bearer_token, error_response, json_response, new_request_id
from .meter import FreeMeter, Meter
from .metrics import Metrics
from .providers import ProviderDirectory
from .proxy import Proxy
from .upstream import Upstream
from .admin import VaultHTTP
from .events import SpendEventsHTTP
from .dashboard import dashboard
from .openapi import openapi_handler
from .ops import ops_handlers
from .responses_relay import responses_handler
from .routes import Guards, Handler, register
from .server import gateway_runner
from actors.runtime.tokens import admin_token_hash

from .grant_meter import GrantMeter
from .vault_meter import VaultMeter, require_admin
from .auth_gate import AuthGate

log = logging.getLogger("arbstr.gateway")

GATEWAY_KEY = web.AppKey("gateway", "Gateway")
access_log = logging.getLogger("arbstr.access")


@web.middleware
async def envelope(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                   ) -> web.StreamResponse:
    """Request id on everything; every failure becomes an OpenAI error object, never a bare 500."""
    request[STARTED] = time.perf_counter()
    rid, trace, refused = _client_ids(request)
    request[REQUEST_ID] = rid
    request[TRACE] = trace
    REQUEST_ID_VAR.set(rid)
    TRACEPARENT_VAR.set(trace)
    resp = error_response(refused, rid) if refused is not None else await _answer(request, handler, rid)
    if not resp.prepared:
        resp.headers["traceparent"] = trace
    elapsed = time.perf_counter() - request[STARTED]
    gw = request.app.get(GATEWAY_KEY)
    if gw is not None:
        resource = request.match_info.route.resource
        gw.metrics.answered(resource.canonical if resource else "unmatched", resp.status, elapsed)
    if gw is not None and gw.config.server.access_log and access_log.isEnabledFor(logging.INFO):
        access_log.info("%s %s %d %.1fms", request.method, request.path, resp.status, elapsed * 1000)
    return resp


def _client_ids(request: web.Request) -> tuple[str, str, Optional[ArbstrError]]:
    """The request id (the client's ``X-Request-Id`` when sane) and trace (the client's ``traceparent`` continues
    through every NATS message and the upstream call; none: one starts here), and the 400 a header holding bytes
    no such value can hold earns."""
    try:
        rid = new_request_id(header(request, "X-Request-Id"))
        return rid, valid_traceparent(header(request, "traceparent")) or new_traceparent(), None
    except ArbstrError as e:
        return new_request_id(None), new_traceparent(), e


async def _answer(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]],
                  rid: str) -> web.StreamResponse:
    try:
        resp = await handler(request)
    except ArbstrError as e:
        return error_response(e, rid)
    except web.HTTPException as e:
        if e.status == 413:
            return error_response(ArbstrError(413, "request body too large", code="request_too_large"), rid)
        if e.status == 404:
            return error_response(ArbstrError(404, f"unknown path {request.path}", code="unknown_url"), rid)
        if e.status == 405:
            return error_response(ArbstrError(405, f"method {request.method} not allowed on {request.path}",
                                              code="method_not_allowed"), rid)
        if e.status < 400:
            raise
        return error_response(ArbstrError(e.status, e.reason or "request failed"), rid)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("request %s failed", rid)
        return error_response(ArbstrError(500, "internal error; the request was not billed",
                                          code="internal_error"), rid)
    if not resp.prepared:
        resp.headers.setdefault("x-request-id", rid)
    return resp


class Gateway:
    def __init__(self, config: Config, nc: NATS, meter: Optional[Meter] = None) -> None:
        self.config = config
        self.nc = nc
        self.bus = Bus(nc, config.nats.request_timeout_s)
        self.upstream = Upstream(config.server.upstream_connections, config.server.upstream_pool_wait_s)
        if meter is None:
            meter = FreeMeter()
            if config.vault is not None:
                slow = VaultMeter(nc, self.bus)
                meter = GrantMeter(nc, slow, config.vault.grants) if config.vault.grants.enabled else slow
        self.meter: Meter = meter
        self.metrics = Metrics()
        self.directory = ProviderDirectory(config)  # who to call for a provider, market ones included
        if isinstance(self.meter, GrantMeter):
            self.meter.needs_vault_hold = self._pays_per_request
        # Paid mode: a bearer is checked before any body is read or routed (free mode stays open).
        self.admin_hash = admin_token_hash(config)
        self.auth: Optional[AuthGate] = AuthGate(self.bus, self.admin_hash) if config.vault else None
        self.proxy = Proxy(config, nc, self.bus, self.upstream, self.meter, self.directory, self.metrics)

    def _pays_per_request(self, route: RouteReply) -> bool:
        """Whether a candidate is paid per request (X-Cashu): that is paid against a hold the vault keeps."""
        for cand in route.candidates:
            provider = self.directory.get(cand.provider)
            if provider is not None and provider.x_cashu:
                return True
        return False

    def app(self) -> web.Application:
        app = web.Application(middlewares=[envelope], client_max_size=self.config.server.max_body_bytes)
        app[GATEWAY_KEY] = self
        app.on_startup.append(self._startup)
        app.on_cleanup.append(self._cleanup)
        handlers: dict[str, Handler] = {
            "chat": self._proxied(CHAT), "completions": self._proxied(COMPLETIONS),
            "embeddings": self._proxied(EMBEDDINGS), "responses": responses_handler(self),
            "models": self.models, "model": self.model, "metrics": self.metrics.handler, "ready": self.ready,
            "openapi": openapi_handler(), **ops_handlers(self),
        }
        if self.config.vault is not None:
            vault_http = VaultHTTP(self.config, self.bus, self.meter)
            events = SpendEventsHTTP(self.nc, self.bus, vault_http.admin_hash,
                                     self.config.server.client_write_timeout_s)
            handlers.update(vault_http.handlers(), **events.attach(app), dashboard=dashboard)
        register(app, handlers, self.guards())
        app.on_startup.append(self._listening)
        return app

    def guards(self) -> Guards:
        """The one admin check and, in paid mode, the one agent check the route table applies."""
        async def admin(request: web.Request) -> None:
            await require_admin(bearer_token(request), self.admin_hash, self.bus, request[REQUEST_ID])
        return Guards(admin=admin, agent=self.auth.check if self.auth else None)

    def runner(self, app: web.Application) -> web.AppRunner:
        """How to serve ``app``: with JSON answers to malformed requests and the head and keep-alive deadlines."""
        return gateway_runner(app, self.config.server)

    async def _startup(self, app: web.Application) -> None:
        await self.upstream.start()
        if isinstance(self.meter, GrantMeter):
            await self.meter.start()
        self.metrics.start(self.nc)
        await self.directory.start(self.nc)

    async def _listening(self, app: web.Application) -> None:
        # The last start-up hook: every revocation subscription made before it (grants, tokens) is at the server
        # before the first request is taken.
        await flush_in_order(self.nc)

    async def _cleanup(self, app: web.Application) -> None:
        await self.meter.close()  # before the connection drains: releases still in flight reach the journal
        await self.proxy.routstr.close()  # X-Cashu change still being handed back to the vault
        await self.directory.stop()
        await self.metrics.stop()
        await self.upstream.close()

    def _proxied(self, spec: EndpointSpec) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handler(request: web.Request) -> web.StreamResponse:
            return await self.proxy.handle(request, spec)
        return handler

    # --- models ----------------------------------------------------------------------------------------
    async def _prices(self, request: web.Request) -> list[ProviderPrices]:
        table = await self.bus.ask(exchanges.PRICE_TABLE, TableRequest(), request_id=request[REQUEST_ID], retries=1)
        return table.providers

    @staticmethod
    def _cards(prices: list[ProviderPrices]) -> dict[str, ModelCard]:
        cards: dict[str, ModelCard] = {}
        for p in sorted(prices, key=lambda p: p.provider):
            if not p.routable:  # listed by /providers with its reasons; no client can be served by it
                continue
            for model in p.models:
                r = p.rates_for(model)
                pricing = ModelPricing(provider=p.provider, input_msat_per_1m=r.input_rate * 1000,
                                       output_msat_per_1m=r.output_rate * 1000, base_fee_msat=p.base_fee_msat,
                                       tier=p.tier)
                card = cards.get(model)
                if card is None:
                    cards[model] = ModelCard(id=model, pricing=pricing, providers=[p.provider])
                    continue
                card.providers.append(p.provider)
                best = card.pricing
                assert best is not None
                if (pricing.input_msat_per_1m + pricing.output_msat_per_1m, pricing.base_fee_msat) < \
                        (best.input_msat_per_1m + best.output_msat_per_1m, best.base_fee_msat):
                    card.pricing = pricing
        return cards

    def _virtual_cards(self) -> list[ModelCard]:
        """``auto`` and each policy's virtual model: the router picks model and provider for them."""
        names = ["auto"] + [p.virtual_model for p in self.config.policies if p.virtual_model]
        return [ModelCard(id=name, owned_by="arbstr") for name in names]

    async def models(self, request: web.Request) -> web.Response:
        cards = self._cards(await self._prices(request))
        body = ModelList(data=[cards[k] for k in sorted(cards)] + self._virtual_cards())
        return web.Response(body=body.model_dump_json().encode(), content_type="application/json")

    async def model(self, request: web.Request) -> web.Response:
        model_id = request.match_info["model"]
        card = self._cards(await self._prices(request)).get(model_id) or \
            next((c for c in self._virtual_cards() if c.id == model_id), None)
        if card is None:
            raise ArbstrError(404, f"the model '{model_id}' does not exist", param="model", code="model_not_found")
        return web.Response(body=card.model_dump_json().encode(), content_type="application/json")

    # --- health ----------------------------------------------------------------------------------------
    async def _ping(self, service: str) -> bool:
        try:
            await self.nc.request(f"$SRV.PING.{service}", b"", timeout=0.5)
            return True
        except Exception:
            return False

    async def ready(self, request: web.Request) -> web.Response:
        services = [subjects.SERVICE_ROUTER, subjects.SERVICE_PRICING, subjects.SERVICE_BREAKER]
        if self.config.vault is not None:
            services.append(subjects.SERVICE_VAULT)
        results = await asyncio.gather(*(self._ping(s) for s in services))
        status = {s: ok for s, ok in zip(services, results)}
        ok = all(results) and self.nc.is_connected
        return json_response({"ready": ok, "services": status}, status=200 if ok else 503)


async def serve(config: Config, nats_url: Optional[str] = None, host: Optional[str] = None,
                port: Optional[int] = None, ready: Optional[Callable[[str], Any]] = None,
                creds: Optional[str] = None) -> None:
    """Entry point of ``arbstr run gateway``: serve until SIGTERM/SIGINT."""
    nc = await connect(nats_url or config.nats.url, "arbstr-gateway", identity=GATEWAY_IDENTITY, creds=creds)
    gw = Gateway(config, nc)
    runner = gw.runner(gw.app())
    await runner.setup()
    site = web.TCPSite(runner, host or config.server.host, config.server.port if port is None else port,
                       backlog=1024, reuse_address=True)
    await site.start()
    url = f"http://{host or config.server.host}:{site._server.sockets[0].getsockname()[1]}"  # type: ignore
    log.info("gateway listening on %s", url)
    if ready:
        ready(url)
    await until_stopped()
    await runner.cleanup()
    await nc.drain()
