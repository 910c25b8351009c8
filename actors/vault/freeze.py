"""The vault-wide fail-closed switch, shared by every instance through one KV key.

The reconciliation watchdog sets it when assets fall short of liabilities by more than the margin; only an
operator clears it. While it is set no new hold or payout starts, but deposits, settles and releases go on:
they only ever move money towards the books balancing. The key's history (64 revisions) is its audit trail.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable, Optional

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from actors.runtime.jetstream import open_bucket
from actors.runtime.tasks import cancel_and_wait
from schemas import subjects
from schemas.errors import ArbstrError
from schemas.vault import FreezeState

log = logging.getLogger("arbstr.vault.freeze")

KEY = "freeze"


def frozen_error(state: FreezeState) -> ArbstrError:
    return ArbstrError(503, "the vault is closed: its wallets hold less than it owes "
                            f"({state.reason}); an operator must reconcile and clear it",
                       code="vault_frozen", headers={"x-should-retry": "false"})


class FreezeSwitch:
    def __init__(self, on_frozen: Optional[Callable[[], Any]] = None) -> None:
        self.state = FreezeState(frozen=False)
        self._on_frozen = on_frozen  # every instance sees the switch flip: gateways stop deciding locally
        self._kv: Optional[KeyValue] = None
        self._watch: Optional[asyncio.Task[None]] = None
        self._watcher: Optional[KeyValue.KeyWatcher] = None

    async def start(self, nc: NATS, replicas: int) -> None:
        self._kv = await open_bucket(nc, subjects.KV_VAULT, history=64, replicas=replicas)
        self._watcher = watcher = await self._kv.watch(KEY)
        self._watch = asyncio.create_task(self._follow(watcher))
        try:
            entry = await self._kv.get(KEY)
            if entry.value:
                self.state = FreezeState.model_validate_json(entry.value)
        except KeyNotFoundError:
            pass

    async def _follow(self, watcher: object) -> None:
        async for entry in watcher:  # type: ignore[attr-defined]
            if entry is None or not entry.value:
                continue
            try:
                was = self.state.frozen
                self.state = FreezeState.model_validate_json(entry.value)
            except ValueError:
                log.error("unreadable freeze state in %s; keeping %s", subjects.KV_VAULT, self.state)
                continue
            if self.state.frozen and not was and self._on_frozen is not None:
                try:
                    await self._on_frozen()
                except Exception:
                    log.exception("freeze: telling the gateways failed")

    async def stop(self) -> None:
        # The watcher's subscription is stopped first: abandoned, its queued heartbeats would hold a drain of the
        # connection until the drain timeout.
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception:  # the connection may be closing already
                log.debug("freeze: watcher stop failed", exc_info=True)
        await cancel_and_wait(self._watch)

    def check(self) -> None:
        """Raise the 503 a frozen vault answers to anything that would commit new money."""
        if self.state.frozen:
            raise frozen_error(self.state)

    async def set(self, state: FreezeState) -> None:
        assert self._kv is not None
        await self._kv.put(KEY, state.model_dump_json().encode())
        self.state = state
        (log.critical if state.frozen else log.warning)(
            "vault %s by %s: %s", "FROZEN" if state.frozen else "cleared", state.by, state.reason)
