"""The durable settle fallback: settles a gateway could not hand to an owner in time, consumed from JetStream
by any instance and passed to the owner of each account.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from actors.runtime.endpoints import RawReply
from schemas import subjects
from schemas.errors import ArbstrError
from schemas.exchanges import reply_status
from schemas.vault import SettleCommand

from .core import VaultCore
from .streams import settle_consumer_config

log = logging.getLogger("arbstr.vault")

class SettleFeed(VaultCore):
    """The ``vault-settle`` pull consumer."""

    async def _consume_settles(self) -> None:
        """The durable fallback: settles a gateway could not hand to an owner in time (any instance takes them,
        and passes each to its owner)."""
        assert self.nc is not None
        js = self.nc.jetstream()
        psub = self._settle_sub = await js.pull_subscribe(
            f"{subjects.SETTLE_PREFIX}.>", durable="vault-settle", stream=subjects.STREAM_SETTLE,
            config=settle_consumer_config())
        while self._running:
            try:
                msgs = await psub.fetch(batch=256, timeout=1.0)
            except (NatsTimeoutError, asyncio.TimeoutError):
                continue
            except Exception as e:
                log.warning("settle consumer: %r", e)
                await asyncio.sleep(0.5)
                continue
            for i, msg in enumerate(msgs):
                try:
                    await self._settle_sem.acquire()
                except asyncio.CancelledError:
                    for rest in msgs[i:]:  # stopping: handed back now rather than after the ack wait
                        with contextlib.suppress(Exception):
                            await rest.nak()
                    raise
                task = asyncio.create_task(self._handle_settle_msg(msg))
                self._inflight.add(task)
                task.add_done_callback(self._inflight.discard)

    async def _handle_settle_msg(self, msg: Msg) -> None:
        try:
            try:
                cmd = SettleCommand.model_validate_json(msg.data)
            except Exception:
                log.error("undecodable settle command dropped (seq %s)", msg.metadata.sequence.stream)
                await msg.term()
                return
            op = self._ops[cmd.kind]
            try:
                reply = await self._routed(op)(cmd, {})
                if isinstance(reply, RawReply):
                    code = reply_status(reply.headers)
                    if code.isdigit() and int(code) >= 500:
                        raise ArbstrError(int(code), "the owner could not journal it yet")
            except ArbstrError as e:
                if e.status >= 500:
                    await msg.nak(delay=1.0)
                    return
                log.warning("settle %s refused: %s", cmd.request_id, e.message)
            except Exception:
                log.exception("settle %s failed; redelivering", cmd.request_id)
                await msg.nak(delay=1.0)
                return
            await msg.ack()  # only after the journal has it
        finally:
            self._settle_sem.release()
