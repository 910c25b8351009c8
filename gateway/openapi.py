"""``GET /openapi.json``: an OpenAPI 3.1 document of what this gateway serves, generated from the pydantic
models the handlers validate and answer with (nothing here restates a field by hand).

Only operations the running app actually routes are listed, so a free-mode gateway does not advertise the
vault API. Every OpenAI path is also served without its ``/v1`` prefix; the document lists the ``/v1`` form.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Generic, Literal, Optional, TypeVar, Union

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.errors import ErrorBody
from schemas.openai import (ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse, CompletionRequest,
                            CompletionResponse, EmbeddingRequest, EmbeddingResponse, ModelCard, ModelList,
                            ResponseObject, ResponsesRequest, ResponseStreamEvent)
from schemas.pricing import ConfirmReply
from schemas.vault import (AccountView, ApprovalResult, Approval, Books, ChainCheck, DepositReply, HistoryItem,
                           PayoutView, Reconciliation, SpendEvent)

from .admin import AgentDepositBody, ClearBody, CreateAgentBody, DenyBody, DepositBody, PolicyPatch, WithdrawBody
from .ops import CostEstimate, HealthDocument, ProvidersDocument

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

T = TypeVar("T")


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


Mode = Literal["validation", "serialization"]
Body = Union[type[BaseModel], tuple[type[BaseModel], ...]]


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    summary: str
    tag: str
    request: Optional[Body] = None          # JSON body (several: any one of them)
    response: Optional[type[BaseModel]] = None
    status: int = 200
    stream_event: Optional[type[BaseModel]] = None  # also answers text/event-stream frames of this model
    auth: Literal["agent", "admin", "none"] = "agent"


class ConfirmBody(BaseModel):
    models: Optional[list[str]] = None


OPERATIONS: tuple[Operation, ...] = (
    # OpenAI-compatible
    Operation("POST", "/v1/chat/completions", "Chat completion, routed to the cheapest qualified provider",
              "openai", ChatCompletionRequest, ChatCompletionResponse, stream_event=ChatCompletionChunk),
    Operation("POST", "/v1/completions", "Text completion", "openai", CompletionRequest, CompletionResponse,
              stream_event=CompletionResponse),
    Operation("POST", "/v1/embeddings", "Embeddings (encoding_format kept as sent)", "openai", EmbeddingRequest,
              EmbeddingResponse),
    Operation("POST", "/v1/responses", "Responses API (typed events when streamed; no [DONE])", "openai",
              ResponsesRequest, ResponseObject, stream_event=ResponseStreamEvent),
    Operation("GET", "/v1/models", "Models with the cheapest provider's price", "openai", None, ModelList),
    Operation("GET", "/v1/models/{model}", "One model", "openai", None, ModelCard),
    # arbstr operations
    Operation("POST", "/v1/cost", "Route and cost estimate of a request, no upstream call", "ops",
              (ChatCompletionRequest, CompletionRequest, EmbeddingRequest), CostEstimate),
    Operation("GET", "/v1/providers", "Providers, prices and why any cannot be routed to", "ops", None,
              ProvidersDocument, auth="none"),
    Operation("GET", "/health", "ok / degraded / unhealthy (503)", "ops", None, HealthDocument, auth="none"),
    Operation("GET", "/ready", "Every actor answers (503 otherwise)", "ops", None, Readiness, auth="none"),
    Operation("GET", "/openapi.json", "This document", "ops", None, None, auth="none"),
    # an agent's own account
    Operation("GET", "/v1/vault/me", "The calling agent's account", "vault", None, AccountView),
    Operation("GET", "/v1/vault/me/history", "The calling agent's ledger history", "vault", None,
              ListOf[HistoryItem]),
    Operation("GET", "/v1/spend/events", "Spend events as Server-Sent Events", "vault", None, None,
              stream_event=SpendEvent),
    Operation("POST", "/v1/vault/me/deposits", "Top up: a Lightning invoice to pay, or redeem a Cashu token",
              "vault", AgentDepositBody, DepositReply, 201),
    Operation("POST", "/v1/vault/me/withdrawals", "Pay a BOLT11 (its own amount) or take a Cashu token; 202 while "
              "in flight", "vault", WithdrawBody, PayoutView),
    Operation("GET", "/v1/vault/me/withdrawals", "The calling agent's payouts", "vault", None, ListOf[PayoutView]),
    Operation("GET", "/v1/vault/me/withdrawals/{payout_id}", "One payout (a token payout shows its token)", "vault",
              None, PayoutView),
    # operator
    Operation("POST", "/v1/admin/agents", "Create an agent (its token is shown once)", "admin", CreateAgentBody,
              CreatedAgent, 201, auth="admin"),
    Operation("GET", "/v1/admin/agents", "List agents", "admin", None, ListOf[AccountView], auth="admin"),
    Operation("GET", "/v1/admin/agents/{agent_id}", "One agent", "admin", None, AccountView, auth="admin"),
    Operation("PATCH", "/v1/admin/agents/{agent_id}/policy", "Change an agent's policy", "admin", PolicyPatch,
              AccountView, auth="admin"),
    Operation("PUT", "/v1/admin/agents/{agent_id}/policy", "Change an agent's policy", "admin", PolicyPatch,
              AccountView, auth="admin"),
    Operation("POST", "/v1/admin/agents/{agent_id}/deposits", "Credit an agent (idempotent on deposit_id)",
              "admin", DepositBody, Deposited, 201, auth="admin"),
    Operation("POST", "/v1/admin/agents/{agent_id}/token", "Rotate an agent's token", "admin", None,
              RotatedToken, auth="admin"),
    Operation("GET", "/v1/admin/approvals", "Holds awaiting approval", "admin", None, ListOf[Approval],
              auth="admin"),
    Operation("POST", "/v1/admin/approvals/{agent_id}/{request_id}/approve", "Approve an agent's held request or "
              "payout (409 already_decided once decided)", "admin", None, ApprovalResult, auth="admin"),
    Operation("POST", "/v1/admin/approvals/{agent_id}/{request_id}/deny", "Deny an agent's held request or payout "
              "(409 already_decided once decided)", "admin", DenyBody, ApprovalResult, auth="admin"),
    Operation("POST", "/v1/admin/approvals/{request_id}/approve", "Approve the one pending approval with this id "
              "(400 agent_id_required when several agents have one: use the path with the agent)", "admin", None,
              ApprovalResult, auth="admin"),
    Operation("POST", "/v1/admin/approvals/{request_id}/deny", "Deny the one pending approval with this id "
              "(400 agent_id_required when several agents have one)", "admin", DenyBody, ApprovalResult,
              auth="admin"),
    Operation("GET", "/v1/admin/audit", "The ledger as an audit log", "admin", None, ListOf[HistoryItem],
              auth="admin"),
    Operation("GET", "/v1/admin/audit/verify", "Check every agent's hash chain", "admin", None, ChainCheck,
              auth="admin"),
    Operation("GET", "/v1/admin/books", "Books: deposits − withdrawals = balances + pending + spent", "admin",
              None, Books, auth="admin"),
    Operation("GET", "/v1/admin/payouts", "Every payout and its state", "admin", None, ListOf[PayoutView],
              auth="admin"),
    Operation("GET", "/v1/admin/reconcile", "Liabilities vs wallet assets; a shortfall closes the vault", "admin",
              None, Reconciliation, auth="admin"),
    Operation("POST", "/v1/admin/reconcile/clear", "Reopen a vault closed by a shortfall", "admin", ClearBody,
              Reconciliation, auth="admin"),
    Operation("POST", "/v1/admin/prices/{provider}/confirm", "Put the prices the guard holds in force", "admin",
              ConfirmBody, ConfirmReply, auth="admin"),
)

# The statuses a client can meet on any operation, and what each means here.
ERROR_STATUSES: dict[int, str] = {
    400: "invalid request (param names the field; context_length_exceeded, json_too_deep, invalid_header, ...)",
    401: "missing or unknown bearer token (paid mode: checked before the body)",
    402: "insufficient balance (x-should-retry: false)", 403: "denied by policy (x-should-retry: false)",
    404: "unknown model or path", 408: "no complete request head within [server] header_timeout_s",
    413: "body too large", 429: "rate or daily limit (retry-after when it passes)",
    431: "a header line over 8,190 bytes, or too many headers", 502: "upstream failure",
    503: "no provider available, upstream connections all busy (upstream_busy, retry-after), or an actor "
         "unreachable", 504: "timeout",
}


def _models(ops: tuple[Operation, ...]) -> list[tuple[type[BaseModel], Mode]]:
    seen: dict[tuple[type[BaseModel], Mode], None] = {(ErrorBody, "serialization"): None}
    for op in ops:
        bodies = op.request if isinstance(op.request, tuple) else ((op.request,) if op.request else ())
        for m in bodies:
            seen[(m, "validation")] = None
        for m in (op.response, op.stream_event):
            if m is not None:
                seen[(m, "serialization")] = None
    return list(seen)


def _path_parameters(path: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM_RE.findall(path)]


def build_document(ops: tuple[Operation, ...] = OPERATIONS, version: str = "0") -> dict[str, Any]:
    """The OpenAPI document of ``ops``; every schema comes from pydantic's JSON Schema of the models."""
    keys, defs = models_json_schema(_models(ops), ref_template=_REF)

    def ref(model: type[BaseModel], mode: Mode) -> dict[str, Any]:
        return keys[(model, mode)]

    error = {"description": "OpenAI-shaped error", "content": {"application/json": {"schema": ref(ErrorBody,
                                                                                             "serialization")}}}
    paths: dict[str, dict[str, Any]] = {}
    for op in ops:
        entry: dict[str, Any] = {"summary": op.summary, "tags": [op.tag],
                                 "operationId": f"{op.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', op.path).strip('_')}"}
        params = _path_parameters(op.path)
        if params:
            entry["parameters"] = params
        if op.request is not None:
            bodies = op.request if isinstance(op.request, tuple) else (op.request,)
            schema = ref(bodies[0], "validation") if len(bodies) == 1 else \
                {"anyOf": [ref(b, "validation") for b in bodies]}
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        content: dict[str, Any] = {}
        if op.response is not None:
            content["application/json"] = {"schema": ref(op.response, "serialization")}
        if op.stream_event is not None:
            content["text/event-stream"] = {"schema": {"type": "string", "description": "SSE frames"},
                                            "itemSchema": ref(op.stream_event, "serialization")}
        ok: dict[str, Any] = {"description": "success"}
        if content:
            ok["content"] = content
        entry["responses"] = {str(op.status): ok, **{str(s): {**error, "description": d}
                                                      for s, d in ERROR_STATUSES.items()}}
        if op.auth != "none":
            entry["security"] = [{"bearer": []}]
            entry["description"] = ("Bearer: the admin token." if op.auth == "admin"
                                    else "Bearer: an agent token (paid mode); anything in free mode.")
        paths.setdefault(op.path, {})[op.method.lower()] = entry
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "arbstr gateway", "version": version,
                 "description": "OpenAI-compatible LLM router with per-agent budgets in millisats. "
                                "OpenAI paths are also served without the /v1 prefix."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def routed_operations(app: web.Application) -> tuple[Operation, ...]:
    """The operations the app serves (matched on method and path)."""
    # ``canonical`` drops a placeholder's regex: "/v1/models/{model:.+}" reads "/v1/models/{model}"
    routed = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    return tuple(op for op in OPERATIONS if (op.method, op.path) in routed or op.path == "/openapi.json")


def add_openapi_route(app: web.Application, gw: Any) -> None:
    """Serve ``GET /openapi.json``; the document is built once, on first request (all routes exist by then)."""
    cache: list[bytes] = []

    async def openapi(request: web.Request) -> web.Response:
        if not cache:
            cache.append(orjson.dumps(build_document(routed_operations(request.app))))
        return web.Response(body=cache[0], content_type="application/json")

    if not any(r.method == "GET" and r.resource is not None and r.resource.canonical == "/openapi.json"
               for r in app.router.routes()):
        app.router.add_get("/openapi.json", openapi)
