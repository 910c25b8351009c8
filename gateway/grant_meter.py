"""Paid mode without a vault round trip per request: credit control with grants (RFC 4006 style, DESIGN §6).

The vault grants this gateway a slice of an agent's balance (journaled as one hold). Requests that fit it — and
that the agent's policy allows without a human (within max per transaction and the approval threshold; the daily
limit is already in the grant's size) — are decided here, in memory, and reported to the partition's owner in
batches, one command per request, so every request still has its resolution, spend event and record. Anything
else takes the per-request path (``VaultMeter``), whose answers stay the contract: a request that does not fit,
a request id seen before, a policy that needs approval, no grant to be had.

A grant is used for a short while, then replaced; one with nothing in flight is closed (the rest goes back) when
it is idle, replaced or revoked (policy or token changed, vault frozen), and before any read of the books through
this gateway, so what a client reads includes what it was served. A grant this gateway never closes (it died)
expires like a hold: charged and flagged.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Optional

from nats.aio.client import Client as NATS

from actors.runtime.tokens import token_hash
from schemas import exchanges, subjects
from schemas.config import GrantsConfig
from schemas.errors import ArbstrError, request_id_reused
from schemas.grants import GrantReports, GrantRequest, GrantsRevoked, GrantUsage, UsageItem
from schemas.money import cost_msat, max_output_tokens_for
from schemas.requests import RequestRecord
from schemas.router import Envelope, RouteReply
from schemas.vault import AgentPolicy

from .meter import Hold, Usage
from .vault_meter import OWNER_WAIT_S, VaultMeter, missing_token

log = logging.getLogger("arbstr.gateway.grants")

SWEEP_AGENTS_S = 30.0
LOST_CLOSE_WAIT_S = 2.0
FORGET_AGENT_S = 300.0  # an agent with no grant, unseen this long, is forgotten here
# Request ids served here lately, over all agents: a reuse goes to the vault, which knows the answer. One bound for
# the gateway, not one per agent: 4,096 per agent made memory grow with the number of agents (~180 bytes each,
# 74 MB at 100 busy agents, gigabytes at thousands). Past the bound a reuse is decided here like a new request:
# served and charged again, as it was upstream, never charged less.
SEEN_RIDS = 262_144
BACKLOG_REPORTS = 4  # unreported requests a grant may carry, in report batches, before new ones wait for the vault
BACKLOG_WAIT_S = 2.0  # how long a request waits for a backlogged grant's reports before the vault decides it
GROW_WITHIN_S = 1.0  # a grant used up sooner than this: the next one is twice the size
SHRINK_AFTER_S = 4.0  # one that lasted longer: the next is half the size, down to the configured one
GRANT_LOOKS = 3  # a request waits for this many grant openings by others before the vault decides it
# Requests per report message: the owner decodes and decides a message in one go, so a smaller one keeps its event
# loop (lease renewals, journal acks) responsive under load. GrantReports accepts up to 4096.
REPORT_ITEMS = 512
MAX_REPORTS = 1024  # grants per report message (GrantReports' bound)


@dataclass(eq=False)  # one grant is one object: compared and hashed by identity
class _Grant:
    grant_id: str
    agent_id: str
    partition: int
    token_hash: str
    amount_msat: int
    expires_at_ms: int
    use_until: float  # monotonic: no request is decided under it after this (it is replaced)
    policy: AgentPolicy
    used_msat: int = 0  # holds of requests in flight plus costs of those done
    inflight: int = 0
    retired: bool = False
    last_used: float = field(default_factory=time.monotonic)
    opened_at: float = field(default_factory=time.monotonic)
    items: list[UsageItem] = field(default_factory=list)
    reporting: Optional["asyncio.Task[None]"] = None
    closed: bool = False
    lost: bool = False  # asked for, never answered: only closed, in case the owner opened it

    @property
    def remaining_msat(self) -> int:
        return self.amount_msat - self.used_msat

    def usable(self, now: float) -> bool:
        return not self.retired and now < self.use_until


@dataclass
class _Agent:
    grants: list[_Grant] = field(default_factory=list)  # the newest last
    opening: Optional["asyncio.Future[Optional[_Grant]]"] = None
    refused_until: float = 0.0  # a grant was refused lately: the per-request path until then
    inflight: set[str] = field(default_factory=set)  # request ids decided here and not yet resolved
    revocations: int = 0  # a grant asked for before a revocation and answered after it is not used
    touched: float = field(default_factory=time.monotonic)
    want_msat: int = 0  # what its next grant asks for, grown for an agent that uses grants up fast (0: the base)


def next_want(want_msat: int, last: Optional[_Grant], used_up: bool, now: float, base: int, most: int) -> int:
    """Grant sizing from the grant being replaced (RFC 4006 leaves quota sizing to the server; here the gateway
    asks by rate): one used up within GROW_WITHIN_S asks for twice as much next (up to ``most``); one that lasted
    past SHRINK_AFTER_S, used up or not, for half (back to ``base``, 0, when half is no more). Every grant opened
    costs a round trip to the partition owner and two journaled commands; a busy agent on a base-size grant paid
    that several times a second, and a quiet one must not keep a burst's grant size."""
    if last is None:
        return want_msat
    lasted = now - last.opened_at
    if used_up and lasted < GROW_WITHIN_S:
        return min(most, max(base, last.amount_msat * 2))
    if lasted > SHRINK_AFTER_S:
        return last.amount_msat // 2 if last.amount_msat // 2 > base else 0
    return want_msat


def local_hold(env: Envelope, policy: AgentPolicy) -> tuple[int, int]:
    """(amount, output tokens) of a request's hold, as the vault sizes it for an agent whose balance is not the
    limit: the client's cap, else the model's ceiling within what the policy allows without a human."""
    if env.output_tokens is not None:
        out = env.output_tokens * env.choices
    else:
        per_choice = env.max_output_tokens
        for cap in (policy.max_tx_msat, policy.approval_over_msat):
            if cap is not None:
                within = max_output_tokens_for(cap, env.input_tokens, env.input_rate, env.output_rate,
                                               env.base_fee_msat)
                if within >= env.choices:
                    per_choice = min(per_choice, within // env.choices)
        out = per_choice * env.choices
    return cost_msat(env.input_tokens, out, env.input_rate, env.output_rate, env.base_fee_msat), out


def allowed_locally(policy: AgentPolicy, amount_msat: int) -> bool:
    """Within what the vault would allow at once (else it decides: a 403, or a wait for approval)."""
    return all(cap is None or amount_msat <= cap for cap in (policy.max_tx_msat, policy.approval_over_msat))


class GrantMeter:
    paid = True

    def __init__(self, nc: NATS, slow: VaultMeter, cfg: GrantsConfig, settle_budget_s: float = 30.0) -> None:
        self.nc = nc
        self.slow = slow  # the per-request path
        self.bus = slow.bus
        self.agents = slow.agents
        self.cfg = cfg
        self.settle_budget_s = settle_budget_s
        self._by_agent: dict[str, _Agent] = {}
        self._seen: "OrderedDict[tuple[str, str], None]" = OrderedDict()  # (agent id, request id), oldest first
        self._live: dict[_Grant, _Agent] = {}  # every grant not closed yet: what the reporter looks at
        self._swept = time.monotonic()
        self._wake = asyncio.Event()
        self._task: Optional[asyncio.Task[None]] = None
        self._sub: object = None
        # Requests the vault must hold itself: a provider paid per request (X-Cashu) is paid against the request's
        # own hold at the vault. Set by the gateway, which knows its providers.
        self.needs_vault_hold: Callable[[RouteReply], bool] = lambda route: False
        self.stats = {"local": 0, "slow": 0, "grants_opened": 0, "grants_closed": 0, "reports": 0, "backlogged": 0}

    async def start(self) -> None:
        async def on_revoked(msg: object) -> None:
            try:
                notice = GrantsRevoked.model_validate_json(msg.data)  # type: ignore[attr-defined]
            except ValueError:
                return
            await self.revoke(None if notice.agent_id == "*" else notice.agent_id)

        self._sub = await self.nc.subscribe(subjects.GRANTS_REVOKED, cb=on_revoked)
        self._task = asyncio.create_task(self._report_forever(), name="grant-reports")

    # --- the Meter protocol ------------------------------------------------------------------------------
    async def reserve(self, token: Optional[str], request_id: str, route: RouteReply, endpoint: str) -> Hold:
        if not token:
            raise missing_token()
        th = token_hash(token)
        where = await self.agents.route_of(th, request_id)
        agent = self._by_agent.setdefault(where.agent_id, _Agent())
        agent.touched = time.monotonic()
        if self._used_here(agent, where.agent_id, request_id) or not route.candidates or self.needs_vault_hold(route):
            return await self._slow_reserve(agent, where.agent_id, token, request_id, route, endpoint, short=False)
        grant, short = await self._grant_for(agent, where.agent_id, where.partition, th, route.envelope)
        # Asked again after the wait for a grant: a copy of this request id sent meanwhile may have been served.
        if self._used_here(agent, where.agent_id, request_id):
            return await self._slow_reserve(agent, where.agent_id, token, request_id, route, endpoint, short=False)
        if grant is not None and self._backlogged(grant):
            # The owner is not keeping up with this grant's reports: the request waits for them, which slows this
            # agent down to what the owner journals instead of piling up unreported requests here. (It used to be
            # sent down the per-request path, which costs the owner two commands and two round trips per request
            # instead of a share of a report: the owner fell further behind.)
            self.stats["backlogged"] += 1
            waited = await self._after_backlog(grant)
            if self._used_here(agent, where.agent_id, request_id):
                return await self._slow_reserve(agent, where.agent_id, token, request_id, route, endpoint,
                                                short=False)
            # Still backlogged: the pause keeps this agent's next requests at the vault's pace.
            short, grant = waited is None and self._backlogged(grant), waited
        if grant is not None:
            amount, out = local_hold(route.envelope, grant.policy)
            if amount <= grant.remaining_msat and allowed_locally(grant.policy, amount):
                grant.used_msat += amount
                grant.inflight += 1
                grant.last_used = time.monotonic()
                self._remember(where.agent_id, request_id)
                agent.inflight.add(request_id)
                self.stats["local"] += 1
                return Hold(request_id=request_id, agent_id=where.agent_id, amount_msat=amount, output_tokens=out,
                            attempt=secrets.token_hex(8), partition=where.partition, token_hash=th, grant=grant)
            short = amount > grant.remaining_msat  # else the policy sends it to the vault (max per tx, approval)
        return await self._slow_reserve(agent, where.agent_id, token, request_id, route, endpoint, short=short)

    def _backlogged(self, grant: _Grant) -> bool:
        return len(grant.items) >= BACKLOG_REPORTS * self.cfg.report_batch

    async def _after_backlog(self, grant: _Grant) -> Optional[_Grant]:
        """The grant once its backlog of unreported requests is under the bound again; None if it is not within
        BACKLOG_WAIT_S (or the grant was replaced meanwhile): the vault then decides the request."""
        deadline = time.monotonic() + BACKLOG_WAIT_S
        while self._backlogged(grant):
            left = deadline - time.monotonic()
            if left <= 0 or not grant.usable(time.monotonic()):
                return None
            self._wake.set()
            task = grant.reporting
            if task is None or task.done():
                await asyncio.sleep(min(left, 0.01))  # the next report goes out on the wake just given
            else:
                await asyncio.wait({task}, timeout=left)
        # Replaced, revoked or past its use while this request waited: never decided under it (it may be closed).
        return grant if grant.usable(time.monotonic()) else None

    async def extend(self, hold: Hold, amount_msat: int, provider: str) -> Hold:
        grant = hold.grant
        if not isinstance(grant, _Grant):
            return await self.slow.extend(hold, amount_msat, provider)
        extra = amount_msat - hold.amount_msat
        if extra <= 0:
            return hold
        if grant.retired or extra > grant.remaining_msat or not allowed_locally(grant.policy, amount_msat):
            # Decided under the grant, grown under the grant or not at all: the candidate is skipped.
            raise ArbstrError(402, f"the hold cannot grow to {amount_msat} msat here", code="insufficient_balance",
                              headers={"x-should-retry": "false"})
        grant.used_msat += extra
        return dataclasses.replace(hold, amount_msat=amount_msat, extensions=hold.extensions + 1)

    async def settle(self, hold: Hold, usage: Usage, record: Optional[RequestRecord] = None) -> None:
        grant = hold.grant
        if not isinstance(grant, _Grant):
            return await self.slow.settle(hold, usage, record)
        grant.used_msat += usage.cost_msat - hold.amount_msat
        self._done(grant, hold, UsageItem(
            kind="settle", request_id=hold.request_id, attempt=hold.attempt, provider=usage.provider,
            model=usage.model, input_tokens=usage.input_tokens, output_tokens=usage.output_tokens,
            cost_msat=usage.cost_msat, estimated=usage.estimated, provider_cost_msat=usage.provider_cost_msat,
            cost_drift=usage.cost_drift, record=record))

    async def release(self, hold: Hold, reason: str, record: Optional[RequestRecord] = None) -> None:
        grant = hold.grant
        if not isinstance(grant, _Grant):
            return await self.slow.release(hold, reason, record)
        grant.used_msat -= hold.amount_msat
        self._done(grant, hold, UsageItem(kind="release", request_id=hold.request_id, attempt=hold.attempt,
                                    reason=reason, record=record))

    async def close(self) -> None:
        """Report everything and give every grant back before the process goes."""
        await self.revoke(None)
        started = time.monotonic()
        while self._live and time.monotonic() < started + self.settle_budget_s:
            if all(g.lost for g in self._live) and time.monotonic() > started + LOST_CLOSE_WAIT_S:
                break  # only grants nobody confirmed are left: shutdown does not wait out a vault that is gone
            self._wake.set()
            await asyncio.sleep(0.02)
        if self._task is not None:
            self._task.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()  # type: ignore[attr-defined]
            except Exception:
                pass
        await self.slow.close()

    # --- what reads see ------------------------------------------------------------------------------------
    async def settle_up(self, agent_id: Optional[str] = None) -> None:
        """Before a read of the books: every request served here is reported, and every grant with nothing in
        flight given back (``agent_id`` None: of every agent)."""
        await self._give_back_idle(self._agents(agent_id))

    def _agents(self, agent_id: Optional[str]) -> list[_Agent]:
        """One agent's state here (none if it has none), or every agent's for ``None``."""
        if agent_id is None:
            return list(self._by_agent.values())
        return [self._by_agent[agent_id]] if agent_id in self._by_agent else []

    async def _give_back_idle(self, agents: list[_Agent]) -> None:
        """Report what was served, and close every grant with nothing in flight."""
        for agent in agents:
            for g in agent.grants:
                if g.inflight == 0:
                    g.retired = True
        await self._drain(agents, lambda g: not g.closed and (g.items or (g.retired and g.inflight == 0)))

    async def revoke(self, agent_id: Optional[str]) -> None:
        """Nothing more is decided under these grants; they are closed once their requests are reported."""
        agents = self._agents(agent_id)
        for agent in agents:
            agent.refused_until = 0.0
            agent.revocations += 1
            agent.want_msat = 0  # the rules changed: grants start again at the configured size
            for g in agent.grants:
                g.retired = True
        if agent_id is not None:
            self.agents.forget_agent(agent_id)  # a rotated token is asked about again
        await self._drain(agents, lambda g: not g.closed and g.inflight == 0)

    async def _drain(self, agents: list[_Agent], pending: object, timeout_s: float = 5.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(pending(g) for a in agents for g in a.grants) and time.monotonic() < deadline:  # type: ignore
            self._wake.set()
            await asyncio.sleep(0.005)

    # --- grants ------------------------------------------------------------------------------------------
    async def _grant_for(self, agent: _Agent, agent_id: str, partition: int, th: str,
                         env: Envelope) -> tuple[Optional[_Grant], bool]:
        """The grant to decide this request under, or None and whether that is for want of money (a grant refused
        lately, or none to be had) rather than of patience (grants opened by others used up before this one ran)."""
        for look in range(GRANT_LOOKS + 1):
            now = time.monotonic()
            current = agent.grants[-1] if agent.grants else None
            need = local_hold(env, current.policy if current is not None else AgentPolicy())[0]
            if current is not None and current.usable(now) and current.token_hash == th \
                    and current.remaining_msat >= need:
                return current, False
            if agent.opening is None:
                break
            if look == GRANT_LOOKS:
                return None, False
            # Another request is opening a grant: look again once it is open. By the time this one runs, a busy
            # agent may have used that grant up and another request be opening the next; taking the per-request
            # path here instead sent one hot agent's every request to the vault (see ``_slow_reserve``).
            await asyncio.shield(agent.opening)
        if now < agent.refused_until:
            return None, True
        fut: asyncio.Future[Optional[_Grant]] = asyncio.get_running_loop().create_future()
        agent.opening = fut
        try:
            grant = await self._open(agent, agent_id, partition, th, need)
            fut.set_result(grant)
            return grant, True
        except BaseException as e:
            fut.set_result(None)
            if not isinstance(e, Exception):
                raise
            # Not a refusal (those are answered in _open): a fault of ours. The per-request path still serves.
            log.exception("agent %s: opening a grant failed", agent_id)
            return None, True
        finally:
            agent.opening = None

    async def _open(self, agent: _Agent, agent_id: str, partition: int, th: str, need: int) -> Optional[_Grant]:
        last = agent.grants[-1] if agent.grants else None
        base = min(self.cfg.max_msat, max(self.cfg.want_msat, need * self.cfg.requests_per_grant))
        if last is not None and not last.lost:
            agent.want_msat = next_want(agent.want_msat, last, last.remaining_msat < need, time.monotonic(), base,
                                        self.cfg.max_msat)
        for g in agent.grants:
            g.retired = True  # replaced: closed once what is in flight on it is reported
        self._wake.set()
        gid = secrets.token_hex(12)
        revocations = agent.revocations
        want = max(base, agent.want_msat)
        try:
            reply = await self.bus.ask(exchanges.GRANT, GrantRequest(
                grant_id=gid, agent_id=agent_id, token_hash=th, want_msat=max(want, need), min_msat=max(1, need)),
                partition=partition, wait_for_responder_s=OWNER_WAIT_S)
        except ArbstrError as e:
            if e.status == 401:
                self.agents.forget(th)
            if e.status >= 500:
                # Not answered: the owner may have journaled it anyway. It is given up at once (closed if it was
                # opened, refused if it still comes), never left to expire charged for nothing.
                lost = _Grant(grant_id=gid, agent_id=agent_id, partition=partition, token_hash=th, amount_msat=0,
                              expires_at_ms=0, use_until=0.0, policy=AgentPolicy(), retired=True, lost=True)
                agent.grants.append(lost)
                self._live[lost] = agent
                self._wake.set()
            # Refused (no funds, the daily limit, a frozen vault) or not answered: the per-request path decides
            # and answers for a while.
            agent.refused_until = time.monotonic() + self.cfg.retry_after_refusal_s
            log.debug("agent %s: no grant (%s)", agent_id, e.message)
            return None
        ttl_s = max(0.0, (reply.expires_at_ms - time.time() * 1000) / 1000)
        grant = _Grant(grant_id=gid, agent_id=agent_id, partition=partition, token_hash=th,
                       amount_msat=reply.amount_msat, expires_at_ms=reply.expires_at_ms,
                       # Used briefly enough that its last report, retried for the whole settle budget, still
                       # lands before the grant's TTL.
                       use_until=time.monotonic() + min(self.cfg.use_s, max(1.0, (ttl_s - self.settle_budget_s) / 2)),
                       policy=reply.policy)
        grant.retired = agent.revocations != revocations  # decided by rules revoked meanwhile: given back at once
        agent.grants.append(grant)
        self._live[grant] = agent
        self.stats["grants_opened"] += 1
        if grant.retired:
            self._wake.set()
            return None
        return grant

    async def _slow_reserve(self, agent: _Agent, agent_id: str, token: str, request_id: str, route: RouteReply,
                            endpoint: str, short: bool) -> Hold:
        """The vault decides this request. ``short``: because no grant here could cover it (refused, used up, too
        small, backlogged); else for a reason of the request's own (a request id used before, an approval)."""
        self.stats["slow"] += 1
        # Remembered first: a copy of this request id arriving during the wait below goes to the vault too, which
        # answers for both, instead of being served under a grant still in use beside this one.
        self._remember(agent_id, request_id)
        # What this gateway holds aside must not be why the vault refuses: idle grants go back first, and what
        # was served under a request id is journaled before the vault is asked about that id.
        if agent.grants:
            if short and time.monotonic() >= agent.refused_until:
                # Money is short here: no new grant for a while, or the one opened next would take back what was
                # just given back. Only a request that found it short starts the pause; the requests sent here
                # during it do not prolong it (they used to, and kept a busy agent off its grants for good).
                agent.refused_until = time.monotonic() + self.cfg.retry_after_refusal_s
            await self._give_back_idle([agent])
        return await self.slow.reserve(token, request_id, route, endpoint)

    def _used_here(self, agent: _Agent, agent_id: str, request_id: str) -> bool:
        """Whether this gateway served ``request_id`` lately (the vault knows what became of it); 409 while it is
        still in flight here, where the vault cannot see it yet."""
        if request_id in agent.inflight:
            raise request_id_reused(request_id)
        return (agent_id, request_id) in self._seen

    def _remember(self, agent_id: str, request_id: str) -> None:
        key = (agent_id, request_id)
        self._seen[key] = None
        self._seen.move_to_end(key)
        if len(self._seen) > SEEN_RIDS:
            self._seen.popitem(last=False)

    def _done(self, grant: _Grant, hold: Hold, item: UsageItem) -> None:
        grant.inflight -= 1
        agent = self._by_agent.get(grant.agent_id)
        if agent is not None:
            agent.inflight.discard(hold.request_id)
        grant.items.append(item)
        if len(grant.items) >= self.cfg.report_batch:
            self._wake.set()

    # --- reports -----------------------------------------------------------------------------------------
    async def _report_forever(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self.cfg.report_interval_s)
            except asyncio.TimeoutError:
                pass
            self._wake.clear()
            now = time.monotonic()
            due: dict[int, list[tuple[_Agent, _Grant]]] = {}
            for g, agent in list(self._live.items()):
                if g.inflight == 0 and not g.retired and (now - g.last_used > self.cfg.idle_s or now >= g.use_until):
                    g.retired = True
                closing = g.retired and g.inflight == 0
                if (g.items or closing) and (g.reporting is None or g.reporting.done()):
                    due.setdefault(g.partition, []).append((agent, g))
            # One message per partition, whatever the number of agents: what one tick costs the bus and the
            # owner does not grow with the agents this gateway serves.
            for partition, grants in due.items():
                task = asyncio.create_task(self._report(partition, grants))
                for _, g in grants:
                    g.reporting = task
            if now - self._swept > SWEEP_AGENTS_S:
                self._swept = now
                for agent_id, agent in list(self._by_agent.items()):
                    if not agent.grants and not agent.inflight and agent.opening is None \
                            and now - agent.touched > FORGET_AGENT_S:
                        del self._by_agent[agent_id]  # bounded memory; its request ids are the vault's to judge

    async def _report(self, partition: int, grants: list[tuple[_Agent, _Grant]]) -> None:
        # What the server accepts in one message bounds a report too (records make items large): a report past it
        # is cut to fewer items, and the rest goes in the next one.
        limit = max(64 * 1024, int(getattr(self.nc, "max_payload", 0) or 1024 * 1024) * 3 // 4)
        budget = REPORT_ITEMS
        while True:
            sent = self._report_items(grants, budget)
            if not sent:
                return
            msg = GrantReports(reports=[GrantUsage(grant_id=g.grant_id, agent_id=g.agent_id, items=g.items[:n],
                                                   close=close) for _, g, n, close in sent])
            raw = msg.model_dump_json().encode()
            items = sum(n for _, _, n, _ in sent)
            if len(raw) <= limit or items <= 1:
                break
            budget = items // 2
        await self._send_report(partition, msg, raw, sent)

    @staticmethod
    def _report_items(grants: list[tuple[_Agent, _Grant]], budget: int) -> list[tuple[_Agent, _Grant, int, bool]]:
        """(agent, grant, items sent, closed by this report) for a report of at most ``budget`` items."""
        sent: list[tuple[_Agent, _Grant, int, bool]] = []
        for agent, g in grants[:MAX_REPORTS]:
            n = min(len(g.items), budget)
            close = g.retired and g.inflight == 0 and n == len(g.items)
            if n or close:
                budget -= n
                sent.append((agent, g, n, close))
        return sent

    async def _send_report(self, partition: int, msg: GrantReports, raw: bytes,
                           sent: list[tuple[_Agent, _Grant, int, bool]]) -> None:
        refused: dict[str, str] = {}
        deadline = time.monotonic() + self.settle_budget_s
        delay = 0.05
        while True:
            try:
                reply = await self.bus.ask(exchanges.GRANT_USAGE, msg, partition=partition, encoded=raw,
                                           timeout_s=max(self.bus.timeout_s, 5.0), wait_for_responder_s=OWNER_WAIT_S)
                refused = reply.refused
                break
            except ArbstrError as e:
                if e.status < 500 or time.monotonic() + delay > deadline:
                    refused = {g.grant_id: e.message for _, g, _, _ in sent}
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
        self.stats["reports"] += 1
        for agent, g, n, close in sent:
            if g.grant_id in refused:
                # Not journaled: the grant expires at its TTL, charged and flagged — the agent is never charged
                # less than it was served, and an operator sees the flag.
                log.error("grant %s of %s: %d requests not reported (%s)", g.grant_id, g.agent_id, n,
                          refused[g.grant_id])
            del g.items[:n]
            if close:
                g.closed = True
                self._live.pop(g, None)
                if g in agent.grants:
                    agent.grants.remove(g)
                self.stats["grants_closed"] += 1
            # What arrived while this report was on its way waits for the next tick, unless a batch is full or the
            # grant is to be closed: waking at every answer made the interval one round trip under load, which
            # (one report per partition) was most of the vault's work and of the journal's messages.
            if len(g.items) >= self.cfg.report_batch or (g.retired and g.inflight == 0 and not g.closed):
                self._wake.set()
