"""Every request/reply exchange on the bus, declared once: its subject, the name it is served under, the message it
takes and the message it answers — and the one error codec both sides use.

An actor serves an exchange (``actors.runtime.endpoints.serve``); a caller names it and gets its reply type back
(``gateway.bus.Bus.ask``). Neither spells a subject, an op or a reply type of its own. The wire is unchanged by
this table: it only names what was already sent.

Vault exchanges are served on their own subject by any instance (which forwards to the owner of the agent's
partition) and on ``subjects.vault_partition(k, name)`` by the owner of partition k only, where a caller that knows
the partition goes straight to its owner.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Generic, Mapping, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from . import subjects
from .breaker import ProbeReply, ProbeRequest, StateReply, StateRequest
from .grants import GrantReply, GrantReports, GrantReportsReply, GrantRequest
from .errors import ArbstrError, ErrorBody
from .payments import TopUpNow, TopUpResult, XCashuReport, XCashuRequest, XCashuResult, XCashuToken
from .pricing import ConfirmReply, ConfirmRequest, PriceTable, QuoteReply, QuoteRequest, TableRequest
from .requests import RequestList, RequestsQuery, StatsQuery, StatsReply
from .router import RouteReply, RouteRequest
from .vault import (AccountView, AgentDeposit, AgentList, AgentRef, AgentRoute, ApprovalAction, ApprovalList,
                    ApprovalResult, Books, ChainCheck, ClearFreeze, CreateAgent, CreditDeposit, DepositCommand,
                    DepositReply, DepositRequest, Empty, ExtendRequest, History, HistoryQuery, PayoutList, PayoutRef,
                    PayoutView, Reconciliation, ReserveReply, ReserveRequest, RotateToken, SetPolicy, SettleCommand,
                    TokenRef, WithdrawRequest)

Q = TypeVar("Q", bound=BaseModel)
R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class Exchange(Generic[Q, R]):
    """One request/reply exchange.

    ``name``: the endpoint's name in ``nats micro`` discovery, and the op token of its partition subject.
    ``subject``: where any instance serves it; "" for an exchange served on partition subjects only.
    ``auth``: "admin" — the request carries the operator's admin token (``subjects.H_ADMIN_AUTH``), which the actor
    checks itself. ``partitioned``: also served by the owner of each vault partition on its partition subject.
    """

    name: str
    subject: str
    request: type[Q]
    reply: type[R]
    auth: Optional[str] = None
    partitioned: bool = False

    def on_partition(self, partition: int) -> str:
        """The subject only the owner of ``partition`` serves this exchange on."""
        if not self.partitioned:
            raise ValueError(f"{self.name} is not served on partition subjects")
        return subjects.vault_partition(partition, self.name)


def _vault(name: str, subject: str, request: type[Q], reply: type[R], auth: Optional[str] = None) -> Exchange[Q, R]:
    return Exchange(name, subject, request, reply, auth, partitioned=True)


_agent, _admin = subjects.vault_agent, subjects.vault_admin

# --- router, pricing, breaker ---------------------------------------------------------------------------------
ROUTE = Exchange("route", subjects.ROUTER_ROUTE, RouteRequest, RouteReply)
QUOTE = Exchange("quote", subjects.PRICING_QUOTE, QuoteRequest, QuoteReply)
PRICE_TABLE = Exchange("table", subjects.PRICING_TABLE, TableRequest, PriceTable)
CONFIRM_PRICES = Exchange("confirm", subjects.PRICING_CONFIRM, ConfirmRequest, ConfirmReply, auth="admin")
BREAKER_STATE = Exchange("state", subjects.BREAKER_STATE, StateRequest, StateReply)
BREAKER_PROBE = Exchange("probe", subjects.BREAKER_PROBE, ProbeRequest, ProbeReply)

# --- vault: a request's money -----------------------------------------------------------------------------------
RESERVE = _vault("reserve", subjects.VAULT_RESERVE, ReserveRequest, ReserveReply)
AWAIT_APPROVAL = _vault("await_approval", subjects.VAULT_AWAIT_APPROVAL, ReserveRequest, ReserveReply)
EXTEND = _vault("extend", "", ExtendRequest, ReserveReply)  # partition subjects only
RELEASE = _vault("release", subjects.VAULT_RELEASE, SettleCommand, Empty)
SETTLE = _vault("settle", subjects.VAULT_SETTLE, SettleCommand, Empty)
CREDIT = _vault("credit", "", CreditDeposit, Empty)  # internal: owner to owner only
# Grants (credit control): a gateway's slice of an agent's balance, and the requests it decided under it.
GRANT = _vault("grant", "", GrantRequest, GrantReply)  # partition subjects only
GRANT_USAGE = _vault("grant_usage", "", GrantReports, GrantReportsReply)  # partition subjects only
# Paying Routstr nodes: payouts of the operator account, decided where its partition is served.
XCASHU_TOKEN = _vault("xcashu-token", subjects.VAULT_XCASHU_TOKEN, XCashuRequest, XCashuToken)
XCASHU_REPORT = _vault("xcashu-report", subjects.VAULT_XCASHU_REPORT, XCashuReport, XCashuResult)
TOPUP_NOW = _vault("topup-now", subjects.VAULT_TOPUP_NOW, TopUpNow, TopUpResult)

# --- vault: an agent's own account (its token hash names it) ----------------------------------------------------
WHOAMI = _vault("whoami", subjects.VAULT_WHOAMI, TokenRef, AgentRoute)
AGENT_ME = _vault("agent-me", _agent("me"), TokenRef, AccountView)
AGENT_HISTORY = _vault("agent-history", _agent("history"), HistoryQuery, History)
AGENT_DEPOSIT = _vault("agent-deposit", _agent("deposit"), DepositRequest, DepositReply)
AGENT_WITHDRAW = _vault("agent-withdraw", _agent("withdraw"), WithdrawRequest, PayoutView)
AGENT_PAYOUT = _vault("agent-payout", _agent("payout"), PayoutRef, PayoutView)
AGENT_PAYOUTS = _vault("agent-payouts", _agent("payouts"), TokenRef, PayoutList)

# --- vault: the operator's commands (they carry the admin token, checked by the vault too) ----------------------
CREATE_AGENT = _vault("admin-create-agent", _admin("create_agent"), CreateAgent, AccountView, "admin")
LIST_AGENTS = _vault("admin-list-agents", _admin("list_agents"), Empty, AgentList, "admin")
GET_AGENT = _vault("admin-get-agent", _admin("get_agent"), AgentRef, AccountView, "admin")
SET_POLICY = _vault("admin-set-policy", _admin("set_policy"), SetPolicy, AccountView, "admin")
ROTATE_TOKEN = _vault("admin-rotate-token", _admin("rotate_token"), RotateToken, AccountView, "admin")
ADMIN_DEPOSIT = _vault("admin-deposit", _admin("deposit"), DepositCommand, AccountView, "admin")
ADMIN_DEPOSIT_TOKEN = _vault("admin-deposit-token", _admin("deposit_token"), AgentDeposit, DepositReply, "admin")
APPROVALS = _vault("admin-approvals", _admin("approvals"), Empty, ApprovalList, "admin")
APPROVE = _vault("admin-approve", _admin("approve"), ApprovalAction, ApprovalResult, "admin")
DENY = _vault("admin-deny", _admin("deny"), ApprovalAction, ApprovalResult, "admin")
AUDIT = _vault("admin-audit", _admin("audit"), HistoryQuery, History, "admin")
BOOKS = _vault("admin-books", _admin("books"), Empty, Books, "admin")
VERIFY = _vault("admin-verify", _admin("verify"), Empty, ChainCheck, "admin")
ADMIN_PAYOUTS = _vault("admin-payouts", _admin("payouts"), AgentRef, PayoutList, "admin")
RECONCILE = _vault("admin-reconcile", _admin("reconcile"), Empty, Reconciliation, "admin")
RECONCILE_CLEAR = _vault("admin-reconcile-clear", _admin("reconcile_clear"), ClearFreeze, Reconciliation, "admin")
# Reports: the operator's (admin token) or an agent's own (its token hash scopes them), so no "admin" mark here.
STATS = _vault("admin-stats", _admin("stats"), StatsQuery, StatsReply)
REQUESTS = _vault("admin-requests", _admin("requests"), RequestsQuery, RequestList)

ALL: tuple[Exchange[Any, Any], ...] = tuple(v for v in list(globals().values()) if isinstance(v, Exchange))
BY_SUBJECT: dict[str, Exchange[Any, Any]] = {e.subject: e for e in ALL if e.subject}
VAULT: dict[str, Exchange[Any, Any]] = {e.name: e for e in ALL if e.partitioned}


# --- the error codec ----------------------------------------------------------------------------------------------
# An actor answers an error with its OpenAI error body and these headers: the HTTP status the edge should answer
# with, a short message (what ``nats micro`` tools show), and each HTTP header the edge should add (``retry-after``)
# as ``X-Http-<name>``.
H_HTTP_PREFIX = "X-Http-"


def encode_error(err: ArbstrError) -> tuple[bytes, dict[str, str]]:
    """The reply body and headers an actor sends for ``err``."""
    headers = {
        subjects.H_SERVICE_ERROR: err.message[:200],
        subjects.H_SERVICE_ERROR_CODE: str(err.status),
    }
    for k, v in err.headers.items():
        headers[f"{H_HTTP_PREFIX}{k}"] = v
    return err.body().model_dump_json().encode(), headers


def reply_status(headers: Optional[Mapping[str, str]]) -> str:
    """The status a reply carries: its error code, "200" for a reply that is not an error."""
    return (headers or {}).get(subjects.H_SERVICE_ERROR_CODE, "200")


def decode_error(data: bytes, headers: Optional[Mapping[str, str]]) -> Optional[ArbstrError]:
    """The error a reply carries, as the actor raised it (status, body, HTTP headers); None for a reply."""
    h = headers or {}
    code = h.get(subjects.H_SERVICE_ERROR_CODE)
    if not code:
        return None
    status = int(code) if code.isdigit() else 500
    extra = {k[len(H_HTTP_PREFIX):]: v for k, v in h.items() if k.startswith(H_HTTP_PREFIX)}
    try:
        body = ErrorBody.model_validate_json(data)
    except ValidationError:
        return ArbstrError(status, h.get(subjects.H_SERVICE_ERROR, "actor error"), headers=extra)
    return ArbstrError.from_body(status, body, headers=extra)
