"""Prepaid balances at Routstr nodes, topped up from the Cashu rail.

Each top-up is an ordinary token payout from the operator account (journaled before the token is made, its token
kept by the wallet under the payout id), then delivered to the node: ``POST /balance/create`` with a JSON body the
first time (``GET ?initial_balance_token=`` on nodes older than 2026-07-24), which names the key ``sk-`` +
sha256(token); ``POST /balance/topup`` after. Top-up ids are numbered per provider, so two vault instances deciding
at once name the same payout and the journal keeps one. A token paid out but not recorded as delivered (a crash, a
lost answer, a lost record) is delivered again before any new one is made: the node answers "already spent" if it
took it, and its balance (credited in all: balance + reserved + spent) tells whether it landed here. A token the
node refuses is taken back into the wallet. Sizes follow the node's 402 rule (``topup_plan``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from typing import Callable, Optional

from nats.aio.client import Client as NATS
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError
from nats.js.kv import KeyValue

from actors.runtime.jetstream import open_bucket
from actors.runtime.netguard import private_host
from actors.runtime.tasks import cancel_and_wait
from schemas import subjects
from schemas.config import TopUpConfig
from schemas.errors import ArbstrError
from schemas.payments import TopUpNow, TopUpResult
from schemas.pricing import ProviderPrices
from schemas.vault import AgentPolicy, DepositRequest, ProviderKey, WithdrawRequest

from . import decide
from .book import Book
from .node_client import Answer, NodeClient
from .rails import Rails
from .rails_core import Execute
from .topup_plan import (Step, credited_msat, delivery_verdict, is_topup_of, key_of, next_step, reserve_need_msat,
                         sizing)

log = logging.getLogger("arbstr.vault.topup")

class TopUps:
    def __init__(self, cfg: TopUpConfig, rails: Rails, book: Book, execute: Execute,
                 owns: Callable[[str], bool] = lambda agent_id: True, public_only: bool = False) -> None:
        self.cfg = cfg
        self.owns = owns  # top-ups run where the operator account's partition is served
        self.public_only = public_only  # nodes from public announcements: tokens go to public addresses only
        self.rails = rails
        self.book = book
        self.execute = execute
        self.client = NodeClient(cfg.timeout_s, public_only)
        self._prices: Optional[KeyValue] = None
        self._keys: Optional[KeyValue] = None
        self._task: Optional[asyncio.Task[None]] = None
        self._locks: dict[str, asyncio.Lock] = {}  # one top-up at a time per provider in this instance
        self.rounds = 0

    async def start(self, nc: NATS, replicas: int) -> None:
        self._prices = await open_bucket(nc, subjects.KV_PRICES, replicas=replicas)
        self._keys = await open_bucket(nc, subjects.KV_PROVIDER_KEYS, replicas=replicas)
        await self.client.start()  # the operator account is made where its partition is owned (_forever)
        self._task = asyncio.create_task(self._forever())

    async def stop(self) -> None:
        await cancel_and_wait(self._task)
        await self.client.close()

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

    # --- which providers -----------------------------------------------------------------------------------
    def eligible(self, p: ProviderPrices) -> bool:
        """Routstr nodes that take our mint and are routable but for the key only we can give them, allow-listed
        when a list is configured."""
        if not (p.kind == "routstr" and p.url and p.payable):
            return False
        if not all(r.startswith("no credential") for r in p.reasons):
            return False
        return not self.cfg.providers or p.provider in self.cfg.providers

    async def entry(self, provider: str) -> Optional[ProviderPrices]:
        assert self._prices is not None
        try:
            got = await self._prices.get(provider)
        except KeyNotFoundError:
            return None
        return ProviderPrices.model_validate_json(got.value) if got.value else None

    async def providers(self) -> list[ProviderPrices]:
        """Providers to fund, no more than ``max_providers`` of them (those already funded first): a flood of
        announcements must not turn into a flood of payouts."""
        assert self._prices is not None
        try:
            keys = await self._prices.keys()
        except NoKeysError:
            return []
        out = []
        for k in keys:
            p = await self.entry(k)
            if p is not None and self.eligible(p):
                out.append(p)
        funded = {pid.split(":", 2)[2].removeprefix("topup-").rsplit("-", 1)[0] for pid in self._payouts("")}
        out.sort(key=lambda p: (p.provider not in funded, p.provider))
        return out[: self.cfg.max_providers]

    async def run_once(self) -> None:
        self.rounds += 1
        if not self.cfg.prepaid_keys:
            return
        for p in await self.providers():
            try:
                await self.top_up(p)
            except Exception as e:
                log.warning("top-up of %s: %s", p.provider, getattr(e, "message", repr(e)))

    # --- one provider --------------------------------------------------------------------------------------
    async def top_up_now(self, req: TopUpNow) -> TopUpResult:
        """A request this node refused with 402 waits on this: one top-up sized to what it needed."""
        entry = await self.entry(req.provider)
        if entry is None or not self.eligible(entry):
            return TopUpResult(provider=req.provider, state="refused", reason="not a node the vault tops up")
        key, _ = await self._load(req.provider)
        if key is None or not key.api_key:
            return TopUpResult(provider=req.provider, state="refused", reason="no prepaid key at this node")
        step = await self.top_up(entry, req.needed_msat)
        key, _ = await self._load(req.provider)
        balance = key.balance_msat if key is not None else None
        if key is not None and key.suspended:
            return TopUpResult(provider=req.provider, state="refused", balance_msat=balance, reason=key.suspended)
        covered = balance is not None and balance >= req.needed_msat
        if not covered:
            return TopUpResult(provider=req.provider, state="pending", balance_msat=balance,
                               reason="the top-up has not landed yet" if step.kind != "none" else
                               "nothing could be paid now")
        return TopUpResult(provider=req.provider, state="funded" if step.kind == "none" else "topped_up",
                           balance_msat=balance)

    async def top_up(self, entry: ProviderPrices, needed_msat: int = 0) -> Step:
        lock = self._locks.setdefault(entry.provider, asyncio.Lock())
        async with lock:
            return await self._top_up(entry, needed_msat)

    async def _top_up(self, entry: ProviderPrices, needed_msat: int) -> Step:
        provider, url = entry.provider, entry.url or ""
        if self.public_only and private_host(url):  # a literal address never reaches the resolver
            raise RuntimeError(f"{provider} is at a private address; not paid")
        key, revision = await self._load(provider)
        info = await self._info(url, key.api_key) if key is not None and key.api_key else None
        balance = info.get("balance") if info is not None else None
        if key is not None and isinstance(balance, int) and balance != key.balance_msat:
            key = key.model_copy(update={"balance_msat": balance, "checked_at_ms": _now_ms()})
            revision = await self._save(key, revision)
        threshold, amount = sizing(self.cfg.min_balance_msat, self.cfg.amount_msat,
                                   reserve_need_msat(entry.node_prices, self.cfg.reserve_cap_msat), needed_msat,
                                   balance if isinstance(balance, int) else None)
        step = next_step(provider, key, balance if isinstance(balance, int) else None, self._payouts(provider),
                         threshold, amount)
        if step.kind == "pay":
            view = await self.rails.withdraw(self.cfg.operator_agent, WithdrawRequest(
                token_hash="", rail="cashu", amount_msat=step.amount_msat, payout_id=step.payout_id))
            if view.status == "succeeded":
                await self._deliver(entry, key, revision, f"tok:{self.cfg.operator_agent}:{step.payout_id}",
                                    view.token, info)
        elif step.kind == "deliver":
            view = await self.rails.payout(self.cfg.operator_agent, step.payout_id)
            await self._deliver(entry, key, revision, step.payout_id, view.token, info)
        return step

    def _payouts(self, provider: str) -> dict[str, str]:
        """Top-up payout id → pending / succeeded / failed, of one provider ("": of every provider)."""
        owner = f"tok:{self.cfg.operator_agent}:"

        def ours(pid: str) -> bool:
            if not pid.startswith(owner):
                return False
            local = pid[len(owner):]
            return is_topup_of(provider, local) if provider else local.startswith("topup-")

        state = self.book.state(self.cfg.operator_agent)
        out = {pid: "pending" for pid in state.payouts if ours(pid)}
        out.update({pid: ("succeeded" if end.kind == "settled" else "failed")
                    for pid, end in state.payouts_done.items() if ours(pid)})
        return out

    async def _deliver(self, entry: ProviderPrices, key: Optional[ProviderKey], revision: Optional[int],
                       payout_id: str, token: str, before: Optional[dict]) -> None:
        if not token:
            raise RuntimeError(f"the wallet shows no token for {payout_id}")
        provider, url = entry.provider, entry.url or ""
        if key is None or not key.api_key:
            answer = await self.client.create(url, token)
            base = key if key is not None else ProviderKey(provider=provider, url=url)
            verdict = delivery_verdict(answer.status, answer.error)
            api_key = key_of(token)
            if verdict == "landed":
                given = answer.body.get("api_key") if isinstance(answer.body, dict) else None
                api_key = given if isinstance(given, str) and given.startswith("sk-") else api_key
            elif verdict == "check":  # made a key on an earlier try? That key answers.
                verdict = "landed" if await self._info(url, api_key) is not None else "lost"
            key, since = base.model_copy(update={"api_key": api_key if verdict == "landed" else base.api_key}), 0
        else:
            answer = await self.client.topup(url, key.api_key, token)
            verdict = delivery_verdict(answer.status, answer.error)
            since = key.credited_msat if key.credited_msat is not None else credited_msat(before)
            if verdict == "check":
                verdict = await self._landed_earlier(provider, url, key, payout_id)
        await self._record(key, revision, payout_id, token, verdict, since, answer)

    async def _landed_earlier(self, provider: str, url: str, key: ProviderKey, payout_id: str) -> str:
        """The node says the token is spent: it landed here if the key's credit rose since the last delivery we
        recorded (only our deposits raise it), else it went elsewhere."""
        if key.credited_msat is None:
            return "unknown"
        now = credited_msat(await self._info(url, key.api_key))
        if now is None:
            return "retry"
        return "landed" if now > key.credited_msat else "lost"

    async def _record(self, key: ProviderKey, revision: Optional[int], payout_id: str, token: str, verdict: str,
                      since: Optional[int], answer: Answer) -> None:
        provider = key.provider
        update: dict[str, object] = {"checked_at_ms": _now_ms()}
        if verdict == "landed":
            info = await self._info(key.url, key.api_key)
            after = credited_msat(info)
            if after is not None and since is not None and after <= since:
                # Paid, and the credit did not move: stop before a node that keeps the tokens drains the account.
                update["suspended"] = f"top-up {payout_id} did not raise the credit ({since} → {after} msat)"
                log.critical("provider %s: %s; no more top-ups until an operator looks", provider, update["suspended"])
            update.update(delivered=[*key.delivered, payout_id], credited_msat=after,
                          balance_msat=info.get("balance") if info is not None else key.balance_msat)
            log.info("topped up %s with %s", provider, payout_id)
        elif verdict == "refused":
            await self._take_back(token, payout_id)
            update.update(returned=[*key.returned, payout_id],
                          suspended=f"the node refused top-up {payout_id} ({answer.error.code or answer.status}); "
                                    "the token was taken back")
            log.error("provider %s: %s", provider, update["suspended"])
        elif verdict in ("lost", "unknown"):
            update["suspended"] = (f"top-up {payout_id} is spent but did not land at this node" if verdict == "lost"
                                   else f"cannot tell whether top-up {payout_id} landed (no earlier credit figure)")
            if verdict == "lost":
                update["lost"] = [*key.lost, payout_id]
            log.critical("provider %s: %s; no more top-ups until an operator looks", provider, update["suspended"])
        else:
            raise RuntimeError(f"delivery of {payout_id}: HTTP {answer.status} {answer.error.code}".strip())
        await self._save(key.model_copy(update=update), revision)

    async def _take_back(self, token: str, payout_id: str) -> None:
        """A token the node refused is still ours: redeemed into the wallet, credited back to the operator."""
        await self.rails.deposit(self.cfg.operator_agent, DepositRequest(token_hash="", rail="cashu", token=token))
        log.info("top-up %s was refused by the node and taken back", payout_id)

    async def _info(self, url: str, api_key: str) -> Optional[dict]:
        try:
            answer = await self.client.info(url, api_key)
        except Exception as e:
            log.warning("balance at %s unknown: %s", url, e)
            return None
        if not answer.ok or not isinstance(answer.body, dict) or not isinstance(answer.body.get("balance"), int):
            log.warning("balance at %s unknown: HTTP %s", url, answer.status)
            return None
        return answer.body

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


def _now_ms() -> int:
    return int(time.time() * 1000)
