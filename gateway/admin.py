"""The vault over HTTP: the operator's /v1/admin/* (admin token) and each agent's /v1/vault/me* (its own token)."""

from __future__ import annotations

import hmac
import re
import secrets
import uuid
from typing import Any, Awaitable, Callable, Optional, TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from actors.runtime.tokens import admin_token_hash, token_hash
from schemas import exchanges
from schemas.common import MAX_APPROVAL_TIMEOUT_S, MAX_MSAT
from schemas.config import Config
from schemas.errors import ArbstrError
from schemas.exchanges import Exchange
from schemas.requests import MAX_LIMIT, RequestsQuery, StatsQuery
from schemas.vault import (AgentDeposit, AgentPolicy, AgentRef, ApprovalAction, ClearFreeze, CreateAgent,
                           DepositCommand, DepositRequest, Empty, HistoryQuery, PayoutRef, Rail, RotateToken,
                           SetPolicy, TokenRef, WithdrawRequest)

from .bus import Bus
from .headers import header
from .http import REQUEST_ID, bearer_token, json_response, read_json_object
from .query import epoch_ms, optional_int
from .vault_meter import missing_token

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)
TOKEN_PREFIX = "arb_"


def new_agent_token() -> str:
    """256 random bits, shown once; only its sha256 is ever stored."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateAgentBody(_Strict):
    name: str = Field(min_length=1, max_length=128)
    policy: Optional[AgentPolicy] = None


class PolicyPatch(_Strict):
    max_tx_msat: Optional[int] = Field(None, ge=0, le=MAX_MSAT, strict=True)
    daily_limit_msat: Optional[int] = Field(None, ge=0, le=MAX_MSAT, strict=True)
    approval_over_msat: Optional[int] = Field(None, ge=0, le=MAX_MSAT, strict=True)
    approval_timeout_s: Optional[int] = Field(None, ge=1, le=MAX_APPROVAL_TIMEOUT_S, strict=True)


class DepositBody(_Strict):
    """A credit the operator vouches for (``amount_msat``), or a Cashu token redeemed into the account."""

    amount_msat: Optional[int] = Field(None, gt=0, le=2_100_000_000_000_000_000, strict=True)
    token: Optional[str] = Field(None, min_length=1, max_length=100_000)
    deposit_id: Optional[str] = Field(None, min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")
    reference: str = Field("", max_length=256)


class AgentDepositBody(_Strict):
    rail: Rail
    amount_msat: Optional[int] = Field(None, gt=0, le=2_100_000_000_000_000_000, strict=True)
    token: Optional[str] = Field(None, min_length=1, max_length=100_000)


PAYOUT_ID = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")


class WithdrawBody(_Strict):
    """A BOLT11 (its own amount is charged), or ``{"rail": "cashu", "amount_msat": n}`` for an ecash token."""

    bolt11: Optional[str] = Field(None, min_length=1, max_length=8_000)
    amount_msat: Optional[int] = Field(None, gt=0, le=2_100_000_000_000_000_000, strict=True)
    rail: Optional[Rail] = None
    payout_id: Optional[str] = Field(None, pattern=PAYOUT_ID.pattern)


class ClearBody(_Strict):
    force: bool = False


# Rails may take seconds (a mint swap, a route search): longer than the bus's default request timeout.
RAIL_TIMEOUT_S = 30.0


class DenyBody(_Strict):
    reason: str = Field("", max_length=256)


def _body(model: type[R], data: dict[str, Any]) -> R:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        param = ".".join(str(p) for p in first.get("loc", ())) or None
        msg = "unknown field" if first.get("type") == "extra_forbidden" else first.get("msg", "invalid value")
        raise ArbstrError(400, f"invalid value for '{param}': {msg}" if param else msg, param=param,
                          code="invalid_value") from None


def idempotency_key(request: web.Request) -> Optional[str]:
    """The ``Idempotency-Key`` header of a deposit or payout: 1–128 of A-Z a-z 0-9 _ . : - (it becomes a journal
    id), else 400."""
    key = header(request, "Idempotency-Key")
    if not key:
        return None
    if not PAYOUT_ID.match(key):
        raise ArbstrError(400, "Idempotency-Key must be 1–128 of A-Z a-z 0-9 _ . : -", code="invalid_value",
                          param="Idempotency-Key")
    return key


def _since_ms(value: Optional[str], param: str = "since") -> Optional[int]:
    return epoch_ms(value, param)


def _choice(query: Any, param: str, allowed: tuple[str, ...], default: Optional[str] = None) -> Optional[str]:
    value = query.get(param)
    if value is None or value == "":
        return default
    if value not in allowed:
        raise ArbstrError(400, f"{param} must be one of {', '.join(allowed)}", param=param, code="invalid_value")
    return value


# A model or provider name to filter on: printable, no spaces, bounded (an unknown one simply matches nothing).
_NAME = re.compile(r"^[A-Za-z0-9_.:/@+-]{1,256}$")


def _name(query: Any, param: str) -> Optional[str]:
    values = query.getall(param, [])
    if len(values) > 1:
        raise ArbstrError(400, f"{param} may be given once", param=param, code="invalid_value")
    value = values[0] if values else None
    if not value:
        return None
    if not _NAME.match(value):
        raise ArbstrError(400, f"{param} must be 1–256 of A-Z a-z 0-9 _ . : / @ + -", param=param,
                          code="invalid_value")
    return value


def _flag(query: Any, param: str) -> Optional[bool]:
    value = _choice(query, param, ("true", "false"))
    return None if value is None else value == "true"


def _count(query: Any, param: str, default: int, low: int, high: int) -> int:
    return optional_int(query.get(param), param, default, low, high)


def _limit(value: Optional[str]) -> int:
    return optional_int(value, "limit", 100, 1, 1000)


class VaultHTTP:
    def __init__(self, config: Config, bus: Bus, meter: Any = None) -> None:
        self.config = config
        self.bus = bus
        self.admin_hash = admin_token_hash(config)
        # Grants (paid mode): what this gateway served is reported, and idle grants given back, before the books
        # are read through it; a policy or token change ends the agent's grants here at once.
        self._settle_up = getattr(meter, "settle_up", None)
        self._revoke = getattr(meter, "revoke", None)
        self._directory = getattr(meter, "agents", None)

    async def settle_up(self, agent_id: Optional[str] = None, token_hash: Optional[str] = None) -> None:
        """One agent's grants (named, or found by its token), else every agent's: reported and given back."""
        if self._settle_up is None:
            return
        if agent_id is None and token_hash is not None and self._directory is not None:
            route = self._directory.cached(token_hash)
            agent_id = route.agent_id if route is not None else None
        await self._settle_up(agent_id)

    def handlers(self) -> dict[str, Callable[[web.Request], Awaitable[web.StreamResponse]]]:
        """The handlers the route table (gateway/routes.py) names; it applies the admin and agent checks."""
        return {
            "admin.create_agent": self.create_agent, "admin.list_agents": self.list_agents,
            "admin.get_agent": self.get_agent, "admin.policy": self.patch_policy, "admin.deposit": self.deposit,
            "admin.rotate": self.rotate, "admin.approvals": self.approvals, "admin.approve": self.approve,
            "admin.deny": self.deny, "admin.audit": self.audit, "admin.verify": self.verify,
            "admin.books": self.books, "admin.payouts": self.payouts, "admin.reconcile": self.reconcile,
            "admin.reconcile_clear": self.reconcile_clear,
            "vault.me": self.me, "vault.history": self.my_history, "vault.deposit": self.my_deposit,
            "vault.withdraw": self.my_withdraw, "vault.withdrawals": self.my_withdrawals,
            "vault.withdrawal": self.my_withdrawal, "stats": self.stats, "requests": self.requests,
        }

    async def _call(self, request: web.Request, exchange: Exchange[Q, R], msg: Q,
                    timeout_s: Optional[float] = None) -> R:
        """An admin command: it carries the operator's token, which the vault checks again itself."""
        await self.settle_up(getattr(msg, "agent_id", None) or None)
        return await self.bus.ask(exchange, msg, request_id=request[REQUEST_ID], admin_token=bearer_token(request),
                                  timeout_s=timeout_s)

    # --- admin handlers --------------------------------------------------------------------------------
    async def create_agent(self, request: web.Request) -> web.Response:
        body = _body(CreateAgentBody, await read_json_object(request, 64 * 1024))
        token = new_agent_token()
        view = await self._call(request, exchanges.CREATE_AGENT,
                                CreateAgent(name=body.name, token_hash=token_hash(token), policy=body.policy))
        return json_response({**view.model_dump(mode="json"), "token": token}, status=201)

    async def list_agents(self, request: web.Request) -> web.Response:
        agents = await self._call(request, exchanges.LIST_AGENTS, Empty())
        return json_response({"object": "list", "data": [a.model_dump(mode="json") for a in agents.agents]})

    async def get_agent(self, request: web.Request) -> web.Response:
        view = await self._call(request, exchanges.GET_AGENT, AgentRef(agent_id=request.match_info["agent_id"]))
        return json_response(view.model_dump(mode="json"))

    async def patch_policy(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        data = await read_json_object(request, 64 * 1024)
        patch = _body(PolicyPatch, data.get("policy", data) if isinstance(data.get("policy"), dict) else data)
        current = await self._call(request, exchanges.GET_AGENT, AgentRef(agent_id=agent_id))
        merged = current.policy.model_copy(update=patch.model_dump(exclude_unset=True))
        view = await self._call(request, exchanges.SET_POLICY, SetPolicy(agent_id=agent_id, policy=merged))
        if self._revoke is not None:
            await self._revoke(agent_id)  # this gateway decides the agent's next request by the new rules
        return json_response(view.model_dump(mode="json"))

    async def deposit(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        body = _body(DepositBody, await read_json_object(request, 128 * 1024))
        if body.token is not None:
            reply = await self._call(request, exchanges.ADMIN_DEPOSIT_TOKEN,
                                     AgentDeposit(agent_id=agent_id, token=body.token), timeout_s=RAIL_TIMEOUT_S)
            return json_response(reply.model_dump(mode="json"), status=201)
        if body.amount_msat is None:
            raise ArbstrError(400, "send amount_msat (a credit) or token (Cashu)", code="invalid_value",
                              param="amount_msat")
        key = idempotency_key(request)  # checked even when the body names the id: a bad header is never ignored
        deposit_id = body.deposit_id or key or f"dep_{uuid.uuid4().hex}"
        view = await self._call(request, exchanges.ADMIN_DEPOSIT,
                                DepositCommand(agent_id=agent_id, amount_msat=body.amount_msat, deposit_id=deposit_id,
                                               rail="simulated", reference=body.reference))
        return json_response({**view.model_dump(mode="json"), "deposit_id": deposit_id}, status=201)

    async def rotate(self, request: web.Request) -> web.Response:
        agent_id = request.match_info["agent_id"]
        token = new_agent_token()
        view = await self._call(request, exchanges.ROTATE_TOKEN,
                                RotateToken(agent_id=agent_id, token_hash=token_hash(token)))
        if self._revoke is not None:
            await self._revoke(agent_id)  # the old token decides nothing more here
        return json_response({"agent_id": view.agent_id, "token": token})

    async def approvals(self, request: web.Request) -> web.Response:
        items = await self._call(request, exchanges.APPROVALS, Empty())
        return json_response({"object": "list", "data": [a.model_dump(mode="json") for a in items.approvals]})

    @staticmethod
    def _approval(request: web.Request, reason: str = "") -> ApprovalAction:
        return ApprovalAction(request_id=request.match_info["request_id"],
                              agent_id=request.match_info.get("agent_id"), reason=reason)

    async def approve(self, request: web.Request) -> web.Response:
        res = await self._call(request, exchanges.APPROVE, self._approval(request))
        return json_response(res.model_dump(mode="json"))

    async def deny(self, request: web.Request) -> web.Response:
        reason = ""
        if request.can_read_body:
            reason = _body(DenyBody, await read_json_object(request, 64 * 1024)).reason
        res = await self._call(request, exchanges.DENY, self._approval(request, reason))
        return json_response(res.model_dump(mode="json"))

    async def audit(self, request: web.Request) -> web.Response:
        q = HistoryQuery(agent_id=request.query.get("agent") or None, since_ms=_since_ms(request.query.get("since")),
                         limit=_limit(request.query.get("limit")))
        history = await self._call(request, exchanges.AUDIT, q)
        return json_response({"object": "list", "data": [i.model_dump(mode="json") for i in history.items]})

    async def verify(self, request: web.Request) -> web.Response:
        check = await self._call(request, exchanges.VERIFY, Empty())
        return json_response(check.model_dump(mode="json"))

    async def books(self, request: web.Request) -> web.Response:
        books = await self._call(request, exchanges.BOOKS, Empty())
        return json_response(books.model_dump(mode="json"))

    async def payouts(self, request: web.Request) -> web.Response:
        ref = AgentRef(agent_id=request.query.get("agent") or "*")
        items = await self._call(request, exchanges.ADMIN_PAYOUTS, ref)
        return json_response({"object": "list", "data": [p.model_dump(mode="json") for p in items.payouts]})

    async def reconcile(self, request: web.Request) -> web.Response:
        rec = await self._call(request, exchanges.RECONCILE, Empty(), timeout_s=RAIL_TIMEOUT_S)
        return json_response(rec.model_dump(mode="json"))

    async def reconcile_clear(self, request: web.Request) -> web.Response:
        """Reopen a vault the watchdog closed: 409 while the shortfall persists, unless ``{"force": true}``."""
        body = _body(ClearBody, await read_json_object(request, 1024)) if request.can_read_body else ClearBody()
        rec = await self._call(request, exchanges.RECONCILE_CLEAR, ClearFreeze(force=body.force),
                               timeout_s=RAIL_TIMEOUT_S)
        return json_response(rec.model_dump(mode="json"))

    # --- reports: the admin sees every agent (or ?agent=), an agent token only its own ------------------
    async def _report_scope(self, request: web.Request) -> tuple[Optional[str], Optional[str]]:
        """(agent id, agent token hash): the admin sees every agent (or ``?agent=``), an agent token only its own —
        and the vault is told which, so it scopes the report itself."""
        token = bearer_token(request)
        if token is None:
            raise missing_token()
        if self.admin_hash is not None and hmac.compare_digest(token_hash(token), self.admin_hash):
            return request.query.get("agent") or None, None
        th = token_hash(token)
        view = await self.bus.ask(exchanges.AGENT_ME, TokenRef(token_hash=th),
                                  request_id=request[REQUEST_ID])
        agent = request.query.get("agent")
        if agent and agent != view.agent_id:
            raise ArbstrError(403, "an agent token sees only its own requests", param="agent", code="forbidden")
        return view.agent_id, th

    async def stats(self, request: web.Request) -> web.Response:
        query = request.query
        group_by = _choice(query, "group_by", ("model", "provider", "tier", "agent", "day"))
        since, until = _since_ms(query.get("since")), _since_ms(query.get("until"), "until")
        agent_id, th = await self._report_scope(request)
        q = StatsQuery(group_by=group_by, agent_id=agent_id, token_hash=th, since_ms=since,  # type: ignore[arg-type]
                       until_ms=until, model=_name(query, "model"), provider=_name(query, "provider"))
        reply = await self._call(request, exchanges.STATS, q)
        # Savings are measured against the cheapest single provider able to serve every billed request of a row
        # (each row names its baseline; a row no single provider could serve falls back to costliest_candidate).
        return json_response({"object": "list", "group_by": reply.group_by,
                              "savings_baseline": "cheapest_single_provider",
                              "data": [r.model_dump(mode="json") for r in reply.rows]})

    async def requests(self, request: web.Request) -> web.Response:
        query = request.query
        agent_id, th = await self._report_scope(request)
        q = RequestsQuery(
            model=query.get("model") or None, provider=query.get("provider") or None,
            success=_flag(query, "success"), streamed=_flag(query, "streamed"),
            since_ms=_since_ms(query.get("since")), until_ms=_since_ms(query.get("until"), "until"),
            sort=_choice(query, "sort", ("at", "cost", "latency"), "at"),  # type: ignore[arg-type]
            order=_choice(query, "order", ("asc", "desc"), "desc"),  # type: ignore[arg-type]
            limit=_count(query, "limit", 100, 1, MAX_LIMIT), offset=_count(query, "offset", 0, 0, 10**9),
            agent_id=agent_id, token_hash=th)
        reply = await self._call(request, exchanges.REQUESTS, q)
        return json_response({"object": "list", "total": reply.total, "limit": q.limit, "offset": q.offset,
                              "data": [r.model_dump(mode="json") for r in reply.items]})

    # --- an agent's own account ------------------------------------------------------------------------
    def _agent_token(self, request: web.Request) -> str:
        token = bearer_token(request)
        if token is None:
            raise missing_token()
        return token_hash(token)

    async def me(self, request: web.Request) -> web.Response:
        th = self._agent_token(request)
        await self.settle_up(token_hash=th)
        view = await self.bus.ask(exchanges.AGENT_ME, TokenRef(token_hash=th), request_id=request[REQUEST_ID])
        return json_response(view.model_dump(mode="json"))

    async def my_history(self, request: web.Request) -> web.Response:
        th = self._agent_token(request)
        await self.settle_up(token_hash=th)
        q = HistoryQuery(token_hash=th, since_ms=_since_ms(request.query.get("since")),
                         limit=_limit(request.query.get("limit")))
        history = await self.bus.ask(exchanges.AGENT_HISTORY, q, request_id=request[REQUEST_ID])
        return json_response({"object": "list", "data": [i.model_dump(mode="json") for i in history.items]})

    async def my_deposit(self, request: web.Request) -> web.Response:
        """``{"rail": "lightning", "amount_msat": n}`` → an invoice; ``{"rail": "cashu", "token": …}`` → credited."""
        th = self._agent_token(request)
        body = _body(AgentDepositBody, await read_json_object(request, 128 * 1024))
        reply = await self.bus.ask(exchanges.AGENT_DEPOSIT,
                                   DepositRequest(token_hash=th, rail=body.rail, amount_msat=body.amount_msat,
                                                  token=body.token),
                                   request_id=request[REQUEST_ID], timeout_s=RAIL_TIMEOUT_S)
        return json_response(reply.model_dump(mode="json"), status=201)

    async def my_withdraw(self, request: web.Request) -> web.Response:
        """Pay a BOLT11 (or issue a Cashu token) from the agent's balance; 200 when done, 202 while under way."""
        th = self._agent_token(request)
        body = _body(WithdrawBody, await read_json_object(request, 64 * 1024))
        if body.bolt11 is None and body.amount_msat is None:
            raise ArbstrError(400, "send a bolt11 to pay, or amount_msat (rail cashu) for a token",
                              code="invalid_value", param="bolt11")
        key = idempotency_key(request)
        payout_id = body.payout_id or key
        await self.settle_up(token_hash=th)  # what an idle grant of this gateway holds is the agent's to withdraw
        view = await self.bus.ask(exchanges.AGENT_WITHDRAW,
                                  WithdrawRequest(token_hash=th, bolt11=body.bolt11, amount_msat=body.amount_msat,
                                                  rail=body.rail, payout_id=payout_id),
                                  request_id=request[REQUEST_ID], timeout_s=RAIL_TIMEOUT_S)
        under_way = view.status in ("pending", "awaiting_approval")
        return json_response(view.model_dump(mode="json"), status=202 if under_way else 200)

    async def my_withdrawals(self, request: web.Request) -> web.Response:
        items = await self.bus.ask(exchanges.AGENT_PAYOUTS, TokenRef(token_hash=self._agent_token(request)),
                                   request_id=request[REQUEST_ID])
        return json_response({"object": "list", "data": [p.model_dump(mode="json") for p in items.payouts]})

    async def my_withdrawal(self, request: web.Request) -> web.Response:
        view = await self.bus.ask(exchanges.AGENT_PAYOUT,
                                  PayoutRef(token_hash=self._agent_token(request),
                                            payout_id=request.match_info["payout_id"]),
                                  request_id=request[REQUEST_ID])
        return json_response(view.model_dump(mode="json"))
