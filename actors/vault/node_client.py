"""The vault's HTTP calls to a Routstr node (wire contract of routstr-core, checked at 8bd7d7e): make a prepaid key
from a token, top it up, read its balance, ask again for the change of a per-request (X-Cashu) payment.

Every call refuses redirects: a token or key must never follow a ``Location`` header to another host. Nodes from
public announcements are reached only through the public-only resolver. A node's body may echo a token back, so
nothing here logs a body; callers get the status and the parsed error code.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Mapping, Optional

import aiohttp
import orjson

from actors.runtime.netguard import private_host, public_connector
from schemas.routstr import NodeError, is_payment_refusal, node_error

MAX_BODY = 1024 * 1024


class NodeUnreachable(Exception):
    """No answer (connect error, timeout, a body that broke off): the call may or may not have taken effect."""


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: Mapping[str, str]

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def error(self) -> NodeError:
        return node_error(self.status, self.body)


class NodeClient:
    def __init__(self, timeout_s: float, public_only: bool) -> None:
        self.timeout_s = timeout_s
        self.public_only = public_only
        self._session: Optional[aiohttp.ClientSession] = None

    async def start(self) -> None:
        connector = public_connector() if self.public_only else None
        self._session = aiohttp.ClientSession(connector=connector,
                                              timeout=aiohttp.ClientTimeout(total=self.timeout_s))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def call(self, method: str, url: str, *, json: Any = None, params: Optional[dict[str, str]] = None,
                   headers: Optional[dict[str, str]] = None) -> Answer:
        assert self._session is not None, "NodeClient.start() not called"
        if self.public_only and private_host(url):  # a literal address never reaches the resolver
            raise NodeUnreachable("the node is at a private address")
        try:
            async with self._session.request(method, url, json=json, params=params, headers=headers,
                                             allow_redirects=False) as r:
                raw = await r.content.read(MAX_BODY + 1)
                status, got_headers = r.status, dict(r.headers)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            raise NodeUnreachable(type(e).__name__) from None
        try:
            body = orjson.loads(raw) if raw and len(raw) <= MAX_BODY else None
        except orjson.JSONDecodeError:
            body = None
        return Answer(status, body, got_headers)

    async def create(self, url: str, token: str) -> Answer:
        """``POST /balance/create`` with the token in a JSON body; a node older than 2026-07-24 has only the GET form
        (its POST lands on a catch-all: 404, or 400 from the proxy), so anything but a refusal of the token itself
        is asked again as ``GET ?initial_balance_token=…``. Both name the key by the token: asking twice is safe."""
        answer = await self.call("POST", f"{url}/balance/create", json={"initial_balance_token": token})
        if answer.ok or not _route_missing(answer):
            return answer
        return await self.call("GET", f"{url}/balance/create", params={"initial_balance_token": token})

    async def topup(self, url: str, api_key: str, token: str) -> Answer:
        return await self.call("POST", f"{url}/balance/topup", json={"cashu_token": token},
                               headers={"Authorization": f"Bearer {api_key}"})

    async def info(self, url: str, api_key: str) -> Answer:
        return await self.call("GET", f"{url}/balance/info", headers={"Authorization": f"Bearer {api_key}"})

    async def refund(self, url: str, token: str) -> Answer:
        """The change of an X-Cashu request, asked for again with the token that paid it."""
        return await self.call("POST", f"{url}/balance/refund", headers={"X-Cashu": token})


def _route_missing(answer: Answer) -> bool:
    """The POST form is not served there (not a refusal of the token: a 422 may be FastAPI's "wrong shape" or the
    node's fee/swap failure, told apart by the error code)."""
    if answer.status in (404, 405):
        return True
    return answer.status in (400, 422) and not is_payment_refusal(answer.error)
