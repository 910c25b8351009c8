"""The route table (gateway/routes.py) is the one source of what the gateway serves, who may call it, and what
``/openapi.json`` documents: the served routes and the documented paths agree both ways, and each route's auth
class is enforced as the table says."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from gateway.routes import ROUTES
from tests.support.stack import Stack
from tests.support.vault_helpers import new_agent

# Test-only values a route's placeholder is filled with (the answer's status is all that matters here).
_FILL = re.compile(r"\{[^}]+\}")


def served(stack: Stack) -> set[tuple[str, str]]:
    """(method, canonical path) of every route the app serves, HEAD (aiohttp's twin of GET) left out."""
    app = stack.runner.app
    return {(r.method, r.resource.canonical) for r in app.router.routes()
            if r.resource is not None and r.method != "HEAD"}


def documented(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, ops in doc["paths"].items() for method in ops}


async def test_served_routes_and_openapi_paths_agree(paid_stack: Stack, http: aiohttp.ClientSession) -> None:
    doc = await (await http.get(f"{paid_stack.url}/openapi.json")).json()
    docs = documented(doc)
    aliases = {(r.method, r.path.removeprefix("/v1")) for r in ROUTES if r.unprefixed}
    serving = served(paid_stack)
    assert serving - aliases == docs, (sorted(serving - aliases - docs), sorted(docs - serving))
    assert aliases <= serving  # the OpenAI paths without /v1 too
    for path in ("/v1/stats", "/v1/requests", "/metrics", "/dashboard"):
        assert path in doc["paths"], path
    stats_params = {p["name"] for p in doc["paths"]["/v1/stats"]["get"]["parameters"]}
    assert {"provider", "model", "group_by"} <= stats_params


async def test_each_route_enforces_its_auth_class(paid_stack: Stack, http: aiohttp.ClientSession) -> None:
    _, agent_token = await new_agent(http, paid_stack, "routes-auth")
    as_agent = {"Authorization": f"Bearer {agent_token}"}
    doc = await (await http.get(f"{paid_stack.url}/openapi.json")).json()
    checked = 0
    for route in ROUTES:
        if route.path not in doc["paths"]:
            continue
        assert doc["paths"][route.path][route.method.lower()]["x-arbstr-auth"] == route.auth
        url = paid_stack.url + _FILL.sub("x", route.path)
        if route.auth == "public":
            continue
        r = await http.request(route.method, url)
        body = await r.json()
        assert r.status == 401 and body["error"]["code"] == "missing_api_key", (route.path, r.status, body)
        r = await http.request(route.method, url, headers={"Authorization": "Bearer arb_nobody"})
        assert r.status == 401, (route.path, r.status)
        if route.auth == "admin":
            r = await http.request(route.method, url, headers=as_agent)
            body = await r.json()
            assert r.status == 403 and body["error"]["code"] == "admin_only", (route.path, r.status, body)
        checked += 1
    assert checked >= 30
