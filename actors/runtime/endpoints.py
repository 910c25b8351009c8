"""One actor endpoint: an exchange of ``schemas.exchanges`` (subject, request and reply models) and the handler that
serves it — and the one codec every actor endpoint answers through (decode, admin check, run, encode the reply or
the error with the error codec of ``schemas.exchanges``)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Optional

from pydantic import BaseModel, ValidationError

from schemas import subjects, trace
from schemas.errors import ArbstrError
from schemas.exchanges import Exchange, encode_error, reply_status

from .jetstream import transient_bus_error
from .tokens import check_admin

log = logging.getLogger("arbstr.runtime")

Handler = Callable[[Any, dict[str, str]], Awaitable[BaseModel]]
# Every actor endpoint is in this queue group, so N instances share the load with no other change.
QUEUE_GROUP = "arbstr"


@dataclass(frozen=True)
class Endpoint:
    name: str
    subject: str
    request_model: type[BaseModel]
    handler: Handler
    # "admin": the request must carry the operator's admin token in ``subjects.H_ADMIN_AUTH``, checked here
    # against the actor's own copy of its hash, so a bus credential alone cannot mint or move money.
    auth: Optional[str] = None


@dataclass(frozen=True)
class RawReply:
    """A reply relayed as it came (an actor that forwarded the request to the instance that handles it)."""

    data: bytes
    headers: Optional[dict[str, str]] = None


def serve(exchange: Exchange[Any, Any], handler: Handler) -> Endpoint:
    """The endpoint that answers ``exchange`` with ``handler`` (on its own subject, in the queue group)."""
    return Endpoint(exchange.name, exchange.subject, exchange.request, handler, auth=exchange.auth)


# The reply an actor sends for an error: the one codec of ``schemas.exchanges``, which callers decode.
error_reply = encode_error


async def answer(ep: Endpoint, data: bytes, headers: dict[str, str], admin_hash: Optional[str],
                 service: str) -> tuple[bytes, Optional[dict[str, str]], str]:
    """Decode one request, run the endpoint, encode its reply or its error: (body, headers, status). The one
    codec of every actor endpoint (nats micro's, and any other subscription an actor serves requests on)."""
    try:
        trace.REQUEST_ID.set(headers.get(subjects.H_REQUEST_ID, ""))
        trace.TRACEPARENT.set(headers.get(subjects.H_TRACEPARENT, ""))
        if ep.auth == "admin":
            check_admin(headers, admin_hash)
        try:
            message = ep.request_model.model_validate_json(data)
        except ValidationError as e:
            first = e.errors()[0] if e.errors() else {}
            loc = ".".join(str(p) for p in first.get("loc", ()))
            raise ArbstrError(400, f"invalid {ep.name} message: {loc} {first.get('msg', '')}".strip(),
                              code="invalid_message", param=loc or None) from None
        reply = await ep.handler(message, headers)
        if isinstance(reply, RawReply):
            return reply.data, reply.headers, reply_status(reply.headers)
        return reply.model_dump_json().encode(), None, "200"
    except ArbstrError as err:
        body, h = error_reply(err)
        return body, h, str(err.status)
    except Exception as exc:  # the reply must always go out, or the caller waits for its timeout
        unavailable = transient_bus_error(exc)
        if unavailable is not None:
            log.warning("%s.%s: %r", service, ep.name, exc)
            body, h = error_reply(unavailable)
            return body, h, "503"
        log.exception("%s.%s failed", service, ep.name)
        body, h = error_reply(ArbstrError(500, f"internal error in {service}: {type(exc).__name__}",
                                          code="internal_error"))
        return body, h, "500"
