"""``GET /openapi.json``: an OpenAPI 3.1 document of what this gateway serves, generated from the route table
(:mod:`gateway.routes`) and the pydantic models the handlers validate and answer with (nothing here restates a
field by hand).

Only routes the running app actually serves are listed, so a free-mode gateway does not advertise the vault API.
Every OpenAI path is also served without its ``/v1`` prefix; the document lists the ``/v1`` form.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import orjson
from aiohttp import web
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from schemas.errors import ErrorBody

from .routes import ROUTES, Route, served_routes

OPENAPI_VERSION = "3.1.0"
_REF = "#/components/schemas/{model}"
_PARAM_RE = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")

Mode = Literal["validation", "serialization"]

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
_AUTH_TEXT = {"admin": "Bearer: the admin token (none: 401; an agent's token: 403 admin_only).",
              "agent": "Bearer: an agent token, or the admin token (paid mode); anything in free mode."}


def _models(routes: tuple[Route, ...]) -> list[tuple[type[BaseModel], Mode]]:
    seen: dict[tuple[type[BaseModel], Mode], None] = {(ErrorBody, "serialization"): None}
    for route in routes:
        bodies = route.request if isinstance(route.request, tuple) else ((route.request,) if route.request else ())
        for m in bodies:
            seen[(m, "validation")] = None
        for m in (route.response, route.stream_event):
            if m is not None:
                seen[(m, "serialization")] = None
    return list(seen)


def _parameters(route: Route) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PARAM_RE.findall(route.path)] + \
           [{"name": name, "in": "query", "required": False, "schema": {"type": "string"}} for name in route.query]


def build_document(routes: tuple[Route, ...] = ROUTES, version: str = "0") -> dict[str, Any]:
    """The OpenAPI document of ``routes``; every schema comes from pydantic's JSON Schema of the models."""
    keys, defs = models_json_schema(_models(routes), ref_template=_REF)

    def ref(model: type[BaseModel], mode: Mode) -> dict[str, Any]:
        return keys[(model, mode)]

    error = {"description": "OpenAI-shaped error", "content": {"application/json": {"schema": ref(ErrorBody,
                                                                                             "serialization")}}}
    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        entry: dict[str, Any] = {"summary": route.summary, "tags": [route.tag],
                                 "operationId": f"{route.method.lower()}_"
                                                f"{re.sub(r'[^A-Za-z0-9]+', '_', route.path).strip('_')}"}
        params = _parameters(route)
        if params:
            entry["parameters"] = params
        if route.request is not None:
            bodies = route.request if isinstance(route.request, tuple) else (route.request,)
            schema = ref(bodies[0], "validation") if len(bodies) == 1 else \
                {"anyOf": [ref(b, "validation") for b in bodies]}
            entry["requestBody"] = {"required": True, "content": {"application/json": {"schema": schema}}}
        content: dict[str, Any] = {}
        if route.response is not None:
            content["application/json"] = {"schema": ref(route.response, "serialization")}
        if route.media is not None:
            content[route.media] = {"schema": {"type": "string" if route.media.startswith("text/") else "object"}}
        if route.stream_event is not None:
            content["text/event-stream"] = {"schema": {"type": "string", "description": "SSE frames"},
                                            "itemSchema": ref(route.stream_event, "serialization")}
        ok: dict[str, Any] = {"description": "success"}
        if content:
            ok["content"] = content
        entry["responses"] = {str(route.status): ok, **{str(s): {**error, "description": d}
                                                         for s, d in ERROR_STATUSES.items()}}
        entry["x-arbstr-auth"] = route.auth
        if route.auth != "public":
            entry["security"] = [{"bearer": []}]
            entry["description"] = _AUTH_TEXT[route.auth]
        paths.setdefault(route.path, {})[route.method.lower()] = entry
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": "arbstr gateway", "version": version,
                 "description": "OpenAI-compatible LLM router with per-agent budgets in millisats. "
                                "OpenAI paths are also served without the /v1 prefix."},
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {}),
                       "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }


def openapi_handler() -> Any:
    """``GET /openapi.json``; the document is built once, on first request (all routes exist by then)."""
    cache: list[bytes] = []

    async def openapi(request: web.Request) -> web.Response:
        if not cache:
            cache.append(orjson.dumps(build_document(served_routes(request.app))))
        return web.Response(body=cache[0], content_type="application/json")
    return openapi


def add_openapi_route(app: web.Application, gw: Any) -> None:
    """Serve ``GET /openapi.json`` where the app does not yet (test stacks that assemble their own routes)."""
    if not any(r.method == "GET" and r.resource is not None and r.resource.canonical == "/openapi.json"
               for r in app.router.routes()):
        app.router.add_get("/openapi.json", openapi_handler())
