"""``GET /v1/models``: the configured model ids, owned by the provider asked (not recorded as produced)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .api import ApiFrame
from .state import Call


async def models(api: ApiFrame, request: web.Request, call: Call, body: dict[str, Any]) -> web.StreamResponse:
    name = call.state.name
    payload = api.models_body.get(name)
    if payload is None:
        payload = api.models_body[name] = orjson.dumps({
            "object": "list",
            "data": [{"id": m, "object": "model", "created": 0, "owned_by": name} for m in api.models],
        })
    return await api.send_json(request, call, payload, 0, 0, record=False)
