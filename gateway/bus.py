"""The gateway's side of the bus: typed request/reply with explicit timeouts and errors mapped to HTTP.

A call site names an exchange of ``schemas.exchanges`` (``bus.ask(exchanges.ROUTE, req)``) and gets that exchange's
reply type back; an actor's error comes back as the ``ArbstrError`` it raised (the codec of ``schemas.exchanges``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Optional, TypeVar

from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError
from pydantic import BaseModel, ValidationError

from schemas import subjects
from schemas.errors import ArbstrError
from schemas.exchanges import Exchange, decode_error

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


class Bus:
    def __init__(self, nc: NATS, timeout_s: float) -> None:
        self.nc = nc
        self.timeout_s = timeout_s

    async def ask(self, exchange: Exchange[Q, R], message: Q, *, partition: Optional[int] = None,
                  **options: Any) -> R:
        """Request/reply on ``exchange``: on its subject, or on ``partition``'s when given (straight to the owner of
        a vault partition). ``options`` as ``call``'s."""
        subject = exchange.on_partition(partition) if partition is not None else exchange.subject
        return await self.call(subject, message, exchange.reply, **options)

    async def call(
        self,
        subject: str,
        message: BaseModel,
        reply_model: type[R],
        *,
        request_id: str = "",
        traceparent: Optional[str] = None,
        timeout_s: Optional[float] = None,
        retries: int = 0,
        admin_token: Optional[str] = None,
        wait_for_responder_s: float = 0.0,
        encoded: Optional[bytes] = None,
    ) -> R:
        """Request/reply on a subject (``ask`` names the exchange instead). No responders → 503, timeout → 504, an
        actor's error → its own status and body.

        ``retries`` is only for idempotent reads (route, quote): a request lost with a dying instance is
        asked again and the queue group hands it to a survivor. ``admin_token``: the operator's token, which an
        admin command carries so the actor checks it itself (a bus credential alone cannot mint).
        ``wait_for_responder_s``: a subject with nobody listening (a vault partition changing owner) is asked
        again for this long — nothing was delivered, so it is safe even for writes. ``encoded``: ``message`` as
        the caller already encoded it (to measure it).
        """
        headers = {subjects.H_REQUEST_ID: request_id} if request_id else {}
        if traceparent:
            headers[subjects.H_TRACEPARENT] = traceparent
        if admin_token:
            headers[subjects.H_ADMIN_AUTH] = admin_token
        payload = encoded if encoded is not None else message.model_dump_json().encode()
        attempt = 0
        wait_until = time.monotonic() + wait_for_responder_s
        while True:
            try:
                msg = await self.nc.request(subject, payload, timeout=timeout_s or self.timeout_s,
                                            headers=headers or None)
                break
            except NoRespondersError:
                # Nothing was delivered, so asking again is safe even for writes: it bridges an instance restart.
                if attempt < max(retries, 1) or time.monotonic() < wait_until:
                    attempt += 1
                    await asyncio.sleep(0.05)
                    continue
                raise ArbstrError(503, f"no instance of the service behind {subject} is running",
                                  code="actor_unavailable", headers={"retry-after": "1"}) from None
            except (NatsTimeoutError, asyncio.TimeoutError):
                if attempt < retries:
                    attempt += 1
                    continue
                # Mostly a JetStream election or a dying instance: over in seconds, so the client may retry.
                raise ArbstrError(504, f"the service behind {subject} did not answer in time",
                                  code="actor_timeout", headers={"retry-after": "1"}) from None
            except Exception as e:  # connection closed / reconnecting: the bus is unavailable, not a bug
                raise ArbstrError(503, f"message bus unavailable ({type(e).__name__})",
                                  code="bus_unavailable", headers={"retry-after": "1"}) from None
        error = decode_error(msg.data, msg.headers)
        if error is not None:
            raise error
        try:
            return reply_model.model_validate_json(msg.data)
        except ValidationError as e:
            raise ArbstrError(502, f"malformed reply on {subject}: {e.errors()[0]['msg']}",
                              code="bad_actor_reply") from None
