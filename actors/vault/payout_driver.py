"""Driving a journaled payout to its end: one driver per payout vault-wide (a renewed lease), asking the rail
before sending again, the auto rail's one fallback, and recording the rail's definite answer.
"""

from __future__ import annotations

import asyncio
import logging

from schemas.errors import ArbstrError

from . import decide
from .fold import Payout
from .rails_core import RailsCore
from .wallets.base import PaymentStatus, PayoutPlan, WalletError

log = logging.getLogger("arbstr.vault.rails")

# How long a payout's lease outlives a vault instance that stopped renewing it (a crash): after that, another
# instance resumes the payout. Renewed every third of it while a driver runs.
LEASE_TTL_S = 15.0


def plan_of(p: Payout) -> PayoutPlan:
    return PayoutPlan(rail=p.rail, payment_hash=p.payout_id, amount_msat=p.amount_msat,
                      fee_limit_msat=p.fee_limit_msat, reference=p.reference, destination=p.destination)


class PayoutDriver(RailsCore):
    """Talks to the rail about payouts under way."""

    def drive(self, agent_id: str, payout_id: str, *, resume: bool) -> asyncio.Task[None]:
        """One driver per payout at a time: a second request for it joins the first."""
        task = self._driving.get(payout_id)
        if task is None or task.done():
            task = asyncio.create_task(self._drive(agent_id, payout_id, resume))
            self._driving[payout_id] = task
            task.add_done_callback(lambda t, pid=payout_id: self._driving.pop(pid, None)
                                   if self._driving.get(pid) is t else None)
        return task

    async def _drive(self, agent_id: str, payout_id: str, resume: bool) -> None:
        """Talk to the rail about one payout, holding its lease: one instance at a time, vault-wide."""
        if not self.owns(agent_id) or payout_id not in self.book.state(agent_id).payouts:
            return  # resolved already, or the account's partition is served elsewhere now
        try:
            acquired = await self.claims.acquire(f"payout:{payout_id}", LEASE_TTL_S)
        except asyncio.CancelledError:
            # Stopped while the lease was being taken: a create already sent still lands and holds the lease, and
            # the payout would wait out its TTL before any instance could drive it again.
            self._let_go(payout_id)
            raise
        if not acquired:
            return  # another live instance is driving it
        renew = asyncio.create_task(self._renew(payout_id))
        try:
            await self._drive_once(agent_id, payout_id, resume)
        finally:
            renew.cancel()  # a renewal that still lands finds the lease gone: renewing never takes one
            # Shielded: a second cancel of this task (a stopping vault re-cancels) must not skip the release.
            await asyncio.shield(self._let_go(payout_id))

    def _let_go(self, payout_id: str) -> asyncio.Future[None]:
        """Release the payout's lease in a task of its own, tracked so that a stopping vault waits for it before
        its connection drains."""
        release = asyncio.ensure_future(self.claims.release(f"payout:{payout_id}"))
        self._releasing.add(release)
        release.add_done_callback(self._releasing.discard)
        return release

    async def _renew(self, payout_id: str) -> None:
        while True:
            await asyncio.sleep(LEASE_TTL_S / 3)
            try:
                await self.claims.renew(f"payout:{payout_id}", LEASE_TTL_S)
            except Exception as e:
                log.warning("payout %s: lease not renewed (%r)", payout_id, e)

    async def _drive_once(self, agent_id: str, payout_id: str, resume: bool) -> None:
        payout = self.book.state(agent_id).payouts.get(payout_id)
        if payout is None:
            return  # resolved already
        if payout.approval_deadline_ms is not None:
            return  # held for a human: sent once approved
        if payout.wallet and payout.wallet != self.identity(payout.rail):
            # Started on a wallet this instance does not hold: asking ours would read "never sent" and pay twice.
            log.warning("payout %s belongs to wallet %s, not %s: left to an instance on it", payout_id,
                        payout.wallet, self.identity(payout.rail))
            return
        plan = plan_of(payout)
        try:
            status = await self.wallet.check_payout(plan) if resume else PaymentStatus("not_found")
            if status.state == "not_found":
                if self.freeze.state.frozen:
                    return  # never sent, and the vault is closed: it stays pending until it reopens
                status = await self.wallet.pay(plan)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            # Ambiguous: the payment may or may not be on its way. It stays pending for the next check.
            log.warning("payout %s: the rail gave no clear answer (%r); it stays pending", payout_id, e)
            return
        if status.state == "failed" and await self._fall_back(agent_id, payout, status.reason):
            return
        await self._record(agent_id, payout_id, status)

    async def _fall_back(self, agent_id: str, payout: Payout, reason: str) -> bool:
        """The one retry on the wallet's fallback rail (auto: the other rail) after a definite failure; journaled
        before it is sent."""
        rail = self.wallet.fallback_rail(payout.rail)
        if rail is None or payout.fallback or not payout.destination or self.freeze.state.frozen:
            return False
        try:
            plan = await self.wallet.plan_payout(payout.destination, rail)
            await self.execute(agent_id, lambda s, at: decide.reroute_payout(
                s, payout.payout_id, payout.rail, rail, plan.fee_limit_msat, plan.reference, reason, at,
                wallet=self.identity(rail)))
        except (WalletError, ArbstrError) as e:
            log.warning("payout %s: no fallback to %s (%s)", payout.payout_id, rail,
                        getattr(e, "message", str(e)))
            return False
        log.info("payout %s failed on %s (%s); trying %s once", payout.payout_id, payout.rail, reason, rail)
        # Asked first: a reroute journaled earlier (by an instance that then died) may have been sent already.
        await self._drive_once(agent_id, payout.payout_id, resume=True)
        return True

    async def _record(self, agent_id: str, payout_id: str, status: PaymentStatus) -> None:
        try:
            if status.state == "succeeded":
                await self.execute(agent_id, lambda s, at: decide.settle_payout(
                    s, payout_id, status.fee_msat, status.preimage, at))
            elif status.state == "failed":
                await self.execute(agent_id, lambda s, at: decide.fail_payout(s, payout_id, status.reason, at))
        except ArbstrError as e:
            log.critical("payout %s of %s: the rail said %s but the journal refused: %s", payout_id, agent_id,
                         status.state, e.message)

    async def resume_all(self) -> None:
        """Ask the rail about every payout under way (and send those it never saw)."""
        open_ = [(s.agent_id, pid) for s in self.book.agents() if self.owns(s.agent_id) for pid in s.payouts]
        tasks = [self.drive(agent_id, pid, resume=True) for agent_id, pid in open_]
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
