"""The vault's side of the money rails: deposits by invoice or token, payouts, recovery, reconciliation.

Every step that moves money is journaled first. A payout is ``payout_started`` (its amount and fee limit
held) before the wallet is called; it becomes ``payout_settled`` when the rail says paid and
``payout_failed`` only when the rail says definitely not. Anything else — a timeout, an exception, an
in-flight answer — leaves it pending, and a loop (and every vault start) asks the rail again; a payout the
rail never saw (a crash between the journal and the call) is sent then, and the rail's idempotency on the
payment hash makes that a single payment whoever sends it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Awaitable, Callable, Optional

from actors.runtime.tasks import cancel_and_wait
from schemas.config import WalletConfig

from .book import Book
from .claims import Claims
from .freeze import FreezeSwitch
from .payout_driver import PayoutDriver
from .rail_deposits import DepositRails
from .rail_payouts import PayoutRequests
from .rails_core import Credit, Execute
from .reconciler import Reconciler
from .wallets.base import Wallet

log = logging.getLogger("arbstr.vault.rails")

PARKED_SCAN_S = 60.0  # how often every instance looks for credits parked by any instance


class Rails(DepositRails, PayoutRequests, PayoutDriver, Reconciler):
    """The shell: sets the shared state, starts and stops the loops; each job lives in its own module."""

    def __init__(self, cfg: WalletConfig, wallet: Wallet, book: Book, execute: Execute,
                 freeze: FreezeSwitch, claims: Claims, catch_up: Callable[[], Awaitable[None]],
                 owns: Callable[[str], bool] = lambda agent_id: True, credit: Optional[Credit] = None) -> None:
        self.cfg = cfg
        self.wallet = wallet
        self.book = book
        self.execute = execute
        # Payouts are driven, and accounts written, by the owner of the account's partition; a deposit the rails
        # see settle is credited wherever the account lives (``credit`` forwards it to its owner).
        self.owns = owns
        self.credit = credit
        self.freeze = freeze
        self.claims = claims
        self.catch_up = catch_up
        # A simulated wallet holds what the journal says came in and went out (operator credits included); a
        # wallet with money of its own ignores the offer.
        wallet.back_with_journal(lambda: sum(s.deposited_msat - s.withdrawn_msat for s in self.book.agents()))
        self._invoice_owner: dict[str, tuple[str, str]] = {}
        self._parked_here = False
        self._driving: dict[str, asyncio.Task[None]] = {}
        self._releasing: set[asyncio.Future[None]] = set()
        self._tasks: list[asyncio.Task[None]] = []

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        """After the book has caught up with the ledger: resume payouts under way, then follow the rails."""
        await self.wallet.start()
        await self.resume_all()
        cursor = max((s.settle_index for s in self.book.agents()), default=0)
        self._tasks = [asyncio.create_task(self._watch(cursor)), asyncio.create_task(self._check_forever()),
                       asyncio.create_task(self._watchdog())]

    async def stop(self) -> None:
        await cancel_and_wait(*self._tasks, *self._driving.values())
        if self._releasing:  # leases let go before the connection drains
            await asyncio.wait(set(self._releasing), timeout=5)
        await self.wallet.stop()

    async def _check_forever(self) -> None:
        parked_at = 0.0
        while True:
            await asyncio.sleep(self.cfg.check_interval_s)
            try:
                await self.resume_all()
                # Parked credits are rare: look for them now and then (listing keys opens a consumer), and at
                # once after this instance parked one.
                if self._parked_here or time.monotonic() - parked_at > PARKED_SCAN_S:
                    parked_at, self._parked_here = time.monotonic(), False
                    await self._retry_parked()
            except Exception:
                log.exception("payout check failed")
