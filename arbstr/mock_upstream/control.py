"""The control API under ``/_mock/``: tests script faults and read what each provider received and produced."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from .faults import FaultError, parse_fault_script
from .state import Providers
from .wire import JSON_HEADERS


def add_control_routes(router: web.UrlDispatcher, providers: Providers) -> None:
    """Register the ``/_mock/...`` routes; they act on ``providers``."""

    async def all_stats(request: web.Request) -> web.Response:
        return _json(providers.snapshot())

    async def reset(request: web.Request) -> web.Response:
        providers.reset()
        return _json({"ok": True})

    async def get_faults(request: web.Request) -> web.Response:
        return _json({"faults": providers.get(request.match_info["provider"]).faults_json()})

    async def set_faults(request: web.Request) -> web.Response:
        state = providers.get(request.match_info["provider"])
        try:
            script = parse_fault_script(orjson.loads(await request.read()))
        except (orjson.JSONDecodeError, FaultError) as exc:
            return _json(_error_json(str(exc), "invalid_fault"), status=400)
        state.set_faults(script)
        return _json({"faults": state.faults_json()})

    async def clear_faults(request: web.Request) -> web.Response:
        providers.get(request.match_info["provider"]).clear_faults()
        return _json({"faults": []})

    async def get_stats(request: web.Request) -> web.Response:
        return _json(providers.get(request.match_info["provider"]).snapshot())

    async def reset_stats(request: web.Request) -> web.Response:
        state = providers.get(request.match_info["provider"])
        state.reset_stats()
        return _json(state.snapshot())

    router.add_get("/_mock/stats", all_stats)
    router.add_post("/_mock/reset", reset)
    router.add_get("/_mock/{provider}/faults", get_faults)
    router.add_post("/_mock/{provider}/faults", set_faults)
    router.add_delete("/_mock/{provider}/faults", clear_faults)
    router.add_get("/_mock/{provider}/stats", get_stats)
    router.add_delete("/_mock/{provider}/stats", reset_stats)


def _json(payload: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(payload), headers=JSON_HEADERS)


def _error_json(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
