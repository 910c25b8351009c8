"""``arbstr agent|approvals|books|audit|spend|payouts|reconcile``: the operator's commands, and ``arbstr wallet``:
an agent's own deposits and withdrawals, all over the gateway's HTTP API."""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

from schemas.config import load_config

from .admin_token import find_admin_token


class CliError(Exception):
    pass


def _admin_token(args: argparse.Namespace) -> str:
    """--admin-token, else the one rule `arbstr up` follows: environment, config (--config), data dir's file."""
    if args.admin_token:
        return str(args.admin_token)
    config = load_config(args.config) if getattr(args, "config", None) else None
    token, _ = find_admin_token(config, Path(args.data_dir))
    if not token:
        raise CliError("no admin token: pass --admin-token, set ARBSTR_ADMIN_TOKEN, pass --config with [vault] "
                       "admin_token, or point --data-dir at `arbstr up`'s")
    return token


def _agent_token(args: argparse.Namespace) -> str:
    token = args.agent_token or os.environ.get("ARBSTR_AGENT_TOKEN")
    if not token:
        raise CliError("no agent token: pass --agent-token or set ARBSTR_AGENT_TOKEN")
    return token


def request(args: argparse.Namespace, method: str, path: str, body: Optional[dict[str, Any]] = None,
            token: Optional[str] = None) -> Any:
    url = args.url.rstrip("/") + path
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={
        "Authorization": f"Bearer {token or _admin_token(args)}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        try:
            err = json.loads(e.read())["error"]["message"]
        except Exception:
            err = e.reason
        raise CliError(f"{method} {path}: HTTP {e.code}: {err}") from None
    except urllib.error.URLError as e:
        raise CliError(f"cannot reach the gateway at {args.url}: {e.reason}") from None


def _policy(args: argparse.Namespace) -> dict[str, Any]:
    fields = ("max_tx_msat", "daily_limit_msat", "approval_over_msat", "approval_timeout_s")
    return {f: getattr(args, f) for f in fields if getattr(args, f, None) is not None}


def run(args: argparse.Namespace) -> Any:
    q = urllib.parse.quote
    cmd = (args.command, getattr(args, "action", None))
    if cmd == ("agent", "create"):
        policy = _policy(args)
        return request(args, "POST", "/v1/admin/agents", {"name": args.name, **({"policy": policy} if policy else {})})
    if cmd == ("agent", "list"):
        return request(args, "GET", "/v1/admin/agents")["data"]
    if cmd == ("agent", "show"):
        return request(args, "GET", f"/v1/admin/agents/{q(args.agent_id)}")
    if cmd == ("agent", "deposit"):
        body: dict[str, Any] = {"amount_msat": args.amount_msat}
        if args.deposit_id:
            body["deposit_id"] = args.deposit_id
        return request(args, "POST", f"/v1/admin/agents/{q(args.agent_id)}/deposits", body)
    if cmd == ("agent", "policy"):
        return request(args, "PATCH", f"/v1/admin/agents/{q(args.agent_id)}/policy", _policy(args))
    if cmd == ("agent", "rotate"):
        return request(args, "POST", f"/v1/admin/agents/{q(args.agent_id)}/token")
    if cmd == ("approvals", "list"):
        return request(args, "GET", "/v1/admin/approvals")["data"]
    if cmd in (("approvals", "approve"), ("approvals", "deny")):
        # By (agent, request id): two agents may use the same request id, and the wrong one must never be decided.
        return request(args, "POST", f"/v1/admin/approvals/{q(args.agent_id)}/{q(args.request_id)}/{args.action}",
                       {"reason": args.reason} if args.action == "deny" and args.reason else None)
    if args.command == "books":
        return request(args, "GET", "/v1/admin/books")
    if args.command == "payouts":
        return request(args, "GET", "/v1/admin/payouts" + (f"?agent={q(args.agent)}" if args.agent else ""))["data"]
    if args.command == "reconcile":
        if args.clear:
            return request(args, "POST", "/v1/admin/reconcile/clear", {"force": args.force})
        return request(args, "GET", "/v1/admin/reconcile")
    if args.command == "wallet":
        return wallet(args)
    if args.command == "audit":
        if args.verify:
            return request(args, "GET", "/v1/admin/audit/verify")
        params = {k: v for k, v in (("agent", args.agent), ("since", args.since), ("limit", args.limit)) if v}
        return request(args, "GET", "/v1/admin/audit?" + urllib.parse.urlencode(params))["data"]
    raise CliError(f"unknown command {cmd}")


def wallet(args: argparse.Namespace) -> Any:
    """The agent's own money: its account, top-ups and withdrawals (with its own token, never the admin's)."""
    token = _agent_token(args)
    if args.action == "show":
        return request(args, "GET", "/v1/vault/me", token=token)
    if args.action == "deposit":
        body: dict[str, Any] = ({"rail": "cashu", "token": args.cashu_token} if args.cashu_token
                                else {"rail": "lightning", "amount_msat": args.amount_msat})
        return request(args, "POST", "/v1/vault/me/deposits", body, token=token)
    if args.action == "withdraw":
        body = {"bolt11": args.bolt11} if args.bolt11 else {"rail": "cashu", "amount_msat": args.token_msat}
        if args.rail:
            body["rail"] = args.rail
        if args.id:
            body["payout_id"] = args.id
        return request(args, "POST", "/v1/vault/me/withdrawals", body, token=token)
    if args.action == "payouts":
        if args.payout_id:
            return request(args, "GET", f"/v1/vault/me/withdrawals/{urllib.parse.quote(args.payout_id)}", token=token)
        return request(args, "GET", "/v1/vault/me/withdrawals", token=token)["data"]
    raise CliError(f"unknown wallet action {args.action}")


SPEND_COLUMNS = ("requests", "failed", "input_tokens", "output_tokens", "cost_msat", "baseline_msat",
                 "savings_msat", "latency_p50_ms", "latency_p95_ms", "savings_baseline", "baseline_provider")
_BY = {"agent": "agent", "provider": "provider", "model": "model", "day": "day", "tier": "tier"}


def spend_table(rows: list[dict[str, Any]], by: Optional[str], total: Optional[dict[str, Any]] = None
                ) -> list[list[str]]:
    """Header plus one line per group (and a total line when grouped: the whole range's own row when given, since
    its savings baseline is one provider for all of it, not the sum of each group's), all as strings."""
    def fmt(v: Any) -> str:
        if v is None:
            return ""
        return f"{v:.1f}" if isinstance(v, float) else str(v)

    header = [by or "range", *SPEND_COLUMNS]
    lines = [[fmt(r.get("key")) if by else "all", *(fmt(r.get(c)) for c in SPEND_COLUMNS)] for r in rows]
    if by and rows and total is not None:
        lines.append(["TOTAL", *(fmt(total.get(c)) for c in SPEND_COLUMNS)])
    elif by and rows:
        sums = {c: sum(int(r.get(c) or 0) for r in rows) for c in SPEND_COLUMNS[:7]}
        lines.append(["TOTAL", *(str(sums[c]) for c in SPEND_COLUMNS[:7]), *([""] * (len(SPEND_COLUMNS) - 7))])
    return [header, *lines]


def render_spend(rows: list[dict[str, Any]], by: Optional[str], fmt: str,
                 total: Optional[dict[str, Any]] = None) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2)
    table = spend_table(rows, by, total)
    if fmt == "csv":
        out = io.StringIO()
        csv.writer(out, lineterminator="\n").writerows(table)
        return out.getvalue().rstrip("\n")
    widths = [max(len(line[i]) for line in table) for i in range(len(table[0]))]
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                                enumerate(zip(line, widths))) for line in table)


def spend(args: argparse.Namespace) -> str:
    params = {k: v for k, v in (("group_by", _BY.get(args.by or "")), ("since", args.since),
                                ("until", args.until), ("agent", args.agent)) if v}
    reply = request(args, "GET", "/v1/stats" + ("?" + urllib.parse.urlencode(params) if params else ""))
    total = None
    if args.by and args.format != "json":
        whole = {k: v for k, v in params.items() if k != "group_by"}
        rows = request(args, "GET", "/v1/stats" + ("?" + urllib.parse.urlencode(whole) if whole else ""))["data"]
        total = rows[0] if rows else None
    return render_spend(reply["data"], args.by, args.format, total)


def spend_main(args: argparse.Namespace) -> int:
    try:
        print(spend(args))
    except CliError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("ARBSTR_URL", "http://127.0.0.1:8080"),
                        help="gateway base URL (env ARBSTR_URL)")
    common.add_argument("--admin-token", help="admin token (else env ARBSTR_ADMIN_TOKEN, else --config's [vault] "
                                              "admin_token, else <data-dir>/admin-token)")
    common.add_argument("--config", help="arbstr.toml whose [vault] admin_token to use (after the environment)")
    common.add_argument("--data-dir", default="./arbstr-data")

    def policy_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--max-tx-msat", dest="max_tx_msat", type=int)
        p.add_argument("--daily-limit-msat", dest="daily_limit_msat", type=int)
        p.add_argument("--approval-over-msat", dest="approval_over_msat", type=int)
        p.add_argument("--approval-timeout-s", dest="approval_timeout_s", type=int)

    agent = sub.add_parser("agent", help="agents: create, list, show, deposit, policy, rotate")
    a = agent.add_subparsers(dest="action", required=True)
    p = a.add_parser("create", parents=[common], help="create an agent; prints its token once")
    p.add_argument("name")
    policy_flags(p)
    a.add_parser("list", parents=[common])
    p = a.add_parser("show", parents=[common])
    p.add_argument("agent_id")
    p = a.add_parser("deposit", parents=[common], help="credit an agent (simulated rail)")
    p.add_argument("agent_id")
    p.add_argument("amount_msat", type=int)
    p.add_argument("--deposit-id", help="idempotency key: the same id credits once")
    p = a.add_parser("policy", parents=[common], help="change an agent's spending policy")
    p.add_argument("agent_id")
    policy_flags(p)
    p = a.add_parser("rotate", parents=[common], help="issue a new token; the old one stops working")
    p.add_argument("agent_id")

    approvals = sub.add_parser("approvals", help="the human-approval queue")
    ap = approvals.add_subparsers(dest="action", required=True)
    ap.add_parser("list", parents=[common])
    for verb in ("approve", "deny"):
        p = ap.add_parser(verb, parents=[common], help=f"{verb} one agent's held request or payout (409 once decided)")
        p.add_argument("agent_id", help="whose request (the agent_id column of 'approvals list')")
        p.add_argument("request_id")
        if verb == "deny":
            p.add_argument("--reason", default="")

    sub.add_parser("books", parents=[common], help="deposits = balances + pending + spent + withdrawn?")
    po = sub.add_parser("payouts", parents=[common], help="every payout (Lightning, melt, token) and its state")
    po.add_argument("--agent")
    rc = sub.add_parser("reconcile", parents=[common],
                        help="liabilities vs wallet assets; a shortfall beyond the margin closes the vault")
    rc.add_argument("--clear", action="store_true", help="reopen a closed vault (refused while still short)")
    rc.add_argument("--force", action="store_true", help="with --clear: reopen even though still short")

    agent_common = argparse.ArgumentParser(add_help=False, parents=[common])
    agent_common.add_argument("--agent-token", help="the agent's bearer token (env ARBSTR_AGENT_TOKEN)")
    w = sub.add_parser("wallet", help="an agent's own account: show, deposit, withdraw, payouts")
    wa = w.add_subparsers(dest="action", required=True)
    wa.add_parser("show", parents=[agent_common])
    p = wa.add_parser("deposit", parents=[agent_common], help="a Lightning invoice to pay, or redeem a Cashu token")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--amount-msat", type=int, help="ask for a Lightning invoice of this amount")
    g.add_argument("--cashu-token", help="a cashuA…/cashuB… token to redeem")
    p = wa.add_parser("withdraw", parents=[agent_common], help="pay a BOLT11, or take a Cashu token")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--bolt11", help="the invoice to pay: its own amount is charged")
    g.add_argument("--token-msat", type=int, help="issue a Cashu token of this amount")
    p.add_argument("--rail", choices=("lightning", "cashu"), help="default: by amount on the auto rail")
    p.add_argument("--id", help="idempotency key of a token withdrawal: the same id pays once")
    p = wa.add_parser("payouts", parents=[agent_common], help="the agent's payouts, or one by id")
    p.add_argument("payout_id", nargs="?")
    audit = sub.add_parser("audit", parents=[common], help="the append-only audit log")
    audit.add_argument("--agent")
    audit.add_argument("--since", help="epoch ms or ISO 8601")
    audit.add_argument("--limit", type=int)
    audit.add_argument("--verify", action="store_true", help="check every agent's hash chain from sequence 1")
    sp = sub.add_parser("spend", parents=[common],
                        help="spend report from the request log, with savings against the costliest candidate")
    sp.add_argument("--by", choices=tuple(_BY), help="group by agent, provider, model, tier or day")
    sp.add_argument("--since", help="epoch ms or ISO 8601")
    sp.add_argument("--until", help="epoch ms or ISO 8601")
    sp.add_argument("--agent", help="one agent only")
    sp.add_argument("--format", choices=("table", "json", "csv"), default="table")
    sp.set_defaults(func=spend_main)


def main(args: argparse.Namespace) -> int:
    try:
        print(json.dumps(run(args), indent=2))
    except CliError as e:
        print(str(e), file=sys.stderr)
        return 1
    return 0
