"""Reading request headers: the one place a client's header bytes become strings the gateway uses.

aiohttp decodes header bytes as UTF-8 with ``surrogateescape``, so a value with bytes that are not UTF-8 arrives as
a ``str`` holding lone surrogates, which explodes later (hashing, JSON, NATS headers) as a 500. Every header the
gateway acts on is read here and must be printable ASCII (HTTP's visible characters, space and tab); anything else
is the client's error: 401 for credentials, 400 for the rest.
"""

from __future__ import annotations

import re
from typing import Optional, cast

from aiohttp import web

from schemas.common import Complexity
from schemas.errors import ArbstrError

_PRINTABLE = re.compile(r"[\t\x20-\x7e]*")
COMPLEXITY_HEADER = "X-Arbstr-Complexity"
POLICY_HEADER = "X-Arbstr-Policy"
_COMPLEXITIES = ("low", "medium", "high")


def printable(value: str) -> bool:
    return _PRINTABLE.fullmatch(value) is not None


def header(request: web.Request, name: str) -> Optional[str]:
    """The header's value, or None when absent; 400 naming the header when it holds anything but printable ASCII."""
    value = request.headers.get(name)
    if value is None or printable(value):
        return value
    raise ArbstrError(400, f"the {name} header must be printable ASCII", param=name, code="invalid_header")


def bearer_token(request: web.Request) -> Optional[str]:
    """The bearer token, None without one; a token with bytes no token can hold is refused (401), not hashed."""
    values = request.headers.getall("Authorization", [])
    if len(values) > 1:
        # Which one counts is not ours to guess: a proxy in front may pick another one than aiohttp's first.
        raise ArbstrError(401, "more than one Authorization header", code="invalid_api_key", param="Authorization")
    auth = values[0] if values else ""
    if auth[:7].lower() != "bearer ":
        return None
    if not printable(auth):
        raise ArbstrError(401, "the Authorization header is not a valid bearer token (printable ASCII only)",
                          code="invalid_api_key")
    return auth[7:].strip() or None


def route_overrides(request: web.Request) -> tuple[Optional[str], Optional[Complexity]]:
    """``X-Arbstr-Policy`` and ``X-Arbstr-Complexity`` as the router wants them (an unknown complexity is 400)."""
    policy = header(request, POLICY_HEADER)
    complexity = header(request, COMPLEXITY_HEADER)
    if complexity is not None:
        complexity = complexity.strip().lower()
        if complexity not in _COMPLEXITIES:
            raise ArbstrError(400, f"{COMPLEXITY_HEADER} must be one of low, medium, high",
                              param=COMPLEXITY_HEADER, code="invalid_header")
    return (policy.strip() if policy else None), cast(Optional[Complexity], complexity)
