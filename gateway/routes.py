"""The one HTTP route table: every path the gateway serves, its handler, who may call it, and what
``/openapi.json`` says about it. Registration (:func:`register`), the auth check and the OpenAPI document are all
driven from ``ROUTES``, so a route cannot be served undocumented or documented unserved.

Auth classes:
- ``admin``: the operator's token (one check, :func:`gateway.vault_meter.require_admin`): none → 401, an agent's
  token → 403 ``admin_only``, anything else → 401.
- ``agent``: in paid mode a valid bearer (an agent's, or the admin's) before the body is read (the auth gate);
  free mode stays open. What the token may see past the gate is the handler's business (its own account only).
- ``public``: nobody is asked for anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable, Generic, Literal, Mapping, Optional, TypeVar, Union

from aiohttp import web
from pydantic import BaseModel

from schemas.openai import (ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                            CompletionResponse, EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList,
                            ResponseObject, ResponsesRequest, ResponseStreamEvent)
from schemas.pricing import ConfirmReply
from schemas.requests import GroupBy, RequestRecord, SavingsBaseline, StatsRow
from schemas.vault import (AccountView, ApprovalResult, Approval, Books, ChainCheck, DepositReply, HistoryItem,
                           PayoutView, Reconciliation, SpendEvent)

from .admin import AgentDepositBody, ClearBody, CreateAgentBody, DenyBody, DepositBody, PolicyPatch, WithdrawBody
from .ops import CostEstimate, HealthDocument, ProvidersDocument

Auth = Literal["admin", "agent", "public"]
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Guard = Callable[[web.Request], Awaitable[None]]
Body = Union[type[BaseModel], tuple[type[BaseModel], ...]]
T = TypeVar("T")


# --- answer shapes that only exist on the HTTP side --------------------------------------------------------
class ListOf(BaseModel, Generic[T]):
    object: Literal["list"] = "list"
    data: list[T]


class CreatedAgent(AccountView):
    token: str  # shown once; only its hash is stored


class Deposited(AccountView):
    deposit_id: str


class RotatedToken(BaseModel):
    agent_id: str
    token: str


class Readiness(BaseModel):
    ready: bool
    services: dict[str, bool]


class ConfirmBody(BaseModel):
    models: Optional[list[str]] = None


class StatsDocument(BaseModel):
    object: Literal["list"] = "list"
    group_by: Optional[GroupBy] = None
    savings_baseline: SavingsBaseline = "cheapest_single_provider"
    data: list[StatsRow]


class RequestsDocument(BaseModel):
    object: Literal["list"] = "list"
    total: int
    limit: int
    offset: int
    data: list[RequestRecord]


@dataclass(frozen=True)
class Route:
    method: str
    path: str                       # as documented; ``pattern`` when aiohttp needs a regex placeholder
    handler: str                    # key into the handler map the app passes to :func:`register`
    auth: Auth
    summary: str
    tag: str
    request: Optional[Body] = None  # JSON body (several: any one of them)
    response: Optional[type[BaseModel]] = None
    status: int = 200
    stream_event: Optional[type[BaseModel]] = None  # also answers text/event-stream frames of this model
    media: Optional[str] = None     # a non-JSON answer (text/html, text/plain, application/schema+json)
    query: tuple[str, ...] = ()     # query parameters, documented as optional strings
    pattern: Optional[str] = None
    unprefixed: bool = False        # an OpenAI path: also served without its ``/v1``

    def served_paths(self) -> tuple[str, ...]:
        path = self.pattern or self.path
        return (path, path.removeprefix("/v1")) if self.unprefixed else (path,)


_ADMIN = "admin"
ROUTES: tuple[Route, ...] = (
    # OpenAI-compatible
    Route("POST", "/v1/chat/completions", "chat", "agent",
          "Chat completion, routed to the cheapest qualified provider", "openai", ChatCompletionRequest,
          ChatCompletionResponse, stream_event=ChatCompletionChunk, unprefixed=True),
    Route("POST", "/v1/completions", "completions", "agent", "Text completion", "openai", CompletionRequest,
          CompletionResponse, stream_event=CompletionResponse, unprefixed=True),
    Route("POST", "/v1/embeddings", "embeddings", "agent", "Embeddings (encoding_format kept as sent)", "openai",
          EmbeddingRequest, EmbeddingResponse, unprefixed=True),
    Route("POST", "/v1/responses", "responses", "agent", "Responses API (typed events when streamed; no [DONE])",
          "openai", ResponsesRequest, ResponseObject, stream_event=ResponseStreamEvent, unprefixed=True),
    Route("GET", "/v1/models", "models", "public", "Models with the cheapest provider's price", "openai", None,
          ModelList, unprefixed=True),
    Route("GET", "/v1/models/{model}", "model", "public", "One model", "openai", None, ModelCard,
          pattern="/v1/models/{model:.+}", unprefixed=True),
    # arbstr operations
    Route("POST", "/v1/cost", "cost", "agent", "Route and cost estimate of a request, no upstream call", "ops",
          (ChatCompletionRequest, CompletionRequest, EmbeddingRequest), CostEstimate, unprefixed=True),
    Route("GET", "/v1/providers", "providers", "public", "Providers, prices and why any cannot be routed to", "ops",
          None, ProvidersDocument, unprefixed=True),
    Route("GET", "/health", "health", "public", "ok / degraded / unhealthy (503)", "ops", None, HealthDocument),
    Route("GET", "/ready", "ready", "public", "Every actor answers (503 otherwise)", "ops", None, Readiness),
    Route("GET", "/metrics", "metrics", "public", "Prometheus metrics", "ops", media="text/plain"),
    Route("GET", "/openapi.json", "openapi", "public", "This document", "ops", media="application/json"),
    Route("GET", "/dashboard", "dashboard", "public", "The operator's page (its data comes from the admin API)",
          "ops", media="text/html"),
    Route("GET", "/v1/schemas/{name}.json", "schema", "public", "JSON Schema of a bus or event message", "ops",
          media="application/schema+json"),
    # reports: the admin sees every agent (or ?agent=), an agent token only its own
    Route("GET", "/v1/stats", "stats", "agent", "Request totals, cost and savings against the named baseline, "
          "optionally grouped and filtered", "reports", None, StatsDocument,
          query=("group_by", "provider", "model", "since", "until", "agent")),
    Route("GET", "/v1/requests", "requests", "agent", "Request records, filtered, sorted and paged", "reports", None,
          RequestsDocument, query=("model", "provider", "success", "streamed", "since", "until", "sort", "order",
                                   "limit", "offset", "agent")),
    # an agent's own account
    Route("GET", "/v1/vault/me", "vault.me", "agent", "The calling agent's account", "vault", None, AccountView),
    Route("GET", "/v1/vault/me/history", "vault.history", "agent", "The calling agent's ledger history", "vault",
          None, ListOf[HistoryItem], query=("since", "limit")),
    Route("GET", "/v1/spend/events", "spend.events", "agent", "Spend events as Server-Sent Events", "vault", None,
          None, stream_event=SpendEvent, query=("agent", "since", "last_event_id")),
    Route("POST", "/v1/vault/me/deposits", "vault.deposit", "agent",
          "Top up: a Lightning invoice to pay, or redeem a Cashu token", "vault", AgentDepositBody, DepositReply, 201),
    Route("POST", "/v1/vault/me/withdrawals", "vault.withdraw", "agent",
          "Pay a BOLT11 (its own amount) or take a Cashu token; 202 while in flight", "vault", WithdrawBody,
          PayoutView),
    Route("GET", "/v1/vault/me/withdrawals", "vault.withdrawals", "agent", "The calling agent's payouts", "vault",
          None, ListOf[PayoutView]),
    Route("GET", "/v1/vault/me/withdrawals/{payout_id}", "vault.withdrawal", "agent",
          "One payout (a token payout shows its token)", "vault", None, PayoutView),
    # operator
    Route("POST", "/v1/admin/agents", "admin.create_agent", _ADMIN, "Create an agent (its token is shown once)",
          "admin", CreateAgentBody, CreatedAgent, 201),
    Route("GET", "/v1/admin/agents", "admin.list_agents", _ADMIN, "List agents", "admin", None, ListOf[AccountView]),
    Route("GET", "/v1/admin/agents/{agent_id}", "admin.get_agent", _ADMIN, "One agent", "admin", None, AccountView),
    Route("PATCH", "/v1/admin/agents/{agent_id}/policy", "admin.policy", _ADMIN, "Change an agent's policy", "admin",
          PolicyPatch, AccountView),
    Route("PUT", "/v1/admin/agents/{agent_id}/policy", "admin.policy", _ADMIN, "Change an agent's policy", "admin",
          PolicyPatch, AccountView),
    Route("POST", "/v1/admin/agents/{agent_id}/deposits", "admin.deposit", _ADMIN,
          "Credit an agent (idempotent on deposit_id)", "admin", DepositBody, Deposited, 201),
    Route("POST", "/v1/admin/agents/{agent_id}/token", "admin.rotate", _ADMIN, "Rotate an agent's token", "admin",
          None, RotatedToken),
    Route("GET", "/v1/admin/approvals", "admin.approvals", _ADMIN, "Holds awaiting approval", "admin", None,
          ListOf[Approval]),
    # By (agent, request id): request ids are the clients' and collide across agents. The old path decides only
    # when exactly one pending approval has that id (else 400 agent_id_required): it never guesses.
    Route("POST", "/v1/admin/approvals/{agent_id}/{request_id}/approve", "admin.approve", _ADMIN,
          "Approve an agent's held request or payout (409 already_decided once decided)", "admin", None,
          ApprovalResult),
    Route("POST", "/v1/admin/approvals/{agent_id}/{request_id}/deny", "admin.deny", _ADMIN,
          "Deny an agent's held request or payout (409 already_decided once decided)", "admin", DenyBody,
          ApprovalResult),
    Route("POST", "/v1/admin/approvals/{request_id}/approve", "admin.approve", _ADMIN,
          "Approve the one pending approval with this id (400 agent_id_required when several agents have one: use "
          "the path with the agent)", "admin", None, ApprovalResult),
    Route("POST", "/v1/admin/approvals/{request_id}/deny", "admin.deny", _ADMIN,
          "Deny the one pending approval with this id (400 agent_id_required when several agents have one)",
          "admin", DenyBody, ApprovalResult),
    Route("GET", "/v1/admin/audit", "admin.audit", _ADMIN, "The ledger as an audit log", "admin", None,
          ListOf[HistoryItem], query=("agent", "since", "limit")),
    Route("GET", "/v1/admin/audit/verify", "admin.verify", _ADMIN, "Check every agent's hash chain", "admin", None,
          ChainCheck),
    Route("GET", "/v1/admin/books", "admin.books", _ADMIN,
          "Books: deposits − withdrawals = balances + pending + spent", "admin", None, Books),
    Route("GET", "/v1/admin/payouts", "admin.payouts", _ADMIN, "Every payout and its state", "admin", None,
          ListOf[PayoutView], query=("agent",)),
    Route("GET", "/v1/admin/reconcile", "admin.reconcile", _ADMIN,
          "Liabilities vs wallet assets; a shortfall closes the vault", "admin", None, Reconciliation),
    Route("POST", "/v1/admin/reconcile/clear", "admin.reconcile_clear", _ADMIN,
          "Reopen a vault closed by a shortfall", "admin", ClearBody, Reconciliation),
    Route("POST", "/v1/admin/prices/{provider}/confirm", "admin.confirm_prices", _ADMIN,
          "Put the prices the guard holds in force", "admin", ConfirmBody, ConfirmReply),
)


@dataclass(frozen=True)
class Guards:
    """The one admin check and the one agent check (None: free mode, the agent routes are open)."""

    admin: Guard
    agent: Optional[Guard]


def guarded(route: Route, handler: Handler, guards: Guards) -> Handler:
    check = guards.admin if route.auth == "admin" else guards.agent if route.auth == "agent" else None
    if check is None:
        return handler

    async def answer(request: web.Request) -> web.StreamResponse:
        await check(request)  # before the body is read: a caller without the right token learns nothing
        return await handler(request)
    return answer


def register(app: web.Application, handlers: Mapping[str, Handler], guards: Guards) -> None:
    """Serve every route whose handler this gateway has (a free-mode gateway has no vault handlers)."""
    for route in ROUTES:
        handler = handlers.get(route.handler)
        if handler is None:
            continue
        for path in route.served_paths():
            if route.method == "GET":
                app.router.add_get(path, guarded(route, handler, guards))
            else:
                app.router.add_route(route.method, path, guarded(route, handler, guards))


def served_routes(app: web.Application) -> tuple[Route, ...]:
    """The table's routes this app serves (matched on method and documented path)."""
    # ``canonical`` drops a placeholder's regex: "/v1/models/{model:.+}" reads "/v1/models/{model}"
    routed = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return tuple(route for route in ROUTES if (route.method, route.path) in routed)
