"""Prepaid balances at Routstr-style providers, topped up from the Cashu rail.

Each top-up is an ordinary token payout from the operator account (journaled before the token is made, its
token kept by the wallet under the payout id), then delivered to the provider: ``/balance/create`` the first
time (which returns the key the gateway then uses), ``/balance/topup`` after. Top-up ids are numbered per
provider, so two vault instances deciding at once name the same payout and the journal keeps one. A token paid
out but not yet delivered (a crash in between) is delivered before any new one is made.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

import aiohttp
from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from actors.netguard import private_host, public_connector
from actors.runtime import cancel_and_wait, open_bucket
from schemas import subjects
from schemas.config import TopUpConfig
from schemas.errors import ArbstrError
from schemas.pricing import ProviderPrices
from schemas.vault import AgentPolicy, ProviderKey, WithdrawRequest

from . import decide
from .book import Book
from .rails import Execute, Rails

log = logging.getLogger("arbstr.vault.topup")


@dataclass(frozen=True)
class Step:
    """What to do next for one provider: deliver a paid top-up, pay a new one, or nothing."""

    kind: str  # "deliver" | "pay" | "none"
    payout_id: str = ""


def topup_prefix(provider: str) -> str:
    return f"topup-{provider}-"


def next_step(provider: str, key: Optional[ProviderKey], balance_msat: Optional[int], payouts: dict[str, str],
              min_balance_msat: int) -> Step:
    """Pure: ``payouts`` maps this provider's top-up payout ids (``tok:<operator>:topup-<provider>-<n>``) to
    their status (pending / succeeded / failed)."""
    if key is not None and key.suspended:
        return Step("none")  # an operator must look at it first
    delivered = set(key.delivered) if key is not None else set()
    if any(status == "pending" for status in payouts.values()):
        return Step("none")  # one under way: its driver resolves it
    undelivered = sorted((pid for pid, st in payouts.items() if st == "succeeded" and pid not in delivered),
                         key=_number)
    if undelivered:
        return Step("deliver", undelivered[0])
    if key is not None and key.api_key and (balance_msat is None or balance_msat >= min_balance_msat):
        return Step("none")  # funded (or its balance unknown right now: never pay blind)
    n = max((_number(pid) for pid in payouts), default=0) + 1
    return Step("pay", f"{topup_prefix(provider)}{n}")


def _number(payout_id: str) -> int:
    try:
        return int(payout_id.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return 0


class TopUps:
    def __init__(self, cfg: TopUpConfig, rails: Rails, book: Book, execute: Execute,
                 owns: Callable[[str], bool] = lambda agent_id: True, public_only: bool = False) -> None:
        self.cfg = cfg
        self.owns = owns  # top-ups run where the operator account's partition is served
        self.public_only = public_only  # nodes from public announcements: tokens go to public addresses only
        self.rails = rails
        self.book = book
        self.execute = execute
        self._prices: Optional[KeyValue] = None
        self._keys: Optional[KeyValue] = None
        self._session: Optional[aiohttp.ClientSession] = None
        self._task: Optional[asyncio.Task[None]] = None
        self.rounds = 0

    async def start(self, nc: NATS, replicas: int) -> None:
        self._prices = await open_bucket(nc, subjects.KV_PRICES, replicas=replicas)
        self._keys = await open_bucket(nc, subjects.KV_PROVIDER_KEYS, replicas=replicas)
        connector = public_connector() if self.public_only else None
        self._session = aiohttp.ClientSession(connector=connector,
                                              timeout=aiohttp.ClientTimeout(total=self.cfg.timeout_s))
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        if self._session is not None:
            await self._session.close()

    async def _ensure_operator(self) -> None:
        """The account top-ups are paid from; nobody holds a token for it (the hash of a random secret)."""
        name = self.cfg.operator_agent
        unusable = hashlib.sha256(os.urandom(32)).hexdigest()
        policy = AgentPolicy(daily_limit_msat=self.cfg.daily_limit_msat)  # a hostile node cannot drain it
        try:
            await self.execute(name, lambda s, at: decide.create_agent(s, name, unusable, policy, at))
        except ArbstrError as e:
            if e.code != "agent_exists":
                raise

    async def _forever(self) -> None:
        while True:
            try:
                if self.owns(self.cfg.operator_agent):
                    if not self.book.state(self.cfg.operator_agent).created:
                        await self._ensure_operator()
                    await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("provider top-up round failed")
            await asyncio.sleep(self.cfg.interval_s)

    async def providers(self) -> list[ProviderPrices]:
        """Routstr-style providers to fund: payable (they take our mint), routable but for the key only we can
        give them, allow-listed when a list is configured, and no more than ``max_providers`` of them (those
        already funded first): a flood of announcements must not turn into a flood of payouts."""
        assert self._prices is not None
        try:
            keys = await self._prices.keys()
        except NoKeysError:
            return []
        out = []
        for k in keys:
            try:
                entry = await self._prices.get(k)
            except KeyNotFoundError:
                continue
            if not entry.value:
                continue
            p = ProviderPrices.model_validate_json(entry.value)
            if not (p.kind == "routstr" and p.url and p.payable):
                continue
            if not all(r.startswith("no credential") for r in p.reasons):
                continue
            if self.cfg.providers and p.provider not in self.cfg.providers:
                continue
            out.append(p)
        funded = {pid.split(":", 2)[2].removeprefix("topup-").rsplit("-", 1)[0] for pid in self._payouts("")}
        out.sort(key=lambda p: (p.provider not in funded, p.provider))
        return out[: self.cfg.max_providers]

    async def run_once(self) -> None:
        self.rounds += 1
        for p in await self.providers():
            try:
                await self.top_up(p.provider, p.url or "")
            except Exception as e:
                log.warning("top-up of %s: %s", p.provider, getattr(e, "message", repr(e)))

    async def top_up(self, provider: str, url: str) -> Step:
        if self.public_only and private_host(url):  # a literal address never reaches the resolver
            raise RuntimeError(f"{provider} is at a private address; not paid")
        key, revision = await self._load(provider)
        balance = await self._balance(url, key) if key is not None and key.api_key else None
        if key is not None and balance is not None and balance != key.balance_msat:
            key = key.model_copy(update={"balance_msat": balance, "checked_at_ms": int(time.time() * 1000)})
            revision = await self._save(key, revision)
        step = next_step(provider, key, balance, self._payouts(provider), self.cfg.min_balance_msat)
        if step.kind == "pay":
            view = await self.rails.withdraw(self.cfg.operator_agent, WithdrawRequest(
                token_hash="", rail="cashu", amount_msat=self.cfg.amount_msat, payout_id=step.payout_id))
            if view.status == "succeeded":
                await self._deliver(provider, url, key, revision, view.payout_id, view.token, balance)
        elif step.kind == "deliver":
            view = await self.rails.payout(self.cfg.operator_agent, step.payout_id)
            await self._deliver(provider, url, key, revision, step.payout_id, view.token, balance)
        return step

    def _payouts(self, provider: str) -> dict[str, str]:
        """Top-up payout id → pending / succeeded / failed, of one provider ("": of every provider)."""
        prefix = f"tok:{self.cfg.operator_agent}:{topup_prefix(provider) if provider else 'topup-'}"
        state = self.book.state(self.cfg.operator_agent)
        out = {pid: "pending" for pid in state.payouts if pid.startswith(prefix)}
        out.update({pid: ("succeeded" if end.kind == "settled" else "failed")
                    for pid, end in state.payouts_done.items() if pid.startswith(prefix)})
        return out

    async def _deliver(self, provider: str, url: str, key: Optional[ProviderKey], revision: Optional[int],
                       payout_id: str, token: str, before: Optional[int]) -> None:
        if not token:
            raise RuntimeError(f"the wallet shows no token for {payout_id}")
        assert self._session is not None
        if key is None or not key.api_key:
            async with self._session.post(f"{url}/balance/create", params={"initial_balance_token": token}) as r:
                body = await _json(r, "balance/create")
            key = ProviderKey(provider=provider, url=url, api_key=str(body["api_key"]))
            before = 0
        else:
            async with self._session.post(f"{url}/balance/topup", json={"cashu_token": token},
                                          headers={"Authorization": f"Bearer {key.api_key}"}) as r:
                await _json(r, "balance/topup")
        after = await self._balance(url, key)
        suspended = ""
        if after is not None and before is not None and after <= before:
            # Paid, and the balance did not move: stop before a node that keeps the tokens drains the account.
            suspended = f"top-up {payout_id} did not raise the balance ({before} → {after} msat)"
            log.critical("provider %s: %s; no more top-ups until an operator looks", provider, suspended)
        key = key.model_copy(update={"delivered": [*key.delivered, payout_id], "balance_msat": after,
                                     "checked_at_ms": int(time.time() * 1000), "suspended": suspended})
        await self._save(key, revision)
        log.info("topped up %s with %s", provider, payout_id)

    async def _balance(self, url: str, key: ProviderKey) -> Optional[int]:
        assert self._session is not None
        try:
            async with self._session.get(f"{url}/balance/info",
                                         headers={"Authorization": f"Bearer {key.api_key}"}) as r:
                body = await _json(r, "balance/info")
            return int(body["balance"])
        except Exception as e:
            log.warning("balance of %s unknown: %s", url, e)
            return None

    async def _load(self, provider: str) -> tuple[Optional[ProviderKey], Optional[int]]:
        assert self._keys is not None
        try:
            entry = await self._keys.get(provider)
        except KeyNotFoundError:
            return None, None
        return (ProviderKey.model_validate_json(entry.value) if entry.value else None), entry.revision

    async def _save(self, key: ProviderKey, revision: Optional[int]) -> int:
        """Compare-and-set: another instance's newer record is never overwritten with a stale copy."""
        assert self._keys is not None
        data = key.model_dump_json().encode()
        try:
            if revision is None:
                return await self._keys.create(key.provider, data)
            return await self._keys.update(key.provider, data, last=revision)
        except KeyWrongLastSequenceError:
            raise RuntimeError(f"the record of {key.provider} changed meanwhile; next round") from None


async def _json(r: aiohttp.ClientResponse, what: str) -> Any:
    if r.status >= 400:
        # The body may echo the token back: never log it, only the status.
        raise RuntimeError(f"{what}: HTTP {r.status}")
    return await r.json(content_type=None)
