"""W3C trace context and the request id of the work in progress, shared by every process's logs.

The context variables are set where a request enters (the gateway's middleware, an actor's handler) and read
by the log formatter, so every log line of a request carries its ``request_id`` and ``traceparent``.
"""

from __future__ import annotations

import contextvars
import re
import secrets
from typing import Optional

REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("arbstr_request_id", default="")
TRACEPARENT: contextvars.ContextVar[str] = contextvars.ContextVar("arbstr_traceparent", default="")

_TRACEPARENT_RE = re.compile(r"^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")


def valid_traceparent(value: Optional[str]) -> Optional[str]:
    """The header if it is a usable W3C traceparent (version 00, non-zero ids), else None."""
    if not value:
        return None
    m = _TRACEPARENT_RE.match(value.strip().lower())
    if not m or m.group(1) == "ff" or set(m.group(2)) == {"0"} or set(m.group(3)) == {"0"}:
        return None
    return m.group(0)


def new_traceparent() -> str:
    return f"00-{secrets.token_hex(16)}-{secrets.token_hex(8)}-01"


def child_traceparent(parent: str) -> str:
    """Same trace, a new span id: what this hop sends on."""
    version, trace_id, _, flags = parent.split("-")
    return f"{version}-{trace_id}-{secrets.token_hex(8)}-{flags}"
