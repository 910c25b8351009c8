"""The vault actor: a thin shell that decodes a message, runs a pure decider on the agent's folded state,
journals the events with optimistic concurrency, and replies.

Any instance may serve any agent: decisions are made on the state as of the agent's newest journal entry,
and an append whose expectation is stale (10071) catches up and decides again — finding its own op_id
when the "lost" write had in fact landed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import secrets
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from actors.netguard import private_urls_allowed
from actors.runtime import Endpoint, admin_token_hash, cancel_and_wait, check_admin
from schemas import subjects
from schemas.config import Config, VaultConfig
from schemas.errors import ArbstrError
from schemas.payments import TopUpNow, TopUpResult, XCashuReport, XCashuRequest, XCashuResult, XCashuToken
from schemas.ledger import Denied, Expired, JournalEntry, LedgerEvent, Released, Settled, verify_chain
from schemas.requests import RequestList, RequestsQuery, StatsQuery, StatsReply
from schemas.vault import (AccountView, AgentDeposit, AgentList, AgentPolicy, AgentRef, Approval, ApprovalAction,
                           ApprovalList, ApprovalResult, Books, ChainCheck, ClearFreeze, CreateAgent, DepositCommand, DepositReply,
                           DepositRequest, Empty, History, HistoryQuery, PayoutList, PayoutRef, PayoutView,
                           Reconciliation, ReserveReply, ReserveRequest, RotateToken, SetPolicy, SettleCommand,
                           SpendEvent, TokenRef, TokenRevoked, WithdrawRequest)

from . import decide
from .book import Book
from .fold import AccountState, next_events, view
from .journal import Conflict, Journal, ensure_streams, settle_consumer_config
from .holds import HoldTimers
from .projection import Projection
from .request_log import RequestLog
from .claims import Claims
from .freeze import FreezeSwitch
from .rails import Rails
from .topup import TopUps
from .xcashu import PerRequestPayments
from .wallets import build_wallet
from .wallets.base import Wallet

log = logging.getLogger("arbstr.vault")

VERSION = "0.1.0"
APPEND_BUDGET_S = 5.0  # optimistic retries of one command before the caller gets a 503
Decider = Callable[[AccountState, int], decide.Decided]


@dataclass(frozen=True)
class Written:
    decided: decide.Decided
    state: AccountState
    events: list[LedgerEvent]  # what this call journaled; empty when the command was a no-op
    # An append of this call met a conflict: a "duplicate" no-op may then be this call's own write, whose ack was
    # lost, rather than another caller's earlier one.
    conflicted: bool = False


def now_ms() -> int:
    return int(time.time() * 1000)


def unauthorized() -> ArbstrError:
    return ArbstrError(401, "invalid or missing bearer token", code="invalid_api_key")


class VaultActor:
    service_name = subjects.SERVICE_VAULT
    version = VERSION
    description = "arbstr vault: per-agent sub-accounts, two-phase holds, policies and approvals on a JetStream journal"

    def __init__(self, config: Config, wallet: Optional[Wallet] = None) -> None:
        if config.vault is None:
            raise ValueError("the vault needs a [vault] section in the config")
        self.config = config
        self.vc: VaultConfig = config.vault
        self.admin_hash = admin_token_hash(config)  # admin commands are checked against this, not the gateway's word
        self.book = Book(on_events=self._on_events, on_ordered=self._on_ordered)
        self.wallet: Wallet = wallet if wallet is not None else build_wallet(self.vc.wallet)
        self.freeze = FreezeSwitch()
        self.claims = Claims(instance=secrets.token_hex(8))
        self.rails = Rails(self.vc.wallet, self.wallet, self.book, self.execute, self.freeze, self.claims,
                           self._caught_up)
        self.topups = TopUps(self.vc.topup, self.rails, self.book, self.execute,
                             public_only=not private_urls_allowed(config.market.nostr)) if self.vc.topup else None
        self.x_cashu = PerRequestPayments(self.topups, self.claims, self._caught_up) \
            if self.topups is not None else None
        self.projection = Projection(self.vc.duckdb_path)
        self.request_log = RequestLog(self.projection)
        self.nc: Optional[NATS] = None
        self.journal: Optional[Journal] = None
        # (agent id, rid) -> the wake-up of a reserve waiting for its approval. Keyed by agent too: two agents'
        # requests may share a rid, and one's decision must neither wake nor strand the other's wait.
        self._waiters: dict[tuple[str, str], set[asyncio.Event]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._settle_sem = asyncio.Semaphore(256)
        self._running = False
        self._inflight: set[asyncio.Task[None]] = set()
        self._settle_sub: Optional[Any] = None
        self.timers: Optional[HoldTimers] = None
        self._catchup: Optional[asyncio.Future[None]] = None
        self._catchup_started = 0.0
        self.conflicts = 0  # 10071s met: another writer won, or our own lost-ack write had landed

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self, nc: NATS) -> None:
        self.nc = nc
        await ensure_streams(nc, self.vc.replicas)
        self.journal = Journal(nc)
        target = await self.journal.stream_last_seq()
        await self.journal.follow(self.book.apply_entry, self.book.already_applied)
        if target:
            await self.journal.wait_applied(target, timeout_s=120)
        self.projection.flush()
        await self.request_log.follow(nc)
        await self.freeze.start(nc, self.vc.replicas)
        await self.claims.start(nc, self.vc.replicas)
        await self.rails.start()
        if self.topups is not None:
            await self.topups.start(nc, self.vc.replicas)
        if self.x_cashu is not None:
            await self.x_cashu.start()
        self.timers = HoldTimers(nc, self.vc.replicas, self.vc.hold_ttl_s, self.expire_one)
        await self.timers.start()
        self._running = True
        self._tasks = [asyncio.create_task(self._consume_settles()),
                       asyncio.create_task(self._sweep_forever()),
                       asyncio.create_task(self._flush_projection_forever())]
        log.info("vault ready: %d agents, ledger at seq %d", len(self.book.agents()), target)

    async def stop(self) -> None:
        self._running = False
        # The settle consumer finishes its current fetch (≤ 1 s) and hands over what it got: cancelling it
        # mid-fetch would strand delivered messages until the consumer's ack wait.
        if self._tasks:
            await asyncio.wait([self._tasks[0]], timeout=2.0)
        await cancel_and_wait(*self._tasks)
        if self._inflight:
            await asyncio.wait(set(self._inflight), timeout=10)
        if self.x_cashu is not None:
            await self.x_cashu.stop()
        if self.topups is not None:
            await self.topups.stop()
        await self.rails.stop()
        await self.freeze.stop()
        if self.timers is not None:
            await self.timers.stop()
        if self._settle_sub is not None:
            try:
                await self._settle_sub.unsubscribe()
            except Exception:
                pass
        if self.journal is not None:
            await self.journal.stop()
        await self.request_log.stop()
        try:
            self.request_log.flush()
        except Exception:
            log.exception("request log flush failed")
        self.projection.close()

    def stats(self) -> dict[str, int]:
        """For `nats micro stats` and the gateways' /metrics: how often optimistic concurrency had to retry."""
        return {"conflicts": self.conflicts,
                "ledger_seq": self.journal.applied_seq if self.journal is not None else 0}

    def endpoints(self) -> list[Endpoint]:
        a, ad = subjects.vault_agent, subjects.vault_admin

        def admin(name: str, op: str, model: Any, handler: Any) -> Endpoint:
            # Money and identities move on the operator's say-so only: the command carries the admin token,
            # checked here too, so a gateway's bus credential alone can neither mint nor move money.
            return Endpoint(name, ad(op), model, handler, auth="admin")

        return [
            Endpoint("reserve", subjects.VAULT_RESERVE, ReserveRequest, self._reserve),
            Endpoint("await-approval", subjects.VAULT_AWAIT_APPROVAL, ReserveRequest, self._wait_approval),
            Endpoint("release", subjects.VAULT_RELEASE, SettleCommand, self._release_now),
            Endpoint("settle", subjects.VAULT_SETTLE, SettleCommand, self._release_now),
            Endpoint("xcashu-token", subjects.VAULT_XCASHU_TOKEN, XCashuRequest, self._x_cashu_token),
            Endpoint("xcashu-report", subjects.VAULT_XCASHU_REPORT, XCashuReport, self._x_cashu_report),
            Endpoint("topup-now", subjects.VAULT_TOPUP_NOW, TopUpNow, self._top_up_now),
            Endpoint("agent-me", a("me"), TokenRef, self._me),
            Endpoint("agent-history", a("history"), HistoryQuery, self._my_history),
            Endpoint("agent-deposit", a("deposit"), DepositRequest, self._my_deposit),
            Endpoint("agent-withdraw", a("withdraw"), WithdrawRequest, self._my_withdraw),
            Endpoint("agent-payout", a("payout"), PayoutRef, self._my_payout),
            Endpoint("agent-payouts", a("payouts"), TokenRef, self._my_payouts),
            admin("admin-create-agent", "create_agent", CreateAgent, self._create_agent),
            admin("admin-list-agents", "list_agents", Empty, self._list_agents),
            admin("admin-get-agent", "get_agent", AgentRef, self._get_agent),
            admin("admin-set-policy", "set_policy", SetPolicy, self._set_policy),
            admin("admin-rotate-token", "rotate_token", RotateToken, self._rotate_token),
            admin("admin-deposit", "deposit", DepositCommand, self._deposit),
            admin("admin-deposit-token", "deposit_token", AgentDeposit, self._deposit_token),
            admin("admin-approvals", "approvals", Empty, self._approvals),
            admin("admin-approve", "approve", ApprovalAction, self._approve),
            admin("admin-deny", "deny", ApprovalAction, self._deny),
            admin("admin-audit", "audit", HistoryQuery, self._audit),
            admin("admin-books", "books", Empty, self._books),
            admin("admin-verify", "verify", Empty, self._verify),
            admin("admin-payouts", "payouts", AgentRef, self._payouts),
            admin("admin-reconcile", "reconcile", Empty, self._reconcile),
            admin("admin-reconcile-clear", "reconcile_clear", ClearFreeze, self._reconcile_clear),
            # Reports: the operator's (admin token) or an agent's own (its token hash scopes them).
            Endpoint("admin-stats", ad("stats"), StatsQuery, self._stats),
            Endpoint("admin-requests", ad("requests"), RequestsQuery, self._requests),
        ]

    # --- the write path --------------------------------------------------------------------------------
    async def execute(self, agent_id: str, decider: Decider) -> Written:
        """Decide on the agent's newest state and journal the result; one writer per agent per instance."""
        assert self.journal is not None
        if agent_id in self.book.corrupt:
            raise ArbstrError(503, "this account's journal does not verify; it is frozen", code="ledger_corrupt")
        slot = self.book.slot(agent_id)
        called = time.monotonic()  # anything the caller saw acked was acked before this
        async with slot.lock:
            deadline = time.monotonic() + APPEND_BUDGET_S
            attempt = 0
            caught_up = False
            conflicted = False
            while time.monotonic() < deadline:
                attempt += 1
                at = now_ms()
                try:
                    decided = decider(slot.state, at)
                except ArbstrError as refusal:
                    # A refusal (402, 404, 409, …) on a view that is behind another instance's acked write would
                    # be wrong: catch up, and decide again if anything arrived. One catch-up that started after
                    # this call began covers it, so a storm of refusals on one agent costs one round trip.
                    if refusal.status >= 500 or caught_up or slot.caught_up_at >= called:
                        raise
                    seen = slot.state.seq
                    started = time.monotonic()
                    await self._catch_up(agent_id)
                    slot.caught_up_at = started
                    caught_up = True
                    if slot.state.seq == seen:
                        raise
                    continue
                if not decided.bodies:
                    return Written(decided, slot.state, [], conflicted)
                events = next_events(slot.state, decided.op_id, decided.bodies, at)
                entry = JournalEntry(op_id=decided.op_id, agent_id=agent_id, events=events)
                try:
                    seq = await self.journal.append(entry, slot.stream_seq)
                except Conflict:
                    self.conflicts += 1
                    conflicted = True
                    await self._catch_up(agent_id)
                    if attempt > 1:  # a hot agent on several instances: back off so one of them wins
                        await asyncio.sleep(random.uniform(0, min(0.05, 0.001 * 2 ** attempt)))
                    continue
                self.book.apply_entry(entry, seq, in_order=False)
                return Written(decided, slot.state, events, conflicted)
        raise ArbstrError(503, "the account is busy; try again", code="ledger_contention",
                          headers={"retry-after": "1"})

    async def _catch_up(self, agent_id: str) -> None:
        assert self.journal is not None
        last = await self.journal.last_seq_of(agent_id)
        await self.journal.wait_applied(last)

    def _on_ordered(self, events: list[LedgerEvent], stream_seq: int) -> None:
        self.projection.add(events, stream_seq)

    def _on_events(self, events: list[LedgerEvent], stream_seq: int, state: AccountState) -> None:
        self.rails.on_events(events)
        for e in events:
            rid = getattr(e.body, "rid", None)
            for waiter in self._waiters.get((e.agent_id, rid), ()) if rid is not None else ():
                waiter.set()

    async def _publish_spend(self, state: AccountState, events: list[LedgerEvent], request_id: str,
                             cmd: Optional[SettleCommand] = None) -> None:
        """One spend event per resolution; its id is stable, so a republish is deduplicated by the stream."""
        assert self.nc is not None
        for e in events:
            b = e.body
            if not isinstance(b, (Settled, Released, Expired, Denied)):
                continue
            res = state.resolutions.get(b.rid)
            hold = res.hold if res is not None else None
            ev = SpendEvent(
                event_id=f"{e.agent_id}:{e.seq}", kind=b.kind, agent_id=e.agent_id, request_id=b.rid,
                provider=getattr(b, "provider", "") or (hold.provider if hold else ""),
                model=getattr(b, "model", "") or (hold.model if hold else ""),
                input_tokens=getattr(b, "input_tokens", 0), output_tokens=getattr(b, "output_tokens", 0),
                cost_msat=getattr(b, "cost_msat", getattr(b, "charged_msat", 0)),
                charged_msat=getattr(b, "charged_msat", 0), uncollectible_msat=getattr(b, "uncollectible_msat", 0),
                reserved_msat=hold.amount_msat if hold else 0, balance_msat=state.available_msat,
                estimated=getattr(b, "estimated", False),
                flagged=isinstance(b, Expired) and b.action == "charge", reason=getattr(b, "reason", ""),
                at_ms=e.at_ms, ledger_seq=e.seq,
                provider_cost_msat=cmd.provider_cost_msat if cmd is not None and isinstance(b, Settled) else None,
                cost_drift=bool(cmd is not None and isinstance(b, Settled) and cmd.cost_drift))
            try:
                await self.nc.publish(subjects.spend(e.agent_id), ev.model_dump_json().encode(),
                                      headers={subjects.H_MSG_ID: f"spend:{ev.event_id}",
                                               subjects.H_REQUEST_ID: request_id})
            except Exception:
                log.warning("could not publish spend event %s", ev.event_id)

    async def _caught_up(self) -> None:
        """Apply everything the stream has now: another instance may have acked a write we have not folded.

        Callers share one round trip: a catch-up that started after a caller arrived covers that caller, so a flood
        of unknown tokens or admin reads cannot turn into a flood of JetStream requests."""
        arrived = time.monotonic()
        task = self._catchup
        if task is None or self._catchup_started < arrived:
            if task is None or task.done():
                self._catchup_started = time.monotonic()
                task = self._catchup = asyncio.ensure_future(self._catch_up_all())
            else:
                await asyncio.shield(task)  # one in flight began before us: wait for it, then start our own
                return await self._caught_up()
        await asyncio.shield(task)

    async def _catch_up_all(self) -> None:
        assert self.journal is not None
        await self.journal.wait_applied(await self.journal.stream_last_seq())

    async def _agent_for(self, token_hash: str) -> str:
        agent_id = self.book.agent_by_token(token_hash)
        if agent_id is None:
            await self._caught_up()  # a token issued a moment ago through another instance
            agent_id = self.book.agent_by_token(token_hash)
        if agent_id is None:
            raise unauthorized()
        return agent_id

    # --- paying Routstr nodes --------------------------------------------------------------------------
    def _payments(self) -> PerRequestPayments:
        if self.x_cashu is None:
            raise ArbstrError(503, "this vault pays no providers ([vault.topup] is not configured)",
                              code="topup_unavailable")
        return self.x_cashu

    async def _x_cashu_token(self, req: XCashuRequest, headers: dict[str, str]) -> XCashuToken:
        self.freeze.check()
        return await self._payments().issue(req)

    async def _x_cashu_report(self, req: XCashuReport, headers: dict[str, str]) -> XCashuResult:
        return await self._payments().report(req)

    async def _top_up_now(self, req: TopUpNow, headers: dict[str, str]) -> TopUpResult:
        self.freeze.check()
        return await self._payments().topups.top_up_now(req)

    # --- reserve ---------------------------------------------------------------------------------------
    async def _reserve(self, req: ReserveRequest, headers: dict[str, str]) -> ReserveReply:
        agent_id = await self._agent_for(req.token_hash)
        self.freeze.check()
        ttl_ms = self.vc.hold_ttl_s * 1000
        rid = req.request_id
        w = await self.execute(agent_id, lambda s, at: decide.reserve(
            s, rid, req.envelope, at, ttl_ms=ttl_ms, provider=req.provider, model=req.model, attempt=req.attempt))
        if w.decided.noop == "duplicate" and not req.attempt and not w.conflicted:
            # A caller naming no attempt sends a reserve once: a second one with this id is another request reusing
            # it, and a hold shared by two upstream calls would let one of them go unpaid. (A repeat of a named
            # attempt is the same reserve delivered again: it is answered from its hold.)
            raise ArbstrError(409, f"request id {rid!r} was already used by this agent; send a new X-Request-Id",
                              code="request_id_reused", param="X-Request-Id", headers={"x-should-retry": "false"})
        reply = self._hold_reply(agent_id, rid, w.state, req.attempt)
        if self.timers is not None:
            await self.timers.arm(agent_id, rid, (reply.expires_at_ms - now_ms()) / 1000)
        return reply

    async def _wait_approval(self, req: ReserveRequest, headers: dict[str, str]) -> ReserveReply:
        """The second half of a reserve that needs approval: answers when it is approved, denied or timed out."""
        agent_id = await self._agent_for(req.token_hash)
        hold = self.book.slot(agent_id).state.holds.get(req.request_id)
        state = self.book.slot(agent_id).state
        if hold is not None and hold.state == "awaiting_approval" and hold.attempt == req.attempt:
            state = await self._await_approval(agent_id, req.request_id, hold.approval_deadline_ms or now_ms())
        return self._hold_reply(agent_id, req.request_id, state, req.attempt)

    def _hold_reply(self, agent_id: str, rid: str, state: AccountState, attempt: str = "") -> ReserveReply:
        hold = state.holds.get(rid)
        if hold is not None and hold.attempt != attempt:
            hold = None  # another attempt's hold: this one ended (and the rid was reserved again since)
        if hold is None:
            res = state.resolutions.get(rid)
            if res is not None and res.kind == "denied" and res.hold.attempt == attempt:
                code = "approval_timeout" if res.reason == decide.APPROVAL_TIMEOUT else "approval_denied"
                raise ArbstrError(403, f"the spend was not approved ({res.reason or 'denied'})", code=code,
                                  headers={"x-should-retry": "false"})
            raise ArbstrError(409, f"request {rid} was already resolved", code="request_resolved")
        return ReserveReply(request_id=rid, agent_id=agent_id, amount_msat=hold.amount_msat,
                            output_tokens=hold.output_tokens, expires_at_ms=hold.expires_at_ms,
                            balance_msat=state.available_msat, state=hold.state,
                            approval_deadline_ms=hold.approval_deadline_ms)

    async def _await_approval(self, agent_id: str, rid: str, deadline_ms: int) -> AccountState:
        """Hold the reply until a human approves or denies, or the deadline denies it for them."""
        key = (agent_id, rid)
        event = asyncio.Event()
        self._waiters.setdefault(key, set()).add(event)
        try:
            while True:
                hold = self.book.slot(agent_id).state.holds.get(rid)
                if hold is None or hold.state != "awaiting_approval":
                    return self.book.slot(agent_id).state
                remaining = deadline_ms - now_ms()
                if remaining <= 0:
                    w = await self.execute(agent_id, lambda s, at: decide.expire(s, rid, at, self.vc.expiry_action))
                    await self._publish_spend(w.state, w.events, rid)
                    continue
                event.clear()
                try:
                    await asyncio.wait_for(event.wait(), remaining / 1000 + 0.01)
                except asyncio.TimeoutError:
                    pass
        finally:
            waiting = self._waiters.get(key)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[key]

    # --- settle / release ------------------------------------------------------------------------------
    async def apply_settle(self, cmd: SettleCommand) -> None:
        agent_id = cmd.agent_id or (self.book.agent_by_token(cmd.token_hash) if cmd.token_hash else None)
        if agent_id is None or agent_id not in self.book.slots or not self.book.slots[agent_id].state.created:
            await self._caught_up()  # never drop a durable command on a view that is merely behind
            agent_id = cmd.agent_id or (self.book.agent_by_token(cmd.token_hash) if cmd.token_hash else None)
        if agent_id is None or agent_id not in self.book.slots or not self.book.slots[agent_id].state.created:
            log.warning("%s of %s names no known agent; nothing to do", cmd.kind, cmd.request_id)
            return
        rid = cmd.request_id
        if cmd.kind == "settle":
            decider: Decider = lambda s, at: decide.settle(
                s, rid, cmd.cost_msat, at, input_tokens=cmd.input_tokens, output_tokens=cmd.output_tokens,
                provider=cmd.provider, model=cmd.model, estimated=cmd.estimated, attempt=cmd.attempt)
        else:
            decider = lambda s, at: decide.release(s, rid, cmd.reason or "released", at, attempt=cmd.attempt)
        w = await self.execute(agent_id, decider)
        await self._publish_spend(w.state, w.events, rid, cmd)

    async def _release_now(self, cmd: SettleCommand, headers: dict[str, str]) -> Empty:
        """Synchronous settle/release (tools and tests); gateways use the ARBSTR_SETTLE work queue."""
        await self.apply_settle(cmd)
        return Empty()

    async def _consume_settles(self) -> None:
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
                    # Stopping: hand the rest of the batch back now rather than after the ack wait.
                    for rest in msgs[i:]:
                        try:
                            await rest.nak()
                        except Exception:
                            pass
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
            try:
                await self.apply_settle(cmd)
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

    # --- expiry ----------------------------------------------------------------------------------------
    async def sweep(self) -> int:
        """Resolve every hold past its TTL (and every approval past its deadline); returns how many."""
        at = now_ms()
        due: list[tuple[str, str]] = []
        unanswered: list[tuple[str, str]] = []
        for agent_id, slot in list(self.book.slots.items()):
            for rid, hold in list(slot.state.holds.items()):
                deadline = hold.approval_deadline_ms if hold.state == "awaiting_approval" else hold.expires_at_ms
                if deadline is not None and deadline <= at and (agent_id, rid) not in self._waiters:
                    due.append((agent_id, rid))
            unanswered += [(agent_id, pid) for pid, p in slot.state.payouts.items()
                           if p.approval_deadline_ms is not None and p.approval_deadline_ms <= at]
        n = 0
        for agent_id, rid in due:
            n += await self.expire_one(agent_id, rid)
        for agent_id, pid in unanswered:  # nobody approved in time: released, never sent
            try:
                await self.execute(agent_id, lambda s, t, pid=pid: decide.fail_payout(
                    s, pid, "approval timed out", t))
                n += 1
            except ArbstrError as e:
                log.warning("approval timeout of payout %s: %s", pid, e.message)
        return n

    async def expire_one(self, agent_id: str, rid: str) -> int:
        """Expire one hold if it is due (a timer's marker or the sweep); 1 if this call resolved it."""
        if (agent_id, rid) in self._waiters or agent_id not in self.book.slots:
            return 0  # an approval this instance is waiting on is resolved by that wait
        try:
            w = await self.execute(agent_id, lambda s, t: decide.expire(s, rid, t, self.vc.expiry_action))
        except ArbstrError as e:
            if e.code != "not_expired":
                log.warning("expiry of %s: %s", rid, e.message)
            return 0
        if not w.events:
            return 0
        log.warning("hold %s of %s expired (%s)", rid, agent_id, self.vc.expiry_action)
        await self._publish_spend(w.state, w.events, rid)
        return 1

    async def _sweep_forever(self) -> None:
        while self._running:
            await asyncio.sleep(self.vc.sweep_interval_s)
            try:
                await self.sweep()
            except Exception:
                log.exception("sweep failed")

    async def _flush_projection_forever(self) -> None:
        while self._running:
            await asyncio.sleep(0.5)
            try:
                await self.projection.flush_async()
                await self.request_log.flush_async()
            except Exception:
                log.exception("projection flush failed")

    # --- reports (the request log) ---------------------------------------------------------------------
    async def _report_scope(self, agent_id: Optional[str], token_hash: Optional[str], headers: dict[str, str]
                            ) -> Optional[str]:
        """The agent a report may cover: any (admin token), or only the agent whose token hash came with it."""
        if token_hash:
            own = await self._agent_for(token_hash)
            if agent_id not in (None, own):
                raise ArbstrError(403, "an agent token sees only its own requests", code="forbidden", param="agent")
            return own
        check_admin(headers, self.admin_hash)
        return agent_id

    async def _stats(self, req: StatsQuery, headers: dict[str, str]) -> StatsReply:
        req.agent_id = await self._report_scope(req.agent_id, req.token_hash, headers)
        return await asyncio.to_thread(self.request_log.stats, req)

    async def _requests(self, req: RequestsQuery, headers: dict[str, str]) -> RequestList:
        req.agent_id = await self._report_scope(req.agent_id, req.token_hash, headers)
        return await asyncio.to_thread(self.request_log.requests, req)

    # --- agent endpoints -------------------------------------------------------------------------------
    async def _me(self, req: TokenRef, headers: dict[str, str]) -> AccountView:
        agent_id = await self._agent_for(req.token_hash)
        await self._caught_up()
        return view(self.book.slot(agent_id).state)

    async def _my_history(self, req: HistoryQuery, headers: dict[str, str]) -> History:
        if not req.token_hash:
            raise unauthorized()
        agent_id = await self._agent_for(req.token_hash)  # an agent sees only its own account
        await self._projection_current()
        return History(items=self.projection.history(agent_id, req.since_ms, req.limit))

    async def _my_deposit(self, req: DepositRequest, headers: dict[str, str]) -> DepositReply:
        return await self.rails.deposit(await self._agent_for(req.token_hash), req)

    async def _my_withdraw(self, req: WithdrawRequest, headers: dict[str, str]) -> PayoutView:
        return await self.rails.withdraw(await self._agent_for(req.token_hash), req)

    async def _my_payout(self, req: PayoutRef, headers: dict[str, str]) -> PayoutView:
        if not req.token_hash:
            raise unauthorized()
        return await self.rails.payout(await self._agent_for(req.token_hash), req.payout_id)

    async def _my_payouts(self, req: TokenRef, headers: dict[str, str]) -> PayoutList:
        return self.rails.payouts(await self._agent_for(req.token_hash))

    # --- admin endpoints -------------------------------------------------------------------------------
    async def _known(self, agent_id: str) -> AccountState:
        """The agent's state with every write acked so far (by any instance) applied: operators read their writes."""
        await self._caught_up()
        slot = self.book.slots.get(agent_id)
        if slot is None or not slot.state.created:
            raise ArbstrError(404, f"no agent {agent_id}", code="agent_not_found", param="agent_id")
        return slot.state

    def _default_policy(self) -> AgentPolicy:
        return AgentPolicy(**self.vc.default_policy.model_dump())

    async def _create_agent(self, req: CreateAgent, headers: dict[str, str]) -> AccountView:
        if self.book.agent_by_token(req.token_hash) is not None:
            raise ArbstrError(409, "that token is already in use", code="token_in_use")
        agent_id = f"agt_{secrets.token_hex(8)}"
        policy = req.policy or self._default_policy()
        w = await self.execute(agent_id, lambda s, at: decide.create_agent(s, req.name, req.token_hash, policy, at))
        return view(w.state)

    async def _list_agents(self, req: Empty, headers: dict[str, str]) -> AgentList:
        await self._caught_up()
        return AgentList(agents=[view(s) for s in sorted(self.book.agents(), key=lambda s: s.created_at_ms)])

    async def _get_agent(self, req: AgentRef, headers: dict[str, str]) -> AccountView:
        return view(await self._known(req.agent_id))

    async def _set_policy(self, req: SetPolicy, headers: dict[str, str]) -> AccountView:
        await self._known(req.agent_id)
        return view((await self.execute(req.agent_id, lambda s, at: decide.set_policy(s, req.policy, at))).state)

    async def _rotate_token(self, req: RotateToken, headers: dict[str, str]) -> AccountView:
        await self._known(req.agent_id)
        if self.book.agent_by_token(req.token_hash) is not None:
            raise ArbstrError(409, "that token is already in use", code="token_in_use")
        replaced: list[str] = []

        def rotate(s: AccountState, at: int) -> decide.Decided:
            replaced[:] = [s.token_hash]
            return decide.rotate_token(s, req.token_hash, at)

        w = await self.execute(req.agent_id, rotate)
        if w.events and replaced:
            await self._revoked(req.agent_id, replaced[0], "token_rotated")
        return view(w.state)

    async def _revoked(self, agent_id: str, token_hash: str, reason: str) -> None:
        """Tell every gateway that ``token_hash`` no longer opens anything (its open event streams end). Core
        NATS may drop it: gateways also re-check their streams' tokens now and then."""
        assert self.nc is not None
        notice = TokenRevoked(agent_id=agent_id, token_hash=token_hash, reason=reason, at_ms=now_ms())
        try:
            await self.nc.publish(subjects.TOKEN_REVOKED, notice.model_dump_json().encode())
        except Exception:
            log.warning("could not publish the revocation of %s's token", agent_id)

    async def _deposit(self, req: DepositCommand, headers: dict[str, str]) -> AccountView:
        await self._known(req.agent_id)
        return view((await self.execute(req.agent_id, lambda s, at: decide.deposit(
            s, req.deposit_id, req.amount_msat, req.rail, req.reference, at, self.book.deposited_msat()))).state)

    async def _deposit_token(self, req: AgentDeposit, headers: dict[str, str]) -> DepositReply:
        await self._known(req.agent_id)
        return await self.rails.deposit(req.agent_id, DepositRequest(token_hash="", rail="cashu", token=req.token))

    async def _approvals(self, req: Empty, headers: dict[str, str]) -> ApprovalList:
        await self._caught_up()
        items = []
        for state in self.book.agents():
            for hold in state.holds.values():
                if hold.state == "awaiting_approval":
                    items.append(Approval(request_id=hold.rid, agent_id=state.agent_id, agent_name=state.name,
                                          amount_msat=hold.amount_msat, provider=hold.provider, model=hold.model,
                                          requested_at_ms=hold.reserved_at_ms,
                                          deadline_ms=hold.approval_deadline_ms or 0))
            for p in state.payouts.values():
                if p.approval_deadline_ms is not None:
                    items.append(Approval(request_id=p.payout_id, kind="payout", agent_id=state.agent_id,
                                          agent_name=state.name, amount_msat=p.held_msat, provider=p.rail,
                                          model="withdrawal", requested_at_ms=p.started_at_ms,
                                          deadline_ms=p.approval_deadline_ms))
        items.sort(key=lambda a: a.requested_at_ms)
        return ApprovalList(approvals=items)

    async def _holder(self, rid: str, agent_id: Optional[str]) -> tuple[str, bool]:
        """(agent id, whether it is a payout) of the approval ``rid`` names.

        Request ids are the clients' and collide across agents: with ``agent_id`` the approval is that agent's;
        without it, only a single pending approval with that id is ever chosen — several pending (or several
        agents knowing the id and none pending) is a 400 asking for the agent, never a guess."""
        await self._caught_up()
        if agent_id is not None:
            slot = self.book.slots.get(agent_id)
            if slot is None or not slot.state.created:
                raise ArbstrError(404, f"no agent {agent_id}", code="agent_not_found", param="agent_id")
            found = _approval_of(slot.state, rid)
            if found is None:
                raise ArbstrError(404, f"agent {agent_id} has no reservation {rid}", code="unknown_request",
                                  param="request_id")
            return agent_id, found[1]
        pending: list[tuple[str, bool]] = []
        known: list[tuple[str, bool]] = []
        for state in self.book.agents():
            found = _approval_of(state, rid)
            if found is not None:
                (pending if found[0] else known).append((state.agent_id, found[1]))
        if len(pending) == 1:
            return pending[0]
        if len(pending) > 1 or (not pending and len(known) > 1):
            agents = ", ".join(sorted(a for a, _ in pending or known))
            raise ArbstrError(400, f"request id {rid} names requests of several agents ({agents}): decide it at "
                                   f"/v1/admin/approvals/{{agent_id}}/{rid}/approve|deny", code="agent_id_required",
                              param="agent_id")
        if known:
            return known[0]  # decided already, or never awaiting approval: the deciders say which (409)
        raise ArbstrError(404, f"no reservation {rid}", code="unknown_request", param="request_id")

    async def _decide_payout(self, agent_id: str, pid: str, approve: bool, reason: str) -> ApprovalResult:
        state = self.book.slot(agent_id).state
        payout = state.payouts.get(pid)
        if payout is None or payout.approval_deadline_ms is None:
            done = state.payouts_done.get(pid)
            if f"payout_approved:{pid}" in state.op_ids:
                raise decide.already_decided(pid, "approved")
            if done is not None and done.payout.approval_deadline_ms is not None:
                raise decide.already_decided(pid, "denied")
            raise ArbstrError(409, f"payout {pid} is not waiting for approval", code="not_awaiting_approval")
        if approve:
            await self.execute(agent_id, lambda s, at: decide.approve_payout(s, pid, at))
            self.rails.drive(agent_id, pid, resume=False)  # sent now; its outcome shows in the payout view
        else:
            await self.execute(agent_id, lambda s, at: decide.fail_payout(
                s, pid, f"denied by an operator{': ' + reason if reason else ''}", at))
        return ApprovalResult(request_id=pid, agent_id=agent_id, state="approved" if approve else "denied")

    async def _decide_approval(self, req: ApprovalAction, approve: bool) -> ApprovalResult:
        agent_id, is_payout = await self._holder(req.request_id, req.agent_id)
        if is_payout:
            return await self._decide_payout(agent_id, req.request_id, approve, req.reason)
        rid = req.request_id
        if approve:
            w = await self.execute(agent_id, lambda s, at: decide.approve(s, rid, at))
        else:
            w = await self.execute(agent_id, lambda s, at: decide.deny(s, rid, req.reason, at))
        if w.decided.noop == "duplicate" and not w.conflicted:
            raise decide.already_decided(rid, "approved" if approve else "denied")  # by someone else, before
        await self._publish_spend(w.state, w.events, rid)
        state = w.state
        hold = state.holds.get(rid)
        res = state.resolutions.get(rid)
        status = hold.state if hold is not None else (res.kind if res is not None else "unknown")
        return ApprovalResult(request_id=rid, agent_id=agent_id, state=status)

    async def _approve(self, req: ApprovalAction, headers: dict[str, str]) -> ApprovalResult:
        return await self._decide_approval(req, True)

    async def _deny(self, req: ApprovalAction, headers: dict[str, str]) -> ApprovalResult:
        return await self._decide_approval(req, False)

    async def _audit(self, req: HistoryQuery, headers: dict[str, str]) -> History:
        if req.agent_id is not None:
            await self._known(req.agent_id)
        await self._projection_current()
        return History(items=self.projection.history(req.agent_id, req.since_ms, req.limit))

    async def _books(self, req: Empty, headers: dict[str, str]) -> Books:
        await self._caught_up()
        assert self.journal is not None
        # Fold and projection compared at one stream sequence: the fold must hold nothing past what the follower
        # has handed over (an own write can run ahead of it), and the projection is summed up to that sequence.
        for _ in range(50):
            seq = self.journal.applied_seq
            if self.book.top_seq <= seq:
                break
            try:
                await self.journal.wait_applied(self.book.top_seq)
            except asyncio.TimeoutError:
                break  # the follower is stalled: the books still answer, without the comparison
        books = self.book.books(seq)
        if self.book.top_seq > seq:
            return books  # writes kept running ahead: no comparable pair (projection_agrees stays null)
        totals = await asyncio.to_thread(self.projection.totals, None, seq)
        books.projection_agrees = (
            totals.get("deposited", 0) == books.deposits_msat
            and totals.get("withdrawn", 0) + totals.get("payout_settled", 0) == books.withdrawals_msat
            and totals.get("settled", 0) + totals.get("expired", 0) == books.spent_msat)
        return books

    async def _projection_current(self) -> None:
        """Own writes reach the projection when the follower passes them: wait for those already acked, so a
        history read right after a write shows it."""
        assert self.journal is not None
        top = self.book.top_seq
        if top > self.journal.applied_seq:
            try:
                await self.journal.wait_applied(top)
            except asyncio.TimeoutError:
                log.warning("history: the journal follower is behind; answering with what it has")

    async def _payouts(self, req: AgentRef, headers: dict[str, str]) -> PayoutList:
        """Every payout (``agent_id`` "*": of every agent)."""
        if req.agent_id != "*":
            await self._known(req.agent_id)
        return self.rails.payouts(None if req.agent_id == "*" else req.agent_id)

    async def _reconcile(self, req: Empty, headers: dict[str, str]) -> Reconciliation:
        return await self.rails.reconcile()

    async def _reconcile_clear(self, req: ClearFreeze, headers: dict[str, str]) -> Reconciliation:
        return await self.rails.clear(req)

    async def _verify(self, req: Empty, headers: dict[str, str]) -> ChainCheck:
        """Re-read the whole ledger from sequence 1 and check every agent's hash chain."""
        events_by_agent = await read_ledger(self.nc)  # type: ignore[arg-type]
        broken = [a for a, evs in events_by_agent.items() if not verify_chain(evs)[0]]
        return ChainCheck(agents=len(events_by_agent), events=sum(len(v) for v in events_by_agent.values()),
                          ok=not broken, broken=sorted(broken))


def _approval_of(state: AccountState, rid: str) -> Optional[tuple[bool, bool]]:
    """(pending, is a payout) of what ``rid`` names in one account — a pending one first — or None."""
    hold = state.holds.get(rid)
    payout = state.payouts.get(rid)
    if hold is not None and hold.state == "awaiting_approval":
        return True, False
    if payout is not None and payout.approval_deadline_ms is not None:
        return True, True
    if hold is not None or rid in state.resolutions:
        return False, False
    if payout is not None or rid in state.payouts_done:
        return False, True
    return None


async def read_ledger(nc: NATS, timeout_s: float = 60.0) -> dict[str, list[LedgerEvent]]:
    """Every agent's events, read afresh from the stream (for verification and replay checks)."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.STREAM_LEDGER)
    last = int(info.state.last_seq)
    out: dict[str, list[LedgerEvent]] = {}
    if last == 0:
        return out
    done = asyncio.Event()

    async def cb(msg: Msg) -> None:
        entry = JournalEntry.model_validate_json(msg.data)
        out.setdefault(entry.agent_id, []).extend(entry.events)
        if msg.metadata.sequence.stream >= last:
            done.set()

    sub = await js.subscribe(f"{subjects.LEDGER_PREFIX}.>", cb=cb, ordered_consumer=True,
                             stream=subjects.STREAM_LEDGER)
    try:
        await asyncio.wait_for(done.wait(), timeout_s)
    finally:
        await sub.unsubscribe()
    return out
