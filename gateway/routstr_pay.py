"""Paying Routstr nodes from the request path, over the bus to the vault (which owns the wallet).

- Per request (``X-Cashu``): a token sized to the larger of the agent's hold and what the node will reserve for
  this request (its 402 rule, ``schemas.routstr``), asked of the vault; sent as the ``X-Cashu`` header; whatever the
  node hands back (its change, or a refund after an upstream failure) goes back to the vault, with what became of
  the token. The vault recovers any token never reported on, so a lost report costs time, never sats.
- After a 402 from a node the vault holds a key for: one top-up, waited for, before the request falls over.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Optional

from schemas import exchanges
from schemas.config import Config
from schemas.errors import ArbstrError
from schemas.money import MSAT_PER_SAT, ceil_div
from schemas.payments import TopUpNow, XCashuOutcome, XCashuReport, XCashuRequest, XCashuToken
from schemas.routstr import NodeModelPrice, node_reserve_msat, prompt_chars

from .bus import Bus

log = logging.getLogger("arbstr.gateway.routstr")

REPORT_TIMEOUT_S = 10.0  # the vault redeems the change at the mint before it answers


def request_reserve_msat(price: Optional[NodeModelPrice], body: dict[str, Any]) -> int:
    """What the node will reserve for this upstream body (0 when its terms are unknown)."""
    if price is None:
        return 0
    chars = prompt_chars(body["messages"]) if body.get("messages") else None
    max_tokens = body.get("max_tokens")
    return node_reserve_msat(price, chars, max_tokens if isinstance(max_tokens, int) and
                             not isinstance(max_tokens, bool) else None)


def token_amount_msat(hold_msat: int, reserve_msat: int) -> int:
    """Whole sats covering both the agent's hold and the node's reserve, plus one: the node's check is on the
    token's face value, and its own float arithmetic may land a hair above our integer estimate."""
    return (ceil_div(max(hold_msat, reserve_msat, 1), MSAT_PER_SAT) + 1) * MSAT_PER_SAT


class RoutstrPay:
    def __init__(self, bus: Bus, config: Config) -> None:
        self.bus = bus
        topup = config.vault.topup if config.vault is not None else None
        self.wait_on_402_s = topup.wait_on_402_s if topup is not None else 0.0
        self.timeout_s = max(config.nats.request_timeout_s, (config.vault.wallet.pay_wait_s + 5.0)
                             if config.vault is not None else 0.0)
        self._background: set[asyncio.Task[None]] = set()

    async def token(self, request_id: str, agent_id: Optional[str], provider: str, amount_msat: int,
                    traceparent: Optional[str]) -> XCashuToken:
        if agent_id is None:
            raise ArbstrError(503, "per-request payment needs paid mode", code="x_cashu_unavailable")
        return await self.bus.ask(exchanges.XCASHU_TOKEN, XCashuRequest(
            request_id=request_id, agent_id=agent_id, provider=provider, amount_msat=amount_msat),
            request_id=request_id, traceparent=traceparent, timeout_s=self.timeout_s)

    async def report(self, payment_id: str, outcome: XCashuOutcome, change: Optional[str],
                     status: Optional[int], request_id: str) -> None:
        """Hand back what the node returned. Failures are logged, not raised: the vault recovers unreported
        payments itself (the change stays claimable at the node)."""
        try:
            result = await self.bus.ask(exchanges.XCASHU_REPORT, XCashuReport(
                payment_id=payment_id, outcome=outcome, change=change, status=status),
                request_id=request_id, timeout_s=REPORT_TIMEOUT_S)
            log.debug("x-cashu payment %s: %s %s", payment_id, result.state, result.outcome)
        except ArbstrError as e:
            log.warning("x-cashu payment %s not reported (%s); the vault recovers it", payment_id, e.message)

    def report_later(self, payment_id: str, outcome: XCashuOutcome, change: Optional[str], status: Optional[int],
                     request_id: str) -> None:
        """On a failure path, where the request falls over to the next provider without waiting for the vault."""
        task = asyncio.ensure_future(self.report(payment_id, outcome, change, status, request_id))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def top_up(self, provider: str, needed_msat: int, request_id: str) -> bool:
        """True when the node's balance now covers ``needed_msat`` (a retry may pass its 402 check)."""
        if self.wait_on_402_s <= 0:
            return False
        try:
            result = await self.bus.ask(exchanges.TOPUP_NOW, TopUpNow(provider=provider, needed_msat=needed_msat),
                                        request_id=request_id, timeout_s=self.wait_on_402_s)
        except ArbstrError as e:
            log.info("request %s: no top-up of %s after its 402 (%s)", request_id, provider, e.message)
            return False
        log.info("request %s: %s after its 402: %s %s", request_id, provider, result.state, result.reason)
        return result.state in ("funded", "topped_up")

    async def close(self) -> None:
        if self._background:
            await asyncio.wait(set(self._background), timeout=REPORT_TIMEOUT_S)
