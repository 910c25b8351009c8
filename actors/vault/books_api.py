"""The books and reconciliation, as the operator reads them: the audit log, the books (checked against the
projection), the wallets against the books, and the ledger's hash chains.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from schemas.vault import Books, ChainCheck, ClearFreeze, Empty, History, HistoryQuery, Reconciliation

from .core import VaultCore
from .ledger_read import verify_ledger

log = logging.getLogger("arbstr.vault")

class BooksApi(VaultCore):
    """Audit, books, reconciliation and chain verification."""

    async def _audit(self, req: HistoryQuery, headers: dict[str, str]) -> History:
        if req.agent_id is not None:
            await self._known(req.agent_id)
        await self._projection_current()
        assert self.projection is not None
        return History(items=self.projection.history(req.agent_id, req.since_ms, req.limit))

    async def _books(self, req: Empty, headers: dict[str, str]) -> Books:
        await self._caught_up()
        assert self.projection is not None and self.feed is not None
        # A consistent cut: no batch in flight in any owned partition (memory would be ahead of the journal),
        # and the projection summed up to exactly the sequences the read model holds.
        async with contextlib.AsyncExitStack() as stack:
            for owner in list(self.owners.values()):
                if owner.writer is not None:
                    await stack.enter_async_context(owner.writer.quiet())
            upto = dict(self.book.top_seq)
            books = self.book.books(max(upto.values(), default=0))
        if not await self.feed.reached(upto, self._read_wait_s):
            return books  # the projection is behind: the books answer without the comparison
        totals = await asyncio.to_thread(self.projection.totals, None, upto)
        books.projection_agrees = (
            totals.get("deposited", 0) == books.deposits_msat
            and totals.get("withdrawn", 0) + totals.get("payout_settled", 0) == books.withdrawals_msat
            and totals.get("settled", 0) + totals.get("expired", 0) == books.spent_msat)
        return books

    async def _projection_current(self) -> None:
        """Writes acked so far reach the projection before a history read: read-after-write."""
        assert self.feed is not None
        if not await self.feed.reached(dict(self.book.top_seq), self._read_wait_s):
            log.warning("history: the projection is behind the journal; answering with what it has")

    async def _reconcile(self, req: Empty, headers: dict[str, str]) -> Reconciliation:
        return await self.rails.reconcile()

    async def _reconcile_clear(self, req: ClearFreeze, headers: dict[str, str]) -> Reconciliation:
        return await self.rails.clear(req)

    async def _verify(self, req: Empty, headers: dict[str, str]) -> ChainCheck:
        assert self.nc is not None
        return await verify_ledger(self.nc, self.layout.streams)
