"""Deadlines of one partition's holds and payouts, in memory: the owner's timers, rebuilt from the state at
takeover (the sweep), so expiry needs no journal write of its own until something actually expires."""

from __future__ import annotations

import asyncio
import heapq
import logging
import time
from typing import Awaitable, Callable, Optional

from actors.runtime.tasks import cancel_and_wait

from .fold import AccountState

log = logging.getLogger("arbstr.vault.expiry")

Due = Callable[[list[tuple[str, str, str]]], Awaitable[None]]  # [(agent id, hold rid or payout id, kind)]
HOLD, PAYOUT = "hold", "payout"


def deadlines(state: AccountState) -> list[tuple[int, str, str]]:
    """Every deadline an account has now: (ms, id, kind)."""
    out = []
    for rid, hold in state.holds.items():
        due = hold.approval_deadline_ms if hold.state == "awaiting_approval" else hold.expires_at_ms
        if due is not None:
            out.append((due, rid, HOLD))
    for pid, payout in state.payouts.items():
        if payout.approval_deadline_ms is not None:
            out.append((payout.approval_deadline_ms, pid, PAYOUT))
    return out


class Timers:
    def __init__(self, due: Due) -> None:
        self._heap: list[tuple[int, str, str, str]] = []
        self._due = due
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None

    def arm(self, at_ms: int, agent_id: str, key: str, kind: str) -> None:
        heapq.heappush(self._heap, (at_ms, agent_id, key, kind))
        if self._heap[0][0] == at_ms:
            self._wake.set()

    def arm_account(self, state: AccountState) -> None:
        for at_ms, key, kind in deadlines(state):
            self.arm(at_ms, state.agent_id, key, kind)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="expiry")

    async def stop(self) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        while True:
            now = int(time.time() * 1000)
            due: list[tuple[str, str, str]] = []
            while self._heap and self._heap[0][0] <= now:
                _, agent_id, key, kind = heapq.heappop(self._heap)
                due.append((agent_id, key, kind))
            if due:
                try:
                    await self._due(due)
                except Exception:
                    log.exception("expiry of %d deadlines failed; they are retried", len(due))
                    for agent_id, key, kind in due:
                        heapq.heappush(self._heap, (now + 1000, agent_id, key, kind))
                continue
            self._wake.clear()
            wait = (self._heap[0][0] - now) / 1000 if self._heap else 60.0
            try:
                await asyncio.wait_for(self._wake.wait(), max(0.001, min(wait, 60.0)))
            except asyncio.TimeoutError:
                pass
