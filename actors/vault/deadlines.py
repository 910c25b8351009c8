"""Deadlines the owners' timers reach: holds expire (approvals time out), payouts nobody approved are released.
"""

from __future__ import annotations

import asyncio
import logging

from schemas.errors import ArbstrError
from schemas.ledger import Expired

from . import clock, decide
from .core import VaultCore
from .expiry import HOLD
from .fold import GRANT_PREFIX

log = logging.getLogger("arbstr.vault")

# A grant due while its partition had no owner waits this long after a takeover: its gateway retries its reports
# for up to 30 s (settle budget), and a report that lands is better than charging the whole grant.
GRANT_GRACE_S = 30.0

class Deadlines(VaultCore):
    """Expiring what fell due, on the timers' call or a sweep."""

    async def _expire_due(self, k: int, due: list[tuple[str, str, str]]) -> None:
        """Deadlines the owner's timers reached: holds expire (approvals time out), payouts nobody approved are
        released. Submitted together: they group-commit like anything else."""
        owner = self.owners.get(k)
        if owner is None or owner.writer is None:
            return

        taken_ms = self._acquired_at.get(k, 0)
        grace_until_ms = taken_ms + int(GRANT_GRACE_S * 1000)

        async def one(agent_id: str, key: str, kind: str) -> None:
            try:
                if kind == HOLD and key.startswith(GRANT_PREFIX) and clock.now_ms() < grace_until_ms:
                    grant = self.book.state(agent_id).holds.get(key)
                    if grant is not None and grant.expires_at_ms <= taken_ms:
                        # It ran out while its partition had no owner: its gateway's reports are still being
                        # retried, and would land just after an expiry charged the whole grant. Expired later.
                        owner.timers.arm(grace_until_ms, agent_id, key, HOLD)
                        return
                if kind == HOLD:
                    w = await self.execute(agent_id, lambda s, at: decide.expire(s, key, at, self.vc.expiry_action))
                    if w.events and isinstance(w.events[-1].body, Expired):
                        log.warning("hold %s of %s expired (%s)", key, agent_id, self.vc.expiry_action)
                else:
                    payout = self.book.state(agent_id).payouts.get(key)
                    if payout is not None and payout.approval_deadline_ms is not None \
                            and payout.approval_deadline_ms <= clock.now_ms():
                        await self.execute(agent_id, lambda s, at: decide.fail_payout(s, key, "approval timed out", at))
            except ArbstrError as e:
                if e.code == "not_expired":  # approved meanwhile, or not due yet: its real deadline is armed again
                    hold = self.book.state(agent_id).holds.get(key)
                    if hold is not None:
                        owner.timers.arm(hold.expires_at_ms, agent_id, key, HOLD)
                elif e.code != "partition_moved":
                    log.warning("expiry of %s: %s", key, e.message)

        await asyncio.gather(*(one(*d) for d in due))

    async def sweep(self) -> int:
        """Resolve every owned hold past its deadline now (tests; the timers do it on their own)."""
        due = []
        at = clock.now_ms()
        for k, owner in list(self.owners.items()):
            items = []
            for state in list(owner.part.agents.values()):
                for rid, hold in state.holds.items():
                    deadline = hold.approval_deadline_ms if hold.state == "awaiting_approval" else hold.expires_at_ms
                    if deadline is not None and deadline <= at:
                        items.append((state.agent_id, rid, HOLD))
                items += [(state.agent_id, pid, "payout") for pid, p in state.payouts.items()
                          if p.approval_deadline_ms is not None and p.approval_deadline_ms <= at]
            due.append((k, items))
        before = sum(len(i) for _, i in due)
        for k, items in due:
            if items:
                await self._expire_due(k, items)
        return before
